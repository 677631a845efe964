//! Parsers for the text formats of the `/proc` and `/sys` files that `tune check` reads.
//!
//! Every parser takes the file's text and returns a typed value or a [`ParseError`]; none of
//! them panics or allocates in proportion to anything but its input, because host files
//! are input we do not control (a container may fake them, an old kernel may format them
//! differently).

use thiserror::Error;

/// Why a host file's text could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The text was not the unsigned integer the file should hold.
    #[error("expected an unsigned integer, found {found:?}")]
    NotAnInteger {
        /// The offending token (truncated to a bounded length).
        found: String,
    },
    /// The file held a different number of fields than its format has.
    #[error("expected {expected} fields, found {found}")]
    FieldCount {
        /// How many whitespace-separated fields the format has.
        expected: usize,
        /// How many the text held.
        found: usize,
    },
    /// A CPU list (`0-3,8`) had a malformed element.
    #[error("malformed CPU list element {element:?}")]
    CpuList {
        /// The offending element (truncated).
        element: String,
    },
    /// A CPU list named more CPUs than any real machine has.
    #[error("CPU list names CPU {cpu}, above the limit of {limit}")]
    CpuListTooLarge {
        /// The CPU number found.
        cpu: u32,
        /// [`CPU_INDEX_LIMIT`].
        limit: u32,
    },
    /// A bracketed-choice file (`always [madvise] never`) had no bracketed choice.
    #[error("no [selected] choice in {text:?}")]
    NoSelectedChoice {
        /// The text (truncated).
        text: String,
    },
    /// `/proc/<pid>/limits` had no line for the wanted limit.
    #[error("no {name:?} line")]
    LimitMissing {
        /// The limit's label, e.g. `Max open files`.
        name: &'static str,
    },
    /// A `key: value` file had no line for the wanted key.
    #[error("no {key:?} line")]
    KeyMissing {
        /// The key, e.g. `MemTotal`.
        key: &'static str,
    },
}

/// CPU numbers at or above this are rejected: Linux's `NR_CPUS` tops out at 8192, and the
/// bound keeps a hostile `0-4294967295` from expanding into billions of entries.
pub const CPU_INDEX_LIMIT: u32 = 8192;

/// Longest excerpt of bad input quoted back in an error, so errors stay small.
const ERROR_EXCERPT_CHARS_MAX: usize = 64;

fn excerpt(text: &str) -> String {
    text.chars().take(ERROR_EXCERPT_CHARS_MAX).collect()
}

/// Parses a single unsigned integer such as `/proc/sys/fs/nr_open` (`1048576\n`).
pub fn parse_u64(text: &str) -> Result<u64, ParseError> {
    let token = text.trim();
    token.parse::<u64>().map_err(|_| ParseError::NotAnInteger { found: excerpt(token) })
}

/// Parses a signed integer such as `/proc/sys/kernel/io_uring_group` (`-1` means "no group").
pub fn parse_i64(text: &str) -> Result<i64, ParseError> {
    let token = text.trim();
    token.parse::<i64>().map_err(|_| ParseError::NotAnInteger { found: excerpt(token) })
}

/// Parses exactly `N` whitespace-separated unsigned integers, the format of `tcp_mem`,
/// `tcp_rmem`, `tcp_wmem` (three, tab-separated) and `ip_local_port_range` (two).
pub fn parse_fields<const N: usize>(text: &str) -> Result<[u64; N], ParseError> {
    let mut values = [0u64; N];
    let mut found = 0usize;
    for token in text.split_whitespace() {
        if found < N {
            values[found] = parse_u64(token)?;
        }
        found += 1;
    }
    if found != N {
        return Err(ParseError::FieldCount { expected: N, found });
    }
    Ok(values)
}

/// A `tcp_mem`/`tcp_rmem`/`tcp_wmem` triple: (min, default or pressure, max).
pub fn parse_triple(text: &str) -> Result<[u64; 3], ParseError> {
    parse_fields::<3>(text)
}

/// `net.ipv4.ip_local_port_range`: the inclusive (first, last) ephemeral port.
pub fn parse_port_range(text: &str) -> Result<(u64, u64), ParseError> {
    let [first, last] = parse_fields::<2>(text)?;
    Ok((first, last))
}

/// Number of ports in an inclusive range; zero when the range is inverted.
pub fn port_range_size(first_port: u64, last_port: u64) -> u64 {
    if last_port < first_port {
        0
    } else {
        last_port - first_port + 1
    }
}

