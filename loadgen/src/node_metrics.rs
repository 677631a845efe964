//! Reads the node's Prometheus `/metrics` page over plain HTTP/1.1 (bounded in
//! time and size) and sums metric families across their labels.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use thiserror::Error;

/// Largest `/metrics` page accepted.
pub const METRICS_PAGE_BYTES_MAX: usize = 16 << 20;
/// Timeout of one scrape (connect, write and each read).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

pub const RESIDENT_BYTES: &str = "redrain_process_resident_bytes";
pub const CONNECTIONS_OPEN: &str = "redrain_connections_open_all";
pub const SESSIONS_ACTIVE: &str = "redrain_sessions_active";
pub const PROCESS_CPU_SECONDS: &str = "redrain_process_cpu_seconds_total";
pub const THREAD_CPU_SECONDS: &str = "redrain_thread_cpu_seconds_total";
/// Name prefix of the node's executor threads (one per core).
pub const CORE_THREAD_PREFIX: &str = "redrain-core-";

#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("metrics endpoint {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("metrics endpoint {addr} answered {status:?}")]
    Status { addr: SocketAddr, status: String },
    #[error("metrics page larger than {METRICS_PAGE_BYTES_MAX} bytes")]
    TooLarge,
}

/// One scrape: metric name -> sum of its samples over all label sets, and
/// each sample by its name and label text (`name{a="b"}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMetrics {
    sums: HashMap<String, f64>,
    series: HashMap<String, f64>,
}

impl NodeMetrics {
    /// Parses Prometheus text exposition; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let mut sums = HashMap::new();
        let mut series = HashMap::new();
        for sample in redrain_net::prometheus::samples(text) {
            *sums.entry(sample.name.to_owned()).or_insert(0.0) += sample.value;
            let key = if sample.labels.is_empty() {
                sample.name.to_owned()
            } else {
                format!("{}{{{}}}", sample.name, sample.labels)
            };
            series.insert(key, sample.value);
        }
        Self { sums, series }
    }

    pub fn sum(&self, name: &str) -> Option<f64> {
        self.sums.get(name).copied()
    }

    /// One sample by its exact series text, e.g. `redrain_thread_cpu_seconds_total{thread="redrain-core-0"}`.
    pub fn series(&self, key: &str) -> Option<f64> {
        self.series.get(key).copied()
    }

    /// CPU seconds of each node executor thread, by thread name.
    pub fn core_thread_cpu_seconds(&self) -> Vec<(String, f64)> {
        let prefix = format!("{THREAD_CPU_SECONDS}{{thread=\"");
        let mut out: Vec<(String, f64)> = self
            .series
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                name.starts_with(CORE_THREAD_PREFIX).then(|| (name.to_owned(), *v))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// GETs `/metrics` from the node's admin endpoint.
pub fn scrape(addr: SocketAddr) -> Result<NodeMetrics, ScrapeError> {
    let io = |source| ScrapeError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT)).map_err(io)?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut page = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        if page.len() + n > METRICS_PAGE_BYTES_MAX {
            return Err(ScrapeError::TooLarge);
        }
        page.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&page);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    if status.split_whitespace().nth(1).is_none_or(|code| code != "200") {
        return Err(ScrapeError::Status { addr, status });
    }
    Ok(NodeMetrics::parse(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_summed_over_labels_and_comments_skipped() {
        let text = "# HELP redrain_sessions_active x\n# TYPE redrain_sessions_active gauge\n\
                    redrain_sessions_active{core=\"0\"} 3\nredrain_sessions_active{core=\"1\"} 4\n\
                    redrain_process_resident_bytes 1.5e6\nredrain_odd{a=\"}\"} 2\nbroken{ 1\nnovalue\n";
        let m = NodeMetrics::parse(text);
        assert_eq!(m.sum(SESSIONS_ACTIVE), Some(7.0));
        assert_eq!(m.sum(RESIDENT_BYTES), Some(1.5e6));
        assert_eq!(m.sum("redrain_odd"), Some(2.0));
        assert_eq!(m.sum("broken"), None);
        assert_eq!(m.sum("novalue"), None);
        assert_eq!(m.series("redrain_sessions_active{core=\"1\"}"), Some(4.0));
    }

    #[test]
    fn core_threads_cpu_seconds_are_read_by_thread_name() {
        let text = "redrain_thread_cpu_seconds_total{thread=\"redrain-core-1\"} 2.5\n\
                    redrain_thread_cpu_seconds_total{thread=\"redrain-core-0\"} 1.5\n\
                    redrain_thread_cpu_seconds_total{thread=\"redrain-signals\"} 0.1\n\
                    redrain_process_cpu_seconds_total 4.2\n";
        let m = NodeMetrics::parse(text);
        assert_eq!(
            m.core_thread_cpu_seconds(),
            vec![("redrain-core-0".to_owned(), 1.5), ("redrain-core-1".to_owned(), 2.5)]
        );
        assert_eq!(m.sum(PROCESS_CPU_SECONDS), Some(4.2));
    }
}
