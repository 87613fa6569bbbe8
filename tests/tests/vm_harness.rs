//! The VM harness with real parts: Debian's OVMF and kernel under QEMU with
//! swtpm as the TPM. One boot serves every check of the file (a TCG boot
//! takes 10 to 20 seconds).
//!
//! The guest runs the harness's own `/init` ([`quote_init_script`]) with a
//! shell script standing in for `aver-node quote`, which prints, depending
//! on the nonce, the firmware's event log, the IMA list, PCR 9 read by the
//! real `tpm2_pcrread` (a dynamically linked binary copied with its
//! libraries), an error, or its own arguments.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aver_tests::ek_ca::TestCa;
use aver_tests::vm::{
    quote_init_script, Compression, InitramfsBuilder, Vm, VmAssets, VmOptions, DEFAULT_CMDLINE,
    QEMU_CMDLINE_SUFFIX, READY_MARKER,
};
use sha2::{Digest as _, Sha256};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_AVER_NODE: &str = "/bin/aver-node";
const GUEST_PCRREAD: &str = "/usr/bin/tpm2_pcrread";

fn nonce(digit: char) -> String {
    digit.to_string().repeat(64)
}

/// The stand-in for `aver-node quote --tcti T --qualifying-data N`.
fn fake_aver_node() -> String {
    format!(
        r#"#!/bin/busybox sh
[ "$1" = quote ] && [ "$2" = --tcti ] && [ "$4" = --qualifying-data ] || {{ echo "usage: $0 quote --tcti T --qualifying-data N" >&2; exit 64; }}
case "$5" in
  {event_log}) cat /sys/kernel/security/tpm0/binary_bios_measurements ;;
  {ima}) cat /sys/kernel/security/ima/binary_runtime_measurements ;;
  {pcr}) {GUEST_PCRREAD} --tcti "$3" sha256:9 ;;
  {error}) echo "boom" >&2; exit 3 ;;
  *) printf '{{"tcti":"%s","qualifying_data":"%s"}}\n' "$3" "$5" ;;
esac
"#,
        event_log = nonce('0'),
        ima = nonce('1'),
        pcr = nonce('2'),
        error = nonce('e'),
    )
}

fn boot() -> anyhow::Result<(Vm, aver_tests::vm::Initramfs)> {
    let assets = VmAssets::locate()?;
    let mut builder = InitramfsBuilder::new()?;
    builder
        .init_script(&quote_init_script(GUEST_AVER_NODE))?
        .add_bytes(GUEST_AVER_NODE, fake_aver_node().as_bytes(), 0o755)?
        .add_binary(Path::new("/usr/bin/tpm2_pcrread"), GUEST_PCRREAD)?;
    let initramfs = builder.build(Compression::None)?;
    // A TPM manufactured like a real one (EK certificate in NV).
    let ca = TestCa::new("aver VM harness EK CA")?;
    let vm = Vm::boot_with_tpm(
        &assets,
        &initramfs,
        DEFAULT_CMDLINE,
        &VmOptions::default(),
        |state| ca.manufacture(state),
    )?;
    Ok((vm, initramfs))
}

/// `(PCR index, event type)` of every event in `tpm2_eventlog`'s YAML.
fn events(yaml: &str) -> Vec<(u32, String)> {
    let mut events = Vec::new();
    let mut pcr = None;
    for line in yaml.lines().map(str::trim) {
        if let Some(index) = line.strip_prefix("PCRIndex:") {
            pcr = index.trim().parse().ok();
        } else if let Some(kind) = line.strip_prefix("EventType:") {
            if let Some(index) = pcr.take() {
                events.push((index, kind.trim().to_owned()));
            }
        }
    }
    events
}

/// PCR 9's SHA-256 value from `tpm2_eventlog`'s or `tpm2_pcrread`'s YAML
/// (`  9 : 0x…` below `sha256:`), in lower case without `0x`.
fn sha256_pcr9(yaml: &str) -> Option<String> {
    let mut in_sha256 = false;
    for line in yaml.lines() {
        let trimmed = line.trim();
        if trimmed.ends_with(':') {
            in_sha256 = trimmed == "sha256:";
            continue;
        }
        if !in_sha256 {
            continue;
        }
        if let Some((index, value)) = trimmed.split_once(':') {
            if index.trim() == "9" {
                return Some(value.trim().trim_start_matches("0x").to_lowercase());
            }
        }
    }
    None
}

