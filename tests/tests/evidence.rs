//! The security properties of docs/architecture.md proven against evidence from a real TPM (swtpm):
//! freshness, channel binding, code identity and fail-closed parsing. Each
//! tamper case must fail with its own typed error.

use std::path::{Path, PathBuf};
use std::process::Command;

use aver_crds::{AttestationPolicy, Sha256Digest};
use aver_tests::node::{policy_for, TestNode, ENGINE};
use aver_tests::{cargo_bin, require_swtpm};
use aver_verifier::binding::Nonce;
use aver_verifier::error::VerifyError;
use aver_verifier::eventlog::{EventLogError, LogEntry, WorkloadEvent};
use aver_verifier::evidence::{Evidence, EvidenceError};
use aver_verifier::measurement::model_digest;
use aver_verifier::{verify, Challenge, ClockHistory};

/// The PCR the enclave measures into by default.
const WORKLOAD_PCR: u8 = aver_crds::policy::DEFAULT_WORKLOAD_PCR;

/// Test nodes unwrap their set-up: a failure there is a broken test rig.
trait Node {
    fn evidence_ok(&self, nonce: &Nonce) -> (Evidence, Sha256Digest);
    fn policy_ok(&self) -> AttestationPolicy;
    fn ak(&self) -> String;
}

impl Node for TestNode {
    fn evidence_ok(&self, nonce: &Nonce) -> (Evidence, Sha256Digest) {
        self.evidence(nonce).expect("aver-enclave evidence")
    }
    fn policy_ok(&self) -> AttestationPolicy {
        self.policy().expect("policy")
    }
    fn ak(&self) -> String {
        self.ak_name().expect("AK name")
    }
}

fn start_node() -> TestNode {
    TestNode::start().expect("test node starts")
}

fn challenge(nonce: Nonce, spki: Sha256Digest) -> Challenge {
    Challenge {
        nonce,
        spki_sha256: spki,
    }
}

#[test]
fn genuine_evidence_verifies_and_reports_measurements() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let report = verify(
        &evidence,
        &challenge(nonce, spki),
        &aver_tests::checked(&policy),
    )
    .expect("genuine evidence verifies");
    assert_eq!(report.ak_name(), node.ak());
    assert_eq!(
        report.launch().model(),
        model_digest(node.model.path()).unwrap()
    );
    assert_eq!(
        report.launch().engine().map(|e| e.to_string()).as_deref(),
        Some(ENGINE)
    );
    assert_eq!(report.launch().tls_spki(), spki);
    assert_eq!(report.launches_since_boot(), 1);
    assert_eq!(report.boot_pcrs().len(), 8);
}

#[test]
fn replayed_evidence_fails_freshness() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let old = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&old);
    let fresh = Nonce::random();

    // Replayed as is: the nonce is not the one this verifier sent.
    assert!(matches!(
        verify(
            &evidence,
            &challenge(fresh, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::NonceMismatch { .. })
    ));
    // Replayed with the nonce field rewritten: the quote still answers the old one.
    let mut rewritten = evidence.clone();
    rewritten.nonce = fresh;
    assert_eq!(
        verify(
            &rewritten,
            &challenge(fresh, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::QualifyingDataMismatch)
    );
}

#[test]
fn evidence_for_another_tls_key_fails_channel_binding() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let mitm = Sha256Digest([0x66; 32]);

    assert!(matches!(
        verify(
            &evidence,
            &challenge(nonce, mitm),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::SpkiMismatch { .. })
    ));
    let mut relabelled = evidence.clone();
    relabelled.spki_sha256 = mitm;
    assert_eq!(
        verify(
            &relabelled,
            &challenge(nonce, mitm),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::QualifyingDataMismatch)
    );
    assert_ne!(spki, mitm);
}

#[test]
fn edited_pcr_value_fails_the_quote_digest() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    let (mut evidence, spki) = node.evidence_ok(&nonce);
    let boot = evidence.pcrs.iter_mut().find(|p| p.pcr == 0).unwrap();
    boot.value = Sha256Digest([0x01; 32]);
    assert_eq!(
        verify(
            &evidence,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::PcrDigestMismatch)
    );
    // Dropping a quoted PCR from the list is caught before the digest.
    let (mut evidence, spki) = node.evidence_ok(&nonce);
    evidence.pcrs.retain(|p| p.pcr != 3);
    assert!(matches!(
        verify(
            &evidence,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::PcrSetMismatch(_))
    ));
}

#[test]
fn boot_pcr_outside_the_reference_values_is_refused() {
    require_swtpm!();
    let node = start_node();
    let mut policy = node.policy_ok();
    policy.reference_pcrs[2].values = vec![Sha256Digest([0xbb; 32])];
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    assert_eq!(
        verify(
            &evidence,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::BootPcrMismatch {
            pcr: 2,
            value: Sha256Digest([0; 32])
        })
    );
}

