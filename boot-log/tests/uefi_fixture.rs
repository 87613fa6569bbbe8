//! The real OVMF (q35, swtpm) log against tpm2_eventlog's reading of it.

use std::collections::BTreeMap;

use aver_boot_log::uefi::{
    EventData, EventLog, EventType, Guid, HashAlg, LogFormat, LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
};

const LOG: &[u8] = include_bytes!("../testdata/ovmf-q35-swtpm.bin");
const YAML: &str = include_str!("../testdata/ovmf-q35-swtpm.tpm2_eventlog.yaml");

fn yaml() -> serde_norway::Value {
    serde_norway::from_str(YAML).expect("tpm2_eventlog YAML")
}

/// A YAML scalar (int or string) as text.
fn scalar(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The `pcrs:` section of tpm2_eventlog's output: bank -> PCR -> value.
pub fn yaml_pcrs(doc: &serde_norway::Value) -> BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let pcrs = doc
        .get("pcrs")
        .and_then(|p| p.as_mapping())
        .expect("pcrs section");
    for (bank, values) in pcrs {
        let alg: HashAlg = scalar(bank).parse().expect("bank name");
        let mut m = BTreeMap::new();
        for (pcr, value) in values.as_mapping().expect("pcr map") {
            let pcr: u8 = scalar(pcr).trim().parse().expect("pcr index");
            let text = scalar(value);
            let hexed = text.trim().trim_start_matches("0x");
            m.insert(pcr, hex::decode(hexed).expect("pcr value hex"));
        }
        out.insert(alg, m);
    }
    out
}

#[test]
fn fixture_parses_like_tpm2_eventlog() {
    let log = EventLog::parse(LOG).expect("fixture parses");
    assert_eq!(log.format(), LogFormat::CryptoAgile);
    assert_eq!(
        log.banks(),
        &[
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512
        ]
    );
    let doc = yaml();
    let listed = doc
        .get("events")
        .and_then(|e| e.as_sequence())
        .expect("events");
    assert_eq!(log.events().len(), listed.len());
    assert_eq!(log.events().len(), 26);
    for (e, y) in log.events().iter().zip(listed) {
        assert_eq!(scalar(&y["EventNum"]), e.index.to_string());
        assert_eq!(scalar(&y["PCRIndex"]), e.pcr.to_string());
        assert_eq!(scalar(&y["EventType"]), e.event_type.to_string());
        assert_eq!(scalar(&y["EventSize"]), e.data.len().to_string());
        if let Some(digests) = y.get("Digests").and_then(|d| d.as_sequence()) {
            assert_eq!(digests.len(), 4);
            for d in digests {
                let alg: HashAlg = scalar(&d["AlgorithmId"]).parse().expect("alg");
                let want = hex::decode(scalar(&d["Digest"])).expect("hex");
                assert_eq!(e.digest(alg), Some(want.as_slice()), "event {}", e.index);
            }
        }
    }
}

#[test]
fn fixture_replay_equals_tpm2_eventlog_pcrs() {
    let log = EventLog::parse(LOG).expect("fixture parses");
    let want = yaml_pcrs(&yaml());
    assert_eq!(want.len(), 4);
    for alg in log.banks() {
        let bank = log.replay(*alg).expect("replay");
        let got: BTreeMap<u8, Vec<u8>> = bank.iter().map(|(p, v)| (p, v.to_vec())).collect();
        assert_eq!(&got, want.get(alg).expect("bank in YAML"), "bank {alg}");
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6, 7, 9]
        );
    }
}

