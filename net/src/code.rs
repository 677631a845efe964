//! Stable numeric error codes carried by `Error` and `Closing` frames.
//!
//! Codes never change meaning once published; docs/protocol.md lists them.
//! Each code is classified as a client fault (the request was wrong), a logical
//! failure (a valid request whose answer is "no") or a system failure (something
//! in the node refused or broke; the client may retry, honouring retry-after).

/// Error code as sent on the wire (u16, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The byte stream is not a valid frame sequence. Connection closed.
    MalformedFrame = 1,
    /// A frame's length exceeds the node's maximum frame size. Connection closed.
    FrameTooLarge = 2,
    /// The message type byte is unknown to this protocol version.
    UnknownType = 3,
    /// No common protocol version. Connection closed.
    UnsupportedVersion = 4,
    /// The first frame was not `Hello`. Connection closed.
    HandshakeRequired = 5,
    /// A known message arrived in a state where it is not allowed (second Hello,
    /// second Login, a server-to-client type sent by the client).
    OutOfOrder = 6,
    /// The request needs a logged-in session.
    LoginRequired = 7,
    /// The login token is not well formed.
    BadToken = 8,
    /// The login token's expiry has passed.
    TokenExpired = 9,
    /// The login token's signature does not verify under any accepted secret.
    TokenSignature = 10,
    /// The core that would own this session is at its session limit. Connection closed.
    SessionLimit = 11,
    /// The node is overloaded; retry after `retry_after_ms`.
    Busy = 12,
    /// The user exceeded a quota; retry after `retry_after_ms`.
    RateLimited = 13,
    /// A newer login of the same (user, device) replaced this session. Connection closed.
    Replaced = 14,
    /// No frame arrived within the idle timeout. Connection closed.
    IdleTimeout = 15,
    /// The node is shutting down; reconnect elsewhere. Connection closed.
    ShuttingDown = 16,
    /// An internal failure; the request may be retried.
    Internal = 17,
    /// The message type is reserved in v1 but this node does not serve it yet.
    NotServed = 18,
    /// A frame body does not match its message type's layout.
    MalformedBody = 19,
    /// The session logged out; the connection is being closed.
    LoggedOut = 20,
    /// A shake came sooner than the minimum shake interval; retry after `retry_after_ms`.
    TooFast = 21,
    /// A sealed ticket with an unknown version byte.
    TicketMalformed = 22,
    /// A sealed ticket whose seal does not verify: altered, or not made by this node.
    TicketTampered = 23,
    /// A sealed ticket whose seal verifies but whose inner ticket is not a real packet
    /// (only possible with a leaked node seal key); an alarm, not a user mistake.
    TicketForged = 24,
    /// The sealed ticket is older than the node's open window.
    TicketExpired = 25,
    /// The sealed ticket is bound to another user.
    TicketOtherUser = 26,
    /// The ticket's key is blacklisted or not whitelisted on this node.
    TicketKeyRefused = 27,
    /// The ticket's batch is not part of the loaded event.
    TicketUnknownBatch = 28,
    /// The ticket was sealed by another node (open it where it was won).
    TicketOtherNode = 29,
    // Timelines, groups and lucky packets (30-39).
    /// A message payload is longer than the node's `message_bytes_max`.
    MessageTooLarge = 30,
    /// Only members of the group may do this (send, add, list, open its packets).
    NotGroupMember = 31,
    /// No group has this id.
    UnknownGroup = 32,
    /// The group is at its member cap.
    GroupFull = 33,
    /// `Sync` named a seq beyond the inbox's latest.
    SeqFromFuture = 34,
    /// Every share of the lucky packet is taken.
    LuckyAllGone = 35,
    /// No lucky packet with this id in this group.
    UnknownLuckyPacket = 36,
    /// A lucky packet whose total and count are impossible (each share needs >= 0.01).
    BadLuckyPacket = 37,
    /// The connection did not take its pushed output (Notify pushes, deferred answers)
    /// while more kept coming: past the node's `conn_pushed_bytes_max`. Connection closed.
    SlowReader = 38,
    // Overload protection and operator switches (40-49).
    /// The operator paused shaking on this node; retry after `retry_after_ms`.
    Paused = 40,
    /// The operator is draining this node: log in elsewhere. Connection closed.
    Draining = 41,
    /// More requests of this connection are waiting than the node allows in flight;
    /// retry after `retry_after_ms`.
    PipelineFull = 42,
}

