//! On-disk and on-wire format of records and batches (sans-IO).
//!
//! A *record* is `len u32 | kind u8 | lsn u64 | crc u32 | payload`, little
//! endian, where the CRC32C covers the first 13 header bytes and the payload.
//! Records are written in *batches* (one group commit = one batch):
//! `magic u32 | body_len u32 | first_lsn u64 | record_count u32 | crc u32 | body`
//! where the body is the records back to back and the batch CRC32C covers
//! the CRC field of every record, in order, followed by the first 20 header
//! bytes. Each record's own CRC already covers its bytes, so the batch CRC
//! needs only those 4 bytes per record to bind the records and the header
//! together - not a second pass over every body byte (which cost a twelfth
//! of a core's time at saturation). It is built as records are pushed.
//!
//! With direct I/O every write must start and end on a block boundary, so a
//! batch may be followed by *padding*: `magic u32 | len u32 | crc u32 | zeros`
//! where `len` counts the whole pad (header included, at least 12 bytes) and
//! the CRC32C covers its first 8 bytes. Readers skip padding; it never holds
//! records and is never shipped to peers.
//!
//! A batch is accepted only whole: every record's CRC, consecutive LSNs, the
//! record count and the batch CRC must all hold. That is what makes a group
//! commit atomic on recovery: a batch that was only partly written fails a
//! record CRC (the bytes it lacks) or the batch CRC (a header or record cut
//! off) and is dropped as a whole, so no unacknowledged record of a torn
//! batch becomes half-visible. Record CRCs also let a reader that gets a
//! single record (a replica, a table scan) verify it on its own. The same bytes travel to peers, so a replica is byte-identical.

use crate::crc;
use crate::error::DamageKind;
use crate::Lsn;

/// Bytes in a record header.
pub const RECORD_HEADER_BYTES: usize = 17;
/// Bytes in a batch header.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Marks the start of a batch ("RDB2"; "RDB1" batches, whose CRC covered
/// the whole body, are no longer written or read).
pub const BATCH_MAGIC: u32 = 0x3242_4452;
/// Marks padding after a batch ("RDP1").
pub const PAD_MAGIC: u32 = 0x3150_4452;
/// Bytes in a padding header (the smallest possible pad).
pub const PAD_HEADER_BYTES: usize = 12;
/// Largest pad a reader accepts: the largest write alignment plus a header.
pub const PAD_BYTES_LIMIT: usize = (64 << 10) + PAD_HEADER_BYTES;
/// Hard upper bound of a batch body, whatever the configuration says: a
/// length field above it is damage, never an allocation request.
pub const BATCH_BODY_BYTES_LIMIT: usize = 64 << 20;

/// The caller-defined type tag of a record (the storage layer does not
/// interpret it, except for the values reserved by [`crate::table`]).
pub type RecordKind = u8;

/// A decoded record borrowing its payload from the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Caller-defined type.
    pub kind: RecordKind,
    /// Log sequence number.
    pub lsn: Lsn,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Appends one encoded record to `out`; returns the record's CRC.
pub fn encode_record(out: &mut Vec<u8>, kind: RecordKind, lsn: Lsn, payload: &[u8]) -> u32 {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4] = kind;
    header[5..13].copy_from_slice(&lsn.to_le_bytes());
    let crc = record_crc(&header, payload);
    header[13..17].copy_from_slice(&crc.to_le_bytes());
    out.reserve(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    crc
}

/// The CRC of a record: its first 13 header bytes, then its payload.
#[inline]
fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    crc::crc32c_append(crc::crc32c_append(0, &header[..13]), payload)
}

/// Folds one record's CRC into a batch CRC being built.
#[inline]
fn fold_record_crc(batch_crc: u32, record_crc: u32) -> u32 {
    crc::crc32c_append(batch_crc, &record_crc.to_le_bytes())
}

