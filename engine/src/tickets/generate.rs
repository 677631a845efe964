//! Generation: amounts, shuffle, encryption and files for every (node, core, slot) shard, on
//! all cores, in memory that does not grow with the number of packets.
//!
//! Each file is produced by one worker thread from its [`FilePlan`]: one [`AmountStream`] per
//! merchant part (one block of amounts in memory each), merged by a streaming random
//! interleave (the next packet comes from part `p` with probability `remaining(p) /
//! remaining`, drawn through a Fenwick tree: every interleaving of the parts is equally
//! likely, O(log parts) per packet), encrypted in chunks of [`CHUNK_RECORDS`] with AES-NI and
//! written with one large write per chunk. A file is written as `NAME.partial`, synced and
//! renamed, so a crashed run leaves no file that looks complete.
//!
//! All randomness and keys derive from one master secret (from `--seed` and `--variant`, or
//! from the OS), with a separate stream per (file, merchant): the output is byte-identical for
//! a seed whatever the thread count or scheduling.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use aes::cipher::{generic_array::GenericArray, BlockEncrypt};
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::budget::{LoadedBudget, PacketKind};
use super::format::{seal_record_into, Ticket, AMOUNT_FEN_MAX, RECORD_BYTES};
use super::keyring::{cipher_for, derive_key, KeyEntry, Keyring, KEYRING_FORMAT};
use super::manifest::*;
use super::placement::{park_of, peers_of, NodePlacement};
use super::plan::{FilePlan, Plan, Topology};
use super::split::AmountStream;

/// Records encrypted and written per chunk (about 1.7 MB): large writes, bounded memory.
pub const CHUNK_RECORDS: usize = 65_536;
/// Most worker threads.
pub const THREADS_MAX: usize = 256;

/// Options of a generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Directory for ticket files and the manifest.
    pub out_dir: PathBuf,
    /// Keyring path; must not be inside `out_dir`.
    pub keyring_path: PathBuf,
    /// Reproducible seed; `None` draws the master secret from the OS.
    pub seed: Option<u64>,
    /// Plan variant: another set of amounts, order and keys from the same budget.
    pub variant: u32,
    /// Worker threads (1..=[`THREADS_MAX`]).
    pub threads: usize,
    /// Replace an existing generation in `out_dir`.
    pub overwrite: bool,
}

/// Failure of a generation.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The budget cannot be planned for the topology.
    #[error(transparent)]
    Budget(#[from] super::budget::BudgetError),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Writing the keyring failed.
    #[error(transparent)]
    Keyring(#[from] super::keyring::KeyringError),
    /// A refused option.
    #[error("{0}")]
    Options(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io { path: path.to_path_buf(), source }
}

/// What a finished generation produced.
#[derive(Debug)]
pub struct GenerateReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Where the keyring went.
    pub keyring_path: PathBuf,
}

/// The secrets of one generation.
pub struct MasterSecret([u8; 32]);

impl MasterSecret {
    /// From a reproducible seed (or the OS), the variant and the budget hash.
    pub fn new(seed: Option<u64>, variant: u32, budget_sha256: &str) -> MasterSecret {
        let mut seed_bytes = [0u8; 32];
        match seed {
            Some(seed) => {
                let digest =
                    Sha256::new().chain_update(b"redrain/tickets/seed/v1").chain_update(seed.to_le_bytes()).finalize();
                seed_bytes.copy_from_slice(&digest);
            }
            None => rand::rngs::OsRng.fill_bytes(&mut seed_bytes),
        }
        let digest = Sha256::new()
            .chain_update(b"redrain/tickets/master/v1")
            .chain_update(seed_bytes)
            .chain_update(variant.to_le_bytes())
            .chain_update(budget_sha256.as_bytes())
            .finalize();
        let mut master = [0u8; 32];
        master.copy_from_slice(&digest);
        MasterSecret(master)
    }

    /// The key of a key id.
    pub fn key(&self, key_id: u16) -> [u8; 16] {
        derive_key(&self.0, key_id)
    }

    /// An independent random stream for `(label, a, b)`.
    fn stream(&self, label: &[u8], a: u64, b: u64) -> ChaCha8Rng {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(&a.to_le_bytes());
        mac.update(&b.to_le_bytes());
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&mac.finalize().into_bytes());
        ChaCha8Rng::from_seed(seed)
    }
}

