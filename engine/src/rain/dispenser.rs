//! One core's ticket dispenser: which ticket a winning shake gets, and when a shake wins.
//!
//! - **Files and cursors.** The core issues the records of its (node, core, slot) files in
//!   order. A record below the file's *durable reservation* may be handed out; the
//!   reservation moves ahead in steps of `cursor_step` records through the cursor stream,
//!   requested when less than half a step is left, so a shake never waits for the disk. A
//!   restart resumes at the highest reservation: no ticket is issued twice, and at most one
//!   step per file is skipped (an exact cursor, written once a second and on a clean stop,
//!   makes the skip smaller and measurable).
//! - **Prefetch.** Records are read ahead through the driver (`DispenserIo::Read`) in chunks
//!   of `prefetch_records`, so the core never blocks on a file.
//! - **Pacing.** Within a slot, wins are released by a token bucket whose rate is the
//!   tickets left divided by the time left (spreading the slot's tickets over the slot),
//!   capped by this core's share of the node's issuance quota per second. A shake wins when
//!   a token and a ticket are there.
//! - **Imbalance.** Users are spread over cores by hash, but demand is not: a core whose
//!   shakers outrun its pace (shakes lost to pacing) or whose files ran dry asks the other
//!   cores for tickets; a core whose bucket overflowed within the last second (fewer
//!   shakes than tickets to release) gives a batch from its reserved range (its cursor
//!   moves past them, so they can never be issued twice), and they are issued there,
//!   raising that core's pace. Without this, a quiet core would end its slot with tickets
//!   left (undersold) while a busy one turns shakers away. Moved tickets not issued before
//!   a crash are given up, never reissued.
//!
//! Sans-IO: the caller passes the clock and carries out [`DispenserIo`].

use super::event::{Event, EventFile};
use super::records::CursorRecord;
use crate::tickets::format::{record_ciphertext, record_key_id, FileTag, Ticket, RECORD_BYTES};
use std::collections::VecDeque;

/// Bounds and rates of one core's dispenser.
#[derive(Debug, Clone, Copy)]
pub struct DispenserConfig {
    /// Records reserved per cursor record (the most a crash can skip per file).
    pub cursor_step: u64,
    /// Records read per prefetch.
    pub prefetch_records: usize,
    /// This core's share of the node's issuance quota (tickets per second).
    pub quota_per_sec: f64,
    /// Burst the pacing bucket may hold, in ms of its rate (at least one ticket).
    pub burst_ms: u64,
    /// Tickets moved to a core that ran dry, per request.
    pub move_batch: usize,
}

impl Default for DispenserConfig {
    fn default() -> Self {
        Self { cursor_step: 4096, prefetch_records: 4096, quota_per_sec: 50_000.0, burst_ms: 100, move_batch: 1024 }
    }
}

/// I/O the driver must carry out for the dispenser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispenserIo {
    /// Read `count` records of file `file` from record `first`; answer with
    /// [`Dispenser::on_read`].
    Read { file: usize, first: u64, count: usize },
    /// Make this reservation durable; answer with [`Dispenser::on_reserved`].
    Reserve { file: usize, record: CursorRecord },
    /// Persist an exact cursor (no answer needed).
    Exact { record: CursorRecord },
}

/// Tickets handed from one core to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTickets {
    pub slot: u16,
    pub tag: FileTag,
    pub first_index: u64,
    pub records: Vec<[u8; RECORD_BYTES]>,
}

/// A ticket taken for a winning shake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    pub ticket: Ticket,
    pub ciphertext: [u8; 16],
}

/// Why a shake did not win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWin {
    /// No slot is open.
    NoSlot,
    /// Pacing or the quota said no this time.
    Paced,
    /// The slot's tickets are gone (on this core, for now).
    SoldOut,
    /// Tickets remain but are not read or reserved yet (disk behind).
    NotReady,
}

/// Counters the dispenser keeps (exported per core).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispenserStats {
    pub tickets_issued_total: u64,
    pub tickets_bad_records_total: u64,
    pub tickets_moved_out_total: u64,
    pub tickets_moved_in_total: u64,
    pub tickets_skipped_at_start_max: u64,
    pub cursor_reservations_total: u64,
    pub not_ready_total: u64,
    pub move_requests_total: u64,
}

