//! The verification procedure: raw [`Evidence`] in, [`VerifiedReport`] out.

use aver_crds::{AttestationPolicy, Sha256Digest};
use sha2::{Digest, Sha256};

use crate::binding::{self, Nonce};
use crate::ek::activation::unix_now;
use crate::ek::chain::roots_sha256;
use crate::ek::ActivatedAk;
use crate::error::VerifyError;
use crate::eventlog::{self, LAUNCH_SEQUENCE_LEN};
use crate::evidence::{Evidence, EvidenceError, EVIDENCE_VERSION};
use crate::report::{CheckedPcr, QuoteClock, VerifiedReport};
use crate::tpm::{AkPublic, Attest, Signature};

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
    policy: &AttestationPolicy,
) -> Result<VerifiedReport, VerifyError> {
    verify_activated(evidence, challenge, policy, None)
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
    policy: &AttestationPolicy,
    activated: Option<&ActivatedAk>,
) -> Result<VerifiedReport, VerifyError> {
    policy.validate()?;
    if evidence.version != EVIDENCE_VERSION {
        return Err(EvidenceError::UnsupportedVersion {
            found: u64::from(evidence.version),
        }
        .into());
    }
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

    // Platform: a trusted, restricted AK signed exactly these quote bytes.
    let ak = AkPublic::parse(&evidence.ak_public.0).map_err(|source| VerifyError::Tpm {
        part: "AK public area",
        source,
    })?;
    let ak_name = ak.name_hex();
    if !ak.is_attestation_key() {
        return Err(VerifyError::NotAnAttestationKey { name: ak_name });
    }
    let listed = policy
        .trust
        .ak_names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&ak_name));
    let activation = match activated {
        None => None,
        Some(proof) if !proof.ak_name.eq_ignore_ascii_case(&ak_name) => {
            return Err(VerifyError::ActivatedAkMismatch {
                activated: proof.ak_name.clone(),
                quoted: ak_name,
            });
        }
        // A proof under other roots (or expired) proves nothing here.
        Some(proof) => policy
            .trust
            .ek_roots
            .as_deref()
            .filter(|roots| proof.vouches_for(&ak_name, &roots_sha256(roots), unix_now()))
            .map(|_| proof.clone()),
    };
    if !listed && activation.is_none() {
        return Err(if policy.trust.ek_roots.is_some() {
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
    let attest = Attest::parse(&evidence.quote.attest.0).map_err(|source| VerifyError::Tpm {
        part: "quote",
        source,
    })?;

    // Freshness and channel binding.
    let expected_qd = binding::qualifying_data(
        &challenge.nonce,
        &challenge.spki_sha256,
        evidence.batch.as_ref(),
    );
    if expected_qd.as_ref().map(<[u8; 32]>::as_slice) != Some(attest.extra_data.as_slice()) {
        return Err(VerifyError::QualifyingDataMismatch);
    }

    // PCR values are exactly the quoted ones.
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
    let mut h = Sha256::new();
    for p in &evidence.pcrs {
        h.update(p.value.as_bytes());
    }
    if h.finalize().as_slice() != attest.pcr_digest.as_slice() {
        return Err(VerifyError::PcrDigestMismatch);
    }
    let value_of = |pcr: u8| {
        evidence
            .pcrs
            .iter()
            .find(|p| p.pcr == pcr)
            .map(|p| p.value)
            .ok_or(VerifyError::PcrNotQuoted(pcr))
    };

    // Boot chain.
    let mut boot_pcrs = Vec::with_capacity(policy.reference_pcrs.len());
    for reference in &policy.reference_pcrs {
        let value = value_of(reference.pcr)?;
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

    // Code identity: the log replays to the quoted workload PCR and its
    // latest launch is the server holding this TLS key, running allowed code.
    let workload_value = value_of(policy.workload_pcr)?;
    let launch =
        eventlog::latest_launch(&evidence.event_log, policy.workload_pcr, &workload_value)?;
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
        workload_pcr: CheckedPcr {
            pcr: policy.workload_pcr,
            value: workload_value,
        },
        launches_since_boot: evidence.event_log.len() / LAUNCH_SEQUENCE_LEN,
        launch,
        batched: evidence.batch.is_some(),
        activation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ek::{EkCertificateInfo, EkKind};

    const EVIDENCE: &[u8] = include_bytes!("../testdata/evidence-swtpm.json");
    const POLICY: &str = include_str!("../testdata/policy-swtpm.yaml");
    const ROOTS: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

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
            ak_name: ak_name.to_owned(),
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
            activated_at: "2026-01-01T00:00:00Z".into(),
            valid_until,
        }
    }

    #[test]
    fn with_ek_roots_only_an_activated_ak_is_trusted() {
        let (evidence, challenge, policy, ak_name) = fixture();
        assert_eq!(
            verify(&evidence, &challenge, &policy),
            Err(VerifyError::AkNotProven {
                name: ak_name.clone()
            })
        );
        let activated = proof(&ak_name, ROOTS, i64::MAX);
        let report = verify_activated(&evidence, &challenge, &policy, Some(&activated)).unwrap();
        assert_eq!(report.activation, Some(activated));
        assert!(report.to_text().contains("ak residency      activated"));
    }

    #[test]
    fn a_proof_for_other_roots_an_expired_one_or_another_ak_is_not_enough() {
        let (evidence, challenge, policy, ak_name) = fixture();
        let other_roots = proof(&ak_name, "other roots", i64::MAX);
        assert!(matches!(
            verify_activated(&evidence, &challenge, &policy, Some(&other_roots)),
            Err(VerifyError::AkNotProven { .. })
        ));
        let expired = proof(&ak_name, ROOTS, 0);
        assert!(matches!(
            verify_activated(&evidence, &challenge, &policy, Some(&expired)),
            Err(VerifyError::AkNotProven { .. })
        ));
        let other_ak = proof(&format!("000b{}", "00".repeat(32)), ROOTS, i64::MAX);
        let error = verify_activated(&evidence, &challenge, &policy, Some(&other_ak)).unwrap_err();
        assert!(matches!(error, VerifyError::ActivatedAkMismatch { .. }));
        assert_eq!(error.reason(), "activation");
    }

    #[test]
    fn a_listed_ak_needs_no_activation() {
        let (evidence, challenge, mut policy, ak_name) = fixture();
        policy.trust.ak_names = vec![ak_name];
        let report = verify(&evidence, &challenge, &policy).unwrap();
        assert_eq!(report.activation, None);
        assert!(report
            .to_text()
            .contains("ak trust          listed in trust.akNames"));
    }
}
