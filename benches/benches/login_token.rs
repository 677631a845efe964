//! Login token check: minting (auth service side) and verifying (the node's
//! login path, pure HMAC-SHA256 computation).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redrain_net::token::{TokenClaims, TokenKeys};

mod profiler;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";
const PREVIOUS: &[u8] = b"bench-secret-previous-0123456";

fn login_token(c: &mut Criterion) {
    let keys = TokenKeys::new(SECRET, None).expect("valid secret");
    let rotating = TokenKeys::new(SECRET, Some(PREVIOUS)).expect("valid secrets");
    let old = TokenKeys::new(PREVIOUS, None).expect("valid secret");
    let claims = TokenClaims { user_id: 42, device_id: 1, expires_at_unix_s: 4_000_000_000 };
    let token = keys.mint(claims);
    let old_token = old.mint(claims);
    let mut forged = token;
    forged[30] ^= 1;
    let now = 1_800_000_000;

    let mut g = c.benchmark_group("login_token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mint", |b| b.iter(|| black_box(keys.mint(black_box(claims)))));
    g.bench_function("verify_ok", |b| b.iter(|| black_box(keys.verify(black_box(&token), now)).expect("valid")));
    g.bench_function("verify_bad_signature", |b| {
        b.iter(|| black_box(keys.verify(black_box(&forged), now)).expect_err("forged"))
    });
    g.bench_function("verify_previous_secret", |b| {
        b.iter(|| black_box(rotating.verify(black_box(&old_token), now)).expect("valid under previous"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = profiler::criterion();
    targets = login_token
}
criterion_main!(benches);
