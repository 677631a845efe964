//! Verification of a generated ticket directory: every record decrypted and checked, every
//! total recomputed and compared with the manifest (and with the budget when given).
//!
//! Checks, in the order a record meets them: file length is `26 x records`; record CRC and
//! stored index; key known, allowed (whitelist/blacklist) and in the file's key id range;
//! decryption redundancy; batch exists and belongs to the file's slot; packet id in range,
//! inside the batch's merchant's ids, and seen once (a bitmap over the dense id space, 1 bit
//! per packet, shared by all threads); amount within the merchant's bounds. Then per file:
//! CRC32C of the bytes, records, money and per-batch totals equal the manifest. Then globally:
//! per batch, merchant, slot and kind totals equal the manifest and the merchant budgets; every
//! packet id present; every key's coverage at most the cap and equal to the keyring's record.
//!
//! Files are checked in parallel; memory is one read buffer per thread plus the bitmap
//! (12.5 MB for 100 million packets).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::budget::LoadedBudget;
use super::format::{TicketError, RECORD_BYTES};
use super::keyring::{Keyring, KEY_IDS_MAX};
use super::manifest::{FileSummary, Manifest, ManifestError};
use super::plan::{Plan, Topology};

/// Records read per chunk.
pub const VERIFY_CHUNK_RECORDS: usize = 32_768;
/// Problems listed in a report by default (all are counted).
pub const PROBLEMS_LISTED_DEFAULT: usize = 100;

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// File name, when the problem is in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Byte offset in the file, when the problem is one record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Stable short name of the problem kind.
    pub kind: &'static str,
    /// What is wrong, precisely.
    pub detail: String,
}

/// Result of a verification.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// True only when nothing is wrong.
    pub ok: bool,
    /// Files checked.
    pub files: usize,
    /// Records read.
    pub records: u64,
    /// Money of the records that opened.
    pub amount_fen: u64,
    /// Packets at or above the instant-credit threshold.
    pub instant_credit_packets: u64,
    /// Problems found (all of them).
    pub problems_total: u64,
    /// The first problems, at most the configured number.
    pub problems: Vec<Problem>,
}

/// Options of a verification.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Worker threads.
    pub threads: usize,
    /// Problems listed in the report (all are counted).
    pub problems_listed_max: usize,
}

/// A verification that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest is unreadable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Listing the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}

/// Collected problems, bounded.
struct Problems {
    listed: Mutex<Vec<Problem>>,
    total: AtomicU64,
    listed_max: usize,
}

impl Problems {
    fn new(listed_max: usize) -> Problems {
        Problems { listed: Mutex::new(Vec::new()), total: AtomicU64::new(0), listed_max }
    }

    fn add(&self, file: Option<&str>, offset: Option<u64>, kind: &'static str, detail: String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut listed = self.listed.lock().expect("no panics while locked");
        if listed.len() < self.listed_max {
            listed.push(Problem { file: file.map(str::to_owned), offset, kind, detail });
        }
    }

    fn global(&self, kind: &'static str, detail: String) {
        self.add(None, None, kind, detail);
    }
}

/// Short stable name of a ticket error.
pub fn ticket_error_kind(error: &TicketError) -> &'static str {
    match error {
        TicketError::Corrupt { .. } => "corrupt_record",
        TicketError::Misplaced { .. } => "misplaced_record",
        TicketError::UnknownKey { .. } => "unknown_key",
        TicketError::Blacklisted { .. } => "blacklisted_key",
        TicketError::NotWhitelisted { .. } => "key_not_whitelisted",
        TicketError::Forged { .. } => "forged_ticket",
    }
}

/// Totals of one file, accumulated while reading it.
#[derive(Default)]
struct FileTotals {
    records: u64,
    amount_fen: u64,
    instant: u64,
    /// (packets, money) per batch id present in the file.
    batches: BTreeMap<u16, (u64, u64)>,
}

