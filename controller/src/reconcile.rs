//! Reconciling one `ConfidentialModel`: keep its workload applied and
//! publish its status.
//!
//! No finalizer: the Deployment, Service, PodDisruptionBudget and
//! NetworkPolicy carry the resource as their controller owner, so the
//! garbage collector removes them when it goes, and the re-attestation loop
//! forgets a model it no longer lists. A finalizer would add nothing but a
//! resource stuck in `Terminating` whenever the controller is gone
//! (uninstalled, crash-looping, scaled to zero). Resources that still carry the finalizer of earlier versions
//! ([`LEGACY_FINALIZER`]) have it removed.
//!
//! Every write is a server-side apply with the controller's field manager,
//! so re-applying an unchanged object is a no-op on the server, and status
//! is written only when the computed status differs from the stored one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aver_crds::{ConfidentialModel, ModelVolume, ModelVolumeType};
use aver_workload::KubeletParams;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource as _, ResourceExt};

use crate::config::{WorkloadConfig, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::model_volume::{self, Resolution};
use crate::results::ResultStore;
use crate::status::{self, Problem, StatusInputs};
use crate::workload;

/// The finalizer earlier versions put on every resource; removed on sight.
pub const LEGACY_FINALIZER: &str = "aver.dev/cleanup";

/// Retry delay after a failed reconcile.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// How soon a model whose claim is not bound yet is looked at again.
const UNRESOLVED_RECHECK: Duration = Duration::from_secs(5);

/// Defaults used to compute status while the policy is invalid.
const FALLBACK_INTERVAL: Duration = Duration::from_secs(30);
const FALLBACK_MAX_AGE: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    /// Applies the workload, looks up the model's claim and writes status.
    pub client: Client,
    /// How a model's workload objects and attestation policy are rendered.
    pub workload: WorkloadConfig,
    /// The kubelet's conversion of node-measured pods, if known.
    pub kubelet: Option<KubeletParams>,
    /// Attestation outcomes, read (never written) to compute status.
    pub store: ResultStore,
    /// Counts reconciles and status writes.
    pub metrics: Metrics,
    /// Publishes a Warning Event when the model gets a new problem (none in
    /// unit tests).
    pub recorder: Option<Recorder>,
}

/// Why a reconcile failed (it is retried after [`ERROR_REQUEUE`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object came without `metadata.namespace`, which a namespaced
    /// `ConfidentialModel` always has.
    #[error("the resource has no namespace")]
    NoNamespace,
    /// The API server refused one of the model's objects (server-side apply).
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        /// `Deployment`, `Service`, `PodDisruptionBudget` or `NetworkPolicy`.
        kind: &'static str,
        /// Name of the object that was applied.
        name: String,
        /// What the API server answered.
        source: kube::Error,
    },
    /// The status subresource could not be patched.
    #[error("cannot write status of {name}: {source}")]
    Status {
        /// Name of the model.
        name: String,
        /// What the API server answered.
        source: kube::Error,
    },
    /// Removing [`LEGACY_FINALIZER`] failed, or the finalizer list changed
    /// under the patch.
    #[error("cannot remove the finalizer {LEGACY_FINALIZER} from {name}: {source}")]
    Finalizer {
        /// Name of the model.
        name: String,
        /// What the API server answered.
        source: kube::Error,
    },
    /// The model's claim or its volume could not be looked up.
    #[error(transparent)]
    ModelVolume(model_volume::ResolveError),
}

/// When to reconcile a model again if no watch event comes first: what a
/// reconcile decides, in a form tests can read (kube's [`Action`] hides
/// its delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Reconcile again after this delay (status expires, or the claim is
    /// not bound yet).
    After(Duration),
    /// Reconcile again only when a watch event or an attestation outcome
    /// triggers it.
    OnChange,
}

impl From<Requeue> for Action {
    fn from(requeue: Requeue) -> Self {
        match requeue {
            Requeue::After(delay) => Action::requeue(delay),
            Requeue::OnChange => Action::await_change(),
        }
    }
}

/// Reconciles one resource (the `kube::runtime::Controller` entry point).
pub async fn reconcile(cm: Arc<ConfidentialModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_model(cm, ctx).await.map(Action::from)
}

/// [`reconcile`], saying when to requeue.
pub async fn reconcile_model(
    cm: Arc<ConfidentialModel>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    let started = Instant::now();
    let namespace = cm.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ConfidentialModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = async {
        remove_legacy_finalizer(&api, &cm).await?;
        if cm.metadata.deletion_timestamp.is_some() {
            // The garbage collector deletes the workload; only the
            // attestation state is ours to drop.
            ctx.store.remove_model(&ObjectRef::from_obj(cm.as_ref()));
            return Ok(Requeue::OnChange);
        }
        apply(&cm, &ctx).await
    }
    .await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    result
}

