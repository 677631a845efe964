//! The node's ticket file reader: O(1) positioning by cursor, restart from a cursor, typed errors
//! for corrupt, forged and blacklisted tickets, refusal of truncated files.

mod tickets_common;

use redrain_engine::tickets::file_reader::{TicketFileError, TicketFileReader, READ_BUFFER_RECORDS};
use redrain_engine::tickets::format::{FileTag, TicketError, RECORD_BYTES};
use redrain_engine::tickets::keyring::Keyring;
use tickets_common::*;

const TAG: FileTag = FileTag { node: 0, core: 1, slot: 1 };

#[test]
fn restart_from_a_cursor_continues_exactly_where_it_stopped() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 51, 0, 2);
    let keyring = Keyring::load(&generated.keyring).unwrap();
    let decryptor = keyring.decryptor();
    let path = generated.dir.join(TAG.file_name());

    let mut reader = TicketFileReader::open(&path, TAG).unwrap();
    assert!(reader.len() > READ_BUFFER_RECORDS as u64 / 4);
    let mut all = Vec::new();
    while let Some(issued) = reader.next_ticket(&decryptor).unwrap() {
        assert_eq!(issued.index, all.len() as u64);
        all.push(issued.ticket.unwrap());
    }
    assert_eq!(reader.cursor(), reader.len());
    assert_eq!(reader.remaining(), 0);

    let cursor = all.len() as u64 / 3;
    let mut restarted = TicketFileReader::open_at(&path, TAG, cursor).unwrap();
    let mut rest = Vec::new();
    while let Some(issued) = restarted.next_ticket(&decryptor).unwrap() {
        rest.push(issued.ticket.unwrap());
    }
    assert_eq!(rest, all[cursor as usize..]);

    let mut reader = TicketFileReader::open(&path, TAG).unwrap();
    reader.seek(5).unwrap();
    assert_eq!(reader.next_ticket(&decryptor).unwrap().unwrap().ticket, Ok(all[5]));
    assert_eq!(reader.ticket_at(17, &decryptor).unwrap(), Ok(all[17]));
    assert_eq!(reader.cursor(), 6, "ticket_at does not move the cursor");
    assert!(matches!(reader.seek(reader.len() + 1), Err(TicketFileError::CursorOutOfRange { .. })));
    assert!(matches!(
        TicketFileReader::open(&path, FileTag { slot: 0, ..TAG })
            .unwrap()
            .next_ticket(&decryptor)
            .unwrap()
            .unwrap()
            .ticket,
        Err(TicketError::Corrupt { .. })
    ));
}

#[test]
fn refused_tickets_are_typed_and_still_advance_the_cursor() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 52, 0, 2);
    let mut keyring = Keyring::load(&generated.keyring).unwrap();
    let path = generated.dir.join(TAG.file_name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[RECORD_BYTES + 2] ^= 0x40; // record 1: damaged
    std::fs::write(&path, &bytes).unwrap();
    let first_key = u16::from_le_bytes([bytes[16], bytes[17]]);
    keyring.blacklist.insert(first_key);
    let decryptor = keyring.decryptor();
    let mut reader = TicketFileReader::open(&path, TAG).unwrap();
    let first = reader.next_ticket(&decryptor).unwrap().unwrap();
    assert_eq!(first.ticket, Err(TicketError::Blacklisted { key_id: first_key }));
    let second = reader.next_ticket(&decryptor).unwrap().unwrap();
    assert!(matches!(second.ticket, Err(TicketError::Corrupt { .. })));
    assert_eq!(reader.cursor(), 2);
}

#[test]
fn truncated_ticket_file_is_refused_at_open() {
    let root = tempfile::tempdir().unwrap();
    let generated = generate_into(root.path(), 53, 0, 1);
    let path = generated.dir.join(TAG.file_name());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(TicketFileReader::open(&path, TAG), Err(TicketFileError::Truncated { .. })));
}