/// Shared state of a verification.
struct Shared<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    decryptor: super::keyring::TicketDecryptor,
    /// Packet ids `0..packet_ids_checked` have a bit in `seen_packets`.
    packet_ids_checked: u64,
    seen_packets: Vec<AtomicU64>,
    key_packets: Vec<AtomicU64>,
    key_coverage_fen: Vec<AtomicU64>,
    problems: Problems,
}

/// Verifies `dir` against its manifest, the keyring and, when given, the budget.
pub fn verify(
    dir: &Path,
    keyring: &Keyring,
    budget: Option<&LoadedBudget>,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let manifest = Manifest::load(dir)?;
    // The bitmap is sized by the records really on disk, never by a number read from the
    // manifest alone: a damaged manifest must not make verify allocate without bound.
    let mut records_on_disk = 0u64;
    for file in &manifest.files {
        if let Ok(metadata) = std::fs::metadata(dir.join(&file.name)) {
            records_on_disk = records_on_disk.saturating_add(metadata.len() / RECORD_BYTES as u64);
        }
    }
    let packet_ids_checked = manifest.packets_total.min(records_on_disk);
    let shared = Shared {
        dir,
        manifest: &manifest,
        decryptor: keyring.decryptor(),
        packet_ids_checked,
        seen_packets: (0..packet_ids_checked.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        key_packets: (0..KEY_IDS_MAX).map(|_| AtomicU64::new(0)).collect(),
        key_coverage_fen: (0..KEY_IDS_MAX).map(|_| AtomicU64::new(0)).collect(),
        problems: Problems::new(options.problems_listed_max),
    };
    let problems = &shared.problems;

    check_manifest_consistency(&manifest, problems);
    if let Some(budget) = budget {
        check_against_budget(&manifest, budget, problems);
    }
    if keyring.budget_sha256 != manifest.budget_sha256 {
        problems.global(
            "keyring_mismatch",
            format!("keyring is for budget {}, manifest for {}", keyring.budget_sha256, manifest.budget_sha256),
        );
    }
    check_directory_listing(dir, &manifest, problems)?;

    let next_file = AtomicUsize::new(0);
    let totals: Mutex<Vec<(usize, FileTotals)>> = Mutex::new(Vec::new());
    let threads = options.threads.clamp(1, 256).min(manifest.files.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next_file.fetch_add(1, Ordering::Relaxed);
                let Some(file) = manifest.files.get(index) else {
                    break;
                };
                let file_totals = verify_file(&shared, file);
                totals.lock().expect("no panics while locked").push((index, file_totals));
            });
        }
    });
    let mut totals = totals.into_inner().expect("threads joined");
    totals.sort_by_key(|(index, _)| *index);

    // Per batch across files.
    let mut batch_totals = vec![(0u64, 0u64); manifest.batches.len()];
    let (mut records, mut amount_fen, mut instant) = (0u64, 0u64, 0u64);
    for (_, file_totals) in &totals {
        records += file_totals.records;
        amount_fen += file_totals.amount_fen;
        instant += file_totals.instant;
        for (&batch_id, &(packets, money)) in &file_totals.batches {
            let entry = &mut batch_totals[usize::from(batch_id)];
            entry.0 += packets;
            entry.1 += money;
        }
    }
    let mut merchant_totals = vec![(0u64, 0u64); manifest.merchants.len()];
    let mut slot_totals = vec![(0u64, 0u64); manifest.slots.len()];
    for (batch, &(packets, money)) in manifest.batches.iter().zip(&batch_totals) {
        if (packets, money) != (batch.packets, batch.amount_fen) {
            problems.global(
                "batch_total",
                format!(
                    "batch {} ({} slot {}): tickets hold {packets} packets / {money} fen, manifest {} / {}",
                    batch.batch_id, batch.merchant, batch.slot, batch.packets, batch.amount_fen
                ),
            );
        }
        let merchant = &mut merchant_totals[batch.merchant_index as usize];
        merchant.0 += packets;
        merchant.1 += money;
        let slot = &mut slot_totals[usize::from(batch.slot)];
        slot.0 += packets;
        slot.1 += money;
    }
    for (merchant, &(packets, money)) in manifest.merchants.iter().zip(&merchant_totals) {
        if packets != merchant.packets || money != merchant.budget_fen {
            problems.global(
                "merchant_total",
                format!(
                    "merchant {}: tickets hold {packets} packets / {money} fen, budget {} / {}",
                    merchant.id, merchant.packets, merchant.budget_fen
                ),
            );
        }
    }
    for (slot, &(packets, money)) in manifest.slots.iter().zip(&slot_totals) {
        if packets != slot.packets || money != slot.amount_fen {
            problems.global(
                "slot_total",
                format!(
                    "slot {}: tickets hold {packets} packets / {money} fen, manifest {} / {}",
                    slot.id, slot.packets, slot.amount_fen
                ),
            );
        }
    }
    for kind in &manifest.kinds {
        let (packets, money) = manifest
            .batches
            .iter()
            .zip(&batch_totals)
            .filter(|(batch, _)| batch.kind == kind.kind)
            .fold((0, 0), |(p, m), (_, t)| (p + t.0, m + t.1));
        if packets != kind.packets || money != kind.amount_fen {
            problems.global(
                "kind_total",
                format!(
                    "kind {}: tickets hold {packets} packets / {money} fen, manifest {} / {}",
                    kind.kind.name(),
                    kind.packets,
                    kind.amount_fen
                ),
            );
        }
    }
    let seen: u64 = shared.seen_packets.iter().map(|word| u64::from(word.load(Ordering::Relaxed).count_ones())).sum();
    if seen != manifest.packets_total {
        problems.global(
            "missing_packets",
            format!("{seen} distinct packet ids found, manifest has {}", manifest.packets_total),
        );
    }
    if instant != manifest.instant_credit_packets {
        problems.global(
            "instant_credit_count",
            format!(
                "{instant} packets at or above {} fen, manifest says {}",
                manifest.instant_credit_threshold_fen, manifest.instant_credit_packets
            ),
        );
    }
    check_keys(&shared, keyring);

    let problems_total = problems.total.load(Ordering::Relaxed);
    let mut listed = shared.problems.listed.into_inner().expect("threads joined");
    listed.sort_by(|a, b| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
    Ok(VerifyReport {
        ok: problems_total == 0,
        files: manifest.files.len(),
        records,
        amount_fen,
        instant_credit_packets: instant,
        problems_total,
        problems: listed,
    })
}