#[test]
fn boots_a_real_firmware_and_kernel_with_a_tpm() {
    aver_tests::require_vm!();
    let (mut vm, initramfs) = boot().expect("the VM starts");
    vm.wait_for(READY_MARKER, BOOT_TIMEOUT)
        .expect("the guest's /init is ready");
    let booted = vm.elapsed();
    eprintln!("booted to READY in {:.1} s", booted.as_secs_f64());

    // The command line, as QEMU's loader passes it.
    assert_eq!(
        vm.guest_cmdline().as_deref(),
        Some(format!("{DEFAULT_CMDLINE}{QEMU_CMDLINE_SUFFIX}").as_str())
    );

    // A request echoed back by the guest, and the protocol's error paths.
    let echoed = vm
        .quote(&nonce('a'), REQUEST_TIMEOUT)
        .expect("an echo request");
    assert_eq!(echoed.rc, 0, "stderr: {}", echoed.stderr);
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout),
        format!(
            "{{\"tcti\":\"device:/dev/tpmrm0\",\"qualifying_data\":\"{}\"}}\n",
            nonce('a')
        )
    );
    let failed = vm
        .quote(&nonce('e'), REQUEST_TIMEOUT)
        .expect("a failing request");
    assert_eq!(
        (failed.rc, failed.stderr.as_str(), failed.stdout.len()),
        (3, "boom\n", 0)
    );
    let rejected = vm
        .quote("not a nonce", REQUEST_TIMEOUT)
        .expect("a rejected request");
    assert_eq!(rejected.rc, 2);
    assert!(
        rejected.stderr.contains("not a 64-hex-character nonce"),
        "{}",
        rejected.stderr
    );

    // The firmware's event log decodes with tpm2-tools and holds the EFI
    // stub's PCR 9 events: the initrd (its file's SHA-256) and the command
    // line.
    let event_log = vm
        .quote(&nonce('0'), REQUEST_TIMEOUT)
        .expect("the event log");
    assert_eq!(event_log.rc, 0, "stderr: {}", event_log.stderr);
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("binary_bios_measurements");
    fs::write(&log_file, &event_log.stdout).unwrap();
    let decoded = Command::new("tpm2_eventlog")
        .arg(&log_file)
        .output()
        .expect("tpm2_eventlog runs (apt-get install tpm2-tools)");
    let yaml = String::from_utf8_lossy(&decoded.stdout);
    assert!(
        decoded.status.success(),
        "tpm2_eventlog: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let tags = events(&yaml)
        .into_iter()
        .filter(|(pcr, kind)| *pcr == 9 && kind == "EV_EVENT_TAG")
        .count();
    assert!(tags >= 2, "PCR 9 EV_EVENT_TAG events: {tags}\n{yaml}");
    let initrd_digest = hex::encode(Sha256::digest(fs::read(initramfs.path()).unwrap()));
    assert!(
        yaml.to_lowercase().contains(&initrd_digest),
        "the initrd's SHA-256 {initrd_digest} is not in the event log"
    );

    // The real tpm2_pcrread in the guest (libraries and the device TCTI
    // copied by the builder) reads the PCR 9 the log replays to.
    let pcr = vm.quote(&nonce('2'), REQUEST_TIMEOUT).expect("PCR 9");
    assert_eq!(pcr.rc, 0, "tpm2_pcrread: {}", pcr.stderr);
    let read = sha256_pcr9(&String::from_utf8_lossy(&pcr.stdout));
    assert!(read.is_some(), "{}", String::from_utf8_lossy(&pcr.stdout));
    assert_eq!(read, sha256_pcr9(&yaml), "PCR 9 read vs. replayed");

    // The IMA list measured the init and busybox.
    let ima = vm
        .quote(&nonce('1'), REQUEST_TIMEOUT)
        .expect("the IMA list");
    assert_eq!(ima.rc, 0, "stderr: {}", ima.stderr);
    for name in ["boot_aggregate", "/init", "/bin/busybox", GUEST_PCRREAD] {
        assert!(
            ima.stdout.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} is not in the IMA list"
        );
    }
    eprintln!(
        "event log {} bytes, IMA list {} bytes, {:.1} s in all",
        event_log.stdout.len(),
        ima.stdout.len(),
        vm.elapsed().as_secs_f64()
    );
}

/// Boot time to READY with a large binary in the initramfs, uncompressed
/// and gzipped: `cargo test -p aver-tests --test vm_harness -- --ignored
/// --nocapture` (needs `cargo build -p aver-node --bin aver-node`).
#[test]
#[ignore = "a measurement: boots three VMs"]
fn boot_time_with_a_large_binary() {
    aver_tests::require_vm!();
    let assets = VmAssets::locate().unwrap();
    let aver_node = aver_tests::cargo_bin("aver-node");
    for compression in [
        Compression::None,
        Compression::Gzip(1),
        Compression::Gzip(6),
    ] {
        let started = Instant::now();
        let mut builder = InitramfsBuilder::new().unwrap();
        builder
            .init_script(&quote_init_script(GUEST_AVER_NODE))
            .unwrap()
            .add_binary(&aver_node, GUEST_AVER_NODE)
            .unwrap();
        let initramfs = builder.build(compression).unwrap();
        let built = started.elapsed();
        let size = fs::metadata(initramfs.path()).unwrap().len();
        let mut vm = Vm::boot(&assets, &initramfs, DEFAULT_CMDLINE, &VmOptions::default()).unwrap();
        vm.wait_for(READY_MARKER, BOOT_TIMEOUT).unwrap();
        let ready = vm.elapsed();
        // The first run of the binary: IMA hashes it before it executes.
        let first = Instant::now();
        let run = vm.quote(&nonce('a'), BOOT_TIMEOUT).unwrap();
        eprintln!(
            "{compression:?}: {:.1} MiB built in {:.1} s, READY after {:.1} s, first run {:.1} s (rc={})",
            size as f64 / (1024.0 * 1024.0),
            built.as_secs_f64(),
            ready.as_secs_f64(),
            first.elapsed().as_secs_f64(),
            run.rc
        );
    }
}