#[test]
fn added_removed_or_edited_events_are_each_named() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let ch = challenge(nonce, spki);

    let mut added = evidence.clone();
    added.event_log.push(LogEntry {
        pcr: WORKLOAD_PCR,
        event: WorkloadEvent::Model {
            digest: Sha256Digest([9; 32]),
        },
    });
    assert!(matches!(
        verify(&added, &ch, &aver_tests::checked(&policy)),
        Err(VerifyError::EventLog(
            EventLogError::OutsideLaunchSequence { index: 5, .. }
        ))
    ));

    let mut removed = evidence.clone();
    removed.event_log.pop();
    assert_eq!(
        verify(&removed, &ch, &aver_tests::checked(&policy)),
        Err(VerifyError::EventLog(EventLogError::IncompleteLaunch {
            present: 4
        }))
    );

    let mut edited = evidence.clone();
    edited.event_log[3].event = WorkloadEvent::ServingConfig {
        digest: Sha256Digest([7; 32]),
    };
    assert!(matches!(
        verify(&edited, &ch, &aver_tests::checked(&policy)),
        Err(VerifyError::EventLog(EventLogError::ReplayMismatch {
            pcr: WORKLOAD_PCR,
            ..
        }))
    ));

    // A whole fabricated launch appended: well-formed but not what the TPM saw.
    let mut fabricated = evidence.clone();
    let copy: Vec<LogEntry> = evidence.event_log.clone();
    fabricated.event_log.extend(copy);
    assert!(matches!(
        verify(&fabricated, &ch, &aver_tests::checked(&policy)),
        Err(VerifyError::EventLog(EventLogError::ReplayMismatch { .. }))
    ));
}

#[test]
fn extend_by_anyone_else_fails_closed() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    node.evidence_ok(&nonce);
    // Something other than the enclave extends the workload PCR.
    let status = Command::new("tpm2_pcrextend")
        .arg(format!("{WORKLOAD_PCR}:sha256={}", "ab".repeat(32)))
        .env("TPM2TOOLS_TCTI", node.tpm.tcti())
        .status()
        .expect("tpm2_pcrextend runs");
    assert!(status.success());
    // The next quote covers the foreign extend, which no log entry explains.
    // (The enclave is not relaunched: quote through a fresh evidence run
    // would append a launch, so replay the mismatch on a new launch too.)
    let (evidence, spki) = node.evidence_ok(&nonce);
    assert!(matches!(
        verify(
            &evidence,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::EventLog(EventLogError::ReplayMismatch {
            pcr: WORKLOAD_PCR,
            ..
        }))
    ));
}

#[test]
fn quote_from_another_ak_is_refused() {
    require_swtpm!();
    let a = start_node();
    let b = start_node();
    let model = model_digest(a.model.path()).unwrap();
    let nonce = Nonce::random();
    let (from_a, spki) = a.evidence_ok(&nonce);
    let (from_b, spki_b) = b.evidence_ok(&nonce);

    // B's AK presented with A's quote: the signature does not verify.
    let both = policy_for(&[a.ak(), b.ak()], model);
    let mut swapped = from_a.clone();
    swapped.ak_public = from_b.ak_public.clone();
    assert!(matches!(
        verify(
            &swapped,
            &challenge(nonce, spki),
            &aver_tests::checked(&both)
        ),
        Err(VerifyError::BadSignature { .. })
    ));
    // B's quote and signature under A's AK.
    let mut foreign = from_a.clone();
    foreign.quote = from_b.quote.clone();
    assert!(matches!(
        verify(
            &foreign,
            &challenge(nonce, spki),
            &aver_tests::checked(&both)
        ),
        Err(VerifyError::BadSignature { .. })
    ));
    // All of B, against a policy that trusts only A.
    let only_a = policy_for(&[a.ak()], model);
    assert!(matches!(
        verify(
            &from_b,
            &challenge(nonce, spki_b),
            &aver_tests::checked(&only_a)
        ),
        Err(VerifyError::UntrustedAk { .. })
    ));
}

#[test]
fn unknown_version_truncation_and_garbage_are_typed_errors() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let json = evidence.to_json();

    let text = String::from_utf8(json.clone()).unwrap();
    let v9 = text.replacen("\"version\": 1", "\"version\": 9", 1);
    assert_eq!(
        Evidence::from_json(v9.as_bytes()),
        Err(EvidenceError::UnsupportedVersion { found: 9 })
    );
    let mut in_memory = evidence.clone();
    in_memory.version = 3;
    assert!(matches!(
        verify(
            &in_memory,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::Evidence(EvidenceError::UnsupportedVersion {
            found: 3
        }))
    ));
    // Relabelled as node-measured, it still carries the enclave's log.
    in_memory.version = 2;
    assert!(matches!(
        verify(
            &in_memory,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::Evidence(EvidenceError::Malformed(_)))
    ));

    for len in [0, 1, json.len() / 3, json.len() / 2, json.len() - 2] {
        assert!(matches!(
            Evidence::from_json(&json[..len]),
            Err(EvidenceError::Malformed(_))
        ));
    }
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(matches!(
        Evidence::from_json(&garbage),
        Err(EvidenceError::Malformed(_))
    ));

    // Inner TPM structures truncated: a typed parse error, not a panic.
    let mut short_quote = evidence.clone();
    short_quote.quote.attest.0.truncate(20);
    assert!(matches!(
        verify(
            &short_quote,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::BadSignature { .. }) | Err(VerifyError::Tpm { .. })
    ));
    let mut short_ak = evidence.clone();
    short_ak.ak_public.0.truncate(10);
    assert!(matches!(
        verify(
            &short_ak,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::Tpm {
            part: "AK public area",
            ..
        })
    ));
    let mut short_sig = evidence;
    short_sig.quote.signature.0.truncate(7);
    assert!(matches!(
        verify(
            &short_sig,
            &challenge(nonce, spki),
            &aver_tests::checked(&policy)
        ),
        Err(VerifyError::Tpm {
            part: "quote signature",
            ..
        })
    ));
}

