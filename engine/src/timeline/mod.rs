//! Timelines: write-diffusion inboxes with per-user sequence numbers, groups, push-notify
//! and sync, and group lucky packets - one core's part, as a plain state machine.
//!
//! - [`Timelines`] (this file) owns the inboxes of the users homed on this core, the
//!   groups homed here (group id -> member list) and their lucky packets, and the sends
//!   in flight. It is driven by `shard::state::ShardState` (requests, mail, storage
//!   completions, ticks) and gives [`TimelineOutput`]s back; it never touches a socket,
//!   a file or the clock.
//! - [`inbox`]: one user's inbox (recent entries in memory, an index of older ones) and
//!   the sequence ceilings; [`lucky`]: double-mean shares; [`records`]: stream layouts;
//!   [`storage`]: the glommio edge (the timeline log and the groups table).
//!
//! How a send travels: the sender's home core (the *origin*) checks the request and
//! routes it. One-to-one: the origin coordinates; it sends one `Deliver` per recipient
//! core (itself included, without mail). Group: the origin forwards it to the group's
//! home core, which checks membership, becomes the coordinator and fans out to the member
//! cores in one batch per core. Each recipient core gives each recipient the next seq,
//! appends the entry, and answers `Delivered` when the write is durable; the coordinator
//! answers the origin once every core answered, and the origin answers the client
//! (`SendOk` = message id and the sender's own seq). A retried send (same client message
//! id) joins or repeats the first; after a restart it is delivered again with the same
//! message id and every recipient that already holds it answers the seq it has.

pub mod checkpoint;
pub mod inbox;
pub mod lucky;
pub mod metrics;
pub mod recent;
pub mod records;
pub mod storage;

use crate::overload::rates::{RateConfig, RateRefusal, UserRates};
use crate::shard::state::{Caller, Clock, ConnAnswers, ConnId, Handled};
use inbox::{Ceilings, Inbox, SyncSource};
use lucky::{LuckyPacket, Share};
use rand::SeedableRng;
use recent::RecentEntries;
use records::LuckyCreated;
use redrain_net::frame::encode_frame;
use redrain_net::message::Response;
use redrain_net::timeline::{
    SyncEntries, SyncEntry, TimelineRequest, TimelineResponse, U64List, CONTENT_LUCKY, CONTENT_READ_MARKER,
    LUCKY_FLAG_REPEAT, LUCKY_PAYLOAD_BYTES, TARGET_GROUP, TARGET_USER,
};
use redrain_net::{ErrorCode, MessageType};
use std::collections::VecDeque;

/// The state machine's keyed maps: seeded per process (keys come from clients), and
/// cheaper to hash than the standard SipHash on the per-entry path.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;
use std::sync::Arc;

/// Tokens and output slots of the timelines carry this bit, so they never meet the
/// rain's (which count up from 1 in the same connection and storage token spaces).
pub const TOKEN_BASE: u64 = 1 << 62;

/// Bounds and steps of the timelines (`[timeline]` in the config file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineConfig {
    /// Longest message payload a client may send (bytes).
    pub message_bytes_max: usize,
    /// Removed (the per-user rates are the top-level `messages_per_user_per_s` and
    /// `syncs_per_user_per_s`); read only so that an old config naming it gets a clear error.
    pub sends_per_user_per_s: Option<u32>,
    /// Sends and deliveries one core may have waiting for storage or other cores.
    pub fanout_pending_max: usize,
    /// Bytes of inbox entries the sends this core coordinates may have in flight (every
    /// recipient's entry counted: its wire copy, its log record and its bookkeeping). A send
    /// beyond it is refused Busy before anything is stored. Recipient cores hold at most
    /// `cores x` this much from all coordinators together.
    pub fanout_pending_bytes_max: usize,
    /// Syncs one core may have reading older entries from the log at once (each holds up
    /// to one group-commit batch of the log while it reads); beyond it a Sync that needs
    /// the log is refused Busy.
    pub sync_reads_max: usize,
    /// Bytes of the newest committed entries one core keeps in memory, whatever their
    /// inbox (a Sync of them is a copy); older ones are read from the log through the
    /// inbox's index.
    pub recent_bytes_max: usize,
    /// Older entries one inbox indexes (seq -> LSN); beyond it the oldest are dropped.
    pub inbox_index_entries_max: usize,
    /// Members a group may have.
    pub group_members_max: usize,
    /// Groups one core may home.
    pub groups_per_core_max: usize,
    /// Sequence ceilings are persisted in steps of this many numbers.
    pub seq_step: u64,
    /// Users sharing one persisted ceiling: user ids with the same `id >> seq_bucket_shift`.
    pub seq_bucket_shift: u32,
    /// Most entries one SyncOk carries (a client asking for more gets this many).
    pub sync_entries_max: u16,
    /// Most bytes of entries one SyncOk carries (keep below `frame_bytes_max`).
    pub sync_bytes_max: usize,
    /// Client message ids remembered per core for idempotent sends.
    pub send_dedup_entries_max: usize,
    /// Undrawn lucky packets one core holds.
    pub lucky_packets_max: usize,
    /// Largest total of one lucky packet (fen).
    pub lucky_total_fen_max: u32,
    /// Timeline log: bytes kept (older sealed segments are deleted; their entries leave
    /// the indexes). 0 = keep all.
    pub retention_bytes_max: u64,
    /// Timeline log: age of the oldest sealed segment kept, in seconds. 0 = keep all.
    pub retention_age_s: u64,
    /// Cross-core answers (`Delivered`, `Answer`) a core keeps for another try when the
    /// reverse mailbox is full; at this depth the core refuses new sends Busy until the
    /// outbox drains (the answers themselves are never dropped).
    pub mail_outbox_max: usize,
    // ---- retention and compaction (see checkpoint.rs) ----
    /// Timeline log: size of one segment file; retention deletes whole segments.
    pub segment_bytes: u64,
    /// Seconds between checkpoints (only while retention is on): how far the retention
    /// watermark can lag behind the log's head.
    pub checkpoint_interval_s: u64,
    /// Checkpoint records appended per housekeeping tick (100 ms).
    pub checkpoint_records_per_tick: usize,
    /// How long a retried send (same client message id) is still recognised after
    /// retention dropped its entries, in seconds; also how long a finished lucky packet
    /// still answers repeat opens.
    pub dedup_window_s: u64,
    /// Latest read markers (one per conversation) one user keeps across retention.
    pub read_markers_per_user_max: usize,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            message_bytes_max: 4096,
            sends_per_user_per_s: None,
            fanout_pending_max: 200_000,
            fanout_pending_bytes_max: 64 << 20,
            sync_reads_max: 64,
            recent_bytes_max: 64 << 20,
            inbox_index_entries_max: 100_000,
            group_members_max: 500,
            groups_per_core_max: 1_000_000,
            seq_step: 10_000,
            seq_bucket_shift: 8,
            sync_entries_max: 500,
            sync_bytes_max: 60_000,
            send_dedup_entries_max: 1_000_000,
            lucky_packets_max: 1_000_000,
            lucky_total_fen_max: 20_000_000,
            retention_bytes_max: 0,
            retention_age_s: 0,
            mail_outbox_max: 65_536,
            segment_bytes: 64 << 20,
            checkpoint_interval_s: 60,
            checkpoint_records_per_tick: 16,
            dedup_window_s: 3600,
            read_markers_per_user_max: 1000,
        }
    }
}

impl TimelineConfig {
    /// Checks the bounds against each other and the frame size.
    pub fn validate(&self, frame_bytes_max: u32) -> Result<(), String> {
        let entry_max = redrain_net::timeline::SYNC_ENTRY_HEADER_BYTES + self.message_bytes_max;
        if self.message_bytes_max == 0 || self.message_bytes_max > usize::from(u16::MAX) {
            return Err("timeline.message_bytes_max must be within 1..=65535".into());
        }
        if self.sync_bytes_max < entry_max {
            return Err(format!("timeline.sync_bytes_max must hold one largest entry ({entry_max} bytes)"));
        }
        // A SyncOk never outgrows the frames the node sends (checked here, clamped at start).
        let _ = frame_bytes_max;
        if self.recent_bytes_max < 4096
            || self.group_members_max < 2
            || self.group_members_max > redrain_net::timeline::GROUP_CREATE_MEMBERS_MAX
            || self.seq_step == 0
            || self.sync_entries_max == 0
            || self.fanout_pending_max == 0
            || self.fanout_pending_bytes_max < fanout_bytes(1, self.message_bytes_max)
            || self.sync_reads_max == 0
            || self.seq_bucket_shift > 32
            || self.mail_outbox_max == 0
        {
            return Err("timeline bounds must be positive (group_members_max 2..=4096, seq_bucket_shift <= 32, \
                        fanout_pending_bytes_max >= one largest entry, sync_reads_max >= 1, \
                        mail_outbox_max >= 1, recent_bytes_max >= 4096)"
                .into());
        }
        self.validate_retention()?;
        Ok(())
    }
}

