//! The verification procedure: raw [`Evidence`] in, [`VerifiedReport`] out.

use aver_crds::{AkName, AllowedPod, Sha256Digest};
use aver_node_log::{ContainerSpec, NodeHistory};

use crate::binding::{self, Nonce};
use crate::ek::activation::unix_now;
use crate::ek::chain::{validate_ak_certificate, AkCertificateInfo, EkChainError, TrustAnchors};
use crate::ek::ActivatedAk;
use crate::error::VerifyError;
use crate::eventlog::{self, LAUNCH_SEQUENCE_LEN};
use crate::evidence::{Evidence, EVIDENCE_VERSION_ENCLAVE, EVIDENCE_VERSION_NODE};
use crate::platform::{self, PlatformReport};
use crate::policy::ValidatedPolicy;
use crate::report::{
    CheckedPcr, MeasuredBy, MeasuredContainer, QuoteClock, VerifiedLaunch, VerifiedNode,
    VerifiedReport,
};
use crate::tpm::{self, alg, AkPublic, Attest, Signature};

/// What the verifier itself knows, independent of anything the server says:
/// the nonce it sent and the TLS key it is talking to.
#[derive(Debug, Clone, Copy)]
pub struct Challenge {
    pub nonce: Nonce,
    pub spki_sha256: Sha256Digest,
}

/// Verifies evidence against the verifier's own challenge and a policy.
///
/// Order matters only for which error is reported; every check must pass.
/// The nonce and TLS key checked against the quote are the challenge's, never
/// the evidence's own claims, so a server cannot choose what it is bound to.
pub fn verify(
    evidence: &Evidence,
    challenge: &Challenge,
    policy: &ValidatedPolicy,
) -> Result<VerifiedReport, VerifyError> {
    verify_activated(evidence, challenge, policy, None)
}

/// What a caller may bring to a verification besides evidence, challenge
/// and policy. Neither field can make evidence pass that would fail without it.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// Proof that an AK is resident in a genuine TPM; see [`verify_activated`].
    pub activated: Option<&'a ActivatedAk>,
    /// The expected canonical specs of the pod's containers, by name (as
    /// `aver policy from-model` renders them), when the caller has them.
    /// Used only to say what differs when a container's spec digest is not
    /// allowed ("args …, env HTTPS_PROXY added"); the decision is always
    /// the policy's `specDigests`.
    pub reference_specs: &'a [(String, ContainerSpec)],
}

/// [`verify`], with proof that an AK is resident in a genuine TPM.
///
/// The AK that signed the quote is trusted if `trust.akNames` lists it, or
/// if `activated` proves it was activated against an EK certificate
/// chaining to exactly this policy's `trust.ekRoots` (and the proof has not
/// expired). An `activated` proof for another AK or other roots is an
/// error, not ignored: the caller activated for this endpoint and must not
/// silently get a weaker result.
pub fn verify_activated(
    evidence: &Evidence,
    challenge: &Challenge,
    policy: &ValidatedPolicy,
    activated: Option<&ActivatedAk>,
) -> Result<VerifiedReport, VerifyError> {
    let options = VerifyOptions {
        activated,
        ..VerifyOptions::default()
    };
    verify_with(evidence, challenge, policy, &options)
}

