//! The boot chain, for real: Debian's OVMF and kernel boot under QEMU with
//! swtpm as the VM's TPM into the dm-verity protected node image of
//! `scripts/node-image.sh`, the guest runs `aver-node quote` on
//! `/dev/tpmrm0` (the `device:` TCTI), and the host verifies the real
//! firmware event log and IMA list against policies generated from a
//! known-good boot.
//!
//! The node image's root hash is on the kernel command line, which the
//! kernel's EFI stub measures into PCR 9 with the initramfs; that initramfs
//! opens the root only through dm-verity under that hash (reading every
//! block once) and otherwise powers off. So a boot policy pinning the
//! command line and the initrd covers every byte of the root file system.
//!
//! Two boots per run (a TCG boot takes 10 to 20 s), in parallel, chosen for
//! what only a boot can show:
//! - **A**, the known-good node image: its firmware log gives the boot
//!   policy (`aver policy boot --from-eventlog`'s generator), and the
//!   image's root directory and its initramfs's directory the runtime
//!   allow-list (`--from-rootfs` of each: IMA measures what the initramfs
//!   runs before `switch_root` as well as what the root runs after);
//! - **B**, the same kernel, initramfs and command line (so the same PCRs
//!   as A) with one byte of `/bin/aver-node` changed in the root image
//!   after `veritysetup format`: the guest must refuse to boot it. This is
//!   the one property the measurements cannot show, since B measures
//!   exactly like A; it is what makes the root hash on the command line
//!   mean the root's content.
//!
//! A changed command line (another root hash), a changed initrd and a
//! program outside the allow-list are refused on A's real evidence against
//! policies that do not allow A's values: the verifier compares the same
//! events either way, so a third and fourth boot would add time, not proof.
//!
//! Nothing in the logs is written by the test: the firmware, the kernel's
//! EFI stub and IMA produced them, and the TPM quoted the PCRs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aver_boot_log::uefi::EventLog;
use aver_crds::{
    AllowedFile, AttestationPolicy, BootPolicy, RuntimePolicy, SecureBoot, Sha256Digest,
};
use aver_node::agent::protocol::QuoteResponse;
use aver_tests::ek_ca::TestCa;
use aver_tests::vm::{
    NodeImage, Vm, VmAssets, VmOptions, DEFAULT_CMDLINE, QEMU_CMDLINE_SUFFIX, READY_MARKER,
    REFUSED_MARKER, ROOT_HASH_PARAM,
};
use aver_verifier::evidence::{Quote, EVIDENCE_VERSION_NODE};
use aver_verifier::reference_values::{boot_policy_from_log, runtime_policy_from_rootfs};
use aver_verifier::{verify_node, BootError, Evidence, Nonce, RuntimeError, VerifyError};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const QUOTE_TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_AVER_NODE: &str = "/bin/aver-node";

/// One booted guest and the quote it produced.
struct Booted {
    evidence: Evidence,
    /// The command line as the guest saw it.
    cmdline: String,
    console: String,
    ak_name: String,
    seconds_to_ready: f64,
}

/// A guest that refused its root image.
struct Refused {
    console: String,
    seconds: f64,
}

fn start(image: &NodeImage, root_image: &Path) -> anyhow::Result<Vm> {
    let assets = VmAssets::locate()?;
    let initramfs = image.initramfs()?;
    let ca = TestCa::new("aver boot-chain test EK CA")?;
    let options = VmOptions {
        disks: image.disks(root_image),
        ..VmOptions::default()
    };
    Vm::boot_with_tpm(
        &assets,
        &initramfs,
        &image.cmdline(DEFAULT_CMDLINE),
        &options,
        |state| ca.manufacture(state),
    )
}

fn boot(image: &NodeImage, nonce: &Nonce) -> anyhow::Result<Booted> {
    let mut vm = start(image, &image.root_image())?;
    vm.wait_for(READY_MARKER, BOOT_TIMEOUT)?;
    let seconds_to_ready = vm.elapsed().as_secs_f64();
    let out = vm.quote(&nonce.to_hex(), QUOTE_TIMEOUT)?;
    anyhow::ensure!(
        out.rc == 0,
        "aver-node quote failed in the guest (rc {}): {}{}",
        out.rc,
        out.stderr,
        String::from_utf8_lossy(&out.stdout)
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
        ak_certificate: None,
        ak_chain: Vec::new(),
    };
    let cmdline = vm
        .guest_cmdline()
        .ok_or_else(|| anyhow::anyhow!("the guest did not print its command line"))?;
    Ok(Booted {
        evidence,
        cmdline,
        console: vm.console_output(),
        ak_name,
        seconds_to_ready,
    })
}

