//! Node start-up and shutdown: host checks, executors, listeners, signals.
//!
//! Start-up order: validate config, read the CPU affinity set, raise the fd
//! soft limit, probe io_uring (a clear error instead of a panic when it cannot
//! be set up), size glommio's registered memory under RLIMIT_MEMLOCK, load the
//! auth secret and TLS, bind every listener (so address errors surface before
//! any executor starts), then start one pinned executor per core. SIGTERM or
//! SIGINT starts a graceful drain; a second signal exits at once.

use crate::auth::{parse_secret_hex, TokenKeys};
use crate::config::Config;
use crate::metrics::{self, CoreMetrics, ProcessFigures};
use crate::rain::{CoreRecovery, RainShared};
use crate::shard::mailbox::Mailboxes;
use crate::shard::state::ShardState;
use crate::shard::storage::CoreStorage;
use crate::shard::{accept, Core, NodeShared, HOUSEKEEPING_TICK, SWEEP_EVERY_TICKS};
use anyhow::{bail, Context};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use redrain_net::admin::{AdminHandler, AdminMethod, AdminRequest, AdminResponse};
use redrain_net::listener;
use redrain_net::ErrorCode;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// File descriptors kept free for logs, data files and admin connections.
pub const FD_RESERVE: u64 = 256;
pub use redrain_tuning::process::{io_memory_per_core, GLOMMIO_RINGS_PER_CORE};
/// CPU shares of each core's hand-off consumer task queue (connections run with 1000).
pub const HANDOFF_SHARES: usize = 100;

/// Optional CPU profile written as a flamegraph SVG.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    pub svg_path: PathBuf,
    pub delay: Duration,
    /// None: until shutdown.
    pub duration: Option<Duration>,
}

/// Host facts logged at start-up.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub fd_soft: u64,
    pub fd_hard: u64,
    pub memlock_soft: u64,
}

/// Raises the fd soft limit to the hard limit (allowed without privileges)
/// and reads the limits then in force.
fn raise_fd_limit() -> HostLimits {
    use redrain_tuning::process::{fd_limit, raise_fd_limit, FdLimit};
    let fd = raise_fd_limit().unwrap_or_else(|e| {
        log::warn!("could not raise the RLIMIT_NOFILE soft limit to the hard limit: {e}");
        fd_limit().unwrap_or(FdLimit { soft: 1024, hard: 1024 })
    });
    let (memlock_soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap_or((64 * 1024, 64 * 1024));
    HostLimits { fd_soft: fd.soft, fd_hard: fd.hard, memlock_soft }
}

use redrain_tuning::process::allowed_cpus;

/// Checks that io_uring can be set up and returns a description of its features.
pub fn probe_io_uring() -> anyhow::Result<String> {
    let ring = io_uring::IoUring::new(8).map_err(|e| {
        anyhow::anyhow!(
            "io_uring cannot be set up on this host ({e}). redrain needs io_uring: check \
             `sysctl kernel.io_uring_disabled` (must be 0), seccomp/container policy, and kernel >= 5.10"
        )
    })?;
    let p = ring.params();
    let features = [
        ("single_mmap", p.is_feature_single_mmap()),
        ("nodrop", p.is_feature_nodrop()),
        ("submit_stable", p.is_feature_submit_stable()),
        ("rw_cur_pos", p.is_feature_rw_cur_pos()),
        ("cur_personality", p.is_feature_cur_personality()),
        ("fast_poll", p.is_feature_fast_poll()),
        ("poll_32bits", p.is_feature_poll_32bits()),
        ("sqpoll_nonfixed", p.is_feature_sqpoll_nonfixed()),
        ("ext_arg", p.is_feature_ext_arg()),
        ("native_workers", p.is_feature_native_workers()),
    ];
    Ok(features.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect::<Vec<_>>().join(","))
}

/// Loads the auth secrets: from config, or the development secret in the data
/// directory (created with mode 0600 on first start).
pub fn load_keys(config: &Config) -> anyhow::Result<TokenKeys> {
    let current = match &config.auth_secret_hex {
        Some(hex) => parse_secret_hex(hex).context("auth_secret_hex")?,
        None => dev_secret(&config.data_dir)?,
    };
    let previous = match &config.auth_secret_previous_hex {
        Some(hex) => Some(parse_secret_hex(hex).context("auth_secret_previous_hex")?),
        None => None,
    };
    Ok(TokenKeys::new(&current, previous.as_deref())?)
}

/// Path of the development auth secret inside a data directory.
pub fn dev_secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth.secret")
}

