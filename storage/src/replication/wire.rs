//! The replication wire protocol (sans-IO): frames between an origin and a
//! peer, and between a recovering node and a peer.
//!
//! A frame is `len u32 | type u8 | body`, little endian, `len` counting type
//! and body. Every length is checked against `frame_bytes_max` before
//! anything is allocated: input from the network is untrusted.
//!
//! Conversation of a shipping stream: `Hello` -> `HelloAck`, then repeatedly
//! `Append` -> `Ack`. Conversation of a fetch: `Fetch` -> `FetchReply`,
//! repeated. Record batches travel in their on-disk format (see
//! [`crate::record`]) and are verified by the receiver.

use crate::error::StorageError;
use crate::Lsn;

/// Bytes of the frame header.
pub const FRAME_HEADER_BYTES: usize = 5;

/// Identifies one log stream: the origin node and its core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The node that writes the stream.
    pub origin_node: u32,
    /// The core of that node.
    pub core: u16,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node{}-core{}", self.origin_node, self.core)
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Origin opens a shipping stream.
    Hello {
        /// The stream to be shipped.
        stream: StreamId,
    },
    /// Peer answers with what it already holds durably.
    HelloAck {
        /// Highest LSN durable in the peer's replica (0 if none).
        durable_lsn: Lsn,
    },
    /// Origin ships whole batches.
    Append {
        /// Concatenated batches in record format.
        batches: Vec<u8>,
    },
    /// Peer acknowledges everything up to `durable_lsn` as durable.
    Ack {
        /// Highest durable LSN of the replica.
        durable_lsn: Lsn,
    },
    /// Ask a peer for records of a stream it holds.
    Fetch {
        /// Which replica.
        stream: StreamId,
        /// First LSN wanted.
        from_lsn: Lsn,
        /// Most bytes of batches to return.
        bytes_max: u32,
    },
    /// Answer to `Fetch`; empty `batches` means nothing more from `from_lsn`.
    FetchReply {
        /// Highest LSN the peer holds for the stream.
        durable_lsn: Lsn,
        /// Batches starting with the one holding `from_lsn`.
        batches: Vec<u8>,
    },
    /// Origin's owner no longer needs records below `below_lsn`; the peer
    /// may drop them from its replica by its retention bounds. Answered by
    /// `Ack`.
    Release {
        /// First LSN still needed.
        below_lsn: Lsn,
    },
    /// The other side refused a request.
    Error {
        /// Why.
        message: String,
    },
}

const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const APPEND: u8 = 3;
const ACK: u8 = 4;
const FETCH: u8 = 5;
const FETCH_REPLY: u8 = 6;
const ERROR: u8 = 7;
const RELEASE: u8 = 8;

impl Message {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        let kind = match self {
            Message::Hello { stream } => {
                put_stream(out, stream);
                HELLO
            }
            Message::HelloAck { durable_lsn } => {
                out.extend_from_slice(&durable_lsn.to_le_bytes());
                HELLO_ACK
            }
            Message::Append { batches } => {
                out.extend_from_slice(batches);
                APPEND
            }
            Message::Ack { durable_lsn } => {
                out.extend_from_slice(&durable_lsn.to_le_bytes());
                ACK
            }
            Message::Fetch { stream, from_lsn, bytes_max } => {
                put_stream(out, stream);
                out.extend_from_slice(&from_lsn.to_le_bytes());
                out.extend_from_slice(&bytes_max.to_le_bytes());
                FETCH
            }
            Message::FetchReply { durable_lsn, batches } => {
                out.extend_from_slice(&durable_lsn.to_le_bytes());
                out.extend_from_slice(batches);
                FETCH_REPLY
            }
            Message::Error { message } => {
                out.extend_from_slice(message.as_bytes());
                ERROR
            }
            Message::Release { below_lsn } => {
                out.extend_from_slice(&below_lsn.to_le_bytes());
                RELEASE
            }
        };
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4] = kind;
    }

    /// Decodes one frame from the start of `buf`. `Ok(None)` means more bytes
    /// are needed; the returned size is how many bytes the frame used.
    pub fn decode(buf: &[u8], frame_bytes_max: usize) -> Result<Option<(Message, usize)>, StorageError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > frame_bytes_max {
            return Err(StorageError::Protocol(format!("frame length {len} outside 1..={frame_bytes_max}")));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = buf[4];
        let body = &buf[FRAME_HEADER_BYTES..4 + len];
        let short = || StorageError::Protocol(format!("frame type {kind} too short"));
        let message = match kind {
            HELLO => Message::Hello { stream: get_stream(body).ok_or_else(short)? },
            HELLO_ACK => Message::HelloAck { durable_lsn: get_u64(body, 0).ok_or_else(short)? },
            APPEND => Message::Append { batches: body.to_vec() },
            ACK => Message::Ack { durable_lsn: get_u64(body, 0).ok_or_else(short)? },
            FETCH => Message::Fetch {
                stream: get_stream(body).ok_or_else(short)?,
                from_lsn: get_u64(body, 6).ok_or_else(short)?,
                bytes_max: body
                    .get(14..18)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(short)?,
            },
            FETCH_REPLY => Message::FetchReply {
                durable_lsn: get_u64(body, 0).ok_or_else(short)?,
                batches: body[8.min(body.len())..].to_vec(),
            },
            ERROR => Message::Error { message: String::from_utf8_lossy(body).into_owned() },
            RELEASE => Message::Release { below_lsn: get_u64(body, 0).ok_or_else(short)? },
            other => {
                return Err(StorageError::Protocol(format!("unknown frame type {other}")));
            }
        };
        Ok(Some((message, 4 + len)))
    }
}