/// [`verify_activated`], with every option.
///
/// What the workload PCR must prove depends on the policy's mode. With
/// `allowed.pod` the evidence must be node-measured (v2): its node log
/// replays to the quoted PCR, everything in it passes the node policy it
/// records, exactly one `tls-key` event binds this connection's key to a
/// confidential pod, that pod ran exactly the allowed containers, and the
/// model its enclave measured is allowed. Without it the evidence must be
/// enclave-reported (v1), whose latest launch sequence must carry this key
/// and allowed digests.
pub fn verify_with(
    evidence: &Evidence,
    challenge: &Challenge,
    policy: &ValidatedPolicy,
    options: &VerifyOptions<'_>,
) -> Result<VerifiedReport, VerifyError> {
    let activated = options.activated;
    evidence.check_shape()?;
    if evidence.nonce != challenge.nonce {
        return Err(VerifyError::NonceMismatch {
            found: evidence.nonce.to_hex(),
        });
    }
    if evidence.spki_sha256 != challenge.spki_sha256 {
        return Err(VerifyError::SpkiMismatch {
            expected: challenge.spki_sha256,
            found: evidence.spki_sha256,
        });
    }

    let expected_qd = binding::qualifying_data(
        &challenge.nonce,
        &challenge.spki_sha256,
        evidence.batch.as_ref(),
    );
    let PlatformStage {
        ak_name,
        ak_certificate,
        sha1,
        attest,
        activation,
        boot_pcrs,
        platform,
    } = verify_platform_stage(evidence, policy, activated, expected_qd)?;
    if let Some(foreign) = platform::foreign_extend(evidence, policy.workload_pcr) {
        return Err(foreign.into());
    }

    // Code identity: the log replays to the quoted workload PCR and binds
    // this TLS key to allowed code.
    let workload_value = pcr_value(evidence, policy.workload_pcr)?;
    let workload = match &policy.allowed.pod {
        Some(pod) => node_measured(
            evidence,
            challenge,
            policy,
            pod,
            &workload_value,
            options.reference_specs,
        )?,
        None => enclave_reported(evidence, challenge, policy, &workload_value)?,
    };

    Ok(VerifiedReport {
        ak_name,
        nonce: challenge.nonce,
        spki_sha256: challenge.spki_sha256,
        clock: QuoteClock {
            clock_ms: attest.clock_info.clock,
            reset_count: attest.clock_info.reset_count,
            restart_count: attest.clock_info.restart_count,
            firmware_version: attest.firmware_version,
        },
        boot_pcrs,
        platform,
        workload_pcr: CheckedPcr {
            pcr: policy.workload_pcr,
            value: workload_value,
        },
        launches_since_boot: workload.launches_since_boot,
        evidence_version: evidence.version,
        measured_by: workload.measured_by,
        launch: workload.launch,
        batched: evidence.batch.is_some(),
        activation,
        ak_certificate,
        weak_hash: sha1,
    })
}

/// Verifies a node's platform alone — its AK, its boot chain and what it
/// ran since boot — from a quote whose qualifying data is `nonce` itself
/// (what `aver-node quote --qualifying-data NONCE` produces), for checking
/// a node image before it runs workloads. The workload PCR is not checked
/// beyond a boot event that extended it; `policy.allowed` is not used.
pub fn verify_node(
    evidence: &Evidence,
    nonce: &Nonce,
    policy: &ValidatedPolicy,
) -> Result<VerifiedNode, VerifyError> {
    evidence.check_shape()?;
    if evidence.nonce != *nonce {
        return Err(VerifyError::NonceMismatch {
            found: evidence.nonce.to_hex(),
        });
    }
    let stage = verify_platform_stage(evidence, policy, None, Some(nonce.0))?;
    if let Some(foreign) = platform::foreign_extend(evidence, policy.workload_pcr) {
        return Err(foreign.into());
    }
    Ok(VerifiedNode {
        ak_name: stage.ak_name,
        nonce: *nonce,
        clock: QuoteClock {
            clock_ms: stage.attest.clock_info.clock,
            reset_count: stage.attest.clock_info.reset_count,
            restart_count: stage.attest.clock_info.restart_count,
            firmware_version: stage.attest.firmware_version,
        },
        boot_pcrs: stage.boot_pcrs,
        platform: stage.platform,
        ak_certificate: stage.ak_certificate,
        weak_hash: stage.sha1,
    })
}

