//! Memory per idle user of the timelines, in-process: one core's state machine receives
//! one-to-one sends until every inbox holds `--entries` entries, every append is made
//! durable at once (a fake LSN), every device logs out, and the live heap is counted.
//!
//! ```text
//! cargo run --release -p redrain-benches --bin timeline_memory -- --users 10000 --entries 50
//! ```
//!
//! Bytes are counted by a global allocator that wraps mimalloc (requested sizes of live
//! allocations). The newest entries of all inboxes share one arena per core, bounded by
//! `timeline.recent_bytes_max` (a fixed cost per core, not per user); it is reported on its
//! own, and the per-user figure is everything else: the inbox, its (seq, LSN) index, the
//! idempotency tables and the maps that hold them.

use clap::Parser;
use redrain_engine::overload::rates::RateConfig;
use redrain_engine::shard::output::ConnOutput;
use redrain_engine::shard::state::{Caller, Clock, ConnAnswers};
use redrain_engine::timeline::{TimelineConfig, TimelineOutput, Timelines, UserRateLimits};
use redrain_net::timeline::{TimelineRequest, CONTENT_TEXT, TARGET_USER};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
struct Args {
    /// Users (each with one device, logged out at the end).
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Entries per inbox (each send writes one into the sender's and one into the target's).
    #[arg(long, default_value_t = 50)]
    entries: u64,
    /// Payload bytes of each message.
    #[arg(long, default_value_t = 32)]
    payload: usize,
}

fn main() {
    let args = Args::parse();
    let before = LIVE_BYTES.load(Relaxed);
    let mut t = Timelines::new(0, 1, 1, TimelineConfig::default(), 7);
    // Rates that never refuse (this measures memory, not the limiter).
    let rate = RateConfig { per_s: u32::MAX, burst: u32::MAX, users_max: args.users as usize + 1 };
    t.set_rate_limits(UserRateLimits { messages: rate, syncs: rate });
    let mut lsn = 0u64;
    let mut outs = Vec::new();
    let mut held = ConnOutput::default();
    let mut ready = Vec::new();
    let payload = vec![b'm'; args.payload];
    for user in 1..=args.users {
        t.on_login(user, user);
    }
    let mut clock = Clock { mono_ms: 1_000, unix_ms: 1_767_225_600_000 };
    for round in 0..args.entries / 2 {
        clock.mono_ms += 1_000;
        clock.unix_ms += 1_000;
        for user in 1..=args.users {
            let target = user % args.users + 1;
            let request = TimelineRequest::Send {
                target_kind: TARGET_USER,
                target,
                client_msg_id: round + 1,
                content_type: CONTENT_TEXT,
                payload: &payload,
            };
            let caller = Caller { conn: user, user, request_id: round as u32 + 1 };
            let mut out = ConnAnswers { held: &mut held, ready: &mut ready };
            if let Err(code) = t.on_request(caller, &request, clock, &mut out) {
                panic!("send refused: {code:?}");
            }
            // Make every append durable and drop what goes to devices.
            loop {
                t.drain(&mut outs);
                if outs.is_empty() {
                    break;
                }
                for o in outs.drain(..) {
                    if let TimelineOutput::Append { token, .. } = o {
                        lsn += 1;
                        t.on_appended(token, Some(lsn));
                    }
                }
            }
            held = ConnOutput::default();
            ready = Vec::new();
        }
    }
    for user in 1..=args.users {
        t.on_closed(user);
    }
    t.on_tick(clock, 0);
    let live = LIVE_BYTES.load(Relaxed) - before;
    let recent = t.recent_bytes();
    let entries = t.stats.entries_committed;
    println!(
        "{} users, {:.1} entries per inbox ({} bytes of payload each), all logged out",
        args.users,
        entries as f64 / args.users as f64,
        args.payload
    );
    println!("live heap of the timelines: {:.1} MiB", live as f64 / 1048576.0);
    println!(
        "recent-entry arena: {:.1} MiB (bound timeline.recent_bytes_max = {} MiB per core)",
        recent as f64 / 1048576.0,
        t.config().recent_bytes_max >> 20
    );
    println!("per idle user beyond the arena: {:.0} bytes", (live - recent) as f64 / args.users as f64);
    println!("  of which inboxes and their indexes: {:.0} bytes", t.inbox_index_bytes() as f64 / args.users as f64);
    println!(
        "  of which idempotency tables (sends, deliveries; bounded per core by timeline.send_dedup_entries_max = {} \
         each): {:.0} bytes",
        t.config().send_dedup_entries_max,
        t.dedup_bytes() as f64 / args.users as f64
    );
}
