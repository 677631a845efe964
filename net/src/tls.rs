//! TLS server configuration (rustls) from PEM files.
//!
//! The node drives `rustls::ServerConnection` itself (read_tls / write_tls) so
//! that a TLS session's state can move to the user's home core together with
//! the socket after login; see the engine's connection driver.

use crate::tls_resumption::{RotatingTicketer, TicketerError};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid PEM: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("certificate and key do not form a valid server configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Ticketer(#[from] TicketerError),
}

/// TLS 1.3 tickets sent after each handshake: a client reconnects with one and
/// gets a fresh one on the resumed connection.
const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// Loads a certificate chain and private key and builds a server config with
/// safe defaults (TLS 1.2 and 1.3, no client auth). PEM is parsed by
/// rustls-pki-types (re-exported by rustls), which supersedes rustls-pemfile.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    server_config_with_resumption(cert_pem, key_pem, None)
}

/// [`server_config`] with stateless session resumption when `ticket_rotation_s`
/// is given: one TLS 1.3 ticket per handshake (and TLS 1.2 tickets), sealed by a
/// [`RotatingTicketer`] whose keys rotate every `ticket_rotation_s` seconds.
/// Without it the node resumes nothing. No session state is kept per client
/// either way (no session-id cache).
pub fn server_config_with_resumption(
    cert_pem: &Path,
    key_pem: &Path,
    ticket_rotation_s: Option<u64>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read =
        |p: &Path| std::fs::read(p).map_err(|source| TlsConfigError::Read { path: p.display().to_string(), source });
    let pem_error =
        |p: &Path, e: pem::Error| TlsConfigError::Pem { path: p.display().to_string(), reason: e.to_string() };
    let cert_bytes = read(cert_pem)?;
    let key_bytes = read(key_pem)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_bytes).collect::<Result<_, _>>().map_err(|e| pem_error(cert_pem, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: cert_pem.display().to_string() });
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsConfigError::NoKey { path: key_pem.display().to_string() }),
        Err(e) => return Err(pem_error(key_pem, e)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    match ticket_rotation_s {
        Some(period_s) => {
            config.ticketer = Arc::new(RotatingTicketer::new(period_s)?);
            config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
        }
        None => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_a_certificate_or_a_key_get_typed_errors() {
        let dir = std::env::temp_dir().join(format!("redrain-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let garbled = dir.join("garbled.pem");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(matches!(server_config(&empty, &empty), Err(TlsConfigError::NoCertificate { .. })));
        assert!(matches!(server_config(&garbled, &empty), Err(TlsConfigError::Pem { .. })));
        assert!(matches!(server_config(&dir.join("missing.pem"), &empty), Err(TlsConfigError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
