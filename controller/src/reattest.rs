//! Continuous re-attestation: every ready endpoint of every model is
//! attested again at its policy's interval, with jitter, never more than a
//! bounded number at once.
//!
//! The loop only reads an [`EndpointSource`], calls an [`EndpointAttester`]
//! and records outcomes in the [`ResultStore`]. What follows from an outcome
//! in the cluster (status write, Event, pod deletion) is announced on a
//! channel as an [`AttestationEvent`], so the loop runs without an API
//! server in tests and benchmarks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aver_verifier::ValidatedPolicy;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::attestation::{AttestError, AttestTarget, AttestedEndpoint, EndpointAttester};
use crate::config::ReattestConfig;
use crate::metrics::Metrics;
use crate::results::{ModelKey, ResultStore};
use crate::source::{EndpointSource, ModelTargets};

/// How often due attestations are started and changes announced, besides
/// whenever an attestation finishes.
const DISPATCH_TICK: Duration = Duration::from_millis(100);

/// What the cluster should learn from the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum AttestationEvent {
    /// The model's status should be recomputed (an endpoint appeared,
    /// changed, failed or went away).
    Changed(ModelKey),
    /// An endpoint failed attestation.
    Failed(Box<Failure>),
}

/// One failed attestation.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The model the endpoint serves.
    pub model: ModelKey,
    /// The model resource, for the Event.
    pub reference: ObjectReference,
    /// The pod whose endpoint failed.
    pub target: AttestTarget,
    /// Stable label of the failure, e.g. "boot-pcr", "unreachable".
    pub reason: &'static str,
    /// What went wrong, for the Event note and logs.
    pub message: String,
    /// Failures of this endpoint in a row.
    pub consecutive: u32,
    /// Whether the pod should be deleted so that it is rescheduled: only
    /// for a rejection (evidence refused, or an answer no honest enclave
    /// gives), never for unavailability (unreachable, timeouts, 429/503:
    /// load and network failures prove nothing), never if pod deletion is
    /// disabled, and only within the fleet-wide deletion budget.
    pub delete_pod: bool,
    /// The pod would have been deleted, but the fleet-wide budget of
    /// deletions per minute is spent; it is retried at its next failure.
    pub deletion_deferred: bool,
}

/// The fleet-wide cap on pod deletions: a token bucket holding
/// `per_minute` deletions, refilled continuously. A bad policy rollout or a
/// verifier bug makes every endpoint fail at once; the cap turns that into
/// a slow trickle an operator can stop, instead of deleting every GPU pod.
#[derive(Debug)]
struct DeletionBudget {
    per_minute: u32,
    tokens: f64,
    updated: Instant,
}

