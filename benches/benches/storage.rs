//! Criterion benches of the storage hot paths: record/batch encode and
//! decode, CRC32C, and the keyed-table index.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redrain_storage::record::{decode_batch, BatchBuilder, BatchDecode};
use redrain_storage::table::TableIndex;

const RECORD_BYTES: usize = 100;
const RECORDS_PER_BATCH: usize = 1000;

fn encode_batch(c: &mut Criterion) {
    let payload = [0x5au8; RECORD_BYTES];
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    let mut builder = BatchBuilder::new(1);
    group.bench_function("encode_batch_1000x100B", |b| {
        b.iter(|| {
            builder.reset(1);
            for _ in 0..RECORDS_PER_BATCH {
                builder.push(1, black_box(&payload));
            }
            black_box(builder.finish().len())
        })
    });
    let mut builder = BatchBuilder::new(1);
    for _ in 0..RECORDS_PER_BATCH {
        builder.push(1, &payload);
    }
    let bytes = builder.finish().to_vec();
    group.bench_function("decode_verify_batch_1000x100B", |b| {
        b.iter(|| match decode_batch(black_box(&bytes)) {
            BatchDecode::Complete(batch) => black_box(batch.records().count()),
            _ => unreachable!("valid batch"),
        })
    });
    group.finish();
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [117usize, 4096, 1 << 20] {
        let data = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size}B"), |b| b.iter(|| black_box(crc32c::crc32c(black_box(&data)))));
    }
    // A record's CRC as the log computes it (13 header bytes, then a 100-byte
    // payload, at an odd offset as in a batch buffer): the crate's routine
    // against the short-buffer one the log uses.
    let buffer = vec![0x5au8; 256];
    let (header, payload) = (&buffer[3..16], &buffer[20..120]);
    group.throughput(Throughput::Bytes(113));
    group.bench_function("record_13+100B_crate", |b| {
        b.iter(|| black_box(crc32c::crc32c_append(crc32c::crc32c(black_box(header)), black_box(payload))))
    });
    group.bench_function("record_13+100B_short", |b| {
        b.iter(|| {
            let crc = redrain_storage::crc::crc32c_append(0, black_box(header));
            black_box(redrain_storage::crc::crc32c_append(crc, black_box(payload)))
        })
    });
    group.finish();
}

fn index(c: &mut Criterion) {
    const KEYS: u64 = 100_000;
    let mut group = c.benchmark_group("table_index");
    let mut index = TableIndex::default();
    for k in 0..KEYS {
        index.apply(format!("cursor/{k}").as_bytes(), k + 1, Some(&k.to_le_bytes()));
    }
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|k| format!("cursor/{k}").into_bytes()).collect();
    let mut i = 0usize;
    let mut lsn = KEYS + 1;
    group.bench_function("put_overwrite_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            lsn += 1;
            index.apply(black_box(&keys[i]), lsn, Some(&lsn.to_le_bytes()));
        })
    });
    group.bench_function("get_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(index.get(black_box(&keys[i])).map(|v| v.len()))
        })
    });
    group.bench_function("put_new_key", |b| {
        b.iter_batched(
            TableIndex::default,
            |mut fresh| {
                fresh.apply(b"cursor/new", 1, Some(b"value"));
                fresh
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encode_batch, crc, index);
criterion_main!(benches);