/// Parses a kernel CPU list (`0-3,8,10-11`, possibly empty) as used by
/// `/sys/devices/system/cpu/isolated`, `nohz_full`, `/proc/irq/N/smp_affinity_list` and
/// `Cpus_allowed_list`. Returns the CPUs sorted and de-duplicated.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, ParseError> {
    let trimmed = text.trim();
    // `(null)` is what some kernels print for an empty nohz_full mask.
    if trimmed.is_empty() || trimmed == "(null)" {
        return Ok(Vec::new());
    }
    // A set of bounded size: repeated or overlapping ranges (`0-8191,0-8191,...`) cost
    // nothing extra, so no input can make this allocate more than CPU_INDEX_LIMIT flags.
    let mut present = vec![false; CPU_INDEX_LIMIT as usize];
    for element in trimmed.split(',') {
        let element = element.trim();
        let bad = || ParseError::CpuList { element: excerpt(element) };
        // Ranges may carry a stride suffix (`0-7:2/4`) on some kernels; we do not need it
        // and refuse it rather than guess.
        let (first, last) = match element.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().map_err(|_| bad())?, b.parse::<u32>().map_err(|_| bad())?),
            None => {
                let cpu = element.parse::<u32>().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(bad());
        }
        if last >= CPU_INDEX_LIMIT {
            return Err(ParseError::CpuListTooLarge { cpu: last, limit: CPU_INDEX_LIMIT });
        }
        for cpu in first..=last {
            present[cpu as usize] = true;
        }
    }
    Ok((0..CPU_INDEX_LIMIT).filter(|&cpu| present[cpu as usize]).collect())
}

/// Formats CPUs back into the kernel's compact list form (`0-3,8`); `none` when empty.
pub fn format_cpu_list(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        return "none".to_string();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut start = cpus[0];
    let mut prev = cpus[0];
    for &cpu in &cpus[1..] {
        if prev.checked_add(1) == Some(cpu) {
            prev = cpu;
            continue;
        }
        parts.push(range_text(start, prev));
        start = cpu;
        prev = cpu;
    }
    parts.push(range_text(start, prev));
    parts.join(",")
}

fn range_text(first: u32, last: u32) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Parses a sysfs choice file such as `/sys/kernel/mm/transparent_hugepage/enabled`
/// (`always [madvise] never`) and returns the bracketed, selected choice.
pub fn parse_selected_choice(text: &str) -> Result<String, ParseError> {
    for token in text.split_whitespace() {
        if let Some(inner) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return Ok(inner.to_string());
        }
    }
    Err(ParseError::NoSelectedChoice { text: excerpt(text.trim()) })
}

/// A resource limit value: a number or `unlimited` (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitValue {
    /// A finite limit.
    Finite(u64),
    /// No limit.
    Unlimited,
}

impl LimitValue {
    /// Whether this limit allows at least `needed`.
    pub fn at_least(self, needed: u64) -> bool {
        match self {
            LimitValue::Finite(value) => value >= needed,
            LimitValue::Unlimited => true,
        }
    }
}

impl std::fmt::Display for LimitValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitValue::Finite(value) => write!(f, "{value}"),
            LimitValue::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// Soft and hard values of one resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SoftHard {
    /// The limit the kernel enforces now; a process may raise it up to `hard`.
    pub soft: LimitValue,
    /// The ceiling for `soft`; only privileged processes may raise it.
    pub hard: LimitValue,
}

fn parse_limit_value(token: &str) -> Result<LimitValue, ParseError> {
    if token == "unlimited" {
        Ok(LimitValue::Unlimited)
    } else {
        parse_u64(token).map(LimitValue::Finite)
    }
}

/// Label of the `RLIMIT_NOFILE` line in `/proc/<pid>/limits`.
pub const LIMIT_LABEL_NOFILE: &str = "Max open files";
/// Label of the `RLIMIT_MEMLOCK` line in `/proc/<pid>/limits`.
pub const LIMIT_LABEL_MEMLOCK: &str = "Max locked memory";

