//! Open-loop send schedule: the intended send time of every request.
//!
//! The run offers `rate` requests per second in total. Request number `g` of the
//! whole run is intended at `g / rate` seconds after the load starts, and
//! connection `i` of `n` owns requests `g = i, i + n, i + 2n, ...`. So each
//! connection sends at `rate / n` per second and the connections are evenly
//! interleaved, not bunched at the same instants. Latency is measured from these
//! intended times, so a stalled node cannot hide the requests it delayed
//! (coordinated omission, as wrk2 corrects it).

/// Intended send times of one connection, in nanoseconds since the run's base instant.
#[derive(Debug, Clone)]
pub struct OpenLoopSchedule {
    load_start_ns: u64,
    end_ns: u64,
    ns_per_request: f64,
    next_global_index: u64,
    connections: u64,
}

impl OpenLoopSchedule {
    /// Schedule of connection `index` of `connections`, offering `rate_per_s` in
    /// total from `load_start_ns`, with nothing intended at or after `end_ns`.
    pub fn new(load_start_ns: u64, end_ns: u64, rate_per_s: f64, connections: u64, index: u64) -> Self {
        assert!(rate_per_s > 0.0 && rate_per_s.is_finite());
        assert!(connections > 0 && index < connections);
        Self { load_start_ns, end_ns, ns_per_request: 1e9 / rate_per_s, next_global_index: index, connections }
    }

    /// Intended time of the next request, or `None` once the schedule is over.
    pub fn peek(&self) -> Option<u64> {
        let offset = (self.next_global_index as f64 * self.ns_per_request) as u64;
        let t = self.load_start_ns.saturating_add(offset);
        (t < self.end_ns).then_some(t)
    }

    pub fn advance(&mut self) {
        self.next_global_index += self.connections;
    }
}

/// Intended connect time of connection `index` during a ramp at `rate_per_s`.
pub fn ramp_offset_ns(index: u64, rate_per_s: Option<f64>) -> u64 {
    match rate_per_s {
        Some(r) => (index as f64 * 1e9 / r) as u64,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_into_an_even_total_rate() {
        let (n, rate) = (4u64, 1000.0);
        let mut all = Vec::new();
        for i in 0..n {
            let mut s = OpenLoopSchedule::new(0, 1_000_000_000, rate, n, i);
            while let Some(t) = s.peek() {
                all.push(t);
                s.advance();
            }
        }
        all.sort_unstable();
        assert_eq!(all.len(), 1000, "one second at 1000/s");
        for w in all.windows(2) {
            let gap = w[1] - w[0];
            assert!((999_000..=1_001_000).contains(&gap), "gap {gap}");
        }
    }

    #[test]
    fn a_rate_over_a_window_intends_request_g_at_exactly_g_over_rate() {
        // 20,000/s for 250 ms from t = 3 s, over 100 connections.
        let (n, rate, start, end) = (100u64, 20_000.0, 3_000_000_000u64, 3_250_000_000u64);
        let mut all = Vec::new();
        for i in 0..n {
            let mut s = OpenLoopSchedule::new(start, end, rate, n, i);
            let mut previous = None;
            while let Some(t) = s.peek() {
                if let Some(p) = previous {
                    assert_eq!(t - p, 5_000_000, "connection {i} sends every n / rate = 5 ms");
                }
                previous = Some(t);
                all.push(t);
                s.advance();
            }
        }
        all.sort_unstable();
        assert_eq!(all.len(), 5_000, "rate x window");
        for (g, t) in all.iter().enumerate() {
            assert_eq!(*t, start + g as u64 * 50_000, "request {g} at g / rate");
        }
    }

    #[test]
    fn processes_sharing_a_run_together_send_what_one_process_would() {
        // Connections split round robin over 3 processes keep the global
        // schedule: the union of their send times is the one-process schedule.
        let (n, rate) = (10u64, 1000.0);
        let times = |conns: &mut dyn Iterator<Item = u64>| {
            let mut v = Vec::new();
            for i in conns {
                let mut s = OpenLoopSchedule::new(0, 100_000_000, rate, n, i);
                while let Some(t) = s.peek() {
                    v.push(t);
                    s.advance();
                }
            }
            v.sort_unstable();
            v
        };
        let one = times(&mut (0..n));
        let mut union: Vec<u64> = (0..3u64).flat_map(|p| times(&mut (p..n).step_by(3))).collect();
        union.sort_unstable();
        assert_eq!(union, one);
        assert_eq!(one.len(), 100);
    }

    #[test]
    fn nothing_is_intended_at_or_after_the_end() {
        let mut s = OpenLoopSchedule::new(500, 1_500, 1e9, 1, 0);
        let mut n = 0;
        while let Some(t) = s.peek() {
            assert!((500..1_500).contains(&t));
            n += 1;
            s.advance();
        }
        assert_eq!(n, 1000);
    }

    #[test]
    fn ramp_spreads_connects_at_the_rate() {
        assert_eq!(ramp_offset_ns(0, Some(100.0)), 0);
        assert_eq!(ramp_offset_ns(50, Some(100.0)), 500_000_000);
        assert_eq!(ramp_offset_ns(50, None), 0);
    }
}
