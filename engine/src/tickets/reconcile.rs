//! Reconciliation: opened-packet records exported by the nodes, checked against the
//! pre-generated tickets before any money moves.
//!
//! Input is NDJSON, one opened packet per line (see [`OpenedRecord`] and docs/tickets.md).
//! Each open is classified:
//! - `unknown`: no pre-generated ticket has that packet id;
//! - `duplicate`: the packet id was already opened on an earlier line (the first stands);
//! - `amount_mismatch` / `key_mismatch`: the record disagrees with the decrypted ticket;
//! - `blacklisted_key`: the ticket's key is blacklisted or not whitelisted;
//! - otherwise creditable: `instant` when the amount is at or above the manifest's
//!   instant-credit threshold (these may have been paid right after the node's instant check),
//!   `after_reconciliation` for the rest (paid once this reconciliation passes).
//!
//! Memory grows with the number of opened records (bounded by `opened_max`), never with the
//! number of tickets: the tickets are streamed and looked up in a hash map of the opens.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::format::{Ticket, RECORD_BYTES};
use super::keyring::Keyring;
use super::manifest::{Manifest, ManifestError};
use super::plan::yuan;

/// Longest accepted NDJSON line.
pub const OPENED_LINE_BYTES_MAX: u64 = 4096;
/// Default bound on opened records read.
pub const OPENED_RECORDS_MAX_DEFAULT: usize = 50_000_000;
/// Problems listed in a report by default (all are counted).
pub const PROBLEMS_LISTED_DEFAULT: usize = 100;

/// One opened packet as exported by a node (one NDJSON line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedRecord {
    /// Packet id from the ticket.
    pub packet_id: u64,
    /// Amount the node recorded (from the ticket it verified).
    pub amount_fen: u32,
    /// Key id of the ticket.
    pub key_id: u16,
    /// User who opened it.
    pub user_id: u64,
    /// Node that recorded the open.
    pub node: u16,
    /// Core that recorded the open.
    pub core: u16,
    /// When, in Unix milliseconds.
    pub opened_at_ms: u64,
    /// What was opened: an event packet (the default, and what lines without the field
    /// are) or a group lucky packet's share.
    #[serde(default, skip_serializing_if = "OpenedKind::is_event")]
    pub kind: OpenedKind,
    /// Lucky shares: the group the packet was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u64>,
}

/// Which kind of packet an [`OpenedRecord`] line is about. Event lines leave the field out,
/// so they read as before; a lucky line says `"kind":"lucky"`, has `key_id` 0 (no ticket)
/// and names its group. Lucky shares are paid from the sender's money, not from
/// pre-generated tickets: reconciliation counts them apart and checks only that each
/// (packet, user) appears once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenedKind {
    #[default]
    Event,
    Lucky,
}

impl OpenedKind {
    pub fn is_event(&self) -> bool {
        *self == OpenedKind::Event
    }
}

/// How one opened record was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Creditable at once (amount at or above the threshold).
    Instant,
    /// Creditable now that reconciliation passed.
    AfterReconciliation,
    /// No such packet.
    Unknown,
    /// Already opened on an earlier line.
    Duplicate,
    /// Amount differs from the ticket.
    AmountMismatch,
    /// Key id differs from the ticket.
    KeyMismatch,
    /// The ticket's key is blacklisted or not whitelisted.
    BlacklistedKey,
}

impl Verdict {
    /// Whether the open may be credited.
    pub fn creditable(self) -> bool {
        matches!(self, Verdict::Instant | Verdict::AfterReconciliation)
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Instant => "instant",
            Verdict::AfterReconciliation => "after_reconciliation",
            Verdict::Unknown => "unknown",
            Verdict::Duplicate => "duplicate",
            Verdict::AmountMismatch => "amount_mismatch",
            Verdict::KeyMismatch => "key_mismatch",
            Verdict::BlacklistedKey => "blacklisted_key",
        }
    }
}

/// One refused or malformed open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenProblem {
    /// Line number in the opened file (1-based).
    pub line: u64,
    /// Packet id, when the line parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_id: Option<u64>,
    /// Problem kind.
    pub kind: &'static str,
    /// Details.
    pub detail: String,
}

/// Packets and money.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Packets.
    pub packets: u64,
    /// Money (fen).
    pub amount_fen: u64,
}

impl Tally {
    fn add(&mut self, amount_fen: u32) {
        self.packets += 1;
        self.amount_fen += u64::from(amount_fen);
    }
}

/// Opened totals of one merchant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MerchantOpened {
    /// Merchant id.
    pub merchant: String,
    /// Creditable opens.
    pub opened: Tally,
    /// Merchant budget.
    pub budget_fen: u64,
    /// Merchant packets.
    pub packets: u64,
}

