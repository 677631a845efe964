//! redrain-net: everything that touches the wire.
//!
//! - [`frame`]: the length-prefixed v1 frame format (sans-IO, zero-copy decode).
//! - [`message`]: typed message bodies on top of frames, both directions.
//! - [`code`]: stable numeric error codes a client can see.
//! - [`client`]: the client side of the codec (used by tests and the load generator).
//! - [`token`]: login tokens (mint and verify) and [`time`]: the Unix clock they use.
//! - [`tls`]: rustls configuration from PEM files.
//! - [`tls_resumption`]: stateless TLS session tickets under keys rotated on a schedule.
//! - [`listener`]: per-core `SO_REUSEPORT` listeners.
//! - [`admin`]: a minimal HTTP/1.1 endpoint for `/metrics` and `/healthz`;
//!   [`prometheus`] reads the text it serves (load generator, tests).
//!
//! The codec never performs I/O and never allocates on decode; every length read
//! from the wire is checked against a configured bound before it is trusted.

pub mod admin;
pub mod client;
pub mod code;
pub mod frame;
pub mod listener;
pub mod message;
pub mod prometheus;
pub mod time;
pub mod timeline;
pub mod tls;
pub mod tls_resumption;
pub mod token;

pub use code::ErrorCode;
pub use frame::{FrameDecoder, FrameError, FrameHeader, FrameRef, FRAME_HEADER_BYTES};
pub use message::{MessageType, Request, Response};

/// The only protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
