//! A writer of UEFI event logs in both formats, for tests and the bench:
//! round trips, synthesized logs for tpm2_eventlog, and malformed ones.
#![allow(dead_code)]

use aver_boot_log::uefi::{Event, Guid, HashAlg, SpecId};

/// TPM_ALG_IDs and digest sizes of the fixture's four banks.
pub const ALL_BANKS: [(u16, u16); 4] = [(0x0004, 20), (0x000B, 32), (0x000C, 48), (0x000D, 64)];

/// One record to write, with raw fields so tests can write bad ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub pcr: u32,
    pub event_type: u32,
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

impl RawEvent {
    /// An event whose digests are the hash of its data in every bank (what
    /// firmware does for most event types).
    pub fn measured(pcr: u32, event_type: u32, data: Vec<u8>, banks: &[(u16, u16)]) -> RawEvent {
        let digests = banks
            .iter()
            .map(|(id, size)| {
                let d = HashAlg::from_id(*id)
                    .map(|a| a.hash(&data))
                    .unwrap_or_else(|| vec![0xA5; usize::from(*size)]);
                (*id, d)
            })
            .collect();
        RawEvent {
            pcr,
            event_type,
            digests,
            data,
        }
    }

    /// An EV_NO_ACTION event (zero digests).
    pub fn no_action(data: Vec<u8>, banks: &[(u16, u16)]) -> RawEvent {
        RawEvent {
            pcr: 0,
            event_type: 3,
            digests: banks
                .iter()
                .map(|(id, size)| (*id, vec![0; usize::from(*size)]))
                .collect(),
            data,
        }
    }

    /// The record of a parsed event (known banks only).
    pub fn from_event(e: &Event) -> RawEvent {
        RawEvent {
            pcr: u32::from(e.pcr),
            event_type: e.event_type.0,
            digests: e
                .digests()
                .iter()
                .map(|(a, d)| (a.id(), d.clone()))
                .collect(),
            data: e.data.clone(),
        }
    }
}

/// The data of a "Spec ID Event03" header for these algorithms.
pub fn spec_id03(algs: &[(u16, u16)]) -> Vec<u8> {
    let mut d = b"Spec ID Event03\0".to_vec();
    d.extend(0u32.to_le_bytes()); // platformClass
    d.extend([0, 2, 0, 2]); // minor, major, errata, uintnSize
    d.extend((algs.len() as u32).to_le_bytes());
    for (id, size) in algs {
        d.extend(id.to_le_bytes());
        d.extend(size.to_le_bytes());
    }
    d.push(0); // vendorInfoSize
    d
}

/// The data of a Spec ID event as `spec` describes it.
pub fn spec_id_data(spec: &SpecId) -> Vec<u8> {
    let mut d = spec.signature.to_vec();
    d.extend(spec.platform_class.to_le_bytes());
    d.extend([
        spec.spec_version_minor,
        spec.spec_version_major,
        spec.spec_errata,
        spec.uintn_size,
    ]);
    if spec.is_crypto_agile() {
        d.extend((spec.algorithms.len() as u32).to_le_bytes());
        for a in &spec.algorithms {
            d.extend(a.alg_id.to_le_bytes());
            d.extend(a.digest_size.to_le_bytes());
        }
    }
    d.push(spec.vendor_info.len() as u8);
    d.extend(&spec.vendor_info);
    d
}

/// A crypto-agile log under the header `spec`, then `events`.
pub fn encode_agile_with(spec: &SpecId, events: &[RawEvent]) -> Vec<u8> {
    let header = RawEvent {
        pcr: 0,
        event_type: 3,
        digests: vec![(0x0004, vec![0; 20])],
        data: spec_id_data(spec),
    };
    let mut out = legacy_record(&header);
    for e in events {
        out.extend(agile_record(e));
    }
    out
}

/// A legacy-format record.
pub fn legacy_record(e: &RawEvent) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(e.pcr.to_le_bytes());
    out.extend(e.event_type.to_le_bytes());
    let sha1 = e
        .digests
        .iter()
        .find(|(id, _)| *id == 0x0004)
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| vec![0; 20]);
    out.extend(&sha1);
    out.extend((e.data.len() as u32).to_le_bytes());
    out.extend(&e.data);
    out
}