/// Removes [`LEGACY_FINALIZER`] if the resource has it. The patch tests
/// that the entry is still at that index, so a concurrent change of the
/// list fails the patch (and the reconcile is retried) instead of removing
/// someone else's finalizer.
async fn remove_legacy_finalizer(
    api: &Api<ConfidentialModel>,
    cm: &ConfidentialModel,
) -> Result<(), Error> {
    let Some(index) = cm.finalizers().iter().position(|f| f == LEGACY_FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": LEGACY_FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a well-formed JSON patch");
    let name = cm.name_any();
    match api
        .patch::<ConfidentialModel>(&name, &PatchParams::default(), &Patch::Json(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(model = %ObjectRef::from_obj(cm), "removed the finalizer of an earlier version");
            Ok(())
        }
        // Gone already: nothing holds it.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Finalizer { name, source }),
    }
}

/// What the controller does after a failed reconcile.
pub fn error_policy(cm: Arc<ConfidentialModel>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        model = %ObjectRef::from_obj(cm.as_ref()),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(ERROR_REQUEUE)
}

async fn apply(cm: &ConfidentialModel, ctx: &Context) -> Result<Requeue, Error> {
    let name = cm.name_any();
    let namespace = cm.namespace().ok_or(Error::NoNamespace)?;
    let mut problem = cm.spec.attestation.validate().err().map(|e| Problem {
        reason: "InvalidPolicy",
        message: e.to_string(),
    });
    // The claim's volume shapes a node-measured pod's specs. Until the claim
    // is bound the policy is computed with a placeholder volume: the rest of
    // the spec is still checked, the workload applied (a WaitForFirstConsumer
    // claim binds only once a pod is scheduled), and nothing attested.
    let resolution = model_volume::resolve(&ctx.client, &namespace, cm)
        .await
        .map_err(Error::ModelVolume)?;
    let mut missing = None;
    let (model_volume, unresolved) = match resolution {
        Resolution::NotNeeded => (None, false),
        Resolution::Bound(volume) => (Some(volume), false),
        Resolution::Pending(message) => {
            tracing::debug!(model = %ObjectRef::from_obj(cm), "{message}");
            (None, true)
        }
        Resolution::Missing(message) => {
            missing = Some(Problem {
                reason: "ModelVolumeMissing",
                message,
            });
            (None, true)
        }
        Resolution::Refused(message) => {
            problem.get_or_insert(Problem {
                reason: "ModelVolumeUnsupported",
                message,
            });
            (None, false)
        }
    };
    let resolved = with_model_volume(cm, model_volume.clone(), unresolved);
    // What endpoints are verified against (with node measurement, derived
    // from the rendered pod); a pod that cannot be attested is not deployed.
    let policy = match workload::attestation_policy(&resolved, &ctx.workload, ctx.kubelet.as_ref())
    {
        Ok(policy) => policy,
        Err(message) => {
            problem.get_or_insert(Problem {
                reason: "InvalidSpec",
                message,
            });
            cm.spec.attestation.clone()
        }
    };
    let policy = &policy;
    let interval = policy.interval().unwrap_or(FALLBACK_INTERVAL);
    let max_age = policy.max_evidence_age().unwrap_or(FALLBACK_MAX_AGE);

    let mut ready_replicas = cm.status.as_ref().map_or(0, |s| s.ready_replicas);
    let mut failure = None;
    if problem.is_none() {
        match Workload::render(cm, &ctx.workload) {
            Ok(rendered) => {
                match apply_workload(ctx, &namespace, &rendered).await {
                    Ok(applied) => {
                        // The ReplicaSet cannot create pods (PodSecurity,
                        // quota, a webhook): the Deployment says so, and
                        // nothing else would.
                        if let Some(message) = replica_failure(&applied) {
                            problem = Some(Problem {
                                reason: "FailedCreate",
                                message,
                            });
                        } else if let Some(message) = dropped_image_volume(cm, &applied) {
                            problem = Some(Problem {
                                reason: "ImageVolumeUnsupported",
                                message,
                            });
                        }
                        ready_replicas = applied.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    }
                    Err(e) => {
                        problem = Some(Problem {
                            reason: "ApplyFailed",
                            message: e.to_string(),
                        });
                        failure = Some(e);
                    }
                }
            }
            Err(e) => {
                problem = Some(Problem {
                    reason: "InvalidSpec",
                    message: e.to_string(),
                });
            }
        }
    }

    if problem.is_none() {
        problem = missing;
    }
    if let (Some(problem), Some(recorder)) = (&problem, &ctx.recorder) {
        warn_once(recorder, cm, problem).await;
    }
    let results = ctx.store.snapshot(&ObjectRef::from_obj(cm));
    let inputs = StatusInputs {
        generation: cm.metadata.generation,
        replicas: cm.spec.replicas,
        ready_replicas,
        results: &results,
        problem,
        interval,
        max_age,
        policy,
        model_volume,
        now: Timestamp::now(),
    };
    let desired = status::desired(cm.status.as_ref(), &inputs);
    if status::needs_write(cm.status.as_ref(), &desired) {
        let api: Api<ConfidentialModel> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "aver.dev/v1alpha1",
            "kind": "ConfidentialModel",
            "status": desired,
        });
        api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::Status {
                name: name.clone(),
                source,
            })?;
        ctx.metrics.status_written();
        tracing::info!(
            model = %ObjectRef::from_obj(cm),
            attested = desired.attested_replicas,
            ready = ready_replicas,
            "status updated"
        );
    }
    let next = status::next_change(&desired, &inputs);
    match failure {
        Some(e) => Err(e),
        None if unresolved => Ok(Requeue::After(next.min(UNRESOLVED_RECHECK))),
        None => Ok(Requeue::After(next)),
    }
}

