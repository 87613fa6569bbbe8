//! Where the re-attestation loop learns what to attest: every model, its
//! policy and its ready pods.
//!
//! A trait, so that the loop runs against real enclaves in tests without an
//! API server; in production [`ClusterSource`] reads the controller's
//! caches (reflector stores), so refreshing targets costs no API calls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aver_crds::ConfidentialModel;
use aver_verifier::ValidatedPolicy;
use aver_workload::KubeletParams;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::attestation::AttestTarget;
use crate::results::ModelKey;
use crate::workload::{attestation_policy, model_of, WorkloadConfig, ENCLAVE_PORT};

/// One model and the endpoints to attest for it.
#[derive(Debug, Clone)]
pub struct ModelTargets {
    /// Where the model's outcomes are kept in the [`ResultStore`](crate::results::ResultStore).
    pub key: ModelKey,
    /// Reference to the resource, for Events about it.
    pub reference: ObjectReference,
    /// The model's `spec.attestation`, validated; a model whose policy is
    /// invalid is not listed.
    pub policy: Arc<ValidatedPolicy>,
    /// How often each endpoint is re-attested.
    pub interval: Duration,
    /// How long a verification counts.
    pub max_age: Duration,
    /// Ready pods, in any order.
    pub targets: Vec<AttestTarget>,
}

/// Lists models and their attestable endpoints.
pub trait EndpointSource: Send + Sync + 'static {
    /// Every model whose endpoints should be attested now. A model missing
    /// from the answer has its outcomes forgotten.
    fn models(&self) -> impl Future<Output = Vec<ModelTargets>> + Send;
}

/// A fixed list, for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct StaticSource(pub Arc<std::sync::Mutex<Vec<ModelTargets>>>);

impl StaticSource {
    /// A source that answers `models` until [`StaticSource::set`] replaces them.
    pub fn new(models: Vec<ModelTargets>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(models)))
    }

    /// Replaces the list (e.g. a pod went away).
    pub fn set(&self, models: Vec<ModelTargets>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = models;
    }
}

impl EndpointSource for StaticSource {
    async fn models(&self) -> Vec<ModelTargets> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Models and pods from the controller's watch caches.
#[derive(Clone)]
pub struct ClusterSource {
    /// The `ConfidentialModel` cache.
    pub models: Store<ConfidentialModel>,
    /// The pod cache; a model's ready pods become its targets.
    pub pods: Store<Pod>,
    /// How pods are rendered, for the policy of node-measured models.
    pub workload: WorkloadConfig,
    /// The kubelet's conversion of node-measured pods, if known.
    pub kubelet: Option<KubeletParams>,
}

impl EndpointSource for ClusterSource {
    async fn models(&self) -> Vec<ModelTargets> {
        // Group ready pods by (namespace, model) once: O(pods + models).
        let mut by_model: HashMap<(String, String), Vec<AttestTarget>> = HashMap::new();
        for pod in self.pods.state() {
            let (Some(namespace), Some(model)) = (pod.namespace(), model_of(pod.as_ref())) else {
                continue;
            };
            if let Some(target) = attest_target(&pod) {
                by_model
                    .entry((namespace, model.to_owned()))
                    .or_default()
                    .push(target);
            }
        }
        self.models
            .state()
            .iter()
            .filter_map(|cm| {
                let mut targets = model_targets(cm, &self.workload, self.kubelet.as_ref())?;
                let key = (
                    targets.key.namespace.clone().unwrap_or_default(),
                    targets.key.name.clone(),
                );
                targets.targets = by_model.remove(&key).unwrap_or_default();
                Some(targets)
            })
            .collect()
    }
}

/// The attestation settings of a model, if it is to be attested at all (not
/// being deleted, with a valid policy; the reconciler reports invalid ones).
/// The policy is [`attestation_policy`]'s, as the reconciler's.
pub fn model_targets(
    cm: &ConfidentialModel,
    workload: &WorkloadConfig,
    kubelet: Option<&KubeletParams>,
) -> Option<ModelTargets> {
    if cm.meta().deletion_timestamp.is_some() {
        return None;
    }
    cm.spec.attestation.validate().ok()?;
    let policy = ValidatedPolicy::new(attestation_policy(cm, workload, kubelet).ok()?).ok()?;
    let interval = policy.interval();
    let max_age = policy.max_evidence_age();
    Some(ModelTargets {
        key: ObjectRef::from_obj(cm),
        reference: cm.object_ref(&()),
        policy: Arc::new(policy),
        interval,
        max_age,
        targets: Vec::new(),
    })
}

/// A pod as an attestation target, if it is ready and not going away.
pub fn attest_target(pod: &Pod) -> Option<AttestTarget> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    Some(AttestTarget {
        pod: pod.metadata.name.clone()?,
        pod_uid: pod.metadata.uid.clone()?,
        node: pod.spec.as_ref()?.node_name.clone()?,
        address: status.pod_ip.clone()?,
        port: ENCLAVE_PORT,
    })
}

/// Drops what the source never reads from cached pods (managed fields,
/// most of the spec), which dominates memory with thousands of pods.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.as_mut() {
        let node_name = spec.node_name.take();
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name,
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ml".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([("aver.dev/model".to_owned(), "llama".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.1.2.3".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn only_ready_live_pods_are_targets() {
        let target = attest_target(&pod("a", true)).expect("ready pod");
        assert_eq!(
            (
                target.pod.as_str(),
                target.node.as_str(),
                target.address.as_str(),
                target.port
            ),
            ("a", "n1", "10.1.2.3", 8443)
        );
        assert!(attest_target(&pod("b", false)).is_none());
        let mut going = pod("c", true);
        going.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(attest_target(&going).is_none());
        let mut unscheduled = pod("d", true);
        if let Some(status) = unscheduled.status.as_mut() {
            status.pod_ip = None;
        }
        assert!(attest_target(&unscheduled).is_none());
    }

    #[test]
    fn models_with_invalid_policies_are_not_attested() {
        let cm = crate::workload::tests::model("llama");
        let config = crate::workload::tests::workload_config();
        let targets = model_targets(&cm, &config, None).expect("valid");
        assert_eq!(targets.interval, Duration::from_secs(30));
        assert_eq!(targets.reference.kind.as_deref(), Some("ConfidentialModel"));
        let mut bad = cm.clone();
        bad.spec.attestation.trust.ak_names.clear();
        assert!(model_targets(&bad, &config, None).is_none());
        // A node-measured model is attested with the policy of its pod.
        let node = crate::workload::tests::node_model("llama");
        let node_config = crate::workload::tests::node_workload_config();
        let kubelet = crate::workload::tests::kubelet();
        let targets = model_targets(&node, &node_config, Some(&kubelet)).expect("valid");
        assert_eq!(
            *targets.policy.policy(),
            attestation_policy(&node, &node_config, Some(&kubelet)).unwrap()
        );
        assert!(targets.policy.allowed.pod.is_some());
        assert!(model_targets(&node, &node_config, None).is_none());
    }

    #[test]
    fn slimming_keeps_what_targets_need() {
        let mut p = pod("a", true);
        p.metadata.annotations = Some([("big".to_owned(), "x".repeat(1000))].into());
        let before = attest_target(&p);
        slim_pod(&mut p);
        assert!(p.metadata.annotations.is_none());
        assert_eq!(attest_target(&p), before);
    }
}