fn dev_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dev_secret_path(data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return parse_secret_hex(&text).with_context(|| format!("{}", path.display()));
    }
    let secret = create_secret_file(&path, 32)?;
    log::warn!("created development auth secret {} (set auth_secret_hex in production)", path.display());
    Ok(secret)
}

/// Creates `path` (mode 0600, never overwriting) holding `bytes` random bytes as hex and
/// a newline, synced; returns the bytes. Used for the development auth secret and the
/// seal key a node creates on first start.
pub fn create_secret_file(path: &Path, bytes: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut secret = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{}", hex::encode(&secret))?;
    f.sync_all()?;
    Ok(secret)
}

/// Log settings of the rain's streams: the storage defaults (group commit up to 16 MiB,
/// 4 MiB batches), with a pending bound that covers the open queue's.
fn rain_log_config() -> redrain_storage::LogConfig {
    redrain_storage::LogConfig::default()
}

/// Addresses the node actually listens on (ports resolved when 0 was asked).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub client: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
}

struct CoreSetup {
    /// This core's payment hand-off sink (when the node serves a rain).
    sink: Option<crate::handoff::CoreSink>,
    /// This core's hand-off sink of lucky packet shares.
    lucky_sink: Option<crate::handoff::CoreSink>,
    /// This core's rain state (dispenser with recovered cursors, opened packets).
    rain: Option<(CoreRecovery, crate::rain::dispenser::Dispenser)>,
    plain: std::net::TcpListener,
    tls: Option<std::net::TcpListener>,
    senders: Vec<Option<SharedSender<()>>>,
    receivers: Vec<(usize, SharedReceiver<()>)>,
}

