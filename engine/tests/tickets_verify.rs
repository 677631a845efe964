//! Verify catches every kind of damage: flipped bits, truncation, swapped and duplicated
//! records, tampered amounts, blacklisted keys, missing and extra files; and names the file,
//! the offset and the problem.

mod tickets_common;

use std::path::{Path, PathBuf};

use redrain_engine::tickets::format::{record_ciphertext, record_key_id, seal_record, FileTag, Ticket, RECORD_BYTES};
use redrain_engine::tickets::keyring::{cipher_for, Keyring};
use redrain_engine::tickets::verify::{verify, VerifyOptions, VerifyReport};
use tickets_common::*;

const TAG: FileTag = FileTag { node: 1, core: 1, slot: 1 };

struct Fixture {
    _root: tempfile::TempDir,
    generated: Generated,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let generated = generate_into(root.path(), 21, 0, 2);
        Fixture { _root: root, generated }
    }

    fn file(&self) -> PathBuf {
        self.generated.dir.join(TAG.file_name())
    }

    fn keyring(&self) -> Keyring {
        Keyring::load(&self.generated.keyring).unwrap()
    }

    fn verify_with(&self, keyring: &Keyring) -> VerifyReport {
        verify(
            &self.generated.dir,
            keyring,
            Some(&small_budget()),
            &VerifyOptions { threads: 2, problems_listed_max: 1_000 },
        )
        .unwrap()
    }

    fn verify(&self) -> VerifyReport {
        self.verify_with(&self.keyring())
    }
}

fn record(path: &Path, index: usize) -> [u8; RECORD_BYTES] {
    let bytes = std::fs::read(path).unwrap();
    bytes[index * RECORD_BYTES..(index + 1) * RECORD_BYTES].try_into().unwrap()
}

fn write_record(path: &Path, index: usize, record: &[u8; RECORD_BYTES]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[index * RECORD_BYTES..(index + 1) * RECORD_BYTES].copy_from_slice(record);
    std::fs::write(path, bytes).unwrap();
}

fn has(report: &VerifyReport, kind: &str, file: Option<&str>, offset: Option<u64>) -> bool {
    report.problems.iter().any(|p| {
        p.kind == kind && (file.is_none() || p.file.as_deref() == file) && (offset.is_none() || p.offset == offset)
    })
}

fn name() -> String {
    TAG.file_name()
}

#[test]
fn clean_generation_verifies() {
    let fixture = Fixture::new();
    let report = fixture.verify();
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.problems_total, 0);
}

#[test]
fn flipped_bit_is_caught_at_its_offset() {
    let fixture = Fixture::new();
    let path = fixture.file();
    let mut damaged = record(&path, 7);
    damaged[3] ^= 0x10;
    write_record(&path, 7, &damaged);
    let report = fixture.verify();
    assert!(!report.ok);
    assert!(has(&report, "corrupt_record", Some(&name()), Some(7 * 26)), "{}", report.render());
    assert!(has(&report, "file_checksum", Some(&name()), None));
    assert!(has(&report, "missing_packets", None, None));
    assert!(report.render().contains(&format!("{} @ byte 182 (record 7): corrupt_record", name())));
}

#[test]
fn flipped_bit_with_recomputed_crc_is_caught_by_decryption() {
    let fixture = Fixture::new();
    let path = fixture.file();
    let original = record(&path, 9);
    let mut ciphertext = record_ciphertext(&original);
    ciphertext[15] ^= 1;
    let forged = seal_record(&ciphertext, record_key_id(&original), 9, TAG.crc_seed());
    write_record(&path, 9, &forged);
    let report = fixture.verify();
    assert!(has(&report, "forged_ticket", Some(&name()), Some(9 * 26)), "{}", report.render());
}

#[test]
fn truncated_file_is_caught() {
    let fixture = Fixture::new();
    let path = fixture.file();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let report = fixture.verify();
    assert!(!report.ok);
    assert!(has(&report, "truncated_file", Some(&name()), None), "{}", report.render());
    assert!(has(&report, "truncated_record", Some(&name()), None));
    assert!(has(&report, "file_total", Some(&name()), None));
    // A cut on a record boundary is still caught by the length and the totals.
    let fixture = Fixture::new();
    let path = fixture.file();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 2 * RECORD_BYTES]).unwrap();
    let report = fixture.verify();
    assert!(has(&report, "file_length", Some(&name()), None), "{}", report.render());
    assert!(has(&report, "merchant_total", None, None));
}

#[test]
fn swapped_records_are_caught() {
    let fixture = Fixture::new();
    let path = fixture.file();
    let (a, b) = (record(&path, 3), record(&path, 40));
    write_record(&path, 3, &b);
    write_record(&path, 40, &a);
    let report = fixture.verify();
    assert!(has(&report, "misplaced_record", Some(&name()), Some(3 * 26)), "{}", report.render());
    assert!(has(&report, "misplaced_record", Some(&name()), Some(40 * 26)));
}

#[test]
fn record_moved_to_another_file_is_caught() {
    let fixture = Fixture::new();
    let other = fixture.generated.dir.join(FileTag { node: 0, core: 1, slot: 1 }.file_name());
    let foreign = record(&other, 5);
    write_record(&fixture.file(), 5, &foreign);
    let report = fixture.verify();
    assert!(has(&report, "corrupt_record", Some(&name()), Some(5 * 26)), "{}", report.render());
}