struct FileState {
    file: EventFile,
    crc_seed: u32,
    /// Next record to hand out (or give away).
    cursor: u64,
    /// Records below this are reserved durably.
    reserved: u64,
    reserving: Option<u64>,
    /// Records `cursor..cursor + buffer.len()`.
    buffer: VecDeque<[u8; RECORD_BYTES]>,
    read_pending: bool,
    /// Last exact cursor persisted.
    exact_persisted: u64,
    failed: bool,
}

impl FileState {
    fn remaining(&self) -> u64 {
        self.file.records.saturating_sub(self.cursor)
    }
}

/// One core's dispenser.
pub struct Dispenser {
    config: DispenserConfig,
    files: Vec<FileState>,
    foreign: VecDeque<(FileTag, u64, [u8; RECORD_BYTES])>,
    foreign_slot: Option<u16>,
    slot: Option<u16>,
    tokens: f64,
    tokens_at_ms: u64,
    last_move_request_ms: u64,
    /// Shakes lost to pacing since the last move request check.
    paced_since_check: u64,
    /// When the bucket last overflowed (tokens wasted: fewer shakes than tickets to release).
    overflowed_at_ms: Option<u64>,
    stats: DispenserStats,
}

impl Dispenser {
    /// A dispenser over `files` (this core's, by slot), resuming at the recovered
    /// cursors: `resume(tag)` gives (highest reservation, last exact cursor) of a file.
    pub fn new(config: DispenserConfig, files: &[EventFile], resume: impl Fn(FileTag) -> (u64, u64)) -> Self {
        let mut stats = DispenserStats::default();
        let files = files
            .iter()
            .map(|f| {
                let (reserved, exact) = resume(f.tag);
                let cursor = reserved.min(f.records);
                stats.tickets_skipped_at_start_max += cursor.saturating_sub(exact);
                FileState {
                    file: f.clone(),
                    crc_seed: f.tag.crc_seed(),
                    cursor,
                    reserved: cursor,
                    reserving: None,
                    buffer: VecDeque::new(),
                    read_pending: false,
                    exact_persisted: cursor,
                    failed: false,
                }
            })
            .collect();
        Self {
            config,
            files,
            foreign: VecDeque::new(),
            foreign_slot: None,
            slot: None,
            tokens: 0.0,
            tokens_at_ms: 0,
            last_move_request_ms: 0,
            paced_since_check: 0,
            overflowed_at_ms: None,
            stats,
        }
    }

    pub fn stats(&self) -> DispenserStats {
        self.stats
    }

    pub fn set_quota_per_sec(&mut self, quota: f64) {
        self.config.quota_per_sec = quota.max(0.0);
    }

    /// Tickets of `slot` this core still holds (files and moved-in).
    pub fn remaining_in_slot(&self, slot: u16) -> u64 {
        let files: u64 =
            self.files.iter().filter(|f| f.file.tag.slot == slot && !f.failed).map(|f| f.remaining()).sum();
        files + if self.foreign_slot == Some(slot) { self.foreign.len() as u64 } else { 0 }
    }

    /// Moves the clock: switches slots and refills the pacing bucket.
    pub fn advance(&mut self, slot: Option<(u16, u64)>, now_ms: u64) {
        let slot_index = slot.map(|(s, _)| s);
        if slot_index != self.slot {
            self.slot = slot_index;
            self.tokens = 0.0;
            self.tokens_at_ms = now_ms;
            if self.foreign_slot != slot_index {
                self.foreign.clear();
                self.foreign_slot = None;
            }
        }
        let Some((slot, left_ms)) = slot else { return };
        let elapsed_ms = now_ms.saturating_sub(self.tokens_at_ms);
        self.tokens_at_ms = now_ms;
        let remaining = self.remaining_in_slot(slot) as f64;
        let per_ms = (remaining / left_ms.max(1) as f64).min(self.config.quota_per_sec / 1000.0);
        let capacity = (per_ms * self.config.burst_ms as f64).max(1.0);
        let filled = self.tokens + per_ms * elapsed_ms as f64;
        if filled > capacity && remaining > 0.0 {
            self.overflowed_at_ms = Some(now_ms);
        }
        self.tokens = filled.min(capacity);
    }