fn verify_file(shared: &Shared, file: &FileSummary) -> FileTotals {
    let manifest = shared.manifest;
    let problems = &shared.problems;
    let name = file.name.as_str();
    let path = shared.dir.join(name);
    let mut totals = FileTotals::default();
    let expected_length = file.records * RECORD_BYTES as u64;
    match std::fs::metadata(&path) {
        Err(error) => {
            problems.add(Some(name), None, "missing_file", error.to_string());
            return totals;
        }
        Ok(metadata) if metadata.len() != expected_length => {
            let kind = if metadata.len() % RECORD_BYTES as u64 != 0 { "truncated_file" } else { "file_length" };
            problems.add(
                Some(name),
                Some(metadata.len().min(expected_length)),
                kind,
                format!(
                    "{} bytes, manifest expects {} records = {expected_length} bytes",
                    metadata.len(),
                    file.records
                ),
            );
        }
        Ok(_) => {}
    }
    let crc_seed = file.tag().crc_seed();
    let key_id_range = file.key_id_first..file.key_id_first + file.key_ids_used;
    let threshold = manifest.instant_credit_threshold_fen;
    let mut file_crc = 0u32;
    let mut trailing_bytes = 0usize;
    let mut current_key: Option<(u16, u64, u64)> = None;
    // Indexed by batch id: a map lookup per record cost a fifth of the verify time.
    let mut batch_totals = vec![(0u64, 0u64); manifest.batches.len()];
    let flush_key = |key: Option<(u16, u64, u64)>| {
        if let Some((key_id, packets, coverage)) = key {
            shared.key_packets[usize::from(key_id)].fetch_add(packets, Ordering::Relaxed);
            shared.key_coverage_fen[usize::from(key_id)].fetch_add(coverage, Ordering::Relaxed);
        }
    };
    let result = super::file_reader::for_each_chunk(&path, VERIFY_CHUNK_RECORDS, |first_index, bytes| {
        file_crc = redrain_storage::crc::crc32c_append(file_crc, bytes);
        trailing_bytes = bytes.len() % RECORD_BYTES;
        for (offset_in_chunk, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            let index = first_index + offset_in_chunk as u64;
            let offset = index * RECORD_BYTES as u64;
            totals.records += 1;
            let record: &[u8; RECORD_BYTES] = chunk.try_into().expect("chunks_exact gives whole records");
            let ticket = match shared.decryptor.decrypt_record(record, index, crc_seed) {
                Ok(ticket) => ticket,
                Err(error) => {
                    problems.add(Some(name), Some(offset), ticket_error_kind(&error), error.to_string());
                    continue;
                }
            };
            if !key_id_range.contains(&u32::from(ticket.key_id)) {
                problems.add(
                    Some(name),
                    Some(offset),
                    "key_out_of_file_range",
                    format!("key {} outside the file's key ids {key_id_range:?}", ticket.key_id),
                );
            }
            let Some(batch) = manifest.batches.get(usize::from(ticket.batch_id)) else {
                problems.add(Some(name), Some(offset), "unknown_batch", format!("batch {}", ticket.batch_id));
                continue;
            };
            if batch.slot != file.slot {
                problems.add(
                    Some(name),
                    Some(offset),
                    "wrong_slot",
                    format!("batch {} is for slot {}, file is slot {}", batch.batch_id, batch.slot, file.slot),
                );
            }
            let merchant = &manifest.merchants[batch.merchant_index as usize];
            let packet_range = merchant.packet_id_first..merchant.packet_id_first.saturating_add(merchant.packets);
            if !packet_range.contains(&ticket.packet_id) || ticket.packet_id >= shared.packet_ids_checked {
                problems.add(
                    Some(name),
                    Some(offset),
                    "packet_id_out_of_range",
                    format!("packet {} outside merchant {}'s ids {packet_range:?}", ticket.packet_id, merchant.id),
                );
                continue;
            }
            let word = &shared.seen_packets[(ticket.packet_id / 64) as usize];
            let bit = 1u64 << (ticket.packet_id % 64);
            if word.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                problems.add(
                    Some(name),
                    Some(offset),
                    "duplicate_packet_id",
                    format!("packet {} appears more than once", ticket.packet_id),
                );
                continue;
            }
            if ticket.amount_fen < merchant.min_amount_fen || ticket.amount_fen > merchant.max_amount_fen {
                problems.add(
                    Some(name),
                    Some(offset),
                    "amount_out_of_bounds",
                    format!(
                        "packet {} amount {} fen outside merchant {}'s [{}, {}]",
                        ticket.packet_id,
                        ticket.amount_fen,
                        merchant.id,
                        merchant.min_amount_fen,
                        merchant.max_amount_fen
                    ),
                );
            }
            totals.amount_fen += u64::from(ticket.amount_fen);
            if ticket.amount_fen >= threshold {
                totals.instant += 1;
            }
            let entry = &mut batch_totals[usize::from(ticket.batch_id)];
            entry.0 += 1;
            entry.1 += u64::from(ticket.amount_fen);
            match &mut current_key {
                Some((key_id, packets, coverage)) if *key_id == ticket.key_id => {
                    *packets += 1;
                    *coverage += u64::from(ticket.amount_fen);
                }
                _ => {
                    flush_key(current_key.replace((ticket.key_id, 1, u64::from(ticket.amount_fen))));
                }
            }
        }
        true
    });
    flush_key(current_key);
    totals.batches = batch_totals
        .iter()
        .enumerate()
        .filter(|(_, (packets, _))| *packets > 0)
        .map(|(batch_id, &totals)| (batch_id as u16, totals))
        .collect();
    if let Err(error) = result {
        problems.add(Some(name), None, "read_error", error.to_string());
        return totals;
    }
    if trailing_bytes != 0 {
        problems.add(
            Some(name),
            Some(totals.records * RECORD_BYTES as u64),
            "truncated_record",
            format!("{trailing_bytes} bytes of a partial record at the end"),
        );
    }
    if file_crc != file.crc32c {
        problems.add(
            Some(name),
            None,
            "file_checksum",
            format!("CRC32C {file_crc:#010x}, manifest {:#010x}", file.crc32c),
        );
    }
    if totals.records != file.records || totals.amount_fen != file.amount_fen {
        problems.add(
            Some(name),
            None,
            "file_total",
            format!(
                "{} records / {} fen valid, manifest {} / {}",
                totals.records, totals.amount_fen, file.records, file.amount_fen
            ),
        );
    }
    let manifest_batches: BTreeMap<u16, (u64, u64)> =
        file.batches.iter().map(|batch| (batch.batch_id, (batch.packets, batch.amount_fen))).collect();
    if manifest_batches != totals.batches {
        problems.add(
            Some(name),
            None,
            "file_batch_totals",
            format!("per-batch totals {:?} differ from manifest {:?}", totals.batches, manifest_batches),
        );
    }
    totals
}

