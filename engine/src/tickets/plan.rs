//! The plan: how a validated budget is cut into batches, ticket files and key id ranges for a
//! fleet of `nodes x cores`, computed exactly before anything is generated.
//!
//! Each merchant's packets form a sequence `0..packets` (see [`super::split`]). The sequence is
//! cut into contiguous slot ranges by the slot weights (`start(s) = floor(packets * cumulative
//! weight before s / 100)`), and each slot range into `nodes x cores` contiguous file parts the
//! same way. Every part's money follows from the split's prefix function, so the plan knows
//! the exact packets and fen of every file, node and slot without generating a single amount.
//! Packet ids are dense: merchant `m`'s packet `i` has id `base(m) + i`, with the bases laid
//! end to end in budget order.

use std::collections::BTreeMap;

use super::budget::{Budget, BudgetError, PacketKind};
use super::format::FileTag;
use super::keyring::KEY_IDS_MAX;
use super::split::AmountSplit;

/// Most nodes in a fleet.
pub const NODES_MAX: u16 = 4096;
/// Most cores per node.
pub const CORES_MAX: u16 = 1024;
/// Most ticket files in one generation.
pub const FILES_MAX: usize = 1 << 20;
/// Most batches (the batch id is 16 bits).
pub const BATCHES_MAX: usize = 1 << 16;

/// The fleet the tickets are generated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Number of nodes.
    pub nodes: u16,
    /// Cores per node.
    pub cores: u16,
}

/// One merchant in the plan.
#[derive(Clone, Debug)]
pub struct MerchantPlan {
    /// Merchant id.
    pub id: String,
    /// Packet kind.
    pub kind: PacketKind,
    /// The amount split of the merchant's whole sequence.
    pub split: AmountSplit,
    /// Packet id of sequence index 0.
    pub packet_id_base: u64,
    /// Sequence start of each slot, plus the end (`slots + 1` entries).
    pub slot_starts: Vec<u64>,
}

impl MerchantPlan {
    /// Sequence range of a slot.
    pub fn slot_range(&self, slot: usize) -> (u64, u64) {
        (self.slot_starts[slot], self.slot_starts[slot + 1])
    }
}

/// A batch: the packets of one merchant in one slot (merchant fixes the kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    /// Batch id stored in tickets.
    pub batch_id: u16,
    /// Merchant index.
    pub merchant: usize,
    /// Slot index.
    pub slot: usize,
    /// Packets in the batch.
    pub packets: u64,
    /// Money in the batch.
    pub amount_fen: u64,
}

/// The packets of one merchant (one batch) in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePart {
    /// Merchant index.
    pub merchant: usize,
    /// Batch id.
    pub batch_id: u16,
    /// First sequence index (in the merchant's sequence).
    pub sequence_start: u64,
    /// End of the sequence range (exclusive).
    pub sequence_end: u64,
}

/// One ticket file: a (node, core, slot) shard.
#[derive(Clone, Debug)]
pub struct FilePlan {
    /// Position in [`Plan::files`].
    pub index: usize,
    /// Node, core and slot.
    pub tag: FileTag,
    /// Parts, by merchant order.
    pub parts: Vec<FilePart>,
    /// Packets in the file.
    pub packets: u64,
    /// Money in the file.
    pub amount_fen: u64,
    /// Largest amount any packet of the file may have.
    pub amount_fen_max: u32,
    /// First key id reserved for the file.
    pub key_id_first: u32,
    /// Key ids reserved (`key_id_first..key_id_first + key_ids_reserved`).
    pub key_ids_reserved: u32,
}

/// The whole cut of a budget for a topology.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The budget.
    pub budget: Budget,
    /// The fleet.
    pub topology: Topology,
    /// Merchants in budget order.
    pub merchants: Vec<MerchantPlan>,
    /// Batches by id.
    pub batches: Vec<BatchPlan>,
    /// Files, by slot, then node, then core.
    pub files: Vec<FilePlan>,
    /// All packets.
    pub packets_total: u64,
    /// All money.
    pub amount_fen_total: u64,
    /// Key ids reserved in total.
    pub key_ids_reserved_total: u32,
}

/// `floor(total * numerator / denominator)` without overflow.
fn portion(total: u64, numerator: u64, denominator: u64) -> u64 {
    (u128::from(total) * u128::from(numerator) / u128::from(denominator)) as u64
}

