//! The catalog's data end to end on its default store, a SQLite file:
//! pages, one product, and `catalog import` / `catalog export` run as the
//! real binary against the file a running catalog serves from.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use catalog::store::{self, DatabaseUrl};
use reqwest::StatusCode;
use testkit::{HANG, SetupResult};

use crate::store::product;
use crate::support::{Catalog, PLAIN, system, system_with};

/// The SQLite file the test catalog of `pki` uses (see `support::config`).
fn database(pki: &testkit::Pki) -> PathBuf {
    pki.path("catalog.db")
}

/// Runs `catalog ARGS --database-url sqlite://DB`.
fn cli(db: &Path, args: &[&str]) -> SetupResult<Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_catalog"))
        .args(args)
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .output()?)
}

/// `GET path` as `user`: status, `Link`, `X-Discount-Status`, body.
async fn fetch(
    catalog: &Catalog,
    path: &str,
    user: Option<&str>,
) -> SetupResult<(StatusCode, Option<String>, Option<String>, String)> {
    let answer = catalog.get(path, user.map(str::as_bytes)).await?;
    Ok((
        answer.status,
        answer.link,
        answer.discount_status,
        answer.body,
    ))
}

/// Waits until `GET /products?page_size=1000` lists `count` products.
async fn lists(catalog: &Catalog, count: usize) -> SetupResult<Duration> {
    let started = Instant::now();
    loop {
        let (_, _, _, body) = fetch(catalog, "/products?page_size=1000", None).await?;
        let listed = serde_json::from_str::<Vec<serde_json::Value>>(&body)?.len();
        if listed == count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > HANG {
            return Err(format!("{listed} products listed, not {count}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn pages_follow_the_link_header_through_the_whole_list_each_priced_once() -> SetupResult<()> {
    let (pki, _discount, catalog) = system().await?;
    let url = DatabaseUrl::parse(&format!("sqlite://{}", database(&pki).display()))?;
    let store = store::open(&url).await?;
    let products: Vec<_> = (1..=250)
        .map(|id| product(id, &format!("p-{id}"), 100 * id))
        .collect();
    store.import_products(products).await?;
    lists(&catalog, 250).await?;

    let mut path = "/products?page_size=100".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, link, discount, body) = fetch(&catalog, &path, Some("1")).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(discount.as_deref(), Some("applied"), "{path}");
        let page: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        for item in &page {
            let price = item["price_in_cents"].as_i64().unwrap_or_default();
            assert_eq!(
                item["discount_value"]["value_in_cents"].as_i64(),
                Some(price * 9 / 10)
            );
            seen.push(item["id"].as_i64().unwrap_or_default());
        }
        pages += 1;
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(target, _)| target.to_owned())
            .ok_or(format!("not a next link: {link}"))?;
        assert!(
            next.starts_with("/products?page_size=100&page_token="),
            "{next}"
        );
        path = next;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=250).collect::<Vec<_>>());

    for bad in [
        "page_size=0",
        "page_size=1001",
        "page_size=ten",
        "page_token=00000001deadbeef",
        "page_token=x",
    ] {
        let (status, _, _, body) = fetch(&catalog, &format!("/products?{bad}"), None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body.contains("page_size must be") || body.contains("page_token is not"),
            "{bad}: {body}"
        );
    }
    Ok(())
}

