//! The platform checks on the real firmware log and IMA list of one boot
//! (OVMF on QEMU q35 with swtpm, Debian's 6.1 kernel).

use std::collections::BTreeMap;

use aver_boot_log::ima::{ImaLog, IMA_PCR};
use aver_boot_log::uefi::{EventLog, HashAlg};
use aver_crds::{AllowedFile, BootPolicy, RuntimePolicy, SecureBoot, Sha256Digest};

use super::*;
use crate::evidence::{Base64Bytes, Evidence, Quote, EVIDENCE_VERSION_NODE};
use crate::Nonce;
use crate::VerifyError;

const BOOT_LOG: &[u8] = include_bytes!("../../../boot-log/testdata/ovmf-q35-swtpm.bin");
const IMA_LIST: &[u8] = include_bytes!("../../../boot-log/testdata/ima-ng-initramfs.bin");
/// What that boot's guest saw in /proc/cmdline.
const CMDLINE: &str = "console=ttyS0 ima_policy=tcb ima_hash=sha256 ima_template=ima-ng rootfstype=ramfs quiet initrd=initrd";
/// SHA-256 of the initramfs file QEMU was given.
const INITRD: &str = "sha256:ad62d663fbfee516ff28688173352d909b769fbf7069fa94f38ca49e539e4cc7";

fn evidence(boot_log: Option<&[u8]>, ima_log: Option<&[u8]>) -> Evidence {
    Evidence {
        version: EVIDENCE_VERSION_NODE,
        nonce: Nonce([0; 32]),
        spki_sha256: Sha256Digest([0; 32]),
        quote: Quote {
            attest: Base64Bytes(vec![]),
            signature: Base64Bytes(vec![]),
        },
        pcrs: vec![],
        ak_public: Base64Bytes(vec![]),
        event_log: vec![],
        node_log: vec![],
        boot_log: boot_log.map(|b| Base64Bytes(b.to_vec())),
        ima_log: ima_log.map(|b| Base64Bytes(b.to_vec())),
        batch: None,
        ak_certificate: None,
        ak_chain: Vec::new(),
    }
}

/// The PCR values the TPM held at that boot's quote: the firmware log's
/// replay (PCR 8 untouched) and the IMA list's replay into PCR 10.
fn quoted() -> BTreeMap<u8, [u8; 32]> {
    let bank = EventLog::parse(BOOT_LOG)
        .unwrap()
        .replay(HashAlg::Sha256)
        .unwrap();
    let mut pcrs: BTreeMap<u8, [u8; 32]> = (0..=9)
        .map(|pcr| {
            (
                pcr,
                bank.get(pcr).map_or([0; 32], |v| v.try_into().unwrap()),
            )
        })
        .collect();
    pcrs.insert(
        IMA_PCR,
        ImaLog::parse(IMA_LIST).unwrap().replay_sha256(IMA_PCR),
    );
    pcrs
}

fn digest(text: &str) -> Sha256Digest {
    text.parse().unwrap()
}

fn known_good() -> BootPolicy {
    BootPolicy {
        secure_boot: Some(SecureBoot::Disabled),
        pk: Some(vec![]),
        kek: Some(vec![]),
        db: Some(vec![]),
        dbx: Some(vec![]),
        boot_applications: Some(vec![digest(&format!(
            "sha256:{}",
            hex::encode(kernel_app_digest())
        ))]),
        kernel_cmdlines: Some(vec![CMDLINE.to_owned()]),
        initrd_digests: Some(vec![digest(INITRD)]),
    }
}

fn kernel_app_digest() -> Vec<u8> {
    let log = EventLog::parse(BOOT_LOG).unwrap();
    let app = log
        .events()
        .iter()
        .find(|e| {
            e.pcr == 4
                && e.event_type == aver_boot_log::uefi::EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        })
        .unwrap();
    app.digest(HashAlg::Sha256).unwrap().to_vec()
}

fn boot_error(
    policy: &BootPolicy,
    evidence: &Evidence,
    quoted: &BTreeMap<u8, [u8; 32]>,
) -> BootError {
    match verify_platform(evidence, quoted, Some(policy), None) {
        Err(VerifyError::Boot(e)) => e,
        other => panic!("expected a boot error, got {other:?}"),
    }
}

