//! Test harness: starts the real `redrain serve` binary on ephemeral ports
//! with its own data directory, and kills it (by pid) when dropped.
#![allow(dead_code)]

use redrain_engine::auth::{now_unix_s, TokenClaims, TokenKeys};
use redrain_net::client::BlockingClient;
use redrain_net::message::TOKEN_BYTES;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub child: Child,
    pub client: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub keys: TokenKeys,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Node {
        Self::start_env(dir, extra, &[])
    }

    pub fn start_env(dir: tempfile::TempDir, extra: &[&str], envs: &[(&str, &str)]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redrain"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "info")
            // Session tests need no event; rain tests turn it on or pass --tickets.
            .env("REDRAIN_DEMO_EVENT", "false")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redrain serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let mut err = child.stderr.take().unwrap();
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("redrain ready:"),
            "unexpected first line {line:?}; stderr: {}",
            stderr.lock().unwrap()
        );
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace().find_map(|kv| kv.strip_prefix(name)).and_then(|v| v.parse().ok())
        };
        let secret = std::fs::read_to_string(dir.path().join("data/auth.secret")).unwrap();
        let keys = TokenKeys::new(&hex::decode(secret.trim()).unwrap(), None).unwrap();
        Node {
            client: field("client=").unwrap(),
            tls: field("tls="),
            admin: field("admin=").unwrap(),
            child,
            dir,
            keys,
            stderr,
        }
    }

    pub fn token(&self, user_id: u64, device_id: u32) -> [u8; TOKEN_BYTES] {
        self.keys.mint(TokenClaims { user_id, device_id, expires_at_unix_s: now_unix_s() + 3600 })
    }

    pub fn connect(&self) -> BlockingClient {
        BlockingClient::connect(self.client, TIMEOUT).expect("connect + hello")
    }

    pub fn login(&self, user_id: u64, device_id: u32) -> BlockingClient {
        let mut c = self.connect();
        c.login(&self.token(user_id, device_id)).expect("login");
        c
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    pub fn metrics(&self) -> String {
        self.http_get("/metrics").1
    }

    /// Sum of a metric over all series whose labels contain every `needle`.
    pub fn metric_sum(&self, name: &str, needles: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, needles)
    }

    /// Polls until the metric reaches at least `want` (or panics after TIMEOUT).
    pub fn wait_metric(&self, name: &str, needles: &[&str], want: f64) -> f64 {
        let until = Instant::now() + TIMEOUT;
        loop {
            let v = self.metric_sum(name, needles);
            if v >= want || Instant::now() > until {
                assert!(v >= want, "{name}{needles:?} = {v}, wanted >= {want}");
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// SIGTERM, then waits (bounded) for the drain to finish.
    pub fn stop(&mut self) {
        // SAFETY: a signal to our own child, by pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let until = Instant::now() + TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "node did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes a (stopped or killed) node's directory for the next start.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// One request and its answer; pushes (Notify, id 0) in between are skipped and an
/// `Error` answer is a typed [`ClientError::Server`].
pub fn call(
    c: &mut BlockingClient,
    request: &redrain_net::message::Request<'_>,
) -> Result<redrain_net::client::ResponseFrame, redrain_net::client::ClientError> {
    use redrain_net::client::ClientError;
    use redrain_net::message::Response;
    let id = c.send(request)?;
    loop {
        let f = c.recv()?;
        if f.request_id == 0 {
            continue;
        }
        if let Response::Error { code, retry_after_ms, message } = f.parse()? {
            return Err(ClientError::Server { code, retry_after_ms, message: message.to_owned() });
        }
        assert_eq!(f.request_id, id, "answers come in request order");
        return Ok(f);
    }
}

/// Creates a group of `members` (the caller joins it) and returns its id.
pub fn create_group(c: &mut BlockingClient, members: &[u64]) -> u64 {
    use redrain_net::message::{Request, Response};
    use redrain_net::timeline::{TimelineRequest, TimelineResponse, U64List};
    let mut list = Vec::new();
    U64List::write(members, &mut list);
    let request = TimelineRequest::GroupCreate { members: U64List::from_bytes(&list[2..]) };
    let f = call(c, &Request::Timeline(request)).unwrap();
    let Response::Timeline(TimelineResponse::GroupCreateOk { group_id, .. }) = f.parse().unwrap() else {
        panic!("{:?}", f.parse())
    };
    group_id
}

/// The segment files of the log in `dir` (name, bytes), oldest first.
pub fn log_segments(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut segs: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    segs.sort();
    segs
}

/// Runs the `redrain` binary with `args`.
pub fn redrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redrain")).args(args).output().expect("run redrain")
}

/// Reconciles NDJSON `opened` against the demo event of data dir `data`; the JSON report.
pub fn reconcile_demo(data: &std::path::Path, opened: &std::path::Path) -> serde_json::Value {
    let out = redrain(&[
        "tickets",
        "reconcile",
        "--dir",
        data.join("demo-event").to_str().unwrap(),
        "--keyring",
        data.join("demo-event.keyring.json").to_str().unwrap(),
        "--opened",
        opened.to_str().unwrap(),
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("reconcile: {e}: {} / {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// `promtool check metrics` must accept `text`; skipped when promtool is missing outside
/// CI (CI installs it).
pub fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) if std::env::var_os("CI").is_none() => return,
        Err(e) => panic!("promtool must be installed in CI: {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub use redrain_net::prometheus::sum as metric_sum;

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redrain replica serve` process (a peer park) on a loopback port; killed when dropped.
pub struct Replica {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
}

impl Replica {
    /// Starts a replica on `listen` ("127.0.0.1:0" for a free port) keeping its data in `dir`.
    pub fn start(dir: &std::path::Path, listen: &str) -> Replica {
        Self::start_with(dir, listen, &[])
    }

    /// As [`Replica::start`], with more `replica serve` flags.
    pub fn start_with(dir: &std::path::Path, listen: &str, extra: &[&str]) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redrain"))
            .args(["replica", "serve", "--listen", listen, "--data-dir", dir.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Replica { child, addr, dir: dir.to_path_buf() }
    }

    /// Kills the process (by its pid) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// (LSN, kind, payload) of every record this replica holds of stream (`origin`, `core`);
    /// empty when it holds none of that stream yet.
    pub fn records(&self, origin: u16, core: u16) -> Vec<(u64, u8, Vec<u8>)> {
        let out = self.dir.with_extension(format!("origin{origin}-core{core}.ndjson"));
        let status = Command::new(env!("CARGO_BIN_EXE_redrain"))
            .args(["replica", "export", "--data-dir", self.dir.to_str().unwrap(), "--origin", &origin.to_string()])
            .args(["--core", &core.to_string(), "--ndjson", out.to_str().unwrap()])
            .output()
            .unwrap();
        if !status.status.success() {
            return Vec::new();
        }
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let payload = hex::decode(v["payload_hex"].as_str().unwrap()).unwrap();
                (v["lsn"].as_u64().unwrap(), v["kind"].as_u64().unwrap() as u8, payload)
            })
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
