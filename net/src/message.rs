//! Typed messages of wire protocol v1 on top of [`crate::frame`].
//!
//! Requests travel client to server with a client-chosen request id; each
//! response carries the request's type with the high bit set (`0x80 | type`) and
//! the same request id, or is an `Error` (0xFF). Server pushes (`Notify`,
//! `Closing`) use request id 0. All integers are big-endian.
//!
//! Types below 0x80 that are listed as reserved are assigned now so later
//! features do not change the format; a v1 node that does not serve one yet
//! answers `Error(NotServed)`.

use crate::code::ErrorCode;
use crate::frame::{encode_frame, FrameRef};
use crate::timeline::{TimelineRequest, TimelineResponse};
use thiserror::Error;

/// Bytes of a login token: version(1) user(8) device(4) expiry(8) mac(32).
pub const TOKEN_BYTES: usize = 53;
/// Maximum bytes of a ping payload echoed back by the server.
pub const PING_PAYLOAD_BYTES_MAX: usize = 256;
/// Maximum bytes of the human-readable text in an error or closing frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;
/// Bytes of a sealed ticket (see [`SealedTicketHeader`] and docs/protocol.md).
pub const SEALED_TICKET_BYTES: usize = 57;
/// Bytes of a sealed ticket's clear header (version .. packet id).
pub const SEALED_HEADER_BYTES: usize = 23;
/// The only sealed-ticket version this build issues and accepts.
pub const SEALED_TICKET_VERSION: u8 = 1;
/// `OpenOk` flag: the packet was already opened earlier; nothing new was recorded.
pub const OPEN_FLAG_REPEAT: u8 = 0x01;
/// `OpenOk` flag: the packet is credited at once (large packets); else after reconciliation.
pub const OPEN_FLAG_INSTANT_CREDIT: u8 = 0x02;

/// The clear part of a sealed ticket: who it is bound to and which packet it is.
/// The rest (34 bytes) is an AEAD ciphertext only the issuing node can open; see
/// docs/protocol.md, "Sealed tickets".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedTicketHeader {
    pub version: u8,
    /// Node that issued (and alone can open) the ticket.
    pub node_id: u16,
    /// When the node issued it, in Unix seconds.
    pub issued_at_unix_s: u32,
    /// The only user who may open it.
    pub user_id: u64,
    /// The packet inside (in clear, so clients and tools can tell tickets apart).
    pub packet_id: u64,
}

impl SealedTicketHeader {
    /// Reads the header of a sealed ticket (no check beyond the layout).
    pub fn parse(sealed: &[u8; SEALED_TICKET_BYTES]) -> Self {
        Self {
            version: sealed[0],
            node_id: be_u16(&sealed[1..]),
            issued_at_unix_s: be_u32(&sealed[3..]),
            user_id: be_u64(&sealed[7..]),
            packet_id: be_u64(&sealed[15..]),
        }
    }

    /// Writes the header into the first [`SEALED_HEADER_BYTES`] of `out`.
    pub fn write(&self, out: &mut [u8; SEALED_HEADER_BYTES]) {
        out[0] = self.version;
        out[1..3].copy_from_slice(&self.node_id.to_be_bytes());
        out[3..7].copy_from_slice(&self.issued_at_unix_s.to_be_bytes());
        out[7..15].copy_from_slice(&self.user_id.to_be_bytes());
        out[15..23].copy_from_slice(&self.packet_id.to_be_bytes());
    }
}

