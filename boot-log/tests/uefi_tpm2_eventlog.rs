//! Synthesized logs replayed here and by the real `tpm2_eventlog`
//! (tpm2-tools), the independent reference. Skipped with a message when the
//! binary is missing, except under CI=true, where that is a failure.

mod uefi_encode;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use aver_boot_log::uefi::{EventLog, HashAlg};
use uefi_encode::*;

const LOG: &[u8] = include_bytes!("../testdata/ovmf-q35-swtpm.bin");

fn tpm2_eventlog_available() -> bool {
    let found = Command::new("tpm2_eventlog")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("tpm2_eventlog (tpm2-tools) is not on PATH and CI=true");
        }
        eprintln!("skipped: tpm2_eventlog (tpm2-tools) is not on PATH");
    }
    found
}

fn scalar(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// Runs tpm2_eventlog on the log and returns its `pcrs:` section.
fn reference_pcrs(bytes: &[u8]) -> BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write log");
    let out = Command::new("tpm2_eventlog")
        .arg(file.path())
        .output()
        .expect("run tpm2_eventlog");
    assert!(
        out.status.success(),
        "tpm2_eventlog failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_norway::Value =
        serde_norway::from_slice(&out.stdout).expect("tpm2_eventlog YAML");
    let mut pcrs = BTreeMap::new();
    for (bank, values) in doc["pcrs"].as_mapping().expect("pcrs section") {
        let alg: HashAlg = scalar(bank).parse().expect("bank");
        let m = values
            .as_mapping()
            .expect("pcr map")
            .iter()
            .map(|(p, v)| {
                let pcr: u8 = scalar(p).trim().parse().expect("pcr");
                let v = hex::decode(scalar(v).trim().trim_start_matches("0x")).expect("hex");
                (pcr, v)
            })
            .collect();
        pcrs.insert(alg, m);
    }
    pcrs
}

fn ours(log: &EventLog) -> BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>> {
    log.banks()
        .iter()
        .map(|alg| {
            let bank = log.replay(*alg).expect("replay");
            (*alg, bank.iter().map(|(p, v)| (p, v.to_vec())).collect())
        })
        .collect()
}

#[test]
fn synthesized_log_replays_like_tpm2_eventlog() {
    if !tpm2_eventlog_available() {
        return;
    }
    let fixture = EventLog::parse(LOG).expect("fixture");
    let events = synthesized(fixture.events(), 100);
    let bytes = encode_agile(&ALL_BANKS, &events);
    let log = EventLog::parse(&bytes).expect("synthesized log");
    assert_eq!(log.events().len(), 100);
    eprintln!("synthesized log: {} bytes", bytes.len());
    let want = reference_pcrs(&bytes);
    let got = ours(&log);
    assert_eq!(got, want);
    // The extra events reach PCR 8, which the fixture does not.
    assert!(got[&HashAlg::Sha256].contains_key(&8));
}

#[test]
fn startup_locality_replays_like_tpm2_eventlog() {
    if !tpm2_eventlog_available() {
        return;
    }
    let fixture = EventLog::parse(LOG).expect("fixture");
    let mut events = vec![RawEvent::no_action(startup_locality(3), &ALL_BANKS)];
    events.extend(fixture.events().iter().skip(1).map(RawEvent::from_event));
    let bytes = encode_agile(&ALL_BANKS, &events);
    let log = EventLog::parse(&bytes).expect("log with StartupLocality");
    let got = ours(&log);
    assert_ne!(
        got[&HashAlg::Sha256][&0],
        ours(&fixture)[&HashAlg::Sha256][&0],
        "the locality must change PCR 0"
    );
    let reference = reference_pcrs(&bytes);
    if tpm2_tools_version() >= (5, 5) {
        assert_eq!(got, reference);
        return;
    }
    // tpm2-tools before 5.5 has no StartupLocality support: it extends the
    // event's zero digest into PCR 0 like any other event (tpm2-tools
    // issues 3146 and 3256). Everything else must agree, and its PCR 0 must
    // be exactly that quirk.
    let mut as_extend = events.clone();
    as_extend[0].event_type = 1;
    let quirk = ours(&EventLog::parse(&encode_agile(&ALL_BANKS, &as_extend)).expect("log"));
    assert_eq!(quirk, reference);
    for (alg, pcrs) in &got {
        for (pcr, value) in pcrs.iter().filter(|(p, _)| **p != 0) {
            assert_eq!(Some(value), reference[alg].get(pcr), "{alg} PCR {pcr}");
        }
    }
    eprintln!(
        "tpm2_eventlog predates StartupLocality support: PCR 0 compared with its known quirk"
    );
}

/// `tpm2_eventlog --version` as (major, minor).
fn tpm2_tools_version() -> (u32, u32) {
    let out = Command::new("tpm2_eventlog")
        .arg("--version")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text
        .split("version=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("0.0");
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn reencoded_fixture_replays_like_tpm2_eventlog() {
    if !tpm2_eventlog_available() {
        return;
    }
    let fixture = EventLog::parse(LOG).expect("fixture");
    let events: Vec<RawEvent> = fixture
        .events()
        .iter()
        .skip(1)
        .map(RawEvent::from_event)
        .collect();
    let bytes = encode_agile(&ALL_BANKS, &events);
    assert_eq!(bytes, LOG, "re-encoding the fixture gives its bytes back");
    assert_eq!(ours(&fixture), reference_pcrs(LOG));
}