/// A Fenwick tree over the remaining packets of each part, for drawing the next part in
/// proportion to what it has left.
struct Fenwick {
    tree: Vec<u64>,
    top_bit: usize,
}

impl Fenwick {
    fn new(counts: &[u64]) -> Fenwick {
        let mut tree = vec![0u64; counts.len() + 1];
        for (index, &count) in counts.iter().enumerate() {
            let mut node = index + 1;
            while node < tree.len() {
                tree[node] += count;
                node += node & node.wrapping_neg();
            }
        }
        let top_bit = if counts.is_empty() { 0 } else { 1 << (usize::BITS - 1 - counts.len().leading_zeros()) };
        Fenwick { tree, top_bit }
    }

    fn decrement(&mut self, index: usize) {
        let mut node = index + 1;
        while node < self.tree.len() {
            self.tree[node] -= 1;
            node += node & node.wrapping_neg();
        }
    }

    /// Index of the part holding the `rank`-th remaining packet (0-based).
    fn find(&self, mut rank: u64) -> usize {
        let mut position = 0;
        let mut step = self.top_bit;
        while step > 0 {
            let next = position + step;
            if next < self.tree.len() && self.tree[next] <= rank {
                position = next;
                rank -= self.tree[next];
            }
            step >>= 1;
        }
        position
    }
}

/// Histogram of amounts in buckets of `1 << shift` fen, for the instant-credit threshold.
struct AmountHistogram {
    shift: u32,
    counts: Vec<u64>,
}

impl AmountHistogram {
    /// Buckets cover up to `max_fen` with at most 65,536 buckets.
    fn new(max_fen: u32) -> AmountHistogram {
        let mut shift = 0;
        while (max_fen >> shift) >= 1 << 16 {
            shift += 1;
        }
        AmountHistogram { shift, counts: vec![0; (max_fen >> shift) as usize + 1] }
    }

    fn record(&mut self, amount_fen: u32) {
        self.counts[(amount_fen >> self.shift) as usize] += 1;
    }

