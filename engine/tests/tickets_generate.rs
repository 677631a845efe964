//! Generation: exact sums, bounds, determinism per seed, variants, keys and their separation
//! from the tickets, and a clean verify of what was generated.

mod tickets_common;

use std::collections::HashSet;

use redrain_engine::tickets::file_reader::TicketFileReader;
use redrain_engine::tickets::format::FileTag;
use redrain_engine::tickets::generate::{generate, GenerateError, GenerateOptions};
use redrain_engine::tickets::keyring::Keyring;
use redrain_engine::tickets::manifest::Manifest;
use redrain_engine::tickets::verify::{verify, VerifyOptions};
use tickets_common::*;

fn verify_options() -> VerifyOptions {
    VerifyOptions { threads: 2, problems_listed_max: 50 }
}

#[test]
fn generated_tickets_sum_exactly_stay_in_bounds_and_verify() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 11, 0, 2);
    let manifest = Manifest::load(&generated.dir).unwrap();
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let decryptor = keyring.decryptor();

    let mut per_merchant = vec![(0u64, 0u64); manifest.merchants.len()];
    let mut packet_ids = HashSet::new();
    for file in &manifest.files {
        let mut reader = TicketFileReader::open(&generated.dir.join(&file.name), file.tag()).unwrap();
        assert_eq!(reader.len(), file.records);
        while let Some(issued) = reader.next_ticket(&decryptor).unwrap() {
            let ticket = issued.ticket.expect("generated tickets open");
            let batch = &manifest.batches[usize::from(ticket.batch_id)];
            assert_eq!(batch.slot, file.slot, "tickets sit in their slot's file");
            let merchant = &manifest.merchants[batch.merchant_index as usize];
            assert!(ticket.amount_fen >= merchant.min_amount_fen && ticket.amount_fen <= merchant.max_amount_fen);
            assert!(packet_ids.insert(ticket.packet_id), "packet ids are unique");
            let totals = &mut per_merchant[batch.merchant_index as usize];
            totals.0 += 1;
            totals.1 += u64::from(ticket.amount_fen);
        }
    }
    assert_eq!(packet_ids.len() as u64, manifest.packets_total);
    assert_eq!(packet_ids.iter().max().copied(), Some(manifest.packets_total - 1), "ids are dense");
    for (merchant, (packets, amount_fen)) in manifest.merchants.iter().zip(per_merchant) {
        assert_eq!(packets, merchant.packets, "{}", merchant.id);
        assert_eq!(amount_fen, merchant.budget_fen, "{} sums to the fen", merchant.id);
    }
    // Many keys, each under the cap.
    assert!(keyring.keys.len() > 10, "{} keys", keyring.keys.len());
    assert!(keyring.keys.iter().all(|key| key.coverage_fen <= manifest.key_coverage_cap_fen));
    assert_eq!(keyring.keys.iter().map(|key| key.coverage_fen).sum::<u64>(), manifest.amount_fen_total);

    let report = verify(&generated.dir, &keyring, Some(&small_budget()), &verify_options()).unwrap();
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.records, 23_000);
    // The instant-credit threshold takes about the top 10%.
    let share = manifest.instant_credit_packets as f64 / manifest.packets_total as f64;
    assert!((0.10..0.13).contains(&share), "instant share {share}");
}

#[test]
fn same_seed_gives_byte_identical_output_whatever_the_thread_count() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = generate_into(a.path(), 5, 0, 1);
    let second = generate_into(b.path(), 5, 0, 2);
    assert_eq!(read_dir_bytes(&first.dir), read_dir_bytes(&second.dir));
    assert_eq!(std::fs::read(&first.keyring).unwrap(), std::fs::read(&second.keyring).unwrap());
}

#[test]
fn another_variant_or_seed_gives_another_plan_with_the_same_totals() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let base = generate_into(a.path(), 5, 0, 2);
    let variant = generate_into(b.path(), 5, 1, 2);
    let other_seed = generate_into(c.path(), 6, 0, 2);
    let name = FileTag { node: 0, core: 0, slot: 0 }.file_name();
    let base_bytes = std::fs::read(base.dir.join(&name)).unwrap();
    assert_ne!(base_bytes, std::fs::read(variant.dir.join(&name)).unwrap());
    assert_ne!(base_bytes, std::fs::read(other_seed.dir.join(&name)).unwrap());
    // Same cut: the plan's totals do not depend on the variant.
    let totals = |manifest: &Manifest| manifest.files.iter().map(|f| (f.records, f.amount_fen)).collect::<Vec<_>>();
    assert_eq!(totals(&base.report.manifest), totals(&variant.report.manifest));
    assert_eq!(variant.report.manifest.variant, 1);
    // Amounts differ, not only the keys: decrypt both and compare the amount sequences.
    let amounts = |generated: &Generated| {
        let keyring = Keyring::load(&generated.keyring).unwrap();
        let decryptor = keyring.decryptor();
        let tag = FileTag { node: 0, core: 0, slot: 0 };
        let mut reader = TicketFileReader::open(&generated.dir.join(tag.file_name()), tag).unwrap();
        let mut amounts = Vec::new();
        while let Some(issued) = reader.next_ticket(&decryptor).unwrap() {
            amounts.push(issued.ticket.unwrap().amount_fen);
        }
        amounts
    };
    assert_ne!(amounts(&base), amounts(&variant));
}