/// Result of a reconciliation.
#[derive(Clone, Debug, Serialize)]
pub struct ReconcileReport {
    /// True when every open is creditable and every ticket read cleanly.
    pub ok: bool,
    /// Lines read.
    pub opened_records: u64,
    /// Lines that are not valid records.
    pub malformed: u64,
    /// Count per verdict.
    pub verdicts: BTreeMap<&'static str, Tally>,
    /// Creditable at once.
    pub instant: Tally,
    /// Creditable after reconciliation.
    pub after_reconciliation: Tally,
    /// Refused (amounts as claimed by the records).
    pub refused: Tally,
    /// The manifest's instant-credit threshold.
    pub instant_credit_threshold_fen: u32,
    /// Creditable opens per merchant.
    pub merchants: Vec<MerchantOpened>,
    /// Ticket records that could not be opened while scanning (run verify).
    pub tickets_unreadable: u64,
    /// Lucky packet shares (`"kind":"lucky"` lines): counted apart, not against tickets.
    pub lucky: Tally,
    /// Lucky lines repeating an earlier line's (packet, user): a problem each.
    pub lucky_duplicates: u64,
    /// All problems counted.
    pub problems_total: u64,
    /// The first problems.
    pub problems: Vec<OpenProblem>,
}

/// Options of a reconciliation.
#[derive(Clone, Debug)]
pub struct ReconcileOptions {
    /// Worker threads for the ticket scan.
    pub threads: usize,
    /// Most opened records read.
    pub opened_max: usize,
    /// Problems listed.
    pub problems_listed_max: usize,
    /// Where to write the creditable opens as NDJSON, if anywhere.
    pub credit_out: Option<PathBuf>,
}

/// A reconciliation that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The manifest is unreadable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// File error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Too many opened records.
    #[error("{path}: more than {limit} opened records (raise --opened-max)")]
    TooManyOpens {
        /// Path.
        path: PathBuf,
        /// The bound.
        limit: usize,
    },
}

/// One creditable open, as written to the credit file.
#[derive(Serialize)]
struct CreditLine<'a> {
    packet_id: u64,
    amount_fen: u32,
    user_id: u64,
    merchant: &'a str,
    credit: &'static str,
}

