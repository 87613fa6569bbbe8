//! The boot chain, for real: Debian's OVMF and kernel boot under QEMU with
//! swtpm as the VM's TPM, the guest runs `aver-node quote` on `/dev/tpmrm0`
//! (the `device:` TCTI), and the host verifies the real firmware event log
//! and IMA list against policies generated from a known-good boot.
//!
//! Two boots per run (a TCG boot takes 10 to 20 s), in parallel:
//! - **A**, the known-good node image: its firmware log gives the boot
//!   policy (`aver policy boot --from-eventlog`'s generator) and its
//!   initramfs the runtime allow-list (`--from-rootfs`);
//! - **B**, a changed image: another kernel command line and an initramfs
//!   with one more program, which its init runs.
//!
//! Nothing in the logs is written by the test: the firmware, the kernel's
//! EFI stub and IMA produced them, and the TPM quoted the PCRs.

use std::process::Command;
use std::time::{Duration, Instant};

use aver_boot_log::uefi::EventLog;
use aver_crds::{AttestationPolicy, BootPolicy, SecureBoot, Sha256Digest};
use aver_node::agent::protocol::QuoteResponse;
use aver_tests::ek_ca::TestCa;
use aver_tests::vm::{
    quote_init_script, Compression, Initramfs, InitramfsBuilder, Vm, VmAssets, VmOptions,
    DEFAULT_CMDLINE, INIT_PROLOGUE, QEMU_CMDLINE_SUFFIX, READY_MARKER,
};
use aver_verifier::evidence::{Quote, EVIDENCE_VERSION_NODE};
use aver_verifier::reference_values::{boot_policy_from_log, runtime_policy_from_rootfs};
use aver_verifier::{verify_node, BootError, Evidence, Nonce, RuntimeError, VerifyError};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const QUOTE_TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_AVER_NODE: &str = "/bin/aver-node";
/// The program only image B holds, run by its init before it serves.
const GUEST_EXTRA: &str = "/bin/aver-vm-extra";

/// One booted guest and the quote it produced.
struct Booted {
    evidence: Evidence,
    initramfs: Initramfs,
    /// The command line as the guest saw it.
    cmdline: String,
    ak_name: String,
    seconds_to_ready: f64,
}

fn boot(cmdline: &str, with_extra: bool, nonce: &Nonce) -> anyhow::Result<Booted> {
    let assets = VmAssets::locate()?;
    let mut builder = InitramfsBuilder::new()?;
    // The same /init in both images: it runs the extra program where the
    // image has one, so B differs from A by that program alone.
    let init = quote_init_script(GUEST_AVER_NODE).replacen(
        INIT_PROLOGUE,
        &format!("{INIT_PROLOGUE}[ -x {GUEST_EXTRA} ] && {GUEST_EXTRA}\n"),
        1,
    );
    if with_extra {
        builder.add_bytes(
            GUEST_EXTRA,
            b"#!/bin/busybox sh\necho changed image\n",
            0o755,
        )?;
    }
    builder
        .init_script(&init)?
        .add_binary(&aver_tests::cargo_bin("aver-node"), GUEST_AVER_NODE)?;
    let initramfs = builder.build(Compression::None)?;
    let ca = TestCa::new("aver boot-chain test EK CA")?;
    let mut vm = Vm::boot_with_tpm(
        &assets,
        &initramfs,
        cmdline,
        &VmOptions::default(),
        |state| ca.manufacture(state),
    )?;
    vm.wait_for(READY_MARKER, BOOT_TIMEOUT)?;
    let seconds_to_ready = vm.elapsed().as_secs_f64();
    let out = vm.quote(&nonce.to_hex(), QUOTE_TIMEOUT)?;
    anyhow::ensure!(
        out.rc == 0,
        "aver-node quote failed in the guest (rc {}): {}",
        out.rc,
        out.stderr
    );
    let quote: QuoteResponse = serde_json::from_slice(&out.stdout)?;
    let ak_name = aver_verifier::tpm::AkPublic::parse(&quote.ak_public.0)?.name_hex();
    let evidence = Evidence {
        version: EVIDENCE_VERSION_NODE,
        nonce: *nonce,
        spki_sha256: Sha256Digest([0; 32]),
        quote: Quote {
            attest: quote.attest,
            signature: quote.signature,
        },
        pcrs: quote.pcrs,
        ak_public: quote.ak_public,
        event_log: Vec::new(),
        node_log: quote.node_log,
        boot_log: quote.boot_log,
        ima_log: quote.ima_log,
        batch: None,
    };
    let cmdline = vm
        .guest_cmdline()
        .ok_or_else(|| anyhow::anyhow!("the guest did not print its command line"))?;
    Ok(Booted {
        evidence,
        initramfs,
        cmdline,
        ak_name,
        seconds_to_ready,
    })
}

