//! Errors of the catalog, mapped once to HTTP responses and once to start-up
//! messages.

use std::io;

use axum::response::{IntoResponse, Response};
use common::pem::PemFileError;
use common::telemetry::Untrusted;
use http::{StatusCode, header};

/// Why a request was refused. Each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `X-USER-ID` was not an integer.
    #[error("Customer ID is not a number.")]
    InvalidCustomerId {
        /// The header as sent (lossily decoded), for the log only.
        value: String,
    },
    /// `page_size` or `page_token` was not one accepted.
    #[error(transparent)]
    BadPage(#[from] crate::page::PageError),
    /// The id in `/products/{id}` was not an integer.
    #[error("Product ID is not a number.")]
    BadProductId,
    /// No product has the id in `/products/{id}`.
    #[error("Product not found.")]
    ProductNotFound,
    /// The product data has not been loaded yet (the store cannot be
    /// reached since the start).
    #[error("{0}; retry shortly.")]
    NotLoaded(#[from] crate::data::NotLoaded),
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        match &self {
            Self::InvalidCustomerId { value } => {
                // At most 64 characters of whatever the client sent, escaped
                // so a hostile value cannot forge log lines.
                let shown: String = value.chars().take(64).collect();
                tracing::info!(x_user_id = %Untrusted(&shown), "rejected X-USER-ID");
            }
            Self::BadPage(crate::page::PageError::Size { value }) => {
                let shown: String = value.chars().take(64).collect();
                tracing::info!(page_size = %Untrusted(&shown), "rejected page_size");
            }
            // The refresh task logs why the data is not there, once.
            Self::BadPage(_) | Self::BadProductId | Self::ProductNotFound | Self::NotLoaded(_) => {}
        }
        let status = match self {
            Self::InvalidCustomerId { .. } | Self::BadPage(_) | Self::BadProductId => {
                StatusCode::BAD_REQUEST
            }
            Self::ProductNotFound => StatusCode::NOT_FOUND,
            Self::NotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The body and headers of Go's http.Error, which the seed used.
        (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Why the catalog could not start. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The certificate doctor found errors.
    #[error(transparent)]
    Certificates(#[from] common::doctor::CertificateErrors),
    /// The CA file could not be read.
    #[error(transparent)]
    Pem(#[from] PemFileError),
    /// The CA file was read but cannot verify servers.
    #[error(
        "cannot verify discount's certificate with {ca}: {error}; point --discount-ca at the CA that signed discount's certificate"
    )]
    Trust {
        /// The CA file.
        ca: String,
        /// What rustls said.
        error: rustls::server::VerifierBuilderError,
    },
    /// tonic refused the discount endpoint.
    #[error("cannot set up the connection to discount at {addr}: {error}")]
    Endpoint {
        /// The configured address.
        addr: String,
        /// What tonic said.
        error: tonic::transport::Error,
    },
    /// The listening socket could not be bound.
    #[error("{0}; pick another port (the first argument) or stop whatever holds it")]
    Bind(io::Error),
    /// The store could not be opened or prepared.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The metrics listener could not be bound.
    #[error("metrics listener: {0}; pick another --metrics-addr or stop whatever holds it")]
    MetricsBind(io::Error),
}
