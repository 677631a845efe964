//! Lucky packet shares as the payment hand-off reads them from a core's timeline log: the
//! line they become, and the memory of shares already read, so a share recorded twice (a
//! retry after a failed but durable append, same amount) is handed over once - also when
//! retention deleted the first record (the checkpoint that covered it is read instead).

use crate::tickets::reconcile::{OpenedKind, OpenedRecord};
use crate::timeline::checkpoint::{LuckyCheckpoint, KIND_CP_LUCKY};
use crate::timeline::records::{LuckyOpened, KIND_LUCKY_OPENED};
use std::collections::{HashSet, VecDeque};

/// One durable share of a lucky packet, with where it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuckyShare {
    pub packet_id: u64,
    pub group: u64,
    pub user: u64,
    pub amount_fen: u32,
    pub opened_at_ms: u64,
    pub node: u16,
    pub core: u16,
}

impl LuckyShare {
    pub fn new(record: LuckyOpened, node: u16, core: u16) -> Self {
        Self {
            packet_id: record.packet_id,
            group: record.group,
            user: record.user,
            amount_fen: record.amount_fen,
            opened_at_ms: record.opened_at_ms,
            node,
            core,
        }
    }

    /// The hand-off line: `"kind":"lucky"`, the group, no ticket key (`key_id` 0).
    pub fn to_opened(&self) -> OpenedRecord {
        OpenedRecord {
            packet_id: self.packet_id,
            amount_fen: self.amount_fen,
            key_id: 0,
            user_id: self.user,
            node: self.node,
            core: self.core,
            opened_at_ms: self.opened_at_ms,
            kind: OpenedKind::Lucky,
            group_id: Some(self.group),
        }
    }
}

/// The (packet, user) pairs of the shares a consumer has read, bounded.
#[derive(Debug)]
pub struct SharesSeen {
    seen: HashSet<(u64, u64)>,
    /// The same pairs, oldest first (what is forgotten first).
    order: VecDeque<(u64, u64)>,
    capacity_max: usize,
}

/// Why a record of the timeline log was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareSkip {
    #[error("not a lucky share")]
    NotAShare,
    #[error("lucky share record of {0} bytes cannot be read")]
    Damaged(usize),
    #[error("share of user {user} in packet {packet} was handed over before")]
    Repeat { packet: u64, user: u64 },
}

impl SharesSeen {
    /// Remembers the latest `capacity_max` shares; beyond it the oldest is forgotten (a
    /// repeat is written when the user retries after a failed open, soon after the first).
    pub fn new(capacity_max: usize) -> Self {
        Self { seen: HashSet::new(), order: VecDeque::new(), capacity_max: capacity_max.max(1) }
    }

    /// The share of a timeline record, if it is a lucky share not seen before.
    pub fn admit(&mut self, kind: u8, payload: &[u8], node: u16, core: u16) -> Result<LuckyShare, ShareSkip> {
        if kind != KIND_LUCKY_OPENED {
            return Err(ShareSkip::NotAShare);
        }
        let record = LuckyOpened::decode(payload).ok_or(ShareSkip::Damaged(payload.len()))?;
        if !self.remember((record.packet_id, record.user)) {
            return Err(ShareSkip::Repeat { packet: record.packet_id, user: record.user });
        }
        Ok(LuckyShare::new(record, node, core))
    }

    /// Remembers the shares a checkpoint record (`KIND_CP_LUCKY`) carries, read at start
    /// at or below the consumer's position: the records of those shares came before the
    /// checkpoint, so the consumer handed them over, even if retention has deleted them
    /// since. A share recorded again later is then still recognised. Other records and
    /// damaged ones are ignored (recovery reports them).
    pub fn remember_checkpoint(&mut self, kind: u8, payload: &[u8]) {
        if kind != KIND_CP_LUCKY {
            return;
        }
        let Some(cp) = LuckyCheckpoint::decode(payload) else { return };
        for (user, _) in cp.opened {
            self.remember((cp.packet_id, user));
        }
    }

