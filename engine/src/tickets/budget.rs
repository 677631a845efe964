//! The budget model: the TOML document the payment back office writes for an event (slots,
//! merchants, amounts, key coverage cap, instant-credit rule), parsed and validated.
//!
//! Validation rejects every budget that cannot be generated exactly, naming the field and the
//! reason ([`BudgetError`]); a [`Budget`] that passed [`Budget::parse`] can always be generated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::AMOUNT_FEN_MAX;

/// Default coverage cap per key: 300,000 yuan.
pub const KEY_COVERAGE_CAP_FEN_DEFAULT: u64 = 30_000_000;
/// Default share of packets (the largest by amount) credited at once.
pub const INSTANT_CREDIT_TOP_PERCENT_DEFAULT: u32 = 10;
/// Most slots an event may have (the slot index is 16 bits in the file tag; 256 is plenty).
pub const SLOTS_MAX: usize = 256;
/// Most merchants an event may have.
pub const MERCHANTS_MAX: usize = 4096;
/// Most packets in one event (the packet id is 40 bits).
pub const PACKETS_MAX: u64 = super::format::PACKET_ID_MAX;
/// Largest budget file accepted.
pub const BUDGET_BYTES_MAX: u64 = 4 << 20;

/// Kind of packet (how the client presents it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PacketKind {
    /// A packet with a merchant image.
    Image,
    /// A packet with a merchant video.
    Video,
    /// A packet with a merchant logo.
    Logo,
    /// A plain packet.
    Plain,
}

impl PacketKind {
    /// Lower-case name, as in the budget file.
    pub fn name(self) -> &'static str {
        match self {
            PacketKind::Image => "image",
            PacketKind::Video => "video",
            PacketKind::Logo => "logo",
            PacketKind::Plain => "plain",
        }
    }
}

/// The budget document as written in TOML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The event.
    pub event: Event,
    /// The sponsoring merchants.
    #[serde(default)]
    pub merchants: Vec<Merchant>,
}

/// Event-wide settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Human name of the event.
    pub name: String,
    /// Date of the event (informational, e.g. "2027-02-06").
    #[serde(default)]
    pub date: Option<String>,
    /// Coverage cap of one key in fen.
    #[serde(default = "default_cap")]
    pub key_coverage_cap_fen: u64,
    /// Share of packets, the largest by amount, that may be credited at once.
    #[serde(default = "default_top_percent")]
    pub instant_credit_top_percent: u32,
    /// Explicit instant-credit threshold; when set it replaces the computed one.
    #[serde(default)]
    pub instant_credit_threshold_fen: Option<u32>,
    /// Time slots in order.
    #[serde(default)]
    pub slots: Vec<Slot>,
}

fn default_cap() -> u64 {
    KEY_COVERAGE_CAP_FEN_DEFAULT
}

fn default_top_percent() -> u32 {
    INSTANT_CREDIT_TOP_PERCENT_DEFAULT
}

/// One time slot of the event ("HH:MM" local times).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// Slot id, referenced by merchants' weights.
    pub id: String,
    /// Start time, "HH:MM".
    pub start: String,
    /// End time, "HH:MM", after the start (use "24:00" for midnight).
    pub end: String,
}

/// One sponsoring merchant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchant {
    /// Merchant id.
    pub id: String,
    /// Total money of the merchant's packets in fen; generated amounts sum to it exactly.
    pub budget_fen: u64,
    /// Number of packets.
    pub packets: u64,
    /// Smallest amount of one packet (fen).
    pub min_amount_fen: u32,
    /// Largest amount of one packet (fen).
    pub max_amount_fen: u32,
    /// Packet kind.
    pub kind: PacketKind,
    /// Share of the merchant's packets per slot id, in percent; must add up to 100.
    pub slot_weights: BTreeMap<String, u32>,
}

