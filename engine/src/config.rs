//! Node configuration: embedded defaults, a TOML file, environment variables and
//! command-line flags, in increasing order of precedence.
//!
//! Every bound the node enforces lives here with its unit in its name, so an
//! operator can find and change it; `redrain serve --help` lists the flags.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Complete node configuration. Field docs double as the config file reference
/// (docs/operations.md shows a full example).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client port (plain TCP), bound on every core with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Optional TLS client port; needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS port.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS port.
    pub tls_key: Option<PathBuf>,
    /// TLS session resumption: tickets are sealed under a key that rotates every
    /// this many seconds and are honoured for one to two periods; 0 turns
    /// resumption off (every reconnect is a full handshake).
    pub tls_ticket_rotation_s: u64,
    /// Admin HTTP endpoint (`/metrics`, `/healthz`); keep it on loopback.
    pub admin_listen: SocketAddr,
    /// Where the node keeps its state (and the development auth secret).
    pub data_dir: PathBuf,
    /// Number of cores to run on (default: every CPU in the affinity set).
    pub cores: Option<usize>,
    /// Connections (logged in or not) one core holds at most.
    pub sessions_per_core_max: usize,
    /// Largest frame accepted, including its 4-byte length prefix.
    pub frame_bytes_max: u32,
    /// Heartbeat interval advertised to clients in HelloOk.
    pub heartbeat_interval_ms: u32,
    /// A session with no inbound frame for this long is closed.
    pub idle_timeout_ms: u32,
    /// A connection that has not logged in within this time is closed.
    pub login_timeout_ms: u32,
    /// A write to a client that does not drain within this time closes it.
    pub write_timeout_ms: u32,
    /// Hex auth secret shared with the auth service (>= 16 bytes). When unset, a
    /// development secret is created in `data_dir/auth.secret` on first start.
    pub auth_secret_hex: Option<String>,
    /// Previous secret, still accepted during rotation.
    pub auth_secret_previous_hex: Option<String>,
    /// io_uring registered buffer memory per core (counts against RLIMIT_MEMLOCK
    /// three times per core: glommio registers it in each of its rings).
    pub io_memory_bytes_per_core: usize,
    /// Capacity of each (source core, destination core) hand-off queue.
    pub handoff_queue_capacity: usize,
    /// Hand-offs a core takes from one queue per wake-up before yielding.
    pub handoff_batch_max: usize,
    /// How long shutdown waits for sessions to drain before exiting anyway.
    pub shutdown_drain_ms: u32,
    /// Ticket directory of the event (manifest + files). When unset and `demo_event` is
    /// on, a demo event is generated in `data_dir/demo-event` on first start.
    pub tickets: Option<PathBuf>,
    /// Keyring of the event (kept apart from the tickets).
    pub keyring: Option<PathBuf>,
    /// Generate and serve a small demo event when no ticket directory is given.
    pub demo_event: bool,
    /// This node's index in the event's fleet.
    pub node_id: u16,
    /// Issue a failed peer's files from the next slot on (file-level resume).
    pub adopt_node: Option<u16>,
    /// Unix time of the first slot's start; unset: the node's start (demo, tests).
    pub event_start_unix_s: Option<u64>,
    /// Shifts the rain's clock (tests jump into a slot).
    pub clock_offset_ms: i64,
    /// Hex AES-256 key that seals tickets (64 hex chars). When unset, a key is created
    /// in `data_dir/seal.key` on first start.
    pub seal_key_hex: Option<String>,
    /// Minimum interval between two shakes of one user (told to clients in ShakeOk).
    pub shake_interval_ms: u32,
    /// A sealed ticket can be opened for this long after it was won.
    pub sealed_ticket_ttl_s: u64,
    /// Tickets the whole node may issue per second (split evenly over its cores).
    pub issuance_quota_per_s: u64,
    /// Opens waiting for durability per core; more are answered Busy.
    pub opens_pending_max: usize,
    /// Users a core remembers the last shake of (within one interval).
    pub shake_users_max: usize,
    /// Records reserved per issuance-cursor record: the most a crash can skip per file.
    pub cursor_step: u64,
    /// Ticket records read ahead per file.
    pub ticket_prefetch_records: usize,
    /// The two peers (`redrain replica serve`, one in each other park) that hold copies of
    /// the open queue; an open is answered when its record is on 2 of 3 copies. Empty:
    /// the open queue is local (durable on this node's disk).
    pub opens_replica_peers: Vec<SocketAddr>,
    /// How long an open waits for a peer's copy before it is answered Busy (its record
    /// stays in the queue and is confirmed when a peer returns).
    pub opens_replica_commit_timeout_ms: u64,
    /// Where the payment hand-off drains the open queue: `file` or `nats`.
    pub handoff_sink: HandoffSinkKind,
    /// Directory of the `file` sink's NDJSON files [default: `data_dir/handoff`].
    pub handoff_dir: Option<PathBuf>,
    /// Most opens handed to the sink in one batch.
    pub handoff_batch_records_max: usize,
    /// First wait after a failed delivery (doubles per failure)...
    pub handoff_retry_backoff_min_ms: u64,
    /// ...up to this.
    pub handoff_retry_backoff_max_ms: u64,
    /// The `file` sink starts a new file once the active one holds this many bytes...
    pub handoff_file_bytes_max: u64,
    /// ...or is this old (checked before each batch).
    pub handoff_file_age_max_s: u64,
    /// NATS server URLs (any of them; the client fails over).
    pub handoff_nats_urls: Vec<String>,
    /// JetStream stream the opens go to.
    pub handoff_nats_stream: String,
    /// Subject the opens are published on (the stream must take it).
    pub handoff_nats_subject: String,
    /// Create the stream when it is missing; otherwise the node refuses to start.
    pub handoff_nats_create_stream: bool,
    /// Duplicate window of a stream the node creates: a redelivery within it is dropped.
    pub handoff_nats_duplicate_window_s: u64,
    /// NATS credentials file (JWT + nkey seed).
    pub handoff_nats_credentials: Option<PathBuf>,
    /// PEM CA certificates to trust for the NATS servers' TLS.
    pub handoff_nats_tls_ca: Option<PathBuf>,
    /// Require TLS to the NATS servers.
    pub handoff_nats_tls_required: bool,
    /// Bound of the start-up connection attempt (and of each reconnect attempt).
    pub handoff_nats_connect_timeout_ms: u64,
    /// How long a publish waits for JetStream's ack before the attempt counts as failed.
    pub handoff_nats_ack_timeout_ms: u64,

    // Overload protection, quotas and the admin API (docs/operations.md, "Overload").
    /// A shake that waited longer than this since its bytes were read is answered Busy at
    /// once (logins and syncs too; opens only at 100x, when their caller has given up).
    pub queue_delay_max_us: u64,
    /// Retry-after of a rejected request at degrade level 0 (doubles per level).
    pub busy_retry_after_ms: u32,
    /// Requests of one connection waiting for an answer at most; more are answered
    /// PipelineFull.
    pub pipelined_requests_max: usize,
    /// Bytes of responses one connection may have produced before they are written; the
    /// rest of its input waits until they are.
    pub conn_output_bytes_max: usize,
    /// Messages one user may send per second, sustained (a token bucket shared by Send,
    /// lucky packets and SyncAck read markers; burst: `messages_per_user_burst`). Beyond it
    /// the request is answered RateLimited with the bucket's retry-after. Changeable at run
    /// time: `redrain admin message-rate N`.
    pub messages_per_user_per_s: u32,
    /// Syncs one user (all its devices) may make per second, sustained (burst:
    /// `syncs_per_user_burst`). Changeable at run time: `redrain admin sync-rate N`.
    pub syncs_per_user_per_s: u32,
    /// Hex admin token (>= 16 bytes) for the switch endpoints. When unset, a development
    /// token is created in `data_dir/admin.token` on first start.
    pub admin_token_hex: Option<String>,
    /// Previous admin token, still accepted during rotation.
    pub admin_token_previous_hex: Option<String>,
    /// The file this configuration was read from (SIGHUP reads it again); not a key.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Timelines: inboxes, sync, groups, lucky packets (`[timeline]` table).
    pub timeline: crate::timeline::TimelineConfig,
    /// How client sockets are read: `ring` (the core's own io_uring: multishot receives
    /// into a provided-buffer ring, reaped in batches) or `glommio` (glommio's streams).
    pub net_driver: NetDriver,
    /// While requests keep coming, the `ring` driver reaps them this often, in µs,
    /// instead of waking the core per request (0: whenever the core is idle).
    pub net_batch_window_us: u32,
    /// Receive buffers per core in the provided-buffer ring (power of two).
    pub net_recv_buffers: u16,
    /// Bytes per receive buffer.
    pub net_recv_buffer_bytes: u32,
    /// Submission queue entries of each core's network ring.
    pub net_ring_entries: u32,

    // Timelines' limits and flow control (docs/operations.md, "Timeline limits").
    /// Messages one user may send at once before `messages_per_user_per_s` paces them.
    pub messages_per_user_burst: u32,
    /// Syncs one user may make at once before `syncs_per_user_per_s` paces them.
    pub syncs_per_user_burst: u32,
    /// Users one core keeps a rate bucket for (per kind); idle users (full buckets) are
    /// forgotten first, and beyond it a new user's request is answered Busy.
    pub rate_users_per_core_max: usize,
    /// Bytes of pushes (Notify) and deferred answers one connection may have waiting for
    /// its task (a client that does not read); beyond it the connection is closed as a
    /// slow reader (`Closing(SlowReader)`). Notifies are coalesced: only the latest waits.
    pub conn_pushed_bytes_max: usize,
}