    fn merge(&mut self, other: &AmountHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// Lowest bucket boundary such that at least `top_percent` of packets are at or above it,
    /// and the exact count at or above it (bucket boundaries are exact).
    fn top_threshold(&self, top_percent: u32) -> (u32, u64) {
        let total: u64 = self.counts.iter().sum();
        let wanted = (u128::from(total) * u128::from(top_percent)).div_ceil(100) as u64;
        if wanted == 0 {
            return (AMOUNT_FEN_MAX + 1, 0);
        }
        let mut at_or_above = 0;
        for (bucket, &count) in self.counts.iter().enumerate().rev() {
            at_or_above += count;
            if at_or_above >= wanted {
                return ((bucket as u32) << self.shift, at_or_above);
            }
        }
        (0, total)
    }
}

/// What one file came out as.
struct FileOutcome {
    file_index: usize,
    crc32c: u32,
    keys: Vec<KeyEntry>,
    /// (batch id, packets, money), in part order.
    batches: Vec<FileBatch>,
    amount_fen: u64,
    /// Packets at or above an explicit instant-credit threshold (0 without one).
    instant_packets: u64,
}

/// Generates a whole event. See the module docs for the scheme.
pub fn generate(
    loaded: &LoadedBudget,
    topology: Topology,
    options: &GenerateOptions,
) -> Result<GenerateReport, GenerateError> {
    if options.threads == 0 || options.threads > THREADS_MAX {
        return Err(GenerateError::Options(format!("--threads must be in 1..={THREADS_MAX}")));
    }
    let plan = Plan::new(&loaded.budget, topology)?;
    let out_dir = &options.out_dir;
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let out_canonical = out_dir.canonicalize().map_err(io_error(out_dir))?;
    let keyring_parent = match options.keyring_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let keyring_parent = keyring_parent.canonicalize().map_err(io_error(&keyring_parent))?;
    if keyring_parent.starts_with(&out_canonical) {
        return Err(GenerateError::Options(format!(
            "the keyring {} must not be inside the ticket directory {}",
            options.keyring_path.display(),
            out_dir.display()
        )));
    }
    let manifest_path = out_dir.join(MANIFEST_FILE_NAME);
    if manifest_path.exists() && !options.overwrite {
        return Err(GenerateError::Options(format!(
            "{} already holds a generation (use --overwrite to replace it)",
            out_dir.display()
        )));
    }
    // A half-replaced directory must not look complete, and files of an earlier topology
    // must not linger next to the new ones.
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(io_error(&manifest_path))?;
    }
    for entry in std::fs::read_dir(out_dir).map_err(io_error(out_dir))? {
        let path = entry.map_err(io_error(out_dir))?.path();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tickets") || name.ends_with(".partial") {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }

    let master = MasterSecret::new(options.seed, options.variant, &loaded.sha256_hex);
    let amount_fen_max = plan.merchants.iter().map(|m| m.split.max_fen()).max().unwrap_or(0);
    let next_file = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Mutex<Vec<FileOutcome>> = Mutex::new(Vec::with_capacity(plan.files.len()));
    let first_error: Mutex<Option<GenerateError>> = Mutex::new(None);
    let histogram = Mutex::new(AmountHistogram::new(amount_fen_max));
    let threads = options.threads.min(plan.files.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut local_histogram = AmountHistogram::new(amount_fen_max);
                let mut buffers = Buffers::new();
                while !failed.load(Ordering::Relaxed) {
                    let index = next_file.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = plan.files.get(index) else {
                        break;
                    };
                    match generate_file(&plan, file, &master, out_dir, &mut local_histogram, &mut buffers) {
                        Ok(outcome) => outcomes.lock().expect("no panics while locked").push(outcome),
                        Err(error) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("no panics while locked").get_or_insert(error);
                        }
                    }
                }
                histogram.lock().expect("no panics while locked").merge(&local_histogram);
            });
        }
    });
    if let Some(error) = first_error.into_inner().expect("threads joined") {
        return Err(error);
    }
    let mut outcomes = outcomes.into_inner().expect("threads joined");
    outcomes.sort_by_key(|outcome| outcome.file_index);
    assert_eq!(outcomes.len(), plan.files.len(), "every file generated");
    let histogram = histogram.into_inner().expect("threads joined");

    let event = &plan.budget.event;
    let (threshold_fen, instant_packets) = match event.instant_credit_threshold_fen {
        // Counted exactly per packet: the histogram is exact only on its bucket boundaries.
        Some(threshold) => (threshold, outcomes.iter().map(|outcome| outcome.instant_packets).sum()),
        None => histogram.top_threshold(event.instant_credit_top_percent),
    };

    let mut keys: Vec<KeyEntry> = outcomes.iter().flat_map(|outcome| outcome.keys.iter().cloned()).collect();
    keys.sort_by_key(|key| key.key_id);
    let keyring = Keyring {
        format: KEYRING_FORMAT.into(),
        event_name: event.name.clone(),
        budget_sha256: loaded.sha256_hex.clone(),
        key_coverage_cap_fen: event.key_coverage_cap_fen,
        keys,
        whitelist: None,
        blacklist: Default::default(),
    };
    keyring.save(&options.keyring_path)?;

    let manifest =
        build_manifest(&plan, loaded, options.variant, &outcomes, threshold_fen, instant_packets, keyring.keys.len());
    let mut json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    json.push(b'\n');
    let temporary = out_dir.join(format!("{MANIFEST_FILE_NAME}.partial"));
    let mut file = std::fs::File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(&json).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, &manifest_path).map_err(io_error(&manifest_path))?;
    Ok(GenerateReport { manifest, keyring_path: options.keyring_path.clone() })
}

