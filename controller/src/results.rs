//! The latest attestation outcome of every endpoint, shared by the
//! re-attestation loop (which writes it) and the reconciler (which turns it
//! into status). In memory only: after a restart or a leader change every
//! endpoint is attested afresh at once. Until its first attempt ends, an
//! endpoint the previous controller published stays listed as it was
//! (see [`crate::status`]), so a controller restart does not empty
//! `status.endpoints`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aver_crds::{AttestationPolicy, ConfidentialModel};
use aver_verifier::ValidatedPolicy;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::attestation::{AttestTarget, AttestedEndpoint};

/// Identifies a `ConfidentialModel` (namespace and name).
pub type ModelKey = ObjectRef<ConfidentialModel>;

/// Most failure records kept per model, so that a crash-looping model cannot
/// grow memory without bound.
const MAX_FAILURES_PER_MODEL: usize = 64;

/// Failure records older than this are dropped even if status never asked.
const FAILURE_RETENTION: Duration = Duration::from_secs(3600);

/// Outcomes of all models' endpoints. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ResultStore {
    inner: Arc<Mutex<HashMap<ModelKey, ModelResults>>>,
}

/// Outcomes of one model's endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelResults {
    /// Current targets by pod name.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Recent failures, newest last, one per pod.
    pub failures: Vec<FailureRecord>,
    /// Whether the re-attestation loop has listed the model's targets since
    /// this controller started: until then nothing here says which
    /// published endpoints still exist.
    pub tracked: bool,
}

/// One target and its latest outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    /// The pod to attest and where to reach it, as last listed.
    pub target: AttestTarget,
    /// The last successful attestation, if any.
    pub verified: Option<Verification>,
    /// Failures since the last success; 0 if the latest attempt succeeded.
    pub consecutive_failures: u32,
}

impl EndpointRecord {
    fn pending(target: &AttestTarget) -> Self {
        Self {
            target: target.clone(),
            verified: None,
            consecutive_failures: 0,
        }
    }

    /// No attempt has ended since this controller started.
    pub fn is_pending(&self) -> bool {
        self.verified.is_none() && self.consecutive_failures == 0
    }
}

/// A successful attestation, when it completed, and the policy it passed:
/// after a policy change, endpoints verified under the old policy are not
/// listed until they pass the new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// What the endpoint presented (certificate, SPKI pin, measurements).
    pub endpoint: AttestedEndpoint,
    /// When the attestation completed; status lists it until `max_age` after.
    pub at: Timestamp,
    /// The policy it passed; compared with the model's current one.
    pub policy: Arc<ValidatedPolicy>,
}

/// A failed attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// The pod whose endpoint failed; a later failure replaces its record.
    pub pod: String,
    /// The node the pod ran on.
    pub node: String,
    /// Stable label of the failure, e.g. "boot-pcr", "unreachable".
    pub reason: String,
    /// What went wrong, as the attester reported it.
    pub message: String,
    /// When the attempt failed; records older than an hour are dropped.
    pub at: Timestamp,
}

impl EndpointRecord {
    /// Whether the endpoint may be listed in status at `now`: its latest
    /// attempt succeeded, within `max_age`, under `policy`.
    pub fn listable(
        &self,
        now: Timestamp,
        max_age: Duration,
        policy: &AttestationPolicy,
    ) -> Option<&Verification> {
        self.verified.as_ref().filter(|v| {
            self.consecutive_failures == 0
                && age(now, v.at) <= max_age
                && v.policy.policy() == policy
        })
    }
}

/// Non-negative time from `then` to `now`.
pub fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

impl ResultStore {
    /// An empty store; clones share it.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ModelKey, ModelResults>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a success. Returns whether status must change for it: a new
    /// or recovered endpoint, or a different certificate, measurements or
    /// address. A plain re-verification returns false (status refreshes
    /// `lastAttested` on its own schedule).
    pub fn record_success(
        &self,
        model: &ModelKey,
        target: &AttestTarget,
        endpoint: AttestedEndpoint,
        policy: &Arc<ValidatedPolicy>,
        at: Timestamp,
    ) -> bool {
        let mut all = self.lock();
        let results = all.entry(model.clone()).or_default();
        let record = results.record_for(target);
        let changed = record.consecutive_failures > 0
            || record
                .verified
                .as_ref()
                .is_none_or(|v| v.endpoint != endpoint || *v.policy != **policy);
        record.verified = Some(Verification {
            endpoint,
            at,
            policy: Arc::clone(policy),
        });
        record.consecutive_failures = 0;
        changed
    }