/// The per-user rates the timelines enforce, as token buckets (from the node config:
/// `messages_per_user_per_s`/`_burst`, `syncs_per_user_per_s`/`_burst`,
/// `rate_users_per_core_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRateLimits {
    /// Send (messages and lucky packets) and SyncAck (read markers).
    pub messages: RateConfig,
    /// Sync.
    pub syncs: RateConfig,
}

impl UserRateLimits {
    pub fn from_config(c: &crate::config::Config) -> Self {
        let users_max = c.rate_users_per_core_max;
        Self {
            messages: RateConfig { per_s: c.messages_per_user_per_s, burst: c.messages_per_user_burst, users_max },
            syncs: RateConfig { per_s: c.syncs_per_user_per_s, burst: c.syncs_per_user_burst, users_max },
        }
    }

    /// These limits with the operator's sustained rates (None: as configured). The burst
    /// keeps its length in seconds: it scales with the rate (at least 1).
    pub fn with_overrides(self, messages_per_s: Option<u32>, syncs_per_s: Option<u32>) -> Self {
        let scaled = |base: RateConfig, per_s: Option<u32>| match per_s {
            Some(per_s) if per_s > 0 => {
                let burst = u64::from(base.burst) * u64::from(per_s) / u64::from(base.per_s.max(1));
                RateConfig { per_s, burst: burst.clamp(1, u64::from(u32::MAX)) as u32, users_max: base.users_max }
            }
            _ => base,
        };
        Self { messages: scaled(self.messages, messages_per_s), syncs: scaled(self.syncs, syncs_per_s) }
    }
}

impl Default for UserRateLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

/// A message as it travels to its recipients' cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: u64,
    pub from: u64,
    pub client_msg_id: u64,
    pub conv_kind: u8,
    pub conv_id: u64,
    pub sent_at_ms: u64,
    pub content_type: u8,
    pub payload: Vec<u8>,
}

/// (core, token): where an answer or a delivery report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    pub core: usize,
    pub token: u64,
}

/// A group request forwarded to the group's home core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOp {
    Send(Arc<Message>),
    Join(u64),
    Leave(u64),
    Members,
    LuckyOpen(u64),
}

/// An answer to a client, built wherever the work was done; the origin encodes it with
/// the request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok { kind: MessageType, body: Vec<u8> },
    Err { code: ErrorCode, retry_after_ms: u32, text: &'static str },
}

impl Reply {
    fn ok(response: TimelineResponse<'_>) -> Self {
        let mut body = Vec::with_capacity(32);
        response.encode_body(&mut body);
        Reply::Ok { kind: response.kind(), body }
    }

    fn err(code: ErrorCode, text: &'static str) -> Self {
        Reply::Err { code, retry_after_ms: 0, text }
    }

    fn busy(text: &'static str) -> Self {
        Reply::Err { code: ErrorCode::Busy, retry_after_ms: BUSY_RETRY_AFTER_MS, text }
    }

    /// Appends the frame answering `request_id`.
    pub fn encode(&self, request_id: u32, out: &mut Vec<u8>) {
        match self {
            Reply::Ok { kind, body } => encode_frame(out, *kind as u8, request_id, |b| b.extend_from_slice(body)),
            Reply::Err { code, retry_after_ms, text } => {
                Response::error(*code, *retry_after_ms, text).encode(request_id, out)
            }
        }
    }

    fn send_ok(&self) -> Option<(u64, u64)> {
        match self {
            Reply::Ok { kind: MessageType::SendOk, body } if body.len() == 16 => Some((
                u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(body[8..].try_into().expect("8 bytes")),
            )),
            _ => None,
        }
    }
}

/// Messages between cores about timelines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineMail {
    /// Write `msg` into the inboxes of `users` (homed on the destination core).
    Deliver { msg: Arc<Message>, users: Vec<u64>, coordinator: ReplyTo },
    /// Every inbox of a `Deliver` is written (`ok`), with each user's seq.
    Delivered { token: u64, ok: bool, seqs: Vec<(u64, u64)> },
    /// A request about a group, for the group's home core.
    Group { group: u64, user: u64, op: GroupOp, origin: ReplyTo },
    /// The answer to a request, for its origin core.
    Answer { token: u64, reply: Reply },
}

/// What the driver must do for the timelines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineOutput {
    /// A deferred answer for `conn`'s output slot `slot`.
    Respond { conn: ConnId, slot: u64, frame: Vec<u8> },
    /// A push (Notify) straight into `conn`'s output.
    Push { conn: ConnId, frame: Vec<u8> },
    /// Append to this core's timeline log; report with [`Timelines::on_appended`] (with
    /// the LSN when durable).
    Append { kind: u8, payload: Vec<u8>, token: u64 },
    /// Put a group's member list into this core's groups table; report with
    /// [`Timelines::on_group_stored`].
    PutGroup { group: u64, members: Vec<u8>, token: u64 },
    /// Read these records (by LSN) of the timeline log; report with [`Timelines::on_read`].
    Read { lsns: Vec<u64>, token: u64 },
    /// Mail for another core.
    Mail { core: usize, mail: TimelineMail },
}

/// Retry-after sent with Busy.
const BUSY_RETRY_AFTER_MS: u32 = 100;
/// Bytes one recipient's entry costs in flight beyond its wire layout: the log record
/// (entry header and user id around a second copy of the wire bytes is counted by
/// [`fanout_bytes`]), the pending-append and inbox bookkeeping and the append future.
pub const FANOUT_ENTRY_OVERHEAD_BYTES: usize = 256;

/// Bytes a fan-out of a `payload_len`-byte message to `recipients` inboxes holds until
/// it is durable: per recipient, the wire copy kept in the inbox, the log record (another
/// copy) and [`FANOUT_ENTRY_OVERHEAD_BYTES`].
pub fn fanout_bytes(recipients: usize, payload_len: usize) -> usize {
    let wire = redrain_net::timeline::SYNC_ENTRY_HEADER_BYTES + payload_len;
    recipients.saturating_mul(2 * wire + FANOUT_ENTRY_OVERHEAD_BYTES)
}

/// A client request waiting at its origin for an answer.
struct Waiting {
    conn: ConnId,
    slot: u64,
    request_id: u32,
    /// (user, client message id) of a send, for the idempotency table.
    dedup: Option<(u64, u64)>,
}

/// A send at its coordinator: waiting for every recipient core (and a lucky packet's
/// creation record).
struct Fanout {
    origin: ReplyTo,
    message_id: u64,
    sender: u64,
    sender_seq: u64,
    remaining: usize,
    ok: bool,
    /// Its share of `fanout_bytes_in_flight` (see [`fanout_bytes`]).
    bytes: usize,
}

/// A `Deliver` at a recipient core: waiting for its inbox writes.
struct Delivery {
    coordinator: ReplyTo,
    remaining: usize,
    ok: bool,
    seqs: Vec<(u64, u64)>,
}

/// What an append of the timeline log was for.
enum Pending {
    /// An inbox entry; the deliveries waiting for it.
    Entry {
        user: u64,
        seq: u64,
        deliveries: Vec<u64>,
    },
    Ceiling,
    LuckyCreated {
        fanout: u64,
        packet: u64,
    },
    LuckyOpened {
        packet: u64,
        user: u64,
        waiters: Vec<ReplyTo>,
    },
    /// A record of a checkpoint (checkpoint.rs).
    Checkpoint,
    /// A group change (`KIND_GROUP`); once durable its list goes to the table. The
    /// answer waits in `group_puts` under the same token.
    Group {
        group: u64,
        members: Vec<u8>,
    },
}

/// A group's newest queued member list and how many of its changes are in flight.
struct QueuedGroup {
    members: Vec<u64>,
    in_flight: u32,
}

/// A group change waiting for the table.
struct GroupPut {
    origin: ReplyTo,
    reply: Reply,
}

/// One client message id at its sender's core.
enum Sent {
    InFlight {
        message_id: u64,
        waiters: Vec<Waiting>,
    },
    Done {
        message_id: u64,
        seq: u64,
    },
    /// Found in the log at start: delivered again on a retry (recipients that hold it
    /// answer their seq), with this id.
    Recovered {
        message_id: u64,
    },
}

/// A Sync waiting for older entries from the log.
struct SyncRead {
    origin: ReplyTo,
    latest_seq: u64,
    /// Retention dropped entries after the Sync's since_seq.
    expired: bool,
    /// Whose inbox, and the LSNs asked (retention may delete the oldest meanwhile).
    user: u64,
    lsns: Vec<u64>,
}

