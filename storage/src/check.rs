//! Offline full-scan check of a log directory (and a table's snapshots):
//! reads every byte, verifies every batch and record CRC and the LSN chain,
//! and says exactly what it found. Used by `redrain replica check` and by
//! tests; it never modifies anything.

use std::path::{Path, PathBuf};

use crate::error::{DamageKind, StorageError};
use crate::recovery::scan_segment;
use crate::{Lsn, Result};

/// One problem found by the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the problem.
    pub offset: u64,
    /// What is wrong.
    pub kind: DamageKind,
    /// True when this is a torn tail (the last batch of the last segment),
    /// which open truncates; false for damage that open refuses.
    pub torn_tail: bool,
}

/// What a full scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Valid batches.
    pub batches: u64,
    /// Valid records.
    pub records: u64,
    /// Bytes scanned.
    pub bytes: u64,
    /// First LSN present.
    pub first_lsn: Option<Lsn>,
    /// Last valid LSN.
    pub last_lsn: Option<Lsn>,
    /// Snapshot files that verified.
    pub snapshots_valid: usize,
    /// Problems, in file order.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// True when nothing but (at most) a torn tail was found.
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|f| f.torn_tail)
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} segments, {} batches, {} records, {} bytes, LSN {:?}..={:?}, {} valid snapshots",
            self.segments, self.batches, self.records, self.bytes, self.first_lsn, self.last_lsn, self.snapshots_valid
        )?;
        if self.findings.is_empty() {
            writeln!(f, "no damage found")?;
        }
        for finding in &self.findings {
            writeln!(
                f,
                "{}: {} at {} offset {}",
                if finding.torn_tail { "torn tail" } else { "DAMAGE" },
                finding.kind,
                finding.file.display(),
                finding.offset
            )?;
        }
        Ok(())
    }
}

/// Scans every segment in `dir` (a log directory).
pub fn check_log_dir(dir: &Path) -> Result<CheckReport> {
    let mut files: Vec<(Lsn, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| StorageError::io("list log directory", &e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let lsn = name.strip_suffix(".seg")?.parse().ok()?;
            Some((lsn, e.path()))
        })
        .collect();
    files.sort();
    let mut report = CheckReport { segments: files.len(), ..CheckReport::default() };
    let mut expected: Option<Lsn> = None;
    for (index, (first_lsn, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| StorageError::io("read segment", &e))?;
        report.bytes += bytes.len() as u64;
        let want = expected.unwrap_or(*first_lsn);
        if want != *first_lsn {
            report.findings.push(Finding {
                file: path.clone(),
                offset: 0,
                kind: DamageKind::LsnDiscontinuity,
                torn_tail: false,
            });
        }
        let scan = scan_segment(&bytes, Some(*first_lsn));
        for batch in &scan.batches {
            report.batches += 1;
            report.records += batch.last_lsn - batch.first_lsn + 1;
        }
        if report.first_lsn.is_none() {
            report.first_lsn = scan.batches.first().map(|b| b.first_lsn);
        }
        if let Some(last) = scan.last_lsn() {
            report.last_lsn = Some(last);
            expected = Some(last + 1);
        } else {
            expected = Some(*first_lsn);
        }
        if let Some(damage) = scan.damage {
            report.findings.push(Finding {
                file: path.clone(),
                offset: damage.offset,
                kind: damage.kind,
                torn_tail: index + 1 == files.len() && !damage.valid_batch_after,
            });
        }
    }
    Ok(report)
}
