//! The capacity model: pure functions from a target (sessions, cores, I/O memory) to the
//! value each host setting should have.
//!
//! Nothing here reads the host, so every number in `docs/tuning.md` can be checked by a
//! unit test. The constants are named with their unit and carry the reason for their value.

use serde::Serialize;

/// Sessions the check sizes for when `--sessions` is not given.
pub const SESSIONS_DEFAULT: u64 = 100_000;

/// Per-executor io_uring registered-buffer memory glommio uses unless the engine sets
/// `io_memory` (glommio 0.9 `DEFAULT_IO_MEMORY`, 10 MiB).
pub const IO_MEMORY_BYTES_PER_EXECUTOR_DEFAULT: u64 = 10 << 20;

/// glommio registers the I/O memory of each executor in three rings (main, poll and
/// latency), and the kernel charges each registration separately against RLIMIT_MEMLOCK.
pub const IO_URING_RINGS_PER_EXECUTOR: u64 = 3;

/// glommio refuses to start an executor when RLIMIT_MEMLOCK is below 512 KiB.
pub const MEMLOCK_BYTES_GLOMMIO_MIN: u64 = 512 << 10;

/// Each session holds one socket fd.
pub const FDS_PER_SESSION: u64 = 1;

/// Extra fds, in percent of the session fds: during a reconnect storm accepted sockets
/// and sockets still being closed coexist, and the admission limit is enforced after
/// `accept`, so the fd table must hold more than the session limit.
pub const FDS_HEADROOM_PERCENT: u64 = 25;

/// Fds per core besides sessions: three io_uring rings, an eventfd, a listener, timers,
/// peer links and open log segments, with room to spare.
pub const FDS_PER_CORE_OVERHEAD: u64 = 64;

/// Fds per process besides the per-core ones: stdio, the admin listener, config and TLS
/// files, storage directories and the payment sink's files.
pub const FDS_PER_PROCESS_OVERHEAD: u64 = 1024;

/// The fd limit is rounded up to a multiple of this so it reads as a round number and
/// small changes of the target do not change the files operators deployed.
pub const NOFILE_ROUNDING: u64 = 64 << 10;

/// `fs.file-max` is system-wide; during a rolling restart the draining process and its
/// replacement both hold their sessions, so allow two full processes plus this much for
/// everything else on the host.
pub const FILE_MAX_OTHER_PROCESSES_FDS: u64 = 64 << 10;

/// Each per-core listen queue must absorb this fraction (1/N) of that core's sessions at
/// once: clients reconnecting with jittered backoff after a node restart arrive in a few
/// seconds, and a core busy with logins drains its queue in bursts.
pub const LISTEN_BACKLOG_SESSIONS_DIVISOR: u64 = 8;

/// Lower bound of the listen backlog recommendation (the kernel default since 5.4).
pub const LISTEN_BACKLOG_MIN: u64 = 4096;

/// Upper bound: beyond 65535 the value does not fit older kernels' 16-bit field and a
/// longer queue only makes clients wait for logins that will time out anyway.
pub const LISTEN_BACKLOG_MAX: u64 = 65_535;

/// Per-CPU packet backlog between the NIC driver and the protocol stack. The default
/// (1000) drops packets when a burst of small frames from many sessions arrives while
/// the softirq is behind; 16384 packets is about 24 MiB of full-size frames per CPU at
/// worst and is only used under burst.
pub const NETDEV_MAX_BACKLOG_PACKETS: u64 = 16_384;

/// Socket buffer floor per direction: the memory TCP guarantees each socket even under
/// memory pressure (`tcp_rmem[0]`, `tcp_wmem[0]`). One page.
pub const SOCKET_BUFFER_MIN_BYTES: u64 = 4096;

/// Initial socket buffer per direction (`tcp_rmem[1]`, `tcp_wmem[1]`). redrain frames are
/// small (a request or a timeline entry is well under 4 KiB), so 16 KiB holds several
/// in flight; autotuning still grows busy sockets up to the max.
pub const SOCKET_BUFFER_DEFAULT_BYTES: u64 = 16 << 10;