/// The batch CRC of a well-formed body's records, before the header is
/// folded in (for builders that cut or renumber their records).
fn fold_body_crcs(body: &[u8]) -> u32 {
    let mut batch_crc = 0;
    let mut at = 0;
    while at + RECORD_HEADER_BYTES <= body.len() {
        let len = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        batch_crc = fold_record_crc(batch_crc, u32::from_le_bytes(body[at + 13..at + 17].try_into().expect("4 bytes")));
        at += RECORD_HEADER_BYTES + len;
    }
    batch_crc
}

/// Appends padding to `out` so that `base + out.len()` becomes a multiple of
/// `alignment` (a power of two, at most 64 KiB); returns the pad's length
/// (0 when already aligned). A gap smaller than a pad header grows by one
/// block.
pub fn pad_to_alignment(out: &mut Vec<u8>, base: u64, alignment: u64) -> usize {
    debug_assert!(alignment.is_power_of_two() && alignment as usize + PAD_HEADER_BYTES <= PAD_BYTES_LIMIT);
    let end = base + out.len() as u64;
    let mut len = (end.next_multiple_of(alignment) - end) as usize;
    if len == 0 {
        return 0;
    }
    if len < PAD_HEADER_BYTES {
        len += alignment as usize;
    }
    let start = out.len();
    out.extend_from_slice(&PAD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start..start + 8]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(start + len, 0);
    len
}

/// Returns `bytes` (whole batches as read from a segment) without the
/// padding between them. Only headers are read (the batches are verified by
/// whoever decodes them); at anything that is neither a batch nor valid
/// padding the rest is kept as is, for the verifying decoder to report.
pub fn strip_padding(bytes: Vec<u8>) -> Vec<u8> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if let BatchDecode::Padding(len) = decode_padding_header(rest) {
            out.get_or_insert_with(|| bytes[..at].to_vec());
            at += len;
            continue;
        }
        let batch_len = (rest.len() >= BATCH_HEADER_BYTES && rest[0..4] == BATCH_MAGIC.to_le_bytes())
            .then(|| BATCH_HEADER_BYTES + u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize)
            .filter(|len| *len <= rest.len());
        let Some(len) = batch_len else {
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(rest);
            }
            break;
        };
        if let Some(out) = out.as_mut() {
            out.extend_from_slice(&rest[..len]);
        }
        at += len;
    }
    out.unwrap_or(bytes)
}