#[test]
fn the_known_good_boot_passes_and_says_what_it_proved() {
    let report = verify_platform(
        &evidence(Some(BOOT_LOG), None),
        &quoted(),
        Some(&known_good()),
        None,
    )
    .unwrap()
    .unwrap();
    let boot = report.boot.unwrap();
    assert_eq!(boot.events, 26);
    let text = boot.statements.join("\n");
    for expected in [
        "replays to the quoted PCRs 0-9",
        "Secure Boot is disabled, as boot.secureBoot requires",
        "PK holds 0 entries, each allowed by boot.pk",
        "1 boot application ran",
        &format!("the kernel command line is {CMDLINE:?}"),
        &format!("the initrd is {INITRD}"),
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(report.runtime.is_none());
}

#[test]
fn a_pcr_the_log_does_not_explain_is_refused() {
    let mut pcrs = quoted();
    pcrs.insert(9, [9; 32]);
    let err = boot_error(&known_good(), &evidence(Some(BOOT_LOG), None), &pcrs);
    assert!(matches!(err, BootError::Replay { pcr: 9, .. }), "{err}");

    let mut pcrs = quoted();
    pcrs.insert(8, [8; 32]);
    let err = boot_error(
        &BootPolicy::default(),
        &evidence(Some(BOOT_LOG), None),
        &pcrs,
    );
    assert!(matches!(err, BootError::Replay { pcr: 8, .. }), "{err}");

    let mut pcrs = quoted();
    pcrs.remove(&5);
    let err = boot_error(&known_good(), &evidence(Some(BOOT_LOG), None), &pcrs);
    assert_eq!(err, BootError::NotQuoted(5));

    let err = boot_error(&known_good(), &evidence(None, None), &quoted());
    assert_eq!(err, BootError::NoLog);

    let err = boot_error(
        &known_good(),
        &evidence(Some(&BOOT_LOG[..100]), None),
        &quoted(),
    );
    assert!(matches!(err, BootError::Malformed(_)), "{err}");
}

#[test]
fn each_rule_refuses_naming_the_event() {
    let good = evidence(Some(BOOT_LOG), None);
    let cases: Vec<(BootPolicy, u8, &str)> = vec![
        (
            BootPolicy {
                secure_boot: Some(SecureBoot::Enabled),
                ..known_good()
            },
            7,
            "Secure Boot is disabled, but boot.secureBoot requires it enabled",
        ),
        (
            BootPolicy {
                kernel_cmdlines: Some(vec!["console=ttyS0 init=/bin/sh".into()]),
                ..known_good()
            },
            9,
            "kernel command line",
        ),
        (
            BootPolicy {
                initrd_digests: Some(vec![Sha256Digest([1; 32])]),
                ..known_good()
            },
            9,
            "is not allowed by boot.initrdDigests",
        ),
        (
            BootPolicy {
                boot_applications: Some(vec![Sha256Digest([2; 32])]),
                ..known_good()
            },
            4,
            "is not allowed by boot.bootApplications",
        ),
        (
            BootPolicy {
                dbx: Some(vec![Sha256Digest([3; 32])]),
                ..known_good()
            },
            7,
            "the revocation list is outdated",
        ),
    ];
    for (policy, pcr, reason_part) in cases {
        let err = boot_error(&policy, &good, &quoted());
        let BootError::Refused {
            pcr: got, reason, ..
        } = &err
        else {
            panic!("expected a refused event, got {err}");
        };
        assert_eq!(*got, pcr, "{err}");
        assert!(reason.contains(reason_part), "{err}");
        assert!(err.to_string().starts_with("boot event "), "{err}");
    }
}

#[test]
fn the_command_line_digest_is_utf16_with_its_nul() {
    let log = EventLog::parse(BOOT_LOG).unwrap();
    let event = log.events().iter().find(|e| e.pcr == 9).unwrap();
    let measured = event.digest(HashAlg::Sha256).unwrap();
    assert_eq!(boot::load_options_digests(CMDLINE)[0].as_slice(), measured);
    assert_ne!(
        boot::load_options_digests(&CMDLINE[..CMDLINE.len() - 1])[0].as_slice(),
        measured
    );
}

#[test]
fn a_boot_event_in_the_workload_pcr_is_a_foreign_extend() {
    assert_eq!(foreign_extend(&evidence(Some(BOOT_LOG), None), 13), None);
    // Move the kernel's PCR 9 tagged events to PCR 13, as systemd-stub
    // does with system extension images.
    let mut moved = BOOT_LOG.to_vec();
    let record = [9u8, 0, 0, 0, 6, 0, 0, 0];
    let at = moved.windows(8).position(|w| w == record).unwrap();
    moved[at] = 13;
    let err = foreign_extend(&evidence(Some(&moved), None), 13).unwrap();
    assert!(
        matches!(err, BootError::ForeignExtend { pcr: 13, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("EV_EVENT_TAG"), "{err}");
}

fn allowed_files() -> RuntimePolicy {
    let list = ImaLog::parse(IMA_LIST).unwrap();
    RuntimePolicy {
        files: list
            .entries()
            .iter()
            .skip(1)
            .map(|e| AllowedFile {
                path: e.path().unwrap().to_owned(),
                digests: vec![Sha256Digest(e.file_digest().unwrap().1.try_into().unwrap())],
            })
            .collect(),
    }
}

fn runtime_error(
    policy: &RuntimePolicy,
    evidence: &Evidence,
    quoted: &BTreeMap<u8, [u8; 32]>,
) -> RuntimeError {
    match verify_platform(evidence, quoted, None, Some(policy)) {
        Err(VerifyError::Runtime(e)) => e,
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

#[test]
fn what_ran_since_boot_is_checked_against_the_allow_list() {
    let both = evidence(Some(BOOT_LOG), Some(IMA_LIST));
    let report = verify_platform(&both, &quoted(), None, Some(&allowed_files()))
        .unwrap()
        .unwrap();
    let text = report.runtime.unwrap().statements.join("\n");
    assert!(
        text.contains("replays to the quoted PCR 10 with 3 entries (0 more"),
        "{text}"
    );
    assert!(text.contains("belongs to this boot"), "{text}");
    assert!(text.contains("all 2 files measured since boot"), "{text}");

    let mut only_busybox = allowed_files();
    only_busybox.files.retain(|f| f.path == "/bin/busybox");
    let err = runtime_error(&only_busybox, &both, &quoted());
    assert!(err.to_string().contains("/init"), "{err}");
    assert!(matches!(err, RuntimeError::Refused(_)), "{err}");
}

#[test]
fn the_quote_covers_a_prefix_of_the_list_and_only_this_boots_list() {
    let both = evidence(Some(BOOT_LOG), Some(IMA_LIST));
    // Quoted after /init, before busybox ran: busybox is not covered, so a
    // policy without it passes and says one entry came after the quote.
    let list = ImaLog::parse(IMA_LIST).unwrap();
    let mut first_two = Vec::new();
    let mut value = [0u8; 32];
    for e in list.entries().iter().take(2) {
        use sha2::{Digest as _, Sha256};
        let m = Sha256::digest(e.template_data());
        value = Sha256::new()
            .chain_update(value)
            .chain_update(m)
            .finalize()
            .into();
        first_two.push(e.clone());
    }
    let mut pcrs = quoted();
    pcrs.insert(IMA_PCR, value);
    let mut init_only = allowed_files();
    init_only.files.retain(|f| f.path == "/init");
    let report = verify_platform(&both, &pcrs, None, Some(&init_only))
        .unwrap()
        .unwrap();
    let text = report.runtime.unwrap().statements.join("\n");
    assert!(text.contains("with 2 entries (1 more"), "{text}");

    pcrs.insert(IMA_PCR, [0xaa; 32]);
    let err = runtime_error(&allowed_files(), &both, &pcrs);
    assert!(matches!(err, RuntimeError::Replay { .. }), "{err}");

    // Another boot's PCRs: the boot_aggregate does not match.
    let mut other_boot = quoted();
    other_boot.insert(0, [0x11; 32]);
    let err = runtime_error(&allowed_files(), &both, &other_boot);
    assert!(matches!(err, RuntimeError::OtherBoot { .. }), "{err}");

    let err = runtime_error(&allowed_files(), &evidence(Some(BOOT_LOG), None), &quoted());
    assert_eq!(err, RuntimeError::NoLog);

    let mut no_pcr10 = quoted();
    no_pcr10.remove(&IMA_PCR);
    assert_eq!(
        runtime_error(&allowed_files(), &both, &no_pcr10),
        RuntimeError::NotQuoted(IMA_PCR)
    );
}

/// A crypto-agile log (sha256 only) holding one PCR 7 `PK` variable event
/// whose signature list has one X.509 entry `cert`.
fn log_with_pk(cert: &[u8]) -> Vec<u8> {
    use aver_boot_log::uefi::Guid;
    use sha2::Digest as _;
    let mut log = Vec::new();
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend(0u32.to_le_bytes()); // platformClass
    spec.extend([0, 2, 0, 2]); // minor, major, errata, uintnSize
    spec.extend(1u32.to_le_bytes());
    spec.extend(0x000Bu16.to_le_bytes());
    spec.extend(32u16.to_le_bytes());
    spec.push(0); // vendorInfoSize
    log.extend(0u32.to_le_bytes());
    log.extend(3u32.to_le_bytes()); // EV_NO_ACTION
    log.extend([0u8; 20]);
    log.extend((spec.len() as u32).to_le_bytes());
    log.extend(&spec);

    let mut list = Guid::EFI_CERT_X509_GUID.0.to_vec();
    list.extend(((28 + 16 + cert.len()) as u32).to_le_bytes()); // SignatureListSize
    list.extend(0u32.to_le_bytes()); // SignatureHeaderSize
    list.extend(((16 + cert.len()) as u32).to_le_bytes()); // SignatureSize
    list.extend([0x77; 16]); // SignatureOwner
    list.extend(cert);
    let name: Vec<u8> = "PK".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut var = Guid::EFI_GLOBAL_VARIABLE.0.to_vec();
    var.extend(2u64.to_le_bytes());
    var.extend((list.len() as u64).to_le_bytes());
    var.extend(&name);
    var.extend(&list);
    log.extend(7u32.to_le_bytes());
    log.extend(0x8000_0001u32.to_le_bytes()); // EV_EFI_VARIABLE_DRIVER_CONFIG
    log.extend(1u32.to_le_bytes());
    log.extend(0x000Bu16.to_le_bytes());
    log.extend(<[u8; 32]>::from(sha2::Sha256::digest(&var)));
    log.extend((var.len() as u32).to_le_bytes());
    log.extend(&var);
    log
}

#[test]
fn every_measured_key_must_be_allowed() {
    use sha2::Digest as _;
    let cert = b"a platform key certificate (DER)";
    let log = log_with_pk(cert);
    let bank = EventLog::parse(&log)
        .unwrap()
        .replay(HashAlg::Sha256)
        .unwrap();
    let pcrs: BTreeMap<u8, [u8; 32]> = (0..=9)
        .map(|pcr| {
            (
                pcr,
                bank.get(pcr).map_or([0; 32], |v| v.try_into().unwrap()),
            )
        })
        .collect();
    let evidence = evidence(Some(&log), None);
    let cert_digest = Sha256Digest(sha2::Sha256::digest(cert).into());

    let allowed = BootPolicy {
        pk: Some(vec![cert_digest]),
        ..BootPolicy::default()
    };
    let report = verify_platform(&evidence, &pcrs, Some(&allowed), None)
        .unwrap()
        .unwrap();
    let text = report.boot.unwrap().statements.join("\n");
    assert!(
        text.contains("PK holds 1 entry, each allowed by boot.pk"),
        "{text}"
    );

    let other = BootPolicy {
        pk: Some(vec![Sha256Digest([5; 32])]),
        ..BootPolicy::default()
    };
    let err = boot_error(&other, &evidence, &pcrs);
    assert!(
        err.to_string().contains(&format!(
            "PK entry {cert_digest} (X.509 certificate) is not allowed by boot.pk"
        )),
        "{err}"
    );
    // The log has no KEK variable at all: a kek rule cannot be proven.
    let kek = BootPolicy {
        kek: Some(vec![]),
        ..BootPolicy::default()
    };
    let err = boot_error(&kek, &evidence, &pcrs);
    assert!(
        matches!(
            err,
            BootError::Missing {
                rule: "boot.kek",
                ..
            }
        ),
        "{err}"
    );
    // dbx must hold what the policy forbids: this log has no dbx.
    let dbx = BootPolicy {
        dbx: Some(vec![cert_digest]),
        ..BootPolicy::default()
    };
    assert!(matches!(
        boot_error(&dbx, &evidence, &pcrs),
        BootError::Missing {
            rule: "boot.dbx",
            ..
        }
    ));
}