/// Smallest per-socket max we recommend (`tcp_rmem[2]`, `tcp_wmem[2]`): 1 MiB lets a
/// single stream (a peer link, a catching-up replica) fill a 10 ms x 800 Mbit/s path.
/// Larger current values are kept: `tcp_mem` bounds the total anyway.
pub const SOCKET_BUFFER_MAX_BYTES_MIN: u64 = 1 << 20;

/// `tcp_mem` pressure threshold as a multiple of the low threshold: half of all
/// sessions may have a burst queued at once before TCP starts shrinking buffers.
pub const TCP_MEM_PRESSURE_FACTOR: u64 = 2;

/// `tcp_mem` hard limit as a multiple of the low threshold.
pub const TCP_MEM_HIGH_FACTOR: u64 = 3;

/// When the recommended `tcp_mem` hard limit exceeds this percentage of RAM, the check
/// notes that the host is too small for the target.
pub const TCP_MEM_RAM_PERCENT_WARN: u64 = 50;

/// Ephemeral port range we recommend: everything above the registered low ports that
/// services conventionally use. Reserve redrain's own listen ports with
/// `net.ipv4.ip_local_reserved_ports` so an outgoing connection never takes them.
pub const LOCAL_PORT_RANGE_RECOMMENDED: (u64, u64) = (10_000, 65_535);

/// `tcp_fin_timeout` ceiling in seconds: orphaned FIN_WAIT_2 sockets of departed clients
/// hold memory and a port for this long; the default 60 s is far more than any healthy
/// peer needs to send its FIN.
pub const TCP_FIN_TIMEOUT_SECONDS_MAX: u64 = 15;

/// `tcp_tw_reuse` value we recommend: 1 lets outgoing connections (loadgen, peer links,
/// sink) reuse TIME_WAIT ports safely with timestamps; the default 2 does so for loopback
/// only.
pub const TCP_TW_REUSE_RECOMMENDED: u64 = 1;

/// `vm.max_map_count` floor: mimalloc segments, per-core io_uring rings and memory-mapped
/// log segments all take mappings, and hitting the 65530 default fails `mmap` with ENOMEM
/// on a host with plenty of free memory, which is hard to diagnose.
pub const MAX_MAP_COUNT_MIN: u64 = 262_144;

/// `vm.swappiness` ceiling: a thread-per-core shard that takes a major fault stalls every
/// session on that core, so anonymous memory should be the last thing swapped.
pub const SWAPPINESS_MAX: u64 = 10;

/// What the host is being sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Concurrent sessions the node should hold.
    pub sessions: u64,
    /// Shard cores (glommio executors) the node runs.
    pub cores: u64,
    /// Registered I/O memory per executor (glommio `io_memory`).
    pub io_memory_bytes_per_executor: u64,
}

fn round_up(value: u64, multiple: u64) -> u64 {
    debug_assert!(multiple > 0);
    value.div_ceil(multiple).saturating_mul(multiple)
}

/// RLIMIT_NOFILE (soft and hard) the node needs: one fd per session plus headroom, plus
/// per-core and per-process overhead, rounded up to [`NOFILE_ROUNDING`].
pub fn nofile_limit(target: &Target) -> u64 {
    let session_fds = target.sessions.saturating_mul(FDS_PER_SESSION);
    let headroom_fds = session_fds.saturating_mul(FDS_HEADROOM_PERCENT) / 100;
    let overhead_fds = target.cores.saturating_mul(FDS_PER_CORE_OVERHEAD).saturating_add(FDS_PER_PROCESS_OVERHEAD);
    round_up(session_fds.saturating_add(headroom_fds).saturating_add(overhead_fds), NOFILE_ROUNDING)
}

/// `fs.nr_open`: the ceiling on any process's RLIMIT_NOFILE hard limit; must not be
/// below [`nofile_limit`] or `LimitNOFILE=` silently fails to apply.
pub fn nr_open_min(target: &Target) -> u64 {
    nofile_limit(target)
}

/// `fs.file-max`: system-wide open files; two full redrain processes (rolling restart)
/// plus [`FILE_MAX_OTHER_PROCESSES_FDS`].
pub fn file_max_min(target: &Target) -> u64 {
    nofile_limit(target).saturating_mul(2).saturating_add(FILE_MAX_OTHER_PROCESSES_FDS)
}