/// The platform stage every verification shares: a trusted, restricted AK
/// signed these quote bytes over `expected_qd`, the PCR values are the
/// quoted ones, the boot PCRs hold reference values, and the boot chain and
/// runtime pass the policy's rules.
fn verify_platform_stage(
    evidence: &Evidence,
    policy: &ValidatedPolicy,
    activated: Option<&ActivatedAk>,
    expected_qd: Option<[u8; 32]>,
) -> Result<PlatformStage, VerifyError> {
    // Platform: a trusted, restricted AK signed exactly these quote bytes.
    let ak = AkPublic::parse(&evidence.ak_public.0).map_err(|source| VerifyError::Tpm {
        part: "AK public area",
        source,
    })?;
    let Ok(name) = AkName::parse(&ak.name_hex()) else {
        return Err(VerifyError::NotAnAttestationKey {
            name: ak.name_hex(),
        });
    };
    let ak_name = name.to_string();
    if !ak.is_attestation_key() {
        return Err(VerifyError::NotAnAttestationKey { name: ak_name });
    }
    let listed = policy.lists_ak(&name);
    let activation = match activated {
        None => None,
        Some(proof) if *proof.ak_name() != name => {
            return Err(VerifyError::ActivatedAkMismatch {
                activated: proof.ak_name().to_string(),
                quoted: ak_name,
            });
        }
        // A proof under other roots (or expired) proves nothing here.
        Some(proof) => policy
            .ek_roots()
            .filter(|roots| proof.vouches_for(&name, &roots.policy_sha256(), unix_now()))
            .map(|_| pinned(proof, &policy.trust.ek_pins))
            .transpose()
            // An AK listed by name needs no proof, pinned or not.
            .or_else(|error| if listed { Ok(None) } else { Err(error) })?,
    };
    let certified = match (policy.ak_roots(), listed || activation.is_some()) {
        (Some(roots), false)
            if evidence.ak_certificate.is_some() || policy.ek_roots().is_none() =>
        {
            Some(certified_ak(evidence, &ak, &ak_name, roots)?)
        }
        _ => None,
    };
    if !listed && activation.is_none() && certified.is_none() {
        return Err(if policy.ek_roots().is_some() {
            VerifyError::AkNotProven { name: ak_name }
        } else {
            VerifyError::UntrustedAk { name: ak_name }
        });
    }
    let signature =
        Signature::parse(&evidence.quote.signature.0).map_err(|source| VerifyError::Tpm {
            part: "quote signature",
            source,
        })?;
    if !signature.verifies(&ak.key, &evidence.quote.attest.0) {
        return Err(VerifyError::BadSignature { name: ak_name });
    }
    // SHA-1 (the quote's signing hash, or the AK's nameAlg, which its name
    // and so its trust rest on) only when the policy accepts it.
    let sha1_uses: Vec<&'static str> = [
        (signature.hash_alg() == alg::SHA1, "quote signature hash"),
        (ak.name_alg == alg::SHA1, "attestation key nameAlg"),
    ]
    .into_iter()
    .filter_map(|(sha1, what)| sha1.then_some(what))
    .collect();
    if let Some(what) = sha1_uses.first() {
        if !policy.trust.allow_sha1 {
            return Err(VerifyError::Sha1NotAllowed { what });
        }
    }
    let attest = Attest::parse(&evidence.quote.attest.0).map_err(|source| VerifyError::Tpm {
        part: "quote",
        source,
    })?;

    // Freshness and channel binding.
    if expected_qd.as_ref().map(<[u8; 32]>::as_slice) != Some(attest.extra_data.as_slice()) {
        return Err(VerifyError::QualifyingDataMismatch);
    }

    // PCR values are exactly the quoted ones: evidence carries the sha256
    // bank, whatever hash the AK signs with.
    let quoted = attest.sha256_pcrs().map_err(|source| VerifyError::Tpm {
        part: "quote PCR selection",
        source,
    })?;
    let listed: Vec<u8> = evidence.pcrs.iter().map(|p| p.pcr).collect();
    if listed != quoted {
        return Err(VerifyError::PcrSetMismatch(format!(
            "quote covers PCRs {quoted:?}, evidence lists {listed:?}"
        )));
    }
    // TPM2_Quote hashes the selected PCR values with the signing scheme's
    // hash (a SHA-384 AK quoting the sha256 bank makes a SHA-384 pcrDigest).
    let concatenated: Vec<u8> = evidence
        .pcrs
        .iter()
        .flat_map(|p| p.value.as_bytes().iter().copied())
        .collect();
    if tpm::digest(signature.hash_alg(), &concatenated).as_deref()
        != Some(attest.pcr_digest.as_slice())
    {
        return Err(VerifyError::PcrDigestMismatch);
    }

    // Boot chain.
    let mut boot_pcrs = Vec::with_capacity(policy.reference_pcrs.len());
    for reference in &policy.reference_pcrs {
        let value = pcr_value(evidence, reference.pcr)?;
        if !reference.values.contains(&value) {
            return Err(VerifyError::BootPcrMismatch {
                pcr: reference.pcr,
                value,
            });
        }
        boot_pcrs.push(CheckedPcr {
            pcr: reference.pcr,
            value,
        });
    }

    // The node: its boot chain and what ran since boot, by meaning.
    let quoted_values = evidence.pcrs.iter().map(|p| (p.pcr, p.value.0)).collect();
    let platform = platform::verify_platform(
        evidence,
        &quoted_values,
        policy.boot.as_ref(),
        policy.runtime.as_ref(),
    )?;

    Ok(PlatformStage {
        ak_name,
        ak_certificate: certified,
        sha1: !sha1_uses.is_empty(),
        attest,
        activation,
        boot_pcrs,
        platform,
    })
}