/// Boots `root_image` (changed after `veritysetup format`) and expects the
/// initramfs to refuse it.
fn boot_refused(image: &NodeImage, root_image: &Path) -> anyhow::Result<Refused> {
    let mut vm = start(image, root_image)?;
    vm.wait_for(REFUSED_MARKER, BOOT_TIMEOUT)?;
    let seconds = vm.elapsed().as_secs_f64();
    // The guest powers off right after: let QEMU exit so the console holds
    // everything it printed.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Refused {
        console: vm.console_output(),
        seconds,
    })
}

/// A copy of the image's root with one byte of `guest_path`'s content
/// flipped (found with debugfs), in `dir`.
fn changed_root_image(image: &NodeImage, guest_path: &str, dir: &Path) -> std::path::PathBuf {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap {guest_path} 1"))
        .arg(image.root_image())
        .output()
        .expect("debugfs runs (e2fsprogs)");
    let block: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "debugfs bmap {guest_path}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(block > 0, "{guest_path} has a second block in the image");
    let changed = dir.join("root.img");
    std::fs::copy(image.root_image(), &changed).expect("copy the root image");
    let mut bytes = std::fs::read(&changed).expect("read the copy");
    let offset = usize::try_from(block * 4096 + 123).expect("offset");
    bytes[offset] ^= 0x01;
    std::fs::write(&changed, bytes).expect("write the changed copy");
    changed
}

/// The allow-lists of several directories as one (paths merged).
fn merged(policies: &[RuntimePolicy]) -> RuntimePolicy {
    let mut files: BTreeMap<String, Vec<Sha256Digest>> = BTreeMap::new();
    for file in policies.iter().flat_map(|p| &p.files) {
        let digests = files.entry(file.path.clone()).or_default();
        for digest in &file.digests {
            if !digests.contains(digest) {
                digests.push(*digest);
            }
        }
    }
    RuntimePolicy {
        files: files
            .into_iter()
            .map(|(path, digests)| AllowedFile { path, digests })
            .collect(),
    }
}