/// Every message type byte assigned in v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Hello = 0x01,
    Login = 0x02,
    Ping = 0x03,
    Logout = 0x04,
    // Reserved for the red-packet issue.
    Shake = 0x10,
    Open = 0x11,
    // Reserved for the timeline issue.
    Send = 0x20,
    Sync = 0x21,
    SyncAck = 0x22,
    // Reserved for group operations.
    GroupCreate = 0x30,
    GroupJoin = 0x31,
    GroupLeave = 0x32,
    GroupMembers = 0x33,
    // Reserved for operator requests over an authenticated admin session.
    /// Open a group lucky packet (timeline issue, within its 0x20-0x33 range).
    LuckyOpen = 0x23,
    AdminSwitch = 0x40,
    AdminQuota = 0x41,
    HelloOk = 0x81,
    LoginOk = 0x82,
    Pong = 0x83,
    LogoutOk = 0x84,
    ShakeOk = 0x90,
    OpenOk = 0x91,
    SendOk = 0xA0,
    SyncOk = 0xA1,
    SyncAckOk = 0xA2,
    LuckyOpenOk = 0xA3,
    GroupCreateOk = 0xB0,
    GroupJoinOk = 0xB1,
    GroupLeaveOk = 0xB2,
    GroupMembersOk = 0xB3,
    AdminSwitchOk = 0xC0,
    AdminQuotaOk = 0xC1,
    /// Server push: "new timeline data up to seq N" (reserved).
    Notify = 0xE0,
    /// Server push: the server is about to close the connection, and why.
    Closing = 0xE1,
    /// Server push: slow down (server-driven client backoff, reserved).
    Backoff = 0xE2,
    Error = 0xFF,
}

impl MessageType {
    pub const ALL: [MessageType; 36] = [
        Self::Hello,
        Self::Login,
        Self::Ping,
        Self::Logout,
        Self::Shake,
        Self::Open,
        Self::Send,
        Self::Sync,
        Self::SyncAck,
        Self::GroupCreate,
        Self::GroupJoin,
        Self::GroupLeave,
        Self::GroupMembers,
        Self::AdminSwitch,
        Self::AdminQuota,
        Self::HelloOk,
        Self::LoginOk,
        Self::Pong,
        Self::LogoutOk,
        Self::ShakeOk,
        Self::OpenOk,
        Self::SendOk,
        Self::SyncOk,
        Self::SyncAckOk,
        Self::GroupCreateOk,
        Self::GroupJoinOk,
        Self::GroupLeaveOk,
        Self::GroupMembersOk,
        Self::AdminSwitchOk,
        Self::AdminQuotaOk,
        Self::Notify,
        Self::Closing,
        Self::Backoff,
        Self::Error,
        Self::LuckyOpen,
        Self::LuckyOpenOk,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u8 == value)
    }

    /// Whether clients may send this type (requests are below 0x80).
    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }

    /// snake_case label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Login => "login",
            Self::Ping => "ping",
            Self::Logout => "logout",
            Self::Shake => "shake",
            Self::Open => "open",
            Self::Send => "send",
            Self::Sync => "sync",
            Self::SyncAck => "sync_ack",
            Self::GroupCreate => "group_create",
            Self::GroupJoin => "group_join",
            Self::GroupLeave => "group_leave",
            Self::GroupMembers => "group_members",
            Self::AdminSwitch => "admin_switch",
            Self::AdminQuota => "admin_quota",
            Self::HelloOk => "hello_ok",
            Self::LoginOk => "login_ok",
            Self::Pong => "pong",
            Self::LogoutOk => "logout_ok",
            Self::ShakeOk => "shake_ok",
            Self::OpenOk => "open_ok",
            Self::SendOk => "send_ok",
            Self::SyncOk => "sync_ok",
            Self::SyncAckOk => "sync_ack_ok",
            Self::GroupCreateOk => "group_create_ok",
            Self::GroupJoinOk => "group_join_ok",
            Self::GroupLeaveOk => "group_leave_ok",
            Self::GroupMembersOk => "group_members_ok",
            Self::AdminSwitchOk => "admin_switch_ok",
            Self::AdminQuotaOk => "admin_quota_ok",
            Self::Notify => "notify",
            Self::Closing => "closing",
            Self::Backoff => "backoff",
            Self::Error => "error",
            Self::LuckyOpen => "lucky_open",
            Self::LuckyOpenOk => "lucky_open_ok",
        }
    }
}

/// Why a frame body could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("message type {kind:#04x} is not assigned in protocol v1")]
    UnknownType { kind: u8 },
    #[error("message type {kind:#04x} may not be sent in this direction")]
    WrongDirection { kind: u8 },
    #[error("{kind:?} body is {actual} bytes, expected {expected}")]
    BadLength { kind: MessageType, actual: usize, expected: &'static str },
    #[error("{kind:?} body has an invalid field: {field}")]
    BadField { kind: MessageType, field: &'static str },
}

impl BodyError {
    /// The error code a server answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            BodyError::UnknownType { .. } => ErrorCode::UnknownType,
            BodyError::WrongDirection { .. } => ErrorCode::OutOfOrder,
            BodyError::BadLength { kind: MessageType::Login, .. } => ErrorCode::BadToken,
            BodyError::BadLength { .. } | BodyError::BadField { .. } => ErrorCode::MalformedBody,
        }
    }
}