/// `proof`, if `pins` is empty (any TPM of the `ekRoots` vendors) or lists
/// its EK (the operator's own nodes), with the pin it matched.
fn pinned(proof: &ActivatedAk, pins: &[Sha256Digest]) -> Result<ActivatedAk, VerifyError> {
    let mut proof = proof.clone();
    if pins.is_empty() {
        proof.pinned_by = None;
        return Ok(proof);
    }
    match proof.ek_pin.is_pinned(pins) {
        Some(pin) => {
            proof.pinned_by = Some(pin);
            Ok(proof)
        }
        None => Err(VerifyError::EkNotPinned {
            name: proof.ak_name.to_string(),
            certificate: proof.ek_pin.certificate_sha256,
            public_key: proof.ek_pin.public_key_sha256,
        }),
    }
}

/// The AK certificate of `evidence`, if it chains to `roots`
/// (`trust.akRoots`) and certifies exactly the quoting AK's key.
fn certified_ak(
    evidence: &Evidence,
    ak: &AkPublic,
    ak_name: &str,
    anchors: &TrustAnchors,
) -> Result<AkCertificateInfo, VerifyError> {
    let invalid = |source: EkChainError| match source {
        EkChainError::UntrustedIssuer { issuer, .. } => VerifyError::AkCertificateUntrusted {
            name: ak_name.to_owned(),
            issuer,
        },
        source => VerifyError::AkCertificateInvalid {
            name: ak_name.to_owned(),
            source,
        },
    };
    let Some(certificate) = &evidence.ak_certificate else {
        return Err(VerifyError::NoAkCertificate {
            name: ak_name.to_owned(),
        });
    };
    let chain: Vec<Vec<u8>> = evidence.ak_chain.iter().map(|c| c.0.clone()).collect();
    let validated =
        validate_ak_certificate(&certificate.0, &chain, anchors, unix_now()).map_err(invalid)?;
    if !ak.key.matches_spki(&validated.subject_public_key_info) {
        return Err(VerifyError::AkCertificateKeyMismatch {
            name: ak_name.to_owned(),
            subject: validated.info.subject,
            issuer: validated.info.issuer,
        });
    }
    Ok(validated.info)
}

/// What the platform stage established.
struct PlatformStage {
    ak_name: String,
    /// The AK certificate that made the AK trusted (`trust.akRoots`).
    ak_certificate: Option<AkCertificateInfo>,
    /// The quote or the AK's name relied on SHA-1 (`trust.allowSha1`).
    sha1: bool,
    attest: Attest,
    activation: Option<ActivatedAk>,
    boot_pcrs: Vec<CheckedPcr>,
    platform: Option<PlatformReport>,
}

/// The quoted value of `pcr`.
fn pcr_value(evidence: &Evidence, pcr: u8) -> Result<Sha256Digest, VerifyError> {
    evidence
        .pcrs
        .iter()
        .find(|p| p.pcr == pcr)
        .map(|p| p.value)
        .ok_or(VerifyError::PcrNotQuoted(pcr))
}

/// What the workload PCR proved, in either mode.
struct Workload {
    measured_by: MeasuredBy,
    launch: VerifiedLaunch,
    launches_since_boot: usize,
}