    /// Records a failure and returns the number of failures in a row.
    pub fn record_failure(
        &self,
        model: &ModelKey,
        target: &AttestTarget,
        reason: &str,
        message: &str,
        at: Timestamp,
    ) -> u32 {
        let mut all = self.lock();
        let results = all.entry(model.clone()).or_default();
        let record = results.record_for(target);
        record.consecutive_failures = record.consecutive_failures.saturating_add(1);
        let count = record.consecutive_failures;
        results.failures.retain(|f| f.pod != target.pod);
        results.failures.push(FailureRecord {
            pod: target.pod.clone(),
            node: target.node.clone(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            at,
        });
        if results.failures.len() > MAX_FAILURES_PER_MODEL {
            let excess = results.failures.len() - MAX_FAILURES_PER_MODEL;
            results.failures.drain(..excess);
        }
        results
            .failures
            .retain(|f| age(at, f.at) <= FAILURE_RETENTION);
        count
    }

    /// Brings the model's records in line with its current targets: pods
    /// that are no longer targets (deleted, not ready, replaced) are
    /// forgotten, a target without a record gets a pending one, and the
    /// model is tracked from now on. Returns whether status must be
    /// recomputed: a listable endpoint was dropped, or this is the model's
    /// first listing (published endpoints that are no longer targets go).
    pub fn sync_targets(&self, model: &ModelKey, targets: &[AttestTarget]) -> bool {
        let mut all = self.lock();
        let results = all.entry(model.clone()).or_default();
        let live: HashSet<(&str, &str)> = targets
            .iter()
            .map(|t| (t.pod.as_str(), t.pod_uid.as_str()))
            .collect();
        let mut changed = !results.tracked;
        results.tracked = true;
        results.endpoints.retain(|_, record| {
            let keep = live.contains(&(record.target.pod.as_str(), record.target.pod_uid.as_str()));
            if !keep && record.verified.is_some() && record.consecutive_failures == 0 {
                changed = true;
            }
            keep
        });
        for target in targets {
            if !results.endpoints.contains_key(&target.pod) {
                results
                    .endpoints
                    .insert(target.pod.clone(), EndpointRecord::pending(target));
            }
        }
        changed
    }

    /// Forgets every model not in `models`.
    pub fn retain_models(&self, models: &HashSet<ModelKey>) -> Vec<ModelKey> {
        let mut all = self.lock();
        let gone: Vec<ModelKey> = all
            .keys()
            .filter(|k| !models.contains(k))
            .cloned()
            .collect();
        for key in &gone {
            all.remove(key);
        }
        gone
    }

    /// Forgets a model (deleted).
    pub fn remove_model(&self, model: &ModelKey) {
        self.lock().remove(model);
    }

    /// A copy of one model's outcomes.
    pub fn snapshot(&self, model: &ModelKey) -> ModelResults {
        self.lock().get(model).cloned().unwrap_or_default()
    }

    /// Number of endpoints whose latest attempt succeeded, across models.
    pub fn verified_count(&self) -> usize {
        self.lock()
            .values()
            .flat_map(|r| r.endpoints.values())
            .filter(|r| r.verified.is_some() && r.consecutive_failures == 0)
            .count()
    }
}

impl ModelResults {
    /// The record of a target, replacing one of an older pod of that name.
    fn record_for(&mut self, target: &AttestTarget) -> &mut EndpointRecord {
        let record = self
            .endpoints
            .entry(target.pod.clone())
            .or_insert_with(|| EndpointRecord::pending(target));
        if record.target.pod_uid != target.pod_uid {
            *record = EndpointRecord::pending(target);
        } else if record.target != *target {
            // Same pod, new address or node (rare): a new identity for status.
            record.target = target.clone();
            record.verified = None;
        }
        record
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aver_crds::{BootPolicyResult, EndpointMeasurements, Sha256Digest};

    pub(crate) fn target(pod: &str) -> AttestTarget {
        AttestTarget {
            pod: pod.into(),
            pod_uid: format!("{pod}-uid"),
            node: format!("node-{pod}"),
            address: "10.0.0.1".into(),
            port: 8443,
        }
    }

    pub(crate) fn attested(byte: u8) -> AttestedEndpoint {
        AttestedEndpoint {
            certificate_der: vec![byte; 40],
            spki_sha256: Sha256Digest([byte; 32]),
            measurements: EndpointMeasurements {
                model: Sha256Digest([2; 32]),
                engine: Some(Sha256Digest([1; 32])),
                serving_config: Some(Sha256Digest([3; 32])),
                ak_name: format!("000b{}", "cd".repeat(32)),
                boot_policy: BootPolicyResult {
                    result: "Passed".into(),
                    checked_pcrs: vec![9],
                    proven: vec![],
                },
                ak_activation: None,
            },
        }
    }

    pub(crate) fn policy() -> Arc<ValidatedPolicy> {
        Arc::new(
            ValidatedPolicy::new(crate::workload::tests::model("llama").spec.attestation).unwrap(),
        )
    }

    fn key() -> ModelKey {
        ObjectRef::new("llama").within("ml")
    }

    #[test]
    fn success_reports_only_status_relevant_changes() {
        let store = ResultStore::new();
        let t0 = Timestamp::from_second(1_000).expect("time");
        let t1 = Timestamp::from_second(1_030).expect("time");
        assert!(store.record_success(&key(), &target("a"), attested(1), &policy(), t0));
        assert!(
            !store.record_success(&key(), &target("a"), attested(1), &policy(), t1),
            "same cert: refresh only"
        );
        assert!(
            store.record_success(&key(), &target("a"), attested(2), &policy(), t1),
            "new cert"
        );
        assert_eq!(
            store.record_failure(&key(), &target("a"), "boot-pcr", "bad", t1),
            1
        );
        assert_eq!(
            store.record_failure(&key(), &target("a"), "boot-pcr", "bad", t1),
            2
        );
        assert!(
            store.record_success(&key(), &target("a"), attested(2), &policy(), t1),
            "recovered"
        );
        let snap = store.snapshot(&key());
        assert_eq!(snap.endpoints["a"].consecutive_failures, 0);
        assert_eq!(snap.failures.len(), 1, "one failure record per pod");
    }

    #[test]
    fn replaced_pods_and_vanished_targets_are_forgotten() {
        let store = ResultStore::new();
        let t0 = Timestamp::from_second(1_000).expect("time");
        store.record_success(&key(), &target("a"), attested(1), &policy(), t0);
        store.record_success(&key(), &target("b"), attested(1), &policy(), t0);
        assert_eq!(store.verified_count(), 2);

        assert!(
            store.sync_targets(&key(), &[target("a"), target("b")]),
            "the first listing"
        );
        assert!(!store.sync_targets(&key(), &[target("a"), target("b")]));
        let mut replacement = target("a");
        replacement.pod_uid = "new".into();
        assert!(store.sync_targets(&key(), &[replacement.clone(), target("b")]));
        assert_eq!(store.verified_count(), 1);
        assert!(!store.sync_targets(&key(), &[replacement, target("b")]));

        let listable = store.snapshot(&key()).endpoints["b"].clone();
        let later = Timestamp::from_second(1_000 + 301).expect("time");
        let max_age = Duration::from_secs(300);
        assert!(listable.listable(t0, max_age, policy().policy()).is_some());
        assert!(listable
            .listable(later, max_age, policy().policy())
            .is_none());
        let mut other = policy().policy().clone();
        other
            .allowed
            .model_digests
            .push(aver_crds::Sha256Digest([9; 32]));
        assert!(
            listable.listable(t0, max_age, &other).is_none(),
            "verified under an older policy"
        );

        store.retain_models(&HashSet::new());
        assert_eq!(store.snapshot(&key()), ModelResults::default());
    }

    #[test]
    fn tracked_targets_are_pending_until_an_attempt_ends() {
        let store = ResultStore::new();
        assert!(!store.snapshot(&key()).tracked);
        let t0 = Timestamp::from_second(1_000).expect("time");
        store.record_success(&key(), &target("a"), attested(1), &policy(), t0);
        store.sync_targets(&key(), &[target("a"), target("b")]);
        let snapshot = store.snapshot(&key());
        assert!(snapshot.tracked);
        assert!(!snapshot.endpoints["a"].is_pending(), "an outcome is kept");
        assert!(snapshot.endpoints["b"].is_pending());
        assert_eq!(store.verified_count(), 1, "pending is not verified");
        // A new pod of the same name starts pending again.
        let mut replaced = target("a");
        replaced.pod_uid = "a-uid-2".into();
        store.sync_targets(&key(), &[replaced, target("b")]);
        assert!(store.snapshot(&key()).endpoints["a"].is_pending());
        store.record_failure(&key(), &target("b"), "unreachable", "x", t0);
        assert!(!store.snapshot(&key()).endpoints["b"].is_pending());
    }
}
