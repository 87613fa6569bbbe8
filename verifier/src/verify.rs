//! The verification procedure: raw [`Evidence`] in, [`VerifiedReport`] out.

use aver_crds::{AttestationPolicy, Sha256Digest};
use sha2::{Digest, Sha256};

use crate::binding::{self, Nonce};
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
    if !policy
        .trust
        .ak_names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&ak_name))
    {
        return Err(VerifyError::UntrustedAk { name: ak_name });
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
    })
}