/// Node-measured evidence (v2) against `allowed.pod`.
fn node_measured(
    evidence: &Evidence,
    challenge: &Challenge,
    policy: &ValidatedPolicy,
    pod: &AllowedPod,
    workload_value: &Sha256Digest,
    reference_specs: &[(String, ContainerSpec)],
) -> Result<Workload, VerifyError> {
    if evidence.version != EVIDENCE_VERSION_NODE {
        return Err(VerifyError::NodeEvidenceRequired {
            found: evidence.version,
        });
    }
    let history = NodeHistory::from_log(
        &evidence.node_log,
        policy.workload_pcr,
        workload_value,
        policy.allowed.node_policies.as_deref(),
    )?;
    let bound = history.key_holder(&challenge.spki_sha256)?;
    bound.check(pod, reference_specs)?;
    let model = bound.key.model_digest;
    if !policy.allowed.model_digests.contains(&model) {
        return Err(VerifyError::ModelNotAllowed(model));
    }
    let sandbox = &bound.sandbox.info;
    Ok(Workload {
        measured_by: MeasuredBy::Node {
            pod: sandbox.pod.to_string(),
            pod_uid: sandbox.pod.uid.clone(),
            // `check` refused a pod without the label.
            confidential_model: sandbox.confidential_model.clone().unwrap_or_default(),
            containers: bound
                .containers
                .iter()
                .map(|c| MeasuredContainer {
                    name: c.name.clone(),
                    image: c.image.shown(),
                    image_id: c.image.id,
                    spec_digest: c.spec_digest,
                    attempt: c.attempt,
                })
                .collect(),
            agent_starts: history.agent_starts,
            node_policies: history.policies.clone(),
        },
        launch: VerifiedLaunch {
            model,
            tls_spki: bound.key.spki_sha256,
            engine: None,
            serving_config: None,
        },
        launches_since_boot: history.keys.len(),
    })
}

/// Enclave-reported evidence (v1) against `allowed.engineDigests`: the
/// latest launch is the server holding this TLS key, running allowed code.
fn enclave_reported(
    evidence: &Evidence,
    challenge: &Challenge,
    policy: &ValidatedPolicy,
    workload_value: &Sha256Digest,
) -> Result<Workload, VerifyError> {
    if evidence.version != EVIDENCE_VERSION_ENCLAVE {
        return Err(VerifyError::EnclaveEvidenceRequired {
            found: evidence.version,
        });
    }
    let launch = eventlog::latest_launch(&evidence.event_log, policy.workload_pcr, workload_value)?;
    if launch.tls_spki != challenge.spki_sha256 {
        return Err(VerifyError::LaunchSpkiMismatch {
            measured: launch.tls_spki,
            bound: challenge.spki_sha256,
        });
    }
    let allowed = &policy.allowed;
    if !allowed.engine_digests.contains(&launch.engine) {
        return Err(VerifyError::EngineNotAllowed(launch.engine));
    }
    if !allowed.model_digests.contains(&launch.model) {
        return Err(VerifyError::ModelNotAllowed(launch.model));
    }
    if let Some(configs) = &allowed.config_digests {
        if !configs.contains(&launch.serving_config) {
            return Err(VerifyError::ConfigNotAllowed(launch.serving_config));
        }
    }
    Ok(Workload {
        measured_by: MeasuredBy::Enclave {
            enclave_version: launch.enclave_version,
            enclave_digest: launch.enclave_digest,
        },
        launch: VerifiedLaunch {
            model: launch.model,
            tls_spki: launch.tls_spki,
            engine: Some(launch.engine),
            serving_config: Some(launch.serving_config),
        },
        launches_since_boot: evidence.event_log.len() / LAUNCH_SEQUENCE_LEN,
    })
}

#[cfg(test)]
mod tests {
    use aver_crds::AttestationPolicy;

    use super::*;
    use crate::ek::chain::roots_sha256;
    use crate::ek::{EkCertificateInfo, EkKind, EkPin};

    const EVIDENCE: &[u8] = include_bytes!("../testdata/evidence-swtpm.json");
    const POLICY: &str = include_str!("../testdata/policy-swtpm.yaml");
    /// A CA certificate standing in for a TPM manufacturer's root: these
    /// tests bring the activation proof themselves.
    const ROOTS: &str = include_str!("../testdata/test-root-ca.pem");

    /// The policy as verification takes it; each test edits the written
    /// policy and validates it again.
    fn checked(policy: &AttestationPolicy) -> ValidatedPolicy {
        ValidatedPolicy::new(policy.clone()).unwrap()
    }

