//! When each loaded certificate expires, for
//! `tls_certificate_expiry_seconds`: noted at each load that succeeds, so
//! the gauge tells of the certificate in use, not of the file on disk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::GaugeVec;

use crate::pem::PemFile;

/// When each loaded certificate file expires, by file and role, for
/// `tls_certificate_expiry_seconds`. Noted when a file is loaded, at start
/// and on each reload that succeeds, so it is the certificate in use, not
/// whatever is on disk now.
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    inner: Arc<Mutex<CertificatesInner>>,
}

#[derive(Debug, Default)]
struct CertificatesInner {
    /// (file, role) to the soonest `notAfter` in it, in Unix seconds.
    expiry: BTreeMap<(String, &'static str), i64>,
    gauge: Option<GaugeVec>,
}

impl Certificates {
    fn lock(&self) -> std::sync::MutexGuard<'_, CertificatesInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_gauge(&self, gauge: GaugeVec) {
        self.lock().gauge = Some(gauge);
    }

    /// Notes the certificates of `file`, loaded for `role` (`server`,
    /// `client`, `client-ca`, `server-ca`). A file with none is ignored.
    pub fn record(&self, role: &'static str, file: &PemFile) {
        let Ok(certificates) = file.certificates() else {
            return;
        };
        let soonest = certificates
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, certificate)| certificate.validity().not_after.timestamp())
            .min();
        if let Some(not_after) = soonest {
            let path = crate::pem::display_path(&file.source().path);
            self.lock().expiry.insert((path, role), not_after);
        }
    }

    pub(super) fn refresh(&self, now: SystemTime) {
        let inner = self.lock();
        let Some(gauge) = &inner.gauge else {
            return;
        };
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
        for ((file, role), not_after) in &inner.expiry {
            #[allow(clippy::cast_precision_loss)] // seconds, far below 2^53
            gauge
                .with_label_values(&[file.as_str(), role])
                .set(not_after.saturating_sub(now) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use prometheus::{Encoder, TextEncoder};
    use std::time::Duration;

    #[test]
    fn certificate_expiry_counts_down_from_the_soonest_certificate() {
        let metrics = Metrics::new("demo", "0");
        let certificates = metrics.certificates().clone();
        certificates
            .lock()
            .expiry
            .insert(("keys/cert.pem".into(), "server"), 1_000);
        certificates.refresh(UNIX_EPOCH + Duration::from_secs(400));
        let text = String::from_utf8({
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&metrics.registry.gather(), &mut out)
                .unwrap();
            out
        })
        .unwrap();
        assert!(
            text.contains(
                "tls_certificate_expiry_seconds{file=\"keys/cert.pem\",role=\"server\"} 600\n"
            ),
            "{text}"
        );
        certificates.refresh(UNIX_EPOCH + Duration::from_secs(1_300));
        let gauge = certificates.lock().gauge.clone().unwrap();
        assert_eq!(
            gauge.with_label_values(&["keys/cert.pem", "server"]).get(),
            -300.0
        );
    }
}