fn build_manifest(
    plan: &Plan,
    loaded: &LoadedBudget,
    variant: u32,
    outcomes: &[FileOutcome],
    instant_credit_threshold_fen: u32,
    instant_credit_packets: u64,
    keys_total: usize,
) -> Manifest {
    let budget = &plan.budget;
    let slots = budget
        .event
        .slots
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            let in_slot = plan.batches.iter().filter(|batch| batch.slot == index);
            let (packets, amount_fen) = in_slot.fold((0, 0), |(p, a), b| (p + b.packets, a + b.amount_fen));
            SlotSummary {
                index: index as u16,
                id: slot.id.clone(),
                start: slot.start.clone(),
                end: slot.end.clone(),
                packets,
                amount_fen,
            }
        })
        .collect();
    let merchants = plan
        .merchants
        .iter()
        .map(|merchant| MerchantSummary {
            id: merchant.id.clone(),
            kind: merchant.kind,
            budget_fen: merchant.split.budget_fen(),
            packets: merchant.split.packets(),
            min_amount_fen: merchant.split.min_fen(),
            max_amount_fen: merchant.split.max_fen(),
            packet_id_first: merchant.packet_id_base,
        })
        .collect();
    let mut kinds: Vec<KindSummary> = Vec::new();
    for merchant in &plan.merchants {
        let kind: PacketKind = merchant.kind;
        match kinds.iter_mut().find(|summary| summary.kind == kind) {
            Some(summary) => {
                summary.packets += merchant.split.packets();
                summary.amount_fen += merchant.split.budget_fen();
            }
            None => kinds.push(KindSummary {
                kind,
                packets: merchant.split.packets(),
                amount_fen: merchant.split.budget_fen(),
            }),
        }
    }
    kinds.sort_by_key(|summary| summary.kind);
    let batches = plan
        .batches
        .iter()
        .map(|batch| BatchSummary {
            batch_id: batch.batch_id,
            merchant: plan.merchants[batch.merchant].id.clone(),
            merchant_index: batch.merchant as u32,
            slot: batch.slot as u16,
            kind: plan.merchants[batch.merchant].kind,
            packets: batch.packets,
            amount_fen: batch.amount_fen,
        })
        .collect();
    let files: Vec<FileSummary> = plan
        .files
        .iter()
        .zip(outcomes)
        .map(|(file, outcome)| {
            debug_assert_eq!(file.index, outcome.file_index);
            FileSummary {
                name: file.tag.file_name(),
                node: file.tag.node,
                core: file.tag.core,
                slot: file.tag.slot,
                records: file.packets,
                amount_fen: outcome.amount_fen,
                crc32c: outcome.crc32c,
                key_id_first: file.key_id_first,
                key_ids_reserved: file.key_ids_reserved,
                key_ids_used: outcome.keys.len() as u32,
                batches: outcome.batches.clone(),
            }
        })
        .collect();
    let placement = (0..plan.topology.nodes)
        .map(|node| NodePlacement {
            node,
            park: park_of(node),
            backup_peers: peers_of(node, plan.topology.nodes),
            files: files.iter().filter(|file| file.node == node).map(|file| file.name.clone()).collect(),
        })
        .collect();
    Manifest {
        format: MANIFEST_FORMAT.into(),
        record_bytes: RECORD_BYTES as u32,
        event_name: budget.event.name.clone(),
        budget_sha256: loaded.sha256_hex.clone(),
        variant,
        nodes: plan.topology.nodes,
        cores: plan.topology.cores,
        key_coverage_cap_fen: budget.event.key_coverage_cap_fen,
        instant_credit_threshold_fen,
        instant_credit_packets,
        packets_total: plan.packets_total,
        amount_fen_total: plan.amount_fen_total,
        keys_total: keys_total as u32,
        slots,
        merchants,
        kinds,
        batches,
        files,
        placement,
    }
}

