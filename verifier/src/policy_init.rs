//! Trust-on-first-use: derive a policy from evidence the operator believes
//! is good. The evidence must still be internally sound (signed by its AK,
//! log replaying to the quote); what it cannot prove is that the machine was
//! the right one, which is why callers warn loudly.

use aver_boot_log::uefi::EventLog;
use aver_crds::boot_policy::{BOOT_LOG_PCRS, IMA_PCR};
use aver_crds::policy::DEFAULT_WORKLOAD_PCR;
use aver_crds::{
    AllowedContainer, AllowedPod, AllowedWorkload, AttestationPolicy, ReferencePcr, Sha256Digest,
    TrustRoots,
};
use aver_node_log::NodeHistory;

use crate::error::VerifyError;
use crate::eventlog;
use crate::evidence::Evidence;
use crate::policy::ValidatedPolicy;
use crate::reference_values::boot_policy_from_log;
use crate::tpm::AkPublic;
use crate::verify::{verify, Challenge};

/// A policy that accepts exactly what `evidence` shows: its AK, its boot
/// chain (the rules its firmware event log supports, or else every quoted
/// PCR but the workload PCR and IMA's as a raw reference), and the workload:
/// for node-measured evidence the containers the key-holding pod ran, its
/// model and the node policies; for enclave-reported evidence the latest
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
    let allowed = if evidence.is_node_measured() {
        allowed_from_node_log(evidence, workload_pcr, &workload_value)?
    } else {
        let launch = eventlog::latest_launch(&evidence.event_log, workload_pcr, &workload_value)?;
        AllowedWorkload {
            engine_digests: vec![launch.engine],
            model_digests: vec![launch.model],
            config_digests: Some(vec![launch.serving_config]),
            pod: None,
            node_policies: None,
        }
    };
    // With a firmware event log the boot chain is pinned by meaning (the
    // rules the log supports) instead of PCRs 0-9 as raw values.
    let boot = boot_rules(evidence);
    let policy = AttestationPolicy {
        reference_pcrs: evidence
            .pcrs
            .iter()
            // PCR 10 moves with every file IMA measures: never a reference.
            .filter(|p| p.pcr != workload_pcr && p.pcr != IMA_PCR)
            .filter(|p| boot.is_none() || !BOOT_LOG_PCRS.contains(&p.pcr))
            .map(|p| ReferencePcr {
                pcr: p.pcr,
                values: vec![p.value],
            })
            .collect(),
        workload_pcr,
        boot,
        runtime: None,
        allow_unverified_boot: false,
        allowed,
        trust: TrustRoots {
            ak_names: vec![ak.name_hex()],
            ek_roots: None,
            ak_roots: None,
            ek_pins: vec![],
            allow_sha1: false,
        },
        interval: "30s".to_owned(),
        max_evidence_age: "5m".to_owned(),
    };
    // Refuse to enshrine evidence that does not even verify against itself.
    let challenge = Challenge {
        nonce: evidence.nonce,
        spki_sha256: evidence.spki_sha256,
    };
    let policy = ValidatedPolicy::new(policy)?;
    verify(evidence, &challenge, &policy)?;
    Ok(policy.into_policy())
}

/// The boot rules the evidence's firmware event log supports, if it has a
/// usable one. The kernel command line is not in the log as text (only its
/// digest), so that rule is left out: `aver policy boot --cmdline` adds it.
fn boot_rules(evidence: &Evidence) -> Option<aver_crds::BootPolicy> {
    let log = EventLog::parse(&evidence.boot_log.as_ref()?.0).ok()?;
    boot_policy_from_log(&log, None)
        .ok()
        .map(|(policy, _)| policy)
}

/// The pod the node log binds the evidence's TLS key to, as an allow-list.
fn allowed_from_node_log(
    evidence: &Evidence,
    workload_pcr: u8,
    workload_value: &Sha256Digest,
) -> Result<AllowedWorkload, VerifyError> {
    let history = NodeHistory::from_log(&evidence.node_log, workload_pcr, workload_value, None)?;
    let bound = history.key_holder(&evidence.spki_sha256)?;
    let mut containers: Vec<AllowedContainer> = Vec::new();
    for c in &bound.containers {
        // Pin the manifest digest people pin images by, where the runtime
        // knows it; the image ID otherwise.
        let image = Sha256Digest::parse(&c.image.shown()).unwrap_or(c.image.id);
        match containers.iter_mut().find(|a| a.name == c.name) {
            Some(a) => {
                if !a.image_digests.contains(&image) {
                    a.image_digests.push(image);
                }
                if !a.spec_digests.contains(&c.spec_digest) {
                    a.spec_digests.push(c.spec_digest);
                }
            }
            None => containers.push(AllowedContainer {
                name: c.name.clone(),
                image_digests: vec![image],
                spec_digests: vec![c.spec_digest],
            }),
        }
    }
    let mut node_policies = history.policies.clone();
    node_policies.sort_by_key(|d| d.0);
    node_policies.dedup();
    Ok(AllowedWorkload {
        engine_digests: Vec::new(),
        model_digests: vec![bound.key.model_digest],
        config_digests: None,
        pod: Some(AllowedPod { containers }),
        node_policies: Some(node_policies),
    })
}