impl DeletionBudget {
    fn new(per_minute: u32, now: Instant) -> Self {
        Self {
            per_minute,
            tokens: f64::from(per_minute),
            updated: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let cap = f64::from(self.per_minute);
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-model settings the loop keeps between refreshes.
struct ModelEntry {
    reference: ObjectReference,
    policy: Arc<ValidatedPolicy>,
    interval: Duration,
}

/// One endpoint's schedule.
struct Scheduled {
    model: ModelKey,
    target: AttestTarget,
    next_due: Instant,
    /// Bumped whenever `next_due` changes; older heap entries are stale.
    version: u64,
    in_flight: bool,
}

/// Identifies a target across refreshes: its model and pod UID.
type TargetKey = (ModelKey, String);

/// Entry of the due-time heap: (due, target id, schedule version).
type HeapEntry = Reverse<(Instant, u64, u64)>;

/// Result of one attestation task.
struct Done {
    id: u64,
    target: AttestTarget,
    policy: Arc<ValidatedPolicy>,
    started: Instant,
    took: Duration,
    result: Result<AttestedEndpoint, AttestError>,
}

/// The re-attestation loop. Build it, then [`Reattester::run`] it.
///
/// Targets get numeric ids and their due times live in a min-heap, so
/// starting the next due attestation costs O(log n), not a scan of every
/// endpoint: with 10,000 endpoints the loop's own work stays a small
/// fraction of an attestation's.
pub struct Reattester<S, A> {
    source: S,
    attester: Arc<A>,
    store: ResultStore,
    config: ReattestConfig,
    metrics: Metrics,
    events: mpsc::UnboundedSender<AttestationEvent>,
    models: HashMap<ModelKey, ModelEntry>,
    ids: HashMap<TargetKey, u64>,
    schedule: HashMap<u64, Scheduled>,
    due: BinaryHeap<HeapEntry>,
    next_id: u64,
    dirty: HashSet<ModelKey>,
    deletions: DeletionBudget,
}

impl<S: EndpointSource, A: EndpointAttester> Reattester<S, A> {
    /// A loop with nothing scheduled: it learns its targets from `source`,
    /// records outcomes in `store` and announces them on `events`.
    pub fn new(
        source: S,
        attester: Arc<A>,
        store: ResultStore,
        config: ReattestConfig,
        metrics: Metrics,
        events: mpsc::UnboundedSender<AttestationEvent>,
    ) -> Self {
        let deletions = DeletionBudget::new(config.max_pod_deletions_per_minute, Instant::now());
        Self {
            deletions,
            source,
            attester,
            store,
            config,
            metrics,
            events,
            models: HashMap::new(),
            ids: HashMap::new(),
            schedule: HashMap::new(),
            due: BinaryHeap::new(),
            next_id: 0,
            dirty: HashSet::new(),
        }
    }

    /// Runs until `shutdown` completes; attestations still running then are
    /// abandoned (they only read).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut refresh = tokio::time::interval(self.config.refresh);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dispatch = tokio::time::interval(DISPATCH_TICK);
        dispatch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut running: JoinSet<Done> = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    match joined {
                        Ok(done) => self.finish(done),
                        Err(e) => tracing::error!(error = %e, "attestation task failed"),
                    }
                    self.start_due(&mut running);
                }
                _ = refresh.tick() => {
                    self.refresh().await;
                    self.start_due(&mut running);
                    self.announce();
                }
                _ = dispatch.tick() => {
                    self.start_due(&mut running);
                    self.announce();
                }
            }
        }
        running.abort_all();
        self.metrics.set_in_flight(0);
    }

    /// Sets a target's next due time.
    fn reschedule(&mut self, id: u64, at: Instant) {
        if let Some(scheduled) = self.schedule.get_mut(&id) {
            scheduled.next_due = at;
            scheduled.version += 1;
            self.due.push(Reverse((at, id, scheduled.version)));
        }
    }

    /// Re-reads the source: new targets are scheduled soon, vanished ones
    /// forgotten, and a model whose policy changed is re-attested at once.
    async fn refresh(&mut self) {
        let models = self.source.models().await;
        let now = Instant::now();
        let mut live_models = HashSet::with_capacity(models.len());
        let mut live_ids: HashSet<u64> = HashSet::with_capacity(self.schedule.len());
        for ModelTargets {
            key,
            reference,
            policy,
            interval,
            max_age: _,
            targets,
        } in models
        {
            live_models.insert(key.clone());
            if self.store.sync_targets(&key, &targets) {
                self.dirty.insert(key.clone());
            }
            let policy_changed = self
                .models
                .get(&key)
                .is_some_and(|entry| *entry.policy != *policy);
            self.models.insert(
                key.clone(),
                ModelEntry {
                    reference,
                    policy,
                    interval,
                },
            );
            if policy_changed {
                // Verifications under the old policy no longer count.
                self.dirty.insert(key.clone());
            }
            for target in targets {
                let target_key = (key.clone(), target.pod_uid.clone());
                let id = match self.ids.get(&target_key) {
                    Some(id) => *id,
                    None => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.ids.insert(target_key, id);
                        self.schedule.insert(
                            id,
                            Scheduled {
                                model: key.clone(),
                                target: target.clone(),
                                next_due: now,
                                version: 0,
                                in_flight: false,
                            },
                        );
                        let first = now + self.initial_delay(interval);
                        self.reschedule(id, first);
                        id
                    }
                };
                live_ids.insert(id);
                let moved = self.schedule.get_mut(&id).is_some_and(|s| {
                    let moved = s.target != target;
                    if moved {
                        s.target = target;
                    }
                    moved
                });
                if moved || policy_changed {
                    self.reschedule(id, now);
                }
            }
        }
        self.schedule.retain(|id, _| live_ids.contains(id));
        self.ids.retain(|_, id| live_ids.contains(id));
        if self.due.len() > 4 * self.schedule.len() + 1024 {
            // Drop stale heap entries left by rescheduling and removals.
            let schedule = &self.schedule;
            self.due
                .retain(|Reverse((_, id, v))| schedule.get(id).is_some_and(|s| s.version == *v));
        }
        self.models.retain(|key, _| live_models.contains(key));
        for gone in self.store.retain_models(&live_models) {
            self.dirty.insert(gone);
        }
        self.metrics
            .set_verified_endpoints(self.store.verified_count());
    }

    /// New endpoints are spread over the first `jitter × interval`, so a
    /// controller start does not attest everything in the same instant.
    fn initial_delay(&self, interval: Duration) -> Duration {
        interval.mul_f64(self.config.jitter * rand::thread_rng().gen::<f64>())
    }

    /// The time from one attestation's start to the next: the interval,
    /// shortened by up to `jitter` of it, so endpoints drift apart instead
    /// of being attested in lockstep, and never later than the interval.
    fn next_delay(&self, interval: Duration) -> Duration {
        let shortening = self.config.jitter * rand::thread_rng().gen::<f64>();
        interval.mul_f64(1.0 - shortening)
    }

    /// Starts the most overdue attestations, up to the concurrency limit.
    fn start_due(&mut self, running: &mut JoinSet<Done>) {
        let now = Instant::now();
        while running.len() < self.config.concurrency {
            let Some(Reverse((at, id, version))) = self.due.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.pop();
            let Some(scheduled) = self.schedule.get_mut(&id) else {
                continue; // removed target
            };
            if scheduled.version != version || scheduled.in_flight {
                continue; // stale entry
            }
            let Some(model) = self.models.get(&scheduled.model) else {
                continue;
            };
            scheduled.in_flight = true;
            let target = scheduled.target.clone();
            let policy = Arc::clone(&model.policy);
            let attester = Arc::clone(&self.attester);
            let limit = self.config.timeout.min(model.interval);
            running.spawn(async move {
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(limit, attester.attest(&target, &policy)).await {
                        Ok(result) => result,
                        Err(_) => Err(AttestError::Timeout(limit)),
                    };
                Done {
                    id,
                    target,
                    policy,
                    started,
                    took: started.elapsed(),
                    result,
                }
            });
        }
        self.metrics.set_in_flight(running.len());
    }

    /// Records an outcome and schedules the endpoint's next attestation.
    fn finish(&mut self, done: Done) {
        let Done {
            id,
            target,
            policy,
            started,
            took,
            result,
        } = done;
        self.metrics
            .attested(result.as_ref().err().map(AttestError::reason), took);
        let Some(scheduled) = self.schedule.get_mut(&id) else {
            // The target went away while it was being attested.
            return;
        };
        scheduled.in_flight = false;
        let model = scheduled.model.clone();
        if scheduled.target != target {
            // Superseded (new address): attest the new one now.
            self.reschedule(id, Instant::now());
            return;
        }
        let Some(interval) = self.models.get(&model).map(|m| m.interval) else {
            return;
        };
        let next = started + self.next_delay(interval);
        self.reschedule(id, next);
        if let Some(current) = self.models.get(&model) {
            if *current.policy != *policy {
                // Verified under a policy that has since changed: the
                // outcome does not count; the target is due again already.
                self.reschedule(id, Instant::now());
                return;
            }
        }
        let now = Timestamp::now();
        match result {
            Ok(endpoint) => {
                tracing::debug!(model = %model, pod = %target.pod, "endpoint verified");
                if self
                    .store
                    .record_success(&model, &target, endpoint, &policy, now)
                {
                    self.dirty.insert(model);
                }
            }
            Err(error) => {
                let reason = error.reason();
                let message = error.to_string();
                let consecutive = self
                    .store
                    .record_failure(&model, &target, reason, &message, now);
                tracing::warn!(
                    model = %model, pod = %target.pod, node = %target.node,
                    reason, consecutive, error = %message,
                    "endpoint failed attestation"
                );
                let wants_deletion = self.config.delete_failed_pods && error.is_rejection();
                let delete_pod = wants_deletion && self.deletions.take(Instant::now());
                let deletion_deferred = wants_deletion && !delete_pod;
                if deletion_deferred {
                    tracing::warn!(
                        model = %model, pod = %target.pod,
                        per_minute = self.config.max_pod_deletions_per_minute,
                        "pod deletion deferred: the fleet-wide deletion budget is spent"
                    );
                }
                let reference = self
                    .models
                    .get(&model)
                    .map(|m| m.reference.clone())
                    .unwrap_or_default();
                self.dirty.insert(model.clone());
                // A closed channel means the controller is shutting down.
                let _ = self.events.send(AttestationEvent::Failed(Box::new(Failure {
                    model,
                    reference,
                    target,
                    reason,
                    message,
                    consecutive,
                    delete_pod,
                    deletion_deferred,
                })));
            }
        }
    }

    /// Announces every model whose status should be recomputed, once.
    fn announce(&mut self) {
        for model in std::mem::take(&mut self.dirty) {
            let _ = self.events.send(AttestationEvent::Changed(model));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use aver_verifier::VerifyError;
    use kube::runtime::reflector::ObjectRef;

    use super::*;
    use crate::results::tests::{attested, policy, target};
    use crate::source::StaticSource;

    /// Scripted outcomes per pod; records calls and the peak concurrency.
    #[derive(Default)]
    struct ScriptedAttester {
        /// Pods whose evidence is refused from now on.
        rejected: Mutex<HashSet<String>>,
        /// Pods that do not answer.
        unreachable: Mutex<HashSet<String>>,
        calls: Mutex<Vec<(String, tokio::time::Instant)>>,
        running: AtomicUsize,
        peak: AtomicUsize,
        delay: Duration,
    }

    impl EndpointAttester for ScriptedAttester {
        async fn attest(
            &self,
            target: &AttestTarget,
            _policy: &ValidatedPolicy,
        ) -> Result<AttestedEndpoint, AttestError> {
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now_running, Ordering::SeqCst);
            self.calls
                .lock()
                .expect("lock")
                .push((target.pod.clone(), tokio::time::Instant::now()));
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.rejected.lock().expect("lock").contains(&target.pod) {
                return Err(AttestError::Rejected(VerifyError::BootPcrMismatch {
                    pcr: 9,
                    value: aver_crds::Sha256Digest([9; 32]),
                }));
            }
            if self.unreachable.lock().expect("lock").contains(&target.pod) {
                return Err(AttestError::Unavailable {
                    reason: "unreachable",
                    message: "connection refused".into(),
                });
            }
            Ok(attested(1))
        }
    }

    fn key() -> ModelKey {
        ObjectRef::new("llama").within("ml")
    }

    fn model(pods: &[&str], interval: Duration) -> ModelTargets {
        ModelTargets {
            key: key(),
            reference: ObjectReference {
                kind: Some("ConfidentialModel".into()),
                name: Some("llama".into()),
                namespace: Some("ml".into()),
                ..ObjectReference::default()
            },
            policy: policy(),
            interval,
            max_age: interval * 10,
            targets: pods.iter().map(|p| target(p)).collect(),
        }
    }

    struct Harness {
        store: ResultStore,
        metrics: Metrics,
        events: mpsc::UnboundedReceiver<AttestationEvent>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(
        source: StaticSource,
        attester: Arc<ScriptedAttester>,
        config: ReattestConfig,
    ) -> Harness {
        let store = ResultStore::new();
        let metrics = Metrics::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let reattester =
            Reattester::new(source, attester, store.clone(), config, metrics.clone(), tx);
        let task = tokio::spawn(reattester.run(async {
            let _ = stopped.await;
        }));
        Harness {
            store,
            metrics,
            events: rx,
            stop: Some(stop),
            task,
        }
    }

    impl Harness {
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let _ = self.task.await;
        }

        fn drain(&mut self) -> Vec<AttestationEvent> {
            let mut out = Vec::new();
            while let Ok(event) = self.events.try_recv() {
                out.push(event);
            }
            out
        }
    }

    fn config() -> ReattestConfig {
        ReattestConfig {
            concurrency: 4,
            timeout: Duration::from_secs(2),
            jitter: 0.1,
            refresh: Duration::from_millis(500),
            delete_failed_pods: true,
            max_pod_deletions_per_minute: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_endpoint_is_reattested_at_the_interval() {
        let interval = Duration::from_secs(10);
        let attester = Arc::new(ScriptedAttester::default());
        let source = StaticSource::new(vec![model(&["a", "b", "c"], interval)]);
        let mut h = start(source, Arc::clone(&attester), config());

        // The first attestations (within jitter × interval) list the endpoints.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(h.drain().contains(&AttestationEvent::Changed(key())));
        assert_eq!(h.store.verified_count(), 3);

        tokio::time::sleep(Duration::from_secs(59)).await;
        let calls = attester.calls.lock().expect("lock").clone();
        for pod in ["a", "b", "c"] {
            let times: Vec<_> = calls
                .iter()
                .filter(|(p, _)| p == pod)
                .map(|(_, t)| *t)
                .collect();
            // First within 1 s of the start, then every 9..=10 s: 6 or 7 in 61 s.
            assert!(
                (6..=7).contains(&times.len()),
                "{pod}: {} attestations",
                times.len()
            );
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    gap >= Duration::from_secs(9) && gap <= interval + Duration::from_millis(150),
                    "{pod}: gap {gap:?}"
                );
            }
        }
        assert_eq!(h.store.verified_count(), 3);
        assert!(
            h.drain().is_empty(),
            "re-verification alone announces nothing"
        );
        assert_eq!(
            h.metrics.attestation_count("verified") as usize,
            calls.len()
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let interval = Duration::from_secs(30);
        let attester = Arc::new(ScriptedAttester {
            delay: Duration::from_millis(500),
            ..ScriptedAttester::default()
        });
        let pods: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
        let source = StaticSource::new(vec![model(&pods, interval)]);
        let h = start(source, Arc::clone(&attester), config());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(attester.peak.load(Ordering::SeqCst), 4);
        assert_eq!(
            h.store.verified_count(),
            40,
            "all attested despite the limit"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_endpoint_is_dropped_and_its_pod_marked_for_deletion() {
        let interval = Duration::from_secs(10);
        let attester = Arc::new(ScriptedAttester::default());
        let source = StaticSource::new(vec![model(&["a", "b"], interval)]);
        let mut h = start(source, Arc::clone(&attester), config());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(h.store.verified_count(), 2);
        h.drain();

        attester.rejected.lock().expect("lock").insert("a".into());
        // Within one interval the failure is recorded and announced.
        tokio::time::sleep(interval).await;
        let events = h.drain();
        let failure = events
            .iter()
            .find_map(|e| match e {
                AttestationEvent::Failed(f) => Some((**f).clone()),
                AttestationEvent::Changed(_) => None,
            })
            .expect("failure announced");
        assert_eq!(
            (failure.target.pod.as_str(), failure.reason),
            ("a", "boot-pcr")
        );
        assert!(failure.delete_pod, "rejections delete the pod at once");
        assert_eq!(failure.reference.name.as_deref(), Some("llama"));
        assert!(events.contains(&AttestationEvent::Changed(key())));
        assert_eq!(h.store.verified_count(), 1);
        assert_eq!(h.metrics.attestation_count("boot-pcr"), 1);
        h.stop().await;
    }

    fn failures(events: Vec<AttestationEvent>) -> Vec<Failure> {
        events
            .into_iter()
            .filter_map(|e| match e {
                AttestationEvent::Failed(f) => Some(*f),
                AttestationEvent::Changed(_) => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_pods_are_never_deleted() {
        let interval = Duration::from_secs(10);
        let attester = Arc::new(ScriptedAttester::default());
        attester
            .unreachable
            .lock()
            .expect("lock")
            .insert("a".into());
        let source = StaticSource::new(vec![model(&["a"], interval)]);
        let mut h = start(source, Arc::clone(&attester), config());
        tokio::time::sleep(Duration::from_secs(55)).await;
        let flags: Vec<(u32, bool, bool)> = failures(h.drain())
            .iter()
            .map(|f| (f.consecutive, f.delete_pod, f.deletion_deferred))
            .collect();
        assert_eq!(
            flags,
            (1..=6).map(|n| (n, false, false)).collect::<Vec<_>>(),
            "unreachable six times in a row, and never deleted"
        );
        assert_eq!(h.store.verified_count(), 0, "nor shown as verified");
        h.stop().await;

        let mut no_delete = config();
        no_delete.delete_failed_pods = false;
        attester.rejected.lock().expect("lock").insert("a".into());
        let source = StaticSource::new(vec![model(&["a"], interval)]);
        let mut h = start(source, Arc::clone(&attester), no_delete);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(failures(h.drain()).iter().all(|f| !f.delete_pod));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn deletions_are_capped_fleet_wide_and_deferred_ones_retried() {
        let interval = Duration::from_secs(10);
        let attester = Arc::new(ScriptedAttester::default());
        let pods: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = pods.iter().map(String::as_str).collect();
        attester
            .rejected
            .lock()
            .expect("lock")
            .extend(pods.iter().cloned());
        let source = StaticSource::new(vec![model(&names, interval)]);
        let mut capped = config();
        capped.max_pod_deletions_per_minute = 3;
        let mut h = start(source, Arc::clone(&attester), capped);
        // The first round: every pod is refused, three may go.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let first = failures(h.drain());
        assert_eq!(first.len(), 8);
        assert_eq!(first.iter().filter(|f| f.delete_pod).count(), 3);
        assert!(first.iter().all(|f| f.delete_pod != f.deletion_deferred));
        // Over the next two minutes the budget refills by six, no more: the
        // deferred pods are retried as they fail again.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let later = failures(h.drain());
        let deleted = later.iter().filter(|f| f.delete_pod).count();
        assert!(
            (4..=7).contains(&deleted),
            "{deleted} deleted in two minutes"
        );
        assert!(later.iter().any(|f| f.deletion_deferred));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn vanished_pods_and_models_are_forgotten_and_policy_changes_reattest() {
        let interval = Duration::from_secs(30);
        let attester = Arc::new(ScriptedAttester::default());
        let source = StaticSource::new(vec![model(&["a", "b"], interval)]);
        let mut h = start(source.clone(), Arc::clone(&attester), config());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(h.store.verified_count(), 2);
        h.drain();

        source.set(vec![model(&["b"], interval)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.store.verified_count(), 1);
        assert_eq!(h.drain(), [AttestationEvent::Changed(key())]);

        // A new policy: b is attested again right away, not 30 s later.
        let calls_before = attester.calls.lock().expect("lock").len();
        let mut changed = model(&["b"], interval);
        let mut new_policy = changed.policy.policy().clone();
        new_policy
            .allowed
            .model_digests
            .push(aver_crds::Sha256Digest([7; 32]));
        changed.policy = Arc::new(ValidatedPolicy::new(new_policy).expect("valid"));
        source.set(vec![changed]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(attester.calls.lock().expect("lock").len(), calls_before + 1);

        source.set(vec![]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.store.verified_count(), 0);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_endpoint_times_out() {
        let interval = Duration::from_secs(10);
        let attester = Arc::new(ScriptedAttester {
            delay: Duration::from_secs(3600),
            ..ScriptedAttester::default()
        });
        let source = StaticSource::new(vec![model(&["a"], interval)]);
        let mut h = start(source, attester, config());
        tokio::time::sleep(Duration::from_secs(4)).await;
        let reasons: Vec<&str> = h
            .drain()
            .iter()
            .filter_map(|e| match e {
                AttestationEvent::Failed(f) => Some(f.reason),
                AttestationEvent::Changed(_) => None,
            })
            .collect();
        assert_eq!(reasons, ["timeout"]);
        h.stop().await;
    }
}
