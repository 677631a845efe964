//! The ticket file reader: how a node core hands out the tickets of its (node, core, slot)
//! file, one by one, from a cursor that survives restarts.
//!
//! Record `i` sits at byte `26 * i`, so positioning is O(1) and a restart resumes exactly at
//! the persisted issuance cursor. Records are read sequentially through a bounded buffer
//! ([`READ_BUFFER_RECORDS`] records, refilled with one read), so each ticket costs O(1) and
//! no syscall in the common case. Decryption and all checks go through a
//! [`TicketDecryptor`], which applies the keyring's whitelist and
//! blacklist.
//!
//! ```no_run
//! use redrain_engine::tickets::{format::FileTag, keyring::Keyring, file_reader::TicketFileReader};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keyring = Keyring::load("event.keyring.json".as_ref())?;
//! let decryptor = keyring.decryptor();
//! let tag = FileTag { node: 0, core: 1, slot: 2 };
//! let cursor = 1_000; // the persisted issuance cursor of this core and slot
//! let mut reader = TicketFileReader::open_at(format!("tickets/{}", tag.file_name()).as_ref(), tag, cursor)?;
//! while let Some(issued) = reader.next_ticket(&decryptor)? {
//!     match issued.ticket {
//!         Ok(ticket) => println!("issue packet {} ({} fen)", ticket.packet_id, ticket.amount_fen),
//!         Err(refused) => eprintln!("skip record {}: {refused}", issued.index),
//!     }
//! }
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::format::{FileTag, Ticket, TicketError, RECORD_BYTES};
use super::keyring::TicketDecryptor;

/// Records read per refill (about 106 KB).
pub const READ_BUFFER_RECORDS: usize = 4096;

/// Failure to read a ticket file (as opposed to a refused ticket, which is a [`TicketError`]).
#[derive(Debug, thiserror::Error)]
pub enum TicketFileError {
    /// Reading failed.
    #[error("ticket file {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The file length is not a whole number of records.
    #[error("ticket file {path}: {length} bytes is not a multiple of {RECORD_BYTES} (truncated?)")]
    Truncated {
        /// Path.
        path: PathBuf,
        /// File length.
        length: u64,
    },
    /// The file holds more records than an index can address.
    #[error("ticket file {path}: {records} records, more than a u32 index")]
    TooLarge {
        /// Path.
        path: PathBuf,
        /// Records.
        records: u64,
    },
    /// The requested cursor is past the end.
    #[error("ticket file {path}: cursor {cursor} beyond {records} records")]
    CursorOutOfRange {
        /// Path.
        path: PathBuf,
        /// Requested cursor.
        cursor: u64,
        /// Records in the file.
        records: u64,
    },
}

/// One record handed out by the reader: its index (the new cursor is `index + 1`) and the
/// ticket or the reason it is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct IssuedRecord {
    /// Record index in the file.
    pub index: u64,
    /// The checked ticket, or why it is refused.
    pub ticket: Result<Ticket, TicketError>,
}

/// Sequential reader of one ticket file (one node, core and slot).
pub struct TicketFileReader {
    path: PathBuf,
    file: File,
    tag: FileTag,
    crc_seed: u32,
    records: u64,
    /// Index of the next record to hand out.
    cursor: u64,
    buffer: Vec<u8>,
    /// Index of the record at `buffer[0]`.
    buffer_first: u64,
}

impl TicketFileReader {
    /// Opens a ticket file at cursor 0.
    pub fn open(path: &Path, tag: FileTag) -> Result<TicketFileReader, TicketFileError> {
        Self::open_at(path, tag, 0)
    }

    /// Opens a ticket file positioned at `cursor` (the next record to hand out).
    pub fn open_at(path: &Path, tag: FileTag, cursor: u64) -> Result<TicketFileReader, TicketFileError> {
        let io = |source| TicketFileError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length % RECORD_BYTES as u64 != 0 {
            return Err(TicketFileError::Truncated { path: path.to_path_buf(), length });
        }
        let records = length / RECORD_BYTES as u64;
        if records > u64::from(u32::MAX) {
            return Err(TicketFileError::TooLarge { path: path.to_path_buf(), records });
        }
        let mut reader = TicketFileReader {
            path: path.to_path_buf(),
            file,
            tag,
            crc_seed: tag.crc_seed(),
            records,
            cursor: 0,
            buffer: Vec::with_capacity(READ_BUFFER_RECORDS * RECORD_BYTES),
            buffer_first: 0,
        };
        reader.seek(cursor)?;
        Ok(reader)
    }

