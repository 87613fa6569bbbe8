//! Synthesized logs: both formats, StartupLocality, round trips, and one
//! targeted test per error variant.

mod uefi_encode;

use aver_boot_log::uefi::{
    EventData, EventLog, EventType, Guid, HashAlg, LogFormat, SpecId, SpecIdAlgorithm,
    UefiLogError, MAX_UEFI_EVENTS, MAX_UEFI_EVENT_DATA_BYTES, MAX_UEFI_LOG_BYTES, SPEC_ID_EVENT00,
    SPEC_ID_EVENT02, SPEC_ID_EVENT03,
};
use proptest::prelude::*;
use uefi_encode::*;

const SHA1_256: [(u16, u16); 2] = [(0x0004, 20), (0x000B, 32)];

fn sep(pcr: u32, banks: &[(u16, u16)]) -> RawEvent {
    RawEvent::measured(pcr, 4, vec![0; 4], banks)
}

fn err(bytes: &[u8]) -> UefiLogError {
    EventLog::parse(bytes).expect_err("log must be rejected")
}

/// PCR replay by hand: extend every non-NO_ACTION event from zero.
fn manual(events: &[RawEvent], alg: HashAlg, pcr: u32) -> Option<Vec<u8>> {
    let mut v: Option<Vec<u8>> = None;
    for e in events.iter().filter(|e| e.pcr == pcr && e.event_type != 3) {
        let d = &e.digests.iter().find(|(id, _)| *id == alg.id())?.1;
        let old = v.unwrap_or_else(|| vec![0; alg.digest_len()]);
        v = Some(alg.extend(&old, d));
    }
    v
}

#[test]
fn sha1_legacy_log_without_header() {
    let events = vec![
        RawEvent::measured(0, 8, b"1.0\0".to_vec(), &[(0x0004, 20)]),
        RawEvent::measured(
            4,
            0x8000_0007,
            b"Calling EFI Application".to_vec(),
            &[(0x0004, 20)],
        ),
        sep(0, &[(0x0004, 20)]),
        sep(4, &[(0x0004, 20)]),
    ];
    let log = EventLog::parse(&encode_legacy(&events)).expect("legacy log");
    assert_eq!(log.format(), LogFormat::Sha1Legacy);
    assert_eq!(log.banks(), &[HashAlg::Sha1]);
    assert!(log.spec_id().is_none());
    assert_eq!(log.events().len(), 4);
    let bank = log.replay(HashAlg::Sha1).expect("replay");
    assert_eq!(bank.get(0), manual(&events, HashAlg::Sha1, 0).as_deref());
    assert_eq!(bank.get(4), manual(&events, HashAlg::Sha1, 4).as_deref());
    assert_eq!(bank.get(7), None);
    assert_eq!(bank.iter().count(), 2);
    assert_eq!(
        log.replay(HashAlg::Sha256),
        Err(UefiLogError::BankNotInLog(HashAlg::Sha256))
    );
}

#[test]
fn sha1_legacy_log_with_spec_id_event00() {
    let mut header = b"Spec ID Event00\0".to_vec();
    header.extend([0, 0, 0, 0, 2, 1, 0, 1, 0]);
    let events = vec![
        RawEvent::no_action(header, &[(0x0004, 20)]),
        sep(7, &[(0x0004, 20)]),
    ];
    let log = EventLog::parse(&encode_legacy(&events)).expect("legacy log");
    assert_eq!(log.format(), LogFormat::Sha1Legacy);
    let spec = log.spec_id().expect("header");
    assert!(!spec.is_crypto_agile());
    assert!(matches!(log.events()[0].decode(), Ok(EventData::SpecId(_))));
    let bank = log.replay(HashAlg::Sha1).expect("replay");
    assert_eq!(bank.iter().map(|(p, _)| p).collect::<Vec<_>>(), [7]);
}