/// Reconciles `opened` against the tickets of `dir`.
pub fn reconcile(
    dir: &Path,
    keyring: &Keyring,
    opened: &Path,
    options: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let manifest = Manifest::load(dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReconcileError::Io { path, source }
    };

    // 1. Read the opens.
    let mut problems = Vec::new();
    let mut problems_total = 0u64;
    let mut note = |problem: OpenProblem| {
        problems_total += 1;
        if problems.len() < options.problems_listed_max {
            problems.push(problem);
        }
    };
    let mut opens: Vec<(u64, OpenedRecord)> = Vec::new();
    let mut first_open_of: HashMap<u64, u32> = HashMap::new();
    let mut duplicate_of: Vec<Option<u64>> = Vec::new();
    let mut malformed = 0u64;
    let mut lines = 0u64;
    let mut lucky = Tally::default();
    let mut lucky_seen: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
    let mut lucky_duplicates = 0u64;
    {
        let file = std::fs::File::open(opened).map_err(io(opened))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read =
                (&mut reader).take(OPENED_LINE_BYTES_MAX + 1).read_until(b'\n', &mut line).map_err(io(opened))?;
            if read == 0 {
                break;
            }
            lines += 1;
            if line.len() as u64 > OPENED_LINE_BYTES_MAX {
                malformed += 1;
                note(OpenProblem {
                    line: lines,
                    packet_id: None,
                    kind: "malformed",
                    detail: format!("line longer than {OPENED_LINE_BYTES_MAX} bytes"),
                });
                // Skip the rest of the long line.
                while !line.ends_with(b"\n") {
                    line.clear();
                    if (&mut reader).take(OPENED_LINE_BYTES_MAX).read_until(b'\n', &mut line).map_err(io(opened))? == 0
                    {
                        break;
                    }
                }
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: OpenedRecord = match serde_json::from_slice(&line) {
                Ok(record) => record,
                Err(error) => {
                    malformed += 1;
                    note(OpenProblem { line: lines, packet_id: None, kind: "malformed", detail: error.to_string() });
                    continue;
                }
            };
            if record.kind == OpenedKind::Lucky {
                if lucky_seen.len() >= options.opened_max {
                    return Err(ReconcileError::TooManyOpens { path: opened.to_path_buf(), limit: options.opened_max });
                }
                if lucky_seen.insert((record.packet_id, record.user_id)) {
                    lucky.add(record.amount_fen);
                } else {
                    lucky_duplicates += 1;
                    note(OpenProblem {
                        line: lines,
                        packet_id: Some(record.packet_id),
                        kind: "lucky_duplicate",
                        detail: format!("user {} holds this lucky share on an earlier line", record.user_id),
                    });
                }
                continue;
            }
            if opens.len() >= options.opened_max {
                return Err(ReconcileError::TooManyOpens { path: opened.to_path_buf(), limit: options.opened_max });
            }
            let index = opens.len() as u32;
            match first_open_of.get(&record.packet_id) {
                Some(&first) => duplicate_of.push(Some(opens[first as usize].0)),
                None => {
                    first_open_of.insert(record.packet_id, index);
                    duplicate_of.push(None);
                }
            }
            opens.push((lines, record));
        }
    }

    // 2. Stream every ticket once; keep those that were opened.
    let mut scan_keyring = keyring.clone();
    scan_keyring.blacklist.clear();
    scan_keyring.whitelist = None;
    let decryptor = scan_keyring.decryptor();
    let mut found: Vec<Option<Ticket>> = vec![None; opens.len()];
    let found_lock = Mutex::new(&mut found);
    let unreadable = AtomicU64::new(0);
    let next_file = AtomicUsize::new(0);
    let read_errors: Mutex<Vec<ReconcileError>> = Mutex::new(Vec::new());
    let threads = options.threads.clamp(1, 256).min(manifest.files.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut hits: Vec<(u32, Ticket)> = Vec::new();
                loop {
                    let index = next_file.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = manifest.files.get(index) else {
                        break;
                    };
                    let path = dir.join(&file.name);
                    let crc_seed = file.tag().crc_seed();
                    let result = super::file_reader::for_each_chunk(&path, 32_768, |first_index, bytes| {
                        for (offset, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
                            let record: &[u8; RECORD_BYTES] = chunk.try_into().expect("whole records");
                            match decryptor.decrypt_record(record, first_index + offset as u64, crc_seed) {
                                Ok(ticket) => {
                                    if let Some(&open) = first_open_of.get(&ticket.packet_id) {
                                        hits.push((open, ticket));
                                    }
                                }
                                Err(_) => {
                                    unreadable.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        true
                    });
                    if let Err(source) = result {
                        read_errors.lock().expect("no panics while locked").push(ReconcileError::Io { path, source });
                    }
                }
                let mut found = found_lock.lock().expect("no panics while locked");
                for (open, ticket) in hits {
                    found[open as usize].get_or_insert(ticket);
                }
            });
        }
    });
    if let Some(error) = read_errors.into_inner().expect("threads joined").pop() {
        return Err(error);
    }

    // 3. Judge each open.
    let mut verdicts: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut instant = Tally::default();
    let mut after_reconciliation = Tally::default();
    let mut refused = Tally::default();
    let mut merchants: Vec<MerchantOpened> = manifest
        .merchants
        .iter()
        .map(|merchant| MerchantOpened {
            merchant: merchant.id.clone(),
            opened: Tally::default(),
            budget_fen: merchant.budget_fen,
            packets: merchant.packets,
        })
        .collect();
    let mut credit_writer = match &options.credit_out {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?)),
        None => None,
    };
    let threshold = manifest.instant_credit_threshold_fen;
    for (index, (line, record)) in opens.iter().enumerate() {
        let first = first_open_of[&record.packet_id] as usize;
        let ticket = found[first];
        let (verdict, detail) = match (duplicate_of[index], ticket) {
            (Some(first_line), _) => (Verdict::Duplicate, format!("already opened on line {first_line}")),
            (None, None) => (Verdict::Unknown, "no pre-generated ticket has this packet id".to_string()),
            (None, Some(ticket)) if ticket.amount_fen != record.amount_fen => (
                Verdict::AmountMismatch,
                format!("record says {} fen, ticket holds {} fen", record.amount_fen, ticket.amount_fen),
            ),
            (None, Some(ticket)) if ticket.key_id != record.key_id => (
                Verdict::KeyMismatch,
                format!("record says key {}, ticket is under key {}", record.key_id, ticket.key_id),
            ),
            (None, Some(ticket)) if keyring.refuses_key_id(ticket.key_id) => {
                (Verdict::BlacklistedKey, format!("key {} is refused by the keyring lists", ticket.key_id))
            }
            (None, Some(ticket)) if ticket.amount_fen >= threshold => (Verdict::Instant, String::new()),
            (None, Some(_)) => (Verdict::AfterReconciliation, String::new()),
        };
        verdicts.entry(verdict.name()).or_default().add(record.amount_fen);
        if verdict.creditable() {
            let ticket = ticket.expect("creditable opens have a ticket");
            let merchant_index =
                manifest.batches.get(usize::from(ticket.batch_id)).map(|batch| batch.merchant_index as usize);
            if verdict == Verdict::Instant {
                instant.add(ticket.amount_fen);
            } else {
                after_reconciliation.add(ticket.amount_fen);
            }
            let merchant_id = match merchant_index.and_then(|index| merchants.get_mut(index)) {
                Some(merchant) => {
                    merchant.opened.add(ticket.amount_fen);
                    merchant.merchant.as_str()
                }
                None => "?",
            };
            if let Some(writer) = credit_writer.as_mut() {
                let credit = CreditLine {
                    packet_id: ticket.packet_id,
                    amount_fen: ticket.amount_fen,
                    user_id: record.user_id,
                    merchant: merchant_id,
                    credit: verdict.name(),
                };
                let path = options.credit_out.as_deref().expect("writer implies path");
                serde_json::to_writer(&mut *writer, &credit)
                    .map_err(|error| ReconcileError::Io { path: path.to_path_buf(), source: error.into() })?;
                writer.write_all(b"\n").map_err(io(path))?;
            }
        } else {
            refused.add(record.amount_fen);
            note(OpenProblem { line: *line, packet_id: Some(record.packet_id), kind: verdict.name(), detail });
        }
    }
    if let (Some(mut writer), Some(path)) = (credit_writer, options.credit_out.as_deref()) {
        writer.flush().map_err(io(path))?;
    }
    let tickets_unreadable = unreadable.load(Ordering::Relaxed);
    Ok(ReconcileReport {
        ok: problems_total == 0 && tickets_unreadable == 0,
        opened_records: lines,
        malformed,
        verdicts,
        instant,
        after_reconciliation,
        refused,
        instant_credit_threshold_fen: threshold,
        merchants,
        tickets_unreadable,
        lucky,
        lucky_duplicates,
        problems_total,
        problems,
    })
}