/// Decodes the record at the start of `buf`; returns it and its encoded size.
pub fn decode_record(buf: &[u8]) -> Result<(RecordView<'_>, usize), DamageKind> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(DamageKind::Truncated);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let kind = buf[4];
    let lsn = u64::from_le_bytes(buf[5..13].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(buf[13..17].try_into().expect("4 bytes"));
    if len > buf.len() - RECORD_HEADER_BYTES {
        return Err(DamageKind::BadLength);
    }
    let payload = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    if record_crc(buf, payload) != crc {
        return Err(DamageKind::RecordChecksum);
    }
    Ok((RecordView { kind, lsn, payload }, RECORD_HEADER_BYTES + len))
}

/// Parses the record at the start of a body that [`decode_batch`] verified
/// (no CRC check); `None` if it does not parse after all.
fn parse_verified_record(buf: &[u8]) -> Option<(RecordView<'_>, usize)> {
    let header = buf.get(..RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let lsn = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
    let payload = buf.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?;
    Some((RecordView { kind: header[4], lsn, payload }, RECORD_HEADER_BYTES + len))
}

/// Builds one batch in a caller-owned buffer (reused across group commits so
/// the hot path does not allocate).
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    first_lsn: Lsn,
    count: u32,
    /// The batch CRC folded over the records so far.
    crcs: u32,
}

impl BatchBuilder {
    /// Starts an empty batch whose first record will carry `first_lsn`.
    pub fn new(first_lsn: Lsn) -> Self {
        let mut builder = Self::default();
        builder.reset(first_lsn);
        builder
    }

    /// An empty batch with room for `bytes_capacity` encoded bytes.
    pub fn with_capacity(first_lsn: Lsn, bytes_capacity: usize) -> Self {
        let mut builder =
            Self { buf: Vec::with_capacity(bytes_capacity.max(BATCH_HEADER_BYTES)), first_lsn, count: 0, crcs: 0 };
        builder.reset(first_lsn);
        builder
    }

    /// Clears the builder for a new batch starting at `first_lsn`.
    pub fn reset(&mut self, first_lsn: Lsn) {
        self.buf.clear();
        self.buf.resize(BATCH_HEADER_BYTES, 0);
        self.first_lsn = first_lsn;
        self.count = 0;
        self.crcs = 0;
    }

    /// Adds a record with the next LSN; returns that LSN.
    pub fn push(&mut self, kind: RecordKind, payload: &[u8]) -> Lsn {
        let lsn = self.first_lsn + self.count as u64;
        let crc = encode_record(&mut self.buf, kind, lsn, payload);
        self.crcs = fold_record_crc(self.crcs, crc);
        self.count += 1;
        lsn
    }

    /// Records in the batch so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Seals the header and returns the encoded batch.
    pub fn finish(&mut self) -> &[u8] {
        let body_len = (self.buf.len() - BATCH_HEADER_BYTES) as u32;
        self.buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&body_len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&self.first_lsn.to_le_bytes());
        self.buf[16..20].copy_from_slice(&self.count.to_le_bytes());
        let crc = crc::crc32c_append(self.crcs, &self.buf[0..20]);
        self.buf[20..24].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }

    /// Takes the encoded batch out (after [`finish`](Self::finish)).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// LSN of the first record.
    pub fn first_lsn(&self) -> Lsn {
        self.first_lsn
    }

    /// Keeps the first `records` records (`body_bytes` bytes of body) and
    /// returns the rest as a new builder continuing the LSN sequence.
    pub fn split_off(&mut self, records: usize, body_bytes: usize) -> BatchBuilder {
        assert!(records <= self.count as usize, "split beyond the batch");
        let mut rest = BatchBuilder::new(self.first_lsn + records as u64);
        // The batch being taken predicts the size of the next one: reserve
        // it now instead of growing (and copying) by doubling.
        rest.buf.reserve(self.buf.len());
        rest.buf.extend_from_slice(&self.buf[BATCH_HEADER_BYTES + body_bytes..]);
        rest.count = self.count - records as u32;
        rest.crcs = fold_body_crcs(&rest.buf[BATCH_HEADER_BYTES..]);
        self.buf.truncate(BATCH_HEADER_BYTES + body_bytes);
        self.count = records as u32;
        self.crcs = fold_body_crcs(&self.buf[BATCH_HEADER_BYTES..]);
        rest
    }

    /// Gives the records new LSNs from `first_lsn` on, rewriting each
    /// record's LSN and CRC (after a failed batch handed its LSNs back).
    pub fn renumber(&mut self, first_lsn: Lsn) {
        self.first_lsn = first_lsn;
        self.crcs = 0;
        let mut at = BATCH_HEADER_BYTES;
        let mut lsn = first_lsn;
        while at < self.buf.len() {
            let len = u32::from_le_bytes(self.buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            self.buf[at + 5..at + 13].copy_from_slice(&lsn.to_le_bytes());
            let crc =
                record_crc(&self.buf[at..at + 13], &self.buf[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len]);
            self.buf[at + 13..at + 17].copy_from_slice(&crc.to_le_bytes());
            self.crcs = fold_record_crc(self.crcs, crc);
            at += RECORD_HEADER_BYTES + len;
            lsn += 1;
        }
    }
}

/// A verified batch borrowing from the buffer it was decoded from.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// LSN of the first record.
    pub first_lsn: Lsn,
    /// Number of records (at least 1).
    pub record_count: u32,
    /// The whole encoded batch, header included.
    pub bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// LSN of the last record.
    pub fn last_lsn(&self) -> Lsn {
        self.first_lsn + self.record_count as u64 - 1
    }

    /// Iterates over the records (already verified by [`decode_batch`]).
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter { body: &self.bytes[BATCH_HEADER_BYTES..] }
    }
}

