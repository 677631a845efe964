//! Client side of the codec: request-id allocation, response splitting, and a
//! small blocking client over `std::net` for tests, tools and examples.
//!
//! The load generator uses [`ClientCodec`] with its own async I/O; the blocking
//! [`BlockingClient`] exists so integration tests exercise exactly the bytes a
//! third-party client would send.

use crate::frame::{FrameDecoder, FrameError, FrameHeader};
use crate::message::{BodyError, Request, Response, TOKEN_BYTES};
use crate::PROTOCOL_VERSION;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use thiserror::Error;

/// One response frame copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    pub request_id: u32,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl ResponseFrame {
    /// Interprets the body according to the type byte.
    pub fn parse(&self) -> Result<Response<'_>, BodyError> {
        let frame = crate::frame::FrameRef {
            header: FrameHeader { kind: self.kind, flags: 0, request_id: self.request_id },
            body: &self.body,
        };
        Response::parse(&frame)
    }
}

/// Sans-IO client state: numbers requests and splits the response stream.
#[derive(Debug)]
pub struct ClientCodec {
    decoder: FrameDecoder,
    next_request_id: u32,
    inbound: Vec<u8>,
    inbound_start: usize,
}

impl ClientCodec {
    pub fn new(frame_bytes_max: u32) -> Self {
        Self { decoder: FrameDecoder::new(frame_bytes_max), next_request_id: 1, inbound: Vec::new(), inbound_start: 0 }
    }

    /// Encodes `req` into `out` under a fresh request id and returns the id.
    /// Ids start at 1 (0 is reserved for server pushes) and wrap around.
    pub fn encode(&mut self, req: &Request<'_>, out: &mut Vec<u8>) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        req.encode(id, out);
        id
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.inbound_start == self.inbound.len() {
            self.inbound.clear();
            self.inbound_start = 0;
        }
        self.inbound.extend_from_slice(bytes);
    }

    /// Calls `on_frame` for every complete frame received so far, without copying.
    pub fn drain(
        &mut self,
        mut on_frame: impl FnMut(FrameHeader, Result<Response<'_>, BodyError>),
    ) -> Result<usize, FrameError> {
        let mut frames = 0;
        loop {
            let rest = &self.inbound[self.inbound_start..];
            match self.decoder.decode(rest)? {
                None => break,
                Some((frame, used)) => {
                    on_frame(frame.header, Response::parse(&frame));
                    self.inbound_start += used;
                    frames += 1;
                }
            }
        }
        if self.inbound_start > 64 * 1024 && self.inbound_start * 2 > self.inbound.len() {
            self.inbound.drain(..self.inbound_start);
            self.inbound_start = 0;
        }
        Ok(frames)
    }

    /// Pops the next complete frame as an owned copy.
    pub fn next_frame(&mut self) -> Result<Option<ResponseFrame>, FrameError> {
        let rest = &self.inbound[self.inbound_start..];
        match self.decoder.decode(rest)? {
            None => Ok(None),
            Some((frame, used)) => {
                let owned = ResponseFrame {
                    request_id: frame.header.request_id,
                    kind: frame.header.kind,
                    body: frame.body.to_vec(),
                };
                self.inbound_start += used;
                Ok(Some(owned))
            }
        }
    }
}

/// Errors of the blocking client.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("body: {0}")]
    Body(#[from] BodyError),
    #[error("server answered error code {code} ({message})")]
    Server { code: u16, retry_after_ms: u32, message: String },
    #[error("server closed the connection")]
    Closed,
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// Minimal synchronous client for tests and tools.
pub struct BlockingClient {
    stream: TcpStream,
    codec: ClientCodec,
    out: Vec<u8>,
    /// The last `Backoff` push seen by [`Self::call`]: (level, shake interval, retry-after).
    pub last_backoff: Option<(u8, u32, u32)>,
}

impl BlockingClient {
    /// Connects and completes the version handshake.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut c = Self { stream, codec: ClientCodec::new(1 << 20), out: Vec::new(), last_backoff: None };
        let f = c.call(&Request::Hello { version_min: PROTOCOL_VERSION, version_max: PROTOCOL_VERSION })?;
        match f.parse()? {
            Response::HelloOk { .. } => Ok(c),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Wraps an already connected stream without a handshake (for bad-input tests).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self { stream, codec: ClientCodec::new(1 << 20), out: Vec::new(), last_backoff: None }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Logs in; returns (user, device, home core, session id).
    pub fn login(&mut self, token: &[u8; TOKEN_BYTES]) -> Result<(u64, u32, u16, u64), ClientError> {
        let f = self.call(&Request::Login { token })?;
        match f.parse()? {
            Response::LoginOk { user_id, device_id, home_core, session_id } => {
                Ok((user_id, device_id, home_core, session_id))
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends one request and waits for its response (errors become `ClientError::Server`).
    /// A `Backoff` push that arrives first is remembered in [`Self::last_backoff`].
    pub fn call(&mut self, req: &Request<'_>) -> Result<ResponseFrame, ClientError> {
        let id = self.send(req)?;
        let mut f = self.recv()?;
        while f.request_id == 0 {
            match f.parse()? {
                Response::Backoff { level, shake_interval_ms, retry_after_ms } => {
                    self.last_backoff = Some((level, shake_interval_ms, retry_after_ms));
                    f = self.recv()?;
                }
                _ => break,
            }
        }
        if let Response::Error { code, retry_after_ms, message } = f.parse()? {
            return Err(ClientError::Server { code, retry_after_ms, message: message.to_owned() });
        }
        if f.request_id != id {
            return Err(ClientError::Unexpected(format!("response id {} for request {id}", f.request_id)));
        }
        Ok(f)
    }

    /// Sends one request without waiting; returns its request id.
    pub fn send(&mut self, req: &Request<'_>) -> Result<u32, ClientError> {
        self.out.clear();
        let id = self.codec.encode(req, &mut self.out);
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(id)
    }

    /// Writes raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Encodes a request into an internal batch without sending (see [`Self::flush`]).
    pub fn queue(&mut self, req: &Request<'_>) -> u32 {
        self.codec.encode(req, &mut self.out)
    }

    /// Sends every queued request in one write.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Waits for the next frame from the server.
    pub fn recv(&mut self) -> Result<ResponseFrame, ClientError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.codec.next_frame()? {
                return Ok(f);
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.codec.feed(&buf[..n]);
        }
    }
}
