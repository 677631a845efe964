//! The `.hgrm` percentile distribution file, in HdrHistogram's standard text
//! layout (the one `outputPercentileDistribution` prints and HdrHistogram's
//! plotter reads): a header, one row per percentile step with the columns
//! Value, Percentile, TotalCount and 1/(1-Percentile), and a footer with mean,
//! standard deviation, max, total count, bucket and sub-bucket counts.
//!
//! Latencies are recorded in microseconds and written in milliseconds.

use hdrhistogram::Histogram;
use thiserror::Error;

/// Percentile steps per halving of the remaining distance to 100%.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Recorded unit (µs) per written unit (ms).
pub const VALUE_SCALE: f64 = 1000.0;

/// Renders `h` (values in µs) as `.hgrm` text with values in ms.
pub fn render(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    out.push_str(&format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)"));
    let mut total = 0u64;
    let mut wrote_last = false;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / VALUE_SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                out.push_str(&format!("{value:12.digits$} {q:2.12} {total:10} {:14.2}\n", 1.0 / (1.0 - q)));
            } else {
                out.push_str(&format!("{value:12.digits$} {q:2.12} {total:10}\n"));
                wrote_last = true;
                break;
            }
        }
        if !wrote_last {
            let value = h.max() as f64 / VALUE_SCALE;
            out.push_str(&format!("{value:12.digits$} {:2.12} {:10}\n", 1.0, h.len()));
        }
    }
    let mean = if h.is_empty() { 0.0 } else { h.mean() / VALUE_SCALE };
    let stddev = if h.is_empty() { 0.0 } else { h.stdev() / VALUE_SCALE };
    let max = h.max() as f64 / VALUE_SCALE;
    out.push_str(&format!("#[Mean    = {mean:12.digits$}, StdDeviation   = {stddev:12.digits$}]\n"));
    out.push_str(&format!("#[Max     = {max:12.digits$}, Total count    = {:12}]\n", h.len()));
    out.push_str(&format!("#[Buckets = {:12}, SubBuckets     = {:12}]\n", h.buckets(), sub_bucket_count(h.sigfig())));
    out
}

