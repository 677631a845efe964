//! One client connection's TLS session, sans-IO: ciphertext in, plaintext out
//! ([`TlsSession::absorb`]); plaintext in, records out ([`TlsSession::seal`]).
//!
//! Built on rustls's *unbuffered* server API so that an idle session owns no
//! buffers at all: ciphertext is processed straight out of the core's shared
//! read scratch buffer, plaintext goes into the connection's own (usually
//! empty) inbound buffer, and records are encrypted into the connection's
//! write buffer, which the driver releases after each flush. The buffered
//! `rustls::ServerConnection` keeps a 4 KiB read buffer (its deframer) for the
//! whole life of a connection, more than a whole idle plaintext session costs;
//! see docs/design.md "TLS session memory" for the allocation profile.
//!
//! What a session keeps between bursts: rustls's connection state (keys,
//! sequence numbers, the TLS 1.3 traffic-key schedule) and, only while a
//! record is split across reads, the partial record. A `TlsSession` is
//! `Send`: it moves with the socket when a login hands the session to its
//! home core.

use crate::metrics::CoreMetrics;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError};
use rustls::{HandshakeKind, ServerConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Most ciphertext a session holds between reads: a partial record (at most
/// 16 KiB + 2 KiB + header) or, during the handshake, the parts of a joined
/// handshake message (rustls caps one at 64 KiB).
pub const PENDING_CIPHERTEXT_BYTES_MAX: usize = 64 * 1024 + 18 * 1024;
/// A pending-ciphertext buffer larger than this is released once emptied.
const IDLE_PENDING_BYTES_MAX: usize = 0;

/// Why a TLS session cannot go on (the connection closes with reason `tls_error`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS protocol error: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("more than {PENDING_CIPHERTEXT_BYTES_MAX} bytes of incomplete TLS records")]
    PendingTooLarge,
    #[error("decrypted input exceeds {limit} bytes")]
    PlaintextTooLarge { limit: usize },
    #[error("application data before the handshake completed")]
    NotReady,
    #[error("TLS session already closed")]
    Closed,
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::other(e)
    }
}

/// The TLS state of one connection. Box it: it travels in a hand-off.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext received but not yet processed: a partial record, usually empty.
    pending: Vec<u8>,
    handshake_counted: bool,
    failed: bool,
}

