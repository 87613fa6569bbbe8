//! Parse + SHA-256 replay of a 100-event UEFI log, and, in the same run,
//! the peer `tpm2_eventlog` (tpm2-tools) process on the same log file.

#[path = "../tests/uefi_encode/mod.rs"]
mod uefi_encode;

use std::hint::black_box;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aver_boot_log::uefi::{EventLog, HashAlg};
use criterion::{criterion_group, criterion_main, Criterion};

const FIXTURE: &[u8] = include_bytes!("../testdata/ovmf-q35-swtpm.bin");

fn log_100() -> Vec<u8> {
    let fixture = EventLog::parse(FIXTURE).expect("fixture");
    let events = uefi_encode::synthesized(fixture.events(), 100);
    let bytes = uefi_encode::encode_agile(&uefi_encode::ALL_BANKS, &events);
    assert_eq!(EventLog::parse(&bytes).expect("log").events().len(), 100);
    bytes
}

fn bench(c: &mut Criterion) {
    let bytes = log_100();
    c.bench_function("uefi_log/parse+replay_sha256/100_events", |b| {
        b.iter(|| {
            let log = EventLog::parse(black_box(&bytes)).expect("parse");
            black_box(log.replay(HashAlg::Sha256).expect("replay"))
        })
    });
    c.bench_function("uefi_log/parse/100_events", |b| {
        b.iter(|| black_box(EventLog::parse(black_box(&bytes)).expect("parse")))
    });

    if Command::new("tpm2_eventlog")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("tpm2_eventlog not on PATH: peer benchmark skipped");
        return;
    }
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&bytes).expect("write log");
    c.bench_function("uefi_log/peer_tpm2_eventlog_process/100_events", |b| {
        b.iter(|| {
            let status = Command::new("tpm2_eventlog")
                .arg(file.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run tpm2_eventlog");
            assert!(status.success());
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
