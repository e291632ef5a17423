//! The catalog API end to end: the real catalog and the real discount
//! server in-process, on `127.0.0.1:0`, talking TLS gRPC with certificates
//! made when the test runs.

use std::sync::atomic::Ordering;

use crate::support::{CUSTOMER_1, CUSTOMER_2, Catalog, HEALTHY_DEADLINE, PLAIN, system};
use reqwest::StatusCode;
use testkit::{DiscountServer, Pki, ScriptedDiscount, SetupResult};

#[tokio::test]
async fn the_root_says_it_is_working() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let answer = catalog.get("/", None).await?;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "It is working.")
    );
    Ok(())
}

#[tokio::test]
async fn without_a_user_the_list_is_the_seed_products_without_discounts() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let answer = catalog.get("/products", None).await?;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body, PLAIN);
    // discount was not asked, so there is nothing to report about it.
    assert_eq!(answer.discount_status, None);

    for blank in ["", "   "] {
        assert_eq!(
            catalog.products(Some(blank)).await?,
            (StatusCode::OK, PLAIN.to_owned()),
            "{blank:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn customer_1_gets_the_seed_readme_output_however_the_id_is_written() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    for id in ["1", "+1", "01", " 1", "1 "] {
        let answer = catalog.get("/products", Some(id.as_bytes())).await?;
        assert_eq!(
            (answer.status, answer.content_type.as_str()),
            (StatusCode::OK, "application/json"),
            "{id:?}"
        );
        assert_eq!(answer.body, CUSTOMER_1, "X-USER-ID {id:?}");
        assert_eq!(answer.discount_status.as_deref(), Some("applied"));
    }
    Ok(())
}

#[tokio::test]
async fn customer_2_gets_every_product_with_an_empty_discount() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    assert_eq!(
        catalog.products(Some("2")).await?,
        (StatusCode::OK, CUSTOMER_2.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn an_id_that_is_not_a_number_is_a_400_with_the_seed_message() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let not_numbers: [&[u8]; 9] = [
        b"abc",
        b"1.0",
        b"0x1",
        b"1e3",
        b"+",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"1 2",
        b"\xff",
    ];
    for id in not_numbers {
        let answer = catalog.get("/products", Some(id)).await?;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{id:?}");
        assert_eq!(answer.content_type, "text/plain; charset=utf-8");
        assert_eq!(answer.body, "Customer ID is not a number.\n");
    }
    // The catalog is unharmed.
    assert_eq!(
        catalog.products(Some("1")).await?,
        (StatusCode::OK, CUSTOMER_1.to_owned())
    );
    Ok(())
}

/// A log field holds its value once: the header as sent, its control
/// characters escaped, and not a quoted string inside the JSON string.
#[tokio::test]
async fn a_rejected_id_is_one_json_string_in_the_log() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let path = |name: &str| pki.path(name).display().to_string();
    let args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1",
        "--discount-host",
        "127.0.0.1:9",
        "--discount-ca",
        &path("ca.pem"),
        "--client-cert",
        &path("client.pem"),
        "--client-key",
        &path("client.key"),
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_catalog"));
    let mut catalog = testkit::Process::start_with_env(
        binary,
        &args,
        "Server running on ",
        &[("LOG_FORMAT", "json")],
    )
    .await?;
    let answer = reqwest::Client::new()
        .get(format!("http://{}/products", catalog.addr()))
        .header("X-USER-ID", "abc\tdef")
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let line = catalog.logged("rejected X-USER-ID").await?;
    let line: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(line["fields"]["x_user_id"], "abc\\tdef", "{line}");
    assert!(catalog.terminate().await?.success());
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() -> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let answer = catalog.get("/nope", None).await?;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found\n")
    );
    // `/products/{id}` is a route (tests/it/data.rs); deeper paths are not.
    let answer = catalog.get("/products/1/reviews", None).await?;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    let post = catalog
        .http
        .post(format!("http://{}/products", catalog.addr))
        .send()
        .await?;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

#[tokio::test]
async fn unknown_customers_get_the_plain_list_without_any_call_to_discount() -> SetupResult<()> {
    let pki = Pki::generate()?;
    // The catalog connects at once, to check discount's health; only
    // pricing calls count here.
    let scripted = ScriptedDiscount {
        batch: true,
        ..ScriptedDiscount::default()
    };
    let calls = scripted.calls.clone();
    let discount = DiscountServer::start_with(&pki, &[], scripted).await?;
    let catalog = Catalog::start(
        &discount.addr().to_string(),
        &pki.path("ca.pem"),
        HEALTHY_DEADLINE,
    )
    .await?;

    for id in ["3", "0", "-1", "9223372036854775807"] {
        assert_eq!(
            catalog.products(Some(id)).await?,
            (StatusCode::OK, PLAIN.to_owned()),
            "{id:?}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "catalog asked discount about an unknown customer"
    );

    // Control: a known customer does call, which shows the witness works.
    catalog.products(Some("1")).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn the_binary_without_its_ca_file_names_the_missing_file_and_the_fix() -> SetupResult<()> {
    let empty = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("0")
        .current_dir(empty.path())
        .env_remove("CATALOG_DISCOUNT_CA")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without a CA: {stderr}");
    assert!(stderr.contains("keys/ca.pem: file not found"), "{stderr}");
    assert!(stderr.contains("scripts/gen-keys.sh"), "{stderr}");
    Ok(())
}

/// Runs the catalog binary with `--check-certs` on the files of `dir`.
fn check_certs(dir: &std::path::Path) -> SetupResult<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("--discount-ca")
        .arg(dir.join("ca.pem"))
        .arg("--client-cert")
        .arg(dir.join("client.pem"))
        .arg("--client-key")
        .arg(dir.join("client.key"))
        .arg("--check-certs")
        .output()?)
}