/// Iterator over the records of a verified batch.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    body: &'a [u8],
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.body.is_empty() {
            return None;
        }
        // The batch was verified in decode_batch, so this cannot fail; stop
        // rather than panic if it somehow does.
        let (record, used) = parse_verified_record(self.body)?;
        self.body = &self.body[used..];
        Some(record)
    }
}

/// Outcome of decoding the batch at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub enum BatchDecode<'a> {
    /// A complete, verified batch.
    Complete(BatchView<'a>),
    /// Valid padding of this many bytes (skip it).
    Padding(usize),
    /// The buffer ends before the batch does (torn write, or read more).
    Incomplete,
    /// The bytes are not a valid batch.
    Damaged(DamageKind),
}

/// Decodes and fully verifies the batch at the start of `buf`: header CRC,
/// every record's CRC, record count, and consecutive LSNs.
pub fn decode_batch(buf: &[u8]) -> BatchDecode<'_> {
    if buf.len() >= 4 && buf[0..4] == PAD_MAGIC.to_le_bytes() {
        return decode_padding_header(buf);
    }
    if buf.len() < BATCH_HEADER_BYTES {
        return BatchDecode::Incomplete;
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != BATCH_MAGIC {
        return BatchDecode::Damaged(DamageKind::BadMagic);
    }
    let body_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let first_lsn = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let record_count = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
    if body_len > BATCH_BODY_BYTES_LIMIT || record_count == 0 || body_len < record_count as usize * RECORD_HEADER_BYTES
    {
        return BatchDecode::Damaged(DamageKind::BadLength);
    }
    let total = BATCH_HEADER_BYTES + body_len;
    if buf.len() < total {
        return BatchDecode::Incomplete;
    }
    let body = &buf[BATCH_HEADER_BYTES..total];
    let mut rest = body;
    let mut expected_lsn = first_lsn;
    let mut seen = 0u32;
    let mut crcs = 0u32;
    while !rest.is_empty() {
        match decode_record(rest) {
            Ok((record, used)) => {
                if record.lsn != expected_lsn {
                    return BatchDecode::Damaged(DamageKind::BadRecordSequence);
                }
                crcs = fold_record_crc(crcs, u32::from_le_bytes(rest[13..17].try_into().expect("4 bytes")));
                expected_lsn += 1;
                seen += 1;
                rest = &rest[used..];
            }
            Err(kind) => return BatchDecode::Damaged(kind),
        }
    }
    if crc::crc32c_append(crcs, &buf[0..20]) != crc {
        return BatchDecode::Damaged(DamageKind::BatchChecksum);
    }
    if seen != record_count {
        return BatchDecode::Damaged(DamageKind::BadRecordSequence);
    }
    BatchDecode::Complete(BatchView { first_lsn, record_count, bytes: &buf[..total] })
}

/// Decodes padding at the start of `buf`; anything that does not start with
/// the pad magic is `Damaged(BadMagic)`.
fn decode_padding_header(buf: &[u8]) -> BatchDecode<'_> {
    if buf.len() < 4 || buf[0..4] != PAD_MAGIC.to_le_bytes() {
        return BatchDecode::Damaged(DamageKind::BadMagic);
    }
    if buf.len() < PAD_HEADER_BYTES {
        return BatchDecode::Incomplete;
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[0..8]) != crc {
        return BatchDecode::Damaged(DamageKind::BatchChecksum);
    }
    if !(PAD_HEADER_BYTES..=PAD_BYTES_LIMIT).contains(&len) {
        return BatchDecode::Damaged(DamageKind::BadLength);
    }
    if buf.len() < len {
        return BatchDecode::Incomplete;
    }
    BatchDecode::Padding(len)
}