/// `cm` as the policy is computed from it: with the volume just resolved
/// (not yet in the stored status), or a placeholder while the claim is not
/// bound, so that the rest of the spec is checked.
fn with_model_volume(
    cm: &ConfidentialModel,
    volume: Option<ModelVolume>,
    unresolved: bool,
) -> std::borrow::Cow<'_, ConfidentialModel> {
    let volume = match (volume, model_volume::claim_to_resolve(cm)) {
        (Some(volume), _) => volume,
        (None, Some(claim)) if unresolved => ModelVolume {
            claim_name: claim.to_owned(),
            volume_name: "unbound".to_owned(),
            type_: ModelVolumeType::Local,
            path: None,
        },
        _ => return std::borrow::Cow::Borrowed(cm),
    };
    let mut cm = cm.clone();
    cm.status.get_or_insert_with(Default::default).model_volume = Some(volume);
    std::borrow::Cow::Owned(cm)
}

/// The message of the Deployment's `ReplicaFailure` condition, if it is
/// true: why its ReplicaSet cannot create pods.
fn replica_failure(deployment: &Deployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
        })
}

/// Why the applied Deployment has no model volume although the resource
/// asks for an image volume: an API server without the `ImageVolume`
/// feature drops such volumes and their mounts silently, and the pods would
/// start without their weights.
fn dropped_image_volume(cm: &ConfidentialModel, applied: &Deployment) -> Option<String> {
    let image = cm.spec.model.source.image.as_ref()?;
    let kept = applied
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| v.name == workload::MODEL_VOLUME && v.image.is_some());
    (!kept).then(|| {
        format!(
            "the API server dropped the image volume of spec.model.source.image ({}): this cluster does not serve image volumes (the ImageVolume feature gate must be on in the API server and the kubelets, with a runtime that supports them, e.g. containerd 2.1 or later); use a persistentVolumeClaim or hostPath source",
            image.reference
        )
    })
}