#[test]
fn one_changed_model_byte_is_refused_with_the_digest_named() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let weights = node.model.path().join("weights.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let tampered = model_digest(node.model.path()).unwrap();

    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let err = verify(
        &evidence,
        &challenge(nonce, spki),
        &aver_tests::checked(&policy),
    )
    .unwrap_err();
    assert_eq!(err, VerifyError::ModelNotAllowed(tampered));
    assert!(err.to_string().contains(&tampered.to_string()), "{err}");
}

#[test]
fn restart_without_tpm_reset_still_verifies() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let first = Nonce::random();
    let (_, first_spki) = node.evidence_ok(&first);
    // A second process on the same TPM and state dir: a new launch sequence
    // with a new TLS key; the log keeps both and replays.
    let second = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&second);
    assert_ne!(first_spki, spki);
    let report = verify(
        &evidence,
        &challenge(second, spki),
        &aver_tests::checked(&policy),
    )
    .expect("relaunch verifies");
    assert_eq!(report.launches_since_boot(), 2);
    // The earlier launch's key is no longer the latest: evidence claiming it fails.
    let mut stale = evidence.clone();
    stale.spki_sha256 = first_spki;
    assert!(verify(
        &stale,
        &challenge(second, first_spki),
        &aver_tests::checked(&policy)
    )
    .is_err());
}

#[test]
fn tpm_clock_going_backwards_is_refused() {
    require_swtpm!();
    let node = start_node();
    let policy = node.policy_ok();
    let n1 = Nonce::random();
    let (e1, s1) = node.evidence_ok(&n1);
    let n2 = Nonce::random();
    let (e2, s2) = node.evidence_ok(&n2);
    let older = verify(&e1, &challenge(n1, s1), &aver_tests::checked(&policy)).unwrap();
    let newer = verify(&e2, &challenge(n2, s2), &aver_tests::checked(&policy)).unwrap();

    let mut history = ClockHistory::new();
    history.observe(&newer).unwrap();
    assert!(matches!(
        history.observe(&older),
        Err(VerifyError::ClockRegression { .. })
    ));
    // In order, both are accepted.
    let mut in_order = ClockHistory::new();
    in_order.observe(&older).unwrap();
    in_order.observe(&newer).unwrap();
}

/// The CLI wraps the library with the right exit codes and messages.
#[test]
fn cli_verifies_offline_and_writes_a_tofu_policy() {
    require_swtpm!();
    let node = start_node();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, node.policy_ok().to_yaml()).unwrap();
    let nonce = Nonce::random();
    let (evidence, spki) = node.evidence_ok(&nonce);
    let evidence_path = dir.path().join("evidence.json");
    std::fs::write(&evidence_path, evidence.to_json()).unwrap();

    let run = |policy: &Path, nonce: &Nonce, spki: &Sha256Digest| {
        Command::new(cargo_bin("aver"))
            .arg("verify-evidence")
            .arg(&evidence_path)
            .arg("--policy")
            .arg(policy)
            .args(["--nonce", &nonce.to_hex(), "--spki", &spki.to_string()])
            .output()
            .unwrap()
    };
    let ok = run(&policy_path, &nonce, &spki);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&spki.to_string()));

    let replay = run(&policy_path, &Nonce::random(), &spki);
    assert_eq!(replay.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("nonce"), "{stderr}");

    let missing = run(&dir.path().join("absent.yaml"), &nonce, &spki);
    assert_eq!(missing.status.code(), Some(2));

    // TOFU policy from the evidence verifies that same evidence.
    let tofu: PathBuf = dir.path().join("tofu.yaml");
    let init = Command::new(cargo_bin("aver"))
        .args(["policy", "init", "--from-evidence"])
        .arg(&evidence_path)
        .arg("--out")
        .arg(&tofu)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stderr).contains("WARNING"));
    let tofu_ok = run(&tofu, &nonce, &spki);
    assert_eq!(
        tofu_ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&tofu_ok.stderr)
    );
}
