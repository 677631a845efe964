//! Facts about this process that the node and the load generator both need at
//! start-up: the CPUs it may run on, its open-file limit, and how much io_uring
//! registered memory fits under its locked-memory limit.
//!
//! One implementation for both binaries, so the node and the generator agree on
//! what "the CPUs I may use" means (the affinity mask, as `taskset` sets it, not
//! the online list) and raise the fd limit the same way.

/// The CPUs this process may run on, in increasing order: its affinity mask.
/// Falls back to `0..available_parallelism` when the mask cannot be read, so
/// the answer is never empty.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (us).
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (0..libc::CPU_SETSIZE as usize).filter(|c| libc::CPU_ISSET(*c, &set)).collect()
        } else {
            Vec::new()
        }
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect()
    } else {
        cpus
    }
}

/// The open-file limit (RLIMIT_NOFILE) of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Reads RLIMIT_NOFILE.
pub fn fd_limit() -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one plain struct through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FdLimit { soft: lim.rlim_cur, hard: lim.rlim_max })
}

/// Raises the soft open-file limit to the hard limit (allowed without
/// privileges) and returns the limit in force afterwards. On an error the
/// limit is unchanged; read it with [`fd_limit`] and size by its soft value.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let now = fd_limit()?;
    if now.soft < now.hard {
        let raised = libc::rlimit { rlim_cur: now.hard, rlim_max: now.hard };
        // SAFETY: setrlimit reads one plain struct through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    fd_limit()
}

/// Rings glommio registers `io_memory` in, per executor.
pub const GLOMMIO_RINGS_PER_CORE: usize = 3;

/// Registered memory per executor that fits all executors' rings under the
/// locked-memory limit `memlock_soft` (glommio registers it in
/// [`GLOMMIO_RINGS_PER_CORE`] rings each, and only logs when it does not fit).
pub fn io_memory_per_core(configured: usize, memlock_soft: u64, cores: usize) -> usize {
    let fit = (memlock_soft as usize) / (GLOMMIO_RINGS_PER_CORE * cores.max(1));
    // glommio rounds up to 4 KiB and to at least 64 KiB.
    configured.min(fit) / 4096 * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_may_run_on_at_least_one_cpu_listed_once_in_order() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }

    #[test]
    fn io_memory_per_core_fits_every_executors_rings_under_the_memlock_limit() {
        // 8 MiB over 2 executors of 3 rings: 1,398,101 bytes fit, rounded down to 4 KiB.
        assert_eq!(io_memory_per_core(4 << 20, 8 << 20, 2), 1_396_736);
        assert_eq!(io_memory_per_core(1 << 20, 8 << 20, 1), 1 << 20, "the configured size when it fits");
        assert_eq!(io_memory_per_core(1 << 20, 8 << 20, 0), 1 << 20, "no cores counts as one");
    }

    #[test]
    fn raising_the_fd_limit_brings_the_soft_limit_to_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert_eq!(fd_limit().unwrap(), limit);
    }
}