#[test]
fn startup_locality_sets_pcr0_initial_value() {
    for loc in [3u8, 4] {
        let events = vec![
            RawEvent::no_action(startup_locality(loc), &SHA1_256),
            RawEvent::measured(0, 8, vec![0, 0], &SHA1_256),
            sep(0, &SHA1_256),
        ];
        let log = EventLog::parse(&encode_agile(&SHA1_256, &events)).expect("log");
        assert_eq!(
            log.events()[1].decode(),
            Ok(EventData::StartupLocality(loc))
        );
        assert_eq!(
            log.events()[1].describe(),
            format!("EV_NO_ACTION StartupLocality {loc}")
        );
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            let mut v = vec![0u8; alg.digest_len()];
            *v.last_mut().expect("nonempty") = loc;
            for e in &events[1..] {
                v = alg.extend(
                    &v,
                    &e.digests
                        .iter()
                        .find(|d| d.0 == alg.id())
                        .expect("digest")
                        .1,
                );
            }
            assert_eq!(log.replay(alg).expect("replay").get(0), Some(v.as_slice()));
        }
    }
    // Locality alone: PCR 0 holds the initial value.
    let log = EventLog::parse(&encode_agile(
        &SHA1_256,
        &[RawEvent::no_action(startup_locality(3), &SHA1_256)],
    ))
    .expect("log");
    let mut want = vec![0u8; 32];
    want[31] = 3;
    assert_eq!(
        log.replay(HashAlg::Sha256).expect("replay").get(0),
        Some(want.as_slice())
    );
}

#[test]
fn startup_locality_after_extend_or_twice_is_an_error() {
    let after = [
        RawEvent::measured(0, 8, vec![0, 0], &SHA1_256),
        RawEvent::no_action(startup_locality(3), &SHA1_256),
    ];
    let log = EventLog::parse(&encode_agile(&SHA1_256, &after)).expect("parses");
    assert_eq!(
        log.replay(HashAlg::Sha256),
        Err(UefiLogError::LocalityAfterExtend { index: 2 })
    );
    let twice = [
        RawEvent::no_action(startup_locality(3), &SHA1_256),
        RawEvent::no_action(startup_locality(4), &SHA1_256),
    ];
    let log = EventLog::parse(&encode_agile(&SHA1_256, &twice)).expect("parses");
    assert_eq!(
        log.replay(HashAlg::Sha1),
        Err(UefiLogError::LocalityAfterExtend { index: 2 })
    );
    let bad = [RawEvent::no_action(startup_locality(2), &SHA1_256)];
    let log = EventLog::parse(&encode_agile(&SHA1_256, &bad)).expect("parses");
    assert_eq!(
        log.replay(HashAlg::Sha1),
        Err(UefiLogError::BadLocality {
            index: 1,
            locality: 2
        })
    );
    let mut long = startup_locality(3);
    long.push(0);
    let log = EventLog::parse(&encode_agile(
        &SHA1_256,
        &[RawEvent::no_action(long, &SHA1_256)],
    ))
    .expect("parses");
    assert!(matches!(
        log.replay(HashAlg::Sha1),
        Err(UefiLogError::BadEventData { index: 1, .. })
    ));
}

#[test]
fn unknown_algorithm_in_spec_id_is_skipped() {
    let algs = [(0x0004, 20), (0x0012, 32), (0x000B, 32)];
    let events = vec![sep(7, &algs)];
    let log = EventLog::parse(&encode_agile(&algs, &events)).expect("log");
    assert_eq!(log.banks(), &[HashAlg::Sha1, HashAlg::Sha256]);
    assert_eq!(log.events()[1].digests().len(), 2);
    assert_eq!(
        log.replay(HashAlg::Sha256).expect("replay").get(7),
        manual(&events, HashAlg::Sha256, 7).as_deref()
    );
}

#[test]
fn padding_after_the_last_event_is_ignored() {
    let events = vec![sep(0, &SHA1_256)];
    for pad in [0x00u8, 0xFF] {
        let mut bytes = encode_agile(&SHA1_256, &events);
        bytes.extend(vec![pad; 300]);
        assert_eq!(EventLog::parse(&bytes).expect("padded").events().len(), 2);
    }
}

// One test per error variant.

