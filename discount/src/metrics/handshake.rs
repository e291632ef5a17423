//! Why a TLS handshake was refused: the reasons rustls gives, sorted into
//! the few values of the `reason` label.

/// Why a TLS handshake was refused, for `discount_tls_handshakes_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeRefusal {
    /// The client presented no certificate where one is required.
    NoCertificate,
    /// Its certificate is not signed by `--client-ca`.
    UnknownIssuer,
    /// Its certificate has expired or is not valid yet.
    Expired,
    /// Its certificate is not for client authentication.
    WrongPurpose,
    /// It did not finish within `--tls-handshake-timeout`.
    Timeout,
    /// It refused discount's certificate (sent an alert).
    ClientRefused,
    /// Anything else: not TLS, a protocol error, another certificate error.
    Other,
}

impl HandshakeRefusal {
    pub(super) const ALL: [Self; 7] = [
        Self::NoCertificate,
        Self::UnknownIssuer,
        Self::Expired,
        Self::WrongPurpose,
        Self::Timeout,
        Self::ClientRefused,
        Self::Other,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::WrongPurpose => "wrong_purpose",
            Self::Timeout => "timeout",
            Self::ClientRefused => "client_refused",
            Self::Other => "other",
        }
    }

    /// The reason rustls gave, sorted.
    pub(crate) fn of(error: &rustls::Error) -> Self {
        use rustls::CertificateError as Cert;
        match error {
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::AlertReceived(_) => Self::ClientRefused,
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                Cert::UnknownIssuer | Cert::BadSignature => Self::UnknownIssuer,
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. } => Self::Expired,
                Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => Self::WrongPurpose,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}