/// Sub-buckets per bucket for `sigfig` significant digits (2048 for 3).
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// One data row of a `.hgrm` file.
#[derive(Debug, Clone, PartialEq)]
pub struct HgrmRow {
    pub value: f64,
    pub percentile: f64,
    pub total_count: u64,
    /// Absent on the final (100%) row.
    pub inverse: Option<f64>,
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Hgrm {
    pub rows: Vec<HgrmRow>,
    pub mean: f64,
    pub stddev: f64,
    pub max: f64,
    pub total_count: u64,
    pub buckets: u64,
    pub sub_buckets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(".hgrm line {line}: {reason}")]
pub struct HgrmError {
    pub line: usize,
    pub reason: String,
}

fn footer_pair(line: &str, first: &str, second: &str) -> Option<(String, String)> {
    let inner = line.strip_prefix("#[")?.strip_suffix(']')?;
    let (a, b) = inner.split_once(',')?;
    let (ka, va) = a.split_once('=')?;
    let (kb, vb) = b.split_once('=')?;
    (ka.trim() == first && kb.trim() == second).then(|| (va.trim().to_owned(), vb.trim().to_owned()))
}

/// Parses `.hgrm` text strictly: the header, rows with the four columns (three
/// on the last), and the three footer lines.
pub fn parse(text: &str) -> Result<Hgrm, HgrmError> {
    let err = |line: usize, reason: &str| HgrmError { line: line + 1, reason: reason.to_owned() };
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines.first().map(|l| l.split_whitespace().collect()).unwrap_or_default();
    if header != ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"] {
        return Err(err(0, "header is not Value Percentile TotalCount 1/(1-Percentile)"));
    }
    if lines.get(1).is_none_or(|l| !l.trim().is_empty()) {
        return Err(err(1, "expected a blank line after the header"));
    }
    let mut rows = Vec::new();
    let mut i = 2;
    while i < lines.len() && !lines[i].starts_with("#[") {
        let cols: Vec<&str> = lines[i].split_whitespace().collect();
        let num = |s: &str| s.parse::<f64>().map_err(|_| err(i, "not a number"));
        let row = match cols.as_slice() {
            [v, p, c, inv] => HgrmRow {
                value: num(v)?,
                percentile: num(p)?,
                total_count: c.parse().map_err(|_| err(i, "count is not an integer"))?,
                inverse: Some(num(inv)?),
            },
            [v, p, c] => HgrmRow {
                value: num(v)?,
                percentile: num(p)?,
                total_count: c.parse().map_err(|_| err(i, "count is not an integer"))?,
                inverse: None,
            },
            _ => return Err(err(i, "expected 4 columns (3 on the last row)")),
        };
        rows.push(row);
        i += 1;
    }
    let f = |k: usize, a: &str, b: &str| {
        lines.get(i + k).and_then(|l| footer_pair(l, a, b)).ok_or_else(|| err(i + k, "footer line missing"))
    };
    let (mean, stddev) = f(0, "Mean", "StdDeviation")?;
    let (max, total) = f(1, "Max", "Total count")?;
    let (buckets, sub_buckets) = f(2, "Buckets", "SubBuckets")?;
    let pf = |s: String, k: usize| s.parse::<f64>().map_err(|_| err(i + k, "footer value is not a number"));
    let pu = |s: String, k: usize| s.parse::<u64>().map_err(|_| err(i + k, "footer value is not an integer"));
    Ok(Hgrm {
        rows,
        mean: pf(mean, 0)?,
        stddev: pf(stddev, 0)?,
        max: pf(max, 1)?,
        total_count: pu(total, 1)?,
        buckets: pu(buckets, 2)?,
        sub_buckets: pu(sub_buckets, 2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        h.record(1_000_000).unwrap();
        h
    }

    #[test]
    fn rendered_file_has_the_standard_columns_and_footer() {
        let h = sample();
        let text = render(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{text}");
        let parsed = parse(&text).unwrap();
        let last = parsed.rows.last().unwrap();
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.inverse, None);
        assert_eq!(last.total_count, 10_001);
        assert!(parsed.rows[..parsed.rows.len() - 1].iter().all(|r| r.inverse.is_some()));
        for w in parsed.rows.windows(2) {
            assert!(w[0].value <= w[1].value && w[0].percentile <= w[1].percentile);
            assert!(w[0].total_count <= w[1].total_count);
        }
        assert_eq!(parsed.total_count, 10_001);
        assert_eq!(parsed.max, h.max() as f64 / 1000.0);
        assert!((parsed.max - 1000.0).abs() < 1.0, "1,000,000 us written as ~1000 ms (3 digits)");
        assert_eq!(parsed.sub_buckets, 2048);
        assert_eq!(parsed.buckets, u64::from(h.buckets()));
        assert!((parsed.mean - h.mean() / 1000.0).abs() < 0.001);
        // The 50% row carries the histogram's median.
        let median = parsed.rows.iter().find(|r| r.percentile >= 0.5).unwrap();
        assert!((median.value - h.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.001);
        // Rows follow the format's fixed widths.
        let row = text.lines().nth(2).unwrap();
        assert_eq!(row.len(), 12 + 1 + 14 + 1 + 10 + 1 + 14, "{row:?}");
    }

    #[test]
    fn empty_histogram_still_renders_a_parsable_file() {
        let parsed = parse(&render(&new_latency_histogram())).unwrap();
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.total_count, 0);
    }

    #[test]
    fn damaged_files_are_rejected_with_a_line_number() {
        let text = render(&sample());
        assert_eq!(parse("nonsense").unwrap_err().line, 1);
        let no_footer: String =
            text.lines().filter(|l| !l.starts_with("#[Buckets")).map(|l| format!("{l}\n")).collect();
        assert!(parse(&no_footer).is_err());
        let bad_row = text.replacen("0.010", "x.010", 1);
        assert!(parse(&bad_row).is_err());
    }
}