/// A budget that cannot be generated, with the offending field and the reason.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The budget file could not be read.
    #[error("cannot read budget {path}: {source}")]
    Io {
        /// Path of the budget.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The budget is not valid TOML or does not match the schema.
    #[error("budget is not a valid document: {0}")]
    Parse(#[from] toml::de::Error),
    /// A list that must not be empty is empty or too long.
    #[error("{field}: has {count} entries, allowed {min}..={max}")]
    Count {
        /// The field.
        field: String,
        /// Entries found.
        count: usize,
        /// Least allowed.
        min: usize,
        /// Most allowed.
        max: usize,
    },
    /// Two entries share an id.
    #[error("{field}: duplicate id {id:?}")]
    DuplicateId {
        /// The field.
        field: String,
        /// The repeated id.
        id: String,
    },
    /// A text field is empty or malformed.
    #[error("{field}: {value:?} is not valid: {reason}")]
    BadValue {
        /// The field.
        field: String,
        /// The value found.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A number is outside its allowed range.
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        /// The field.
        field: String,
        /// The value found.
        value: u64,
        /// Least allowed.
        min: u64,
        /// Most allowed.
        max: u64,
    },
    /// Slots overlap or run backwards.
    #[error("{field}: slot {slot:?} {reason}")]
    SlotTimes {
        /// The field.
        field: String,
        /// The slot id.
        slot: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A merchant refers to a slot that does not exist.
    #[error("{field}: unknown slot {slot:?}")]
    UnknownSlot {
        /// The field.
        field: String,
        /// The slot id.
        slot: String,
    },
    /// The slot weights of a merchant do not add up to 100.
    #[error("{field}: weights add up to {sum}, must be 100")]
    WeightsSum {
        /// The field.
        field: String,
        /// Their sum.
        sum: u64,
    },
    /// `min_amount_fen` is above `max_amount_fen`.
    #[error("{field}: min {min_fen} fen is above max {max_fen} fen")]
    MinAboveMax {
        /// The field.
        field: String,
        /// The minimum.
        min_fen: u32,
        /// The maximum.
        max_fen: u32,
    },
    /// The budget is below `packets x min`: the packets cannot all get the minimum.
    #[error("{field}: budget {budget_fen} fen is below packets x min = {needed_fen} fen")]
    BudgetBelowMinimum {
        /// The field.
        field: String,
        /// The budget.
        budget_fen: u64,
        /// `packets * min_amount_fen`.
        needed_fen: u128,
    },
    /// The budget is above `packets x max`: it cannot all be handed out.
    #[error("{field}: budget {budget_fen} fen is above packets x max = {possible_fen} fen")]
    BudgetAboveMaximum {
        /// The field.
        field: String,
        /// The budget.
        budget_fen: u64,
        /// `packets * max_amount_fen`.
        possible_fen: u128,
    },
    /// The key coverage cap is too small for the largest packet (a key must hold at least two
    /// of the largest packets, or every packet would need its own key).
    #[error("{field}: cap {cap_fen} fen must be at least 2 x the largest packet ({max_fen} fen)")]
    CapTooSmall {
        /// The field.
        field: String,
        /// The cap.
        cap_fen: u64,
        /// The largest packet amount of any merchant.
        max_fen: u32,
    },
}

impl BudgetError {
    /// The budget field the error is about (`"toml"` for parse errors, `"file"` for I/O).
    pub fn field(&self) -> &str {
        match self {
            BudgetError::Io { .. } => "file",
            BudgetError::Parse(_) => "toml",
            BudgetError::Count { field, .. }
            | BudgetError::DuplicateId { field, .. }
            | BudgetError::BadValue { field, .. }
            | BudgetError::OutOfRange { field, .. }
            | BudgetError::SlotTimes { field, .. }
            | BudgetError::UnknownSlot { field, .. }
            | BudgetError::WeightsSum { field, .. }
            | BudgetError::MinAboveMax { field, .. }
            | BudgetError::BudgetBelowMinimum { field, .. }
            | BudgetError::BudgetAboveMaximum { field, .. }
            | BudgetError::CapTooSmall { field, .. } => field,
        }
    }
}

/// A parsed, validated budget plus the SHA-256 of its source text.
#[derive(Clone, Debug)]
pub struct LoadedBudget {
    /// The budget.
    pub budget: Budget,
    /// SHA-256 of the file bytes, hex.
    pub sha256_hex: String,
}

impl Budget {
    /// Reads and validates a budget file.
    pub fn load(path: &Path) -> Result<LoadedBudget, BudgetError> {
        let io = |source| BudgetError::Io { path: path.display().to_string(), source };
        let length = std::fs::metadata(path).map_err(io)?.len();
        if length > BUDGET_BYTES_MAX {
            return Err(BudgetError::OutOfRange { field: "file".into(), value: length, min: 0, max: BUDGET_BYTES_MAX });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| BudgetError::BadValue {
            field: "file".into(),
            value: path.display().to_string(),
            reason: "not UTF-8",
        })?;
        Self::parse_with_hash(&text)
    }

    /// Parses and validates budget text, also hashing it.
    pub fn parse_with_hash(text: &str) -> Result<LoadedBudget, BudgetError> {
        let budget = Self::parse(text)?;
        Ok(LoadedBudget { budget, sha256_hex: hex::encode(Sha256::digest(text.as_bytes())) })
    }

    /// Parses and validates budget text.
    pub fn parse(text: &str) -> Result<Budget, BudgetError> {
        let budget: Budget = toml::from_str(text)?;
        budget.validate()?;
        Ok(budget)
    }

    /// Checks every rule; see [`BudgetError`] for the list.
    pub fn validate(&self) -> Result<(), BudgetError> {
        let event = &self.event;
        if event.name.trim().is_empty() {
            return Err(BudgetError::BadValue {
                field: "event.name".into(),
                value: event.name.clone(),
                reason: "must not be empty",
            });
        }
        check_count("event.slots", event.slots.len(), 1, SLOTS_MAX)?;
        check_count("merchants", self.merchants.len(), 1, MERCHANTS_MAX)?;
        check_range("event.instant_credit_top_percent", u64::from(event.instant_credit_top_percent), 0, 100)?;
        let mut slot_ids = BTreeSet::new();
        let mut previous_end_minute = None;
        for (index, slot) in event.slots.iter().enumerate() {
            let field = format!("event.slots[{index}]");
            check_id(&format!("{field}.id"), &slot.id)?;
            if !slot_ids.insert(slot.id.as_str()) {
                return Err(BudgetError::DuplicateId { field: format!("{field}.id"), id: slot.id.clone() });
            }
            let start = parse_minute(&format!("{field}.start"), &slot.start)?;
            let end = parse_minute(&format!("{field}.end"), &slot.end)?;
            if end <= start {
                return Err(BudgetError::SlotTimes { field, slot: slot.id.clone(), reason: "ends before it starts" });
            }
            if previous_end_minute.is_some_and(|previous| start < previous) {
                return Err(BudgetError::SlotTimes {
                    field,
                    slot: slot.id.clone(),
                    reason: "starts before the previous slot ends",
                });
            }
            previous_end_minute = Some(end);
        }
        let mut merchant_ids = BTreeSet::new();
        let mut packets_total: u64 = 0;
        let mut max_amount_fen = 0;
        for (index, merchant) in self.merchants.iter().enumerate() {
            let field = format!("merchants[{index}]");
            check_id(&format!("{field}.id"), &merchant.id)?;
            if !merchant_ids.insert(merchant.id.as_str()) {
                return Err(BudgetError::DuplicateId { field: format!("{field}.id"), id: merchant.id.clone() });
            }
            check_range(&format!("{field}.packets"), merchant.packets, 1, PACKETS_MAX)?;
            check_range(
                &format!("{field}.min_amount_fen"),
                u64::from(merchant.min_amount_fen),
                1,
                u64::from(AMOUNT_FEN_MAX),
            )?;
            check_range(
                &format!("{field}.max_amount_fen"),
                u64::from(merchant.max_amount_fen),
                1,
                u64::from(AMOUNT_FEN_MAX),
            )?;
            if merchant.min_amount_fen > merchant.max_amount_fen {
                return Err(BudgetError::MinAboveMax {
                    field: format!("{field}.min_amount_fen"),
                    min_fen: merchant.min_amount_fen,
                    max_fen: merchant.max_amount_fen,
                });
            }
            let needed_fen = u128::from(merchant.packets) * u128::from(merchant.min_amount_fen);
            if u128::from(merchant.budget_fen) < needed_fen {
                return Err(BudgetError::BudgetBelowMinimum {
                    field: format!("{field}.budget_fen"),
                    budget_fen: merchant.budget_fen,
                    needed_fen,
                });
            }
            let possible_fen = u128::from(merchant.packets) * u128::from(merchant.max_amount_fen);
            if u128::from(merchant.budget_fen) > possible_fen {
                return Err(BudgetError::BudgetAboveMaximum {
                    field: format!("{field}.budget_fen"),
                    budget_fen: merchant.budget_fen,
                    possible_fen,
                });
            }
            if merchant.slot_weights.is_empty() {
                return Err(BudgetError::Count {
                    field: format!("{field}.slot_weights"),
                    count: 0,
                    min: 1,
                    max: event.slots.len(),
                });
            }
            let mut weight_sum: u64 = 0;
            for (slot, weight) in &merchant.slot_weights {
                if !slot_ids.contains(slot.as_str()) {
                    return Err(BudgetError::UnknownSlot {
                        field: format!("{field}.slot_weights.{slot}"),
                        slot: slot.clone(),
                    });
                }
                weight_sum += u64::from(*weight);
            }
            if weight_sum != 100 {
                return Err(BudgetError::WeightsSum { field: format!("{field}.slot_weights"), sum: weight_sum });
            }
            packets_total = packets_total.saturating_add(merchant.packets);
            max_amount_fen = max_amount_fen.max(merchant.max_amount_fen);
        }
        check_range("merchants[].packets (total)", packets_total, 1, PACKETS_MAX)?;
        if event.key_coverage_cap_fen < 2 * u64::from(max_amount_fen) {
            return Err(BudgetError::CapTooSmall {
                field: "event.key_coverage_cap_fen".into(),
                cap_fen: event.key_coverage_cap_fen,
                max_fen: max_amount_fen,
            });
        }
        if let Some(threshold) = event.instant_credit_threshold_fen {
            check_range("event.instant_credit_threshold_fen", u64::from(threshold), 1, u64::from(AMOUNT_FEN_MAX))?;
        }
        Ok(())
    }

    /// Index of a slot by id.
    pub fn slot_index(&self, slot_id: &str) -> Option<usize> {
        self.event.slots.iter().position(|slot| slot.id == slot_id)
    }
}

fn check_count(field: &str, count: usize, min: usize, max: usize) -> Result<(), BudgetError> {
    if count < min || count > max {
        return Err(BudgetError::Count { field: field.into(), count, min, max });
    }
    Ok(())
}

fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), BudgetError> {
    if value < min || value > max {
        return Err(BudgetError::OutOfRange { field: field.into(), value, min, max });
    }
    Ok(())
}

/// Ids appear in file names, reports and JSON: keep them short and plain.
fn check_id(field: &str, id: &str) -> Result<(), BudgetError> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if !plain {
        return Err(BudgetError::BadValue {
            field: field.into(),
            value: id.into(),
            reason: "ids are 1..=64 characters of [A-Za-z0-9._-]",
        });
    }
    Ok(())
}

/// Parses "HH:MM" into minutes after midnight; "24:00" is allowed as an end.
fn parse_minute(field: &str, text: &str) -> Result<u32, BudgetError> {
    let bad = || BudgetError::BadValue {
        field: field.into(),
        value: text.into(),
        reason: "expected HH:MM between 00:00 and 24:00",
    };
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u32 = hours.parse().map_err(|_| bad())?;
    let minutes: u32 = minutes.parse().map_err(|_| bad())?;
    if minutes >= 60 || hours > 24 || (hours == 24 && minutes != 0) {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}