#[test]
fn error_empty() {
    assert_eq!(err(&[]), UefiLogError::Empty);
    assert_eq!(err(&[0xFF; 64]), UefiLogError::Empty);
    assert_eq!(err(&[0x00; 64]), UefiLogError::Empty);
}

#[test]
fn error_log_too_large() {
    let bytes = vec![1u8; MAX_UEFI_LOG_BYTES + 1];
    assert!(matches!(err(&bytes), UefiLogError::LogTooLarge { .. }));
}

#[test]
fn error_too_many_events() {
    let banks = [(0x0004, 20)];
    let events = vec![sep(1, &banks); MAX_UEFI_EVENTS];
    let bytes = encode_agile(&banks, &events);
    assert!(bytes.len() <= MAX_UEFI_LOG_BYTES);
    assert!(matches!(err(&bytes), UefiLogError::TooManyEvents { .. }));
    let ok = encode_agile(&banks, &events[1..]);
    assert_eq!(
        EventLog::parse(&ok).expect("at the bound").events().len(),
        MAX_UEFI_EVENTS
    );
}

#[test]
fn error_truncated() {
    let bytes = encode_agile(&SHA1_256, &[sep(0, &SHA1_256)]);
    let header_len = legacy_record(&RawEvent::no_action(spec_id03(&SHA1_256), &[])).len();
    let cut = &bytes[..bytes.len() - 1];
    assert_eq!(
        err(cut),
        UefiLogError::Truncated {
            index: 1,
            offset: header_len,
            field: "event data"
        }
    );
    assert!(matches!(
        err(&bytes[..header_len + 20]),
        UefiLogError::Truncated {
            index: 1,
            field: "digest",
            ..
        }
    ));
    assert!(matches!(
        err(&bytes[..10]),
        UefiLogError::Truncated { index: 0, .. }
    ));
}

#[test]
fn error_pcr_out_of_range() {
    let bytes = encode_agile(&SHA1_256, &[sep(24, &SHA1_256)]);
    assert!(matches!(
        err(&bytes),
        UefiLogError::PcrOutOfRange {
            index: 1,
            pcr: 24,
            ..
        }
    ));
    let legacy = encode_legacy(&[sep(0xFFFF_FFFE, &[(0x0004, 20)])]);
    assert!(matches!(
        err(&legacy),
        UefiLogError::PcrOutOfRange { index: 0, .. }
    ));
}

#[test]
fn error_event_too_large() {
    let mut e = sep(0, &SHA1_256);
    e.data = vec![1; MAX_UEFI_EVENT_DATA_BYTES + 1];
    assert!(matches!(
        err(&encode_agile(&SHA1_256, &[e])),
        UefiLogError::EventTooLarge { index: 1, .. }
    ));
}

#[test]
fn error_bad_spec_id() {
    let no_algs = encode_agile(&[], &[]);
    assert!(matches!(
        err(&no_algs),
        UefiLogError::BadSpecId {
            reason: "no algorithms",
            ..
        }
    ));
    let twice = encode_agile(&[(0x0004, 20), (0x0004, 20)], &[]);
    assert!(matches!(err(&twice), UefiLogError::BadSpecId { .. }));
    let mut header = RawEvent::no_action(spec_id03(&SHA1_256), &[(0x0004, 20)]);
    header.pcr = 1;
    assert!(matches!(
        err(&legacy_record(&header)),
        UefiLogError::BadSpecId { .. }
    ));
    header.pcr = 0;
    header.digests[0].1[3] = 1;
    assert!(matches!(
        err(&legacy_record(&header)),
        UefiLogError::BadSpecId { .. }
    ));
    let mut short = RawEvent::no_action(spec_id03(&SHA1_256), &[(0x0004, 20)]);
    short.data.truncate(30);
    assert!(matches!(
        err(&legacy_record(&short)),
        UefiLogError::BadSpecId { .. }
    ));
    let mut extra = RawEvent::no_action(spec_id03(&SHA1_256), &[(0x0004, 20)]);
    extra.data.push(0);
    assert!(matches!(
        err(&legacy_record(&extra)),
        UefiLogError::BadSpecId { .. }
    ));
}

