//! The process's TLS crypto provider.
//!
//! reqwest is built with `rustls-no-provider` (Cargo.toml: aws-lc, the SDK's default, is a long
//! C build), so rustls' ring provider must be installed before the first HTTP client is made:
//! the storage clients, the ARM client and its credential, and the hooks' webhook client all
//! call [`install_provider`] first.

/// Installs ring as the process's default rustls provider, once.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means another provider was installed first (by an embedding program);
        // that one is then used, which is what the embedder asked for.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
