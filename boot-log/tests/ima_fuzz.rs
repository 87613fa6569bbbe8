//! Bounded fuzzing of the parser: arbitrary bytes and mutations of the
//! real list never panic, and every mutation that breaks the list is
//! refused.

use aver_boot_log::ima::encode::ImaLogWriter;
use aver_boot_log::ima::{ImaLog, ImaLogError};
use proptest::prelude::*;

const FIXTURE: &[u8] = include_bytes!("../testdata/ima-ng-initramfs.bin");

/// Byte offsets where the fixture's entries start.
const ENTRY_STARTS: [usize; 3] = [0, 101, 193];

/// Every prefix parses to the entries it holds whole, or is refused as
/// truncated.
#[test]
fn truncation_at_every_offset() {
    for len in 0..FIXTURE.len() {
        let prefix = &FIXTURE[..len];
        match ImaLog::parse(prefix) {
            Ok(log) => {
                let whole = ENTRY_STARTS.iter().position(|&s| s == len);
                assert_eq!(Some(log.len()), whole, "prefix of {len} bytes parsed");
            }
            Err(ImaLogError::Truncated { index, offset, .. }) => {
                assert!(offset <= len, "offset {offset} past prefix {len}");
                let expected = ENTRY_STARTS.iter().filter(|&&s| s <= len).count() - 1;
                assert_eq!(index, expected, "prefix {len}");
            }
            Err(other) => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
    assert_eq!(ImaLog::parse(FIXTURE).unwrap().len(), 3);
}

fn in_pcr_field(offset: usize) -> bool {
    ENTRY_STARTS.iter().any(|&s| (s..s + 4).contains(&offset))
}

/// Every offset, with the lowest and the highest bit flipped (the random
/// version below covers the other values).
#[test]
fn every_offset_flipped_is_refused_unless_pcr() {
    for offset in 0..FIXTURE.len() {
        for xor in [0x01u8, 0x80] {
            let mut bytes = FIXTURE.to_vec();
            bytes[offset] ^= xor;
            let parsed = ImaLog::parse(&bytes);
            assert_eq!(
                parsed.is_ok(),
                in_pcr_field(offset),
                "offset {offset} xor {xor:#x}: {parsed:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ImaLog::parse(&bytes);
    }

    /// Random bytes after a valid entry header, so the fuzzing reaches the
    /// template field parser (the digest check stops most inputs before).
    #[test]
    fn random_template_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), violation in any::<bool>()) {
        let mut w = aver_boot_log::ima::encode::ImaLogWriter::new();
        if violation {
            w.raw(10, [0; 20], b"ima-sig", &data);
        } else {
            w.measurement(10, "ima-buf", &data);
        }
        let _ = ImaLog::parse(w.bytes());
    }

    /// One changed byte anywhere but a PCR index is refused (the template
    /// digests cover the template data, the names and lengths are
    /// checked); a changed PCR index still parses, which is why replay
    /// against a quote is what authenticates a list.
    #[test]
    fn flipped_byte_is_refused_unless_pcr(offset in 0..FIXTURE.len(), xor in 1u8..=255) {
        let mut bytes = FIXTURE.to_vec();
        bytes[offset] ^= xor;
        let result = ImaLog::parse(&bytes);
        if in_pcr_field(offset) {
            prop_assert!(result.is_ok());
        } else {
            prop_assert!(result.is_err(), "flip at {} parsed", offset);
        }
    }

    #[test]
    fn several_flips_never_panic(flips in proptest::collection::vec((0..FIXTURE.len(), any::<u8>()), 1..16)) {
        let mut bytes = FIXTURE.to_vec();
        for (offset, xor) in flips {
            bytes[offset] ^= xor;
        }
        let _ = ImaLog::parse(&bytes);
    }

    /// Whatever mutant parses, the fixture itself included, marshals back
    /// from its entries to exactly its bytes.
    #[test]
    fn accepted_lists_marshal_back_to_themselves(
        flips in proptest::collection::vec((0..FIXTURE.len(), any::<u8>()), 0..4),
    ) {
        let mut bytes = FIXTURE.to_vec();
        for (offset, xor) in flips {
            bytes[offset] ^= xor;
        }
        if let Ok(log) = ImaLog::parse(&bytes) {
            let mut w = ImaLogWriter::new();
            for e in log.entries() {
                w.raw(e.pcr(), *e.template_digest(), e.template_name().as_bytes(), e.template_data());
            }
            prop_assert_eq!(w.bytes(), &bytes[..]);
        }
    }

    /// Any length field set to a large value is refused as oversize or
    /// truncated, without allocating it.
    #[test]
    fn huge_lengths_are_refused(entry in 0usize..3, which in 0usize..2, len in 256u32..=u32::MAX) {
        let start = ENTRY_STARTS[entry];
        // Name length at +24; data length after the 6-byte name "ima-ng".
        let at = start + if which == 0 { 24 } else { 24 + 4 + 6 };
        let mut bytes = FIXTURE.to_vec();
        bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
        match ImaLog::parse(&bytes) {
            Err(ImaLogError::Oversize { index, offset, .. }) => {
                prop_assert_eq!(index, entry);
                prop_assert_eq!(offset, at);
            }
            Err(ImaLogError::Truncated { index, .. }) => prop_assert_eq!(index, entry),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// Garbage appended to the real list is refused, naming entry 3.
    #[test]
    fn trailing_garbage_is_refused(tail in proptest::collection::vec(any::<u8>(), 1..200)) {
        let bytes = [FIXTURE, &tail].concat();
        let err = ImaLog::parse(&bytes).unwrap_err();
        let index = match err {
            ImaLogError::Truncated { index, .. }
            | ImaLogError::Oversize { index, .. }
            | ImaLogError::UnsupportedTemplate { index, .. }
            | ImaLogError::TemplateDigestMismatch { index, .. }
            | ImaLogError::BadField { index, .. }
            | ImaLogError::PathNotNulTerminated { index, .. } => index,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(index, 3);
    }
}