#[test]
fn error_digest_size_mismatch() {
    let bytes = encode_agile(&[(0x000B, 20)], &[]);
    assert!(matches!(
        err(&bytes),
        UefiLogError::DigestSizeMismatch {
            alg: 0x000B,
            declared: 20,
            expected: 32,
            ..
        }
    ));
}

#[test]
fn error_digest_count_mismatch() {
    let bytes = encode_agile(&SHA1_256, &[sep(0, &[(0x0004, 20)])]);
    assert!(matches!(
        err(&bytes),
        UefiLogError::DigestCountMismatch {
            index: 1,
            count: 1,
            expected: 2,
            ..
        }
    ));
}

#[test]
fn error_undeclared_algorithm() {
    let bytes = encode_agile(&SHA1_256, &[sep(0, &[(0x0004, 20), (0x000C, 48)])]);
    assert!(matches!(
        err(&bytes),
        UefiLogError::UndeclaredAlgorithm {
            index: 1,
            alg: 0x000C,
            ..
        }
    ));
}

#[test]
fn error_duplicate_digest() {
    let bytes = encode_agile(&SHA1_256, &[sep(0, &[(0x0004, 20), (0x0004, 20)])]);
    assert!(matches!(
        err(&bytes),
        UefiLogError::DuplicateDigest {
            index: 1,
            alg: 0x0004,
            ..
        }
    ));
}

#[test]
fn error_trailing_bytes() {
    let mut bytes = encode_agile(&SHA1_256, &[sep(0, &SHA1_256)]);
    let end = bytes.len();
    bytes.extend([0x00, 0x12, 0x00]);
    assert_eq!(
        err(&bytes),
        UefiLogError::TrailingBytes {
            offset: end,
            len: 3
        }
    );
}

#[test]
fn error_algorithm_names_and_ids() {
    assert_eq!(
        HashAlg::try_from(0x0012u16),
        Err(UefiLogError::UnsupportedAlgorithm(0x0012))
    );
    assert!(matches!(
        "sm3".parse::<HashAlg>(),
        Err(UefiLogError::UnknownAlgorithmName(_))
    ));
}

#[test]
fn error_bank_not_in_log() {
    let log = EventLog::parse(&encode_agile(&SHA1_256, &[sep(0, &SHA1_256)])).expect("log");
    assert_eq!(
        log.replay(HashAlg::Sha384),
        Err(UefiLogError::BankNotInLog(HashAlg::Sha384))
    );
}

#[test]
fn error_bad_event_data_and_describe_falls_back() {
    let cases: Vec<(u32, Vec<u8>)> = vec![
        (4, vec![2, 0, 0, 0]),
        (4, vec![0, 0]),
        (0x8000_0001, vec![1; 20]),
        (
            0x8000_0001,
            variable_data(Guid::EFI_GLOBAL_VARIABLE, "SecureBoot", &[1])[..40].to_vec(),
        ),
        (0x8000_0003, vec![0; 31]),
        (0x8000_0003, {
            let mut d = image_load_data(1, 2, "x");
            d[24] = 0xFF;
            d
        }),
        (6, vec![0xEC, 0x22, 0x3B, 0x8F, 100, 0, 0, 0, b'L']),
        (0x8000_0008, vec![0; 15]),
        (0x8000_000A, vec![5, b'a']),
        (0x8000_0007, vec![0xC3, 0xA9]),
        (3, b"Spec ID Event03\0".to_vec()),
    ];
    for (ty, data) in cases {
        let e = RawEvent::measured(1, ty, data, &SHA1_256);
        let log = EventLog::parse(&encode_agile(&SHA1_256, &[e])).expect("parses");
        let ev = &log.events()[1];
        assert!(
            matches!(
                ev.decode(),
                Err(UefiLogError::BadEventData { index: 1, .. })
            ),
            "{ty:#x}: {:?}",
            ev.decode()
        );
        let line = ev.describe();
        assert!(line.starts_with(&EventType(ty).to_string()), "{line}");
        assert!(line.contains("undecodable"), "{line}");
    }
}

