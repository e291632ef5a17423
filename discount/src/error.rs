//! Errors of the discount service, mapped once to gRPC status codes and once
//! to start-up messages.

use std::io;

use common::pem::PemFileError;
use tonic::Status;

/// Why an `ApplyDiscount` or `ApplyDiscounts` call was refused.
#[derive(Debug, thiserror::Error)]
pub enum DiscountError {
    /// The request had no `customer` message.
    #[error("the request's customer is missing; send the customer the discount is for")]
    MissingCustomer,
    /// The request had no `product` message.
    #[error("the request's product is missing; send the product to price")]
    MissingProduct,
}

impl From<DiscountError> for Status {
    fn from(error: DiscountError) -> Self {
        match error {
            DiscountError::MissingCustomer | DiscountError::MissingProduct => {
                Status::invalid_argument(error.to_string())
            }
        }
    }
}

/// Why the service could not start. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The certificate doctor found errors.
    #[error(transparent)]
    Certificates(#[from] common::doctor::CertificateErrors),
    /// A certificate or key file could not be read.
    #[error(transparent)]
    Pem(#[from] PemFileError),
    /// The files were read but rustls would not use them together (for
    /// example a key that does not belong to the certificate).
    #[error(
        "cannot use {cert} with {key} as the server identity: {error}; check that the key belongs to the certificate, or run `scripts/gen-keys.sh --renew` to make a fresh pair from the same development CA"
    )]
    Identity {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls said.
        error: rustls::Error,
    },
    /// The client CA file was read but cannot verify clients.
    #[error(
        "cannot verify client certificates with {ca}: {error}; point --client-ca at the CA that signs your clients' certificates"
    )]
    ClientCa {
        /// The CA file.
        ca: String,
        /// What rustls said.
        error: rustls::server::VerifierBuilderError,
    },
    /// The listening socket could not be bound.
    #[error("{0}; pick another port (the first argument) or stop whatever holds it")]
    Bind(io::Error),
    /// The metrics listener could not be bound.
    #[error("metrics listener: {0}; pick another --metrics-addr or stop whatever holds it")]
    MetricsBind(io::Error),
    /// The reflection service could not read the embedded descriptors.
    #[error("cannot set up gRPC server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