    /// Captured swtpm evidence and a policy that trusts AKs only through
    /// (placeholder) EK roots.
    fn fixture() -> (Evidence, Challenge, AttestationPolicy, String) {
        let evidence = Evidence::from_json(EVIDENCE).unwrap();
        let challenge = Challenge {
            nonce: evidence.nonce,
            spki_sha256: evidence.spki_sha256,
        };
        let mut policy = AttestationPolicy::from_yaml(POLICY).unwrap();
        let ak_name = policy.trust.ak_names.remove(0);
        policy.trust.ek_roots = Some(ROOTS.to_owned());
        (evidence, challenge, policy, ak_name)
    }

    fn proof(ak_name: &str, roots: &str, valid_until: i64) -> ActivatedAk {
        ActivatedAk {
            ak_name: AkName::parse(ak_name).unwrap(),
            ek: EkCertificateInfo {
                kind: EkKind::Rsa2048,
                certificate_sha256: Sha256Digest([7; 32]),
                subject: "(empty subject)".into(),
                issuer: "\"CN=Vendor\"".into(),
                serial: "01".into(),
                not_after: "2099-01-01T00:00:00Z".into(),
                tpm: None,
                chain: vec!["\"CN=Vendor\"".into()],
            },
            roots_sha256: roots_sha256(roots),
            ek_pin: EkPin {
                certificate_sha256: Sha256Digest([7; 32]),
                public_key_sha256: Sha256Digest([8; 32]),
            },
            pinned_by: None,
            activated_at: "2026-01-01T00:00:00Z".into(),
            valid_until,
        }
    }

    #[test]
    fn with_ek_roots_only_an_activated_ak_is_trusted() {
        let (evidence, challenge, policy, ak_name) = fixture();
        assert_eq!(
            verify(&evidence, &challenge, &checked(&policy)),
            Err(VerifyError::AkNotProven {
                name: ak_name.clone()
            })
        );
        let activated = proof(&ak_name, ROOTS, i64::MAX);
        let report =
            verify_activated(&evidence, &challenge, &checked(&policy), Some(&activated)).unwrap();
        assert_eq!(report.activation, Some(activated));
        assert!(report.to_text().contains("ak residency      activated"));
    }

    #[test]
    fn a_proof_for_other_roots_an_expired_one_or_another_ak_is_not_enough() {
        let (evidence, challenge, policy, ak_name) = fixture();
        let other_roots = proof(&ak_name, "other roots", i64::MAX);
        assert!(matches!(
            verify_activated(&evidence, &challenge, &checked(&policy), Some(&other_roots)),
            Err(VerifyError::AkNotProven { .. })
        ));
        let expired = proof(&ak_name, ROOTS, 0);
        assert!(matches!(
            verify_activated(&evidence, &challenge, &checked(&policy), Some(&expired)),
            Err(VerifyError::AkNotProven { .. })
        ));
        let other_ak = proof(&format!("000b{}", "00".repeat(32)), ROOTS, i64::MAX);
        let error = verify_activated(&evidence, &challenge, &checked(&policy), Some(&other_ak))
            .unwrap_err();
        assert!(matches!(error, VerifyError::ActivatedAkMismatch { .. }));
        assert_eq!(error.reason(), "activation");
    }

    #[test]
    fn with_ek_pins_only_an_enrolled_tpm_is_trusted() {
        let (evidence, challenge, mut policy, ak_name) = fixture();
        let activated = proof(&ak_name, ROOTS, i64::MAX);
        for pin in [Sha256Digest([7; 32]), Sha256Digest([8; 32])] {
            policy.trust.ek_pins = vec![Sha256Digest([9; 32]), pin];
            let report =
                verify_activated(&evidence, &challenge, &checked(&policy), Some(&activated))
                    .unwrap();
            assert_eq!(report.activation.as_ref().unwrap().pinned_by, Some(pin));
            assert!(report
                .to_text()
                .contains(&format!("node pinned       {pin}")));
        }
        policy.trust.ek_pins = vec![Sha256Digest([9; 32])];
        let error = verify_activated(&evidence, &challenge, &checked(&policy), Some(&activated))
            .unwrap_err();
        assert_eq!(
            error,
            VerifyError::EkNotPinned {
                name: ak_name.clone(),
                certificate: Sha256Digest([7; 32]),
                public_key: Sha256Digest([8; 32]),
            }
        );
        let message = error.to_string();
        assert!(
            message.contains(&Sha256Digest([7; 32]).to_string()),
            "{message}"
        );
        assert!(message.contains("aver-node enroll"), "{message}");
        assert_eq!(error.reason(), "untrusted-key");
        // A listed AK is trusted by its name, pins or not.
        policy.trust.ak_names = vec![ak_name];
        assert!(verify(&evidence, &challenge, &checked(&policy)).is_ok());
    }