/// Splits a buffer of concatenated batches into verified batches, skipping
/// padding. Returns the batches and, if the buffer did not end cleanly, the
/// offset and kind of the first problem.
pub fn split_batches(mut buf: &[u8]) -> (Vec<BatchView<'_>>, Option<(usize, DamageKind)>) {
    let mut out = Vec::new();
    let mut offset = 0usize;
    while !buf.is_empty() {
        match decode_batch(buf) {
            BatchDecode::Complete(batch) => {
                let used = batch.bytes.len();
                out.push(batch);
                buf = &buf[used..];
                offset += used;
            }
            BatchDecode::Padding(len) => {
                buf = &buf[len..];
                offset += len;
            }
            BatchDecode::Incomplete => return (out, Some((offset, DamageKind::Truncated))),
            BatchDecode::Damaged(kind) => return (out, Some((offset, kind))),
        }
    }
    (out, None)
}

/// Re-encodes the records of `batch` with LSN >= `from_lsn` as a new batch
/// (used when a resent batch overlaps what a replica already holds).
pub fn rebatch_from(batch: &BatchView<'_>, from_lsn: Lsn) -> Option<Vec<u8>> {
    if from_lsn > batch.last_lsn() {
        return None;
    }
    let first = from_lsn.max(batch.first_lsn);
    let mut builder = BatchBuilder::new(first);
    for record in batch.records().filter(|r| r.lsn >= first) {
        builder.push(record.kind, record.payload);
    }
    builder.finish();
    Some(builder.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(first: Lsn, payloads: &[&[u8]]) -> Vec<u8> {
        let mut b = BatchBuilder::new(first);
        for p in payloads {
            b.push(7, p);
        }
        b.finish();
        b.take()
    }

    #[test]
    fn batch_round_trips_records_in_order() {
        let bytes = batch_of(10, &[b"a", b"", b"hello"]);
        let BatchDecode::Complete(batch) = decode_batch(&bytes) else { panic!("valid batch rejected") };
        assert_eq!(batch.first_lsn, 10);
        assert_eq!(batch.last_lsn(), 12);
        let records: Vec<_> = batch.records().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].payload, b"hello");
        assert_eq!(records[1].lsn, 11);
        assert_eq!(records[0].kind, 7);
    }

    #[test]
    fn every_prefix_of_a_batch_is_incomplete_never_accepted() {
        let bytes = batch_of(1, &[b"abc", b"defgh"]);
        for cut in 0..bytes.len() {
            assert!(matches!(decode_batch(&bytes[..cut]), BatchDecode::Incomplete), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = batch_of(5, &[b"abc", b"defgh"]);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode_batch(&damaged), BatchDecode::Complete(_)),
                    "flip at byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn a_record_replaced_by_another_valid_record_fails_the_batch_crc() {
        // Same length, same LSN, its own CRC recomputed: every record check
        // passes, so only the batch CRC (over the record CRCs) can catch it.
        let bytes = batch_of(5, &[b"abc", b"defgh"]);
        let mut forged = Vec::new();
        encode_record(&mut forged, 7, 6, b"DEFGH");
        let second = BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 3;
        let mut damaged = bytes.clone();
        damaged[second..].copy_from_slice(&forged);
        assert!(decode_record(&damaged[second..]).is_ok(), "the forged record is valid on its own");
        assert!(matches!(decode_batch(&damaged), BatchDecode::Damaged(DamageKind::BatchChecksum)));
        assert!(matches!(decode_batch(&bytes), BatchDecode::Complete(_)));
    }

    #[test]
    fn split_and_renumber_keep_batches_valid() {
        let mut b = BatchBuilder::new(10);
        for p in [&b"a"[..], b"bb", b"ccc"] {
            b.push(1, p);
        }
        let first_body = RECORD_HEADER_BYTES + 1;
        let mut rest = b.split_off(1, first_body);
        b.finish();
        let BatchDecode::Complete(head) = decode_batch(b.finish()) else { panic!("head invalid") };
        assert_eq!((head.first_lsn, head.last_lsn()), (10, 10));
        rest.renumber(4);
        let BatchDecode::Complete(tail) = decode_batch(rest.finish()) else { panic!("renumbered tail invalid") };
        assert_eq!((tail.first_lsn, tail.last_lsn()), (4, 5));
        assert_eq!(tail.records().nth(1).unwrap().payload, b"ccc");
    }

    #[test]
    fn rebatch_keeps_only_the_suffix() {
        let bytes = batch_of(1, &[b"a", b"b", b"c"]);
        let BatchDecode::Complete(batch) = decode_batch(&bytes) else { panic!() };
        let suffix = rebatch_from(&batch, 3).expect("suffix exists");
        let BatchDecode::Complete(tail) = decode_batch(&suffix) else { panic!() };
        assert_eq!(tail.first_lsn, 3);
        assert_eq!(tail.records().next().unwrap().payload, b"c");
        assert!(rebatch_from(&batch, 4).is_none());
    }

    #[test]
    fn padding_aligns_writes_and_readers_skip_it() {
        for base in [0u64, 4096, 8192 - 5, 8192 - 12, 8192 - 13, 8192 - 20] {
            let mut bytes = batch_of(1, &[b"a", b"bb"]);
            let batch_len = bytes.len();
            let pad = pad_to_alignment(&mut bytes, base, 4096);
            assert_eq!((base + bytes.len() as u64) % 4096, 0, "base {base}");
            assert!(pad == 0 || pad >= PAD_HEADER_BYTES);
            bytes.extend_from_slice(&batch_of(3, &[b"ccc"]));
            pad_to_alignment(&mut bytes, base, 4096);
            let (batches, damage) = split_batches(&bytes);
            assert!(damage.is_none(), "base {base}: {damage:?}");
            assert_eq!(batches.iter().map(|b| b.first_lsn).collect::<Vec<_>>(), vec![1, 3]);
            let stripped = strip_padding(bytes.clone());
            assert_eq!(&stripped[..batch_len], &bytes[..batch_len]);
            assert_eq!(split_batches(&stripped).0.len(), 2);
            assert!(!stripped.windows(4).any(|w| w == PAD_MAGIC.to_le_bytes()));
        }
        let mut aligned = Vec::new();
        assert_eq!(pad_to_alignment(&mut aligned, 4096, 4096), 0);
        // A pad shorter than a batch header at the very end is still a pad.
        let mut short = Vec::new();
        assert_eq!(pad_to_alignment(&mut short, 4096 - 16, 4096), 16);
        assert!(matches!(decode_batch(&short), BatchDecode::Padding(16)));
    }

    #[test]
    fn damaged_or_cut_padding_is_never_skipped_silently() {
        let mut pad = Vec::new();
        pad_to_alignment(&mut pad, 100, 4096);
        for cut in PAD_HEADER_BYTES..pad.len() {
            assert!(matches!(decode_batch(&pad[..cut]), BatchDecode::Incomplete), "cut at {cut}");
        }
        for byte in 0..PAD_HEADER_BYTES {
            let mut damaged = pad.clone();
            damaged[byte] ^= 0x10;
            assert!(matches!(decode_batch(&damaged), BatchDecode::Damaged(_)), "flip in byte {byte}");
        }
    }

    #[test]
    fn absurd_lengths_are_damage_not_allocations() {
        let mut bytes = batch_of(1, &[b"a"]);
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_batch(&bytes), BatchDecode::Damaged(DamageKind::BadLength)));
    }
}