/// A policy trusting the given AKs, with the given platform rules.
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
    // Without boot rules the policy checks no boot chain: fine for checking
    // the AK and the quote alone on swtpm.
    policy.allow_unverified_boot = boot.is_none();
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
    let image =
        NodeImage::build(&aver_tests::cargo_bin("aver-node")).expect("the node image builds");
    eprintln!(
        "node image built in {:.1} s, root hash {}",
        image.build_time.as_secs_f64(),
        image.root_hash
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let changed = changed_root_image(&image, GUEST_AVER_NODE, scratch.path());
    let nonce_a = Nonce([0xa1; 32]);
    let nonce_b = Nonce([0xb2; 32]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&image, &nonce_a));
        let b = s.spawn(|| boot_refused(&image, &changed));
        (a.join().expect("boot A"), b.join().expect("boot B"))
    });
    let a = a.expect("the known-good node image boots and quotes");
    let b = b.expect("the changed root image is refused by the guest");
    eprintln!(
        "node image to READY in {:.1} s; changed image refused after {:.1} s; both done after {:.1} s",
        a.seconds_to_ready,
        b.seconds,
        started.elapsed().as_secs_f64()
    );
    let root_hash_arg = format!("{ROOT_HASH_PARAM}={}", image.root_hash);
    assert_eq!(
        a.cmdline,
        format!("{}{QEMU_CMDLINE_SUFFIX}", image.cmdline(DEFAULT_CMDLINE))
    );
    // A runs from the verified root, read-only.
    assert!(
        a.console
            .contains("AVER-VM ROOT /dev/mapper/aver-root / ext4 ro"),
        "A's root is not the dm-verity device:\n{}",
        a.console
    );
    // B: dm-verity found the changed block, the initramfs refused the root
    // and never reached the node's init.
    assert!(
        b.console.contains(&format!(
            "{REFUSED_MARKER}: the root image does not match root hash {}",
            image.root_hash
        )),
        "B's refusal:\n{}",
        b.console
    );
    assert!(
        b.console.contains("verity"),
        "no dm-verity error in:\n{}",
        b.console
    );
    assert!(
        !b.console.contains(READY_MARKER),
        "B served:\n{}",
        b.console
    );

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

    // Reference values from the known-good boot A, as an operator writes
    // them: the boot policy from its log, the allow-list from the image's
    // root and from its initramfs (IMA measured both stages).
    let log_a = EventLog::parse(&boot_log_a.0).expect("A's firmware log parses");
    let (boot_policy, explanations) =
        boot_policy_from_log(&log_a, Some(&a.cmdline)).expect("a boot policy from A's log");
    assert_eq!(boot_policy.secure_boot, Some(SecureBoot::Disabled));
    assert!(!explanations.is_empty());
    let initramfs = image.initramfs().expect("the node image's initramfs");
    let root_only =
        runtime_policy_from_rootfs(&image.rootfs_dir()).expect("an allow-list from the root");
    let initramfs_only = runtime_policy_from_rootfs(initramfs.staging_dir())
        .expect("an allow-list from the initramfs");
    let runtime_policy = merged(&[root_only.clone(), initramfs_only.clone()]);
    let aks = [a.ak_name.as_str()];

    // A passes, and the report says what its boot proved: the command line
    // it states holds the root hash.
    let good = policy(
        &aks,
        Some(boot_policy.clone()),
        Some(runtime_policy.clone()),
    );
    let report = verify_node(&a.evidence, &nonce_a, &aver_tests::checked(&good))
        .expect("the known-good boot verifies");
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
    let cmdline_statement = text
        .lines()
        .find(|line| line.contains("the kernel command line is"))
        .expect("a kernel command line statement");
    assert!(
        cmdline_statement.contains(&root_hash_arg),
        "{cmdline_statement}"
    );

    // Evidence for another nonce is refused.
    assert!(matches!(
        verify_node(&a.evidence, &nonce_b, &aver_tests::checked(&good)),
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
    match boot_error(verify_node(
        &a.evidence,
        &nonce_a,
        &aver_tests::checked(&secure),
    )) {
        BootError::Refused { pcr: 7, reason, .. } => {
            assert!(reason.contains("Secure Boot is disabled"), "{reason}")
        }
        other => panic!("expected PCR 7's SecureBoot event named, got {other}"),
    }

    // A policy for another root image (another root hash on the command
    // line) refuses A at the EFI stub's command line event.
    let other_root = BootPolicy {
        kernel_cmdlines: Some(vec![a.cmdline.replace(&image.root_hash, &"0".repeat(64))]),
        ..boot_policy.clone()
    };
    match boot_error(verify_node(
        &a.evidence,
        &nonce_a,
        &aver_tests::checked(&policy(&aks, Some(other_root), None)),
    )) {
        BootError::Refused { pcr: 9, reason, .. } => {
            assert!(reason.contains("kernel command line"), "{reason}")
        }
        other => panic!("expected PCR 9's command line event named, got {other}"),
    }
    // Another initramfs: refused at the initrd event.
    let other_initrd = BootPolicy {
        initrd_digests: Some(vec![Sha256Digest([7; 32])]),
        ..boot_policy.clone()
    };
    match boot_error(verify_node(
        &a.evidence,
        &nonce_a,
        &aver_tests::checked(&policy(&aks, Some(other_initrd), None)),
    )) {
        BootError::Refused { pcr: 9, reason, .. } => {
            assert!(reason.contains("initrd"), "{reason}")
        }
        other => panic!("expected PCR 9's initrd event named, got {other}"),
    }

    // What A ran since boot, program by program: without aver-node in the
    // allow-list, its measurement is refused by name.
    let without_aver_node = RuntimePolicy {
        files: runtime_policy
            .files
            .iter()
            .filter(|f| f.path != GUEST_AVER_NODE)
            .cloned()
            .collect(),
    };
    match verify_node(
        &a.evidence,
        &nonce_a,
        &aver_tests::checked(&policy(&aks, None, Some(without_aver_node))),
    ) {
        Err(VerifyError::Runtime(RuntimeError::Refused(violation))) => {
            assert!(
                violation.to_string().contains(GUEST_AVER_NODE),
                "{violation}"
            )
        }
        other => panic!("expected {GUEST_AVER_NODE} refused by the allow-list, got {other:?}"),
    }
    // The root's files alone do not cover the boot: IMA measured what the
    // initramfs ran before switch_root (its /init, veritysetup, the
    // modules), and the first of those is refused with its digest.
    match verify_node(
        &a.evidence,
        &nonce_a,
        &aver_tests::checked(&policy(&aks, None, Some(root_only))),
    ) {
        Err(VerifyError::Runtime(RuntimeError::Refused(violation))) => {
            let named = violation.to_string();
            let initramfs_file = initramfs_only.files.iter().find(|f| {
                named.contains(&format!("{} ", f.path))
                    && f.digests.iter().any(|d| named.contains(&hex::encode(d.0)))
            });
            assert!(
                initramfs_file.is_some(),
                "{named} is not a file of the initramfs"
            );
            eprintln!("root-only allow-list refused: {named}");
        }
        other => {
            panic!("expected an initramfs file refused by the root's allow-list, got {other:?}")
        }
    }

    // A firmware log altered after the fact no longer replays to the quote.
    let mut altered = a.evidence.clone();
    if let Some(log) = altered.boot_log.as_mut() {
        let last = log.0.len() - 1;
        log.0[last - 40] ^= 1;
    }
    let err = verify_node(&altered, &nonce_a, &aver_tests::checked(&good))
        .expect_err("an altered log is refused");
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