#[test]
fn error_bad_signature_list() {
    let var = variable_data(Guid::EFI_IMAGE_SECURITY_DATABASE_GUID, "db", &[0xA5; 30]);
    let e = RawEvent::measured(7, 0x8000_0001, var, &SHA1_256);
    let log = EventLog::parse(&encode_agile(&SHA1_256, &[e])).expect("parses");
    let Ok(EventData::Variable(v)) = log.events()[1].decode() else {
        panic!("not a variable")
    };
    assert!(matches!(
        v.signature_lists(),
        Err(UefiLogError::BadSignatureList { offset: 0, .. })
    ));
    assert!(log.events()[1].describe().contains("bad signature list"));
}

#[test]
fn decodes_other_event_kinds() {
    let ev = |ty: u32, data: Vec<u8>| {
        let log = EventLog::parse(&encode_agile(
            &SHA1_256,
            &[RawEvent::measured(8, ty, data, &SHA1_256)],
        ))
        .expect("parses");
        log.events()[1].clone()
    };
    let ipl = ev(0xD, b"grub_cmd: linux /vmlinuz\0".to_vec());
    let d = ipl.decode().expect("ipl");
    assert_eq!(d.ipl_text().as_deref(), Some("grub_cmd: linux /vmlinuz"));
    assert_eq!(ipl.describe(), "EV_IPL \"grub_cmd: linux /vmlinuz\"");
    let mut blob2 = vec![4];
    blob2.extend(b"DXE\0");
    blob2.extend(0x1000u64.to_le_bytes());
    blob2.extend(0x20u64.to_le_bytes());
    assert_eq!(
        ev(0x8000_000A, blob2).decode(),
        Ok(EventData::FirmwareBlob2 {
            description: "DXE".into(),
            base: 0x1000,
            length: 0x20
        })
    );
    assert_eq!(
        ev(
            8,
            "1.0"
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes)
                .collect()
        )
        .decode(),
        Ok(EventData::CrtmVersion("1.0".into()))
    );
    assert_eq!(
        ev(8, b"v1.2".to_vec()).decode(),
        Ok(EventData::CrtmVersion("v1.2".into()))
    );
    assert_eq!(
        ev(1, b"ACPI DATA".to_vec()).decode(),
        Ok(EventData::PostCode("ACPI DATA".into()))
    );
    assert_eq!(
        ev(4, vec![0xFF; 4]).decode(),
        Ok(EventData::Separator { error: true })
    );
    assert_eq!(ev(4, vec![0xFF; 4]).describe(), "EV_SEPARATOR (error)");
    assert_eq!(ev(0x8000_0009, vec![1, 2]).decode(), Ok(EventData::Other));
    assert_eq!(
        ev(0x1234_5678, vec![1, 2]).describe(),
        "0x12345678 (2 bytes)"
    );
    let sb = ev(
        0x8000_0001,
        variable_data(Guid::EFI_GLOBAL_VARIABLE, "SecureBoot", &[1]),
    );
    assert!(
        sb.describe().ends_with("= 1 (enabled)"),
        "{}",
        sb.describe()
    );
    let img = ev(
        0x8000_0003,
        image_load_data(0x1000, 77, "\\EFI\\BOOT\\BOOTX64.EFI"),
    );
    assert_eq!(
        img.describe(),
        "EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\BOOT\\BOOTX64.EFI (length 77)"
    );
}

fn arb_event(banks: &'static [(u16, u16)]) -> impl Strategy<Value = RawEvent> {
    let digests = banks
        .iter()
        .map(|(id, size)| {
            proptest::collection::vec(any::<u8>(), usize::from(*size)).prop_map(move |d| (*id, d))
        })
        .collect::<Vec<_>>();
    (
        0u32..24,
        prop_oneof![
            Just(3u32),
            Just(4),
            Just(0xD),
            Just(0x8000_0001),
            any::<u32>()
        ],
        digests,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(pcr, event_type, digests, data)| RawEvent {
            pcr,
            event_type,
            digests,
            data,
        })
        // A record of nothing but zero bytes would be read as padding.
        .prop_filter("not all zero", |e| {
            e.pcr != 0 || e.event_type != 0 || e.digests.iter().any(|d| d.1.iter().any(|b| *b != 0))
        })
}

