//! Framed I/O over glommio TCP streams, every call bounded in time by the
//! socket timeouts set at connect/accept.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::wire::{FrameReader, Message};
use crate::error::StorageError;

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// One framed connection.
pub struct FramedStream {
    stream: TcpStream,
    reader: FrameReader,
    scratch: Vec<u8>,
}

impl FramedStream {
    /// Wraps `stream`, refusing incoming frames above `frame_bytes_max`.
    pub fn new(stream: TcpStream, frame_bytes_max: usize) -> Self {
        Self { stream, reader: FrameReader::new(frame_bytes_max), scratch: Vec::new() }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), StorageError> {
        self.scratch.clear();
        message.encode(&mut self.scratch);
        self.stream.write_all(&self.scratch).await.map_err(|e| StorageError::io("send to peer", &e))?;
        if self.scratch.capacity() > 1 << 20 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Receives one message; `Closed` when the other side hung up.
    pub async fn recv(&mut self) -> Result<Message, StorageError> {
        loop {
            if let Some(message) = self.reader.next_message()? {
                return Ok(message);
            }
            let spare = self.reader.spare(READ_CHUNK_BYTES);
            let read = self.stream.read(spare).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.reader.filled(READ_CHUNK_BYTES, 0);
                    return Err(StorageError::io("receive from peer", &e));
                }
            };
            self.reader.filled(READ_CHUNK_BYTES, n);
            if n == 0 {
                return Err(StorageError::Closed);
            }
        }
    }
}
