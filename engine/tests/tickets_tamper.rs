//! One million random mutations of valid records: none is accepted.
//!
//! Half the mutations keep the CRC as it falls (so the CRC or position check must catch
//! them); the other half recompute the CRC over the mutated bytes, as an attacker who knows
//! the format would, so only the decryption redundancy stands between them and acceptance.

mod tickets_common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redrain_engine::tickets::format::{
    record_ciphertext, record_index, record_key_id, seal_record, FileTag, TicketError, RECORD_BYTES,
};
use redrain_engine::tickets::keyring::Keyring;
use tickets_common::*;

const MUTATIONS: usize = 1_000_000;

#[test]
fn a_million_random_mutations_are_all_refused() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 41, 0, 2);
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let decryptor = keyring.decryptor();
    let tag = FileTag { node: 2, core: 0, slot: 1 };
    let bytes = std::fs::read(generated.dir.join(tag.file_name())).unwrap();
    let records: Vec<[u8; RECORD_BYTES]> = bytes.chunks_exact(RECORD_BYTES).map(|c| c.try_into().unwrap()).collect();
    let crc_seed = tag.crc_seed();
    for (index, record) in records.iter().enumerate() {
        assert!(decryptor.decrypt_record(record, index as u64, crc_seed).is_ok());
    }

    let mut rng = ChaCha8Rng::seed_from_u64(0x7a3b);
    let mut refusals = [0usize; 6];
    for round in 0..MUTATIONS {
        let index = rng.gen_range(0..records.len());
        let mut mutated = records[index];
        // Flip 1..=4 random bits, or overwrite 1..=16 random bytes.
        if rng.gen_bool(0.5) {
            for _ in 0..rng.gen_range(1..=4) {
                let bit = rng.gen_range(0..RECORD_BYTES * 8);
                mutated[bit / 8] ^= 1 << (bit % 8);
            }
        } else {
            for _ in 0..rng.gen_range(1..=16) {
                let byte = rng.gen_range(0..RECORD_BYTES);
                mutated[byte] = rng.gen();
            }
        }
        if round % 2 == 1 {
            mutated =
                seal_record(&record_ciphertext(&mutated), record_key_id(&mutated), record_index(&mutated), crc_seed);
        }
        if mutated == records[index] {
            continue; // the mutation undid itself: nothing to refuse
        }
        match decryptor.decrypt_record(&mutated, index as u64, crc_seed) {
            Ok(ticket) => panic!("mutation {round} of record {index} accepted as {ticket:?}"),
            Err(error) => {
                let slot = match error {
                    TicketError::Corrupt { .. } => 0,
                    TicketError::Misplaced { .. } => 1,
                    TicketError::UnknownKey { .. } => 2,
                    TicketError::Forged { .. } => 3,
                    TicketError::Blacklisted { .. } => 4,
                    TicketError::NotWhitelisted { .. } => 5,
                };
                refusals[slot] += 1;
            }
        }
    }
    // Every defence was exercised.
    assert!(refusals[0] > 100_000, "{refusals:?}");
    assert!(refusals[1] > 1_000, "{refusals:?}");
    assert!(refusals[2] > 1_000, "{refusals:?}");
    assert!(refusals[3] > 100_000, "{refusals:?}");
}