/// A client-to-server message, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Version handshake; must be the first frame.
    Hello {
        version_min: u16,
        version_max: u16,
    },
    /// Login with an auth-service token ([`TOKEN_BYTES`] bytes).
    Login {
        token: &'a [u8; TOKEN_BYTES],
    },
    /// Heartbeat; the payload (at most [`PING_PAYLOAD_BYTES_MAX`]) is echoed.
    Ping {
        payload: &'a [u8],
    },
    Logout,
    /// Ask for a red packet (empty body).
    Shake,
    /// Redeem a sealed ticket from a winning `ShakeOk`.
    Open {
        sealed: &'a [u8; SEALED_TICKET_BYTES],
    },
    /// A reserved type this build parses no body for; the server answers NotServed.
    Reserved {
        kind: MessageType,
        body: &'a [u8],
    },
    /// Timelines, groups and lucky packets (see [`crate::timeline`]).
    Timeline(TimelineRequest<'a>),
}

/// A server-to-client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    HelloOk {
        version: u16,
        frame_bytes_max: u32,
        heartbeat_interval_ms: u32,
        idle_timeout_ms: u32,
        server_time_ms: u64,
    },
    LoginOk {
        user_id: u64,
        device_id: u32,
        home_core: u16,
        session_id: u64,
    },
    Pong {
        payload: &'a [u8],
    },
    LogoutOk,
    /// Answer to `Shake`: `sealed` is the won ticket, `None` means no packet this time.
    ShakeOk {
        /// Minimum interval before this user's next shake (server-driven pacing).
        shake_interval_ms: u32,
        /// Sponsor page to show (merchant id + 1 of the current slot; 0 = none).
        page_id: u32,
        sealed: Option<&'a [u8; SEALED_TICKET_BYTES]>,
    },
    /// Answer to `Open`: the packet's amount, recorded durably (flags: [`OPEN_FLAG_REPEAT`],
    /// [`OPEN_FLAG_INSTANT_CREDIT`]).
    OpenOk {
        packet_id: u64,
        amount_fen: u32,
        batch_id: u16,
        flags: u8,
    },
    Error {
        code: u16,
        retry_after_ms: u32,
        message: &'a str,
    },
    Closing {
        code: u16,
        message: &'a str,
    },
    /// Server push (request id 0): the node's degrade level changed. Until the next
    /// push, shake no more often than `shake_interval_ms` and wait `retry_after_ms`
    /// before retrying a rejected request.
    Backoff {
        level: u8,
        shake_interval_ms: u32,
        retry_after_ms: u32,
    },
    /// A reserved server type this build does not interpret.
    Reserved {
        kind: MessageType,
        body: &'a [u8],
    },
    /// Timeline answers and the `Notify` push (see [`crate::timeline`]).
    Timeline(TimelineResponse<'a>),
}

/// Bytes of a `Backoff` push body.
pub const BACKOFF_BODY_BYTES: usize = 9;

pub(crate) fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(crate) fn expect_len(kind: MessageType, body: &[u8], n: usize, expected: &'static str) -> Result<(), BodyError> {
    if body.len() == n {
        Ok(())
    } else {
        Err(BodyError::BadLength { kind, actual: body.len(), expected })
    }
}

