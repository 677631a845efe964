//! Process and thread facts the generator needs: the CPUs it may run on, pinning,
//! the open-file limit, and CPU time (for the self-check).

use thiserror::Error;

/// File descriptors kept free for rings, eventfds, stdio and the metrics scrape.
pub const FD_RESERVE: u64 = 64;
/// File descriptors each generator thread uses besides its connections.
pub const FDS_PER_THREAD: u64 = 4;

#[derive(Debug, Error)]
pub enum SystemError {
    #[error(
        "{connections} connections need {needed} open files, but this process may open at most {limit} \
         (RLIMIT_NOFILE hard limit). Run {processes} loadgen processes with --connections {per_process} each \
         (and distinct --user-id-base values), or raise the limit (see docs/tuning.md)"
    )]
    TooManyConnections { connections: u64, needed: u64, limit: u64, processes: u64, per_process: u64 },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
}

/// The CPUs this process may run on (its affinity mask, as taskset sets it);
/// the same answer the node uses.
pub use redrain_tuning::process::allowed_cpus;

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<(), SystemError> {
    // SAFETY: as above; the set names one CPU below CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(SystemError::Os { what: "sched_setaffinity", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit and checks that
/// `connections` fit; returns the limit now in force.
pub fn ensure_fd_limit(connections: u64, threads: u64) -> Result<u64, SystemError> {
    use redrain_tuning::process::{fd_limit, raise_fd_limit};
    let limit = match raise_fd_limit() {
        Ok(limit) => limit,
        // Not raised: size by the soft limit in force.
        Err(_) => fd_limit().map_err(|source| SystemError::Os { what: "getrlimit", source })?,
    };
    check_fd_budget(connections, threads, limit.soft)?;
    Ok(limit.soft)
}

/// Pure part of [`ensure_fd_limit`]: do `connections` fit under `limit`?
pub fn check_fd_budget(connections: u64, threads: u64, limit: u64) -> Result<(), SystemError> {
    let overhead = FD_RESERVE + FDS_PER_THREAD * threads;
    let needed = connections + overhead;
    if needed <= limit {
        return Ok(());
    }
    let per_process = limit.saturating_sub(overhead).max(1);
    let processes = connections.div_ceil(per_process);
    Err(SystemError::TooManyConnections { connections, needed, limit, processes, per_process })
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time the calling thread has used.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used.
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// (busy, total) jiffies of one CPU from /proc/stat. Busy is everything but
/// idle and iowait: our threads, other processes, interrupts, softirq (where
/// much of loopback TCP runs, not charged to any thread) and steal.
pub fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let label = format!("cpu{cpu}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Busy fraction of a CPU between two [`cpu_jiffies`] samples.
pub fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let busy = after.0.checked_sub(before.0)?;
    (total > 0).then(|| busy as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_fraction_comes_from_proc_stat() {
        let cpu = allowed_cpus()[0];
        let a = cpu_jiffies(cpu).unwrap();
        assert!(a.0 <= a.1);
        assert_eq!(busy_fraction((10, 100), (40, 200)), Some(0.3));
        assert_eq!(busy_fraction((10, 100), (10, 100)), None);
    }

    #[test]
    fn fd_budget_names_the_number_of_processes_needed() {
        check_fd_budget(10_000, 2, 20_000).unwrap();
        let err = check_fd_budget(100_000, 2, 20_000).unwrap_err();
        match &err {
            SystemError::TooManyConnections { processes, per_process, .. } => {
                assert_eq!(*per_process, 20_000 - 64 - 8);
                assert_eq!(*processes, 6);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("Run 6 loadgen processes"));
    }

    #[test]
    fn this_process_may_run_somewhere_and_thread_time_advances() {
        assert!(!allowed_cpus().is_empty());
        let t0 = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() > t0);
    }
}