#[test]
fn fixture_decodes() {
    let log = EventLog::parse(LOG).expect("fixture parses");
    let decoded: Vec<EventData> = log
        .events()
        .iter()
        .map(|e| {
            e.decode()
                .unwrap_or_else(|err| panic!("event {}: {err}", e.index))
        })
        .collect();

    let EventData::SpecId(spec) = &decoded[0] else {
        panic!("event 0 is not the Spec ID event: {:?}", decoded[0]);
    };
    assert!(spec.is_crypto_agile());
    assert_eq!(spec.algorithms.len(), 4);
    assert_eq!(spec.uintn_size, 2);

    let secure_boot: Vec<bool> = decoded
        .iter()
        .filter_map(|d| match d {
            EventData::Variable(v) if v.is_secure_boot() => v.secure_boot_enabled(),
            _ => None,
        })
        .collect();
    assert_eq!(secure_boot, [false]);

    // PK, KEK, db, dbx are measured empty: no keys enrolled.
    for (i, name) in [(5, "PK"), (6, "KEK"), (7, "db"), (8, "dbx")] {
        let EventData::Variable(v) = &decoded[i] else {
            panic!("event {i} is not a variable")
        };
        assert_eq!(v.name, name);
        assert_eq!(v.signature_lists(), Ok(vec![]));
    }
    let EventData::Variable(db) = &decoded[7] else {
        unreachable!()
    };
    assert_eq!(db.guid, Guid::EFI_IMAGE_SECURITY_DATABASE_GUID);

    let tags: Vec<(u8, u32, String)> = log
        .events()
        .iter()
        .zip(&decoded)
        .filter_map(|(e, d)| match d {
            EventData::Tagged { id, .. } => Some((e.pcr, *id, d.description()?)),
            _ => None,
        })
        .collect();
    assert_eq!(
        tags,
        [
            (
                9,
                LINUX_LOAD_OPTIONS_TAG,
                "LOADED_IMAGE::LoadOptions".to_string()
            ),
            (9, LINUX_INITRD_TAG, "Linux initrd".to_string()),
        ]
    );

    let apps: Vec<_> = log
        .events()
        .iter()
        .filter(|e| e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
        .collect();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].pcr, 4);
    let EventData::ImageLoad(image) = apps[0].decode().expect("image load") else {
        panic!("not an image load")
    };
    assert_eq!(image.length_in_memory, 8_247_232);
    assert_eq!(
        image.device_path_text(),
        "VenMedia(1428f772-b64a-441e-b8c3-9ebdd7f893c7)/kernel"
    );

    let actions: Vec<String> = decoded
        .iter()
        .filter_map(|d| match d {
            EventData::Action(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        actions,
        [
            "Calling EFI Application from Boot Option",
            "Exit Boot Services Invocation",
            "Exit Boot Services Returned with Success"
        ]
    );
    assert_eq!(
        decoded[2],
        EventData::FirmwareBlob {
            base: 0x820000,
            length: 0xe0000
        }
    );
    assert_eq!(decoded[1], EventData::CrtmVersion(String::new()));
    assert_eq!(
        decoded
            .iter()
            .filter(|d| matches!(d, EventData::Separator { error: false }))
            .count(),
        8
    );
}

#[test]
fn fixture_describes() {
    let log = EventLog::parse(LOG).expect("fixture parses");
    let lines: Vec<String> = log.events().iter().map(|e| e.describe()).collect();
    for l in &lines {
        println!("{l}");
    }
    assert_eq!(
        lines[4],
        "EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c) = 0 (disabled)"
    );
    assert_eq!(
        lines[11],
        "EV_EFI_BOOT_SERVICES_APPLICATION VenMedia(1428f772-b64a-441e-b8c3-9ebdd7f893c7)/kernel (length 8247232)"
    );
    assert_eq!(lines[23], "EV_EVENT_TAG Linux initrd");
    assert_eq!(lines[9], "EV_SEPARATOR");
    assert_eq!(lines[24], "EV_EFI_ACTION \"Exit Boot Services Invocation\"");
    assert_eq!(
        lines[10],
        "EV_EFI_BOOT_SERVICES_DRIVER PciRoot(0x0)/Pci(0x2,0x0)/Offset(0x12600,0x3cfff) (length 174536)"
    );
}