/// Spec ID algorithms: the four banks this crate hashes and four it does
/// not (SM3_256, SHA3-256, SHA3-384, SHA3-512), whose digests it skips.
const ANY_BANKS: [(u16, u16); 8] = [
    (0x0004, 20),
    (0x000B, 32),
    (0x000C, 48),
    (0x000D, 64),
    (0x0012, 32),
    (0x0027, 32),
    (0x0028, 48),
    (0x0029, 64),
];

fn spec_id(
    signature: [u8; 16],
    banks: Vec<(u16, u16)>,
    fields: [u8; 8],
    vendor_info: Vec<u8>,
) -> SpecId {
    SpecId {
        signature,
        platform_class: u32::from_le_bytes([fields[0], fields[1], fields[2], fields[3]]),
        spec_version_minor: fields[4],
        spec_version_major: fields[5],
        spec_errata: fields[6],
        uintn_size: fields[7],
        algorithms: banks
            .into_iter()
            .map(|(alg_id, digest_size)| SpecIdAlgorithm {
                alg_id,
                digest_size,
            })
            .collect(),
        vendor_info,
    }
}

/// A crypto-agile header declaring any non-empty set of banks in any order,
/// with any header fields and vendor data.
fn arb_agile_spec_id() -> impl Strategy<Value = SpecId> {
    (
        prop::sample::subsequence(ANY_BANKS.to_vec(), 1..=ANY_BANKS.len()).prop_shuffle(),
        any::<[u8; 8]>(),
        proptest::collection::vec(any::<u8>(), 0..=255),
    )
        .prop_map(|(banks, fields, vendor)| spec_id(*SPEC_ID_EVENT03, banks, fields, vendor))
}

