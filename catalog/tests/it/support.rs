//! What the catalog's integration tests share: the expected bodies, and the
//! real catalog started in-process on `127.0.0.1:0`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use catalog::Application;
use catalog::discount::{DiscountClient, Resolve};
use clap::Parser;
use reqwest::StatusCode;
use testkit::{DiscountServer, Pki, ServerTask, SetupResult};
use tokio::task::JoinHandle;

/// The seed's three products with no discount: what anyone without a known
/// `X-USER-ID` gets, and what everyone gets when discount is unavailable.
pub(crate) const PLAIN: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999}]"#,
    "\n"
);

/// The seed README's output for `X-USER-ID: 1`, compact as Go writes it.
pub(crate) const CUSTOMER_1: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{"pct":0.1,"value_in_cents":89999}},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,"discount_value":{"pct":0.1,"value_in_cents":135000}},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{"pct":0.1,"value_in_cents":29699}}]"#,
    "\n"
);

/// Customer 2: discount answers, with an empty discount for every product.
pub(crate) const CUSTOMER_2: &str = concat!(
    r#"[{"id":1,"slug":"iphone-x","description":"64GB, black and iOS 12","price_in_cents":99999,"discount_value":{}},"#,
    r#"{"id":2,"slug":"notebook-avell-g1511","description":"Notebook Gamer Intel Core i7","price_in_cents":150000,"discount_value":{}},"#,
    r#"{"id":3,"slug":"playstation-4-slim","description":"1TB Console","price_in_cents":32999,"discount_value":{}}]"#,
    "\n"
);

/// Deadline for discount calls in tests where discount is healthy: generous,
/// because a debug build on a loaded CI machine is slow, and a pass never
/// waits for it.
pub(crate) const HEALTHY_DEADLINE: &str = "5s";

/// One HTTP answer: status, `Content-Type`, `X-Discount-Status`, `Link`,
/// body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) discount_status: Option<String>,
    pub(crate) link: Option<String>,
    pub(crate) body: String,
}

/// The catalog, serving on `127.0.0.1:<port>` until dropped or stopped.
pub(crate) struct Catalog {
    pub(crate) addr: SocketAddr,
    /// Where `GET /metrics` is served, when started with `--metrics-addr`.
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) http: reqwest::Client,
    /// The catalog's own client of discount, to reload its TLS material.
    pub(crate) discount: DiscountClient,
    task: ServerTask<Infallible>,
}

impl Catalog {
    /// Starts the catalog pointed at `discount` and trusting `ca`.
    pub(crate) async fn start(discount: &str, ca: &Path, deadline: &str) -> SetupResult<Self> {
        Self::start_with(discount, ca, deadline, &[]).await
    }

    /// Starts the catalog as `main` does, from its real command line:
    /// `--discount-host discount --discount-ca ca --discount-deadline
    /// deadline`, then `extra`.
    pub(crate) async fn start_with(
        discount: &str,
        ca: &Path,
        deadline: &str,
        extra: &[&str],
    ) -> SetupResult<Self> {
        let app = Application::build(&config(discount, ca, deadline, extra)?).await?;
        Ok(Self::serve(app))
    }

    /// [`Catalog::start_with`], with discount's names resolved by
    /// `resolver`.
    pub(crate) async fn start_resolving(
        discount: &str,
        ca: &Path,
        deadline: &str,
        extra: &[&str],
        resolver: Arc<dyn Resolve>,
    ) -> SetupResult<Self> {
        let config = config(discount, ca, deadline, extra)?;
        let app = Application::build_with_resolver(&config, resolver).await?;
        Ok(Self::serve(app))
    }

    fn serve(app: Application) -> Self {
        let (addr, client, metrics_addr) =
            (app.local_addr(), app.discount_client(), app.metrics_addr());
        let task = ServerTask::spawn(|shutdown| async move {
            app.run_until_stopped(shutdown.wait()).await;
            Ok(())
        });
        Self {
            addr,
            metrics_addr,
            http: reqwest::Client::new(),
            discount: client,
            task,
        }
    }