/// What [`TlsSession::drive`] may do with the states it meets.
struct Drive<'a> {
    plaintext: Option<(&'a mut Vec<u8>, usize)>,
    app_data: Option<&'a [u8]>,
    close_notify: bool,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            pending: Vec::new(),
            handshake_counted: false,
            failed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether this session was resumed from a ticket (known once the handshake is done).
    pub fn is_resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Bytes of ciphertext held between reads (0 for an idle session).
    pub fn pending_bytes(&self) -> usize {
        self.pending.capacity()
    }

    /// Processes `ciphertext` (decrypted in place where possible): appends the
    /// plaintext to `plaintext` (at most `plaintext_bytes_max` bytes in all)
    /// and handshake records to `wire`, which the caller sends before anything
    /// [`seal`](Self::seal) adds. An incomplete record is kept for the next call.
    pub fn absorb(
        &mut self,
        ciphertext: &mut [u8],
        plaintext: &mut Vec<u8>,
        wire: &mut Vec<u8>,
        plaintext_bytes_max: usize,
    ) -> Result<(), TlsError> {
        let drive = Drive { plaintext: Some((plaintext, plaintext_bytes_max)), app_data: None, close_notify: false };
        if self.pending.is_empty() {
            let used = self.drive(ciphertext, wire, drive)?;
            let rest = &ciphertext[used..];
            if rest.len() > PENDING_CIPHERTEXT_BYTES_MAX {
                return Err(self.fail(TlsError::PendingTooLarge));
            }
            self.pending.extend_from_slice(rest);
            return Ok(());
        }
        if self.pending.len() + ciphertext.len() > PENDING_CIPHERTEXT_BYTES_MAX {
            return Err(self.fail(TlsError::PendingTooLarge));
        }
        self.pending.extend_from_slice(ciphertext);
        self.drive_pending(wire, drive)
    }

    /// [`absorb`](Self::absorb) for ciphertext the caller cannot lend mutably (a
    /// receive buffer that goes back to its pool): it is copied into the session's
    /// pending buffer and processed there; the buffer is released once empty.
    pub fn absorb_copied(
        &mut self,
        ciphertext: &[u8],
        plaintext: &mut Vec<u8>,
        wire: &mut Vec<u8>,
        plaintext_bytes_max: usize,
    ) -> Result<(), TlsError> {
        if self.pending.len() + ciphertext.len() > PENDING_CIPHERTEXT_BYTES_MAX {
            return Err(self.fail(TlsError::PendingTooLarge));
        }
        self.pending.extend_from_slice(ciphertext);
        let drive = Drive { plaintext: Some((plaintext, plaintext_bytes_max)), app_data: None, close_notify: false };
        self.drive_pending(wire, drive)
    }

    /// Encrypts `plaintext` into records appended to `wire`, after any
    /// handshake records still to be sent (e.g. session tickets).
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let app_data = (!plaintext.is_empty()).then_some(plaintext);
        self.drive_pending(wire, Drive { plaintext: None, app_data, close_notify: false })
    }

    /// Appends a close_notify alert to `wire` (after any queued records). A
    /// session that failed sends only the alert rustls queued for the failure.
    pub fn close_notify(&mut self, wire: &mut Vec<u8>) -> Result<(), TlsError> {
        let close_notify = !self.failed;
        self.drive_pending(wire, Drive { plaintext: None, app_data: None, close_notify })
    }

    /// Counts a completed handshake once (full or resumed) in `metrics`.
    pub fn count_handshake(&mut self, metrics: &CoreMetrics) {
        if !self.handshake_counted && !self.is_handshaking() {
            self.handshake_counted = true;
            metrics.tls_handshakes_total.fetch_add(1, Relaxed);
            if self.is_resumed() {
                metrics.tls_handshakes_resumed_total.fetch_add(1, Relaxed);
            }
        }
    }

    fn fail(&mut self, e: TlsError) -> TlsError {
        self.failed = true;
        e
    }

    /// Runs [`drive`](Self::drive) over the held ciphertext and keeps what it left.
    fn drive_pending(&mut self, wire: &mut Vec<u8>, drive: Drive<'_>) -> Result<(), TlsError> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.drive(&mut pending, wire, drive);
        if let Ok(used) = result {
            pending.drain(..used);
        }
        if pending.is_empty() && pending.capacity() > IDLE_PENDING_BYTES_MAX {
            pending = Vec::new();
        }
        self.pending = pending;
        result.map(|_| ())
    }

    /// Steps rustls's state machine over `input` until it needs more input or
    /// has nothing more to do; returns how many bytes of `input` it consumed.
    fn drive(&mut self, input: &mut [u8], wire: &mut Vec<u8>, mut drive: Drive<'_>) -> Result<usize, TlsError> {
        let mut used = 0;
        loop {
            let status = self.conn.process_tls_records(&mut input[used..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.failed = true;
                    return Err(TlsError::Protocol(e));
                }
            };
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        let Some((plaintext, limit)) = drive.plaintext.as_mut() else {
                            // Only `absorb` reads, and it takes every record it meets.
                            return Err(TlsError::Encrypt("application data arrived while sealing".into()));
                        };
                        if plaintext.len() + record.payload.len() > *limit {
                            self.failed = true;
                            return Err(TlsError::PlaintextTooLarge { limit: *limit });
                        }
                        plaintext.extend_from_slice(record.payload);
                        used += record.discard;
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, wire)?,
                // The caller sends `wire` in order before anything encrypted later.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    if let Some(data) = drive.app_data.take() {
                        encrypt_into(wire, |out| traffic.encrypt(data, out))?;
                    } else if drive.close_notify {
                        drive.close_notify = false;
                        encrypt_into(wire, |out| traffic.queue_close_notify(out))?;
                    } else {
                        done = true;
                    }
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => {
                    if drive.app_data.is_some() {
                        return Err(if self.is_handshaking() { TlsError::NotReady } else { TlsError::Closed });
                    }
                    done = true;
                }
                // The peer's close_notify: its EOF follows and ends the connection.
                ConnectionState::PeerClosed => {}
                // Early data is not enabled (max_early_data_size is 0).
                ConnectionState::ReadEarlyData(_) => {
                    self.failed = true;
                    return Err(TlsError::Protocol(rustls::Error::General("unexpected early data".into())));
                }
                _ => done = true,
            }
            used += discard;
            if done {
                return Ok(used);
            }
        }
    }
}

/// Appends one handshake record to `wire`.
fn encode_into<Data>(encode: &mut EncodeTlsData<'_, Data>, wire: &mut Vec<u8>) -> Result<(), TlsError> {
    let required = |e: &EncodeError| match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        _ => None,
    };
    write_grown(wire, required, |out| encode.encode(out))
}

/// Appends one encrypted record (or several, for long data) to `wire`.
fn encrypt_into(
    wire: &mut Vec<u8>,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    let required = |e: &EncryptError| match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        _ => None,
    };
    write_grown(wire, required, write)
}