/// Internal sums of the manifest: files add up to batches, batches to merchants and slots.
fn check_manifest_consistency(manifest: &Manifest, problems: &Problems) {
    // Saturating sums: the manifest is input, its numbers may be anything.
    let records = manifest.files.iter().fold(0u64, |sum, file| sum.saturating_add(file.records));
    let money = manifest.files.iter().fold(0u64, |sum, file| sum.saturating_add(file.amount_fen));
    if records != manifest.packets_total || money != manifest.amount_fen_total {
        problems.global(
            "manifest_totals",
            format!(
                "files add up to {records} packets / {money} fen, manifest totals {} / {}",
                manifest.packets_total, manifest.amount_fen_total
            ),
        );
    }
    let budget_total = manifest.merchants.iter().fold(0u64, |sum, merchant| sum.saturating_add(merchant.budget_fen));
    if budget_total != manifest.amount_fen_total {
        problems.global(
            "manifest_totals",
            format!("merchant budgets add up to {budget_total} fen, manifest total {}", manifest.amount_fen_total),
        );
    }
    let mut key_ids = BTreeSet::new();
    for file in &manifest.files {
        for key_id in file.key_id_first..file.key_id_first + file.key_ids_used {
            if !key_ids.insert(key_id) {
                problems.global("manifest_keys", format!("key {key_id} assigned to more than one file"));
            }
        }
        if file.key_ids_used > file.key_ids_reserved {
            problems.global("manifest_keys", format!("file {} uses more key ids than reserved", file.name));
        }
    }
}

