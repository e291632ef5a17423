//! One metric's value, read from a service's `/metrics` over HTTP.

use std::net::SocketAddr;

use crate::SetupResult;

/// The sum of the series served at `http://addr/metrics` whose line
/// starts with `name` and holds `labels` (`""`: any): `0` when there is
/// none.
///
/// # Errors
/// The listener did not answer.
pub async fn metric(addr: SocketAddr, name: &str, labels: &str) -> SetupResult<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
