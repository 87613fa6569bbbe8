//! Bounded fuzzing: random and mutated logs never panic the parser, the
//! decoder, the description or the replay.

mod uefi_encode;

use aver_boot_log::uefi::{device_path_text, EventData, EventLog, HashAlg, LogFormat};
use proptest::prelude::*;

const LOG: &[u8] = include_bytes!("../testdata/ovmf-q35-swtpm.bin");

/// Everything a caller may do with an untrusted log; `true` if it parsed.
fn exercise(bytes: &[u8]) -> bool {
    let Ok(log) = EventLog::parse(bytes) else {
        return false;
    };
    for e in log.events() {
        let _ = e.describe();
        match e.decode() {
            Ok(EventData::Variable(v)) => {
                let _ = v.signature_lists();
                let _ = v.secure_boot_enabled();
            }
            Ok(EventData::ImageLoad(i)) => {
                let _ = i.device_path_text();
            }
            Ok(d) => {
                let _ = d.description();
                let _ = d.ipl_text();
            }
            Err(_) => {}
        }
    }
    for alg in log.banks() {
        let _ = log.replay(*alg);
    }
    true
}

/// Offsets of every record's eventSize and digest-count fields in the
/// fixture, found by walking its known layout.
fn length_field_offsets() -> Vec<usize> {
    let log = EventLog::parse(LOG).expect("fixture");
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    for (i, e) in log.events().iter().enumerate() {
        if i == 0 {
            offsets.push(pos + 28);
            pos += 32 + e.data.len();
            continue;
        }
        offsets.push(pos + 8);
        let digests: usize = e.digests().iter().map(|(_, d)| 2 + d.len()).sum();
        offsets.push(pos + 12 + digests);
        pos += 12 + digests + 4 + e.data.len();
    }
    assert_eq!(pos, LOG.len());
    offsets
}

#[test]
fn truncation_at_every_offset() {
    let full = EventLog::parse(LOG).expect("fixture");
    let mut boundaries = 0;
    let mut in_padding = 0;
    for cut in 0..LOG.len() {
        exercise(&LOG[..cut]);
        if let Ok(log) = EventLog::parse(&LOG[..cut]) {
            // A truncated log that parses is a prefix of the real one.
            let n = log.events().len();
            assert_eq!(log.events(), &full.events()[..n], "cut at {cut}");
            if cut == 0 || n == 0 {
                continue;
            }
            // Either the cut is at a record boundary, or what is left of
            // the cut record is all zero bytes (the pcrIndex 0 of a PCR 0
            // event), which reads as padding.
            if log.events().len() < full.events().len() && LOG[..cut].len() == record_end(&full, n)
            {
                boundaries += 1;
            } else {
                assert!(LOG[record_end(&full, n)..cut].iter().all(|b| *b == 0));
                in_padding += 1;
            }
        }
    }
    assert_eq!(boundaries, 25);
    // Four PCR 0 records after the header, four zero bytes each.
    assert_eq!(in_padding, 16);
}

/// Byte offset where the first `n` records of the fixture end.
fn record_end(log: &EventLog, n: usize) -> usize {
    log.events()
        .iter()
        .take(n)
        .map(|e| {
            if e.index == 0 {
                32 + e.data.len()
            } else {
                let d: usize = e.digests().iter().map(|(_, d)| 2 + d.len()).sum();
                16 + d + e.data.len()
            }
        })
        .sum()
}

#[test]
fn huge_length_fields() {
    let offsets = length_field_offsets();
    assert_eq!(offsets.len(), 1 + 2 * 25);
    for off in offsets {
        for v in [u32::MAX, 0x8000_0000, 0x0004_0001, LOG.len() as u32, 1, 0] {
            let mut m = LOG.to_vec();
            m[off..off + 4].copy_from_slice(&v.to_le_bytes());
            exercise(&m);
        }
    }
}

#[test]
fn every_u32_set_to_huge_values() {
    for off in 0..LOG.len() - 4 {
        for v in [u32::MAX, 0x0100_0000] {
            let mut m = LOG.to_vec();
            m[off..off + 4].copy_from_slice(&v.to_le_bytes());
            exercise(&m);
        }
    }
}

#[test]
fn device_paths_of_random_bytes() {
    // The decoder's device path rendering on every suffix of the fixture.
    for start in 0..LOG.len() {
        let _ = device_path_text(&LOG[start..(start + 64).min(LOG.len())]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn random_records_after_a_valid_header(
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = uefi_encode::encode_agile(&uefi_encode::ALL_BANKS, &[]);
        bytes.extend(tail);
        exercise(&bytes);
    }

    #[test]
    fn fixture_byte_flips(flips in proptest::collection::vec((0..LOG.len(), 1u8..=255), 1..8)) {
        let mut m = LOG.to_vec();
        for (i, x) in flips {
            m[i] ^= x;
        }
        exercise(&m);
    }

    #[test]
    fn accepted_mutants_marshal_back_up_to_padding(flips in proptest::collection::vec((0..LOG.len(), 1u8..=255), 0..4)) {
        // Trailing padding is dropped and digests of unknown banks are
        // skipped; otherwise marshalling what was parsed gives the bytes.
        let mut m = LOG.to_vec();
        for (i, x) in flips {
            m[i] ^= x;
        }
        let Ok(log) = EventLog::parse(&m) else {
            return Ok(());
        };
        let all_known = log.spec_id().is_none_or(|s| {
            s.algorithms.iter().all(|a| HashAlg::from_id(a.alg_id).is_some())
        });
        prop_assume!(all_known);
        let events: Vec<uefi_encode::RawEvent> =
            log.events().iter().map(uefi_encode::RawEvent::from_event).collect();
        let again: Vec<u8> = match log.format() {
            LogFormat::Sha1Legacy => uefi_encode::encode_legacy(&events),
            LogFormat::CryptoAgile => {
                let mut v = uefi_encode::legacy_record(&events[0]);
                v.extend(events[1..].iter().flat_map(uefi_encode::agile_record));
                v
            }
        };
        prop_assert!(m.starts_with(&again), "re-marshalled log is not a prefix");
        let rest = &m[again.len()..];
        prop_assert!(rest.iter().all(|b| *b == 0) || rest.iter().all(|b| *b == 0xFF));
    }

    #[test]
    fn fixture_insertions(at in 0..LOG.len(), ins in proptest::collection::vec(any::<u8>(), 1..64)) {
        let mut m = LOG.to_vec();
        m.splice(at..at, ins);
        exercise(&m);
    }

    #[test]
    fn fixture_deletions(at in 0..LOG.len(), n in 1usize..64) {
        let mut m = LOG.to_vec();
        let end = (at + n).min(m.len());
        m.drain(at..end);
        exercise(&m);
    }

    #[test]
    fn event_data_mutations(idx in 1usize..26, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        // Re-encode with mutated event data: the records stay valid, so the
        // decoders see the damage.
        let log = EventLog::parse(LOG).expect("fixture");
        let mut events: Vec<uefi_encode::RawEvent> =
            log.events().iter().skip(1).map(uefi_encode::RawEvent::from_event).collect();
        let e = &mut events[idx - 1];
        if !e.data.is_empty() {
            for (i, x) in flips {
                let n = e.data.len();
                e.data[i % n] ^= x;
            }
        }
        let bytes = uefi_encode::encode_agile(&uefi_encode::ALL_BANKS, &events);
        prop_assert!(exercise(&bytes));
    }
}
