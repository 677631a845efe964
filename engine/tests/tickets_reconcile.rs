//! Reconciliation catches unknown, duplicate and tampered opens, applies the blacklist, and
//! splits creditable opens into instant and after-reconciliation credit.

mod tickets_common;

use std::fmt::Write;

use redrain_engine::tickets::file_reader::TicketFileReader;
use redrain_engine::tickets::format::Ticket;
use redrain_engine::tickets::keyring::Keyring;
use redrain_engine::tickets::reconcile::{reconcile, OpenedRecord, ReconcileOptions, ReconcileReport};
use tickets_common::*;

fn line(ticket: &Ticket, user_id: u64) -> OpenedRecord {
    OpenedRecord {
        packet_id: ticket.packet_id,
        amount_fen: ticket.amount_fen,
        key_id: ticket.key_id,
        user_id,
        node: 0,
        core: 0,
        opened_at_ms: 1_800_000_000_000 + user_id,
        kind: Default::default(),
        group_id: None,
    }
}

fn run(
    generated: &Generated,
    keyring: &Keyring,
    opened: &str,
    credit_out: Option<std::path::PathBuf>,
) -> ReconcileReport {
    let path = generated.dir.parent().unwrap().join("opened.ndjson");
    std::fs::write(&path, opened).unwrap();
    reconcile(
        &generated.dir,
        keyring,
        &path,
        &ReconcileOptions { threads: 2, opened_max: 1_000, problems_listed_max: 100, credit_out },
    )
    .unwrap()
}

#[test]
fn reconcile_sorts_opens_into_credit_and_refusals() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 31, 0, 2);
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let manifest = &generated.report.manifest;
    let threshold = manifest.instant_credit_threshold_fen;

    // Take tickets from one file: some above the instant threshold, some below.
    let file = &manifest.files[0];
    let mut reader = TicketFileReader::open(&generated.dir.join(&file.name), file.tag()).unwrap();
    let decryptor = keyring.decryptor();
    let (mut large, mut small) = (Vec::new(), Vec::new());
    while let Some(issued) = reader.next_ticket(&decryptor).unwrap() {
        let ticket = issued.ticket.unwrap();
        if ticket.amount_fen >= threshold && large.len() < 5 {
            large.push(ticket);
        } else if ticket.amount_fen < threshold && small.len() < 20 {
            small.push(ticket);
        }
    }
    assert_eq!((large.len(), small.len()), (5, 20));

    let mut opened = String::new();
    let mut user = 0;
    let push = |record: &OpenedRecord, opened: &mut String| {
        writeln!(opened, "{}", serde_json::to_string(record).unwrap()).unwrap();
    };
    for ticket in large.iter().chain(&small[..10]) {
        user += 1;
        push(&line(ticket, user), &mut opened);
    }
    // Unknown packet id.
    push(&line(&Ticket { packet_id: 9_999_999, ..small[10] }, 100), &mut opened);
    // Duplicate: the same packet opened again (by another user).
    push(&line(&small[0], 101), &mut opened);
    // Tampered amount.
    push(&line(&Ticket { amount_fen: small[11].amount_fen + 1, ..small[11] }, 102), &mut opened);
    // Key mismatch.
    push(&line(&Ticket { key_id: small[12].key_id.wrapping_add(1), ..small[12] }, 103), &mut opened);
    // Malformed line.
    opened.push_str("{\"packet_id\": \"not a number\"}\n");

    let credit_path = root.path().join("credit.ndjson");
    let report = run(&generated, &keyring, &opened, Some(credit_path.clone()));
    assert!(!report.ok);
    assert_eq!(report.opened_records, 20);
    assert_eq!(report.malformed, 1);
    assert_eq!(report.instant.packets, 5);
    assert_eq!(report.after_reconciliation.packets, 10);
    assert_eq!(report.instant.amount_fen, large.iter().map(|t| u64::from(t.amount_fen)).sum::<u64>());
    assert_eq!(report.refused.packets, 4);
    for kind in ["unknown", "duplicate", "amount_mismatch", "key_mismatch"] {
        assert_eq!(report.verdicts.get(kind).map(|t| t.packets), Some(1), "{kind}: {}", report.render());
    }
    let duplicate = report.problems.iter().find(|p| p.kind == "duplicate").unwrap();
    assert_eq!(duplicate.line, 17);
    assert!(duplicate.detail.contains("line 6"), "{}", duplicate.detail);
    assert_eq!(report.problems.iter().find(|p| p.kind == "unknown").unwrap().packet_id, Some(9_999_999));
    let opened_total: u64 = report.merchants.iter().map(|m| m.opened.packets).sum();
    assert_eq!(opened_total, 15);
    let credit = std::fs::read_to_string(&credit_path).unwrap();
    assert_eq!(credit.lines().count(), 15);
    assert_eq!(credit.lines().filter(|l| l.contains("\"credit\":\"instant\"")).count(), 5);
    let text = report.render();
    assert!(text.contains("credit after reconciliation"), "{text}");
    assert!(serde_json::to_string(&report).unwrap().contains("\"after_reconciliation\""));
}