/// A TCG_PCR_EVENT2 record.
pub fn agile_record(e: &RawEvent) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(e.pcr.to_le_bytes());
    out.extend(e.event_type.to_le_bytes());
    out.extend((e.digests.len() as u32).to_le_bytes());
    for (id, d) in &e.digests {
        out.extend(id.to_le_bytes());
        out.extend(d);
    }
    out.extend((e.data.len() as u32).to_le_bytes());
    out.extend(&e.data);
    out
}

/// A crypto-agile log: the Spec ID header for `algs`, then `events`.
pub fn encode_agile(algs: &[(u16, u16)], events: &[RawEvent]) -> Vec<u8> {
    let header = RawEvent {
        pcr: 0,
        event_type: 3,
        digests: vec![(0x0004, vec![0; 20])],
        data: spec_id03(algs),
    };
    let mut out = legacy_record(&header);
    for e in events {
        out.extend(agile_record(e));
    }
    out
}

/// A SHA-1 legacy log of `events` (their SHA-1 digests).
pub fn encode_legacy(events: &[RawEvent]) -> Vec<u8> {
    events.iter().flat_map(legacy_record).collect()
}

/// UEFI_VARIABLE_DATA.
pub fn variable_data(guid: Guid, name: &str, value: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut d = guid.0.to_vec();
    d.extend((units.len() as u64).to_le_bytes());
    d.extend((value.len() as u64).to_le_bytes());
    for u in units {
        d.extend(u.to_le_bytes());
    }
    d.extend(value);
    d
}

/// UEFI_IMAGE_LOAD_EVENT for an image loaded from a file path.
pub fn image_load_data(location: u64, length: u64, file: &str) -> Vec<u8> {
    let mut path = vec![0x04, 0x04];
    let name: Vec<u8> = file
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    path.extend(((4 + name.len()) as u16).to_le_bytes());
    path.extend(name);
    path.extend([0x7F, 0xFF, 0x04, 0x00]);
    let mut d = Vec::new();
    d.extend(location.to_le_bytes());
    d.extend(length.to_le_bytes());
    d.extend(0u64.to_le_bytes());
    d.extend((path.len() as u64).to_le_bytes());
    d.extend(path);
    d
}

/// TCG_PCClientTaggedEvent with NUL-terminated text.
pub fn tagged_data(id: u32, text: &str) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    let mut d = id.to_le_bytes().to_vec();
    d.extend((body.len() as u32).to_le_bytes());
    d.extend(body);
    d
}

/// EV_NO_ACTION StartupLocality data.
pub fn startup_locality(loc: u8) -> Vec<u8> {
    let mut d = b"StartupLocality\0".to_vec();
    d.push(loc);
    d
}

/// The fixture's events (without its header) plus realistic extra
/// variable, image-load and IPL events, to `target` events in all.
pub fn synthesized(fixture: &[Event], target: usize) -> Vec<RawEvent> {
    let mut events: Vec<RawEvent> = fixture.iter().skip(1).map(RawEvent::from_event).collect();
    let mut i = 0u64;
    while events.len() + 1 < target {
        let e = match i % 4 {
            0 => RawEvent::measured(
                1,
                0x8000_0002,
                variable_data(
                    Guid::EFI_GLOBAL_VARIABLE,
                    &format!("Boot{i:04X}"),
                    &[9, 1, 0, 0, 0x2c, 0],
                ),
                &ALL_BANKS,
            ),
            1 => RawEvent::measured(
                4,
                0x8000_0003,
                image_load_data(
                    0x1d00_0000 + i * 0x1000,
                    0x10000 + i,
                    "\\EFI\\debian\\grubx64.efi",
                ),
                &ALL_BANKS,
            ),
            2 => RawEvent::measured(
                8,
                0x0000_000D,
                format!("grub_cmd: linux /vmlinuz root=/dev/vda{i}\0").into_bytes(),
                &ALL_BANKS,
            ),
            _ => RawEvent::measured(
                7,
                0x8000_00E0,
                variable_data(Guid::EFI_IMAGE_SECURITY_DATABASE_GUID, "db", &[i as u8; 40]),
                &ALL_BANKS,
            ),
        };
        events.push(e);
        i += 1;
    }
    events
}
