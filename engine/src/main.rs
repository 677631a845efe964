//! The `redrain` binary: `serve` runs the node; the other subcommands are the
//! operator's tools (tokens, host tuning).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use redrain_engine::auth::{now_unix_s, TokenClaims};
use redrain_engine::config::Config;
use redrain_engine::node;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "redrain", version, about = "Thread-per-core io_uring access node for red-packet rain and timelines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (embedded defaults when given no arguments).
    Serve(Box<ServeArgs>),
    /// Mint a login token from the configured auth secret.
    Token(TokenArgs),
    /// Check (and optionally apply) host settings for a target session count.
    Tune(redrain_tuning::TuneArgs),
    /// Red-packet ticket preparation (plan, gen, verify, reconcile, keyring, dump).
    Tickets(redrain_engine::tickets::cli::TicketsArgs),
    /// Peer-park replicas: serve, export, fetch and check a node's replicated logs.
    Replica(redrain_storage::replica_cli::ReplicaArgs),
    /// The rain's durable streams: export the open queue as NDJSON for reconciliation.
    Rain(RainArgs),
    /// The payment hand-off of a running node.
    Handoff(HandoffArgs),
    /// Operator switches of a running node (the admin API; needs the admin token).
    Admin(AdminArgs),
}

#[derive(Args, Debug)]
struct AdminArgs {
    #[command(flatten)]
    base: ConfigArgs,
    /// The node's admin endpoint.
    #[arg(long, env = "REDRAIN_ADMIN_LISTEN", default_value = "127.0.0.1:7080")]
    admin: SocketAddr,
    /// Admin token as hex [default: admin_token_hex of the config, or <data dir>/admin.token].
    #[arg(long, env = "REDRAIN_ADMIN_TOKEN")]
    token: Option<String>,
    /// Who is changing the switch (goes into the node's audit log).
    #[arg(long, env = "USER", default_value = "operator")]
    operator: String,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Switches, the version each core runs with, degrade levels, recent changes.
    Status,
    /// Answer shakes with Paused (opens go on).
    Pause,
    /// Undo pause.
    Resume,
    /// Set the node's issuance quota (tickets per second, all cores).
    Quota { per_s: u64 },
    /// Hold the degrade level at least at L (0 = normal, 4 = top).
    Degrade { level: u8 },
    /// Refuse tickets under ticket key KEY (at open, and never issue them).
    Blacklist { key: u16 },
    /// Take KEY off the operator blacklist.
    Whitelist { key: u16 },
    /// Issue failed peer NODE's files (applies at the next start).
    Adopt { node: u16 },
    /// Refuse new logins and report 503 on /healthz so the balancer moves users away.
    Drain,
    /// Set the per-user message rate (Send, lucky packets, read markers), per second.
    MessageRate { per_s: u32 },
    /// Set the per-user sync rate, per second.
    SyncRate { per_s: u32 },
}

fn admin(args: AdminArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let token = match args.token.clone() {
        Some(t) => t,
        None => {
            let config = load_config(&args.base)?;
            match config.admin_token_hex {
                Some(t) => t,
                None => {
                    let path = redrain_engine::overload::admin::dev_token_path(&config.data_dir);
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading the admin token {} (or pass --token)", path.display()))?
                }
            }
        }
    };
    let (method, path) = match args.command {
        AdminCommand::Status => ("GET", "/admin/status".to_string()),
        AdminCommand::Pause => ("POST", "/admin/pause".into()),
        AdminCommand::Resume => ("POST", "/admin/resume".into()),
        AdminCommand::Quota { per_s } => ("POST", format!("/admin/quota/{per_s}")),
        AdminCommand::Degrade { level } => ("POST", format!("/admin/degrade/{level}")),
        AdminCommand::Blacklist { key } => ("POST", format!("/admin/blacklist/{key}")),
        AdminCommand::Whitelist { key } => ("POST", format!("/admin/whitelist/{key}")),
        AdminCommand::Adopt { node } => ("POST", format!("/admin/adopt/{node}")),
        AdminCommand::Drain => ("POST", "/admin/drain".into()),
        AdminCommand::MessageRate { per_s } => ("POST", format!("/admin/messages_per_user_per_s/{per_s}")),
        AdminCommand::SyncRate { per_s } => ("POST", format!("/admin/syncs_per_user_per_s/{per_s}")),
    };
    let timeout = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&args.admin, timeout)
        .with_context(|| format!("connecting to the admin endpoint {}", args.admin))?;
    s.set_read_timeout(Some(timeout))?;
    let operator: String = args.operator.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nX-Operator: {operator}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        args.admin,
        token.trim()
    )?;
    let mut text = String::new();
    s.take(1 << 20).read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status_line = head.lines().next().unwrap_or("");
    print!("{body}");
    if !status_line.starts_with("HTTP/1.1 2") {
        anyhow::bail!("{}{path}: {status_line}", args.admin);
    }
    Ok(())
}

