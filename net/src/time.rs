//! Wall-clock time as the protocol carries it: seconds (token expiry) and
//! milliseconds (`HelloOk.server_time_ms`) since the Unix epoch. A clock before
//! the epoch reads as 0 rather than failing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch from the system clock.
pub fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_read_the_same_clock() {
        let (s, ms) = (now_unix_s(), now_unix_ms());
        // 2026-01-01 as a sanity floor; the two reads are at most a second apart.
        assert!(s > 1_767_225_600, "{s}");
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1, "{s} s vs {ms} ms");
    }
}