#[test]
fn keyring_is_private_and_separate_from_tickets_and_manifest() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 3, 0, 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&generated.keyring).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let manifest_text = std::fs::read_to_string(generated.dir.join("manifest.json")).unwrap();
    let files = read_dir_bytes(&generated.dir);
    assert!(
        files.iter().all(|(name, _)| name.ends_with(".tickets") || name == "manifest.json"),
        "only tickets and manifest in the directory"
    );
    for key in &keyring.keys {
        assert!(!manifest_text.contains(&hex::encode(key.key)));
        for (_, bytes) in &files {
            assert!(!bytes.windows(16).any(|window| window == key.key));
        }
    }
    // A keyring inside the ticket directory is refused.
    let options = GenerateOptions {
        out_dir: root.path().join("second"),
        keyring_path: root.path().join("second").join("keys.json"),
        seed: Some(1),
        variant: 0,
        threads: 1,
        overwrite: false,
    };
    assert!(matches!(generate(&small_budget(), SMALL_TOPOLOGY, &options), Err(GenerateError::Options(_))));
    // An existing generation is not overwritten by accident.
    let again = GenerateOptions {
        out_dir: generated.dir.clone(),
        keyring_path: root.path().join("keys2.json"),
        seed: Some(1),
        variant: 0,
        threads: 1,
        overwrite: false,
    };
    assert!(matches!(generate(&small_budget(), SMALL_TOPOLOGY, &again), Err(GenerateError::Options(_))));
}

#[test]
fn placement_puts_each_node_backup_in_the_two_other_parks() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 3, 0, 2);
    let manifest = &generated.report.manifest;
    assert_eq!(manifest.placement.len(), 3);
    for node in &manifest.placement {
        assert_eq!(node.park, node.node % 3);
        assert_eq!(node.backup_peers.len(), 2);
        let mut parks: Vec<u16> = node.backup_peers.iter().map(|peer| peer % 3).collect();
        parks.push(node.park);
        parks.sort();
        assert_eq!(parks, vec![0, 1, 2]);
        assert_eq!(node.files.len(), 2 * 2, "cores x slots files per node");
    }
}

#[test]
fn explicit_instant_threshold_is_counted_exactly_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let text = SMALL_BUDGET.replace(
        "instant_credit_top_percent = 10",
        "instant_credit_top_percent = 10\ninstant_credit_threshold_fen = 1_234",
    );
    let loaded = redrain_engine::tickets::budget::Budget::parse_with_hash(&text).unwrap();
    let options = GenerateOptions {
        out_dir: root.path().join("tickets"),
        keyring_path: root.path().join("keys.json"),
        seed: Some(8),
        variant: 0,
        threads: 2,
        overwrite: false,
    };
    let report = generate(&loaded, SMALL_TOPOLOGY, &options).unwrap();
    assert_eq!(report.manifest.instant_credit_threshold_fen, 1_234);
    let keyring = Keyring::load(&options.keyring_path).unwrap();
    let verified = verify(&options.out_dir, &keyring, Some(&loaded), &verify_options()).unwrap();
    assert!(verified.ok, "{}", verified.render());
    assert_eq!(verified.instant_credit_packets, report.manifest.instant_credit_packets);
    assert!(verified.instant_credit_packets > 0);
}

#[test]
fn overwrite_replaces_a_generation_of_another_topology_completely() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 4, 0, 2);
    let options = GenerateOptions {
        out_dir: generated.dir.clone(),
        keyring_path: generated.keyring.clone(),
        seed: Some(4),
        variant: 0,
        threads: 2,
        overwrite: true,
    };
    let smaller = redrain_engine::tickets::plan::Topology { nodes: 2, cores: 1 };
    generate(&small_budget(), smaller, &options).unwrap();
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let report = verify(&generated.dir, &keyring, Some(&small_budget()), &verify_options()).unwrap();
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.files, 2 * 2);
}