    fn remember(&mut self, key: (u64, u64)) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity_max {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.seen.remove(&oldest);
        }
        debug_assert_eq!(self.seen.len(), self.order.len());
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(packet_id: u64, user: u64, amount_fen: u32) -> Vec<u8> {
        LuckyOpened { packet_id, user, amount_fen, group: 9, opened_at_ms: 7 }.encode()
    }

    #[test]
    fn a_share_recorded_twice_is_admitted_once_and_other_records_are_skipped() {
        let mut seen = SharesSeen::new(100);
        let share = seen.admit(KIND_LUCKY_OPENED, &record(1, 2, 300), 4, 1).unwrap();
        assert_eq!(share.to_opened().kind, OpenedKind::Lucky);
        assert_eq!(share.to_opened().group_id, Some(9));
        assert_eq!((share.amount_fen, share.node, share.core), (300, 4, 1));
        assert_eq!(
            seen.admit(KIND_LUCKY_OPENED, &record(1, 2, 300), 4, 1),
            Err(ShareSkip::Repeat { packet: 1, user: 2 })
        );
        assert!(seen.admit(KIND_LUCKY_OPENED, &record(1, 3, 300), 4, 1).is_ok(), "another member's share");
        assert_eq!(seen.admit(0x30, &record(5, 5, 5), 4, 1), Err(ShareSkip::NotAShare));
        assert_eq!(seen.admit(KIND_LUCKY_OPENED, &[0; 7], 4, 1), Err(ShareSkip::Damaged(7)));
    }

    #[test]
    fn a_share_in_a_checkpoint_before_the_position_is_not_handed_over_again() {
        let mut seen = SharesSeen::new(100);
        let cp = LuckyCheckpoint { packet_id: 1, group: 9, total_fen: 500, count: 3, opened: vec![(2, 300), (3, 100)] };
        seen.remember_checkpoint(KIND_CP_LUCKY, &cp.encode());
        seen.remember_checkpoint(KIND_CP_LUCKY, &[0; 5]);
        seen.remember_checkpoint(KIND_LUCKY_OPENED, &cp.encode());
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen.admit(KIND_LUCKY_OPENED, &record(1, 2, 300), 4, 1),
            Err(ShareSkip::Repeat { packet: 1, user: 2 }),
            "recorded again after its first record was deleted"
        );
        assert!(seen.admit(KIND_LUCKY_OPENED, &record(1, 4, 100), 4, 1).is_ok(), "a share the checkpoint did not hold");
    }

    #[test]
    fn the_memory_of_shares_stays_within_its_bound() {
        let mut seen = SharesSeen::new(10);
        for user in 0..100 {
            seen.admit(KIND_LUCKY_OPENED, &record(1, user, 1), 0, 0).unwrap();
            assert!(seen.len() <= 10);
        }
    }

    #[test]
    fn the_lucky_line_reads_back_and_an_old_event_line_reads_as_an_event() {
        let share = LuckyShare { packet_id: 1, group: 2, user: 3, amount_fen: 4, opened_at_ms: 5, node: 6, core: 7 };
        let line = serde_json::to_string(&share.to_opened()).unwrap();
        assert!(line.contains(r#""kind":"lucky""#) && line.contains(r#""group_id":2"#), "{line}");
        assert_eq!(serde_json::from_str::<OpenedRecord>(&line).unwrap(), share.to_opened());
        let old = r#"{"packet_id":1,"amount_fen":2,"key_id":3,"user_id":4,"node":0,"core":1,"opened_at_ms":5}"#;
        let event: OpenedRecord = serde_json::from_str(old).unwrap();
        assert_eq!((event.kind, event.group_id), (OpenedKind::Event, None));
        assert_eq!(serde_json::to_string(&event).unwrap(), old, "event lines are written as before");
    }
}