/// Runs the node until a signal drains it. Returns after all cores exited.
pub fn run(mut config: Config, profile: Option<ProfileRequest>) -> anyhow::Result<()> {
    config.validate()?;
    // The data dir is made absolute once: the logs sync their parent directories by
    // path, which glommio cannot open when relative (the default is ./redrain-data).
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving data dir {}", config.data_dir.display()))?;
    let cpus = allowed_cpus();
    let cores = match config.cores {
        Some(n) if n > cpus.len() => {
            bail!("--cores {n} exceeds the {} CPUs in this process's affinity set {cpus:?}", cpus.len())
        }
        Some(n) => n,
        None => cpus.len(),
    };
    let limits = raise_fd_limit();
    let features = probe_io_uring()?;
    log::info!(
        "host: cpus {cpus:?}, using {cores} cores; RLIMIT_NOFILE {}/{}; RLIMIT_MEMLOCK {} KiB; io_uring features [{features}]",
        limits.fd_soft,
        limits.fd_hard,
        limits.memlock_soft / 1024
    );
    let io_memory = io_memory_per_core(config.io_memory_bytes_per_core, limits.memlock_soft, cores);
    if io_memory < 64 * 1024 {
        log::warn!("RLIMIT_MEMLOCK too small for registered buffers; glommio will run without them");
    }
    log::info!(
        "io_uring registered buffers: {} KiB per core x {GLOMMIO_RINGS_PER_CORE} rings x {cores} cores = {} KiB of {} KiB RLIMIT_MEMLOCK",
        io_memory / 1024,
        io_memory * GLOMMIO_RINGS_PER_CORE * cores / 1024,
        limits.memlock_soft / 1024
    );
    let fd_budget = limits.fd_soft.saturating_sub(FD_RESERVE) / cores as u64;
    let sessions_per_core_max = config.sessions_per_core_max.min(fd_budget as usize).max(1);
    if sessions_per_core_max < config.sessions_per_core_max {
        log::warn!(
            "sessions_per_core_max {} capped to {sessions_per_core_max} by RLIMIT_NOFILE {} over {cores} cores",
            config.sessions_per_core_max,
            limits.fd_soft
        );
    }
    let keys = load_keys(&config)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) if config.tls_listen.is_some() => {
            let rotation_s = (config.tls_ticket_rotation_s > 0).then_some(config.tls_ticket_rotation_s);
            Some(redrain_net::tls::server_config_with_resumption(cert, key, rotation_s)?)
        }
        _ => None,
    };

    let plain = listener::bind_per_core(config.listen, cores).with_context(|| format!("binding {}", config.listen))?;
    let tls_listeners = match config.tls_listen {
        Some(addr) => Some(listener::bind_per_core(addr, cores).with_context(|| format!("binding TLS {addr}"))?),
        None => None,
    };
    let admin = std::net::TcpListener::bind(config.admin_listen)
        .with_context(|| format!("binding admin {}", config.admin_listen))?;
    let (admin_current, admin_previous) = load_admin_tokens(&config)?;
    let bound = BoundAddrs {
        client: plain[0].local_addr()?,
        tls: tls_listeners.as_ref().map(|l| l[0].local_addr()).transpose()?,
        admin: admin.local_addr()?,
    };

    let rain = crate::rain::start(&config, cores)?;
    // The hand-off's sinks open before any executor starts: a missing stream, an
    // unreachable server or a damaged position refuses the start with a clear message.
    // Lucky packet shares go to the hand-off with or without an event.
    let handoff = crate::handoff::start(&config, cores, rain.is_some()).context("starting the payment hand-off")?;
    let mut lucky_sinks: Vec<_> = handoff.lucky_sinks.into_iter().map(Some).collect();
    let (mut sinks, _nats_link): (Vec<_>, _) = match rain {
        Some(_) => (handoff.sinks.into_iter().map(Some).collect(), handoff.nats),
        None => ((0..cores).map(|_| None).collect(), handoff.nats),
    };
    let (rain_shared, mut rain_cores): (Option<Arc<RainShared>>, Vec<_>) = match rain {
        Some(start) => (Some(start.shared), start.cores.into_iter().map(Some).collect()),
        None => (None, (0..cores).map(|_| None).collect()),
    };
    let node = Arc::new(NodeShared {
        cores,
        keys,
        tls,
        metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
        mailboxes: Mailboxes::new(cores, config.handoff_queue_capacity),
        rain: rain_shared,
        shutdown: Default::default(),
        started: Instant::now(),
        fd_limit: limits.fd_soft,
        sessions_per_core_max,
        switches: Arc::new(crate::overload::switches::SwitchBoard::new(cores, Default::default())),
        admin_tokens: Arc::new(redrain_net::admin::AdminTokens::new(admin_current, admin_previous)),
        admin_counters: Default::default(),
        config,
    });
    let mut setups: Vec<CoreSetup> = Vec::with_capacity(cores);
    let mut tls_iter = tls_listeners.map(|v| v.into_iter());
    for (i, p) in plain.into_iter().enumerate() {
        setups.push(CoreSetup {
            sink: sinks[i].take(),
            lucky_sink: lucky_sinks[i].take(),
            rain: rain_cores[i].take(),
            plain: p,
            tls: tls_iter.as_mut().and_then(|it| it.next()),
            senders: (0..cores).map(|_| None).collect(),
            receivers: Vec::new(),
        });
    }
    for from in 0..cores {
        for to in 0..cores {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(1);
                setups[from].senders[to] = Some(tx);
                setups[to].receivers.push((from, rx));
            }
        }
    }

    spawn_signal_thread(node.clone())?;
    // The admin API runs on its own thread, off the shard cores.
    let admin_server = redrain_net::admin::spawn(
        admin,
        redrain_net::admin::AdminServerState {
            handler: admin_handler(node.clone()),
            tokens: node.admin_tokens.clone(),
            counters: node.admin_counters.clone(),
        },
    )
    .context("starting the admin endpoint")?;
    let profiler = profile.map(|p| spawn_profiler(p, node.clone())).transpose()?;

    let mut handles = Vec::with_capacity(cores);
    for (id, setup) in setups.into_iter().enumerate() {
        let node = node.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[id]))
            .name(&format!("redrain-core-{id}"))
            .io_memory(io_memory.max(64 * 1024))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || core_main(id, node, setup))
            .map_err(|e| anyhow::anyhow!("starting the executor of core {id} (io_uring setup failed?): {e}"))?;
        handles.push(handle);
    }
    // Ready means the operator's switches are in force (core 0 restores them first).
    let restore_deadline = Instant::now() + Duration::from_secs(30);
    while !node.switches.is_restored() && Instant::now() < restore_deadline && !node.shutting_down() {
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "redrain ready: client={} tls={} admin={} cores={cores}",
        bound.client,
        bound.tls.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        bound.admin
    );
    let mut failed = None;
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(format!("core {id}: {e:#}")),
            Err(e) => failed = Some(format!("core {id} executor: {e}")),
        }
        node.shutdown.store(true, Ordering::Relaxed);
    }
    if let Some(p) = profiler {
        let _ = p.join();
    }
    admin_server.stop();
    if let Some(msg) = failed {
        bail!(msg);
    }
    log::info!("all cores drained; exiting");
    Ok(())
}

