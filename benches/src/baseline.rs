//! Ratios of an end-to-end run and the regression check against the committed
//! baseline (`benches/baseline.json`).
//!
//! Only ratios measured within one run are compared (node throughput over the
//! reference server's on the same core, p99 at 50% of max over p99 at 10%), and
//! only a large regression fails: a ratio worse than the baseline by more than
//! `max_regression_factor` (2x by default). Absolute numbers are never checked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const BASELINE_SCHEMA: &str = "redrain-benches-baseline/1";
pub const DEFAULT_MAX_REGRESSION_FACTOR: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRatio {
    pub value: f64,
    pub better: Better,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub schema: String,
    /// How, where and when the baseline was measured.
    pub measured: String,
    pub max_regression_factor: f64,
    pub ratios: BTreeMap<String, BaselineRatio>,
}

impl Baseline {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let b: Baseline = serde_json::from_str(&text)?;
        anyhow::ensure!(b.schema == BASELINE_SCHEMA, "{}: schema {:?}", path.display(), b.schema);
        anyhow::ensure!(b.max_regression_factor >= 1.0, "max_regression_factor must be >= 1");
        Ok(b)
    }
}

/// The outcome for one ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub baseline: f64,
    pub current: Option<f64>,
    /// How many times worse than the baseline (1.0 = equal, < 1 = better).
    pub worse_by: Option<f64>,
    pub regressed: bool,
}

/// Compares `current` ratios with `baseline`; a ratio missing from the run counts as regressed.
pub fn check(baseline: &Baseline, current: &BTreeMap<String, f64>) -> Vec<Verdict> {
    baseline
        .ratios
        .iter()
        .map(|(name, b)| {
            let cur = current.get(name).copied().filter(|v| v.is_finite() && *v > 0.0);
            let worse_by = cur.map(|c| match b.better {
                Better::Higher => b.value / c,
                Better::Lower => c / b.value,
            });
            Verdict {
                name: name.clone(),
                baseline: b.value,
                current: cur,
                worse_by,
                regressed: worse_by.is_none_or(|w| w > baseline.max_regression_factor),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        let mut ratios = BTreeMap::new();
        ratios.insert("tput".into(), BaselineRatio { value: 0.5, better: Better::Higher, description: String::new() });
        ratios.insert("p99".into(), BaselineRatio { value: 2.0, better: Better::Lower, description: String::new() });
        Baseline { schema: BASELINE_SCHEMA.into(), measured: String::new(), max_regression_factor: 2.0, ratios }
    }

    #[test]
    fn only_a_regression_beyond_the_factor_fails() {
        let b = baseline();
        let run = |t: f64, p: f64| {
            let cur: BTreeMap<String, f64> = [("tput".to_string(), t), ("p99".to_string(), p)].into();
            check(&b, &cur).iter().map(|v| v.regressed).collect::<Vec<_>>()
        };
        // BTreeMap order: p99, tput.
        assert_eq!(run(0.5, 2.0), vec![false, false]);
        assert_eq!(run(0.3, 3.9), vec![false, false], "noisy but within 2x");
        assert_eq!(run(0.2, 2.0), vec![false, true], "throughput ratio fell below half");
        assert_eq!(run(0.5, 4.5), vec![true, false], "latency ratio more than doubled");
        assert_eq!(run(5.0, 0.1), vec![false, false], "improvements never fail");
    }

    #[test]
    fn a_missing_or_nonsense_ratio_fails() {
        let b = baseline();
        let cur: BTreeMap<String, f64> = [("tput".to_string(), f64::NAN)].into();
        assert!(check(&b, &cur).iter().all(|v| v.regressed));
    }

    #[test]
    fn the_committed_baseline_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline.json");
        let b = Baseline::load(&path).unwrap();
        assert!(!b.ratios.is_empty());
    }
}