/// RLIMIT_MEMLOCK needed for io_uring registered buffers: every executor registers its
/// I/O memory in [`IO_URING_RINGS_PER_EXECUTOR`] rings, rounded up to a MiB, and never
/// below glommio's own minimum.
pub fn memlock_bytes_min(target: &Target) -> u64 {
    let registered =
        target.cores.saturating_mul(IO_URING_RINGS_PER_EXECUTOR).saturating_mul(target.io_memory_bytes_per_executor);
    round_up(registered, 1 << 20).max(MEMLOCK_BYTES_GLOMMIO_MIN)
}

/// Largest per-executor `io_memory` that fits a given memlock limit with `cores`
/// executors, rounded down to a page: what the engine must configure when the limit
/// cannot be raised.
pub fn io_memory_bytes_fitting(memlock_bytes: u64, cores: u64) -> u64 {
    let per_executor = memlock_bytes / cores.max(1) / IO_URING_RINGS_PER_EXECUTOR;
    per_executor / 4096 * 4096
}

/// `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog`: 1/8 of a core's sessions,
/// rounded up to a power of two, within [`LISTEN_BACKLOG_MIN`]..=[`LISTEN_BACKLOG_MAX`].
pub fn listen_backlog(target: &Target) -> u64 {
    let per_core = target.sessions.div_ceil(target.cores.max(1));
    let burst = per_core.div_ceil(LISTEN_BACKLOG_SESSIONS_DIVISOR);
    burst.checked_next_power_of_two().unwrap_or(u64::MAX).clamp(LISTEN_BACKLOG_MIN, LISTEN_BACKLOG_MAX)
}

/// Recommended `net.ipv4.tcp_mem` as (low, pressure, high) in pages.
///
/// Low is what every session at its guaranteed minimum buffers needs
/// (`sessions x (rmem_min + wmem_min)`): below it TCP should not be squeezing anyone.
pub fn tcp_mem_pages(target: &Target, page_size_bytes: u64) -> [u64; 3] {
    let bytes_per_session = SOCKET_BUFFER_MIN_BYTES * 2;
    let low_pages = target.sessions.saturating_mul(bytes_per_session).div_ceil(page_size_bytes.max(1));
    [low_pages, low_pages.saturating_mul(TCP_MEM_PRESSURE_FACTOR), low_pages.saturating_mul(TCP_MEM_HIGH_FACTOR)]
}

/// Recommended `tcp_rmem`/`tcp_wmem` triple given the current one: small floor and
/// default, and the current max kept when it is already at least
/// [`SOCKET_BUFFER_MAX_BYTES_MIN`].
pub fn socket_buffer_triple(current_max_bytes: u64) -> [u64; 3] {
    [SOCKET_BUFFER_MIN_BYTES, SOCKET_BUFFER_DEFAULT_BYTES, current_max_bytes.max(SOCKET_BUFFER_MAX_BYTES_MIN)]
}

/// Client source addresses a load generator needs to open `sessions` connections to one
/// server address and port: each (source IP, server IP, server port) has at most
/// `port_range_size` source ports.
pub fn loadgen_source_addresses(sessions: u64, port_range_size: u64) -> u64 {
    if port_range_size == 0 {
        return u64::MAX;
    }
    sessions.div_ceil(port_range_size).max(1)
}