/// How client sockets are read (see `Config::net_driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetDriver {
    Ring,
    Glommio,
}

impl std::str::FromStr for NetDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(NetDriver::Ring),
            "glommio" => Ok(NetDriver::Glommio),
            other => Err(format!("unknown network driver {other:?} (ring or glommio)")),
        }
    }
}

/// The hand-off sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoffSinkKind {
    /// Rotated NDJSON files in the data dir (default).
    File,
    /// A NATS JetStream stream.
    Nats,
}

impl HandoffSinkKind {
    pub fn name(self) -> &'static str {
        match self {
            HandoffSinkKind::File => "file",
            HandoffSinkKind::Nats => "nats",
        }
    }
}

impl std::str::FromStr for HandoffSinkKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(HandoffSinkKind::File),
            "nats" => Ok(HandoffSinkKind::Nats),
            other => Err(format!("unknown hand-off sink {other:?} (file or nats)")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7000".parse().expect("literal address"),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ticket_rotation_s: 3_600,
            admin_listen: "127.0.0.1:7080".parse().expect("literal address"),
            data_dir: PathBuf::from("./redrain-data"),
            cores: None,
            sessions_per_core_max: 50_000,
            frame_bytes_max: 64 * 1024,
            heartbeat_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            login_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            auth_secret_hex: None,
            auth_secret_previous_hex: None,
            io_memory_bytes_per_core: 1024 * 1024,
            handoff_queue_capacity: 4096,
            handoff_batch_max: 256,
            shutdown_drain_ms: 5_000,
            tickets: None,
            keyring: None,
            demo_event: true,
            node_id: 0,
            adopt_node: None,
            event_start_unix_s: None,
            clock_offset_ms: 0,
            seal_key_hex: None,
            shake_interval_ms: 1_000,
            sealed_ticket_ttl_s: 24 * 3600,
            issuance_quota_per_s: 200_000,
            opens_pending_max: 65_536,
            shake_users_max: 1_000_000,
            cursor_step: 4_096,
            ticket_prefetch_records: 4_096,
            opens_replica_peers: Vec::new(),
            opens_replica_commit_timeout_ms: 5_000,
            handoff_sink: HandoffSinkKind::File,
            handoff_dir: None,
            handoff_batch_records_max: 4_096,
            handoff_retry_backoff_min_ms: 10,
            handoff_retry_backoff_max_ms: 5_000,
            handoff_file_bytes_max: 64 << 20,
            handoff_file_age_max_s: 60,
            handoff_nats_urls: vec!["nats://127.0.0.1:4222".into()],
            handoff_nats_stream: "REDRAIN_OPENS".into(),
            handoff_nats_subject: "redrain.opens".into(),
            handoff_nats_create_stream: false,
            handoff_nats_duplicate_window_s: 120,
            handoff_nats_credentials: None,
            handoff_nats_tls_ca: None,
            handoff_nats_tls_required: false,
            handoff_nats_connect_timeout_ms: 5_000,
            handoff_nats_ack_timeout_ms: 5_000,
            timeline: crate::timeline::TimelineConfig::default(),
            net_driver: NetDriver::Ring,
            net_batch_window_us: 250,
            net_recv_buffers: 512,
            net_recv_buffer_bytes: 4096,
            net_ring_entries: 1024,
            messages_per_user_burst: 20,
            syncs_per_user_burst: 40,
            rate_users_per_core_max: 200_000,
            conn_pushed_bytes_max: 1 << 20,
            queue_delay_max_us: 50_000,
            busy_retry_after_ms: 100,
            pipelined_requests_max: 256,
            conn_output_bytes_max: 256 * 1024,
            messages_per_user_per_s: 5,
            syncs_per_user_per_s: 20,
            admin_token_hex: None,
            admin_token_previous_hex: None,
            config_file: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Reads a TOML file over the embedded defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?;
        config.config_file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Checks cross-field rules and bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.to_owned() });
        if let Err(reason) = self.timeline.validate(self.frame_bytes_max) {
            return invalid("timeline", &reason);
        }
        if self.tls_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return invalid("tls_listen", "needs tls_cert and tls_key");
        }
        if self.tls_ticket_rotation_s > redrain_net::tls_resumption::ROTATION_PERIOD_S_MAX {
            return invalid("tls_ticket_rotation_s", "must be at most 302400 (a ticket lives at most 7 days)");
        }
        if self.sessions_per_core_max == 0 {
            return invalid("sessions_per_core_max", "must be at least 1");
        }
        // The largest frame a v1 node sends is an Error with a 512-byte text
        // (530 bytes); clients are told frame_bytes_max, so it must cover that.
        if self.frame_bytes_max < 1024 || self.frame_bytes_max > redrain_net::frame::FRAME_BYTES_LIMIT {
            return invalid("frame_bytes_max", "must be within 1024..=16777216");
        }
        if self.heartbeat_interval_ms == 0 || self.idle_timeout_ms <= self.heartbeat_interval_ms {
            return invalid("idle_timeout_ms", "must exceed heartbeat_interval_ms (> 0)");
        }
        if self.login_timeout_ms == 0 || self.write_timeout_ms == 0 {
            return invalid("login_timeout_ms/write_timeout_ms", "must be positive");
        }
        if self.handoff_queue_capacity == 0 || self.handoff_batch_max == 0 {
            return invalid("handoff_queue_capacity/handoff_batch_max", "must be positive");
        }
        if self.cores == Some(0) {
            return invalid("cores", "must be at least 1");
        }
        if self.tickets.is_some() != self.keyring.is_some() {
            return invalid("tickets/keyring", "give both the ticket directory and its keyring");
        }
        if self.opens_pending_max == 0 || self.shake_users_max == 0 {
            return invalid("opens_pending_max/shake_users_max", "must be positive");
        }
        if !(1..=1 << 24).contains(&self.cursor_step) || !(1..=1 << 20).contains(&self.ticket_prefetch_records) {
            return invalid("cursor_step/ticket_prefetch_records", "must be within 1..=16777216 / 1..=1048576");
        }
        if !self.opens_replica_peers.is_empty()
            && (self.opens_replica_peers.len() != 2 || self.opens_replica_peers[0] == self.opens_replica_peers[1])
        {
            return invalid("opens_replica_peers", "give exactly two different peers (or none)");
        }
        if self.opens_replica_commit_timeout_ms == 0 {
            return invalid("opens_replica_commit_timeout_ms", "must be positive");
        }
        if !self.net_recv_buffers.is_power_of_two() || self.net_recv_buffers > 32_768 {
            return invalid("net_recv_buffers", "must be a power of two up to 32768");
        }
        if !(512..=1 << 20).contains(&self.net_recv_buffer_bytes) {
            return invalid("net_recv_buffer_bytes", "must be within 512..=1048576");
        }
        if !(64..=32_768).contains(&self.net_ring_entries) || self.net_batch_window_us > 100_000 {
            return invalid("net_ring_entries/net_batch_window_us", "need 64..=32768 entries and a window <= 100 ms");
        }
        if self.sealed_ticket_ttl_s == 0 {
            return invalid("sealed_ticket_ttl_s", "must be positive");
        }
        if !(1..=1 << 20).contains(&self.handoff_batch_records_max) {
            return invalid("handoff_batch_records_max", "must be within 1..=1048576");
        }
        if self.handoff_retry_backoff_min_ms == 0
            || self.handoff_retry_backoff_max_ms < self.handoff_retry_backoff_min_ms
        {
            return invalid("handoff_retry_backoff_min_ms/handoff_retry_backoff_max_ms", "need 0 < min <= max");
        }
        if self.handoff_file_bytes_max < 4096 || self.handoff_file_age_max_s == 0 {
            return invalid("handoff_file_bytes_max/handoff_file_age_max_s", "need >= 4096 bytes and >= 1 s");
        }
        if self.queue_delay_max_us == 0 || self.busy_retry_after_ms == 0 {
            return invalid("queue_delay_max_us/busy_retry_after_ms", "must be positive");
        }
        if !(1..=65_536).contains(&self.pipelined_requests_max) {
            return invalid("pipelined_requests_max", "must be within 1..=65536");
        }
        if !(4096..=64 << 20).contains(&self.conn_output_bytes_max) {
            return invalid("conn_output_bytes_max", "must be within 4096..=67108864");
        }
        if self.messages_per_user_per_s == 0 || self.syncs_per_user_per_s == 0 {
            return invalid("messages_per_user_per_s/syncs_per_user_per_s", "must be positive");
        }
        if let Err((field, reason)) = self.validate_timeline_flow() {
            return invalid(field, &reason);
        }
        for (field, token) in
            [("admin_token_hex", &self.admin_token_hex), ("admin_token_previous_hex", &self.admin_token_previous_hex)]
        {
            if let Some(t) = token {
                if t.trim().len() < 32 || hex::decode(t.trim()).is_err() {
                    return invalid(field, "give at least 16 bytes as hex");
                }
            }
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token_hex.is_none() {
            return invalid("admin_listen", "a non-loopback admin endpoint needs admin_token_hex");
        }
        if self.handoff_sink == HandoffSinkKind::Nats {
            if self.handoff_nats_urls.is_empty() || self.handoff_nats_urls.iter().any(|u| u.trim().is_empty()) {
                return invalid("handoff_nats_urls", "give at least one server URL");
            }
            let name_ok = |n: &str| !n.is_empty() && !n.contains(['.', ' ', '*', '>', '/', '\\']);
            if !name_ok(&self.handoff_nats_stream) {
                return invalid("handoff_nats_stream", "a stream name has no dots, spaces, wildcards or slashes");
            }
            let subject = &self.handoff_nats_subject;
            if subject.is_empty() || subject.contains([' ', '*', '>']) || subject.split('.').any(str::is_empty) {
                return invalid("handoff_nats_subject", "a literal subject (no wildcards, no empty tokens)");
            }
            if self.handoff_nats_connect_timeout_ms == 0 || self.handoff_nats_ack_timeout_ms == 0 {
                return invalid("handoff_nats_connect_timeout_ms/handoff_nats_ack_timeout_ms", "must be positive");
            }
            if self.handoff_nats_duplicate_window_s == 0 {
                return invalid("handoff_nats_duplicate_window_s", "must be positive");
            }
        }
        Ok(())
    }
}

