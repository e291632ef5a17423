//! The one rustls crypto provider of this workspace: `ring`.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider this workspace uses: `ring`.
///
/// Configs are built with this provider explicitly, so they never depend on
/// what some other crate installed as the process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs `ring` as the process-wide rustls provider.
///
/// rustls panics at the first handshake when it has to pick a default and
/// finds two providers compiled in (for example `ring` and `aws-lc-rs`
/// pulled in by some dependency's default features). Installing ours first
/// makes that impossible. Calling it twice is harmless.
pub fn install_default_provider() {
    // Err means a provider is already installed: either ours from an
    // earlier call, or one the embedding program chose on purpose.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
