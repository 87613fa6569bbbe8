//! The attestation policy of a node-measured model, derived from the
//! resource: `spec.attestation` with `allowed.pod` filled in from the pod
//! the controller renders. The controller re-attests with it and `aver
//! policy from-model` writes it for clients, from the same function, so
//! that both accept exactly the same pods.

use aver_crds::{AttestationPolicy, ConfidentialModel};

use crate::expected::{expected_pod, ExpectedError, ExpectedPod, KubeletParams};
use crate::render::WorkloadConfig;

/// The policy for a node-measured model and the expected pod it lists.
///
/// `allowed.engineDigests` and `allowed.configDigests` are dropped: with
/// `allowed.pod` the engine is identified by the image the runtime resolved
/// and by its measured spec, not by what the enclave reports. An
/// `allowed.pod` already in the resource is replaced by the rendering's.
pub fn model_policy(
    cm: &ConfidentialModel,
    config: &WorkloadConfig,
    params: &KubeletParams,
) -> Result<(AttestationPolicy, ExpectedPod), ExpectedError> {
    let expected = expected_pod(cm, config, params)?;
    let mut policy = cm.spec.attestation.clone();
    policy.allowed.engine_digests.clear();
    policy.allowed.config_digests = None;
    policy.allowed.pod = Some(expected.allowed_pod());
    Ok((policy, expected))
}
