//! Reading the Prometheus text exposition the admin endpoint serves: one
//! parser for the load generator's scrapes and the tests that check metrics.
//!
//! Only what those readers need: `name{labels} value` sample lines, comments
//! and blank lines skipped, a line that does not parse skipped rather than
//! failing the whole page (a scrape must not break on one odd line).

/// One sample line: the metric name, the text between the braces (empty when
/// the sample has no labels) and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

impl Sample<'_> {
    /// Whether the label text contains `needle` (e.g. `reason="io_error"`).
    pub fn has_label(&self, needle: &str) -> bool {
        self.labels.contains(needle)
    }
}

/// Every readable sample of a page, in page order.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

/// Sum of `name`'s samples whose labels contain every one of `needles`.
pub fn sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    samples(text).filter(|s| s.name == name && needles.iter().all(|n| s.has_label(n))).map(|s| s.value).sum()
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    let (labels, rest) = match line[name_end..].strip_prefix('{') {
        Some(r) => {
            let close = r.rfind('}')?;
            (&r[..close], &r[close + 1..])
        }
        None => ("", &line[name_end..]),
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    (!name.is_empty() && value.is_finite()).then_some(Sample { name, labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP redrain_x Things.\n# TYPE redrain_x counter\n\
        redrain_x{core=\"0\",reason=\"io_error\"} 2\n\
        redrain_x{core=\"1\",reason=\"io_error\"} 3\n\
        redrain_x{core=\"1\",reason=\"tls_error\"} 5\n\
        redrain_y 1.5\n\
        redrain_y_total 7\n\
        broken{core=\"0\" 9\n\
        redrain_z{a=\"b\"} NaN\n\n";

    #[test]
    fn sums_a_family_over_the_label_sets_that_contain_every_needle() {
        assert_eq!(sum(PAGE, "redrain_x", &[]), 10.0);
        assert_eq!(sum(PAGE, "redrain_x", &["reason=\"io_error\""]), 5.0);
        assert_eq!(sum(PAGE, "redrain_x", &["reason=\"io_error\"", "core=\"1\""]), 3.0);
        assert_eq!(sum(PAGE, "redrain_y", &[]), 1.5, "a name is matched whole, not as a prefix");
        assert_eq!(sum(PAGE, "redrain_absent", &[]), 0.0);
    }

    #[test]
    fn comments_unclosed_labels_and_non_finite_values_are_skipped() {
        let names: Vec<_> = samples(PAGE).map(|s| s.name).collect();
        assert_eq!(names, ["redrain_x", "redrain_x", "redrain_x", "redrain_y", "redrain_y_total"]);
    }
}
