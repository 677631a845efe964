//! The generator's TLS client (rustls), the same for every scenario and both
//! runtimes: it sits between a connection's socket I/O and its protocol codec
//! (ciphertext from the socket is opened into plaintext for the codec; the
//! codec's output is sealed into records before it is written).
//!
//! Server certificates are verified against `--tls-ca` (or the platform's
//! bundled web roots when neither `--tls-ca` nor `--tls-insecure` is given);
//! `--tls-insecure` accepts any certificate but still checks the handshake
//! signature with it, for self-signed test certificates. With `--resume`
//! every connection first completes one full handshake to obtain a ticket
//! and then connects again resuming it (the measured session), so a run
//! measures resumed handshakes.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("cannot read --tls-ca {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("--tls-ca {path} holds no usable certificate")]
    NoCa { path: String },
    #[error("--tls-server-name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the generator's connections speak TLS (built once per run, shared by its threads).
#[derive(Debug, Clone)]
pub struct TlsClientSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Each connection resumes a ticket from a first, unmeasured handshake.
    pub resume: bool,
}

impl TlsClientSetup {
    /// `ca`: PEM roots to trust; `insecure`: accept any certificate (still checking
    /// the handshake signature); neither: webpki's bundled roots are not shipped,
    /// so one of the two is required.
    pub fn new(ca: Option<&Path>, insecure: bool, server_name: &str, resume: bool) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let mut config = match (ca, insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
                .with_no_client_auth(),
            (Some(ca), false) => builder.with_root_certificates(load_roots(ca)?).with_no_client_auth(),
            (None, false) => builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth(),
        };
        // Without --resume no connection offers a ticket (each connection gets its own
        // store with --resume, see `connection_config`).
        config.resumption = rustls::client::Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsSetupError::ServerName(server_name.to_owned()))?;
        Ok(Self { config: Arc::new(config), server_name, resume })
    }

    /// The configuration one connection's handshakes use. With `--resume` it has
    /// a ticket store of its own, so that the connection resumes the ticket of
    /// its own first handshake (one shared store keeps only a few tickets per
    /// server name, and concurrent connections would take each other's).
    pub fn connection_config(&self) -> Arc<ClientConfig> {
        if !self.resume {
            return self.config.clone();
        }
        let mut own = (*self.config).clone();
        own.resumption = rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new(1)));
        Arc::new(own)
    }

    /// A client session under `config` (from [`connection_config`](Self::connection_config)).
    pub fn client(&self, config: &Arc<ClientConfig>) -> Result<TlsClient, TlsSetupError> {
        let conn = rustls::ClientConnection::new(config.clone(), self.server_name.clone())?;
        Ok(TlsClient { conn: Box::new(conn) })
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsSetupError::Ca { path: shown(), reason: e.to_string() })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| TlsSetupError::Ca { path: shown(), reason: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsSetupError::Ca { path: shown(), reason: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCa { path: shown() });
    }
    Ok(roots)
}

/// One connection's TLS client session.
pub struct TlsClient {
    conn: Box<rustls::ClientConnection>,
}

impl TlsClient {
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    pub fn is_resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Queues `plaintext` (held until the handshake completes) and appends every
    /// record ready to leave to `wire`.
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut Vec<u8>) -> std::io::Result<()> {
        if !plaintext.is_empty() {
            self.conn.writer().write_all(plaintext)?;
        }
        while self.conn.wants_write() {
            self.conn.write_tls(wire)?;
        }
        Ok(())
    }

    /// Processes `ciphertext` and appends the plaintext it carried to `plaintext`.
    pub fn open(&mut self, mut ciphertext: &[u8], plaintext: &mut Vec<u8>) -> std::io::Result<()> {
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext)?;
            self.conn.process_new_packets().map_err(std::io::Error::other)?;
            match self.conn.reader().read_to_end(plaintext) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Accepts any server certificate (self-signed test nodes) but still verifies
/// that the server holds its key (the handshake signature).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Flags of every scenario that turn TLS on (see the module documentation).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS to the node's TLS port (point --target at it, e.g. 127.0.0.1:7443).
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificates (or the self-signed certificate) to trust.
    #[arg(long, requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate (self-signed test certificates); the
    /// handshake signature is still checked.
    #[arg(long, requires = "tls", conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// Name the server certificate must be valid for (and SNI).
    #[arg(long, default_value = "localhost", requires = "tls")]
    pub tls_server_name: String,
    /// Each connection first does one full handshake for a ticket, then
    /// reconnects resuming it; the reconnects are what the run measures.
    #[arg(long, requires = "tls")]
    pub resume: bool,
}

impl TlsArgs {
    /// The run's TLS setup, or `None` without `--tls`.
    pub fn setup(&self) -> Result<Option<TlsClientSetup>, TlsSetupError> {
        if !self.tls {
            return Ok(None);
        }
        TlsClientSetup::new(self.tls_ca.as_deref(), self.tls_insecure, &self.tls_server_name, self.resume).map(Some)
    }
}
