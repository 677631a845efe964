//! Start-up scan of segment bytes (sans-IO): find the valid batches, and tell
//! a torn tail (truncate it) from damage before the tail (report it).
//!
//! The rule: the log is written strictly in order, one write (a group
//! commit of one or more batches) at a time, each started only once the one
//! before it completed, so after a process crash only the end of the *last*
//! write of the *last* segment can be missing: whole batches, then at most
//! one incomplete one. Damage is therefore a torn tail only if no valid batch
//! follows it in the same segment and no later segment exists; anything else
//! is corruption that must not be skipped. (A power loss can persist a
//! write's blocks out of order; see docs/storage.md, "Known gaps".)
//! A bit flip inside the very last batch is indistinguishable from a torn
//! write and is truncated too (its copies on the peers restore it).

use crate::error::DamageKind;
use crate::record::{decode_batch, BatchDecode, BATCH_MAGIC};
use crate::Lsn;

/// Where a valid batch sits in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLocation {
    /// LSN of the batch's first record.
    pub first_lsn: Lsn,
    /// LSN of its last record.
    pub last_lsn: Lsn,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Encoded length.
    pub len: u64,
}

/// The first problem found in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset where the first bad batch starts.
    pub offset: u64,
    /// What was wrong with it.
    pub kind: DamageKind,
    /// True when a complete valid batch exists somewhere after `offset`:
    /// the damage is then in the middle of the segment, not a torn tail.
    pub valid_batch_after: bool,
}

/// Result of scanning one segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentScan {
    /// Valid batches, in order, with contiguous LSNs.
    pub batches: Vec<BatchLocation>,
    /// Bytes of valid prefix (where a torn tail would be cut).
    pub valid_len: u64,
    /// The first problem, if any.
    pub damage: Option<Damage>,
}

impl SegmentScan {
    /// LSN of the last valid record, if any.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.batches.last().map(|b| b.last_lsn)
    }
}

/// Scans `bytes` (one whole segment). `expected_first_lsn`, when known, is the
/// LSN the first batch must carry; batches after it must continue it.
pub fn scan_segment(bytes: &[u8], expected_first_lsn: Option<Lsn>) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut offset = 0usize;
    let mut expected = expected_first_lsn;
    while offset < bytes.len() {
        match decode_batch(&bytes[offset..]) {
            BatchDecode::Complete(batch) => {
                if let Some(want) = expected {
                    if batch.first_lsn != want {
                        scan.damage = Some(Damage {
                            offset: offset as u64,
                            kind: DamageKind::LsnDiscontinuity,
                            valid_batch_after: true,
                        });
                        return scan;
                    }
                }
                let len = batch.bytes.len();
                scan.batches.push(BatchLocation {
                    first_lsn: batch.first_lsn,
                    last_lsn: batch.last_lsn(),
                    offset: offset as u64,
                    len: len as u64,
                });
                expected = Some(batch.last_lsn() + 1);
                offset += len;
                scan.valid_len = offset as u64;
            }
            BatchDecode::Padding(len) => {
                offset += len;
                scan.valid_len = offset as u64;
            }
            BatchDecode::Incomplete => {
                scan.damage = Some(Damage {
                    offset: offset as u64,
                    kind: DamageKind::Truncated,
                    // A damaged length field also looks like "the file ends
                    // inside this batch": only a torn tail if nothing valid
                    // follows.
                    valid_batch_after: valid_batch_after(bytes, offset + 1),
                });
                return scan;
            }
            BatchDecode::Damaged(kind) => {
                scan.damage = Some(Damage {
                    offset: offset as u64,
                    kind,
                    valid_batch_after: valid_batch_after(bytes, offset + 1),
                });
                return scan;
            }
        }
    }
    scan
}

/// True when a complete, verified batch starts anywhere at or after `from`.
/// Only runs on damage, so a byte-by-byte search for the magic is acceptable.
fn valid_batch_after(bytes: &[u8], from: usize) -> bool {
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut at = from;
    while at + magic.len() <= bytes.len() {
        if bytes[at..at + 4] == magic {
            if let BatchDecode::Complete(_) = decode_batch(&bytes[at..]) {
                return true;
            }
        }
        at += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BatchBuilder;

    fn segment(batches: &[(Lsn, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(first, count) in batches {
            let mut b = BatchBuilder::new(first);
            for i in 0..count {
                b.push(1, format!("payload-{first}-{i}").as_bytes());
            }
            b.finish();
            out.extend_from_slice(&b.take());
        }
        out
    }

    #[test]
    fn clean_segment_has_no_damage() {
        let bytes = segment(&[(1, 3), (4, 2)]);
        let scan = scan_segment(&bytes, Some(1));
        assert!(scan.damage.is_none());
        assert_eq!(scan.last_lsn(), Some(5));
        assert_eq!(scan.valid_len, bytes.len() as u64);
    }

    #[test]
    fn damage_in_the_middle_is_not_a_torn_tail() {
        let mut bytes = segment(&[(1, 3), (4, 2), (6, 2)]);
        let second = scan_segment(&bytes, Some(1)).batches[1].offset as usize;
        bytes[second + 30] ^= 0x40;
        let scan = scan_segment(&bytes, Some(1));
        let damage = scan.damage.expect("damage found");
        assert_eq!(damage.offset, second as u64);
        assert!(damage.valid_batch_after);
        assert_eq!(scan.last_lsn(), Some(3));
    }

    #[test]
    fn lsn_gap_between_batches_is_damage() {
        let bytes = segment(&[(1, 3), (5, 2)]);
        let scan = scan_segment(&bytes, Some(1));
        assert_eq!(scan.damage.unwrap().kind, DamageKind::LsnDiscontinuity);
    }
}