    /// Decides one shake: a ticket when the bucket and the slot allow.
    pub fn draw(&mut self, decryptor: &crate::tickets::keyring::TicketDecryptor) -> Result<Drawn, NoWin> {
        let Some(slot) = self.slot else { return Err(NoWin::NoSlot) };
        if self.tokens < 1.0 {
            self.paced_since_check += 1;
            return Err(NoWin::Paced);
        }
        // Moved-in tickets first: they are lost on a crash, so issue them early.
        while let Some((tag, index, record)) = self.foreign.pop_front() {
            if let Some(drawn) = self.check(decryptor, &record, index, tag.crc_seed()) {
                self.tokens -= 1.0;
                return Ok(drawn);
            }
        }
        let mut not_ready = false;
        for i in 0..self.files.len() {
            if self.files[i].file.tag.slot != slot || self.files[i].failed {
                continue;
            }
            // A bounded number of bad records are skipped per shake.
            for _ in 0..16 {
                let f = &mut self.files[i];
                if f.remaining() == 0 {
                    break;
                }
                if f.cursor >= f.reserved || f.buffer.is_empty() {
                    not_ready = true;
                    break;
                }
                let record = f.buffer.pop_front().expect("checked non-empty");
                let index = f.cursor;
                f.cursor += 1;
                let seed = f.crc_seed;
                if let Some(drawn) = self.check(decryptor, &record, index, seed) {
                    self.tokens -= 1.0;
                    return Ok(drawn);
                }
            }
        }
        if not_ready {
            self.stats.not_ready_total += 1;
            Err(NoWin::NotReady)
        } else {
            Err(NoWin::SoldOut)
        }
    }

    fn check(
        &mut self,
        decryptor: &crate::tickets::keyring::TicketDecryptor,
        record: &[u8; RECORD_BYTES],
        index: u64,
        crc_seed: u32,
    ) -> Option<Drawn> {
        let checked = decryptor.decrypt_record(record, index, crc_seed);
        match checked {
            Ok(ticket) => {
                self.stats.tickets_issued_total += 1;
                Some(Drawn { ticket, ciphertext: record_ciphertext(record) })
            }
            Err(_) => {
                self.stats.tickets_bad_records_total += 1;
                None
            }
        }
    }

    /// The I/O needed now for the current slot: prefetches and reservations.
    pub fn poll_io(&mut self, io: &mut Vec<DispenserIo>) {
        let Some(slot) = self.slot else { return };
        let step = self.config.cursor_step.max(1);
        let prefetch = self.config.prefetch_records.max(1);
        for (i, f) in self.files.iter_mut().enumerate() {
            if f.file.tag.slot != slot || f.failed || f.remaining() == 0 {
                continue;
            }
            if f.reserving.is_none() && f.reserved < f.file.records && f.reserved.saturating_sub(f.cursor) < step / 2 {
                let target = (f.reserved.max(f.cursor) + step).min(f.file.records);
                f.reserving = Some(target);
                io.push(DispenserIo::Reserve { file: i, record: CursorRecord { tag: f.file.tag, cursor: target } });
            }
            let next_read = f.cursor + f.buffer.len() as u64;
            if !f.read_pending && f.buffer.len() < prefetch / 2 && next_read < f.file.records {
                let count = (prefetch as u64).min(f.file.records - next_read) as usize;
                f.read_pending = true;
                io.push(DispenserIo::Read { file: i, first: next_read, count });
            }
        }
    }

    /// Exact cursors that moved since they were last persisted (once a second, and on stop).
    pub fn poll_exact(&mut self, io: &mut Vec<DispenserIo>) {
        for f in &mut self.files {
            if f.cursor != f.exact_persisted && f.cursor <= f.reserved {
                f.exact_persisted = f.cursor;
                io.push(DispenserIo::Exact { record: CursorRecord { tag: f.file.tag, cursor: f.cursor } });
            }
        }
    }