/// How a failure counts in metrics and alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The client sent something invalid.
    ClientFault,
    /// A valid request answered "no" (expired token, quota).
    Logical,
    /// The node failed or refused for its own reasons; retry may help.
    System,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 41] = [
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::UnknownType,
        Self::UnsupportedVersion,
        Self::HandshakeRequired,
        Self::OutOfOrder,
        Self::LoginRequired,
        Self::BadToken,
        Self::TokenExpired,
        Self::TokenSignature,
        Self::SessionLimit,
        Self::Busy,
        Self::RateLimited,
        Self::Replaced,
        Self::IdleTimeout,
        Self::ShuttingDown,
        Self::Internal,
        Self::NotServed,
        Self::MalformedBody,
        Self::LoggedOut,
        Self::TooFast,
        Self::TicketMalformed,
        Self::TicketTampered,
        Self::TicketForged,
        Self::TicketExpired,
        Self::TicketOtherUser,
        Self::TicketKeyRefused,
        Self::TicketUnknownBatch,
        Self::TicketOtherNode,
        Self::MessageTooLarge,
        Self::NotGroupMember,
        Self::UnknownGroup,
        Self::GroupFull,
        Self::SeqFromFuture,
        Self::LuckyAllGone,
        Self::UnknownLuckyPacket,
        Self::BadLuckyPacket,
        Self::Paused,
        Self::Draining,
        Self::PipelineFull,
        Self::SlowReader,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Maps a wire value back to a code; `None` for codes this build does not know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_u16() == value)
    }

    /// Short snake_case name used in metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnknownType => "unknown_type",
            Self::UnsupportedVersion => "unsupported_version",
            Self::HandshakeRequired => "handshake_required",
            Self::OutOfOrder => "out_of_order",
            Self::LoginRequired => "login_required",
            Self::BadToken => "bad_token",
            Self::TokenExpired => "token_expired",
            Self::TokenSignature => "token_signature",
            Self::SessionLimit => "session_limit",
            Self::Busy => "busy",
            Self::RateLimited => "rate_limited",
            Self::Replaced => "replaced",
            Self::IdleTimeout => "idle_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::NotServed => "not_served",
            Self::MalformedBody => "malformed_body",
            Self::LoggedOut => "logged_out",
            Self::TooFast => "too_fast",
            Self::TicketMalformed => "ticket_malformed",
            Self::TicketTampered => "ticket_tampered",
            Self::TicketForged => "ticket_forged",
            Self::TicketExpired => "ticket_expired",
            Self::TicketOtherUser => "ticket_other_user",
            Self::TicketKeyRefused => "ticket_key_refused",
            Self::TicketUnknownBatch => "ticket_unknown_batch",
            Self::TicketOtherNode => "ticket_other_node",
            Self::MessageTooLarge => "message_too_large",
            Self::NotGroupMember => "not_group_member",
            Self::UnknownGroup => "unknown_group",
            Self::GroupFull => "group_full",
            Self::SeqFromFuture => "seq_from_future",
            Self::LuckyAllGone => "lucky_all_gone",
            Self::UnknownLuckyPacket => "unknown_lucky_packet",
            Self::BadLuckyPacket => "bad_lucky_packet",
            Self::Paused => "paused",
            Self::Draining => "draining",
            Self::PipelineFull => "pipeline_full",
            Self::SlowReader => "slow_reader",
        }
    }

    pub fn class(self) -> ErrorClass {
        match self {
            Self::TokenExpired
            | Self::RateLimited
            | Self::Replaced
            | Self::LoggedOut
            | Self::IdleTimeout
            | Self::TooFast
            | Self::TicketExpired
            | Self::TicketKeyRefused
            | Self::TicketOtherNode
            | Self::GroupFull
            | Self::LuckyAllGone
            | Self::Paused
            | Self::PipelineFull => ErrorClass::Logical,
            Self::SessionLimit
            | Self::Busy
            | Self::ShuttingDown
            | Self::Internal
            | Self::NotServed
            | Self::Draining => ErrorClass::System,
            _ => ErrorClass::ClientFault,
        }
    }

    /// Whether the connection is always closed after this error is sent.
    /// (Before a successful Hello, every error closes the connection.)
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::MalformedFrame
                | Self::FrameTooLarge
                | Self::UnsupportedVersion
                | Self::HandshakeRequired
                | Self::SessionLimit
                | Self::Replaced
                | Self::IdleTimeout
                | Self::ShuttingDown
                | Self::LoggedOut
                | Self::Draining
                | Self::SlowReader
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
            assert!(names.insert(c.name()));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(999), None);
    }
}
