//! The gRPC client of the discount service.
//!
//! One [`Channel`] is made at start and shared by every request: HTTP/2
//! multiplexes the calls over one TLS connection, which tonic re-establishes
//! by itself after discount restarts. It connects lazily, so the catalog
//! starts (and serves undiscounted lists) while discount is down.
//!
//! Every failure degrades to "no discount for this product": the catalog
//! never drops a product or fails a listing because discount misbehaved. The
//! cause is logged with its whole `source()` chain, because tonic's own
//! message for a refused connection or a TLS failure is a bare
//! "transport error".

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use common::tls::PemSource;
use ecommerce_proto::pb::discount_client::DiscountClient as GrpcClient;
use ecommerce_proto::pb::{Customer, DiscountRequest, DiscountValue, Product};
use futures_util::future::join_all;
use rustls::client::WebPkiServerVerifier;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::DiscountAddr;
use crate::error::StartupError;

/// How to reach discount.
#[derive(Debug, Clone)]
pub struct DiscountSettings {
    /// `host:port` to dial.
    pub addr: DiscountAddr,
    /// The name discount's certificate must carry; usually `addr`'s host.
    pub server_name: String,
    /// The CA certificates that may sign discount's certificate.
    pub ca: PemSource,
    /// The longest a single ApplyDiscount call may take, connecting included.
    pub deadline: Duration,
    /// The longest a TCP connect, and separately a TLS handshake, may take.
    pub connect_timeout: Duration,
}

/// A cheap-to-clone handle on the shared channel to discount.
#[derive(Debug, Clone)]
pub struct DiscountClient {
    grpc: GrpcClient<Channel>,
    deadline: Duration,
}

impl DiscountClient {
    /// Prepares the channel without connecting.
    ///
    /// # Errors
    /// The CA file is unusable, or tonic refuses the address.
    pub fn connect_lazy(settings: &DiscountSettings) -> Result<Self, StartupError> {
        let roots = common::tls::read_root_store(&settings.ca)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), common::tls::provider())
                .build()
                .map_err(|error| StartupError::Trust {
                    ca: settings.ca.path.display().to_string(),
                    error,
                })?;
        let tls = ClientTlsConfig::new()
            .domain_name(settings.server_name.clone())
            .timeout(settings.connect_timeout);
        let endpoint_error = |error| StartupError::Endpoint {
            addr: settings.addr.to_string(),
            error,
        };
        let endpoint = Endpoint::from_shared(settings.addr.uri())
            .map_err(endpoint_error)?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .tls_config_with_verifier(tls, verifier)
            .map_err(endpoint_error)?;
        Ok(Self {
            grpc: GrpcClient::new(endpoint.connect_lazy()),
            deadline: settings.deadline,
        })
    }

    /// Asks discount for `customer`'s discount on `product`.
    ///
    /// The deadline travels to discount as `grpc-timeout`, and is enforced
    /// here as well, so a discount that accepts the connection and then says
    /// nothing costs at most the deadline.
    ///
    /// # Errors
    /// A [`CallError`] saying what went wrong.
    pub async fn discount(
        &self,
        customer: &Customer,
        product: &Product,
    ) -> Result<Option<DiscountValue>, CallError> {
        let mut request = tonic::Request::new(DiscountRequest {
            customer: Some(customer.clone()),
            product: Some(product.clone()),
        });
        request.set_timeout(self.deadline);
        let mut grpc = self.grpc.clone();
        let response = tokio::time::timeout(self.deadline, grpc.apply_discount(request))
            .await
            .map_err(|_| CallError::Deadline(self.deadline))?
            .map_err(CallError::Status)?
            .into_inner();
        let priced = response
            .product
            .ok_or(CallError::Invalid("the response has no product"))?;
        if priced.id != product.id {
            return Err(CallError::Invalid("the response is for another product"));
        }
        match priced.discount_value {
            Some(value) if !value.pct.is_finite() => {
                Err(CallError::Invalid("pct is not a finite number"))
            }
            other => Ok(other),
        }
    }

    /// Returns every product of `products`, in order, each with the discount
    /// `customer` gets on it; where discount failed, the product as it was.
    ///
    /// The calls run concurrently over the shared channel.
    pub async fn apply_to_all(&self, customer: &Customer, products: Vec<Product>) -> Vec<Product> {
        let answers = join_all(
            products
                .iter()
                .map(|product| self.discount(customer, product)),
        )
        .await;
        products
            .into_iter()
            .zip(answers)
            .map(|(product, answer)| match answer {
                Ok(discount_value) => Product {
                    discount_value,
                    ..product
                },
                Err(error) => {
                    tracing::warn!(
                        customer_id = customer.id,
                        product_id = product.id,
                        %error,
                        "discount failed; listing the product without it"
                    );
                    product
                }
            })
            .collect()
    }
}

/// Why one ApplyDiscount call gave no usable answer.
#[derive(Debug)]
pub enum CallError {
    /// No answer within the deadline.
    Deadline(Duration),
    /// The call failed: connection refused, TLS failure, or an error status
    /// from discount.
    Status(tonic::Status),
    /// Discount answered with something the catalog cannot use.
    Invalid(&'static str),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline(deadline) => write!(f, "no answer from discount within {deadline:?}"),
            Self::Status(status) => {
                write!(
                    f,
                    "discount call failed with {:?}: {}",
                    status.code(),
                    status.message()
                )?;
                // The useful part (refused, certificate unknown, ...) is
                // often only in the sources.
                let mut source = status.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            Self::Invalid(what) => write!(f, "discount sent an unusable response: {what}"),
        }
    }
}

impl Error for CallError {}