/// Finds one limit in `/proc/<pid>/limits`, whose lines look like
/// `Max open files            20000                20000                files`.
/// The label has spaces in it, so the line is matched by its label prefix and the two
/// fields after it are taken as soft and hard.
pub fn parse_proc_limits(text: &str, label: &'static str) -> Result<SoftHard, ParseError> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(label) else {
            continue;
        };
        // Guard against a label that is a prefix of a longer one.
        if !rest.starts_with(' ') {
            continue;
        }
        let mut fields = rest.split_whitespace();
        let (Some(soft), Some(hard)) = (fields.next(), fields.next()) else {
            return Err(ParseError::FieldCount { expected: 2, found: rest.split_whitespace().count() });
        };
        return Ok(SoftHard { soft: parse_limit_value(soft)?, hard: parse_limit_value(hard)? });
    }
    Err(ParseError::LimitMissing { name: label })
}

/// Finds `key:` in a `key: value [unit]` file such as `/proc/meminfo` or
/// `/proc/<pid>/status` and returns the value text after the colon, trimmed.
pub fn find_key_value<'a>(text: &'a str, key: &'static str) -> Result<&'a str, ParseError> {
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim() == key {
                return Ok(value.trim());
            }
        }
    }
    Err(ParseError::KeyMissing { key })
}

/// `MemTotal` from `/proc/meminfo`, in bytes (the file counts kB, meaning KiB).
pub fn parse_mem_total_bytes(meminfo: &str) -> Result<u64, ParseError> {
    let value = find_key_value(meminfo, "MemTotal")?;
    let kib = parse_u64(value.trim_end_matches("kB"))?;
    Ok(kib.saturating_mul(1024))
}

/// One device interrupt line of `/proc/interrupts`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InterruptLine {
    /// The IRQ number, which names `/proc/irq/<irq>/`.
    pub irq: u32,
    /// The handler name(s), the last column, e.g. `virtio2-input.0` or `eth0-TxRx-3`.
    pub name: String,
}

/// Longest `/proc/interrupts` we look at; a real one is a few hundred KiB on the largest
/// machines, so anything beyond is not a real file and is ignored.
pub const INTERRUPTS_LINES_MAX: usize = 65_536;

/// Parses the numbered device lines of `/proc/interrupts`.
///
/// Format: a header of CPU names, then lines `IRQ: count count ... chip hwirq-type name`.
/// The per-CPU counts are as many as header columns; the handler name is what is left
/// after them and the chip/type columns, whose widths vary by architecture. We therefore
/// take the *last* whitespace-separated token as the name: drivers name queue IRQs
/// without spaces (`eth0-TxRx-0`, `mlx5_comp3@pci:0000:3b:00.0`, `virtio2-input.0`).
/// Named lines (`NMI:`, `LOC:`) are not devices and are skipped.
pub fn parse_interrupts(text: &str) -> Vec<InterruptLine> {
    let mut lines_out = Vec::new();
    let mut lines = text.lines().take(INTERRUPTS_LINES_MAX);
    let cpu_columns = lines.next().map(|header| header.split_whitespace().count()).unwrap_or(0);
    for line in lines {
        let Some((label, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = label.trim().parse::<u32>() else {
            continue;
        };
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        // A device line has the counts plus at least a chip and a name.
        if tokens.len() < cpu_columns + 2 {
            continue;
        }
        if let Some(name) = tokens.last() {
            lines_out.push(InterruptLine { irq, name: (*name).to_string() });
        }
    }
    lines_out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_mem_triple_is_read_from_tab_separated_text() {
        assert_eq!(parse_triple("287832\t383779\t575664\n"), Ok([287_832, 383_779, 575_664]));
    }

    #[test]
    fn triple_with_wrong_field_count_or_junk_is_an_error() {
        assert_eq!(parse_triple("4096 16384\n"), Err(ParseError::FieldCount { expected: 3, found: 2 }));
        assert_eq!(parse_triple("1 2 3 4"), Err(ParseError::FieldCount { expected: 3, found: 4 }));
        assert!(matches!(parse_triple("1 two 3"), Err(ParseError::NotAnInteger { .. })));
        assert!(parse_triple("").is_err());
    }

    #[test]
    fn port_range_is_two_ports_and_its_size_is_inclusive() {
        assert_eq!(parse_port_range("32768\t60999\n"), Ok((32_768, 60_999)));
        assert_eq!(port_range_size(32_768, 60_999), 28_232);
        assert_eq!(port_range_size(10_000, 65_535), 55_536);
        assert_eq!(port_range_size(5, 5), 1);
        assert_eq!(port_range_size(6, 5), 0, "an inverted range offers no ports");
        assert!(parse_port_range("32768").is_err());
    }

    #[test]
    fn integers_are_trimmed_and_negative_only_where_signed() {
        assert_eq!(parse_u64(" 1048576\n"), Ok(1_048_576));
        assert!(parse_u64("-1\n").is_err());
        assert_eq!(parse_i64("-1\n"), Ok(-1));
        assert!(parse_u64("").is_err());
    }

    #[test]
    fn cpu_list_expands_ranges_and_singles_sorted_and_deduplicated() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5,1-2,2"), Ok(vec![1, 2, 5]));
        assert_eq!(parse_cpu_list("\n"), Ok(vec![]));
        assert_eq!(parse_cpu_list("(null)\n"), Ok(vec![]));
    }

    #[test]
    fn malformed_or_huge_cpu_lists_are_errors_not_allocations() {
        assert!(matches!(parse_cpu_list("3-1"), Err(ParseError::CpuList { .. })));
        assert!(matches!(parse_cpu_list("a"), Err(ParseError::CpuList { .. })));
        assert!(matches!(parse_cpu_list("0-"), Err(ParseError::CpuList { .. })));
        assert!(matches!(parse_cpu_list("0-4294967295"), Err(ParseError::CpuListTooLarge { .. })));
        let repeated = vec!["0-8191"; 1000].join(",");
        assert_eq!(parse_cpu_list(&repeated).map(|cpus| cpus.len()), Ok(8192));
    }

    #[test]
    fn cpu_list_formats_back_compactly() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[4]), "4");
        assert_eq!(format_cpu_list(&[]), "none");
        assert_eq!(format_cpu_list(&[u32::MAX - 1, u32::MAX]), "4294967294-4294967295");
    }

    #[test]
    fn thp_mode_is_the_bracketed_choice() {
        assert_eq!(parse_selected_choice("always [madvise] never\n"), Ok("madvise".to_string()));
        assert_eq!(parse_selected_choice("[always] madvise never"), Ok("always".to_string()));
        assert!(matches!(parse_selected_choice("always madvise never"), Err(ParseError::NoSelectedChoice { .. })));
    }

    const PROC_LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            20000                40000                files     