    pub(crate) async fn get(&self, path: &str, user_id: Option<&[u8]>) -> SetupResult<Answer> {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(user_id) = user_id {
            request = request.header(
                "X-USER-ID",
                reqwest::header::HeaderValue::from_bytes(user_id)?,
            );
        }
        let response = request.send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Answer {
            status: response.status(),
            content_type: header("content-type").unwrap_or_default(),
            discount_status: header("x-discount-status"),
            link: header("link"),
            body: response.text().await?,
        })
    }

    /// `GET /products` as `user_id`: status and body.
    pub(crate) async fn products(
        &self,
        user_id: Option<&str>,
    ) -> SetupResult<(StatusCode, String)> {
        let answer = self.get("/products", user_id.map(str::as_bytes)).await?;
        Ok((answer.status, answer.body))
    }

    /// `GET /products` as `user_id`: body and `X-Discount-Status`.
    pub(crate) async fn priced(&self, user_id: &str) -> SetupResult<(String, Option<String>)> {
        let answer = self.get("/products", Some(user_id.as_bytes())).await?;
        if answer.status != StatusCode::OK {
            return Err(format!("status {}: {}", answer.status, answer.body).into());
        }
        Ok((answer.body, answer.discount_status))
    }

    /// `GET /products` as `user_id`, sent from a task of its own, so the
    /// test can act while the request is in flight.
    pub(crate) fn spawn_products(
        &self,
        user_id: &'static str,
    ) -> JoinHandle<reqwest::Result<reqwest::Response>> {
        let request = self
            .http
            .get(format!("http://{}/products", self.addr))
            .header("X-USER-ID", user_id);
        tokio::spawn(request.send())
    }

    /// `GET /readyz`: its body says why discount cannot be used, with the
    /// whole cause chain.
    pub(crate) async fn readiness(&self) -> SetupResult<Answer> {
        self.get("/readyz", None).await
    }

    /// `GET /readyz` until it answers `status`, for 10 s at most (the
    /// replicas' health is checked every second): the last answer.
    pub(crate) async fn readiness_becomes(&self, status: StatusCode) -> SetupResult<Answer> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self.readiness().await?;
            if answer.status == status || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends the shutdown signal, as SIGTERM would, without waiting.
    pub(crate) fn begin_stop(&mut self) {
        self.task.begin_stop();
    }

    /// Waits for the catalog to stop; `Ok` only if it did, cleanly, within
    /// `limit`.
    pub(crate) async fn stopped_within(self, limit: Duration) -> Result<(), String> {
        self.task.stopped_within(limit).await
    }
}

/// The catalog's configuration from its real command line.
///
/// The client certificate and key are `client.pem` and `client.key` beside
/// `ca`, as `testkit::Pki` lays them out; so is the SQLite database, made
/// with the seed's data, unless `extra` names another.
pub(crate) fn config(
    discount: &str,
    ca: &Path,
    deadline: &str,
    extra: &[&str],
) -> SetupResult<catalog::Config> {
    let dir = ca.parent().ok_or("the CA file has no directory")?;
    let [ca, client_cert, client_key] = [
        ca.to_path_buf(),
        dir.join("client.pem"),
        dir.join("client.key"),
    ]
    .map(|p| p.display().to_string());
    let database = format!("sqlite://{}", dir.join("catalog.db").display());
    let mut args = vec![
        "catalog",
        "0",
        "--listen-addr",
        "127.0.0.1",
        "--discount-host",
        discount,
        "--discount-ca",
        &ca,
        "--client-cert",
        &client_cert,
        "--client-key",
        &client_key,
        "--discount-deadline",
        deadline,
    ];
    if !extra.contains(&"--database-url") {
        args.extend(["--database-url", &database]);
    }
    // Tests that rewrite TLS files reload when they say, unless they test
    // the watch (tests/it/rotation.rs): a reload of its own, seconds into
    // a slow run, would add a connection they count.
    if !extra.contains(&"--tls-watch-interval") {
        args.extend(["--tls-watch-interval", "0s"]);
    }
    args.extend_from_slice(extra);
    Ok(catalog::Config::try_parse_from(args)?)
}

/// `/readyz`'s body without its last line, the data's (`data: ...`): what
/// it says of discount.
pub(crate) fn discount_part(body: &str) -> String {
    let (discount, data) = body.trim_end().rsplit_once('\n').unwrap_or((body, ""));
    assert!(data.starts_with("data: "), "no data line in {body:?}");
    format!("{discount}\n")
}

/// discount and a catalog pointed at it.
pub(crate) async fn system() -> SetupResult<(Pki, DiscountServer, Catalog)> {
    system_with(&[]).await
}

/// discount and a catalog pointed at it, with the catalog flags `extra`.
pub(crate) async fn system_with(extra: &[&str]) -> SetupResult<(Pki, DiscountServer, Catalog)> {
    let pki = Pki::generate()?;
    let discount = DiscountServer::start(&pki).await?;
    let catalog = Catalog::start_with(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
        extra,
    )
    .await?;
    Ok((pki, discount, catalog))
}