/// A Warning Event for `problem`, unless the stored status already shows it
/// (reconciles repeat; the Event marks the change).
async fn warn_once(recorder: &Recorder, cm: &ConfidentialModel, problem: &Problem) {
    let shown = cm
        .status
        .as_ref()
        .and_then(|s| s.condition("Degraded"))
        .is_some_and(|c| {
            c.status == "True" && c.reason == problem.reason && c.message == problem.message
        });
    if shown {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: problem.reason.to_owned(),
        note: Some(problem.message.chars().take(1024).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
        tracing::warn!(model = %ObjectRef::from_obj(cm), error = %e, "cannot publish an Event");
    }
}

fn apply_params() -> PatchParams {
    // Forced: the controller is the only intended owner of these fields.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Everything the controller applies for a model.
struct Workload {
    deployment: Deployment,
    service: Service,
    pdb: PodDisruptionBudget,
    network_policy: NetworkPolicy,
}

impl Workload {
    fn render(
        cm: &ConfidentialModel,
        config: &WorkloadConfig,
    ) -> Result<Self, aver_workload::WorkloadError> {
        Ok(Self {
            deployment: workload::deployment(cm, config)?,
            service: workload::service(cm)?,
            pdb: workload::pod_disruption_budget(cm)?,
            network_policy: workload::network_policy(cm)?,
        })
    }
}

/// Applies the workload, the Deployment first; returns the Deployment as
/// the API server stored it.
async fn apply_workload(
    ctx: &Context,
    namespace: &str,
    workload: &Workload,
) -> Result<Deployment, Error> {
    let applied = apply_one(ctx, namespace, "Deployment", &workload.deployment).await?;
    apply_one(ctx, namespace, "Service", &workload.service).await?;
    apply_one(ctx, namespace, "PodDisruptionBudget", &workload.pdb).await?;
    apply_one(ctx, namespace, "NetworkPolicy", &workload.network_policy).await?;
    Ok(applied)
}

async fn apply_one<K>(
    ctx: &Context,
    namespace: &str,
    kind: &'static str,
    object: &K,
) -> Result<K, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let name = object.name_any();
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map_err(|source| Error::Apply { kind, name, source })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aver_crds::ConfidentialModelStatus;
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{json, Value};

    use super::*;
    use crate::results::tests::{attested, policy, target};
    use crate::testing::{ApiMock, Reply};
    use crate::workload::tests::{model, workload_config};

    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ml/deployments/llama";
    const SERVICE: &str = "/api/v1/namespaces/ml/services/llama";
    const PDB: &str = "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/llama";
    const NETWORK_POLICY: &str = "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/llama";
    const MODEL: &str = "/apis/aver.dev/v1alpha1/namespaces/ml/confidentialmodels/llama";
    const STATUS: &str = "/apis/aver.dev/v1alpha1/namespaces/ml/confidentialmodels/llama/status";

    fn managed_model() -> ConfidentialModel {
        model("llama")
    }

    fn context(client: Client, store: ResultStore) -> Arc<Context> {
        Arc::new(Context {
            client,
            workload: workload_config(),
            kubelet: Some(crate::workload::tests::kubelet()),
            store,
            metrics: Metrics::new(),
            recorder: None,
        })
    }

    fn deployment_reply(ready: i32) -> Reply {
        Reply::json(
            Method::PATCH,
            DEPLOYMENT,
            200,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "llama", "namespace": "ml"},
                "status": {"readyReplicas": ready}
            }),
        )
        .expect_query("fieldManager=aver-controller")
        .expect_query("force=true")
    }

    fn service_reply() -> Reply {
        Reply::json(
            Method::PATCH,
            SERVICE,
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llama", "namespace": "ml"}}),
        )
        .expect_query("fieldManager=aver-controller")
    }

    fn pdb_reply() -> Reply {
        Reply::json(
            Method::PATCH,
            PDB,
            200,
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "llama", "namespace": "ml"}}),
        )
        .expect_query("fieldManager=aver-controller")
        .expect_body(|body| assert_eq!(body["spec"]["maxUnavailable"], 1))
    }

    fn network_policy_reply() -> Reply {
        Reply::json(
            Method::PATCH,
            NETWORK_POLICY,
            200,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "llama", "namespace": "ml"}}),
        )
        .expect_query("fieldManager=aver-controller")
        .expect_body(|body| {
            assert_eq!(body["spec"]["ingress"][0]["ports"], json!([{"port": 8443, "protocol": "TCP"}]));
        })
    }

    /// The four idempotent applies, the Deployment's reply first, then
    /// `then`.
    fn applies(deployment: Reply, then: impl IntoIterator<Item = Reply>) -> Vec<Reply> {
        [
            deployment,
            service_reply(),
            pdb_reply(),
            network_policy_reply(),
        ]
        .into_iter()
        .chain(then)
        .collect()
    }

    fn status_reply(cm: &ConfidentialModel, check: impl FnOnce(&Value) + Send + 'static) -> Reply {
        Reply::json(
            Method::PATCH,
            STATUS,
            200,
            serde_json::to_value(cm).expect("json"),
        )
        .expect_query("fieldManager=aver-controller")
        .expect_body(check)
    }

    /// The requeue delay of a reconcile that requeues after one.
    fn requeue_secs(requeue: &Requeue) -> f64 {
        match requeue {
            Requeue::After(delay) => delay.as_secs_f64(),
            Requeue::OnChange => panic!("no requeue delay: {requeue:?}"),
        }
    }

    fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no {type_} condition in {status:#}"))
    }

    fn store_with(pods: &[&str]) -> ResultStore {
        let store = ResultStore::new();
        let key = ObjectRef::from_obj(&model("llama"));
        for pod in pods {
            store.record_success(&key, &target(pod), attested(1), &policy(), Timestamp::now());
        }
        store
    }

    /// The status the controller computes for `cm` from `store` right now.
    fn current_status(
        cm: &ConfidentialModel,
        store: &ResultStore,
        ready: i32,
    ) -> ConfidentialModelStatus {
        let results = store.snapshot(&ObjectRef::from_obj(cm));
        status::desired(
            cm.status.as_ref(),
            &StatusInputs {
                generation: cm.metadata.generation,
                replicas: cm.spec.replicas,
                ready_replicas: ready,
                results: &results,
                problem: None,
                interval: Duration::from_secs(30),
                max_age: Duration::from_secs(300),
                policy: &cm.spec.attestation,
                model_volume: None,
                now: Timestamp::now(),
            },
        )
    }

    #[tokio::test]
    async fn workload_is_applied_with_scheduling_constraints_and_status_written() {
        let cm = managed_model();
        let mock = ApiMock::start(applies(
            deployment_reply(2).expect_body(|body| {
                let pod = &body["spec"]["template"]["spec"];
                let term = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"][0]["matchExpressions"][0];
                assert_eq!(term, &json!({"key": "aver.dev/tpm", "operator": "In", "values": ["true"]}));
                assert_eq!(
                    pod["tolerations"],
                    json!([{"key": "aver.dev/hardened", "operator": "Exists", "effect": "NoSchedule"}])
                );
                assert_eq!(
                    pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                        ["topologyKey"],
                    "kubernetes.io/hostname"
                );
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                assert_eq!(body["spec"]["replicas"], 3);
            }),
            [status_reply(&cm, |body| {
                let status = &body["status"];
                assert_eq!(status["observedGeneration"], 4);
                assert_eq!(status["readyReplicas"], 2);
                assert_eq!(status["attestedReplicas"], 0);
                assert_eq!(status["endpoints"], json!([]));
                let ready = condition(status, "Ready");
                assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("ReplicasNotAttested")));
                assert_eq!(ready["observedGeneration"], 4);
                assert_eq!(condition(status, "Attested")["reason"], "AttestationPending");
                assert_eq!(condition(status, "Degraded")["status"], "False");
            })],
        ));
        let ctx = context(mock.client(), ResultStore::new());
        let action = reconcile_model(Arc::new(cm), Arc::clone(&ctx))
            .await
            .expect("reconciled");
        assert_ne!(action, Requeue::OnChange);
        assert_eq!(ctx.metrics.status_write_count(), 1);
        mock.finish().await;
    }

    #[tokio::test]
    async fn pods_the_replica_set_cannot_create_make_the_model_degraded() {
        let cm = managed_model();
        let refused = "pods \"llama-6d4\" is forbidden: violates PodSecurity \"restricted:latest\": hostPath volumes (volume \"model\")";
        let mock = ApiMock::start(applies(
            Reply::json(
                Method::PATCH,
                DEPLOYMENT,
                200,
                json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "llama", "namespace": "ml"},
                    "status": {"conditions": [
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated"},
                        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refused},
                    ]}
                }),
            ),
            [status_reply(&cm, move |body| {
                let status = &body["status"];
                let degraded = condition(status, "Degraded");
                assert_eq!(
                    (&degraded["status"], &degraded["reason"]),
                    (&json!("True"), &json!("FailedCreate"))
                );
                assert_eq!(degraded["message"], refused);
                let ready = condition(status, "Ready");
                assert_eq!(
                    (&ready["status"], &ready["reason"]),
                    (&json!("False"), &json!("FailedCreate"))
                );
            })],
        ));
        let ctx = context(mock.client(), ResultStore::new());
        reconcile_model(Arc::new(cm), Arc::clone(&ctx))
            .await
            .expect("reconciled");
        mock.finish().await;
        // A condition that is not true is no failure.
        let deploy = Deployment {
            status: Some(
                serde_json::from_value(json!({"conditions": [
                    {"type": "ReplicaFailure", "status": "False", "reason": "x", "message": "y"}
                ]}))
                .expect("status"),
            ),
            ..Deployment::default()
        };
        assert_eq!(replica_failure(&deploy), None);
    }

    #[tokio::test]
    async fn verified_endpoints_are_published_in_status() {
        let cm = managed_model();
        let store = store_with(&["a", "b", "c"]);
        let mock = ApiMock::start(applies(
            deployment_reply(3),
            [status_reply(&cm, |body| {
                let status = &body["status"];
                assert_eq!(status["attestedReplicas"], 3);
                let endpoint = &status["endpoints"][0];
                assert_eq!(endpoint["pod"], "a");
                assert_eq!(endpoint["node"], "node-a");
                assert_eq!(endpoint["address"], "10.0.0.1");
                assert_eq!(endpoint["port"], 8443);
                assert_eq!(
                    endpoint["spkiSha256"],
                    format!("sha256:{}", "01".repeat(32))
                );
                assert!(endpoint["certificatePem"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----\n")));
                assert_eq!(endpoint["measurements"]["bootPolicy"]["result"], "Passed");
                assert!(endpoint["lastAttested"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z')));
                assert_eq!(condition(status, "Ready")["status"], "True");
                assert_eq!(condition(status, "Attested")["status"], "True");
            })],
        ));
        reconcile_model(Arc::new(cm), context(mock.client(), store))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_failed_endpoint_is_removed_from_status() {
        let store = store_with(&["a", "b"]);
        let mut cm = managed_model();
        cm.status = Some(current_status(&cm, &store, 2));
        assert_eq!(cm.status.as_ref().map(|s| s.endpoints.len()), Some(2));

        let key = ObjectRef::from_obj(&cm);
        store.record_failure(
            &key,
            &target("a"),
            "boot-pcr",
            "boot PCR 9 is not a reference value",
            Timestamp::now(),
        );
        let mock = ApiMock::start(applies(
            deployment_reply(2),
            [status_reply(&cm, |body| {
                let status = &body["status"];
                let pods: Vec<&Value> = status["endpoints"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .map(|e| &e["pod"])
                    .collect();
                assert_eq!(pods, [&json!("b")]);
                let degraded = condition(status, "Degraded");
                assert_eq!(
                    (&degraded["status"], &degraded["reason"]),
                    (&json!("True"), &json!("AttestationFailed"))
                );
                assert!(degraded["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("pod a on node node-a (boot-pcr)")));
                assert_eq!(condition(status, "Attested")["status"], "False");
            })],
        ));
        reconcile_model(Arc::new(cm), context(mock.client(), store))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn nothing_changed_means_no_status_write() {
        let store = store_with(&["a", "b", "c"]);
        let mut cm = managed_model();
        cm.status = Some(current_status(&cm, &store, 3));
        // Re-verified since: the same certificates, newer times.
        let key = ObjectRef::from_obj(&cm);
        for pod in ["a", "b", "c"] {
            store.record_success(&key, &target(pod), attested(1), &policy(), Timestamp::now());
        }
        // Only the two idempotent applies; the mock fails on any third request.
        let mock = ApiMock::start(applies(deployment_reply(3), []));
        let ctx = context(mock.client(), store);
        let action = reconcile_model(Arc::new(cm), Arc::clone(&ctx))
            .await
            .expect("reconciled");
        assert_eq!(ctx.metrics.status_write_count(), 0);
        // Requeued for when the published times need a refresh, not sooner.
        let secs = requeue_secs(&action);
        assert!((200.0..=240.0).contains(&secs), "{action:?}");
        mock.finish().await;
    }

    #[tokio::test]
    async fn an_invalid_policy_degrades_without_touching_the_workload() {
        let mut cm = managed_model();
        cm.spec.attestation.trust.ak_names.clear();
        let mock = ApiMock::start(vec![status_reply(&cm, |body| {
            let degraded = condition(&body["status"], "Degraded");
            assert_eq!(
                (&degraded["status"], &degraded["reason"]),
                (&json!("True"), &json!("InvalidPolicy"))
            );
            assert!(degraded["message"]
                .as_str()
                .is_some_and(|m| m.contains("trusts no attestation key")));
        })]);
        reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_refused_host_path_degrades_without_touching_the_workload() {
        let mut cm = crate::workload::tests::node_model("llama");
        cm.spec.model.source.host_path = Some(aver_crds::HostPathModelSource {
            path: "/etc".into(),
        });
        let mock = ApiMock::start(vec![status_reply(&cm, |body| {
            let degraded = condition(&body["status"], "Degraded");
            assert_eq!(
                (&degraded["status"], &degraded["reason"]),
                (&json!("True"), &json!("InvalidSpec"))
            );
            assert!(degraded["message"]
                .as_str()
                .is_some_and(|m| m.contains("--allowed-model-host-paths")));
        })]);
        reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn an_apply_failure_is_reported_and_retried() {
        let cm = managed_model();
        let mock = ApiMock::start(vec![
            Reply::status(Method::PATCH, DEPLOYMENT, 500),
            status_reply(&cm, |body| {
                let degraded = condition(&body["status"], "Degraded");
                assert_eq!(degraded["reason"], "ApplyFailed");
            }),
        ]);
        let result =
            reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new())).await;
        assert!(result.is_err(), "{result:?}");
        mock.finish().await;
    }

    fn finalizer_removal(cm: &ConfidentialModel, index: usize) -> Reply {
        let mut after = cm.clone();
        after.metadata.finalizers = None;
        Reply::json(
            Method::PATCH,
            MODEL,
            200,
            serde_json::to_value(after).expect("json"),
        )
        .expect_body(move |body| {
            let path = format!("/metadata/finalizers/{index}");
            assert_eq!(
                body,
                &json!([
                    {"op": "test", "path": path, "value": LEGACY_FINALIZER},
                    {"op": "remove", "path": path},
                ])
            );
        })
    }

    #[tokio::test]
    async fn a_new_resource_gets_no_finalizer() {
        let cm = managed_model();
        // Applies and status only: the mock fails on a patch of the resource.
        let mock = ApiMock::start(applies(deployment_reply(0), [status_reply(&cm, |_| {})]));
        reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn the_finalizer_of_an_earlier_version_is_removed_before_applying() {
        let mut cm = managed_model();
        cm.metadata.finalizers = Some(vec!["example.com/other".into(), LEGACY_FINALIZER.into()]);
        let mock = ApiMock::start(
            std::iter::once(finalizer_removal(&cm, 1))
                .chain(applies(deployment_reply(0), [status_reply(&cm, |_| {})]))
                .collect(),
        );
        reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_failed_finalizer_removal_is_retried_without_applying() {
        let mut cm = managed_model();
        cm.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
        let mock = ApiMock::start(vec![Reply::status(Method::PATCH, MODEL, 422)]);
        let result =
            reconcile_model(Arc::new(cm), context(mock.client(), ResultStore::new())).await;
        let error = result.expect_err("the patch failed");
        assert!(matches!(error, Error::Finalizer { .. }), "{error}");
        mock.finish().await;
    }

    #[tokio::test]
    async fn deletion_drops_the_attestation_state_and_leaves_the_workload_to_the_garbage_collector()
    {
        let mut cm = managed_model();
        cm.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        cm.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
        let store = store_with(&["a"]);
        // Only the finalizer removal: no delete, no apply, no status.
        let mock = ApiMock::start(vec![finalizer_removal(&cm, 0)]);
        let ctx = context(mock.client(), store.clone());
        let action = reconcile_model(Arc::new(cm), ctx)
            .await
            .expect("reconciled");
        assert_eq!(action, Requeue::OnChange);
        assert_eq!(store.verified_count(), 0);
        mock.finish().await;
    }

    #[tokio::test]
    async fn an_image_volume_the_api_server_dropped_makes_the_model_degraded() {
        let mut cm = managed_model();
        cm.spec.model.source.persistent_volume_claim = None;
        cm.spec.model.source.image = Some(aver_crds::ImageModelSource {
            reference: "registry.example/weights@sha256:abab".into(),
        });
        // The Deployment as stored, without the volume the API server dropped.
        let mock = ApiMock::start(applies(
            deployment_reply(0).expect_body(|body| {
                let volumes = &body["spec"]["template"]["spec"]["volumes"];
                assert_eq!(
                    volumes[0]["image"]["reference"],
                    "registry.example/weights@sha256:abab"
                );
            }),
            [status_reply(&cm, |body| {
                let degraded = condition(&body["status"], "Degraded");
                assert_eq!(
                    (&degraded["status"], &degraded["reason"]),
                    (&json!("True"), &json!("ImageVolumeUnsupported"))
                );
                assert!(degraded["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ImageVolume feature gate")));
                assert_eq!(
                    condition(&body["status"], "Ready")["reason"],
                    "ImageVolumeUnsupported"
                );
            })],
        ));
        reconcile_model(
            Arc::new(cm.clone()),
            context(mock.client(), ResultStore::new()),
        )
        .await
        .expect("reconciled");
        mock.finish().await;

        // Kept by the API server: no problem.
        let kept: Deployment = serde_json::from_value(json!({
            "spec": {"selector": {}, "template": {"spec": {"containers": [], "volumes": [
                {"name": "model", "image": {"reference": "registry.example/weights@sha256:abab"}}
            ]}}}
        }))
        .expect("deployment");
        assert_eq!(dropped_image_volume(&cm, &kept), None);
        // Other sources are not image volumes.
        assert_eq!(
            dropped_image_volume(&managed_model(), &Deployment::default()),
            None
        );
    }

    const CLAIM: &str = "/api/v1/namespaces/ml/persistentvolumeclaims/weights";
    const VOLUME: &str = "/api/v1/persistentvolumes/pv-weights";

    /// A node-measured model whose weights are on claim `weights`.
    fn claim_model() -> ConfidentialModel {
        let mut cm = crate::workload::tests::node_model("llama");
        cm.spec.model.source = aver_crds::ModelSource {
            persistent_volume_claim: Some(aver_crds::PvcModelSource {
                claim_name: "weights".into(),
                sub_path: None,
            }),
            image: None,
            host_path: None,
        };
        cm
    }

    fn node_context(client: Client) -> Arc<Context> {
        Arc::new(Context {
            workload: crate::workload::tests::node_workload_config(),
            ..Arc::into_inner(context(client, ResultStore::new())).expect("unshared")
        })
    }

    fn claim_reply(bound: bool) -> Reply {
        let mut claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "weights", "namespace": "ml", "uid": "claim-uid"},
            "spec": {},
            "status": {"phase": "Pending"},
        });
        if bound {
            claim["spec"]["volumeName"] = json!("pv-weights");
            claim["status"]["phase"] = json!("Bound");
        }
        Reply::json(Method::GET, CLAIM, 200, claim)
    }

    #[tokio::test]
    async fn an_unbound_claim_is_deployed_and_resolved_again_soon() {
        let cm = claim_model();
        let mut replies = vec![claim_reply(false)];
        replies.extend(applies(
            deployment_reply(0),
            [status_reply(&cm, |body| {
                assert_eq!(body["status"].get("modelVolume"), None);
                assert_eq!(condition(&body["status"], "Degraded")["status"], "False");
            })],
        ));
        let mock = ApiMock::start(replies);
        let action = reconcile_model(Arc::new(cm), node_context(mock.client()))
            .await
            .expect("reconciled");
        assert!(requeue_secs(&action) <= 5.0, "{action:?}");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_bound_claim_s_volume_is_published() {
        let cm = claim_model();
        let mut replies = vec![
            claim_reply(true),
            Reply::json(
                Method::GET,
                VOLUME,
                200,
                json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": "pv-weights"},
                    "spec": {
                        "hostPath": {"path": "/srv/weights"},
                        "claimRef": {"name": "weights", "namespace": "ml", "uid": "claim-uid"},
                    },
                }),
            ),
        ];
        replies.extend(applies(
            deployment_reply(0),
            [status_reply(&cm, |body| {
                assert_eq!(
                    body["status"]["modelVolume"],
                    json!({"claimName": "weights", "volumeName": "pv-weights", "type": "HostPath", "path": "/srv/weights"})
                );
                assert_eq!(condition(&body["status"], "Degraded")["status"], "False");
            })],
        ));
        let mock = ApiMock::start(replies);
        reconcile_model(Arc::new(cm), node_context(mock.client()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_missing_claim_degrades_but_is_deployed() {
        let cm = claim_model();
        let mut replies = vec![Reply::not_found(Method::GET, CLAIM)];
        replies.extend(applies(
            deployment_reply(0),
            [status_reply(&cm, |body| {
                let degraded = condition(&body["status"], "Degraded");
                assert_eq!(
                    (&degraded["status"], &degraded["reason"]),
                    (&json!("True"), &json!("ModelVolumeMissing"))
                );
            })],
        ));
        let mock = ApiMock::start(replies);
        reconcile_model(Arc::new(cm), node_context(mock.client()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }

    #[tokio::test]
    async fn a_volume_of_an_unknown_kind_is_not_deployed() {
        let cm = claim_model();
        let mock = ApiMock::start(vec![
            claim_reply(true),
            Reply::json(
                Method::GET,
                VOLUME,
                200,
                json!({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": "pv-weights"},
                    "spec": {
                        "nfs": {"server": "nfs", "path": "/export"},
                        "claimRef": {"name": "weights", "namespace": "ml", "uid": "claim-uid"},
                    },
                }),
            ),
            status_reply(&cm, |body| {
                let degraded = condition(&body["status"], "Degraded");
                assert_eq!(degraded["reason"], "ModelVolumeUnsupported");
            }),
        ]);
        reconcile_model(Arc::new(cm), node_context(mock.client()))
            .await
            .expect("reconciled");
        mock.finish().await;
    }
}
