//! Trust-on-first-use: derive a policy from evidence the operator believes
//! is good. The evidence must still be internally sound (signed by its AK,
//! log replaying to the quote); what it cannot prove is that the machine was
//! the right one, which is why callers warn loudly.

use aver_crds::policy::DEFAULT_WORKLOAD_PCR;
use aver_crds::{AllowedWorkload, AttestationPolicy, ReferencePcr, TrustRoots};

use crate::error::VerifyError;
use crate::eventlog;
use crate::evidence::Evidence;
use crate::tpm::AkPublic;
use crate::verify::{verify, Challenge};

/// A policy that accepts exactly what `evidence` shows: its AK, every quoted
/// PCR other than the workload PCR as a boot reference, and the latest
/// launch's engine, model and serving config.
pub fn policy_from_evidence(
    evidence: &Evidence,
    workload_pcr: Option<u8>,
) -> Result<AttestationPolicy, VerifyError> {
    let workload_pcr = workload_pcr.unwrap_or(DEFAULT_WORKLOAD_PCR);
    let ak = AkPublic::parse(&evidence.ak_public.0).map_err(|source| VerifyError::Tpm {
        part: "AK public area",
        source,
    })?;
    let workload_value = evidence
        .pcrs
        .iter()
        .find(|p| p.pcr == workload_pcr)
        .map(|p| p.value)
        .ok_or(VerifyError::PcrNotQuoted(workload_pcr))?;
    let launch = eventlog::latest_launch(&evidence.event_log, workload_pcr, &workload_value)?;
    let policy = AttestationPolicy {
        reference_pcrs: evidence
            .pcrs
            .iter()
            .filter(|p| p.pcr != workload_pcr)
            .map(|p| ReferencePcr {
                pcr: p.pcr,
                values: vec![p.value],
            })
            .collect(),
        workload_pcr,
        allowed: AllowedWorkload {
            engine_digests: vec![launch.engine],
            model_digests: vec![launch.model],
            config_digests: Some(vec![launch.serving_config]),
            pod: None,
            node_policies: None,
        },
        trust: TrustRoots {
            ak_names: vec![ak.name_hex()],
            ek_roots: None,
        },
        interval: "30s".to_owned(),
        max_evidence_age: "5m".to_owned(),
    };
    // Refuse to enshrine evidence that does not even verify against itself.
    let challenge = Challenge {
        nonce: evidence.nonce,
        spki_sha256: evidence.spki_sha256,
    };
    verify(evidence, &challenge, &policy)?;
    Ok(policy)
}