impl Config {
    /// The timelines' rate, push and mail bounds (their own block of rules).
    fn validate_timeline_flow(&self) -> Result<(), (&'static str, String)> {
        if self.timeline.sends_per_user_per_s.is_some() {
            return Err((
                "timeline.sends_per_user_per_s",
                "was removed: set messages_per_user_per_s (and messages_per_user_burst) at the top level".into(),
            ));
        }
        if self.messages_per_user_burst == 0 || self.syncs_per_user_burst == 0 {
            return Err(("messages_per_user_burst/syncs_per_user_burst", "must be positive".into()));
        }
        if self.rate_users_per_core_max == 0 {
            return Err(("rate_users_per_core_max", "must be positive".into()));
        }
        // The largest deferred answer is a full SyncOk page (its entries and a header),
        // never more than one frame.
        let pushed_min = (self.frame_bytes_max as usize).min(self.timeline.sync_bytes_max + 1024);
        if !(pushed_min..=256 << 20).contains(&self.conn_pushed_bytes_max) {
            return Err((
                "conn_pushed_bytes_max",
                format!("must hold one full SyncOk: within {pushed_min}..=268435456"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid_and_match_the_readme() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7080");
    }

    #[test]
    fn unknown_fields_and_inconsistent_values_are_rejected() {
        assert!(toml::from_str::<Config>("listn = \"127.0.0.1:1\"").is_err());
        let c: Config = toml::from_str("tls_listen = \"127.0.0.1:7443\"").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "tls_listen", .. })));
        let c: Config = toml::from_str("idle_timeout_ms = 10\nheartbeat_interval_ms = 20").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn frame_bytes_max_is_accepted_within_1024_to_16777216_as_the_protocol_says() {
        let validate = |v: u32| Config { frame_bytes_max: v, ..Config::default() }.validate();
        for refused in [0, 512, 1023, 16_777_217, u32::MAX] {
            assert!(
                matches!(validate(refused), Err(ConfigError::Invalid { field: "frame_bytes_max", .. })),
                "{refused} must be refused"
            );
        }
        for accepted in [1024, 65_536, 16_777_216] {
            validate(accepted).unwrap();
        }
    }

    #[test]
    fn overload_bounds_and_admin_tokens_are_checked() {
        let field = |text: &str| match toml::from_str::<Config>(text).unwrap().validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{text}: expected a refusal, got {other:?}"),
        };
        assert_eq!(field("queue_delay_max_us = 0"), "queue_delay_max_us/busy_retry_after_ms");
        assert_eq!(field("pipelined_requests_max = 0"), "pipelined_requests_max");
        assert_eq!(field("conn_output_bytes_max = 10"), "conn_output_bytes_max");
        assert_eq!(field("admin_token_hex = \"abcd\""), "admin_token_hex");
        assert_eq!(field("admin_listen = \"0.0.0.0:7080\""), "admin_listen");
        let ok = "admin_listen = \"0.0.0.0:7080\"\nadmin_token_hex = \"00112233445566778899aabbccddeeff\"";
        toml::from_str::<Config>(ok).unwrap().validate().unwrap();
    }

