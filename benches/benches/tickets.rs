//! Ticket toolchain benches: one ticket encrypted and decrypted, the amount split per million
//! packets, and the time per packet of the splitter and of the whole generation at 1M and 10M
//! packets (flat per-packet time = O(n)).
//!
//! Run: `cargo bench -p redrain-benches --bench tickets`. Generation writes to a temporary
//! directory under `$TMPDIR` (set it to /dev/shm to take the disk out of the figure).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use redrain_engine::tickets::budget::Budget;
use redrain_engine::tickets::format::{seal_record, FileTag, Ticket};
use redrain_engine::tickets::generate::{generate, GenerateOptions};
use redrain_engine::tickets::keyring::{cipher_for, KeyEntry, Keyring, KEYRING_FORMAT};
use redrain_engine::tickets::plan::Topology;
use redrain_engine::tickets::split::{AmountSplit, AmountStream};

fn keyring() -> Keyring {
    Keyring {
        format: KEYRING_FORMAT.into(),
        event_name: "bench".into(),
        budget_sha256: String::new(),
        key_coverage_cap_fen: 30_000_000,
        keys: vec![KeyEntry { key_id: 7, key: [0x5a; 16], packets: 0, coverage_fen: 0 }],
        whitelist: None,
        blacklist: Default::default(),
    }
}

fn ticket_crypto(c: &mut Criterion) {
    let cipher = cipher_for(&[0x5a; 16]);
    let tag = FileTag { node: 1, core: 0, slot: 2 };
    let crc_seed = tag.crc_seed();
    let ticket = Ticket { packet_id: 123_456_789, amount_fen: 888, batch_id: 3, key_id: 7 };
    let mut group = c.benchmark_group("ticket");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_one", |b| b.iter(|| black_box(ticket).encrypt(&cipher)));
    group.bench_function("encrypt_and_seal_one", |b| {
        b.iter(|| seal_record(&black_box(ticket).encrypt(&cipher), 7, black_box(42), crc_seed))
    });
    let record = seal_record(&ticket.encrypt(&cipher), 7, 42, crc_seed);
    let keyring = keyring();
    let decryptor = keyring.decryptor();
    let ciphertext = ticket.encrypt(&cipher);
    group.bench_function("decrypt_one", |b| b.iter(|| decryptor.decrypt(black_box(&ciphertext), 7).unwrap()));
    group.bench_function("check_and_decrypt_one", |b| {
        b.iter(|| decryptor.decrypt_record(black_box(&record), 42, crc_seed).unwrap())
    });
    group.finish();
}

fn split_packets(packets: u64) -> u64 {
    let split = AmountSplit::new(packets, 10, 8_888, packets * 200).unwrap();
    AmountStream::new(split, 0, packets, ChaCha8Rng::seed_from_u64(1)).map(u64::from).sum()
}

fn amount_split(c: &mut Criterion) {
    let mut group = c.benchmark_group("amount_split");
    group.sample_size(20);
    for packets in [1_000_000u64, 10_000_000] {
        group.throughput(Throughput::Elements(packets));
        group.bench_function(format!("{}M_packets", packets / 1_000_000), |b| {
            b.iter(|| assert_eq!(split_packets(black_box(packets)), packets * 200))
        });
    }
    group.finish();
}

fn budget_text(packets: u64) -> String {
    // The example event's shape: five merchants, four slots.
    let scale = packets / 1_000_000;
    format!(
        r#"
[event]
name = "bench"
[[event.slots]]
id = "a"
start = "20:00"
end = "21:00"
[[event.slots]]
id = "b"
start = "21:00"
end = "22:00"
[[merchants]]
id = "m1"
kind = "image"
budget_fen = {}
packets = {}
min_amount_fen = 10
max_amount_fen = 8_888
slot_weights = {{ a = 40, b = 60 }}
[[merchants]]
id = "m2"
kind = "video"
budget_fen = {}
packets = {}
min_amount_fen = 100
max_amount_fen = 66_600
slot_weights = {{ a = 50, b = 50 }}
[[merchants]]
id = "m3"
kind = "logo"
budget_fen = {}
packets = {}
min_amount_fen = 1
max_amount_fen = 2_000
slot_weights = {{ a = 25, b = 75 }}
"#,
        scale * 60_000_000,
        scale * 300_000,
        scale * 150_000_000,
        scale * 150_000,
        scale * 55_000_000,
        scale * 550_000,
    )
}

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    for packets in [1_000_000u64, 10_000_000] {
        let loaded = Budget::parse_with_hash(&budget_text(packets)).unwrap();
        group.throughput(Throughput::Elements(packets));
        group.bench_function(format!("{}M_packets_2_threads", packets / 1_000_000), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |root| {
                    let options = GenerateOptions {
                        out_dir: root.path().join("tickets"),
                        keyring_path: root.path().join("keys.json"),
                        seed: Some(1),
                        variant: 0,
                        threads: 2,
                        overwrite: false,
                    };
                    let report = generate(&loaded, Topology { nodes: 3, cores: 2 }, &options).unwrap();
                    assert_eq!(report.manifest.packets_total, packets);
                    root
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, ticket_crypto, amount_split, generation);
criterion_main!(benches);