impl<'a> Request<'a> {
    /// Parses a frame a client sent.
    pub fn parse(frame: &FrameRef<'a>) -> Result<Request<'a>, BodyError> {
        let kind_byte = frame.header.kind;
        let kind = MessageType::from_u8(kind_byte).ok_or(BodyError::UnknownType { kind: kind_byte })?;
        if !kind.is_request() {
            return Err(BodyError::WrongDirection { kind: kind_byte });
        }
        let body = frame.body;
        Ok(match kind {
            MessageType::Hello => {
                expect_len(kind, body, 4, "4")?;
                let (version_min, version_max) = (be_u16(body), be_u16(&body[2..]));
                if version_min > version_max {
                    return Err(BodyError::BadField { kind, field: "version_min > version_max" });
                }
                Request::Hello { version_min, version_max }
            }
            MessageType::Login => {
                let token = <&[u8; TOKEN_BYTES]>::try_from(body).map_err(|_| BodyError::BadLength {
                    kind,
                    actual: body.len(),
                    expected: "53",
                })?;
                Request::Login { token }
            }
            MessageType::Ping => {
                if body.len() > PING_PAYLOAD_BYTES_MAX {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "0..=256" });
                }
                Request::Ping { payload: body }
            }
            MessageType::Logout => {
                expect_len(kind, body, 0, "0")?;
                Request::Logout
            }
            MessageType::Shake => {
                expect_len(kind, body, 0, "0")?;
                Request::Shake
            }
            MessageType::Open => {
                let sealed = <&[u8; SEALED_TICKET_BYTES]>::try_from(body).map_err(|_| BodyError::BadLength {
                    kind,
                    actual: body.len(),
                    expected: "57",
                })?;
                Request::Open { sealed }
            }
            kind if TimelineRequest::is_timeline(kind) => Request::Timeline(TimelineRequest::parse(kind, body)?),
            _ => Request::Reserved { kind, body },
        })
    }

    /// Appends this request as one frame.
    pub fn encode(&self, request_id: u32, out: &mut Vec<u8>) {
        match *self {
            Request::Hello { version_min, version_max } => {
                encode_frame(out, MessageType::Hello as u8, request_id, |b| {
                    b.extend_from_slice(&version_min.to_be_bytes());
                    b.extend_from_slice(&version_max.to_be_bytes());
                })
            }
            Request::Login { token } => {
                encode_frame(out, MessageType::Login as u8, request_id, |b| b.extend_from_slice(token))
            }
            Request::Ping { payload } => {
                encode_frame(out, MessageType::Ping as u8, request_id, |b| b.extend_from_slice(payload))
            }
            Request::Logout => encode_frame(out, MessageType::Logout as u8, request_id, |_| {}),
            Request::Shake => encode_frame(out, MessageType::Shake as u8, request_id, |_| {}),
            Request::Open { sealed } => {
                encode_frame(out, MessageType::Open as u8, request_id, |b| b.extend_from_slice(sealed))
            }
            Request::Reserved { kind, body } => {
                encode_frame(out, kind as u8, request_id, |b| b.extend_from_slice(body))
            }
            Request::Timeline(t) => encode_frame(out, t.kind() as u8, request_id, |b| t.encode_body(b)),
        }
    }

    pub fn kind(&self) -> MessageType {
        match self {
            Request::Hello { .. } => MessageType::Hello,
            Request::Login { .. } => MessageType::Login,
            Request::Ping { .. } => MessageType::Ping,
            Request::Logout => MessageType::Logout,
            Request::Shake => MessageType::Shake,
            Request::Open { .. } => MessageType::Open,
            Request::Reserved { kind, .. } => *kind,
            Request::Timeline(t) => t.kind(),
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<'a> Response<'a> {
    /// Parses a frame a server sent.
    pub fn parse(frame: &FrameRef<'a>) -> Result<Response<'a>, BodyError> {
        let kind_byte = frame.header.kind;
        let kind = MessageType::from_u8(kind_byte).ok_or(BodyError::UnknownType { kind: kind_byte })?;
        if kind.is_request() {
            return Err(BodyError::WrongDirection { kind: kind_byte });
        }
        let body = frame.body;
        Ok(match kind {
            MessageType::HelloOk => {
                expect_len(kind, body, 22, "22")?;
                Response::HelloOk {
                    version: be_u16(body),
                    frame_bytes_max: be_u32(&body[2..]),
                    heartbeat_interval_ms: be_u32(&body[6..]),
                    idle_timeout_ms: be_u32(&body[10..]),
                    server_time_ms: be_u64(&body[14..]),
                }
            }
            MessageType::LoginOk => {
                expect_len(kind, body, 22, "22")?;
                Response::LoginOk {
                    user_id: be_u64(body),
                    device_id: be_u32(&body[8..]),
                    home_core: be_u16(&body[12..]),
                    session_id: be_u64(&body[14..]),
                }
            }
            MessageType::Pong => {
                if body.len() > PING_PAYLOAD_BYTES_MAX {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "0..=256" });
                }
                Response::Pong { payload: body }
            }
            MessageType::LogoutOk => {
                expect_len(kind, body, 0, "0")?;
                Response::LogoutOk
            }
            MessageType::ShakeOk => {
                if body.len() != 9 && body.len() != 9 + SEALED_TICKET_BYTES {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "9 or 66" });
                }
                let sealed = match body[0] {
                    0 if body.len() == 9 => None,
                    1 if body.len() == 9 + SEALED_TICKET_BYTES => {
                        Some(<&[u8; SEALED_TICKET_BYTES]>::try_from(&body[9..]).expect("length checked"))
                    }
                    _ => return Err(BodyError::BadField { kind, field: "won flag does not match the length" }),
                };
                Response::ShakeOk { shake_interval_ms: be_u32(&body[1..]), page_id: be_u32(&body[5..]), sealed }
            }
            MessageType::OpenOk => {
                expect_len(kind, body, 15, "15")?;
                Response::OpenOk {
                    packet_id: be_u64(body),
                    amount_fen: be_u32(&body[8..]),
                    batch_id: be_u16(&body[12..]),
                    flags: body[14],
                }
            }
            MessageType::Error => {
                if body.len() < 8 {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: ">= 8" });
                }
                let text_len = be_u16(&body[6..]) as usize;
                if text_len > ERROR_MESSAGE_BYTES_MAX {
                    return Err(BodyError::BadField { kind, field: "text longer than 512 bytes" });
                }
                if body.len() != 8 + text_len {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "8 + text length" });
                }
                let message = std::str::from_utf8(&body[8..])
                    .map_err(|_| BodyError::BadField { kind, field: "message is not UTF-8" })?;
                Response::Error { code: be_u16(body), retry_after_ms: be_u32(&body[2..]), message }
            }
            MessageType::Closing => {
                if body.len() < 4 {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: ">= 4" });
                }
                let text_len = be_u16(&body[2..]) as usize;
                if text_len > ERROR_MESSAGE_BYTES_MAX {
                    return Err(BodyError::BadField { kind, field: "text longer than 512 bytes" });
                }
                if body.len() != 4 + text_len {
                    return Err(BodyError::BadLength { kind, actual: body.len(), expected: "4 + text length" });
                }
                let message = std::str::from_utf8(&body[4..])
                    .map_err(|_| BodyError::BadField { kind, field: "message is not UTF-8" })?;
                Response::Closing { code: be_u16(body), message }
            }
            MessageType::Backoff => {
                expect_len(kind, body, BACKOFF_BODY_BYTES, "9")?;
                Response::Backoff {
                    level: body[0],
                    shake_interval_ms: be_u32(&body[1..]),
                    retry_after_ms: be_u32(&body[5..]),
                }
            }
            kind if TimelineResponse::is_timeline(kind) => Response::Timeline(TimelineResponse::parse(kind, body)?),
            _ => Response::Reserved { kind, body },
        })
    }

    /// Appends this response as one frame. Error texts longer than
    /// [`ERROR_MESSAGE_BYTES_MAX`] are cut at a character boundary.
    pub fn encode(&self, request_id: u32, out: &mut Vec<u8>) {
        match *self {
            Response::HelloOk { version, frame_bytes_max, heartbeat_interval_ms, idle_timeout_ms, server_time_ms } => {
                encode_frame(out, MessageType::HelloOk as u8, request_id, |b| {
                    b.extend_from_slice(&version.to_be_bytes());
                    b.extend_from_slice(&frame_bytes_max.to_be_bytes());
                    b.extend_from_slice(&heartbeat_interval_ms.to_be_bytes());
                    b.extend_from_slice(&idle_timeout_ms.to_be_bytes());
                    b.extend_from_slice(&server_time_ms.to_be_bytes());
                })
            }
            Response::LoginOk { user_id, device_id, home_core, session_id } => {
                encode_frame(out, MessageType::LoginOk as u8, request_id, |b| {
                    b.extend_from_slice(&user_id.to_be_bytes());
                    b.extend_from_slice(&device_id.to_be_bytes());
                    b.extend_from_slice(&home_core.to_be_bytes());
                    b.extend_from_slice(&session_id.to_be_bytes());
                })
            }
            Response::Pong { payload } => {
                encode_frame(out, MessageType::Pong as u8, request_id, |b| b.extend_from_slice(payload))
            }
            Response::LogoutOk => encode_frame(out, MessageType::LogoutOk as u8, request_id, |_| {}),
            Response::ShakeOk { shake_interval_ms, page_id, sealed } => {
                encode_frame(out, MessageType::ShakeOk as u8, request_id, |b| {
                    b.push(u8::from(sealed.is_some()));
                    b.extend_from_slice(&shake_interval_ms.to_be_bytes());
                    b.extend_from_slice(&page_id.to_be_bytes());
                    if let Some(sealed) = sealed {
                        b.extend_from_slice(sealed);
                    }
                })
            }
            Response::OpenOk { packet_id, amount_fen, batch_id, flags } => {
                encode_frame(out, MessageType::OpenOk as u8, request_id, |b| {
                    b.extend_from_slice(&packet_id.to_be_bytes());
                    b.extend_from_slice(&amount_fen.to_be_bytes());
                    b.extend_from_slice(&batch_id.to_be_bytes());
                    b.push(flags);
                })
            }
            Response::Error { code, retry_after_ms, message } => {
                let text = truncate_utf8(message, ERROR_MESSAGE_BYTES_MAX);
                encode_frame(out, MessageType::Error as u8, request_id, |b| {
                    b.extend_from_slice(&code.to_be_bytes());
                    b.extend_from_slice(&retry_after_ms.to_be_bytes());
                    b.extend_from_slice(&(text.len() as u16).to_be_bytes());
                    b.extend_from_slice(text.as_bytes());
                })
            }
            Response::Closing { code, message } => {
                let text = truncate_utf8(message, ERROR_MESSAGE_BYTES_MAX);
                encode_frame(out, MessageType::Closing as u8, request_id, |b| {
                    b.extend_from_slice(&code.to_be_bytes());
                    b.extend_from_slice(&(text.len() as u16).to_be_bytes());
                    b.extend_from_slice(text.as_bytes());
                })
            }
            Response::Backoff { level, shake_interval_ms, retry_after_ms } => {
                encode_frame(out, MessageType::Backoff as u8, request_id, |b| {
                    b.push(level);
                    b.extend_from_slice(&shake_interval_ms.to_be_bytes());
                    b.extend_from_slice(&retry_after_ms.to_be_bytes());
                })
            }
            Response::Reserved { kind, body } => {
                encode_frame(out, kind as u8, request_id, |b| b.extend_from_slice(body))
            }
            Response::Timeline(t) => encode_frame(out, t.kind() as u8, request_id, |b| t.encode_body(b)),
        }
    }

    /// Convenience for the common error frame.
    pub fn error(code: ErrorCode, retry_after_ms: u32, message: &'a str) -> Self {
        Response::Error { code: code.as_u16(), retry_after_ms, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use proptest::prelude::*;

    fn one_frame(bytes: &[u8]) -> FrameRef<'_> {
        FrameDecoder::new(1 << 20).decode(bytes).unwrap().unwrap().0
    }

    #[test]
    fn type_bytes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_u8(t as u8), Some(t));
            seen.insert(t as u8);
        }
        assert_eq!(seen.len(), MessageType::ALL.len());
        assert_eq!(MessageType::from_u8(0x7e), None);
    }

    #[test]
    fn server_types_are_rejected_from_clients_and_vice_versa() {
        let mut out = Vec::new();
        Response::LogoutOk.encode(1, &mut out);
        assert_eq!(Request::parse(&one_frame(&out)), Err(BodyError::WrongDirection { kind: 0x84 }));
        out.clear();
        Request::Logout.encode(1, &mut out);
        assert_eq!(Response::parse(&one_frame(&out)), Err(BodyError::WrongDirection { kind: 0x04 }));
    }

    #[test]
    fn short_login_body_is_a_bad_token() {
        let mut out = Vec::new();
        encode_frame(&mut out, MessageType::Login as u8, 9, |b| b.extend_from_slice(&[1; 10]));
        let err = Request::parse(&one_frame(&out)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadToken);
    }

    #[test]
    fn sealed_ticket_header_round_trips_and_open_needs_exactly_57_bytes() {
        let header = SealedTicketHeader {
            version: SEALED_TICKET_VERSION,
            node_id: 3,
            issued_at_unix_s: 1_700_000_000,
            user_id: 42,
            packet_id: 7_000_001,
        };
        let mut sealed = [0xAB; SEALED_TICKET_BYTES];
        header.write((&mut sealed[..SEALED_HEADER_BYTES]).try_into().unwrap());
        assert_eq!(SealedTicketHeader::parse(&sealed), header);
        let mut out = Vec::new();
        encode_frame(&mut out, MessageType::Open as u8, 5, |b| b.extend_from_slice(&sealed[..56]));
        assert_eq!(Request::parse(&one_frame(&out)).unwrap_err().code(), ErrorCode::MalformedBody);
        out.clear();
        encode_frame(&mut out, MessageType::Shake as u8, 5, |b| b.push(0));
        assert_eq!(Request::parse(&one_frame(&out)).unwrap_err().code(), ErrorCode::MalformedBody);
    }

    #[test]
    fn long_error_text_is_cut_at_a_char_boundary() {
        let text = "é".repeat(400);
        let mut out = Vec::new();
        Response::error(ErrorCode::Internal, 0, &text).encode(1, &mut out);
        match Response::parse(&one_frame(&out)).unwrap() {
            Response::Error { message, .. } => assert_eq!(message.len(), 512),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn arb_request() -> impl Strategy<Value = (u16, u16, Vec<u8>, u8, u32)> {
        (any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..=256), 0u8..7, any::<u32>())
    }

    proptest! {
        #[test]
        fn requests_round_trip((a, b, payload, pick, rid) in arb_request()) {
            let token = [7u8; TOKEN_BYTES];
            let sealed = [a as u8; SEALED_TICKET_BYTES];
            let req = match pick {
                0 => Request::Hello { version_min: a.min(b), version_max: a.max(b) },
                1 => Request::Login { token: &token },
                2 => Request::Ping { payload: &payload },
                3 => Request::Logout,
                4 => Request::Shake,
                5 => Request::Open { sealed: &sealed },
                _ => Request::Reserved { kind: MessageType::AdminSwitch, body: &payload },
            };
            let mut out = Vec::new();
            req.encode(rid, &mut out);
            let (frame, used) = FrameDecoder::new(1 << 20).decode(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(frame.header.request_id, rid);
            prop_assert_eq!(Request::parse(&frame).unwrap(), req);
        }

        #[test]
        fn responses_round_trip(x in any::<u64>(), y in any::<u32>(), z in any::<u16>(), text in "\\PC{0,100}", payload in proptest::collection::vec(any::<u8>(), 0..=256), pick in 0u8..10, rid in any::<u32>()) {
            let sealed = [y as u8; SEALED_TICKET_BYTES];
            let resp = match pick {
                0 => Response::HelloOk { version: z, frame_bytes_max: y, heartbeat_interval_ms: y / 2, idle_timeout_ms: y / 3, server_time_ms: x },
                1 => Response::LoginOk { user_id: x, device_id: y, home_core: z, session_id: x ^ 5 },
                2 => Response::Pong { payload: &payload },
                3 => Response::LogoutOk,
                4 => Response::Error { code: z, retry_after_ms: y, message: &text },
                5 => Response::ShakeOk { shake_interval_ms: y, page_id: y / 7, sealed: Some(&sealed) },
                6 => Response::ShakeOk { shake_interval_ms: y, page_id: 0, sealed: None },
                7 => Response::OpenOk { packet_id: x, amount_fen: y, batch_id: z, flags: (x % 4) as u8 },
                8 => Response::Backoff { level: z as u8, shake_interval_ms: y, retry_after_ms: y / 3 },
                _ => Response::Closing { code: z, message: &text },
            };
            let mut out = Vec::new();
            resp.encode(rid, &mut out);
            let (frame, used) = FrameDecoder::new(1 << 20).decode(&out).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(frame.header.request_id, rid);
            prop_assert_eq!(Response::parse(&frame).unwrap(), resp);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let dec = FrameDecoder::new(256);
            let mut rest = &bytes[..];
            while let Ok(Some((frame, used))) = dec.decode(rest) {
                let _ = Request::parse(&frame);
                let _ = Response::parse(&frame);
                rest = &rest[used..];
            }
        }
    }
}