/// The budget given on the command line must be the one generated from, and its plan must
/// give the manifest's files.
fn check_against_budget(manifest: &Manifest, budget: &LoadedBudget, problems: &Problems) {
    if budget.sha256_hex != manifest.budget_sha256 {
        problems.global(
            "budget_hash",
            format!("budget SHA-256 {} differs from manifest {}", budget.sha256_hex, manifest.budget_sha256),
        );
    }
    let plan = match Plan::new(&budget.budget, Topology { nodes: manifest.nodes, cores: manifest.cores }) {
        Ok(plan) => plan,
        Err(error) => {
            problems.global("budget_plan", error.to_string());
            return;
        }
    };
    if plan.merchants.len() != manifest.merchants.len() {
        problems.global("budget_merchants", "merchant count differs from the budget".into());
    }
    for (planned, listed) in plan.merchants.iter().zip(&manifest.merchants) {
        if planned.id != listed.id
            || planned.split.budget_fen() != listed.budget_fen
            || planned.split.packets() != listed.packets
            || planned.split.min_fen() != listed.min_amount_fen
            || planned.split.max_fen() != listed.max_amount_fen
        {
            problems.global("budget_merchants", format!("merchant {} differs from the budget", listed.id));
        }
    }
    if plan.files.len() != manifest.files.len() {
        problems.global("budget_files", "file count differs from the plan".into());
    }
    for (planned, listed) in plan.files.iter().zip(&manifest.files) {
        if planned.tag != listed.tag() || planned.packets != listed.records || planned.amount_fen != listed.amount_fen {
            problems.global(
                "budget_files",
                format!(
                    "file {}: plan {} packets / {} fen, manifest {} / {}",
                    listed.name, planned.packets, planned.amount_fen, listed.records, listed.amount_fen
                ),
            );
        }
    }
}