/// Records with a digest for every bank `spec` declares, in any order.
fn arb_agile_events(spec: &SpecId) -> impl Strategy<Value = Vec<RawEvent>> {
    let digests = spec
        .algorithms
        .iter()
        .map(|a| {
            let id = a.alg_id;
            proptest::collection::vec(any::<u8>(), usize::from(a.digest_size))
                .prop_map(move |d| (id, d))
        })
        .collect::<Vec<_>>()
        .prop_shuffle();
    let event = (
        0u32..24,
        any::<u32>(),
        digests,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(pcr, event_type, digests, data)| RawEvent {
            pcr,
            event_type,
            digests,
            data,
        });
    proptest::collection::vec(event, 0..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn agile_round_trip_under_any_spec_id(
        (spec, events) in arb_agile_spec_id().prop_flat_map(|spec| {
            let events = arb_agile_events(&spec);
            (Just(spec), events)
        }),
    ) {
        let bytes = encode_agile_with(&spec, &events);
        let log = EventLog::parse(&bytes).expect("encoded log parses");
        prop_assert_eq!(log.format(), LogFormat::CryptoAgile);
        prop_assert_eq!(log.spec_id(), Some(&spec));
        let known: Vec<HashAlg> =
            spec.algorithms.iter().filter_map(|a| HashAlg::from_id(a.alg_id)).collect();
        prop_assert_eq!(log.banks(), &known[..]);
        prop_assert!(log.events().iter().enumerate().all(|(i, e)| e.index == i));
        prop_assert_eq!(
            RawEvent::from_event(&log.events()[0]),
            RawEvent { pcr: 0, event_type: 3, digests: vec![(0x0004, vec![0; 20])], data: spec_id_data(&spec) }
        );
        // Digests of banks this crate cannot hash are read past, not kept.
        let expected: Vec<RawEvent> = events
            .iter()
            .map(|e| RawEvent {
                digests: e.digests.iter().filter(|(id, _)| HashAlg::from_id(*id).is_some()).cloned().collect(),
                ..e.clone()
            })
            .collect();
        let back: Vec<RawEvent> = log.events()[1..].iter().map(RawEvent::from_event).collect();
        prop_assert_eq!(&back, &expected);
        if known.len() == spec.algorithms.len() {
            prop_assert_eq!(encode_agile_with(&spec, &back), bytes);
        } else if !known.is_empty() {
            // Unknown banks are dropped, so re-marshal under the known ones
            // only: parse . marshal . parse = parse.
            let mut known_spec = spec.clone();
            known_spec.algorithms.retain(|a| HashAlg::from_id(a.alg_id).is_some());
            let again = EventLog::parse(&encode_agile_with(&known_spec, &back)).expect("re-encoded log parses");
            prop_assert_eq!(again.events()[1..].iter().map(RawEvent::from_event).collect::<Vec<_>>(), back);
        }
    }

    #[test]
    fn legacy_round_trip_under_a_spec_id_header(
        signature in prop::sample::select(vec![*SPEC_ID_EVENT00, *SPEC_ID_EVENT02]),
        fields in any::<[u8; 8]>(),
        vendor in proptest::collection::vec(any::<u8>(), 0..=255),
        sha1 in any::<[u8; 20]>(),
        events in proptest::collection::vec(arb_event(&[(0x0004, 20)]), 0..16),
    ) {
        let spec = spec_id(signature, Vec::new(), fields, vendor);
        let header = RawEvent { pcr: 0, event_type: 3, digests: vec![(0x0004, sha1.to_vec())], data: spec_id_data(&spec) };
        let all: Vec<RawEvent> = std::iter::once(header).chain(events).collect();
        let bytes = encode_legacy(&all);
        let log = EventLog::parse(&bytes).expect("encoded log parses");
        prop_assert_eq!(log.format(), LogFormat::Sha1Legacy);
        prop_assert_eq!(log.spec_id(), Some(&spec));
        prop_assert_eq!(log.banks(), &[HashAlg::Sha1][..]);
        let back: Vec<RawEvent> = log.events().iter().map(RawEvent::from_event).collect();
        prop_assert_eq!(&back, &all);
        prop_assert_eq!(encode_legacy(&back), bytes);
    }

    #[test]
    fn agile_round_trip(events in proptest::collection::vec(arb_event(&ALL_BANKS), 0..24)) {
        let bytes = encode_agile(&ALL_BANKS, &events);
        let log = EventLog::parse(&bytes).expect("encoded log parses");
        prop_assert_eq!(log.format(), LogFormat::CryptoAgile);
        prop_assert_eq!(log.events().len(), events.len() + 1);
        let back: Vec<RawEvent> = log.events()[1..].iter().map(RawEvent::from_event).collect();
        prop_assert_eq!(&back, &events);
        prop_assert_eq!(encode_agile(&ALL_BANKS, &back), bytes);
        for alg in HashAlg::ALL {
            let bank = log.replay(alg).expect("replay");
            for pcr in 0..24u8 {
                let want = manual(&events, alg, u32::from(pcr));
                prop_assert_eq!(bank.get(pcr), want.as_deref());
            }
        }
        for e in log.events() {
            let _ = e.describe();
        }
    }

    #[test]
    fn legacy_round_trip(events in proptest::collection::vec(arb_event(&[(0x0004, 20)]), 1..24)) {
        prop_assume!(!(events[0].event_type == 3 && events[0].data.starts_with(b"Spec ID Event")));
        let bytes = encode_legacy(&events);
        let log = EventLog::parse(&bytes).expect("encoded log parses");
        prop_assert_eq!(log.format(), LogFormat::Sha1Legacy);
        let back: Vec<RawEvent> = log.events().iter().map(RawEvent::from_event).collect();
        prop_assert_eq!(&back, &events);
        prop_assert_eq!(encode_legacy(&back), bytes);
        let bank = log.replay(HashAlg::Sha1).expect("replay");
        for pcr in 0..24u8 {
            let want = manual(&events, HashAlg::Sha1, u32::from(pcr));
            prop_assert_eq!(bank.get(pcr), want.as_deref());
        }
    }
}