    /// Records in the file.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// Whether the file has no records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Index of the next record to hand out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Records left after the cursor.
    pub fn remaining(&self) -> u64 {
        self.records - self.cursor
    }

    /// The file's node, core and slot.
    pub fn tag(&self) -> FileTag {
        self.tag
    }

    /// Moves the cursor; the next read refills the buffer from there.
    pub fn seek(&mut self, cursor: u64) -> Result<(), TicketFileError> {
        if cursor > self.records {
            return Err(TicketFileError::CursorOutOfRange { path: self.path.clone(), cursor, records: self.records });
        }
        self.cursor = cursor;
        self.buffer.clear();
        self.buffer_first = cursor;
        Ok(())
    }

    /// The raw record at the cursor, advancing it; `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<(u64, [u8; RECORD_BYTES])>, TicketFileError> {
        if self.cursor == self.records {
            return Ok(None);
        }
        let buffered = (self.buffer.len() / RECORD_BYTES) as u64;
        if self.cursor < self.buffer_first || self.cursor >= self.buffer_first + buffered {
            self.refill()?;
        }
        let offset = (self.cursor - self.buffer_first) as usize * RECORD_BYTES;
        let mut record = [0u8; RECORD_BYTES];
        record.copy_from_slice(&self.buffer[offset..offset + RECORD_BYTES]);
        let index = self.cursor;
        self.cursor += 1;
        Ok(Some((index, record)))
    }

    /// The next record, checked and decrypted with `decryptor`, advancing the cursor; `None` at
    /// the end. A refused record still advances the cursor: it is never handed out.
    pub fn next_ticket(&mut self, decryptor: &TicketDecryptor) -> Result<Option<IssuedRecord>, TicketFileError> {
        Ok(self.next_record()?.map(|(index, record)| IssuedRecord {
            index,
            ticket: decryptor.decrypt_record(&record, index, self.crc_seed),
        }))
    }

    /// The record at `index`, checked and decrypted, without moving the cursor (one positioned
    /// read; for audits and tests, not the hot path).
    pub fn ticket_at(
        &self,
        index: u64,
        decryptor: &TicketDecryptor,
    ) -> Result<Result<Ticket, TicketError>, TicketFileError> {
        if index >= self.records {
            return Err(TicketFileError::CursorOutOfRange {
                path: self.path.clone(),
                cursor: index,
                records: self.records,
            });
        }
        let mut record = [0u8; RECORD_BYTES];
        read_exact_at(&self.file, &mut record, index * RECORD_BYTES as u64)
            .map_err(|source| TicketFileError::Io { path: self.path.clone(), source })?;
        Ok(decryptor.decrypt_record(&record, index, self.crc_seed))
    }

    fn refill(&mut self) -> Result<(), TicketFileError> {
        let records = (self.records - self.cursor).min(READ_BUFFER_RECORDS as u64) as usize;
        self.buffer.resize(records * RECORD_BYTES, 0);
        let result = read_exact_at(&self.file, &mut self.buffer, self.cursor * RECORD_BYTES as u64);
        if let Err(source) = result {
            self.buffer.clear();
            return Err(TicketFileError::Io { path: self.path.clone(), source });
        }
        self.buffer_first = self.cursor;
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buffer, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buffer)
}

/// Reads a whole file in chunks of `chunk_records` records, calling `visit(first index, bytes)`;
/// stops early when `visit` returns false. Returns the bytes read (for verify/reconcile).
pub(crate) fn for_each_chunk(
    path: &Path,
    chunk_records: usize,
    mut visit: impl FnMut(u64, &[u8]) -> bool,
) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; chunk_records * RECORD_BYTES];
    let mut first_index = 0u64;
    let mut total_bytes = 0u64;
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let read = file.read(&mut buffer[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        total_bytes += filled as u64;
        if filled == 0 {
            return Ok(total_bytes);
        }
        // Only the last chunk can end with a partial record; the visitor sees those bytes too
        // (for the file checksum) and reports the truncation.
        if !visit(first_index, &buffer[..filled]) {
            return Ok(total_bytes);
        }
        first_index += (filled / RECORD_BYTES) as u64;
        if filled < buffer.len() {
            return Ok(total_bytes);
        }
    }
}