/// A page of 1,000 products is over discount's 64 KiB message limit in
/// one `ApplyDiscounts` call: the catalog cuts it into several, and every
/// product still gets its discount.
#[tokio::test]
async fn a_page_of_a_thousand_is_priced_whole_for_a_known_customer() -> SetupResult<()> {
    let (pki, _discount, catalog) = system().await?;
    let url = DatabaseUrl::parse(&format!("sqlite://{}", database(&pki).display()))?;
    let store = store::open(&url).await?;
    let products: Vec<_> = (1..=1000)
        .map(|id| {
            let mut product = product(id, &format!("p-{id}"), 100 + id);
            product.description = format!("{id} {}", "long words ".repeat(12));
            product
        })
        .collect();
    store.import_products(products).await?;
    lists(&catalog, 1000).await?;

    let (status, link, discount, body) =
        fetch(&catalog, "/products?page_size=1000", Some("1")).await?;
    assert_eq!((status, link), (StatusCode::OK, None));
    assert!(body.len() > 200_000, "{}", body.len());
    assert_eq!(discount.as_deref(), Some("applied"));
    let page: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let ids: Vec<_> = page.iter().filter_map(|item| item["id"].as_i64()).collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    for item in &page {
        let price = item["price_in_cents"].as_i64().unwrap_or_default();
        assert_eq!(
            item["discount_value"]["value_in_cents"].as_i64(),
            Some(price * 9 / 10),
            "{item}"
        );
    }
    Ok(())
}

/// A product too large for any call (its description alone is over
/// discount's 64 KiB limit) is listed without a discount, and never sent:
/// sending it failed with RESOURCE_EXHAUSTED, held against the replica,
/// which ejected healthy replicas and retried it on each.
#[tokio::test]
async fn a_product_too_large_to_price_is_listed_plain_and_not_held_against_discount()
-> SetupResult<()> {
    let (pki, _discount, catalog) = system_with(&["--metrics-addr", "127.0.0.1:0"]).await?;
    let url = DatabaseUrl::parse(&format!("sqlite://{}", database(&pki).display()))?;
    let store = store::open(&url).await?;
    let mut products: Vec<_> = (1..=20)
        .map(|id| product(id, &format!("p-{id}"), 100 + id))
        .collect();
    products[10].description = "x".repeat(100_000);
    store.import_products(products).await?;
    lists(&catalog, 20).await?;

    for path in ["/products", "/products/11"] {
        let (status, _, discount, body) = fetch(&catalog, path, Some("1")).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
        let expected = if path == "/products" {
            "partial"
        } else {
            "unavailable"
        };
        assert_eq!(discount.as_deref(), Some(expected), "{path}");
        assert!(
            body.contains(&"x".repeat(100_000)),
            "{path}: the product is listed whole"
        );
    }
    let (_, _, _, body) = fetch(&catalog, "/products", Some("1")).await?;
    let page: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let plain: Vec<_> = page
        .iter()
        .filter(|item| item.get("discount_value").is_none())
        .filter_map(|item| item["id"].as_i64())
        .collect();
    assert_eq!(plain, [11], "only the large product is undiscounted");
    // Not one call failed, nor was sent again.
    let metrics = catalog.metrics_addr.ok_or("no metrics")?;
    let failed = testkit::metric(
        metrics,
        "catalog_discount_calls_total",
        "code=\"RESOURCE_EXHAUSTED\"",
    )
    .await?;
    let retried = testkit::metric(metrics, "catalog_discount_retries_total", "").await?;
    assert_eq!((failed, retried), (0.0, 0.0));
    Ok(())
}

