//! Pulling a stream's records from a peer into a local log: used by an
//! origin recovering a lost tail or disk, and by a node taking over a dead
//! node's users (`redrain replica fetch`).

use std::net::SocketAddr;
use std::time::Duration;

use glommio::net::TcpStream;

use super::io::FramedStream;
use super::wire::{Message, StreamId};
use crate::error::StorageError;
use crate::log::Log;
use crate::{Lsn, Result};

/// Bounds of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Connect and per-reply timeout.
    pub io_timeout: Duration,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
    /// Bytes of batches asked per request.
    pub request_bytes_max: u32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self { io_timeout: Duration::from_secs(2), frame_bytes_max: 8 << 20, request_bytes_max: 4 << 20 }
    }
}

/// Copies every record of `stream` that `peer` holds beyond `into`'s durable
/// end into `into`. Returns the highest LSN the peer reported.
pub async fn fetch_from_peer(peer: SocketAddr, stream: StreamId, into: &Log, limits: FetchLimits) -> Result<Lsn> {
    let socket = TcpStream::connect_timeout(peer, limits.io_timeout)
        .await
        .map_err(|e| StorageError::io("connect to peer", &e.into()))?;
    socket
        .set_read_timeout(Some(limits.io_timeout))
        .and_then(|_| socket.set_write_timeout(Some(limits.io_timeout)))
        .map_err(|e| StorageError::io("set peer timeouts", &e.into()))?;
    let mut framed = FramedStream::new(socket, limits.frame_bytes_max);
    loop {
        let from_lsn = into.durable_lsn() + 1;
        framed.send(&Message::Fetch { stream, from_lsn, bytes_max: limits.request_bytes_max }).await?;
        match framed.recv().await? {
            Message::FetchReply { durable_lsn, batches } => {
                if batches.is_empty() {
                    return Ok(durable_lsn);
                }
                let before = into.durable_lsn();
                into.import(batches).await?;
                if into.durable_lsn() == before {
                    // The peer sent only what we hold: nothing more to get.
                    return Ok(durable_lsn);
                }
            }
            Message::Error { message } => return Err(StorageError::Protocol(message)),
            other => return Err(StorageError::Protocol(format!("unexpected reply to fetch: {other:?}"))),
        }
    }
}
