//! Starts a local `redrain serve` for harnesses (the end-to-end benchmark and
//! the integration tests): its own free ports, its own data directory, an
//! optional CPU affinity, and a bounded wait until it answers. The process is
//! killed (by its pid, through the `Child` handle) when the value is dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a starting node may take to accept connections and write its secret.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
const NODE_START_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(
        "the redrain binary was not found (looked for {looked:?}); build it first: \
         `cargo build -p redrain-engine --bin redrain` (or --release), or set REDRAIN_BIN"
    )]
    BinaryMissing { looked: Vec<PathBuf> },
    #[error("starting {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("node did not become ready within {0:?} (log: {1})")]
    NotReady(Duration, String),
    #[error("node exited during start-up with {status} (log: {log})")]
    Exited { status: String, log: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("auth secret of the node: {0}")]
    Secret(#[from] redrain_net::token::SecretError),
}

/// Finds the `redrain` binary: `$REDRAIN_BIN`, else next to the running
/// executable's target profile directory (`target/<profile>/redrain`), preferring
/// the same profile, then the other one.
pub fn find_node_binary() -> Result<PathBuf, NodeError> {
    if let Some(p) = std::env::var_os("REDRAIN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut looked = Vec::new();
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join("redrain");
        if dir.file_name().is_some_and(|n| n == "debug" || n == "release") {
            if candidate.is_file() {
                return Ok(candidate);
            }
            looked.push(candidate);
            if let Some(target) = dir.parent() {
                for profile in ["release", "debug"] {
                    let other = target.join(profile).join("redrain");
                    if other.is_file() {
                        return Ok(other);
                    }
                    looked.push(other);
                }
            }
            break;
        }
    }
    Err(NodeError::BinaryMissing { looked })
}

/// A free loopback port (bound then released; a small race is acceptable for tests).
pub fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A running node.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub secret: Vec<u8>,
}

impl NodeProcess {
    /// Starts `bin serve --cores cores` in `work_dir` (data and log go there),
    /// pinned to `cpus` when given.
    pub fn start(bin: &Path, work_dir: &Path, cores: usize, cpus: Option<&[usize]>) -> Result<Self, NodeError> {
        Self::start_with_args(bin, work_dir, cores, cpus, &[])
    }

    /// [`NodeProcess::start`] with more `serve` flags (e.g. `--shake-interval-ms 0`).
    pub fn start_with_args(
        bin: &Path,
        work_dir: &Path,
        cores: usize,
        cpus: Option<&[usize]>,
        extra: &[&str],
    ) -> Result<Self, NodeError> {
        let client = free_port()?;
        let admin = free_port()?;
        let data_dir = work_dir.join("node-data");
        std::fs::create_dir_all(&data_dir)?;
        let log_path = work_dir.join("node.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--cores")
            .arg(cores.to_string())
            .arg("--listen")
            .arg(client.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(cpus) = cpus {
            let cpus = cpus.to_vec();
            // SAFETY: the closure runs in the child between fork and exec and only
            // calls sched_setaffinity, which is async-signal-safe; no allocation.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for c in &cpus {
                        libc::CPU_SET(*c, &mut set);
                    }
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| NodeError::Spawn { bin: bin.display().to_string(), source })?;
        let mut node = NodeProcess { child, client, admin, data_dir, log_path, secret: Vec::new() };
        node.wait_ready()?;
        Ok(node)
    }

    fn wait_ready(&mut self) -> Result<(), NodeError> {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        let secret_path = self.data_dir.join("auth.secret");
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(NodeError::Exited { status: status.to_string(), log: self.log_tail() });
            }
            let secret = std::fs::read_to_string(&secret_path).ok();
            let listening = TcpStream::connect_timeout(&self.client, NODE_START_POLL).is_ok()
                && TcpStream::connect_timeout(&self.admin, NODE_START_POLL).is_ok();
            if let (Some(secret), true) = (secret, listening) {
                if let Ok(bytes) = redrain_net::token::parse_secret_hex(&secret) {
                    self.secret = bytes;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(NodeError::NotReady(NODE_START_TIMEOUT, self.log_tail()));
            }
            std::thread::sleep(NODE_START_POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the node's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// CPU time (user + system) the node has used, from /proc.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.pid())
    }

    /// Sends a signal to the node (by its pid).
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: kill with our own child's pid, which we have not reaped yet.
        if unsafe { libc::kill(self.pid() as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` (from /proc/<pid>/stat).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds of thread `tid` of this process.
pub fn own_thread_cpu_seconds(tid: i32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_from_proc() {
        let s = process_cpu_seconds(std::process::id()).unwrap();
        assert!(s >= 0.0);
    }
}
