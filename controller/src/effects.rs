//! What the cluster sees of attestation outcomes: a reconcile of the model
//! (which rewrites its status), a Kubernetes Event naming the reason, and
//! the deletion of a failing pod so that its Deployment replaces it.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Client;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::reattest::{AttestationEvent, Failure};
use crate::results::ModelKey;

/// Seconds a pod that failed attestation gets to stop (instead of its
/// drain).
const FAILED_POD_GRACE_SECONDS: u32 = 5;

/// Longest Event note the API accepts (events.k8s.io/v1: 1 KiB).
const MAX_NOTE: usize = 1024;

/// Acts on the re-attestation loop's announcements.
pub struct Effects {
    /// Deletes the pods of failing endpoints.
    pub client: Client,
    /// Publishes Events on the model: a Warning for each failure, a Normal
    /// one for each pod deleted.
    pub recorder: Recorder,
    /// Counts the pods deleted.
    pub metrics: Metrics,
    /// Feeds `Controller::reconcile_on`.
    pub reconcile: mpsc::UnboundedSender<ModelKey>,
}

impl Effects {
    /// Runs until the loop's channel closes.
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<AttestationEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                AttestationEvent::Changed(model) => {
                    // Closed only while the controller shuts down.
                    let _ = self.reconcile.send(model);
                }
                AttestationEvent::Failed(failure) => self.failed(&failure).await,
            }
        }
    }

    async fn failed(&self, failure: &Failure) {
        let target = &failure.target;
        let note = truncate(format!(
            "pod {} on node {} failed attestation ({}): {}",
            target.pod, target.node, failure.reason, failure.message
        ));
        let pod_ref = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(target.pod.clone()),
            namespace: failure.model.namespace.clone(),
            uid: Some(target.pod_uid.clone()),
            ..ObjectReference::default()
        };
        self.publish(
            Event {
                type_: EventType::Warning,
                reason: "AttestationFailed".to_owned(),
                note: Some(note),
                action: "Attest".to_owned(),
                secondary: Some(pod_ref.clone()),
            },
            &failure.reference,
        )
        .await;
        if failure.deletion_deferred {
            self.publish(
                Event {
                    type_: EventType::Warning,
                    reason: "PodDeletionDeferred".to_owned(),
                    note: Some(truncate(format!(
                        "pod {} failed attestation ({}) but was not deleted: the controller's budget of pod deletions per minute is spent; it is retried at the next failure",
                        target.pod, failure.reason
                    ))),
                    action: "Delete".to_owned(),
                    secondary: Some(pod_ref.clone()),
                },
                &failure.reference,
            )
            .await;
        }
        if !failure.delete_pod {
            return;
        }
        let Some(namespace) = failure.model.namespace.as_deref() else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // The UID precondition makes sure only the pod that failed goes. No
        // drain: its evidence was refused, so no client should be using it,
        // and its node (and TPM) is wanted for the replacement.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(target.pod_uid.clone()),
                resource_version: None,
            }),
            grace_period_seconds: Some(FAILED_POD_GRACE_SECONDS),
            ..DeleteParams::default()
        };
        match pods.delete(&target.pod, &params).await {
            Ok(_) => {
                self.metrics.pod_deleted();
                tracing::info!(pod = %target.pod, namespace, reason = failure.reason, "deleted pod that failed attestation");
                self.publish(
                    Event {
                        type_: EventType::Normal,
                        reason: "PodDeleted".to_owned(),
                        note: Some(truncate(format!(
                            "deleted pod {} so that it is rescheduled after failing attestation ({})",
                            target.pod, failure.reason
                        ))),
                        action: "Delete".to_owned(),
                        secondary: Some(pod_ref),
                    },
                    &failure.reference,
                )
                .await;
            }
            // Already gone or replaced: nothing to do.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %target.pod, namespace, error = %e, "cannot delete pod that failed attestation");
            }
        }
    }

    async fn publish(&self, event: Event, regarding: &ObjectReference) {
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason = %event.reason, error = %e, "cannot publish event");
        }
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        let short = truncate("boot-pcr".to_owned());
        assert_eq!(short, "boot-pcr");
        let long = truncate("é".repeat(1000));
        assert!(long.len() <= MAX_NOTE);
        assert!(long.ends_with("..."));
    }
}