fn spawn_signal_thread(node: Arc<NodeShared>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new().name("redrain-signals".into()).spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                crate::overload::reload::reload(&node);
                continue;
            }
            if node.shutdown.swap(true, Ordering::Relaxed) {
                log::warn!("second signal {sig}: exiting without drain");
                std::process::exit(130);
            }
            log::info!("signal {sig}: draining (stop accepting, tell sessions, flush)");
        }
    })?;
    Ok(())
}

/// A build without the `profiling` feature has no profiler: asking for one is
/// an error at start-up, not a silent no-op.
#[cfg(not(feature = "profiling"))]
fn spawn_profiler(p: ProfileRequest, _node: Arc<NodeShared>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    bail!(
        "--profile {}: this redrain was built without the `profiling` feature (rebuild with default features)",
        p.svg_path.display()
    )
}

#[cfg(feature = "profiling")]
fn spawn_profiler(p: ProfileRequest, node: Arc<NodeShared>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    Ok(std::thread::spawn(move || {
        let wait = |d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until && !node.shutting_down() {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait(p.delay);
        let guard = match pprof::ProfilerGuardBuilder::default()
            .frequency(999)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
        {
            Ok(g) => g,
            Err(e) => return log::warn!("profiler could not start: {e}"),
        };
        log::info!("profiling to {}", p.svg_path.display());
        wait(p.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        let result = guard.report().build().map_err(|e| e.to_string()).and_then(|report| {
            let file = std::fs::File::create(&p.svg_path).map_err(|e| e.to_string())?;
            report.flamegraph(file).map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => log::info!("flamegraph written to {}", p.svg_path.display()),
            Err(e) => log::warn!("flamegraph failed: {e}"),
        }
    }))
}

fn admin_handler(node: Arc<NodeShared>) -> AdminHandler {
    Arc::new(move |req: &AdminRequest| {
        if req.path.starts_with(redrain_net::admin::PROTECTED_PREFIX) {
            return crate::overload::admin::handle(&node, req);
        }
        if req.method != AdminMethod::Read {
            return AdminResponse::text(405, "method not allowed\n");
        }
        read_only(&node, &req.path)
    })
}

/// Generates the dev admin token or reads the configured ones (current, previous).
pub(crate) fn load_admin_tokens(config: &Config) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let parse = |hex_text: &str, what: &str| hex::decode(hex_text.trim()).with_context(|| format!("{what}: not hex"));
    let current = match &config.admin_token_hex {
        Some(t) => parse(t, "admin_token_hex")?,
        None => {
            let path = crate::overload::admin::dev_token_path(&config.data_dir);
            match std::fs::read_to_string(&path) {
                Ok(text) => parse(&text, &path.display().to_string())?,
                Err(_) => {
                    let token = create_secret_file(&path, 32)?;
                    log::warn!(
                        "created development admin token {} (set admin_token_hex in production)",
                        path.display()
                    );
                    token
                }
            }
        }
    };
    let previous =
        config.admin_token_previous_hex.as_deref().map(|t| parse(t, "admin_token_previous_hex")).transpose()?;
    Ok((current, previous))
}

/// The open (token-free) read-only endpoints.
fn read_only(node: &Arc<NodeShared>, path: &str) -> AdminResponse {
    match path {
        "/metrics" => {
            let mut body = String::with_capacity(32 * 1024);
            let cores: Vec<&CoreMetrics> = node.metrics.iter().collect();
            let rain: Vec<&crate::rain::metrics::RainMetrics> = node.metrics.iter().map(|m| &m.rain).collect();
            let figures = ProcessFigures {
                resident_bytes: metrics::resident_bytes(),
                open_fds: metrics::open_fds(),
                fd_limit: node.fd_limit,
                cores: node.cores,
                shutting_down: node.shutting_down(),
                cpu_seconds: metrics::process_cpu_seconds(),
            };
            metrics::render_prometheus(&cores, figures, &mut body);
            metrics::render_thread_cpu(&metrics::thread_cpu_seconds(), &mut body);
            let timeline: Vec<_> = node.metrics.iter().map(|m| &m.timeline).collect();
            crate::timeline::metrics::render(&timeline, &mut body);
            let lucky: Vec<_> = node.metrics.iter().map(|m| &m.handoff_lucky).collect();
            crate::handoff::metrics::render_lucky(&lucky, &mut body);
            if node.rain.is_some() {
                crate::rain::metrics::render(&rain, &mut body);
                let handoff: Vec<_> = node.metrics.iter().map(|m| &m.handoff).collect();
                let (sink, now_ms) = (node.config.handoff_sink.name(), node.clock().unix_ms);
                crate::handoff::metrics::render(&handoff, sink, now_ms, &mut body);
            }
            crate::overload::admin::render_metrics(node, &mut body);
            AdminResponse { status: 200, content_type: "text/plain; version=0.0.4", body }
        }
        "/handoff" => {
            // The open queue's consumers run only with an event; the lucky ones always.
            let handoff: Vec<_> =
                if node.rain.is_some() { node.metrics.iter().map(|m| &m.handoff).collect() } else { Vec::new() };
            let lucky: Vec<_> = node.metrics.iter().map(|m| &m.handoff_lucky).collect();
            let (sink, now_ms) = (node.config.handoff_sink.name(), node.clock().unix_ms);
            let body = crate::handoff::metrics::status_json(&handoff, &lucky, sink, now_ms);
            AdminResponse { status: 200, content_type: "application/json", body }
        }
        "/healthz" if node.shutting_down() => {
            AdminResponse { status: 503, content_type: "text/plain", body: "draining\n".into() }
        }
        "/healthz" if node.switches.snapshot().1.draining => {
            AdminResponse { status: 503, content_type: "text/plain", body: "draining (operator)\n".into() }
        }
        "/healthz" => AdminResponse { status: 200, content_type: "text/plain", body: "ok\n".into() },
        _ => AdminResponse { status: 404, content_type: "text/plain", body: "not found\n".into() },
    }
}

async fn core_main(id: usize, node: Arc<NodeShared>, setup: CoreSetup) -> anyhow::Result<()> {
    let (state, files) = match (setup.rain, node.rain.clone()) {
        (Some((recovery, dispenser)), Some(shared)) => {
            let files = shared.event.files_by_core[id].iter().map(|f| f.path.clone()).collect();
            let mut state = ShardState::new(id, node.cores, Some(shared), Some(dispenser));
            for packet in recovery.opened {
                state.recover_open(packet);
            }
            (state, files)
        }
        _ => (ShardState::new(id, node.cores, None, None), Vec::new()),
    };
    let mut state = state;
    let mut timelines = crate::timeline::Timelines::with_frame_limit(
        id,
        node.cores,
        node.config.node_id,
        node.config.timeline.clone(),
        redrain_net::time::now_unix_ms(),
        node.config.frame_bytes_max,
    );
    timelines.set_rate_limits(crate::timeline::UserRateLimits::from_config(&node.config));
    state.set_timelines(timelines);
    let core = Rc::new(Core::new(id, node.clone(), state));
    if node.config.net_driver == crate::config::NetDriver::Ring {
        let config = crate::shard::netring::NetRingConfig {
            entries: node.config.net_ring_entries,
            buffers: node.config.net_recv_buffers,
            buffer_bytes: node.config.net_recv_buffer_bytes,
            batch_window: Duration::from_micros(u64::from(node.config.net_batch_window_us)),
        };
        match crate::shard::netring::NetRing::new(config) {
            Ok(ring) => {
                if id == 0 {
                    log::info!(
                        "network: ring driver on every core ({} x {} B receive buffers, batch window {} us)",
                        config.buffers,
                        config.buffer_bytes,
                        config.batch_window.as_micros()
                    );
                }
                let ring = Rc::new(ring);
                let _ = core.net.set(ring.clone());
                glommio::spawn_local(ring.run()).detach();
            }
            Err(e) => log::warn!("core {id}: network ring unavailable ({e}); reading sockets through glommio"),
        }
    }
    crate::timeline::storage::open_on_core(&core).await?;
    if let Some(sink) = setup.lucky_sink {
        if let Some(t) = core.timeline_storage.get() {
            t.hold_for_lucky_consumer();
        }
        // Off the request path, with the same small share as the open queue's consumer.
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(HANDOFF_SHARES),
            glommio::Latency::NotImportant,
            "handoff-lucky",
        );
        let bounds = crate::handoff::ConsumerBounds::from_config(&node.config);
        glommio::spawn_local_into(crate::handoff::consumer::run_lucky(core.clone(), sink, bounds), queue)
            .map_err(|e| anyhow::anyhow!("core {id}: starting the lucky share consumer: {e}"))?
            .detach();
    }
    // Operator switches: core 0 restores them from their table before any core accepts
    // (every node: the timelines' rate switches matter without an event too).
    {
        if id == 0 {
            if let Err(e) = crate::overload::persist::restore(&core, &node.config.data_dir).await {
                node.shutdown.store(true, Ordering::Relaxed);
                return Err(e);
            }
        } else {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !node.switches.is_restored() && Instant::now() < deadline && !node.shutting_down() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    if node.rain.is_some() {
        let peers = match node.config.opens_replica_peers.as_slice() {
            [a, b] => Some(crate::shard::storage::OpenQueuePeers {
                node_id: node.config.node_id,
                peers: [*a, *b],
                commit_timeout: Duration::from_millis(node.config.opens_replica_commit_timeout_ms),
            }),
            _ => None,
        };
        let storage = CoreStorage::open(&core, &node.config.data_dir, rain_log_config(), files, peers).await?;
        let _ = core.storage.set(storage);
        core.housekeeping(false);
        if let Some(sink) = setup.sink {
            // Its own task queue with a small share: under load the consumer yields the
            // core to the connections and still drains (the queue has its bound behind it).
            let queue = glommio::executor().create_task_queue(
                glommio::Shares::Static(HANDOFF_SHARES),
                glommio::Latency::NotImportant,
                "handoff",
            );
            let bounds = crate::handoff::ConsumerBounds::from_config(&node.config);
            glommio::spawn_local_into(crate::handoff::consumer::run(core.clone(), sink, bounds), queue)
                .map_err(|e| anyhow::anyhow!("core {id}: starting the hand-off consumer: {e}"))?
                .detach();
        }
    }
    core.spawn_handoff_receivers(setup.receivers);
    core.connect_doorbells(setup.senders).await;
    let mut accept_tasks =
        vec![glommio::spawn_local(accept::accept_loop(core.clone(), listener::into_glommio(setup.plain), false))];
    if let Some(tls) = setup.tls {
        accept_tasks.push(glommio::spawn_local(accept::accept_loop(core.clone(), listener::into_glommio(tls), true)));
    }

    let mut tick = 0u32;
    while !node.shutting_down() {
        glommio::timer::sleep(HOUSEKEEPING_TICK).await;
        tick = tick.wrapping_add(1);
        // Once a second: session timeouts, exact cursors, storage figures.
        core.housekeeping(tick.is_multiple_of(SWEEP_EVERY_TICKS));
    }

    // Drain: stop accepting (dropping a task cancels it and closes its
    // listener), tell every session, wait for them to flush and close.
    drop(accept_tasks);
    core.kick_all(ErrorCode::ShuttingDown);
    let deadline = Instant::now() + Duration::from_millis(u64::from(node.config.shutdown_drain_ms));
    while core.connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        core.kick_all(ErrorCode::ShuttingDown);
    }
    if core.connections() > 0 {
        log::warn!("core {id}: {} connections still open after the drain deadline", core.connections());
    }
    // Exact cursors, so the next start skips nothing; wait (bounded) for them to be durable.
    core.housekeeping(true);
    if let Some(storage) = core.storage.get() {
        let deadline = Instant::now() + Duration::from_millis(1_000);
        while storage.cursors.pending_appends() + storage.opens().pending_appends() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(())
}