fn put_stream(out: &mut Vec<u8>, stream: &StreamId) {
    out.extend_from_slice(&stream.origin_node.to_le_bytes());
    out.extend_from_slice(&stream.core.to_le_bytes());
}

fn get_stream(body: &[u8]) -> Option<StreamId> {
    let node = body.get(0..4)?;
    let core = body.get(4..6)?;
    Some(StreamId {
        origin_node: u32::from_le_bytes(node.try_into().ok()?),
        core: u16::from_le_bytes(core.try_into().ok()?),
    })
}

fn get_u64(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

/// Reads frames from a byte stream: a bounded accumulation buffer and the
/// decoder, so the I/O side only has to feed bytes in.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    frame_bytes_max: usize,
}

impl FrameReader {
    /// A reader refusing frames above `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { buf: Vec::new(), start: 0, frame_bytes_max }
    }

    /// The next complete message, if buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, StorageError> {
        match Message::decode(&self.buf[self.start..], self.frame_bytes_max)? {
            Some((message, used)) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    /// Space to read into: at most `chunk` bytes at the end of the buffer.
    pub fn spare(&mut self, chunk: usize) -> &mut [u8] {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + chunk, 0);
        &mut self.buf[len..]
    }

    /// Declares how many bytes of the last `spare` were filled.
    pub fn filled(&mut self, chunk: usize, read: usize) {
        let len = self.buf.len();
        self.buf.truncate(len - chunk + read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: Message) {
        let mut buf = Vec::new();
        message.encode(&mut buf);
        let (decoded, used) = Message::decode(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(decoded, message);
        assert_eq!(used, buf.len());
        for cut in 0..buf.len() {
            assert!(Message::decode(&buf[..cut], 1 << 20).unwrap().is_none());
        }
    }

    #[test]
    fn every_message_round_trips_and_prefixes_wait_for_more() {
        let stream = StreamId { origin_node: 7, core: 3 };
        round_trip(Message::Hello { stream });
        round_trip(Message::HelloAck { durable_lsn: 99 });
        round_trip(Message::Append { batches: vec![1, 2, 3] });
        round_trip(Message::Ack { durable_lsn: 5 });
        round_trip(Message::Fetch { stream, from_lsn: 10, bytes_max: 4096 });
        round_trip(Message::FetchReply { durable_lsn: 11, batches: vec![9; 10] });
        round_trip(Message::Error { message: "no".into() });
        round_trip(Message::Release { below_lsn: 42 });
    }

    #[test]
    fn oversized_or_unknown_frames_are_protocol_errors() {
        let mut buf = Vec::new();
        Message::Append { batches: vec![0; 100] }.encode(&mut buf);
        assert!(matches!(Message::decode(&buf, 50), Err(StorageError::Protocol(_))));
        let bogus = [2u8, 0, 0, 0, 99, 0];
        assert!(Message::decode(&bogus, 1024).is_err());
        let short_hello = [2u8, 0, 0, 0, HELLO, 0];
        assert!(Message::decode(&short_hello, 1024).is_err());
    }

    #[test]
    fn frame_reader_reassembles_split_frames() {
        let mut wire = Vec::new();
        Message::Ack { durable_lsn: 1 }.encode(&mut wire);
        Message::Ack { durable_lsn: 2 }.encode(&mut wire);
        let mut reader = FrameReader::new(1024);
        let mut got = Vec::new();
        for byte in wire {
            reader.spare(1)[0] = byte;
            reader.filled(1, 1);
            while let Some(m) = reader.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Message::Ack { durable_lsn: 1 }, Message::Ack { durable_lsn: 2 }]);
    }
}