/// Counters of one core's timelines (copied into the metrics block).
#[derive(Debug, Default, Clone, Copy)]
pub struct TimelineStats {
    pub sends_acked: u64,
    pub entries_committed: u64,
    pub entries_failed: u64,
    /// Group changes whose record failed (answered Internal, undone in memory).
    pub group_changes_failed: u64,
    pub notifies_pushed: u64,
    /// Notifies not sent because the device had not synced since its last one.
    pub notifies_gated: u64,
    pub syncs: u64,
    pub sync_log_reads: u64,
    pub lucky_opened: u64,
    pub inboxes: u64,
    pub groups: u64,
    pub pending: u64,
    /// Bytes of entries in flight of the sends this core coordinates.
    pub fanout_pending_bytes: u64,
    /// Syncs reading older entries from the log now.
    pub sync_reads: u64,
    pub recent_bytes: u64,
    /// Sends and syncs refused Busy by `fanout_pending_bytes_max` / `sync_reads_max`.
    pub refused_busy: u64,
    /// Entries found twice at start (a failed but durable append, then its retry).
    pub entries_replaced_at_recovery: u64,
    /// Sends, lucky packets and read markers refused by the message rate (RateLimited, or
    /// Busy when the core meters `rate_users_per_core_max` users).
    pub rate_limited_messages: u64,
    /// Syncs refused by the sync rate.
    pub rate_limited_syncs: u64,
    /// `Delivered`/`Answer` mail pushed again after a full mailbox refused it.
    pub mail_retried: u64,
    /// Mail waiting in the outbox now (bound: `mail_outbox_max`, then new sends are Busy).
    pub mail_outbox: u64,
    /// Sends, read markers and group requests refused Busy while the outbox was full.
    pub refused_outbox_full: u64,
}

/// One core's timelines.
pub struct Timelines {
    core: usize,
    cores: usize,
    node_id: u16,
    config: TimelineConfig,
    inboxes: HashMap<u64, Inbox>,
    /// The bytes of the newest durable entries of every inbox here.
    recent: RecentEntries,
    ceilings: Ceilings,
    groups: HashMap<u64, Vec<u64>>,
    /// The newest member list of a group whose change is queued but not durable yet:
    /// the next change builds on it and a checkpoint writes it; membership checks and
    /// fan-out use `groups` (durable only), so a change whose append fails is undone.
    groups_queued: HashMap<u64, QueuedGroup>,
    next_group: u64,
    lucky: HashMap<u64, LuckyPacket>,
    /// Online devices of users homed here.
    online: HashMap<u64, Vec<ConnId>>,
    conn_user: HashMap<ConnId, u64>,
    /// Devices sent a Notify they have not answered with a Sync yet: they get no other
    /// until they sync (a device that is behind knows it; the Sync answer says how far).
    notified: HashSet<ConnId>,
    /// Users whose latest seq moved since the last drain (one Notify per device each).
    notify: Vec<u64>,
    waiting: HashMap<u64, Waiting>,
    fanouts: HashMap<u64, Fanout>,
    deliveries: HashMap<u64, Delivery>,
    /// Sum of `Fanout::bytes` (bound: `fanout_pending_bytes_max`).
    fanout_bytes_in_flight: usize,
    pending: HashMap<u64, Pending>,
    group_puts: HashMap<u64, GroupPut>,
    sync_reads: HashMap<u64, SyncRead>,
    sent: HashMap<(u64, u64), Sent>,
    sent_order: VecDeque<(u64, u64)>,
    /// (recipient, sender, client message id) -> seq of messages delivered here, so a
    /// retried send is stored once even after its entry left memory or the node restarted.
    delivered: HashMap<(u64, u64, u64), checkpoint::DeliveredAt>,
    delivered_order: VecDeque<(u64, u64, u64)>,
    /// Per-user token buckets: Send, lucky packets (sent and opened), SyncAck and group
    /// changes take from `message_rates`, Sync and GroupMembers from `sync_rates` (see
    /// [`UserRateLimits`]).
    message_rates: UserRates,
    sync_rates: UserRates,
    /// The configured rates (the operator's switches override the sustained rates).
    rate_limits: UserRateLimits,
    /// Mail the mailbox refused that must arrive (`Delivered`, `Answer`): pushed again on
    /// the first drain after each housekeeping tick. While it holds `mail_outbox_max` or
    /// more, new work is refused Busy (see [`Timelines::on_mail_refused`]).
    outbox: VecDeque<(usize, TimelineMail)>,
    /// Set by the tick: the next drain pushes the outbox again. Retrying on every drain
    /// instead costs the whole outbox per dispatch while the queue stays full.
    outbox_retry_due: bool,
    last_message_id: u64,
    /// Latest Unix time seen by a request or tick here: stamps lucky opens for the hand-off.
    last_unix_ms: u64,
    next_token: u64,
    rng: rand_chacha::ChaCha8Rng,
    outputs: Vec<TimelineOutput>,
    pub stats: TimelineStats,
    retention: checkpoint::Retention,
    retention_stats: checkpoint::RetentionStats,
}

/// The core that owns a group: its creator's core, written into its id.
pub fn group_home_core(group: u64, cores: usize) -> usize {
    ((group >> 40) & 0xff) as usize % cores
}

impl Timelines {
    pub fn new(core: usize, cores: usize, node_id: u16, config: TimelineConfig, seed: u64) -> Self {
        Self::with_frame_limit(core, cores, node_id, config, seed, redrain_net::frame::FRAME_BYTES_LIMIT)
    }