impl Keyring {
    /// Whether the whitelist/blacklist refuse a key id.
    pub fn refuses_key_id(&self, key_id: u16) -> bool {
        self.blacklist.contains(&key_id) || self.whitelist.as_ref().is_some_and(|list| !list.contains(&key_id))
    }
}

impl ReconcileReport {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} opened records, {} malformed",
            if self.ok { "OK" } else { "PROBLEMS" },
            self.opened_records,
            self.malformed
        );
        let _ = writeln!(
            out,
            "credit now (instant, >= {} yuan): {} packets, {} yuan",
            yuan(u64::from(self.instant_credit_threshold_fen)),
            self.instant.packets,
            yuan(self.instant.amount_fen)
        );
        let _ = writeln!(
            out,
            "credit after reconciliation:      {} packets, {} yuan",
            self.after_reconciliation.packets,
            yuan(self.after_reconciliation.amount_fen)
        );
        let _ = writeln!(
            out,
            "refused:                          {} packets, {} yuan claimed",
            self.refused.packets,
            yuan(self.refused.amount_fen)
        );
        if self.lucky.packets > 0 || self.lucky_duplicates > 0 {
            let _ = writeln!(
                out,
                "lucky packet shares (no tickets): {} shares, {} yuan, {} duplicated",
                self.lucky.packets,
                yuan(self.lucky.amount_fen),
                self.lucky_duplicates
            );
        }
        // BTreeMap: verdicts print in a stable order.
        let kinds = self.verdicts.iter();
        for (kind, tally) in kinds {
            let _ = writeln!(out, "  {kind:<22} {:>10} packets {:>14} yuan", tally.packets, yuan(tally.amount_fen));
        }
        let _ = writeln!(out, "opened per merchant:");
        for merchant in &self.merchants {
            let _ = writeln!(
                out,
                "  {:<20} {:>10} of {:>10} packets {:>14} of {:>14} yuan",
                merchant.merchant,
                merchant.opened.packets,
                merchant.packets,
                yuan(merchant.opened.amount_fen),
                yuan(merchant.budget_fen)
            );
        }
        if self.tickets_unreadable > 0 {
            let _ = writeln!(out, "{} ticket records could not be opened (run verify)", self.tickets_unreadable);
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "{} problems (first {} listed):", self.problems_total, self.problems.len());
            for problem in &self.problems {
                let packet = problem.packet_id.map(|id| format!(" packet {id}")).unwrap_or_default();
                let _ = writeln!(out, "  line {}{packet}: {}: {}", problem.line, problem.kind, problem.detail);
            }
        }
        out
    }
}