Max locked memory         8388608              unlimited            bytes     
";

    #[test]
    fn proc_limits_give_soft_and_hard_including_unlimited() {
        assert_eq!(
            parse_proc_limits(PROC_LIMITS, LIMIT_LABEL_NOFILE),
            Ok(SoftHard { soft: LimitValue::Finite(20_000), hard: LimitValue::Finite(40_000) })
        );
        assert_eq!(
            parse_proc_limits(PROC_LIMITS, LIMIT_LABEL_MEMLOCK),
            Ok(SoftHard { soft: LimitValue::Finite(8_388_608), hard: LimitValue::Unlimited })
        );
        assert_eq!(
            parse_proc_limits("Limit Soft Hard\n", LIMIT_LABEL_NOFILE),
            Err(ParseError::LimitMissing { name: LIMIT_LABEL_NOFILE })
        );
        assert!(LimitValue::Unlimited.at_least(u64::MAX));
        assert!(!LimitValue::Finite(20_000).at_least(131_072));
    }

    #[test]
    fn mem_total_is_converted_from_kib() {
        let meminfo = "MemTotal:       24682416 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_mem_total_bytes(meminfo), Ok(24_682_416 * 1024));
        assert!(parse_mem_total_bytes("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn interrupts_yield_device_lines_with_their_last_column_as_name() {
        let text = "\
           CPU0       CPU1       CPU2       CPU3
 26:          0         12          0          0  IO-APIC   4-edge      ttyS0
 38:          0       2516          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 90:        100          0          0          0  IR-PCI-MSI 1572864-edge      eth0-TxRx-0
 91:          0        100          0          0  IR-PCI-MSI 1572865-edge      eth0-TxRx-1
NMI:          0          0          0          0   Non-maskable interrupts
LOC:      34842      33100          1          1   Local timer interrupts
ERR:          0
";
        let lines = parse_interrupts(text);
        let names: Vec<(u32, &str)> = lines.iter().map(|l| (l.irq, l.name.as_str())).collect();
        assert_eq!(names, vec![(26, "ttyS0"), (38, "virtio2-input.0"), (90, "eth0-TxRx-0"), (91, "eth0-TxRx-1")]);
        assert!(parse_interrupts("").is_empty());
        assert!(parse_interrupts("garbage\n1: 2\n").is_empty());
    }
}
