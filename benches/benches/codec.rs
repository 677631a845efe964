//! Hot paths of the wire codec: encoding and decoding Ping and Login frames,
//! and splitting a buffer that holds many frames (as one socket read does).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redrain_net::client::ClientCodec;
use redrain_net::frame::FrameDecoder;
use redrain_net::message::{Request, TOKEN_BYTES};
use redrain_net::Response;

mod profiler;

/// Frames in the many-frames buffer (about 26 KiB of 26-byte pings).
const FRAMES_PER_BUFFER: usize = 1000;
const FRAME_BYTES_MAX: u32 = 64 * 1024;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec/encode");
    g.throughput(Throughput::Elements(1));
    let payload = [7u8; 16];
    let token = [9u8; TOKEN_BYTES];
    let mut out = Vec::with_capacity(1024);
    g.bench_function("ping_16B", |b| {
        b.iter(|| {
            out.clear();
            Request::Ping { payload: black_box(&payload) }.encode(black_box(42), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("login", |b| {
        b.iter(|| {
            out.clear();
            Request::Login { token: black_box(&token) }.encode(black_box(42), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("pong_16B", |b| {
        b.iter(|| {
            out.clear();
            Response::Pong { payload: black_box(&payload) }.encode(black_box(42), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let dec = FrameDecoder::new(FRAME_BYTES_MAX);
    let mut g = c.benchmark_group("codec/decode");
    g.throughput(Throughput::Elements(1));
    let mut ping = Vec::new();
    Request::Ping { payload: &[7u8; 16] }.encode(1, &mut ping);
    let mut login = Vec::new();
    Request::Login { token: &[9u8; TOKEN_BYTES] }.encode(2, &mut login);
    for (name, bytes) in [("ping_16B", &ping), ("login", &login)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let (frame, used) = dec.decode(black_box(bytes)).expect("valid").expect("whole frame");
                black_box((Request::parse(&frame).expect("valid body"), used))
            })
        });
    }
    g.finish();

    let mut many = Vec::new();
    for i in 0..FRAMES_PER_BUFFER {
        Request::Ping { payload: &[i as u8; 16] }.encode(i as u32 + 1, &mut many);
    }
    let mut g = c.benchmark_group("codec/decode_many");
    g.throughput(Throughput::Elements(FRAMES_PER_BUFFER as u64));
    g.bench_function("server_1000_pings_one_buffer", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Some((frame, used)) = dec.decode(&many[at..]).expect("valid") {
                black_box(Request::parse(&frame).expect("valid body"));
                at += used;
                n += 1;
            }
            assert_eq!(n, FRAMES_PER_BUFFER);
        })
    });
    let mut pongs = Vec::new();
    for i in 0..FRAMES_PER_BUFFER {
        Response::Pong { payload: &[i as u8; 16] }.encode(i as u32 + 1, &mut pongs);
    }
    g.bench_function("client_1000_pongs_one_buffer", |b| {
        b.iter_batched_ref(
            || {
                let mut codec = ClientCodec::new(FRAME_BYTES_MAX);
                codec.feed(&pongs);
                codec
            },
            |codec| {
                let n = codec.drain(|h, r| {
                    black_box((h, r.is_ok()));
                });
                assert_eq!(n, Ok(FRAMES_PER_BUFFER));
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = profiler::criterion();
    targets = encode, decode
}
criterion_main!(benches);