/// Per-worker buffers, reused across files.
struct Buffers {
    blocks: Vec<GenericArray<u8, aes::cipher::consts::U16>>,
    records: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers { blocks: Vec::with_capacity(CHUNK_RECORDS), records: Vec::with_capacity(CHUNK_RECORDS * RECORD_BYTES) }
    }
}

/// The key currently filling in a file.
struct FillingKey {
    entry: KeyEntry,
    cipher: aes::Aes128,
}

fn start_key(master: &MasterSecret, key_id: u32) -> FillingKey {
    let key_id = u16::try_from(key_id).expect("plan keeps key ids below 65,536");
    let key = master.key(key_id);
    FillingKey { entry: KeyEntry { key_id, key, packets: 0, coverage_fen: 0 }, cipher: cipher_for(&key) }
}

fn generate_file(
    plan: &Plan,
    file: &FilePlan,
    master: &MasterSecret,
    out_dir: &Path,
    histogram: &mut AmountHistogram,
    buffers: &mut Buffers,
) -> Result<FileOutcome, GenerateError> {
    let cap_fen = plan.budget.event.key_coverage_cap_fen;
    let instant_threshold_fen = plan.budget.event.instant_credit_threshold_fen.unwrap_or(u32::MAX);
    let mut instant_packets = 0u64;
    let final_path = out_dir.join(file.tag.file_name());
    let partial_path = out_dir.join(format!("{}.partial", file.tag.file_name()));
    let mut output = std::fs::File::create(&partial_path).map_err(io_error(&partial_path))?;
    let crc_seed = file.tag.crc_seed();

    let mut streams: Vec<AmountStream> = file
        .parts
        .iter()
        .map(|part| {
            let merchant = &plan.merchants[part.merchant];
            let rng = master.stream(b"amounts", file.index as u64, part.merchant as u64);
            AmountStream::new(merchant.split, part.sequence_start, part.sequence_end, rng)
        })
        .collect();
    let counts: Vec<u64> = file.parts.iter().map(|part| part.sequence_end - part.sequence_start).collect();
    let mut fenwick = Fenwick::new(&counts);
    let mut interleave = master.stream(b"interleave", file.index as u64, 0);
    let mut batches: Vec<FileBatch> =
        file.parts.iter().map(|part| FileBatch { batch_id: part.batch_id, packets: 0, amount_fen: 0 }).collect();

    let mut keys = Vec::new();
    let key_id_end = file.key_id_first + file.key_ids_reserved;
    let mut key = start_key(master, file.key_id_first);
    let mut file_crc = 0u32;
    let mut amount_fen_total = 0u64;
    let mut chunk_first_index: u64 = 0;
    buffers.blocks.clear();

    let mut remaining = file.packets;
    let mut record_index: u64 = 0;
    while remaining > 0 {
        let part_index = fenwick.find(interleave.gen_range(0..remaining));
        fenwick.decrement(part_index);
        remaining -= 1;
        let stream = &mut streams[part_index];
        let sequence = stream.next_index();
        let amount_fen = stream.next().expect("fenwick counts match the streams");
        let part = &file.parts[part_index];
        let packet_id = plan.merchants[part.merchant].packet_id_base + sequence;

        if key.entry.coverage_fen + u64::from(amount_fen) > cap_fen {
            flush_chunk(buffers, &key, chunk_first_index, crc_seed, &mut output, &mut file_crc, &partial_path)?;
            chunk_first_index = record_index;
            let next_key_id = u32::from(key.entry.key_id) + 1;
            assert!(next_key_id < key_id_end, "plan reserved too few key ids");
            keys.push(std::mem::replace(&mut key, start_key(master, next_key_id)).entry);
        }
        key.entry.coverage_fen += u64::from(amount_fen);
        key.entry.packets += 1;
        let ticket = Ticket { packet_id, amount_fen, batch_id: part.batch_id, key_id: key.entry.key_id };
        buffers.blocks.push(GenericArray::from(ticket.encode_plaintext()));
        histogram.record(amount_fen);
        instant_packets += u64::from(amount_fen >= instant_threshold_fen);
        batches[part_index].packets += 1;
        batches[part_index].amount_fen += u64::from(amount_fen);
        amount_fen_total += u64::from(amount_fen);
        record_index += 1;
        if buffers.blocks.len() == CHUNK_RECORDS {
            flush_chunk(buffers, &key, chunk_first_index, crc_seed, &mut output, &mut file_crc, &partial_path)?;
            chunk_first_index = record_index;
        }
    }
    flush_chunk(buffers, &key, chunk_first_index, crc_seed, &mut output, &mut file_crc, &partial_path)?;
    if key.entry.packets > 0 {
        keys.push(key.entry);
    }
    output.sync_all().map_err(io_error(&partial_path))?;
    drop(output);
    std::fs::rename(&partial_path, &final_path).map_err(io_error(&final_path))?;

    // Totals are fixed by the plan: a mismatch is a bug in the splitter, never input.
    assert_eq!(amount_fen_total, file.amount_fen, "file {} money", file.tag.file_name());
    for (batch, part) in batches.iter().zip(&file.parts) {
        let merchant = &plan.merchants[part.merchant];
        assert_eq!(batch.amount_fen, merchant.split.range_fen(part.sequence_start, part.sequence_end));
    }
    Ok(FileOutcome {
        file_index: file.index,
        crc32c: file_crc,
        keys,
        batches,
        amount_fen: amount_fen_total,
        instant_packets,
    })
}

