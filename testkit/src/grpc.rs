//! Talking to discount as a client: requests, channels, and reading the
//! answer.

use std::net::SocketAddr;
use std::path::Path;

use ecommerce_proto::pb::discount_client::DiscountClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, Product};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::Pki;
use crate::{HANG, SetupResult};

/// Customer `id`.
pub fn customer(id: i32) -> Customer {
    Customer {
        id,
        first_name: "John".into(),
        last_name: "Snow".into(),
    }
}

/// Product `id` priced `price_in_cents`, with a slug and description that
/// must come back unchanged.
pub fn product(id: i32, price_in_cents: i32) -> Product {
    Product {
        id,
        slug: format!("product-{id}"),
        description: format!("description of product {id}"),
        price_in_cents,
        discount_value: None,
    }
}

/// A request for customer `customer_id`'s price of `product`.
pub fn discount_request(customer_id: i32, product: Product) -> DiscountRequest {
    DiscountRequest {
        customer: Some(customer(customer_id)),
        product: Some(product),
    }
}

/// Asks discount over `channel` for customer `customer_id`'s discount on a
/// product priced `price_in_cents`, within [`HANG`].
///
/// # Errors
/// The call failed or timed out, or the answer had no discount.
pub async fn discount_value(
    channel: Channel,
    customer_id: i32,
    price_in_cents: i32,
) -> SetupResult<DiscountValue> {
    let request = discount_request(customer_id, product(1, price_in_cents));
    let answer =
        tokio::time::timeout(HANG, DiscountClient::new(channel).apply_discount(request)).await??;
    Ok(answer
        .into_inner()
        .product
        .and_then(|p| p.discount_value)
        .ok_or("an answer without a discount_value")?)
}

/// `error` followed by each of its sources, joined by `": "`: the whole
/// story, where tonic's own message is often just "transport error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A tonic channel to `addr` over mutual TLS, trusting the CA of `pki`,
/// expecting the server to be `localhost`, and presenting `pki`'s client
/// certificate. Connects before returning.
///
/// # Errors
/// The connection or the handshake failed.
pub async fn grpc_channel(addr: SocketAddr, pki: &Pki) -> SetupResult<Channel> {
    grpc_channel_with(addr, &pki.path("ca.pem"), Some(pki.identity("client")?)).await
}

/// A tonic channel to `addr` over TLS, trusting the CA of `ca_pem`,
/// expecting the server to be `localhost`, presenting `identity` if any.
/// Connects before returning, within [`HANG`].
///
/// # Errors
/// The connection or the handshake failed, or took too long.
pub async fn grpc_channel_with(
    addr: SocketAddr,
    ca_pem: &Path,
    identity: Option<Identity>,
) -> SetupResult<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca_pem)?))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(HANG)
        .tls_config(tls)?;
    // connect_timeout covers the TCP connect only; a server that accepts
    // and never finishes the handshake must not hang the test.
    Ok(tokio::time::timeout(HANG, endpoint.connect())
        .await
        .map_err(|_| format!("no TLS connection to {addr} within {HANG:?}"))??)
}