#[test]
fn clean_opens_reconcile_ok_and_blacklisted_keys_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 32, 0, 1);
    let mut keyring = Keyring::load(&generated.keyring).unwrap();
    let manifest = &generated.report.manifest;
    let file = &manifest.files[3];
    let mut reader = TicketFileReader::open(&generated.dir.join(&file.name), file.tag()).unwrap();
    let decryptor = keyring.decryptor();
    let mut opened = String::new();
    let mut tickets = Vec::new();
    for user in 0..30 {
        let ticket = reader.next_ticket(&decryptor).unwrap().unwrap().ticket.unwrap();
        tickets.push(ticket);
        writeln!(opened, "{}", serde_json::to_string(&line(&ticket, user)).unwrap()).unwrap();
    }
    let report = run(&generated, &keyring, &opened, None);
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.instant.packets + report.after_reconciliation.packets, 30);

    keyring.blacklist.insert(tickets[0].key_id);
    let refused = tickets.iter().filter(|t| t.key_id == tickets[0].key_id).count() as u64;
    let report = run(&generated, &keyring, &opened, None);
    assert!(!report.ok);
    assert_eq!(report.verdicts["blacklisted_key"].packets, refused);
    assert_eq!(report.instant.packets + report.after_reconciliation.packets, 30 - refused);
}

#[test]
fn lucky_share_lines_are_counted_apart_from_tickets_and_a_repeated_share_is_a_problem() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 33, 0, 1);
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let file = &generated.report.manifest.files[0];
    let mut reader = TicketFileReader::open(&generated.dir.join(&file.name), file.tag()).unwrap();
    let ticket = reader.next_ticket(&keyring.decryptor()).unwrap().unwrap().ticket.unwrap();
    let lucky = |user_id: u64, amount_fen: u32| OpenedRecord {
        packet_id: 77,
        amount_fen,
        key_id: 0,
        user_id,
        node: 0,
        core: 1,
        opened_at_ms: 1_800_000_000_000,
        kind: redrain_engine::tickets::reconcile::OpenedKind::Lucky,
        group_id: Some(5),
    };
    let mut opened = String::new();
    for record in [line(&ticket, 1), lucky(1, 300), lucky(2, 700)] {
        writeln!(opened, "{}", serde_json::to_string(&record).unwrap()).unwrap();
    }
    let clean = run(&generated, &keyring, &opened, None);
    assert!(clean.ok, "{}", clean.render());
    assert_eq!(clean.opened_records, 3);
    assert_eq!((clean.lucky.packets, clean.lucky.amount_fen, clean.lucky_duplicates), (2, 1_000, 0));
    assert_eq!(clean.refused.packets, 0, "a lucky share is not an unknown ticket");
    writeln!(opened, "{}", serde_json::to_string(&lucky(2, 700)).unwrap()).unwrap();
    let repeated = run(&generated, &keyring, &opened, None);
    assert!(!repeated.ok);
    assert_eq!((repeated.lucky.packets, repeated.lucky_duplicates), (2, 1));
    assert_eq!(repeated.problems.iter().find(|p| p.kind == "lucky_duplicate").unwrap().line, 4);
}