    #[test]
    fn handoff_settings_are_bounded_and_nats_names_are_checked() {
        assert!(toml::from_str::<Config>("handoff_sink = \"kafka\"").is_err());
        let c: Config = toml::from_str("handoff_batch_records_max = 0").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "handoff_batch_records_max", .. })));
        let c: Config = toml::from_str("handoff_sink = \"nats\"\nhandoff_nats_stream = \"a.b\"").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "handoff_nats_stream", .. })));
        let c: Config = toml::from_str("handoff_sink = \"nats\"\nhandoff_nats_subject = \"opens.*\"").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "handoff_nats_subject", .. })));
        let c: Config = toml::from_str("handoff_sink = \"nats\"\nhandoff_nats_urls = []").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "handoff_nats_urls", .. })));
        let c: Config = toml::from_str("handoff_retry_backoff_min_ms = 50\nhandoff_retry_backoff_max_ms = 10").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("handoff_sink = \"nats\"").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn the_removed_timeline_send_rate_is_a_clear_error_and_the_flow_bounds_are_checked() {
        let field = |text: &str| match toml::from_str::<Config>(text).unwrap().validate() {
            Err(ConfigError::Invalid { field, reason }) => (field, reason),
            other => panic!("{text}: expected a refusal, got {other:?}"),
        };
        let (f, reason) = field("[timeline]\nsends_per_user_per_s = 50");
        assert_eq!(f, "timeline.sends_per_user_per_s");
        assert!(reason.contains("messages_per_user_per_s"), "{reason}");
        assert_eq!(field("messages_per_user_burst = 0").0, "messages_per_user_burst/syncs_per_user_burst");
        assert_eq!(field("rate_users_per_core_max = 0").0, "rate_users_per_core_max");
        assert_eq!(field("conn_pushed_bytes_max = 1000").0, "conn_pushed_bytes_max");
        let ok = "messages_per_user_per_s = 100000\nsyncs_per_user_per_s = 100000\nconn_pushed_bytes_max = 65536";
        toml::from_str::<Config>(ok).unwrap().validate().unwrap();
    }
}