#[test]
fn keys_of_another_trust_domain_make_the_doctor_name_the_flag_to_set() -> SetupResult<()> {
    let keys = tempfile::tempdir()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-keys.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .args(["--trust-domain", "shop.example", "--dir"])
        .arg(keys.path())
        .output()?;
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(
        said.contains("--discount-identity spiffe://shop.example/discount"),
        "{said}"
    );
    let checked = check_certs(keys.path())?;
    let report = String::from_utf8_lossy(&checked.stdout);
    for expected in [
        "outside the catalog's own trust domain spiffe://shop.example/",
        "set --discount-identity spiffe://shop.example/discount",
        "presents spiffe://shop.example/discount, not spiffe://ecommerce.local/discount",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
    assert!(checked.status.success(), "warnings only");
    Ok(())
}

#[test]
fn keys_from_gen_keys_pass_the_catalogs_certificate_doctor() -> SetupResult<()> {
    let keys = tempfile::tempdir()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/gen-keys.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg("--dir")
        .arg(keys.path())
        .output()?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let checked = check_certs(keys.path())?;
    let client = keys.path().join("client.pem");
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout),
        format!(
            "info: {}: carries the workload identity spiffe://ecommerce.local/catalog\n\
             info: --discount-identity: discount's certificate must carry spiffe://ecommerce.local/discount\n\
             certificates OK\n",
            client.display()
        )
    );
    assert!(checked.status.success());
    Ok(())
}

#[test]
fn an_expired_client_certificate_is_reported_and_stops_the_catalog() -> SetupResult<()> {
    let pki = Pki::generate()?;
    pki.issue_client("client", testkit::ClientCert::Expired)?;
    let checked = check_certs(pki.dir())?;
    let report = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    assert!(
        report.contains("client.pem") && report.contains("expired on"),
        "{report}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_or_sighup_right_after_the_start_up_line_is_handled() -> SetupResult<()> {
    // An orchestrator or a script may signal the catalog as soon as it
    // announces itself. The handlers are installed before the start-up
    // line is logged; were they installed after it (or when first polled),
    // a signal on the line would meet the default action, which ends the
    // process. So, once per signal, on the real binary: the moment the
    // line is read, the kernel already records the signal as caught; sent
    // then, it is logged as received, and the catalog goes on (SIGHUP
    // reloads) or stops cleanly (SIGTERM). common/tests/signals.rs checks
    // the same of the functions that install the handlers.
    let pki = Pki::generate()?;
    let (ca, cert, key) = (
        pki.path("ca.pem").display().to_string(),
        pki.path("client.pem").display().to_string(),
        pki.path("client.key").display().to_string(),
    );
    let args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1",
        "--discount-ca",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_catalog"));

    let mut catalog = testkit::Process::start(binary, &args, "Server running on ").await?;
    assert!(
        catalog.catches("HUP")?,
        "SIGHUP not caught at the start-up line"
    );
    catalog.signal("HUP").await?;
    catalog.logged("received SIGHUP").await?;
    catalog.logged("reloaded").await?;
    let status = catalog.terminate().await?;
    assert!(status.success(), "exited with {status}");

    let mut catalog = testkit::Process::start(binary, &args, "Server running on ").await?;
    assert!(
        catalog.catches("TERM")?,
        "SIGTERM not caught at the start-up line"
    );
    catalog.signal("TERM").await?;
    catalog.logged("received SIGTERM").await?;
    catalog.logged("catalog stopped").await?;
    let status = catalog.exited().await?;
    assert!(status.success(), "exited with {status}");
    Ok(())
}

/// A reload that takes long (issue 25: a 10,000-certificate
/// `--discount-ca`; here a CA file that cannot be read until the test lets
/// it) must not stop the catalog answering: it runs off the runtime's
/// workers. The catalog runs with one worker, so a reload on it would stop
/// everything until it ended.
#[tokio::test]
async fn the_catalog_answers_while_a_sighup_reload_is_blocked_reading_a_file() -> SetupResult<()> {
    let pki = Pki::generate()?;
    let path = |name: &str| pki.path(name).display().to_string();
    let args: Vec<String> = [
        "--listen-addr",
        "127.0.0.1",
        // Nothing answers there; /healthz does not depend on discount.
        "--discount-host",
        "127.0.0.1:9",
        "--discount-ca",
        &path("ca.pem"),
        "--client-cert",
        &path("client.pem"),
        "--client-key",
        &path("client.key"),
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_catalog"));
    let mut catalog = testkit::Process::start_with_env(
        binary,
        &args,
        "Server running on ",
        &[("LOG_FORMAT", "text"), ("TOKIO_WORKER_THREADS", "1")],
    )
    .await?;

    let ca = testkit::StalledFile::stall(&pki.path("ca.pem"))?;
    catalog.signal("HUP").await?;
    // Logged just before the reload starts, which now waits on the CA.
    catalog.logged("received SIGHUP").await?;
    let answered = tokio::time::timeout(
        testkit::HANG,
        reqwest::get(format!("http://{}/healthz", catalog.addr())),
    )
    .await;
    ca.release();
    catalog.logged("reloaded").await?;
    let status = answered
        .map_err(|_| "no answer while the reload was blocked: it ran on the only runtime worker")??
        .status();
    assert_eq!(status, StatusCode::OK);

    assert!(catalog.terminate().await?.success());
    Ok(())
}