/// Human-readable byte count with a binary unit, for notes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(sessions: u64, cores: u64) -> Target {
        Target { sessions, cores, io_memory_bytes_per_executor: IO_MEMORY_BYTES_PER_EXECUTOR_DEFAULT }
    }

    #[test]
    fn nofile_for_100k_sessions_on_2_cores_is_128_ki() {
        // 100000 + 25000 headroom + 2 x 64 + 1024 = 126152 -> next multiple of 65536.
        assert_eq!(nofile_limit(&target(100_000, 2)), 131_072);
        assert_eq!(nr_open_min(&target(100_000, 2)), 131_072);
    }

    #[test]
    fn nofile_for_a_million_sessions_on_16_cores_needs_nr_open_raised() {
        // 1000000 + 250000 + 16 x 64 + 1024 = 1252048 -> 20 x 65536.
        let limit = nofile_limit(&target(1_000_000, 16));
        assert_eq!(limit, 1_310_720);
        assert!(limit > 1_048_576, "above the kernel's default fs.nr_open");
    }

    #[test]
    fn file_max_allows_two_processes_and_the_rest_of_the_host() {
        assert_eq!(file_max_min(&target(100_000, 2)), 2 * 131_072 + 65_536);
    }

    #[test]
    fn memlock_is_cores_times_three_rings_times_io_memory() {
        assert_eq!(memlock_bytes_min(&target(100_000, 2)), 60 << 20);
        let small = Target { sessions: 1, cores: 1, io_memory_bytes_per_executor: 64 << 10 };
        // 192 KiB registered, rounded up to a whole MiB.
        assert_eq!(memlock_bytes_min(&small), 1 << 20);
    }

    #[test]
    fn io_memory_that_fits_8_mib_on_2_cores_is_a_page_multiple() {
        let fitting = io_memory_bytes_fitting(8 << 20, 2);
        assert_eq!(fitting, 1_396_736);
        assert_eq!(fitting % 4096, 0);
        assert!(fitting * 2 * IO_URING_RINGS_PER_EXECUTOR <= 8 << 20);
        assert_eq!(io_memory_bytes_fitting(8 << 20, 0), (8 << 20) / 3 / 4096 * 4096);
    }

    #[test]
    fn listen_backlog_is_an_eighth_of_a_core_rounded_to_a_power_of_two_and_clamped() {
        // 50000 per core / 8 = 6250 -> 8192.
        assert_eq!(listen_backlog(&target(100_000, 2)), 8192);
        assert_eq!(listen_backlog(&target(1_000, 2)), LISTEN_BACKLOG_MIN);
        assert_eq!(listen_backlog(&target(10_000_000, 1)), LISTEN_BACKLOG_MAX);
    }

    #[test]
    fn tcp_mem_covers_every_session_at_its_buffer_floor() {
        // 100000 x 8192 B / 4096 B per page = 200000 pages.
        assert_eq!(tcp_mem_pages(&target(100_000, 2), 4096), [200_000, 400_000, 600_000]);
        // 64 KiB pages (some arm64 kernels) need 16 x fewer pages.
        assert_eq!(tcp_mem_pages(&target(100_000, 2), 65_536)[0], 12_500);
    }

    #[test]
    fn socket_buffers_keep_a_large_max_and_raise_a_small_one() {
        assert_eq!(socket_buffer_triple(33_554_432), [4096, 16_384, 33_554_432]);
        assert_eq!(socket_buffer_triple(262_144), [4096, 16_384, 1 << 20]);
    }

    #[test]
    fn loadgen_needs_one_source_address_per_port_range_of_sessions() {
        assert_eq!(loadgen_source_addresses(100_000, 28_232), 4);
        assert_eq!(loadgen_source_addresses(100_000, 55_536), 2);
        assert_eq!(loadgen_source_addresses(1, 55_536), 1);
        assert_eq!(loadgen_source_addresses(10, 0), u64::MAX);
    }

    #[test]
    fn extreme_targets_saturate_instead_of_overflowing() {
        let huge = Target { sessions: u64::MAX, cores: u64::MAX, io_memory_bytes_per_executor: u64::MAX };
        assert!(nofile_limit(&huge) > 0);
        assert!(memlock_bytes_min(&huge) > 0);
        // u64::MAX sessions spread over u64::MAX cores is one session per core.
        assert_eq!(listen_backlog(&huge), LISTEN_BACKLOG_MIN);
        let pages = tcp_mem_pages(&huge, 4096);
        assert!(pages[0] > 0 && pages[0] <= pages[1] && pages[1] <= pages[2]);
    }

    #[test]
    fn byte_counts_read_with_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(60 << 20), "60.0 MiB");
        assert_eq!(format_bytes(1_398_101), "1.3 MiB");
    }
}