/// Ticket files on disk must be exactly those of the manifest.
fn check_directory_listing(dir: &Path, manifest: &Manifest, problems: &Problems) -> Result<(), VerifyError> {
    let listed: BTreeSet<&str> = manifest.files.iter().map(|file| file.name.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|source| VerifyError::Io { path: dir.to_path_buf(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| VerifyError::Io { path: dir.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".tickets") || name.ends_with(".partial")) && !listed.contains(name.as_str()) {
            problems.add(Some(&name), None, "unlisted_file", "ticket file not in the manifest".into());
        }
    }
    Ok(())
}

/// Per-key coverage against the cap and the keyring.
fn check_keys(shared: &Shared, keyring: &Keyring) {
    let cap = shared.manifest.key_coverage_cap_fen;
    let problems = &shared.problems;
    let mut in_keyring = vec![false; KEY_IDS_MAX];
    for entry in &keyring.keys {
        in_keyring[usize::from(entry.key_id)] = true;
        let packets = shared.key_packets[usize::from(entry.key_id)].load(Ordering::Relaxed);
        let coverage = shared.key_coverage_fen[usize::from(entry.key_id)].load(Ordering::Relaxed);
        if coverage > cap {
            problems.global("key_coverage", format!("key {} covers {coverage} fen, above the cap {cap}", entry.key_id));
        }
        if (packets, coverage) != (entry.packets, entry.coverage_fen) {
            problems.global(
                "key_coverage",
                format!(
                    "key {}: tickets hold {packets} packets / {coverage} fen, keyring records {} / {}",
                    entry.key_id, entry.packets, entry.coverage_fen
                ),
            );
        }
    }
    let keys_used = keyring.keys.len();
    if keys_used != shared.manifest.keys_total as usize {
        problems
            .global("key_count", format!("keyring has {keys_used} keys, manifest says {}", shared.manifest.keys_total));
    }
}

impl VerifyReport {
    /// Human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} files, {} records, {} yuan, {} instant-credit packets",
            if self.ok { "OK" } else { "FAILED" },
            self.files,
            self.records,
            super::plan::yuan(self.amount_fen),
            self.instant_credit_packets
        );
        if !self.ok {
            let _ = writeln!(out, "{} problems (first {} listed):", self.problems_total, self.problems.len());
            for problem in &self.problems {
                let place = match (&problem.file, problem.offset) {
                    (Some(file), Some(offset)) => {
                        format!("{file} @ byte {offset} (record {})", offset / RECORD_BYTES as u64)
                    }
                    (Some(file), None) => file.clone(),
                    _ => "(global)".into(),
                };
                let _ = writeln!(out, "  {place}: {}: {}", problem.kind, problem.detail);
            }
        }
        out
    }
}