impl Plan {
    /// Cuts a validated budget for a topology.
    pub fn new(budget: &Budget, topology: Topology) -> Result<Plan, BudgetError> {
        budget.validate()?;
        for (field, value, max) in [("--nodes", topology.nodes, NODES_MAX), ("--cores", topology.cores, CORES_MAX)] {
            if value == 0 || value > max {
                return Err(BudgetError::OutOfRange {
                    field: field.into(),
                    value: u64::from(value),
                    min: 1,
                    max: u64::from(max),
                });
            }
        }
        let slot_count = budget.event.slots.len();
        let files_per_slot = usize::from(topology.nodes) * usize::from(topology.cores);
        let file_count = files_per_slot * slot_count;
        if file_count > FILES_MAX {
            return Err(BudgetError::OutOfRange {
                field: "--nodes x --cores x slots".into(),
                value: file_count as u64,
                min: 1,
                max: FILES_MAX as u64,
            });
        }

        let mut merchants = Vec::with_capacity(budget.merchants.len());
        let mut packet_id_base = 0u64;
        for (index, merchant) in budget.merchants.iter().enumerate() {
            let split = AmountSplit::new(
                merchant.packets,
                merchant.min_amount_fen,
                merchant.max_amount_fen,
                merchant.budget_fen,
            )
            .map_err(|_| BudgetError::BadValue {
                field: format!("merchants[{index}]"),
                value: merchant.id.clone(),
                reason: "amounts cannot be split",
            })?;
            let mut slot_starts = Vec::with_capacity(slot_count + 1);
            let mut cumulative_weight = 0u64;
            for slot in &budget.event.slots {
                slot_starts.push(portion(merchant.packets, cumulative_weight, 100));
                cumulative_weight += u64::from(merchant.slot_weights.get(&slot.id).copied().unwrap_or(0));
            }
            debug_assert_eq!(cumulative_weight, 100);
            slot_starts.push(merchant.packets);
            merchants.push(MerchantPlan {
                id: merchant.id.clone(),
                kind: merchant.kind,
                split,
                packet_id_base,
                slot_starts,
            });
            packet_id_base += merchant.packets;
        }
        let packets_total = packet_id_base;

        let mut batches = Vec::new();
        // (merchant, slot) -> batch id
        let mut batch_of = vec![None; merchants.len() * slot_count];
        for (merchant_index, merchant) in merchants.iter().enumerate() {
            for slot in 0..slot_count {
                let (start, end) = merchant.slot_range(slot);
                if start == end {
                    continue;
                }
                if batches.len() >= BATCHES_MAX {
                    return Err(BudgetError::OutOfRange {
                        field: "merchants x slots (batches)".into(),
                        value: batches.len() as u64 + 1,
                        min: 1,
                        max: BATCHES_MAX as u64,
                    });
                }
                batch_of[merchant_index * slot_count + slot] = Some(batches.len() as u16);
                batches.push(BatchPlan {
                    batch_id: batches.len() as u16,
                    merchant: merchant_index,
                    slot,
                    packets: end - start,
                    amount_fen: merchant.split.range_fen(start, end),
                });
            }
        }

        let cap_fen = budget.event.key_coverage_cap_fen;
        let mut files = Vec::with_capacity(file_count);
        let mut key_id_next: u64 = 0;
        for slot in 0..slot_count {
            for node in 0..topology.nodes {
                for core in 0..topology.cores {
                    let file_in_slot = u64::from(node) * u64::from(topology.cores) + u64::from(core);
                    let mut parts = Vec::new();
                    let (mut packets, mut amount_fen, mut amount_fen_max) = (0u64, 0u64, 0u32);
                    for (merchant_index, merchant) in merchants.iter().enumerate() {
                        let (start, end) = merchant.slot_range(slot);
                        let count = end - start;
                        let part_start = start + portion(count, file_in_slot, files_per_slot as u64);
                        let part_end = start + portion(count, file_in_slot + 1, files_per_slot as u64);
                        if part_start == part_end {
                            continue;
                        }
                        let batch_id =
                            batch_of[merchant_index * slot_count + slot].expect("non-empty slot has a batch");
                        packets += part_end - part_start;
                        amount_fen += merchant.split.range_fen(part_start, part_end);
                        amount_fen_max = amount_fen_max.max(merchant.split.max_fen());
                        parts.push(FilePart {
                            merchant: merchant_index,
                            batch_id,
                            sequence_start: part_start,
                            sequence_end: part_end,
                        });
                    }
                    if packets > u64::from(u32::MAX) {
                        return Err(BudgetError::OutOfRange {
                            field: "packets per file (use more nodes or cores)".into(),
                            value: packets,
                            min: 0,
                            max: u64::from(u32::MAX),
                        });
                    }
                    // Greedy key switching leaves each full key above `cap - max`, so this
                    // many ids always suffice (validation made `cap >= 2 * max`).
                    let key_ids_reserved =
                        if packets == 0 { 0 } else { amount_fen / (cap_fen - u64::from(amount_fen_max)) + 1 };
                    files.push(FilePlan {
                        index: files.len(),
                        tag: FileTag { node, core, slot: slot as u16 },
                        parts,
                        packets,
                        amount_fen,
                        amount_fen_max,
                        key_id_first: key_id_next.min(u64::from(u32::MAX)) as u32,
                        key_ids_reserved: key_ids_reserved.min(u64::from(u32::MAX)) as u32,
                    });
                    key_id_next += key_ids_reserved;
                }
            }
        }
        if key_id_next > KEY_IDS_MAX as u64 {
            return Err(BudgetError::OutOfRange {
                field: "event.key_coverage_cap_fen (key ids needed)".into(),
                value: key_id_next,
                min: 1,
                max: KEY_IDS_MAX as u64,
            });
        }
        let amount_fen_total = merchants.iter().map(|merchant| merchant.split.budget_fen()).sum();
        Ok(Plan {
            budget: budget.clone(),
            topology,
            merchants,
            batches,
            files,
            packets_total,
            amount_fen_total,
            key_ids_reserved_total: key_id_next as u32,
        })
    }