/// Encrypts the pending blocks (all under `key`), seals and writes them.
fn flush_chunk(
    buffers: &mut Buffers,
    key: &FillingKey,
    first_index: u64,
    crc_seed: u32,
    output: &mut std::fs::File,
    file_crc: &mut u32,
    path: &Path,
) -> Result<(), GenerateError> {
    if buffers.blocks.is_empty() {
        return Ok(());
    }
    key.cipher.encrypt_blocks(&mut buffers.blocks);
    let first_index = u32::try_from(first_index).expect("plan limits files to u32 records");
    buffers.records.clear();
    buffers.records.resize(buffers.blocks.len() * RECORD_BYTES, 0);
    for (offset, (block, record)) in
        buffers.blocks.iter().zip(buffers.records.chunks_exact_mut(RECORD_BYTES)).enumerate()
    {
        let ciphertext: &[u8; 16] = block.as_slice().try_into().expect("AES blocks are 16 bytes");
        let record: &mut [u8; RECORD_BYTES] = record.try_into().expect("chunks_exact gives whole records");
        seal_record_into(record, ciphertext, key.entry.key_id, first_index + offset as u32, crc_seed);
    }
    output.write_all(&buffers.records).map_err(io_error(path))?;
    *file_crc = redrain_storage::crc::crc32c_append(*file_crc, &buffers.records);
    buffers.blocks.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenwick_finds_parts_by_rank() {
        let mut tree = Fenwick::new(&[2, 0, 3, 1]);
        let found: Vec<usize> = (0..6).map(|rank| tree.find(rank)).collect();
        assert_eq!(found, vec![0, 0, 2, 2, 2, 3]);
        tree.decrement(2);
        let found: Vec<usize> = (0..5).map(|rank| tree.find(rank)).collect();
        assert_eq!(found, vec![0, 0, 2, 2, 3]);
    }

    #[test]
    fn histogram_threshold_takes_the_top_share() {
        let mut histogram = AmountHistogram::new(1_000);
        for amount in 1..=1_000 {
            histogram.record(amount);
        }
        assert_eq!(histogram.top_threshold(10), (901, 100));
        assert_eq!(histogram.top_threshold(0), (AMOUNT_FEN_MAX + 1, 0));
    }
}
