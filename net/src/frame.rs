//! Frame layer of wire protocol v1.
//!
//! Every frame is
//!
//! ```text
//! +----------------+---------+---------+-------------------+-----------+
//! | length: u32 BE | type:u8 | flags:u8| request_id: u32 BE| body ...  |
//! +----------------+---------+---------+-------------------+-----------+
//! ```
//!
//! `length` counts the bytes after the length field itself (6 + body length), so a
//! frame occupies `4 + length` bytes. The decoder checks `length` against the
//! configured maximum before anything is buffered, so a hostile peer cannot make
//! us allocate more than one maximum frame per connection.

use thiserror::Error;

/// Bytes of the fixed frame header (length, type, flags, request id).
pub const FRAME_HEADER_BYTES: usize = 10;
/// Bytes counted by `length` that are not body (type, flags, request id).
pub const FRAME_LENGTH_OVERHEAD: u32 = 6;
/// Hard ceiling for any configured maximum frame size (16 MiB).
pub const FRAME_BYTES_LIMIT: u32 = 16 << 20;

/// Flag bits 0-1 of a request: which retry of the request this is (0 = first try,
/// 3 = third retry or later). Servers send 0.
pub const FLAG_RETRY_MASK: u8 = 0x03;
/// Flag bit 2 of a request: the client will not retry this request again, so a system
/// failure answered to it is final (the node counts those: the key alarm).
pub const FLAG_LAST_ATTEMPT: u8 = 0x04;
/// Flag bits a frame may carry; any other bit set is a framing error.
pub const FLAGS_ASSIGNED: u8 = FLAG_RETRY_MASK | FLAG_LAST_ATTEMPT;

/// Decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type byte (see [`crate::MessageType`]); unknown values are kept so
    /// the caller can answer them with a typed error.
    pub kind: u8,
    /// Flag bits: the low three carry the client's retry marks ([`FLAG_RETRY_MASK`],
    /// [`FLAG_LAST_ATTEMPT`]); the others are reserved and must be 0.
    pub flags: u8,
    /// Chosen by the client, echoed in the matching response; 0 for server pushes.
    pub request_id: u32,
}

/// A complete frame borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

/// Framing errors. All of them make the byte stream unusable, so the connection
/// is closed after an error frame is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {frame_bytes} bytes exceeds the maximum of {frame_bytes_max}")]
    TooLarge { frame_bytes: u64, frame_bytes_max: u32 },
    #[error("frame length {length} is shorter than the 6-byte header remainder")]
    TooShort { length: u32 },
    #[error("reserved flag bits {flags:#04x} are set")]
    ReservedFlags { flags: u8 },
}

/// Stateless frame splitter with a configured size bound.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    frame_bytes_max: u32,
}

impl FrameDecoder {
    /// `frame_bytes_max` bounds a whole frame including its 4-byte length prefix;
    /// it is clamped to [`FRAME_BYTES_LIMIT`] and to at least the header size.
    pub fn new(frame_bytes_max: u32) -> Self {
        let frame_bytes_max = frame_bytes_max.clamp(FRAME_HEADER_BYTES as u32, FRAME_BYTES_LIMIT);
        Self { frame_bytes_max }
    }

    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Splits the first frame off `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, `Ok(Some((frame, used)))`
    /// when a whole frame is present (`used` bytes belong to it), or an error as
    /// soon as the header proves the stream is bad - without waiting for the body.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(FrameRef<'a>, usize)>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let frame_bytes = 4u64 + u64::from(length);
        if frame_bytes > u64::from(self.frame_bytes_max) {
            return Err(FrameError::TooLarge { frame_bytes, frame_bytes_max: self.frame_bytes_max });
        }
        if length < FRAME_LENGTH_OVERHEAD {
            return Err(FrameError::TooShort { length });
        }
        if buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let flags = buf[5];
        if flags & !FLAGS_ASSIGNED != 0 {
            return Err(FrameError::ReservedFlags { flags });
        }
        let frame_bytes = frame_bytes as usize;
        if buf.len() < frame_bytes {
            return Ok(None);
        }
        let header =
            FrameHeader { kind: buf[4], flags, request_id: u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]) };
        Ok(Some((FrameRef { header, body: &buf[FRAME_HEADER_BYTES..frame_bytes] }, frame_bytes)))
    }
}

/// Appends one frame to `out`. The body is written by `write_body`, so callers
/// encode straight into the output buffer without an intermediate allocation.
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, request_id: u32, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind, 0]);
    out.extend_from_slice(&request_id.to_be_bytes());
    write_body(out);
    let length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
}

/// Sets the retry marks of the frame that starts at `frame_start` in `out` (a client
/// retrying a request): `retry` is clamped to 3; `last` says no further retry follows.
pub fn mark_retry(out: &mut [u8], frame_start: usize, retry: u8, last: bool) {
    let flags = retry.min(FLAG_RETRY_MASK) | if last { FLAG_LAST_ATTEMPT } else { 0 };
    out[frame_start + 5] = flags;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_waits_for_whole_frame_then_splits_it() {
        let mut out = Vec::new();
        encode_frame(&mut out, 3, 77, |b| b.extend_from_slice(b"abc"));
        encode_frame(&mut out, 3, 78, |_| {});
        let dec = FrameDecoder::new(1024);
        for cut in 0..13 {
            assert_eq!(dec.decode(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (f, used) = dec.decode(&out).unwrap().unwrap();
        assert_eq!((f.header.kind, f.header.request_id, f.body, used), (3, 77, &b"abc"[..], 13));
        let (f, used) = dec.decode(&out[13..]).unwrap().unwrap();
        assert_eq!((f.header.request_id, f.body.len(), used), (78, 0, 10));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let dec = FrameDecoder::new(64);
        let err = dec.decode(&[0, 0, 1, 0]).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { frame_bytes: 260, frame_bytes_max: 64 });
        assert_eq!(
            dec.decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err(),
            FrameError::TooLarge { frame_bytes: 4 + u64::from(u32::MAX), frame_bytes_max: 64 }
        );
    }

    #[test]
    fn short_length_and_reserved_flags_are_rejected() {
        let dec = FrameDecoder::new(64);
        assert_eq!(dec.decode(&[0, 0, 0, 5]).unwrap_err(), FrameError::TooShort { length: 5 });
        assert_eq!(dec.decode(&[0, 0, 0, 6, 3, 8, 0, 0, 0, 0]).unwrap_err(), FrameError::ReservedFlags { flags: 8 });
        assert_eq!(
            dec.decode(&[0, 0, 0, 6, 3, 0x80, 0, 0, 0, 0]).unwrap_err(),
            FrameError::ReservedFlags { flags: 0x80 }
        );
    }

    #[test]
    fn retry_marks_are_carried_in_the_three_assigned_flag_bits() {
        let dec = FrameDecoder::new(64);
        let mut out = Vec::new();
        encode_frame(&mut out, 3, 7, |_| {});
        mark_retry(&mut out, 0, 9, true);
        let (f, _) = dec.decode(&out).unwrap().unwrap();
        assert_eq!(f.header.flags & FLAG_RETRY_MASK, 3, "retries above 3 are sent as 3");
        assert_ne!(f.header.flags & FLAG_LAST_ATTEMPT, 0);
        mark_retry(&mut out, 0, 1, false);
        assert_eq!(dec.decode(&out).unwrap().unwrap().0.header.flags, 1);
    }
}