    /// Like [`new`](Self::new), with SyncOk answers kept within `frame_bytes_max`.
    pub fn with_frame_limit(
        core: usize,
        cores: usize,
        node_id: u16,
        mut config: TimelineConfig,
        seed: u64,
        frame_bytes_max: u32,
    ) -> Self {
        config.sync_bytes_max = config.sync_bytes_max.min((frame_bytes_max as usize).saturating_sub(64)).max(1);
        Self {
            core,
            cores,
            node_id,
            ceilings: Ceilings::new(config.seq_step, config.seq_bucket_shift),
            recent: RecentEntries::new(config.recent_bytes_max),
            config,
            inboxes: HashMap::default(),
            groups: HashMap::default(),
            groups_queued: HashMap::default(),
            next_group: 1,
            lucky: HashMap::default(),
            online: HashMap::default(),
            conn_user: HashMap::default(),
            notified: HashSet::default(),
            notify: Vec::new(),
            waiting: HashMap::default(),
            fanouts: HashMap::default(),
            deliveries: HashMap::default(),
            fanout_bytes_in_flight: 0,
            pending: HashMap::default(),
            group_puts: HashMap::default(),
            sync_reads: HashMap::default(),
            sent: HashMap::default(),
            sent_order: VecDeque::new(),
            delivered: HashMap::default(),
            delivered_order: VecDeque::new(),
            message_rates: UserRates::new(UserRateLimits::default().messages),
            sync_rates: UserRates::new(UserRateLimits::default().syncs),
            rate_limits: UserRateLimits::default(),
            outbox: VecDeque::new(),
            outbox_retry_due: false,
            last_message_id: 0,
            last_unix_ms: 0,
            next_token: TOKEN_BASE,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ core as u64),
            outputs: Vec::new(),
            stats: TimelineStats::default(),
            retention: checkpoint::Retention::default(),
            retention_stats: checkpoint::RetentionStats::default(),
        }
    }

    pub fn config(&self) -> &TimelineConfig {
        &self.config
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn me(&self, token: u64) -> ReplyTo {
        ReplyTo { core: self.core, token }
    }

    /// Whether a token belongs to the timelines.
    pub fn owns_token(token: u64) -> bool {
        token >= TOKEN_BASE
    }

    /// A message id: unique and increasing per source (node, core): Unix ms (42 bits),
    /// counter (8), node (10), core (4). Within one millisecond the counter carries into
    /// the time bits, so ids never repeat and never go back while the clock does not.
    fn message_id(&mut self, unix_ms: u64) -> u64 {
        let source = (u64::from(self.node_id) & 0x3ff) << 4 | (self.core as u64 & 0xf);
        let floor = (unix_ms & ((1 << 42) - 1)) << 22;
        let next = (self.last_message_id & !0x3fff) + (1 << 14);
        let id = floor.max(next) | source;
        self.last_message_id = id;
        id
    }

    // ---- sessions -------------------------------------------------------------------

    /// A session of `user` logged in on `conn` (this is its home core).
    pub fn on_login(&mut self, conn: ConnId, user: u64) {
        if let Some(old) = self.conn_user.insert(conn, user) {
            self.forget_conn(conn, old);
        }
        self.online.entry(user).or_default().push(conn);
    }

    /// `conn` closed.
    pub fn on_closed(&mut self, conn: ConnId) {
        if let Some(user) = self.conn_user.remove(&conn) {
            self.forget_conn(conn, user);
        }
    }

    fn forget_conn(&mut self, conn: ConnId, user: u64) {
        self.notified.remove(&conn);
        if let Some(conns) = self.online.get_mut(&user) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.online.remove(&user);
            }
        }
    }

    // ---- requests --------------------------------------------------------------------

    /// Handles a timeline request of a logged-in user homed here.
    pub fn on_request(
        &mut self,
        caller: Caller,
        request: &TimelineRequest<'_>,
        clock: Clock,
        out: &mut ConnAnswers<'_>,
    ) -> Result<Handled, ErrorCode> {
        let Caller { conn, user, request_id } = caller;
        self.last_unix_ms = self.last_unix_ms.max(clock.unix_ms);
        let immediate = |reply: Reply, out: &mut ConnAnswers<'_>| {
            reply.encode(request_id, out.tail());
            Handled::Now
        };
        let pending_total = self.waiting.len() + self.fanouts.len() + self.pending.len();
        if pending_total >= self.config.fanout_pending_max && !matches!(request, TimelineRequest::Sync { .. }) {
            immediate(Reply::busy("too many timeline requests waiting on this core"), out);
            return Err(ErrorCode::Busy);
        }
        if self.outbox_full() && !matches!(request, TimelineRequest::Sync { .. }) {
            self.stats.refused_outbox_full += 1;
            immediate(Reply::busy("answers to other cores are waiting for room in the mailbox"), out);
            return Err(ErrorCode::Busy);
        }
        // Group changes and lucky opens write durably: they take from the message bucket;
        // reading a member list takes from the sync bucket. (Send, SyncAck and Sync take
        // theirs below, after their own checks.)
        let group_rate = match request {
            TimelineRequest::GroupMembers { .. } => Some(RateKind::Sync),
            TimelineRequest::GroupCreate { .. }
            | TimelineRequest::GroupJoin { .. }
            | TimelineRequest::GroupLeave { .. }
            | TimelineRequest::LuckyOpen { .. } => Some(RateKind::Message),
            TimelineRequest::Sync { .. } | TimelineRequest::Send { .. } | TimelineRequest::SyncAck { .. } => None,
        };
        if let Some((code, reply)) = group_rate.and_then(|kind| self.rate_refused(kind, user, clock)) {
            immediate(reply, out);
            return Err(code);
        }
        match *request {
            TimelineRequest::Sync { since_seq, limit } => {
                if let Some((code, reply)) = self.rate_refused(RateKind::Sync, user, clock) {
                    immediate(reply, out);
                    return Err(code);
                }
                self.stats.syncs += 1;
                // Anything that commits from now on is news to this device again.
                self.notified.remove(&conn);
                match self.sync(user, since_seq, limit) {
                    Ok(SyncAnswer::Now(reply)) => Ok(immediate(reply, out)),
                    Ok(SyncAnswer::Read { .. }) if self.sync_reads.len() >= self.config.sync_reads_max => {
                        self.stats.refused_busy += 1;
                        immediate(Reply::busy("too many syncs reading the log on this core"), out);
                        Err(ErrorCode::Busy)
                    }
                    Ok(SyncAnswer::Read { lsns, latest_seq, expired }) => {
                        let token = self.token();
                        let origin = self.me(token);
                        self.waiting.insert(token, Waiting { conn, slot: token, request_id, dedup: None });
                        out.defer(token);
                        let read = SyncRead { origin, latest_seq, expired, user, lsns: lsns.clone() };
                        self.sync_reads.insert(token, read);
                        self.outputs.push(TimelineOutput::Read { lsns, token });
                        self.stats.sync_log_reads += 1;
                        Ok(Handled::Later { slot: token })
                    }
                    Err((code, text)) => {
                        immediate(Reply::err(code, text), out);
                        Err(code)
                    }
                }
            }
            TimelineRequest::Send { target_kind, target, client_msg_id, content_type, payload } => {
                if payload.len() > self.config.message_bytes_max {
                    immediate(Reply::err(ErrorCode::MessageTooLarge, "message longer than message_bytes_max"), out);
                    return Err(ErrorCode::MessageTooLarge);
                }
                if content_type == CONTENT_LUCKY {
                    let valid = target_kind == TARGET_GROUP && payload.len() == LUCKY_PAYLOAD_BYTES && {
                        let total = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                        let count = u16::from_be_bytes([payload[4], payload[5]]);
                        LuckyPacket::valid(total, count)
                            && total <= self.config.lucky_total_fen_max
                            && usize::from(count) <= self.config.group_members_max
                    };
                    if !valid {
                        immediate(
                            Reply::err(ErrorCode::BadLuckyPacket, "a lucky packet needs a group, total >= count >= 1"),
                            out,
                        );
                        return Err(ErrorCode::BadLuckyPacket);
                    }
                }
                if let Some((code, reply)) = self.rate_refused(RateKind::Message, user, clock) {
                    immediate(reply, out);
                    return Err(code);
                }
                let key = (user, client_msg_id);
                let message_id = match self.sent.get_mut(&key) {
                    Some(Sent::Done { message_id, seq }) => {
                        let reply = Reply::ok(TimelineResponse::SendOk { message_id: *message_id, seq: *seq });
                        return Ok(immediate(reply, out));
                    }
                    Some(Sent::InFlight { waiters, .. }) => {
                        let slot = self.next_token;
                        self.next_token += 1;
                        out.defer(slot);
                        waiters.push(Waiting { conn, slot, request_id, dedup: None });
                        return Ok(Handled::Later { slot });
                    }
                    Some(Sent::Recovered { message_id }) => *message_id,
                    None => self.message_id(clock.unix_ms),
                };
                // A group send is weighed at the group's core, which knows its members.
                let recipients = if target_kind == TARGET_USER && target != user { 2 } else { 1 };
                if target_kind == TARGET_USER && self.fanout_refused(fanout_bytes(recipients, payload.len())) {
                    immediate(Reply::busy("too many message bytes in flight on this core"), out);
                    return Err(ErrorCode::Busy);
                }
                self.remember_sent(key, Sent::InFlight { message_id, waiters: Vec::new() });
                let token = self.token();
                out.defer(token);
                self.waiting.insert(token, Waiting { conn, slot: token, request_id, dedup: Some(key) });
                let msg = Arc::new(Message {
                    message_id,
                    from: user,
                    client_msg_id,
                    conv_kind: target_kind,
                    conv_id: target,
                    sent_at_ms: clock.unix_ms,
                    content_type,
                    payload: payload.to_vec(),
                });
                let origin = self.me(token);
                if target_kind == TARGET_USER {
                    let users = if target == user { vec![user] } else { vec![user, target] };
                    self.fan_out(msg, users, origin);
                } else {
                    self.route_group(target, user, GroupOp::Send(msg), origin);
                }
                Ok(Handled::Later { slot: token })
            }
            TimelineRequest::SyncAck { conv_kind, conv_id, read_seq } => {
                if let Some((code, reply)) = self.rate_refused(RateKind::Message, user, clock) {
                    immediate(reply, out);
                    return Err(code);
                }
                let latest = self.inboxes.get(&user).map_or(self.ceilings.ceiling_of(user), |i| i.latest_seq());
                if read_seq > latest {
                    immediate(Reply::err(ErrorCode::SeqFromFuture, "read_seq is beyond the inbox's latest seq"), out);
                    return Err(ErrorCode::SeqFromFuture);
                }
                if self.fanout_refused(fanout_bytes(1, 17)) {
                    immediate(Reply::busy("too many message bytes in flight on this core"), out);
                    return Err(ErrorCode::Busy);
                }
                let mut payload = Vec::with_capacity(17);
                payload.push(conv_kind);
                payload.extend_from_slice(&conv_id.to_be_bytes());
                payload.extend_from_slice(&read_seq.to_be_bytes());
                let token = self.token();
                out.defer(token);
                self.waiting.insert(token, Waiting { conn, slot: token, request_id, dedup: None });
                let msg = Arc::new(Message {
                    message_id: self.message_id(clock.unix_ms),
                    from: user,
                    client_msg_id: 0,
                    conv_kind,
                    conv_id,
                    sent_at_ms: clock.unix_ms,
                    content_type: CONTENT_READ_MARKER,
                    payload,
                });
                self.fan_out(msg, vec![user], self.me(token));
                Ok(Handled::Later { slot: token })
            }
            TimelineRequest::GroupCreate { members } => Ok(self.create_group(caller, members, out)),
            TimelineRequest::GroupJoin { group_id, user: member } => {
                Ok(self.defer_group(caller, group_id, GroupOp::Join(member), out))
            }
            TimelineRequest::GroupLeave { group_id, user: member } => {
                Ok(self.defer_group(caller, group_id, GroupOp::Leave(member), out))
            }
            TimelineRequest::GroupMembers { group_id } => Ok(self.defer_group(caller, group_id, GroupOp::Members, out)),
            TimelineRequest::LuckyOpen { group_id, packet_id } => {
                Ok(self.defer_group(caller, group_id, GroupOp::LuckyOpen(packet_id), out))
            }
        }
    }

    /// Whether a fan-out of `bytes` would pass `fanout_pending_bytes_max` (counted as
    /// refused when it would).
    fn fanout_refused(&mut self, bytes: usize) -> bool {
        let refused = self.fanout_bytes_in_flight.saturating_add(bytes) > self.config.fanout_pending_bytes_max;
        self.stats.refused_busy += u64::from(refused);
        refused
    }

    /// Takes one token of `user`'s bucket of `kind`; the refusal to answer when it is empty
    /// (RateLimited with the bucket's retry-after) or the core tracks too many users (Busy).
    fn rate_refused(&mut self, kind: RateKind, user: u64, clock: Clock) -> Option<(ErrorCode, Reply)> {
        let rates = match kind {
            RateKind::Message => &mut self.message_rates,
            RateKind::Sync => &mut self.sync_rates,
        };
        let refusal = rates.take(user, clock.mono_ms).err()?;
        match kind {
            RateKind::Message => self.stats.rate_limited_messages += 1,
            RateKind::Sync => self.stats.rate_limited_syncs += 1,
        }
        Some(match refusal {
            RateRefusal::Exhausted { retry_after_ms } => {
                let text = match kind {
                    RateKind::Message => "more messages than messages_per_user_per_s",
                    RateKind::Sync => "more syncs than syncs_per_user_per_s",
                };
                let reply = Reply::Err { code: ErrorCode::RateLimited, retry_after_ms: retry_after_ms.max(1), text };
                (ErrorCode::RateLimited, reply)
            }
            RateRefusal::TableFull => {
                (ErrorCode::Busy, Reply::busy("this core meters rate_users_per_core_max active users"))
            }
        })
    }

    /// The configured per-user rates (at start, before any request).
    pub fn set_rate_limits(&mut self, limits: UserRateLimits) {
        self.rate_limits = limits;
        self.message_rates.set_config(limits.messages);
        self.sync_rates.set_config(limits.syncs);
    }

    /// The operator's sustained rates (switches; None: as configured).
    pub fn apply_rate_switches(&mut self, messages_per_s: Option<u32>, syncs_per_s: Option<u32>) {
        let limits = self.rate_limits.with_overrides(messages_per_s, syncs_per_s);
        self.message_rates.set_config(limits.messages);
        self.sync_rates.set_config(limits.syncs);
    }

    /// The per-user rates in force.
    pub fn rate_limits(&self) -> UserRateLimits {
        UserRateLimits { messages: self.message_rates.config(), syncs: self.sync_rates.config() }
    }

    fn remember_sent(&mut self, key: (u64, u64), sent: Sent) {
        if self.sent.insert(key, sent).is_none() {
            self.sent_order.push_back(key);
            while self.sent_order.len() > self.config.send_dedup_entries_max {
                let Some(old) = self.sent_order.pop_front() else { break };
                // Never forget a send in flight: its waiters hang on it.
                if matches!(self.sent.get(&old), Some(Sent::InFlight { .. })) {
                    self.sent_order.push_back(old);
                    break;
                }
                self.sent.remove(&old);
            }
        }
    }

    fn remember_delivered(&mut self, key: (u64, u64, u64), at: checkpoint::DeliveredAt) {
        if self.delivered.insert(key, at).is_none() {
            self.delivered_order.push_back(key);
            if self.delivered_order.len() > self.config.send_dedup_entries_max {
                if let Some(old) = self.delivered_order.pop_front() {
                    self.delivered.remove(&old);
                    self.retention.dedup_popped += 1;
                }
            }
        }
    }

    fn defer_group(&mut self, caller: Caller, group: u64, op: GroupOp, out: &mut ConnAnswers<'_>) -> Handled {
        let token = self.token();
        out.defer(token);
        self.waiting
            .insert(token, Waiting { conn: caller.conn, slot: token, request_id: caller.request_id, dedup: None });
        self.route_group(group, caller.user, op, self.me(token));
        Handled::Later { slot: token }
    }

    fn route_group(&mut self, group: u64, user: u64, op: GroupOp, origin: ReplyTo) {
        let home = group_home_core(group, self.cores);
        if home == self.core {
            self.on_group_op(group, user, op, origin);
        } else {
            self.outputs
                .push(TimelineOutput::Mail { core: home, mail: TimelineMail::Group { group, user, op, origin } });
        }
    }

    fn create_group(&mut self, caller: Caller, members: U64List<'_>, out: &mut ConnAnswers<'_>) -> Handled {
        let mut list: Vec<u64> = members.iter().chain(std::iter::once(caller.user)).collect();
        list.sort_unstable();
        list.dedup();
        if list.len() > self.config.group_members_max {
            Reply::err(ErrorCode::GroupFull, "more members than group_members_max")
                .encode(caller.request_id, out.tail());
            return Handled::Now;
        }
        let creating = self.groups_queued.keys().filter(|g| !self.groups.contains_key(g)).count();
        if self.groups.len() + creating >= self.config.groups_per_core_max {
            Reply::busy("this core holds groups_per_core_max groups").encode(caller.request_id, out.tail());
            return Handled::Now;
        }
        let group = (u64::from(self.node_id) & 0xffff) << 48 | (self.core as u64 & 0xff) << 40 | self.next_group;
        self.next_group += 1;
        let count = list.len() as u16;
        let token = self.token();
        out.defer(token);
        self.waiting
            .insert(token, Waiting { conn: caller.conn, slot: token, request_id: caller.request_id, dedup: None });
        self.put_group(
            group,
            list,
            self.me(token),
            Reply::ok(TimelineResponse::GroupCreateOk { group_id: group, members: count }),
        );
        Handled::Later { slot: token }
    }

    /// A group change: into the log first (replicated with the entries, so a node that
    /// lost its disk gets its groups back from its peers), then into the table; the
    /// answer leaves when both hold it.
    fn put_group(&mut self, group: u64, members: Vec<u64>, origin: ReplyTo, reply: Reply) {
        let token = self.token();
        let payload = records::encode_group(group, &members);
        self.outputs.push(TimelineOutput::Append { kind: records::KIND_GROUP, payload, token });
        self.pending.insert(token, Pending::Group { group, members: records::encode_members(&members) });
        let queued = self.groups_queued.entry(group).or_insert(QueuedGroup { members: Vec::new(), in_flight: 0 });
        queued.members = members;
        queued.in_flight += 1;
        self.group_puts.insert(token, GroupPut { origin, reply });
    }

    /// A group request at the group's home core.
    fn on_group_op(&mut self, group: u64, user: u64, op: GroupOp, origin: ReplyTo) {
        let Some(members) = self.groups.get(&group) else {
            return self.answer(origin, Reply::err(ErrorCode::UnknownGroup, "no group with this id"));
        };
        if members.binary_search(&user).is_err() {
            return self.answer(origin, Reply::err(ErrorCode::NotGroupMember, "only members may do this"));
        }
        match op {
            GroupOp::Members => {
                let bytes = records::encode_members(members);
                let reply = Reply::ok(TimelineResponse::GroupMembersOk { members: U64List::from_bytes(&bytes) });
                self.answer(origin, reply)
            }
            GroupOp::Join(member) => {
                let queued = self.groups_queued.contains_key(&group);
                let mut list = self.groups_queued.get(&group).map_or(members, |q| &q.members).clone();
                let Err(at) = list.binary_search(&member) else {
                    let reply = Reply::ok(TimelineResponse::GroupJoinOk { members: list.len() as u16 });
                    if queued {
                        // Already in a change not durable yet: answer with the fate of a
                        // record of the same list, not before.
                        return self.put_group(group, list, origin, reply);
                    }
                    return self.answer(origin, reply);
                };
                if list.len() >= self.config.group_members_max {
                    return self.answer(origin, Reply::err(ErrorCode::GroupFull, "the group is at group_members_max"));
                }
                list.insert(at, member);
                let n = list.len() as u16;
                self.put_group(group, list, origin, Reply::ok(TimelineResponse::GroupJoinOk { members: n }));
            }
            GroupOp::Leave(member) => {
                let queued = self.groups_queued.contains_key(&group);
                let mut list = self.groups_queued.get(&group).map_or(members, |q| &q.members).clone();
                let Ok(at) = list.binary_search(&member) else {
                    let reply = Reply::ok(TimelineResponse::GroupLeaveOk { members: list.len() as u16 });
                    if queued {
                        return self.put_group(group, list, origin, reply);
                    }
                    return self.answer(origin, reply);
                };
                list.remove(at);
                let n = list.len() as u16;
                self.put_group(group, list, origin, Reply::ok(TimelineResponse::GroupLeaveOk { members: n }));
            }
            GroupOp::Send(msg) => {
                let users = members.clone();
                if self.fanout_refused(fanout_bytes(users.len(), msg.payload.len())) {
                    return self.answer(origin, Reply::busy("too many message bytes in flight on this group's core"));
                }
                let token = self.token();
                let sender = msg.from;
                let mut extra = 0;
                if msg.content_type == CONTENT_LUCKY {
                    if self.lucky.len() >= self.config.lucky_packets_max {
                        return self.answer(origin, Reply::busy("too many lucky packets on this core"));
                    }
                    let total = u32::from_be_bytes(msg.payload[..4].try_into().expect("checked at the origin"));
                    let count = u16::from_be_bytes([msg.payload[4], msg.payload[5]]);
                    let created = LuckyCreated { packet_id: msg.message_id, group, sender, total_fen: total, count };
                    self.lucky.entry(msg.message_id).or_insert_with(|| LuckyPacket::new(group, total, count));
                    let append = self.token();
                    self.pending.insert(append, Pending::LuckyCreated { fanout: token, packet: msg.message_id });
                    self.outputs.push(TimelineOutput::Append {
                        kind: records::KIND_LUCKY_CREATED,
                        payload: created.encode(),
                        token: append,
                    });
                    extra = 1;
                }
                self.start_fanout(token, msg, users, origin, extra);
            }
            GroupOp::LuckyOpen(packet) => {
                let Some(p) = self.lucky.get_mut(&packet).filter(|p| p.group == group) else {
                    return self.answer(origin, Reply::err(ErrorCode::UnknownLuckyPacket, "no such lucky packet here"));
                };
                match p.open(user, &mut self.rng) {
                    Share::Repeat(amount) => {
                        let reply = Reply::ok(TimelineResponse::LuckyOpenOk {
                            packet_id: packet,
                            amount_fen: amount,
                            flags: LUCKY_FLAG_REPEAT,
                            opened: p.opened_count(),
                            count: p.count,
                        });
                        self.answer(origin, reply)
                    }
                    Share::AllGone => self.answer(origin, Reply::err(ErrorCode::LuckyAllGone, "every share is taken")),
                    Share::InFlight => {
                        let waiting = self.pending.values_mut().find_map(|pd| match pd {
                            Pending::LuckyOpened { packet: pk, user: u, waiters } if *pk == packet && *u == user => {
                                Some(waiters)
                            }
                            _ => None,
                        });
                        match waiting {
                            Some(w) => w.push(origin),
                            None => self.answer(origin, Reply::busy("share being recorded")),
                        }
                    }
                    Share::Reserved(amount) => {
                        let token = self.token();
                        self.pending.insert(token, Pending::LuckyOpened { packet, user, waiters: vec![origin] });
                        self.outputs.push(TimelineOutput::Append {
                            kind: records::KIND_LUCKY_OPENED,
                            payload: records::LuckyOpened {
                                packet_id: packet,
                                user,
                                amount_fen: amount,
                                group,
                                opened_at_ms: self.last_unix_ms,
                            }
                            .encode(),
                            token,
                        });
                    }
                }
            }
        }
    }

    /// Coordinates `msg` to `users`: one Deliver per core.
    fn fan_out(&mut self, msg: Arc<Message>, users: Vec<u64>, origin: ReplyTo) {
        let token = self.token();
        self.start_fanout(token, msg, users, origin, 0);
    }

    fn start_fanout(&mut self, token: u64, msg: Arc<Message>, users: Vec<u64>, origin: ReplyTo, extra: usize) {
        let mut by_core: Vec<Vec<u64>> = vec![Vec::new(); self.cores];
        for u in users {
            by_core[crate::shard::handoff::home_core(u, self.cores)].push(u);
        }
        let cores = by_core.iter().filter(|v| !v.is_empty()).count();
        let bytes = fanout_bytes(by_core.iter().map(Vec::len).sum(), msg.payload.len());
        self.fanout_bytes_in_flight += bytes;
        self.fanouts.insert(
            token,
            Fanout {
                origin,
                message_id: msg.message_id,
                sender: msg.from,
                sender_seq: 0,
                remaining: cores + extra,
                ok: true,
                bytes,
            },
        );
        let coordinator = self.me(token);
        for (core, users) in by_core.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            if core == self.core {
                self.deliver(msg.clone(), users, coordinator);
            } else {
                let mail = TimelineMail::Deliver { msg: msg.clone(), users, coordinator };
                self.outputs.push(TimelineOutput::Mail { core, mail });
            }
        }
        if cores + extra == 0 {
            self.finish_fanout(token);
        }
    }

    /// Writes `msg` into the inboxes of `users` (homed here).
    fn deliver(&mut self, msg: Arc<Message>, users: Vec<u64>, coordinator: ReplyTo) {
        let dtoken = self.token();
        let mut delivery = Delivery { coordinator, remaining: 0, ok: true, seqs: Vec::with_capacity(users.len()) };
        if self.pending.len() >= self.config.fanout_pending_max {
            delivery.ok = false;
            self.deliveries.insert(dtoken, delivery);
            return self.finish_delivery(dtoken);
        }
        for user in users {
            let ceiling = self.ceilings.ceiling_of(user);
            let inbox = self.inboxes.entry(user).or_insert_with(|| Inbox::starting_at(ceiling));
            // A retried send that this inbox already holds: answer its seq.
            if msg.client_msg_id != 0 {
                if let Some(seq) = self.delivered.get(&(user, msg.from, msg.client_msg_id)).map(|d| d.seq) {
                    let in_flight = self.pending.values_mut().find_map(|p| match p {
                        Pending::Entry { user: u, seq: s, deliveries } if *u == user && *s == seq => Some(deliveries),
                        _ => None,
                    });
                    match in_flight {
                        Some(deliveries) => {
                            deliveries.push(dtoken);
                            delivery.remaining += 1;
                        }
                        None => delivery.seqs.push((user, seq)),
                    }
                    continue;
                }
            }
            let seq = inbox.allocate();
            if let Some(ceiling) = self.ceilings.raise(user, seq) {
                let token = self.next_token;
                self.next_token += 1;
                self.pending.insert(token, Pending::Ceiling);
                self.outputs.push(TimelineOutput::Append {
                    kind: records::KIND_SEQ_CEILING,
                    payload: records::encode_ceiling(ceiling.0, ceiling.1),
                    token,
                });
            }
            let mut wire = Vec::with_capacity(redrain_net::timeline::SYNC_ENTRY_HEADER_BYTES + msg.payload.len());
            SyncEntry {
                seq,
                message_id: msg.message_id,
                from: msg.from,
                conv_kind: msg.conv_kind,
                conv_id: msg.conv_id,
                sent_at_ms: msg.sent_at_ms,
                content_type: msg.content_type,
                payload: &msg.payload,
            }
            .encode(&mut wire);
            let payload = records::encode_entry(user, msg.client_msg_id, &wire);
            let inbox = self.inboxes.get_mut(&user).expect("inserted above");
            inbox.push(seq, msg.from, msg.client_msg_id, wire.into_boxed_slice());
            if msg.client_msg_id != 0 {
                let at = checkpoint::DeliveredAt { seq, message_id: msg.message_id, sent_at_ms: msg.sent_at_ms };
                self.remember_delivered((user, msg.from, msg.client_msg_id), at);
            }
            let token = self.token();
            self.pending.insert(token, Pending::Entry { user, seq, deliveries: vec![dtoken] });
            self.outputs.push(TimelineOutput::Append { kind: records::KIND_ENTRY, payload, token });
            delivery.remaining += 1;
        }
        let done = delivery.remaining == 0;
        self.deliveries.insert(dtoken, delivery);
        if done {
            self.finish_delivery(dtoken);
        }
    }

    fn finish_delivery(&mut self, dtoken: u64) {
        let Some(d) = self.deliveries.remove(&dtoken) else { return };
        self.report_delivered(d.coordinator, d.ok, d.seqs);
    }

    fn report_delivered(&mut self, coordinator: ReplyTo, ok: bool, seqs: Vec<(u64, u64)>) {
        if coordinator.core == self.core {
            self.on_delivered(coordinator.token, ok, seqs);
        } else {
            let mail = TimelineMail::Delivered { token: coordinator.token, ok, seqs };
            self.outputs.push(TimelineOutput::Mail { core: coordinator.core, mail });
        }
    }

    fn on_delivered(&mut self, token: u64, ok: bool, seqs: Vec<(u64, u64)>) {
        let Some(f) = self.fanouts.get_mut(&token) else { return };
        f.ok &= ok;
        if let Some((_, seq)) = seqs.iter().find(|(u, _)| *u == f.sender) {
            f.sender_seq = *seq;
        }
        f.remaining -= 1;
        if f.remaining == 0 {
            self.finish_fanout(token);
        }
    }

    fn finish_fanout(&mut self, token: u64) {
        let Some(f) = self.fanouts.remove(&token) else { return };
        debug_assert!(self.fanout_bytes_in_flight >= f.bytes, "a fan-out releases what it took");
        self.fanout_bytes_in_flight -= f.bytes;
        let reply = if f.ok {
            Reply::ok(TimelineResponse::SendOk { message_id: f.message_id, seq: f.sender_seq })
        } else {
            Reply::Err {
                code: ErrorCode::Internal,
                retry_after_ms: BUSY_RETRY_AFTER_MS,
                text: "not every inbox was written; retry the send",
            }
        };
        self.answer(f.origin, reply);
    }

    /// Sends `reply` to the request waiting at `origin`.
    fn answer(&mut self, origin: ReplyTo, reply: Reply) {
        if origin.core == self.core {
            self.on_answer(origin.token, reply);
        } else {
            let mail = TimelineMail::Answer { token: origin.token, reply };
            self.outputs.push(TimelineOutput::Mail { core: origin.core, mail });
        }
    }

    fn on_answer(&mut self, token: u64, reply: Reply) {
        let Some(w) = self.waiting.remove(&token) else { return };
        let mut waiters = vec![];
        if let Some(key) = w.dedup {
            match self.sent.remove(&key) {
                Some(Sent::InFlight { message_id, waiters: joined }) => {
                    waiters = joined;
                    match reply.send_ok() {
                        Some((_, seq)) => {
                            self.stats.sends_acked += 1;
                            self.sent.insert(key, Sent::Done { message_id, seq });
                        }
                        // Not stored everywhere: a retry delivers again with the same id.
                        None => {
                            self.sent.insert(key, Sent::Recovered { message_id });
                        }
                    }
                }
                Some(other) => {
                    self.sent.insert(key, other);
                }
                None => {}
            }
        }
        for w in std::iter::once(w).chain(waiters) {
            let mut frame = Vec::with_capacity(32);
            reply.encode(w.request_id, &mut frame);
            self.outputs.push(TimelineOutput::Respond { conn: w.conn, slot: w.slot, frame });
        }
    }

    // ---- sync ------------------------------------------------------------------------

    fn sync(&mut self, user: u64, since_seq: u64, limit: u16) -> Result<SyncAnswer, (ErrorCode, &'static str)> {
        let limit = limit.clamp(1, self.config.sync_entries_max);
        let Some(inbox) = self.inboxes.get(&user) else {
            let latest_seq = self.ceilings.ceiling_of(user);
            if since_seq > latest_seq {
                return Err((ErrorCode::SeqFromFuture, "since_seq is beyond the inbox's latest seq"));
            }
            let expired = match self.sync_expired(user, since_seq, usize::from(limit), latest_seq) {
                checkpoint::SyncExpiry::Markers(reply) => return Ok(SyncAnswer::Now(reply)),
                e => matches!(e, checkpoint::SyncExpiry::Expired),
            };
            let reply = Reply::ok(TimelineResponse::SyncOk {
                latest_seq,
                more: false,
                expired,
                entries: SyncEntries::from_encoded(0, &[]),
            });
            return Ok(SyncAnswer::Now(reply));
        };
        let latest_seq = inbox.latest_seq();
        if since_seq > latest_seq {
            return Err((ErrorCode::SeqFromFuture, "since_seq is beyond the inbox's latest seq"));
        }
        let expired = match self.sync_expired(user, since_seq, usize::from(limit), latest_seq) {
            checkpoint::SyncExpiry::Markers(reply) => return Ok(SyncAnswer::Now(reply)),
            e => matches!(e, checkpoint::SyncExpiry::Expired),
        };
        let inbox = self.inboxes.get(&user).expect("looked up above");
        if let SyncSource::Log(lsns) = inbox.source_after(since_seq, usize::from(limit), &self.recent) {
            return Ok(SyncAnswer::Read { lsns, latest_seq, expired });
        }
        let mut bytes = Vec::new();
        let (count, more) =
            inbox.copy_after(since_seq, usize::from(limit), self.config.sync_bytes_max, &self.recent, &mut bytes);
        let reply = Reply::ok(TimelineResponse::SyncOk {
            latest_seq,
            more,
            expired,
            entries: SyncEntries::from_encoded(count as u16, &bytes),
        });
        Ok(SyncAnswer::Now(reply))
    }

    /// Older entries read from the log for a Sync (`records`: entry payloads by LSN).
    pub fn on_read(&mut self, token: u64, records: Result<Vec<Vec<u8>>, String>) {
        let Some(read) = self.sync_reads.remove(&token) else { return };
        let reply = match records {
            Ok(records) => {
                // Fewer records than asked: retention deleted the oldest meanwhile.
                let dropped = read.lsns.len().saturating_sub(records.len());
                if let (Some(&last_gone), Some(inbox)) =
                    (read.lsns.get(dropped.wrapping_sub(1)), self.inboxes.get_mut(&read.user))
                {
                    inbox.forget_before(last_gone + 1);
                }
                let mut bytes = Vec::new();
                let mut count = 0u16;
                let mut truncated = false;
                for r in &records {
                    let Some((_, _, wire)) = records::decode_entry(r) else { continue };
                    if bytes.len() + wire.len() > self.config.sync_bytes_max {
                        truncated = true;
                        break;
                    }
                    bytes.extend_from_slice(wire);
                    count += 1;
                }
                let last_seq = SyncEntries::from_encoded(count, &bytes).iter().last().map_or(0, |e| e.seq);
                Reply::ok(TimelineResponse::SyncOk {
                    latest_seq: read.latest_seq,
                    more: truncated || last_seq < read.latest_seq,
                    expired: read.expired || dropped > 0,
                    entries: SyncEntries::from_encoded(count, &bytes),
                })
            }
            Err(_) => Reply::Err {
                code: ErrorCode::Internal,
                retry_after_ms: BUSY_RETRY_AFTER_MS,
                text: "older entries could not be read",
            },
        };
        self.answer(read.origin, reply);
    }

    // ---- storage completions -------------------------------------------------------

    /// An append of the timeline log finished: `Some(lsn)` when durable.
    pub fn on_appended(&mut self, token: u64, lsn: Option<u64>) {
        self.note_durable(lsn);
        let Some(pending) = self.pending.remove(&token) else { return };
        let ok = lsn.is_some();
        match pending {
            Pending::Entry { user, seq, deliveries } => {
                if let Some(inbox) = self.inboxes.get_mut(&user) {
                    match lsn {
                        Some(lsn) => {
                            self.stats.entries_committed += 1;
                            inbox.commit(seq, lsn, &mut self.recent, &self.config);
                            if !inbox.notify_pending {
                                inbox.notify_pending = true;
                                self.notify.push(user);
                            }
                            self.note_committed(user, seq);
                        }
                        None => {
                            self.stats.entries_failed += 1;
                            if let Some(from_cmid) = inbox.fail(seq) {
                                self.delivered.remove(&(user, from_cmid.0, from_cmid.1));
                            }
                        }
                    }
                }
                for d in deliveries {
                    let Some(delivery) = self.deliveries.get_mut(&d) else { continue };
                    delivery.ok &= ok;
                    if ok {
                        delivery.seqs.push((user, seq));
                    }
                    delivery.remaining -= 1;
                    if delivery.remaining == 0 {
                        self.finish_delivery(d);
                    }
                }
            }
            Pending::Ceiling => {}
            Pending::Checkpoint => self.on_checkpoint_appended(ok),
            Pending::Group { group, members } => {
                // Appends resolve in LSN order: the last durable change of a group wins.
                let list = records::decode_members(&members).unwrap_or_default();
                if let Some(q) = self.groups_queued.get_mut(&group) {
                    q.in_flight -= 1;
                    if q.in_flight == 0 {
                        self.groups_queued.remove(&group);
                    }
                }
                if ok {
                    self.groups.insert(group, list);
                    self.outputs.push(TimelineOutput::PutGroup { group, members, token });
                } else {
                    // Undone: later changes queued on top of it still carry it (they may
                    // commit; a failed change "may have happened", as a failed send).
                    self.stats.group_changes_failed += 1;
                    self.on_group_stored(token, false);
                }
            }
            Pending::LuckyCreated { fanout, packet } => {
                if let Some(p) = self.lucky.get_mut(&packet).filter(|_| ok) {
                    p.durable = true;
                }
                if let Some(f) = self.fanouts.get_mut(&fanout) {
                    f.ok &= ok;
                    f.remaining -= 1;
                    if f.remaining == 0 {
                        self.finish_fanout(fanout);
                    }
                }
            }
            Pending::LuckyOpened { packet, user, waiters } => {
                let Some(p) = self.lucky.get_mut(&packet) else { return };
                let amount = p.finish(user, ok);
                let (opened, count) = (p.opened_count(), p.count);
                let reply = match amount {
                    Some(amount) if ok => {
                        self.stats.lucky_opened += 1;
                        Reply::ok(TimelineResponse::LuckyOpenOk {
                            packet_id: packet,
                            amount_fen: amount,
                            flags: 0,
                            opened,
                            count,
                        })
                    }
                    _ => Reply::Err {
                        code: ErrorCode::Internal,
                        retry_after_ms: BUSY_RETRY_AFTER_MS,
                        text: "the share could not be recorded; retry",
                    },
                };
                for (i, origin) in waiters.into_iter().enumerate() {
                    let reply = match (&reply, i) {
                        // Later joiners of the same user's open hear it as a repeat.
                        (Reply::Ok { .. }, i) if i > 0 => Reply::ok(TimelineResponse::LuckyOpenOk {
                            packet_id: packet,
                            amount_fen: amount.unwrap_or(0),
                            flags: LUCKY_FLAG_REPEAT,
                            opened,
                            count,
                        }),
                        (r, _) => r.clone(),
                    };
                    self.answer(origin, reply);
                }
            }
        }
    }

    /// A group's member list is durable in the table (`ok`) or not.
    pub fn on_group_stored(&mut self, token: u64, ok: bool) {
        let Some(put) = self.group_puts.remove(&token) else { return };
        let reply = if ok {
            put.reply
        } else {
            Reply::Err {
                code: ErrorCode::Internal,
                retry_after_ms: BUSY_RETRY_AFTER_MS,
                text: "group not stored; retry",
            }
        };
        self.answer(put.origin, reply);
    }

    /// Mail from another core.
    pub fn on_mail(&mut self, mail: TimelineMail) {
        match mail {
            TimelineMail::Deliver { msg, users, coordinator } => self.deliver(msg, users, coordinator),
            TimelineMail::Delivered { token, ok, seqs } => self.on_delivered(token, ok, seqs),
            TimelineMail::Group { group, user, op, origin } => self.on_group_op(group, user, op, origin),
            TimelineMail::Answer { token, reply } => self.on_answer(token, reply),
        }
    }

    /// Mail for core `to` that could not be sent (the queue was full). A request going out
    /// (`Deliver`, `Group`) fails Busy before anything is stored (a retried send is
    /// idempotent). An answer coming back (`Delivered`, `Answer`) reports work already
    /// written, so it is never dropped: it waits in the outbox and is pushed again after
    /// the next housekeeping tick (100 ms), until the coordinator's fan-out finishes and
    /// returns its bytes.
    pub fn on_mail_refused(&mut self, to: usize, mail: TimelineMail) {
        match mail {
            TimelineMail::Deliver { coordinator, .. } => self.report_delivered(coordinator, false, Vec::new()),
            TimelineMail::Group { origin, .. } => self.on_answer(origin.token, Reply::busy("group core queue full")),
            mail @ (TimelineMail::Delivered { .. } | TimelineMail::Answer { .. }) => {
                self.outbox.push_back((to, mail));
                self.stats.mail_outbox = self.outbox.len() as u64;
            }
        }
    }

    /// Whether the outbox of answers waiting for a full mailbox is at `mail_outbox_max`
    /// (new work is refused Busy until it drains).
    fn outbox_full(&self) -> bool {
        self.outbox.len() >= self.config.mail_outbox_max
    }

    /// Answers waiting for room in a full mailbox.
    pub fn mail_outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Housekeeping: drop index entries the log no longer holds; copy the gauges.
    pub fn on_tick(&mut self, clock: Clock, first_retained_lsn: u64) {
        self.last_unix_ms = self.last_unix_ms.max(clock.unix_ms);
        if first_retained_lsn > 0 {
            for inbox in self.inboxes.values_mut() {
                inbox.forget_before(first_retained_lsn);
            }
        }
        self.stats.inboxes = self.inboxes.len() as u64;
        self.stats.groups = self.groups.len() as u64;
        self.stats.pending = (self.pending.len() + self.waiting.len() + self.fanouts.len()) as u64;
        self.stats.fanout_pending_bytes = self.fanout_bytes_in_flight as u64;
        self.stats.sync_reads = self.sync_reads.len() as u64;
        self.stats.recent_bytes = self.recent.heap_bytes() as u64;
        self.stats.mail_outbox = self.outbox.len() as u64;
        self.outbox_retry_due = true;
        self.retention_tick(clock);
    }

    /// Takes the outputs so far; first turns moved seqs into one Notify per device.
    pub fn drain(&mut self, into: &mut Vec<TimelineOutput>) {
        // Answers a full mailbox refused go first, ahead of newer mail to the same core.
        if std::mem::take(&mut self.outbox_retry_due) && !self.outbox.is_empty() {
            self.stats.mail_retried += self.outbox.len() as u64;
            into.extend(self.outbox.drain(..).map(|(core, mail)| TimelineOutput::Mail { core, mail }));
        }
        for user in std::mem::take(&mut self.notify) {
            let Some(inbox) = self.inboxes.get_mut(&user) else { continue };
            inbox.notify_pending = false;
            let latest_seq = inbox.latest_seq();
            for conn in self.online.get(&user).into_iter().flatten() {
                if !self.notified.insert(*conn) {
                    self.stats.notifies_gated += 1;
                    continue;
                }
                let mut frame = Vec::with_capacity(16);
                Response::Timeline(TimelineResponse::Notify { latest_seq }).encode(0, &mut frame);
                self.outputs.push(TimelineOutput::Push { conn: *conn, frame });
                self.stats.notifies_pushed += 1;
            }
        }
        into.append(&mut self.outputs);
    }

    // ---- recovery --------------------------------------------------------------------

    /// One record of the timeline log, at start (in LSN order).
    pub fn recover_record(&mut self, kind: u8, lsn: u64, payload: &[u8]) -> bool {
        self.note_recovered_lsn(lsn);
        if let Some(ok) = self.recover_checkpoint_record(kind, lsn, payload) {
            return ok;
        }
        match kind {
            records::KIND_GROUP => {
                let Some((group, members)) = records::decode_group(payload) else { return false };
                self.recover_group(group, members);
                true
            }
            records::KIND_ENTRY => {
                let Some((user, client_msg_id, wire)) = records::decode_entry(payload) else { return false };
                let entry = SyncEntries::from_encoded(1, wire).iter().next().expect("decoded");
                if entry.from == user && client_msg_id != 0 && entry.content_type != CONTENT_READ_MARKER {
                    self.remember_sent((user, client_msg_id), Sent::Recovered { message_id: entry.message_id });
                }
                self.last_message_id = self.last_message_id.max(entry.message_id);
                if client_msg_id != 0 {
                    let key = (user, entry.from, client_msg_id);
                    if let Some(earlier) = self.delivered.get(&key).map(|d| d.seq) {
                        // Stored twice: the earlier record's append failed (a replicated
                        // append that timed out waiting for a peer is still on the local
                        // disk), and the retry's record is the one acknowledged. Keep it.
                        if let Some(inbox) = self.inboxes.get_mut(&user) {
                            inbox.forget(earlier);
                        }
                        self.stats.entries_replaced_at_recovery += 1;
                    }
                    let at = checkpoint::DeliveredAt {
                        seq: entry.seq,
                        message_id: entry.message_id,
                        sent_at_ms: entry.sent_at_ms,
                    };
                    self.remember_delivered(key, at);
                }
                self.recover_marker_entry(user, wire);
                let inbox = self.inboxes.entry(user).or_default();
                inbox.recover(entry.seq, wire, lsn, &mut self.recent, &self.config);
                self.ceilings.recover(user, entry.seq);
                true
            }
            records::KIND_SEQ_CEILING => {
                let Some((bucket, ceiling)) = records::decode_ceiling(payload) else { return false };
                self.ceilings.recover_bucket(bucket, ceiling);
                true
            }
            records::KIND_LUCKY_CREATED => {
                let Some(c) = LuckyCreated::decode(payload) else { return false };
                self.lucky
                    .entry(c.packet_id)
                    .or_insert_with(|| LuckyPacket::new(c.group, c.total_fen, c.count))
                    .durable = true;
                true
            }
            records::KIND_LUCKY_OPENED => {
                let Some((packet, user, amount)) = records::decode_lucky_opened(payload) else { return false };
                match self.lucky.get_mut(&packet) {
                    Some(p) => {
                        p.recover_open(user, amount);
                        true
                    }
                    None => {
                        // Its packet may come later, from a checkpoint written after it.
                        self.recover_orphan_open(packet, user, amount);
                        true
                    }
                }
            }
            _ => false,
        }
    }

    /// A group recovered from the table, or from a later record of the log (which wins).
    pub fn recover_group(&mut self, group: u64, members: Vec<u64>) {
        if group_home_core(group, self.cores) == self.core && (group >> 40) & 0xff == self.core as u64 {
            self.next_group = self.next_group.max((group & ((1 << 40) - 1)) + 1);
        }
        self.groups.insert(group, members);
    }

    /// After recovery: every inbox continues above its bucket's persisted ceiling.
    pub fn finish_recovery(&mut self) {
        self.finish_retention_recovery();
        for (user, inbox) in self.inboxes.iter_mut() {
            inbox.continue_from(self.ceilings.ceiling_of(*user));
        }
        self.ceilings.after_recovery();
    }

    /// The next seq a user without an inbox in memory starts above (its bucket's ceiling).
    pub fn inbox(&self, user: u64) -> Option<&Inbox> {
        self.inboxes.get(&user)
    }

    pub fn group(&self, group: u64) -> Option<&[u64]> {
        self.groups.get(&group).map(Vec::as_slice)
    }

    /// Bytes of entries in flight of the sends this core coordinates (see [`fanout_bytes`]).
    pub fn fanout_pending_bytes(&self) -> usize {
        self.fanout_bytes_in_flight
    }

    pub fn lucky_packet(&self, packet: u64) -> Option<&LuckyPacket> {
        self.lucky.get(&packet)
    }

    /// Bytes of heap held by inboxes (an estimate, for the memory figure).
    pub fn inbox_heap_bytes(&self) -> usize {
        self.recent.heap_bytes() + self.inbox_index_bytes()
    }

    /// Bytes of the newest durable entries kept in memory (bound: `recent_bytes_max`).
    pub fn recent_bytes(&self) -> usize {
        self.recent.heap_bytes()
    }

    /// Heap bytes of the idempotency tables (client message ids of sends, and of
    /// deliveries per recipient), an estimate from their capacities.
    pub fn dedup_bytes(&self) -> usize {
        self.sent.capacity() * (std::mem::size_of::<((u64, u64), Sent)>() + 1)
            + self.sent_order.capacity() * std::mem::size_of::<(u64, u64)>()
            + self.delivered.capacity() * (std::mem::size_of::<((u64, u64, u64), u64)>() + 1)
            + self.delivered_order.capacity() * std::mem::size_of::<(u64, u64, u64)>()
    }

    /// Heap bytes of the inboxes themselves (pending entries and indexes).
    pub fn inbox_index_bytes(&self) -> usize {
        self.inboxes.values().map(Inbox::heap_bytes).sum::<usize>()
            + self.inboxes.capacity() * (std::mem::size_of::<(u64, Inbox)>() + 1)
    }
}

/// Which per-user bucket a request takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateKind {
    Message,
    Sync,
}

enum SyncAnswer {
    Now(Reply),
    Read { lsns: Vec<u64>, latest_seq: u64, expired: bool },
}