    /// Merchant index that owns a packet id, by binary search over the bases.
    pub fn merchant_of_packet(&self, packet_id: u64) -> Option<usize> {
        if packet_id >= self.packets_total {
            return None;
        }
        Some(self.merchants.partition_point(|merchant| merchant.packet_id_base <= packet_id) - 1)
    }

    /// Renders the fund script: totals per merchant, slot, kind, and per node and core.
    pub fn fund_script(&self, per_node: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let budget = &self.budget;
        let _ = writeln!(out, "event: {}", budget.event.name);
        if let Some(date) = &budget.event.date {
            let _ = writeln!(out, "date: {date}");
        }
        let _ = writeln!(
            out,
            "total: {} packets, {} yuan, {} merchants, {} slots, {} batches",
            self.packets_total,
            yuan(self.amount_fen_total),
            self.merchants.len(),
            budget.event.slots.len(),
            self.batches.len()
        );
        let _ = writeln!(
            out,
            "key coverage cap: {} yuan per key; instant credit: {}",
            yuan(budget.event.key_coverage_cap_fen),
            match budget.event.instant_credit_threshold_fen {
                Some(threshold) => format!("packets >= {} yuan", yuan(u64::from(threshold))),
                None => format!(
                    "largest {}% of packets (threshold computed at generation)",
                    budget.event.instant_credit_top_percent
                ),
            }
        );
        let _ = writeln!(out, "\nper merchant:");
        let _ = writeln!(
            out,
            "  {:<20} {:<6} {:>12} {:>16} {:>10} {:>10} {:>10}",
            "merchant", "kind", "packets", "yuan", "min", "mean", "max"
        );
        for merchant in &self.merchants {
            let split = &merchant.split;
            let _ = writeln!(
                out,
                "  {:<20} {:<6} {:>12} {:>16} {:>10} {:>10.2} {:>10}",
                merchant.id,
                merchant.kind.name(),
                split.packets(),
                yuan(split.budget_fen()),
                yuan(u64::from(split.min_fen())),
                split.budget_fen() as f64 / split.packets() as f64 / 100.0,
                yuan(u64::from(split.max_fen())),
            );
        }
        let _ = writeln!(out, "\nper slot:");
        for (slot_index, slot) in budget.event.slots.iter().enumerate() {
            let (packets, amount_fen) = self
                .batches
                .iter()
                .filter(|batch| batch.slot == slot_index)
                .fold((0, 0), |(p, a), batch| (p + batch.packets, a + batch.amount_fen));
            let _ = writeln!(
                out,
                "  {:<12} {}-{}  {:>12} packets {:>16} yuan",
                slot.id,
                slot.start,
                slot.end,
                packets,
                yuan(amount_fen)
            );
        }
        let _ = writeln!(out, "\nper kind:");
        let mut kinds: BTreeMap<PacketKind, (u64, u64)> = BTreeMap::new();
        for merchant in &self.merchants {
            let entry = kinds.entry(merchant.kind).or_default();
            entry.0 += merchant.split.packets();
            entry.1 += merchant.split.budget_fen();
        }
        for (kind, (packets, amount_fen)) in kinds {
            let _ = writeln!(out, "  {:<12} {:>12} packets {:>16} yuan", kind.name(), packets, yuan(amount_fen));
        }
        if per_node {
            let topology = self.topology;
            let _ = writeln!(
                out,
                "\nper node and core ({} nodes x {} cores, {} files, {} key ids reserved):",
                topology.nodes,
                topology.cores,
                self.files.len(),
                self.key_ids_reserved_total
            );
            // One pass over the files, then print: the fleet can have thousands of cores.
            let mut per_core = vec![(0u64, 0u64); usize::from(topology.nodes) * usize::from(topology.cores)];
            for file in &self.files {
                let entry = &mut per_core
                    [usize::from(file.tag.node) * usize::from(topology.cores) + usize::from(file.tag.core)];
                entry.0 += file.packets;
                entry.1 += file.amount_fen;
            }
            for (node, cores) in per_core.chunks(usize::from(topology.cores)).enumerate() {
                let (packets, amount_fen) = cores.iter().fold((0, 0), |(p, a), c| (p + c.0, a + c.1));
                let _ = writeln!(
                    out,
                    "  node {node:<4} park {}  {:>12} packets {:>16} yuan",
                    super::placement::park_of(node as u16),
                    packets,
                    yuan(amount_fen)
                );
                for (core, (packets, amount_fen)) in cores.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "    core {core:<4}       {:>12} packets {:>16} yuan",
                        packets,
                        yuan(*amount_fen)
                    );
                }
            }
        }
        out
    }
}

/// Formats fen as yuan with two decimals.
pub fn yuan(amount_fen: u64) -> String {
    format!("{}.{:02}", amount_fen / 100, amount_fen % 100)
}