/// Runs `write` on the spare end of `wire`, growing it once to the size rustls asks for.
fn write_grown<E: std::fmt::Display>(
    wire: &mut Vec<u8>,
    required: impl Fn(&E) -> Option<usize>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), TlsError> {
    /// First guess of the room one call needs (a small record or a few frames).
    const RESERVE_BYTES: usize = 512;
    let start = wire.len();
    wire.resize(start + RESERVE_BYTES, 0);
    let mut result = write(&mut wire[start..]);
    if let Some(size) = result.as_ref().err().and_then(&required) {
        wire.resize(start + size, 0);
        result = write(&mut wire[start..]);
    }
    match result {
        Ok(n) => {
            wire.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            wire.truncate(start);
            Err(TlsError::Encrypt(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::io::{Read, Write};

    const FRAMES_MAX: usize = 1 << 20;

    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Ciphertext the client wants to send.
    fn client_wire(client: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Feeds server records to the client; returns the plaintext it read.
    fn to_client(client: &mut rustls::ClientConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut plain);
        }
        plain
    }

    /// A server session and a client that completed the handshake in memory.
    fn established() -> (TlsSession, rustls::ClientConnection) {
        let (server_config, client_config) = configs();
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client =
            rustls::ClientConnection::new(client_config, ServerName::try_from("localhost").unwrap()).unwrap();
        for _ in 0..10 {
            let (mut plain, mut wire) = (Vec::new(), Vec::new());
            server.absorb(&mut client_wire(&mut client), &mut plain, &mut wire, FRAMES_MAX).unwrap();
            server.seal(&[], &mut wire).unwrap();
            assert!(plain.is_empty());
            to_client(&mut client, &wire);
            if !server.is_handshaking() && !client.is_handshaking() {
                return (server, client);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn an_idle_session_holds_no_ciphertext_and_bytes_split_anywhere_arrive_whole() {
        let (mut server, mut client) = established();
        assert_eq!(server.pending_bytes(), 0);
        // A burst of several records (more than one 16 KiB record), fed in uneven pieces.
        let burst: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&burst).unwrap();
        let wire = client_wire(&mut client);
        let mut plain = Vec::new();
        let mut out = Vec::new();
        for (i, piece) in wire.chunks(1_777).enumerate() {
            let mut piece = piece.to_vec();
            server.absorb(&mut piece, &mut plain, &mut out, FRAMES_MAX).unwrap();
            if i == 0 {
                assert!(server.pending_bytes() > 0, "a split record is held until it completes");
            }
        }
        assert_eq!(plain, burst);
        assert_eq!(server.pending_bytes(), 0, "buffers are given back once the burst is through");
        // After idling, the session serves again in both directions.
        client.writer().write_all(b"after idle").unwrap();
        let mut again = Vec::new();
        server.absorb(&mut client_wire(&mut client), &mut again, &mut out, FRAMES_MAX).unwrap();
        assert_eq!(again, b"after idle");
        out.clear();
        server.seal(&burst, &mut out).unwrap();
        assert_eq!(to_client(&mut client, &out), burst);
    }

    #[test]
    fn ciphertext_lent_read_only_arrives_whole_and_leaves_no_buffer_behind() {
        let (mut server, mut client) = established();
        let burst: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
        client.writer().write_all(&burst).unwrap();
        let wire = client_wire(&mut client);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        for piece in wire.chunks(1_000) {
            server.absorb_copied(piece, &mut plain, &mut out, FRAMES_MAX).unwrap();
        }
        assert_eq!(plain, burst);
        assert_eq!(server.pending_bytes(), 0);
    }

    #[test]
    fn close_notify_reaches_the_client_after_the_last_data() {
        let (mut server, mut client) = established();
        let mut wire = Vec::new();
        server.seal(b"last frame", &mut wire).unwrap();
        server.close_notify(&mut wire).unwrap();
        let mut plain = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(client.reader().read_to_end(&mut plain).is_ok(), "clean EOF after close_notify");
        assert_eq!(plain, b"last frame");
    }

    #[test]
    fn garbage_input_and_oversized_plaintext_are_typed_errors() {
        let (server_config, _) = configs();
        let mut server = TlsSession::new(server_config).unwrap();
        let mut garbage = *b"\x00\x01\x02 not a TLS record at all";
        let err = server.absorb(&mut garbage, &mut Vec::new(), &mut Vec::new(), FRAMES_MAX).unwrap_err();
        assert!(matches!(err, TlsError::Protocol(_)), "{err}");
        // The alert rustls queued for the failure still goes out.
        let mut wire = Vec::new();
        server.close_notify(&mut wire).unwrap();
        assert!(!wire.is_empty());

        let (mut server, mut client) = established();
        client.writer().write_all(&[7u8; 300]).unwrap();
        let err = server.absorb(&mut client_wire(&mut client), &mut Vec::new(), &mut Vec::new(), 100).unwrap_err();
        assert!(matches!(err, TlsError::PlaintextTooLarge { limit: 100 }), "{err}");
    }

    #[test]
    fn a_session_moves_to_another_thread_and_continues() {
        let (server, mut client) = established();
        let mut server = std::thread::spawn(move || Box::new(server)).join().unwrap();
        client.writer().write_all(b"on the home core").unwrap();
        let mut plain = Vec::new();
        server.absorb(&mut client_wire(&mut client), &mut plain, &mut Vec::new(), FRAMES_MAX).unwrap();
        assert_eq!(plain, b"on the home core");
    }
}
