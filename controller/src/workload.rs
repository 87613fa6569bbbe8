//! The objects the controller owns for each `ConfidentialModel`, rendered by
//! `aver-workload` (shared with `aver policy from-model`, so that a client
//! renders the same pod), and the policy the controller attests with.

use aver_crds::{AttestationPolicy, ConfidentialModel, Measurement};
use aver_workload::{model_policy, KubeletParams};

pub use aver_workload::render::*;

/// The policy every endpoint of the model is verified against.
///
/// With `measurement: enclave` it is `spec.attestation` as written. With
/// `measurement: node` it is the policy `aver policy from-model` gives
/// clients: `spec.attestation` with `allowed.pod` computed from the pod
/// the controller renders, so the controller lists only endpoints a client
/// deriving its policy from the same resource would accept.
pub fn attestation_policy(
    cm: &ConfidentialModel,
    workload: &WorkloadConfig,
    kubelet: Option<&KubeletParams>,
) -> Result<AttestationPolicy, String> {
    match cm.spec.measurement {
        Measurement::Enclave => Ok(cm.spec.attestation.clone()),
        Measurement::Node => {
            let kubelet = kubelet.ok_or_else(|| {
                "measurement: node needs the address of the default/kubernetes Service, whose variables the kubelet injects into every measured container: set --kubernetes-service".to_owned()
            })?;
            model_policy(cm, workload, kubelet)
                .map(|(policy, _)| policy)
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) use aver_workload::testing::{
        model, node_model, node_workload_config, workload_config,
    };

    use super::*;

    pub(crate) fn kubelet() -> KubeletParams {
        KubeletParams::new("10.96.0.1:443".parse().expect("address"))
    }

    #[test]
    fn legacy_models_are_attested_with_their_policy_as_written() {
        let cm = model("llama");
        assert_eq!(
            attestation_policy(&cm, &workload_config(), None),
            Ok(cm.spec.attestation.clone())
        );
    }

    #[test]
    fn node_models_are_attested_with_the_rendered_pod() {
        let cm = node_model("llama");
        let policy =
            attestation_policy(&cm, &node_workload_config(), Some(&kubelet())).expect("policy");
        let pod = policy.allowed.pod.as_ref().expect("allowed.pod");
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["enclave", "engine"]);
        assert!(policy.allowed.engine_digests.is_empty());
        let missing =
            attestation_policy(&cm, &node_workload_config(), None).expect_err("no service");
        assert!(missing.contains("--kubernetes-service"), "{missing}");
    }
}