#[test]
fn duplicated_record_is_caught_raw_and_resealed() {
    // A raw copy lands at the wrong index.
    let fixture = Fixture::new();
    let path = fixture.file();
    write_record(&path, 12, &record(&path, 11));
    let report = fixture.verify();
    assert!(has(&report, "misplaced_record", Some(&name()), Some(12 * 26)), "{}", report.render());
    // Resealed with the right index and CRC (CRC is no MAC), the packet id repeats.
    let fixture = Fixture::new();
    let path = fixture.file();
    let copy = record(&path, 11);
    let resealed = seal_record(&record_ciphertext(&copy), record_key_id(&copy), 12, TAG.crc_seed());
    write_record(&path, 12, &resealed);
    let report = fixture.verify();
    assert!(has(&report, "duplicate_packet_id", None, None), "{}", report.render());
    assert!(has(&report, "missing_packets", None, None));
}

#[test]
fn tampered_amount_is_caught_even_when_reencrypted_with_the_right_key() {
    let fixture = Fixture::new();
    let keyring = fixture.keyring();
    let decryptor = keyring.decryptor();
    let path = fixture.file();
    let original = record(&path, 20);
    let mut ticket = decryptor.decrypt_record(&original, 20, TAG.crc_seed()).unwrap();
    let key = keyring.key(ticket.key_id).unwrap();
    ticket.amount_fen += 1;
    let tampered = seal_record(&ticket.encrypt(&cipher_for(&key.key)), ticket.key_id, 20, TAG.crc_seed());
    write_record(&path, 20, &tampered);
    let report = fixture.verify();
    assert!(!report.ok);
    assert!(has(&report, "file_total", Some(&name()), None), "{}", report.render());
    assert!(has(&report, "merchant_total", None, None));
    assert!(has(&report, "key_coverage", None, None));

    // Amount pushed outside the merchant's bounds is named as such.
    let fixture = Fixture::new();
    let keyring = fixture.keyring();
    let path = fixture.file();
    let original = record(&path, 21);
    let ticket = keyring.decryptor().decrypt_record(&original, 21, TAG.crc_seed()).unwrap();
    let big = Ticket { amount_fen: 16_000_000, ..ticket };
    let key = keyring.key(ticket.key_id).unwrap();
    write_record(&path, 21, &seal_record(&big.encrypt(&cipher_for(&key.key)), big.key_id, 21, TAG.crc_seed()));
    let report = fixture.verify();
    assert!(has(&report, "amount_out_of_bounds", Some(&name()), Some(21 * 26)), "{}", report.render());
}

#[test]
fn blacklisted_key_is_caught() {
    let fixture = Fixture::new();
    let mut keyring = fixture.keyring();
    let key_id = record_key_id(&record(&fixture.file(), 0));
    keyring.blacklist.insert(key_id);
    let report = fixture.verify_with(&keyring);
    assert!(!report.ok);
    assert!(has(&report, "blacklisted_key", Some(&name()), Some(0)), "{}", report.render());
    // A whitelist without the key refuses it too.
    let mut keyring = fixture.keyring();
    keyring.whitelist = Some(keyring.keys.iter().map(|key| key.key_id).filter(|&id| id != key_id).collect());
    let report = fixture.verify_with(&keyring);
    assert!(has(&report, "key_not_whitelisted", Some(&name()), Some(0)), "{}", report.render());
}

#[test]
fn missing_and_unlisted_files_are_caught() {
    let fixture = Fixture::new();
    std::fs::rename(fixture.file(), fixture.generated.dir.join("stray.tickets")).unwrap();
    let report = fixture.verify();
    assert!(has(&report, "missing_file", Some(&name()), None), "{}", report.render());
    assert!(has(&report, "unlisted_file", Some("stray.tickets"), None));
}

#[test]
fn wrong_budget_is_caught() {
    let fixture = Fixture::new();
    let other = redrain_engine::tickets::budget::Budget::parse_with_hash(
        &SMALL_BUDGET.replace("budget_fen = 3_000_000", "budget_fen = 3_000_001"),
    )
    .unwrap();
    let report = verify(
        &fixture.generated.dir,
        &fixture.keyring(),
        Some(&other),
        &VerifyOptions { threads: 1, problems_listed_max: 100 },
    )
    .unwrap();
    assert!(has(&report, "budget_hash", None, None), "{}", report.render());
    assert!(has(&report, "budget_merchants", None, None));
}

#[test]
fn damaged_manifest_is_refused_or_reported_never_trusted() {
    use redrain_engine::tickets::verify::VerifyError;
    let fixture = Fixture::new();
    let path = fixture.generated.dir.join("manifest.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();

    // A packet total far beyond the data: reported, and the bitmap stays sized by the files.
    manifest["packets_total"] = serde_json::json!(1u64 << 39);
    std::fs::write(&path, manifest.to_string()).unwrap();
    let report = fixture.verify();
    assert!(has(&report, "manifest_totals", None, None), "{}", report.render());

    // Key ids beyond the 16-bit space: the manifest is refused as a whole.
    let mut manifest: serde_json::Value = serde_json::from_str(&original).unwrap();
    manifest["files"][0]["key_id_first"] = serde_json::json!(u32::MAX);
    std::fs::write(&path, manifest.to_string()).unwrap();
    let keyring = fixture.keyring();
    let options = VerifyOptions { threads: 1, problems_listed_max: 10 };
    assert!(matches!(verify(&fixture.generated.dir, &keyring, None, &options), Err(VerifyError::Manifest(_))));

    // Not JSON at all.
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(verify(&fixture.generated.dir, &keyring, None, &options), Err(VerifyError::Manifest(_))));
}