#[derive(Args, Debug)]
struct HandoffArgs {
    #[command(subcommand)]
    command: HandoffCommand,
}

#[derive(Subcommand, Debug)]
enum HandoffCommand {
    /// Print the hand-off's depth, lag and last error per core (the admin endpoint's /handoff).
    Status {
        /// The node's admin endpoint.
        #[arg(long, env = "REDRAIN_ADMIN_LISTEN", default_value = "127.0.0.1:7080")]
        admin: SocketAddr,
    },
}

fn handoff(args: HandoffArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    match args.command {
        HandoffCommand::Status { admin } => {
            let timeout = Duration::from_secs(5);
            let mut s = std::net::TcpStream::connect_timeout(&admin, timeout)
                .with_context(|| format!("connecting to the admin endpoint {admin}"))?;
            s.set_read_timeout(Some(timeout))?;
            write!(s, "GET /handoff HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.take(1 << 20).read_to_string(&mut text)?;
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
            if !head.starts_with("HTTP/1.1 200") {
                anyhow::bail!("{admin}/handoff: {}", head.lines().next().unwrap_or(""));
            }
            print!("{body}");
            Ok(())
        }
    }
}

#[derive(Args, Debug)]
struct RainArgs {
    #[command(subcommand)]
    command: RainCommand,
}

#[derive(Subcommand, Debug)]
enum RainCommand {
    /// Print every opened packet of a (stopped or running) node's data dir as NDJSON,
    /// the input of `redrain tickets reconcile --opened`.
    ExportOpened {
        #[command(flatten)]
        base: ConfigArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn rain(args: RainArgs) -> anyhow::Result<()> {
    match args.command {
        RainCommand::ExportOpened { base, out } => {
            let config = load_config(&base)?;
            let count = match out {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(
                        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                    );
                    let n = redrain_engine::rain::export::export_opened(&config.data_dir, &mut file)?;
                    std::io::Write::flush(&mut file)?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = std::io::BufWriter::new(stdout.lock());
                    let n = redrain_engine::rain::export::export_opened(&config.data_dir, &mut lock)?;
                    std::io::Write::flush(&mut lock)?;
                    n
                }
            };
            eprintln!("exported {count} opened packets from {}", config.data_dir.display());
            Ok(())
        }
    }
}

/// Where configuration comes from: defaults < --config file < REDRAIN_* env < flags.
#[derive(Args, Debug)]
struct ConfigArgs {
    /// TOML config file (see docs/operations.md).
    #[arg(long, env = "REDRAIN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./redrain-data].
    #[arg(long, env = "REDRAIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    base: ConfigArgs,
    /// Client port, plain TCP [default: 127.0.0.1:7000].
    #[arg(long, env = "REDRAIN_LISTEN")]
    listen: Option<SocketAddr>,
    /// TLS client port (needs --tls-cert and --tls-key).
    #[arg(long, env = "REDRAIN_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS port.
    #[arg(long, env = "REDRAIN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS port.
    #[arg(long, env = "REDRAIN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// TLS ticket key rotation period in seconds; 0 turns resumption off [default: 3600].
    #[arg(long, env = "REDRAIN_TLS_TICKET_ROTATION_S")]
    tls_ticket_rotation_s: Option<u64>,
    /// Admin HTTP endpoint for /metrics and /healthz [default: 127.0.0.1:7080].
    #[arg(long, env = "REDRAIN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Cores to run on [default: all CPUs in the affinity set].
    #[arg(long, env = "REDRAIN_CORES")]
    cores: Option<usize>,
    /// Connections one core holds at most [default: 50000, capped by the fd limit].
    #[arg(long, env = "REDRAIN_SESSIONS_PER_CORE_MAX")]
    sessions_per_core_max: Option<usize>,
    /// Largest frame in bytes, including the length prefix [default: 65536].
    #[arg(long, env = "REDRAIN_FRAME_BYTES_MAX")]
    frame_bytes_max: Option<u32>,
    /// Heartbeat interval advertised to clients, ms [default: 30000].
    #[arg(long, env = "REDRAIN_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u32>,
    /// Close sessions silent for this long, ms [default: 90000].
    #[arg(long, env = "REDRAIN_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u32>,
    /// Close connections not logged in within this time, ms [default: 10000].
    #[arg(long, env = "REDRAIN_LOGIN_TIMEOUT_MS")]
    login_timeout_ms: Option<u32>,
    /// Close clients that do not drain a write within this time, ms [default: 10000].
    #[arg(long, env = "REDRAIN_WRITE_TIMEOUT_MS")]
    write_timeout_ms: Option<u32>,
    /// io_uring registered buffer bytes per core, capped to fit RLIMIT_MEMLOCK [default: 1048576].
    #[arg(long, env = "REDRAIN_IO_MEMORY_BYTES_PER_CORE")]
    io_memory_bytes_per_core: Option<usize>,
    /// How client sockets are read: ring (the core's own io_uring, multishot receives) or glommio [default: ring].
    #[arg(long, env = "REDRAIN_NET_DRIVER")]
    net_driver: Option<redrain_engine::config::NetDriver>,
    /// Ring driver: while requests keep coming, reap them this often, µs (0: whenever idle) [default: 250].
    #[arg(long, env = "REDRAIN_NET_BATCH_WINDOW_US")]
    net_batch_window_us: Option<u32>,
    /// Ring driver: receive buffers per core, a power of two [default: 512].
    #[arg(long, env = "REDRAIN_NET_RECV_BUFFERS")]
    net_recv_buffers: Option<u16>,
    /// Graceful drain deadline on SIGTERM/SIGINT, ms [default: 5000].
    #[arg(long, env = "REDRAIN_SHUTDOWN_DRAIN_MS")]
    shutdown_drain_ms: Option<u32>,
    /// Ticket directory of the event (needs --keyring) [default: a demo event in the data dir].
    #[arg(long, env = "REDRAIN_TICKETS", requires = "keyring")]
    tickets: Option<PathBuf>,
    /// Keyring of the event.
    #[arg(long, env = "REDRAIN_KEYRING", requires = "tickets")]
    keyring: Option<PathBuf>,
    /// Generate and serve a demo event when no --tickets is given [default: true].
    #[arg(long, env = "REDRAIN_DEMO_EVENT")]
    demo_event: Option<bool>,
    /// This node's index in the event's fleet [default: 0].
    #[arg(long, env = "REDRAIN_NODE_ID")]
    node_id: Option<u16>,
    /// Issue failed peer node M's ticket files from the next slot on.
    #[arg(long, env = "REDRAIN_ADOPT_NODE")]
    adopt_node: Option<u16>,
    /// Unix time (s) the event's first slot starts [default: when the node starts].
    #[arg(long, env = "REDRAIN_EVENT_START_UNIX_S")]
    event_start_unix_s: Option<u64>,
    /// Shift the rain's clock by this many ms (tests) [default: 0].
    #[arg(long, env = "REDRAIN_CLOCK_OFFSET_MS", allow_hyphen_values = true)]
    clock_offset_ms: Option<i64>,
    /// Minimum interval between two shakes of a user, ms [default: 1000].
    #[arg(long, env = "REDRAIN_SHAKE_INTERVAL_MS")]
    shake_interval_ms: Option<u32>,
    /// Tickets the node may issue per second, all cores [default: 200000].
    #[arg(long, env = "REDRAIN_ISSUANCE_QUOTA_PER_S")]
    issuance_quota_per_s: Option<u64>,
    /// Messages one user may send per second, sustained [default: 5].
    #[arg(long, env = "REDRAIN_MESSAGES_PER_USER_PER_S")]
    messages_per_user_per_s: Option<u32>,
    /// Syncs one user may make per second, sustained [default: 20].
    #[arg(long, env = "REDRAIN_SYNCS_PER_USER_PER_S")]
    syncs_per_user_per_s: Option<u32>,
    /// Records reserved per issuance-cursor record (most a crash skips per file) [default: 4096].
    #[arg(long, env = "REDRAIN_CURSOR_STEP")]
    cursor_step: Option<u64>,
    /// Payment hand-off sink: file or nats [default: file].
    #[arg(long, env = "REDRAIN_HANDOFF_SINK")]
    handoff_sink: Option<redrain_engine::config::HandoffSinkKind>,
    /// Directory of the file sink's NDJSON files [default: <data dir>/handoff].
    #[arg(long, env = "REDRAIN_HANDOFF_DIR")]
    handoff_dir: Option<PathBuf>,
    /// Most opens per hand-off batch [default: 4096].
    #[arg(long, env = "REDRAIN_HANDOFF_BATCH_RECORDS_MAX")]
    handoff_batch_records_max: Option<usize>,
    /// Longest wait between two delivery attempts, ms [default: 5000].
    #[arg(long, env = "REDRAIN_HANDOFF_RETRY_BACKOFF_MAX_MS")]
    handoff_retry_backoff_max_ms: Option<u64>,
    /// The file sink rotates at this many bytes [default: 67108864].
    #[arg(long, env = "REDRAIN_HANDOFF_FILE_BYTES_MAX")]
    handoff_file_bytes_max: Option<u64>,
    /// The file sink rotates files this old, s [default: 60].
    #[arg(long, env = "REDRAIN_HANDOFF_FILE_AGE_MAX_S")]
    handoff_file_age_max_s: Option<u64>,
    /// NATS server URLs, comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_URLS", value_delimiter = ',')]
    handoff_nats_urls: Option<Vec<String>>,
    /// JetStream stream of the opens [default: REDRAIN_OPENS].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_STREAM")]
    handoff_nats_stream: Option<String>,
    /// Subject the opens are published on [default: redrain.opens].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_SUBJECT")]
    handoff_nats_subject: Option<String>,
    /// Create the stream when missing [default: false: refuse to start].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_CREATE_STREAM")]
    handoff_nats_create_stream: Option<bool>,
    /// NATS credentials file.
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_CREDENTIALS")]
    handoff_nats_credentials: Option<PathBuf>,
    /// PEM CA certificates for the NATS servers' TLS.
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_TLS_CA")]
    handoff_nats_tls_ca: Option<PathBuf>,
    /// Require TLS to the NATS servers [default: false].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_TLS_REQUIRED")]
    handoff_nats_tls_required: Option<bool>,
    /// Bound of the NATS connection attempt, ms [default: 5000].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_CONNECT_TIMEOUT_MS")]
    handoff_nats_connect_timeout_ms: Option<u64>,
    /// Wait for a JetStream publish ack before the attempt fails, ms [default: 5000].
    #[arg(long, env = "REDRAIN_HANDOFF_NATS_ACK_TIMEOUT_MS")]
    handoff_nats_ack_timeout_ms: Option<u64>,
    /// Two peers holding copies of the open queue (`redrain replica serve`), comma-separated;
    /// opens are then answered on 2 of 3 copies [default: none, local only].
    #[arg(long, env = "REDRAIN_OPENS_REPLICA_PEERS", value_delimiter = ',')]
    opens_replica_peers: Option<Vec<SocketAddr>>,
    /// How long an open waits for a peer's copy before it is answered Busy, ms [default: 5000].
    #[arg(long, env = "REDRAIN_OPENS_REPLICA_COMMIT_TIMEOUT_MS")]
    opens_replica_commit_timeout_ms: Option<u64>,
    /// Write a CPU flamegraph (SVG) of the node to this file.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Seconds after start-up before profiling begins.
    #[arg(long, default_value_t = 0, requires = "profile")]
    profile_delay_s: u64,
    /// Seconds to profile [default: until shutdown].
    #[arg(long, requires = "profile")]
    profile_duration_s: Option<u64>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    base: ConfigArgs,
    /// User id.
    #[arg(long)]
    user: u64,
    /// Device id.
    #[arg(long, default_value_t = 0)]
    device: u32,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
}

fn load_config(base: &ConfigArgs) -> anyhow::Result<Config> {
    let mut config = match &base.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = &base.data_dir {
        config.data_dir = d.clone();
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut c = load_config(&args.base)?;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { c.$field = v; } )* };
    }
    set!(
        listen,
        admin_listen,
        sessions_per_core_max,
        frame_bytes_max,
        heartbeat_interval_ms,
        idle_timeout_ms,
        login_timeout_ms,
        write_timeout_ms,
        io_memory_bytes_per_core,
        net_driver,
        net_batch_window_us,
        net_recv_buffers,
        shutdown_drain_ms,
        node_id,
        demo_event,
        clock_offset_ms,
        shake_interval_ms,
        opens_replica_commit_timeout_ms,
        issuance_quota_per_s,
        messages_per_user_per_s,
        syncs_per_user_per_s,
        cursor_step,
        handoff_sink,
        handoff_batch_records_max,
        handoff_retry_backoff_max_ms,
        handoff_file_bytes_max,
        handoff_file_age_max_s,
        handoff_nats_urls,
        handoff_nats_stream,
        handoff_nats_subject,
        handoff_nats_create_stream,
        handoff_nats_tls_required,
        handoff_nats_connect_timeout_ms,
        handoff_nats_ack_timeout_ms
    );
    if args.handoff_dir.is_some() {
        c.handoff_dir = args.handoff_dir.clone();
    }
    if args.handoff_nats_credentials.is_some() {
        c.handoff_nats_credentials = args.handoff_nats_credentials.clone();
    }
    if args.handoff_nats_tls_ca.is_some() {
        c.handoff_nats_tls_ca = args.handoff_nats_tls_ca.clone();
    }
    if let Some(peers) = args.opens_replica_peers.clone() {
        c.opens_replica_peers = peers;
    }
    if args.tickets.is_some() {
        c.tickets = args.tickets.clone();
        c.keyring = args.keyring.clone();
    }
    if args.adopt_node.is_some() {
        c.adopt_node = args.adopt_node;
    }
    if args.event_start_unix_s.is_some() {
        c.event_start_unix_s = args.event_start_unix_s;
    }
    if args.tls_listen.is_some() {
        c.tls_listen = args.tls_listen;
    }
    if args.tls_cert.is_some() {
        c.tls_cert = args.tls_cert.clone();
    }
    if args.tls_key.is_some() {
        c.tls_key = args.tls_key.clone();
    }
    if let Some(s) = args.tls_ticket_rotation_s {
        c.tls_ticket_rotation_s = s;
    }
    if args.cores.is_some() {
        c.cores = args.cores;
    }
    let profile = args.profile.map(|svg_path| node::ProfileRequest {
        svg_path,
        delay: Duration::from_secs(args.profile_delay_s),
        duration: args.profile_duration_s.map(Duration::from_secs),
    });
    node::run(c, profile)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = load_config(&args.base)?;
    let keys = node::load_keys(&config).context("loading the auth secret")?;
    let token = keys.mint(TokenClaims {
        user_id: args.user,
        device_id: args.device,
        expires_at_unix_s: now_unix_s().saturating_add(args.ttl),
    });
    println!("{}", hex::encode(token));
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(*a).map(|()| 0),
        Command::Token(a) => token(a).map(|()| 0),
        Command::Tune(a) => redrain_tuning::run(a),
        Command::Tickets(a) => redrain_engine::tickets::cli::run(a),
        Command::Replica(a) => redrain_storage::replica_cli::run(a),
        Command::Rain(a) => rain(a).map(|()| 0),
        Command::Handoff(a) => handoff(a).map(|()| 0),
        Command::Admin(a) => admin(a).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("redrain: error: {e:#}");
            std::process::exit(2);
        }
    }
}