    #[test]
    fn a_listed_ak_needs_no_activation() {
        let (evidence, challenge, mut policy, ak_name) = fixture();
        policy.trust.ak_names = vec![ak_name];
        let report = verify(&evidence, &challenge, &checked(&policy)).unwrap();
        assert_eq!(report.activation, None);
        assert!(report
            .to_text()
            .contains("ak trust          listed in trust.akNames"));
    }

    /// The fixture's policy in node-measured mode.
    fn pod_policy(policy: &AttestationPolicy) -> ValidatedPolicy {
        let mut policy = policy.clone();
        policy.allowed.engine_digests.clear();
        policy.allowed.config_digests = None;
        policy.allowed.pod = Some(AllowedPod {
            containers: vec![aver_crds::AllowedContainer {
                name: "engine".into(),
                image_digests: vec![Sha256Digest([1; 32])],
                spec_digests: vec![Sha256Digest([2; 32])],
            }],
        });
        checked(&policy)
    }

    #[test]
    fn enclave_reported_evidence_says_it_is_weaker() {
        let (evidence, challenge, mut policy, ak_name) = fixture();
        policy.trust.ak_names = vec![ak_name];
        let report = verify(&evidence, &challenge, &checked(&policy)).unwrap();
        assert_eq!(report.evidence_version, EVIDENCE_VERSION_ENCLAVE);
        assert!(matches!(report.measured_by, MeasuredBy::Enclave { .. }));
        assert!(report.launch.engine.is_some());
        assert_eq!(report.launch.tls_spki, challenge.spki_sha256);
        let text = report.to_text();
        assert!(
            text.contains("measured by       the enclave itself (weaker: proves what the enclave reports, not what the node ran)"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["measuredBy"]["kind"], "enclave");
        assert_eq!(json["evidenceVersion"], 1);
    }

    #[test]
    fn a_pod_policy_refuses_enclave_reported_evidence() {
        let (evidence, challenge, mut policy, ak_name) = fixture();
        policy.trust.ak_names = vec![ak_name];
        let error = verify(&evidence, &challenge, &pod_policy(&policy)).unwrap_err();
        assert_eq!(error, VerifyError::NodeEvidenceRequired { found: 1 });
        assert_eq!(error.reason(), "evidence-mode");
        assert!(error
            .to_string()
            .contains("requires node-measured evidence (version 2, from aver-node)"));
    }

    #[test]
    fn a_legacy_policy_refuses_node_measured_evidence() {
        // The version is not signed, but relabelling does not help: a legacy
        // policy never reads a node log, and a pod policy replays it.
        let (evidence, challenge, mut policy, ak_name) = fixture();
        policy.trust.ak_names = vec![ak_name];
        let mut v2 = evidence.clone();
        v2.version = EVIDENCE_VERSION_NODE;
        v2.event_log.clear();
        v2.node_log = vec![aver_node_log::NodeLogEntry {
            pcr: 15,
            event: aver_node_log::NodeEvent::AgentStart {
                agent_version: "0.1.0".into(),
                policy: "version: 1\n".into(),
            },
        }];
        assert_eq!(
            verify(&v2, &challenge, &checked(&policy)),
            Err(VerifyError::EnclaveEvidenceRequired { found: 2 })
        );
        let error = verify(&v2, &challenge, &pod_policy(&policy)).unwrap_err();
        assert!(
            matches!(
                error,
                VerifyError::NodeLog(aver_node_log::NodeLogError::ReplayMismatch { .. })
            ),
            "{error}"
        );
        assert_eq!(error.reason(), "node-log");
        // Built in code with both logs: refused as malformed before any check.
        v2.event_log = evidence.event_log.clone();
        assert!(matches!(
            verify(&v2, &challenge, &checked(&policy)),
            Err(VerifyError::Evidence(
                crate::evidence::EvidenceError::Malformed(_)
            ))
        ));
    }
}