#[tokio::test]
async fn the_seed_list_has_no_link_and_one_product_is_an_object_priced_like_a_listing()
-> SetupResult<()> {
    let (_pki, _discount, catalog) = system().await?;
    let (status, link, _, body) = fetch(&catalog, "/products", None).await?;
    assert_eq!((status, link, body.as_str()), (StatusCode::OK, None, PLAIN));

    let (status, _, discount, body) = fetch(&catalog, "/products/1", None).await?;
    assert_eq!((status, discount), (StatusCode::OK, None));
    assert_eq!(
        body,
        "{\"id\":1,\"slug\":\"iphone-x\",\"description\":\"64GB, black and iOS 12\",\"price_in_cents\":99999}\n"
    );
    let (status, _, discount, body) = fetch(&catalog, "/products/2", Some("1")).await?;
    assert_eq!(
        (status, discount.as_deref()),
        (StatusCode::OK, Some("applied"))
    );
    assert_eq!(
        body,
        "{\"id\":2,\"slug\":\"notebook-avell-g1511\",\"description\":\"Notebook Gamer Intel Core i7\",\"price_in_cents\":150000,\"discount_value\":{\"pct\":0.1,\"value_in_cents\":135000}}\n"
    );
    for (path, expected) in [
        ("/products/4", StatusCode::NOT_FOUND),
        ("/products/99999999999", StatusCode::NOT_FOUND),
        ("/products/", StatusCode::NOT_FOUND),
        ("/products/abc", StatusCode::BAD_REQUEST),
        ("/products/1.0", StatusCode::BAD_REQUEST),
    ] {
        let (status, _, _, body) = fetch(&catalog, path, None).await?;
        assert_eq!(status, expected, "{path}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn an_import_by_the_cli_is_served_by_the_running_catalog_and_exported_back() -> SetupResult<()>
{
    let (pki, _discount, catalog) = system().await?;
    let file = pki.path("more.csv");
    std::fs::write(
        &file,
        "id,slug,description,price_in_cents\n4,switch,\"Console, hybrid\",29999\n2,notebook-avell-g1511,Now cheaper,140000\n",
    )?;
    let imported = cli(
        &database(&pki),
        &["import", "products", file.to_str().ok_or("path")?],
    )?;
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let took = lists(&catalog, 4).await?;
    // The poll every --data-refresh-interval brings it; how soon is
    // printed, not asserted.
    eprintln!("the import was served {took:?} after the command exited");

    let (_, _, _, listed) = fetch(&catalog, "/products", None).await?;
    assert!(
        listed.contains("\"description\":\"Now cheaper\",\"price_in_cents\":140000"),
        "{listed}"
    );
    let exported = cli(&database(&pki), &["export", "products"])?;
    assert_eq!(
        String::from_utf8(exported.stdout)?,
        listed,
        "export is the listing's JSON"
    );

    // And the JSON comes back in as it went out.
    let json = pki.path("export.json");
    std::fs::write(&json, &listed)?;
    let again = cli(
        &database(&pki),
        &["import", "products", json.to_str().ok_or("path")?],
    )?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn the_import_cli_names_every_bad_row_and_writes_nothing() -> SetupResult<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("c.db");
    let file = dir.path().join("bad.csv");
    std::fs::write(
        &file,
        concat!(
            "id,slug,description,price_in_cents\n",
            "5,five,fine,500\n",
            "6,,no slug,600\n",
            "7,seven,negative,-1\n",
            "8,eight,too dear,2147483648\n",
            "5,five-again,duplicate id,1\n",
            "9,five,duplicate slug,1\n",
            "x,ten,bad id,1\n",
            "11,eleven,short\n",
        ),
    )?;
    let mut bytes = std::fs::read(&file)?;
    bytes.extend_from_slice(b"12,tw\xffelve,bad utf-8,1\n");
    std::fs::write(&file, bytes)?;
    let output = cli(&db, &["import", "products", file.to_str().ok_or("path")?])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for expected in [
        "line 3: slug is empty",
        "line 4: negative price_in_cents -1",
        "line 5: price_in_cents 2147483648 is beyond 2147483647",
        "line 6: duplicate id \"5\" (also on line 2)",
        "line 7: duplicate slug \"five\" (also on line 2)",
        "line 8: id \"x\" is not a whole number",
        "line 9: 3 fields, where the header has 4",
        "line 10: slug is not UTF-8",
        "nothing was imported",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    let unknown = dir.path().join("unknown.csv");
    std::fs::write(
        &unknown,
        "id,slug,description,price_in_cents,colour\n1,a,b,1,red\n",
    )?;
    let output = cli(
        &db,
        &["import", "products", unknown.to_str().ok_or("path")?],
    )?;
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 1: unknown column \"colour\""));
    // Nothing reached the database: not even the file, which the command
    // only creates once the rows are good.
    assert!(!db.exists(), "the database was touched");
    Ok(())
}

#[tokio::test]
async fn crlf_files_keep_their_line_numbers_and_what_postgresql_cannot_store_is_refused()
-> SetupResult<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("windows.csv");
    let long = "s".repeat(300);
    std::fs::write(
        &file,
        format!(
            "id,slug,description,price_in_cents\r\n1,a,x,-1\r\n\r\n2,{long},x,1\r\n3,c,nul\u{0}here,1\r\n"
        ),
    )?;
    let output = cli(
        &dir.path().join("c.db"),
        &["import", "products", file.to_str().ok_or("path")?],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "line 2: negative price_in_cents -1",
        "line 4: slug is 300 bytes long, over 256",
        "line 5: description holds a NUL character",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }
    let json = dir.path().join("one-line.json");
    std::fs::write(&json, r#"[{"id":1,"slug":"a"},{"id":1,"slug":"b"}]"#)?;
    let output = cli(
        &dir.path().join("c.db"),
        &["import", "products", json.to_str().ok_or("path")?],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 1: element 2: duplicate id \"1\""),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn an_import_makes_a_file_of_its_own_rows_whole_without_its_wal() -> SetupResult<()> {
    let dir = tempfile::tempdir()?;
    let (db, copy) = (dir.path().join("c.db"), dir.path().join("copy.db"));
    let file = dir.path().join("more.csv");
    std::fs::write(
        &file,
        "id,slug,description,price_in_cents\n40,forty,x,4000\n",
    )?;
    let output = cli(&db, &["import", "products", file.to_str().ok_or("path")?])?;
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // Where it went, in full, whatever directory the command ran in.
    assert!(
        said.contains(&format!("into sqlite://{}", db.display())),
        "{said}"
    );
    // The file alone, as one copies it into a volume; made by the
    // command, it holds what was imported and not the demo data.
    std::fs::copy(&db, &copy)?;
    let exported = cli(&copy, &["export", "products"])?;
    assert_eq!(
        String::from_utf8(exported.stdout)?,
        "[{\"id\":40,\"slug\":\"forty\",\"description\":\"x\",\"price_in_cents\":4000}]\n",
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let customers = cli(&copy, &["export", "customers"])?;
    assert_eq!(String::from_utf8(customers.stdout)?, "[]\n");
    // Customers export in the order of the header, not sorted by name.
    let file = dir.path().join("customers.csv");
    std::fs::write(&file, "last_name,id,first_name\nSnow,1,John\n")?;
    let output = cli(
        &copy,
        &["import", "customers", file.to_str().ok_or("path")?],
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let customers = cli(&copy, &["export", "customers"])?;
    assert_eq!(
        String::from_utf8(customers.stdout)?,
        "[{\"id\":1,\"first_name\":\"John\",\"last_name\":\"Snow\"}]\n"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_file_replaced_while_served_is_reported_not_ignored() -> SetupResult<()> {
    let (pki, _discount, catalog) = system().await?;
    let other = pki.path("other.db");
    let file = pki.path("one.csv");
    std::fs::write(&file, "id,slug,description,price_in_cents\n9,nine,x,900\n")?;
    let made = cli(
        &other,
        &["import", "products", file.to_str().ok_or("path")?],
    )?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::rename(&other, database(&pki))?;
    let started = Instant::now();
    loop {
        let ready = catalog.readiness().await?;
        if ready
            .body
            .contains("was replaced or removed while the catalog had it open")
        {
            break;
        }
        assert!(started.elapsed() < HANG, "{}", ready.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What it loaded is still served.
    assert_eq!(catalog.get("/products", None).await?.body, PLAIN);
    Ok(())
}

#[tokio::test]
async fn a_damaged_database_file_stops_the_start_with_its_path_and_the_fix() -> SetupResult<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("broken.db");
    std::fs::write(
        &db,
        b"this is not a SQLite file, but it is long enough to look like one....",
    )?;
    let pki = testkit::Pki::generate()?;
    let url = format!("sqlite://{}", db.display());
    let built = Catalog::start_with(
        "127.0.0.1:9",
        &pki.path("ca.pem"),
        "1s",
        &["--database-url", &url],
    )
    .await;
    let message = built.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains(&db.display().to_string()) && message.contains("move it away"),
        "{message}"
    );
    Ok(())
}