    /// Records read for `file` from record `first` (or the read failed).
    pub fn on_read(&mut self, file: usize, first: u64, bytes: Result<Vec<u8>, String>) {
        let Some(f) = self.files.get_mut(file) else { return };
        f.read_pending = false;
        let bytes = match bytes {
            Ok(b) if b.len() % RECORD_BYTES == 0 && !b.is_empty() => b,
            Ok(b) => {
                log::error!("ticket file {}: read of {} bytes at record {first}", f.file.path.display(), b.len());
                f.failed = true;
                return;
            }
            Err(e) => {
                log::error!("ticket file {}: {e}; its tickets are not issued", f.file.path.display());
                f.failed = true;
                return;
            }
        };
        // Records the cursor already passed (moved away meanwhile) are dropped.
        let expected = f.cursor + f.buffer.len() as u64;
        if first != expected {
            return;
        }
        for chunk in bytes.chunks_exact(RECORD_BYTES) {
            f.buffer.push_back(chunk.try_into().expect("exact chunk"));
        }
    }

    /// A reservation became durable (or failed: retried on the next poll).
    pub fn on_reserved(&mut self, file: usize, ok: bool) {
        let Some(f) = self.files.get_mut(file) else { return };
        if let Some(target) = f.reserving.take() {
            if ok {
                f.reserved = f.reserved.max(target);
                self.stats.cursor_reservations_total += 1;
            }
        }
    }

    /// Whether to ask the other cores for tickets now: this core's shakers outran its pace,
    /// or its files ran dry, with a second or more of the slot left.
    pub fn wants_tickets(&mut self, now_ms: u64, slot_left_ms: u64) -> Option<u16> {
        let slot = self.slot?;
        let hungry = self.paced_since_check > 0 || self.remaining_in_slot(slot) == 0;
        if slot_left_ms < 1_000 || !hungry || now_ms.saturating_sub(self.last_move_request_ms) < 200 {
            return None;
        }
        self.paced_since_check = 0;
        self.last_move_request_ms = now_ms;
        self.stats.move_requests_total += 1;
        Some(slot)
    }

    /// Another core is short: give it a batch when this core has plenty left and its own
    /// shakers did not use its pace within the last second.
    pub fn give(&mut self, slot: u16, now_ms: u64) -> Option<MovedTickets> {
        if self.slot != Some(slot) || self.overflowed_at_ms.is_none_or(|at| now_ms.saturating_sub(at) > 1_000) {
            return None;
        }
        let batch = self.config.move_batch.max(1);
        let f = self.files.iter_mut().find(|f| {
            f.file.tag.slot == slot && !f.failed && f.remaining() > 2 * batch as u64 && !f.buffer.is_empty()
        })?;
        let n = batch.min(f.buffer.len()).min(f.reserved.saturating_sub(f.cursor) as usize);
        if n == 0 {
            return None;
        }
        let first_index = f.cursor;
        let records: Vec<_> = f.buffer.drain(..n).collect();
        f.cursor += n as u64;
        self.stats.tickets_moved_out_total += n as u64;
        Some(MovedTickets { slot, tag: f.file.tag, first_index, records })
    }

    /// Tickets another core gave this one.
    pub fn take(&mut self, moved: MovedTickets) {
        if self.slot != Some(moved.slot) {
            return;
        }
        self.foreign_slot = Some(moved.slot);
        self.stats.tickets_moved_in_total += moved.records.len() as u64;
        for (i, record) in moved.records.into_iter().enumerate() {
            self.foreign.push_back((moved.tag, moved.first_index + i as u64, record));
        }
    }

    /// The page (merchant + 1) of the next ticket, shown on a loss.
    pub fn next_page(&self, event: &Event) -> u32 {
        let slot = match self.slot {
            Some(s) => s,
            None => return 0,
        };
        self.files
            .iter()
            .filter(|f| f.file.tag.slot == slot)
            .find_map(|f| f.buffer.front())
            .and_then(|r| event.decryptor.decrypt(&record_ciphertext(r), record_key_id(r)).ok())
            .map(|t| event.page_of_batch(t.batch_id))
            .unwrap_or(0)
    }
}
