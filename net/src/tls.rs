//! TLS server configuration (rustls) from PEM files.
//!
//! The node drives `rustls::ServerConnection` itself (read_tls / write_tls) so
//! that a TLS session's state can move to the user's home core together with
//! the socket after login; see the engine's connection driver.

use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("certificate and key do not form a valid server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads a certificate chain and private key and builds a server config with
/// safe defaults (TLS 1.2 and 1.3, no client auth).
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|source| TlsConfigError::Read { path: p.display().to_string(), source });
    let cert_bytes = read(cert_pem)?;
    let key_bytes = read(key_pem)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_bytes[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsConfigError::Read { path: cert_pem.display().to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: cert_pem.display().to_string() });
    }
    let key = rustls_pemfile::private_key(&mut &key_bytes[..])
        .map_err(|source| TlsConfigError::Read { path: key_pem.display().to_string(), source })?
        .ok_or_else(|| TlsConfigError::NoKey { path: key_pem.display().to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}