/// A policy trusting both guests' AKs, with the given platform rules.
fn policy(
    aks: &[&str],
    boot: Option<BootPolicy>,
    runtime: Option<aver_crds::RuntimePolicy>,
) -> AttestationPolicy {
    let mut policy: AttestationPolicy = serde_json::from_value(serde_json::json!({
        "allowed": {
            "engineDigests": [Sha256Digest([1; 32])],
            "modelDigests": [Sha256Digest([2; 32])],
        },
        "trust": { "akNames": aks },
    }))
    .expect("a valid policy");
    policy.boot = boot;
    policy.runtime = runtime;
    policy.validate().expect("the policy validates");
    policy
}

fn boot_error(result: Result<aver_verifier::VerifiedNode, VerifyError>) -> BootError {
    match result {
        Err(VerifyError::Boot(e)) => e,
        other => panic!("expected a boot chain refusal, got {other:?}"),
    }
}

/// The sha256 PCR values `tpm2_eventlog` (tpm2-tools) replays from a log.
fn tpm2_eventlog_sha256(log: &[u8]) -> Vec<(u8, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("log.bin");
    std::fs::write(&file, log).expect("write log");
    let out = Command::new("tpm2_eventlog")
        .arg(&file)
        .output()
        .expect("tpm2_eventlog runs (tpm2-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut in_sha256 = false;
    let mut pcrs = Vec::new();
    for line in yaml.lines().skip_while(|l| *l != "pcrs:") {
        let trimmed = line.trim();
        if !line.starts_with("    ") {
            in_sha256 = trimmed == "sha256:";
            continue;
        }
        if let (true, Some((index, value))) = (in_sha256, trimmed.split_once(':')) {
            if let Ok(index) = index.trim().parse() {
                pcrs.push((index, value.trim().trim_start_matches("0x").to_lowercase()));
            }
        }
    }
    pcrs
}

#[test]
fn a_real_boot_chain_is_verified_by_meaning_and_changes_are_refused() {
    aver_tests::require_vm!();
    let started = Instant::now();
    let nonce_a = Nonce([0xa1; 32]);
    let nonce_b = Nonce([0xb2; 32]);
    let changed_cmdline = format!("{DEFAULT_CMDLINE} aver.image=changed");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(DEFAULT_CMDLINE, false, &nonce_a));
        let b = s.spawn(|| boot(&changed_cmdline, true, &nonce_b));
        (a.join().expect("boot A"), b.join().expect("boot B"))
    });
    let a = a.expect("the known-good image boots and quotes");
    let b = b.expect("the changed image boots and quotes");
    eprintln!(
        "two boots to READY in {:.1} s and {:.1} s, both quoted after {:.1} s",
        a.seconds_to_ready,
        b.seconds_to_ready,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(a.cmdline, format!("{DEFAULT_CMDLINE}{QEMU_CMDLINE_SUFFIX}"));

    // The independent reference: tpm2-tools replays the guest's firmware
    // log to exactly the PCRs its TPM quoted.
    let boot_log_a = a
        .evidence
        .boot_log
        .as_ref()
        .expect("aver-node served the firmware log");
    for (pcr, value) in tpm2_eventlog_sha256(&boot_log_a.0) {
        let quoted = a
            .evidence
            .pcrs
            .iter()
            .find(|p| p.pcr == pcr)
            .expect("quoted");
        assert_eq!(hex::encode(quoted.value.0), value, "PCR {pcr}");
    }

    // Reference values from the known-good boot A, as an operator writes them.
    let log_a = EventLog::parse(&boot_log_a.0).expect("A's firmware log parses");
    let (boot_policy, explanations) =
        boot_policy_from_log(&log_a, Some(&a.cmdline)).expect("a boot policy from A's log");
    assert_eq!(boot_policy.secure_boot, Some(SecureBoot::Disabled));
    assert!(!explanations.is_empty());
    let runtime_policy = runtime_policy_from_rootfs(a.initramfs.staging_dir())
        .expect("an allow-list from A's image");
    let aks = [a.ak_name.as_str(), b.ak_name.as_str()];

    // A passes, and the report says what its boot proved.
    let good = policy(
        &aks,
        Some(boot_policy.clone()),
        Some(runtime_policy.clone()),
    );
    let report = verify_node(&a.evidence, &nonce_a, &good).expect("the known-good boot verifies");
    let text = report.to_text();
    eprintln!("{text}");
    for expected in [
        "replays to the quoted PCRs 0-9",
        "Secure Boot is disabled, as boot.secureBoot requires",
        &format!("the kernel command line is {:?}", a.cmdline),
        "the initrd is sha256:",
        "belongs to this boot",
        "are in the runtime allow-list",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // Evidence for another nonce is refused.
    assert!(matches!(
        verify_node(&a.evidence, &nonce_b, &good),
        Err(VerifyError::NonceMismatch { .. })
    ));

    // Secure Boot required, on a firmware without it.
    let secure = policy(
        &aks,
        Some(BootPolicy {
            secure_boot: Some(SecureBoot::Enabled),
            ..boot_policy.clone()
        }),
        None,
    );
    match boot_error(verify_node(&a.evidence, &nonce_a, &secure)) {
        BootError::Refused { pcr: 7, reason, .. } => {
            assert!(reason.contains("Secure Boot is disabled"), "{reason}")
        }
        other => panic!("expected PCR 7's SecureBoot event named, got {other}"),
    }

    // B's boot is refused event by event. Its kernel may come first: QEMU's
    // direct boot patches the kernel's setup header for what it loads
    // (where depends on the initrd), so the firmware may have measured
    // another image into PCR 4 for the same file.
    match boot_error(verify_node(&b.evidence, &nonce_b, &good)) {
        BootError::Refused { pcr: 4, reason, .. } => {
            assert!(reason.contains("boot.bootApplications"), "{reason}")
        }
        BootError::Refused { pcr: 9, reason, .. } => {
            assert!(reason.contains("kernel command line"), "{reason}")
        }
        other => panic!("expected PCR 4's or PCR 9's event named, got {other}"),
    }
    let log_b = EventLog::parse(&b.evidence.boot_log.as_ref().expect("B's firmware log").0)
        .expect("B's firmware log parses");
    let (b_reference, _) = boot_policy_from_log(&log_b, Some(&b.cmdline)).expect("B's values");
    let mut relaxed = boot_policy.clone();
    relaxed
        .boot_applications
        .get_or_insert_with(Vec::new)
        .extend(b_reference.boot_applications.unwrap_or_default());
    // Then its command line, naming the EFI stub's event.
    match boot_error(verify_node(
        &b.evidence,
        &nonce_b,
        &policy(&aks, Some(relaxed.clone()), None),
    )) {
        BootError::Refused { pcr: 9, reason, .. } => {
            assert!(reason.contains("kernel command line"), "{reason}")
        }
        other => panic!("expected PCR 9's command line event named, got {other}"),
    }
    // Allowing B's command line too, its changed initrd is refused next.
    relaxed
        .kernel_cmdlines
        .get_or_insert_with(Vec::new)
        .push(b.cmdline.clone());
    match boot_error(verify_node(
        &b.evidence,
        &nonce_b,
        &policy(&aks, Some(relaxed), None),
    )) {
        BootError::Refused { pcr: 9, reason, .. } => {
            assert!(reason.contains("initrd"), "{reason}")
        }
        other => panic!("expected PCR 9's initrd event named, got {other}"),
    }
    // What B ran since boot: its extra program is not in A's allow-list.
    match verify_node(
        &b.evidence,
        &nonce_b,
        &policy(&aks, None, Some(runtime_policy)),
    ) {
        Err(VerifyError::Runtime(RuntimeError::Refused(violation))) => {
            assert!(violation.to_string().contains(GUEST_EXTRA), "{violation}")
        }
        other => panic!("expected {GUEST_EXTRA} refused by the allow-list, got {other:?}"),
    }

    // A firmware log altered after the fact no longer replays to the quote.
    let mut altered = a.evidence.clone();
    if let Some(log) = altered.boot_log.as_mut() {
        let last = log.0.len() - 1;
        log.0[last - 40] ^= 1;
    }
    let err = verify_node(&altered, &nonce_a, &good).expect_err("an altered log is refused");
    assert!(
        matches!(
            err,
            VerifyError::Boot(BootError::Replay { .. } | BootError::Malformed(_))
        ),
        "{err}"
    );
    eprintln!(
        "boot-chain test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
