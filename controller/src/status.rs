//! The status a `ConfidentialModel` should have, computed from what the
//! controller observed, and the decision whether it must be written.
//!
//! Pure functions of their inputs and the clock, so the same observations
//! always give the same status: the reconciler writes only when the result
//! differs from the stored status. Two rules keep writes rare even with
//! thousands of endpoints:
//!
//! - unchanged conditions keep their `lastTransitionTime`;
//! - an endpoint's `lastAttested` is rewritten only when the published value
//!   gets old (older than `maxEvidenceAge - 2 × interval`), not after every
//!   re-attestation. The published time is then a verification that did
//!   happen, just not always the latest one, and an endpoint never stays
//!   listed longer than `maxEvidenceAge` after its last success. Whenever a
//!   write happens anyway, every endpoint's latest time goes with it, so a
//!   model's published times come due together, in one write.

use std::time::Duration;

use aver_crds::confidential_model::{CONDITION_ATTESTED, CONDITION_DEGRADED, CONDITION_READY};
use aver_crds::{AttestationPolicy, ConfidentialModelStatus, ModelVolume, VerifiedEndpoint};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::results::{age, ModelResults};

/// Longest time between reconciles of a model when nothing happens.
pub const MAX_RECHECK: Duration = Duration::from_secs(300);
/// Shortest requeue, so that clock granularity cannot cause a busy loop.
const MIN_RECHECK: Duration = Duration::from_secs(1);

/// A problem with the resource itself that blocks serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase condition reason, e.g. "InvalidPolicy".
    pub reason: &'static str,
    /// Why, for the condition message.
    pub message: String,
}

/// Everything status is computed from.
#[derive(Debug, Clone)]
pub struct StatusInputs<'a> {
    /// `metadata.generation` of the resource.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// Ready pods of the workload, as the Deployment reports them.
    pub ready_replicas: i32,
    /// Attestation outcomes of the model's endpoints.
    pub results: &'a ModelResults,
    /// What stops the model from being served, if anything.
    pub problem: Option<Problem>,
    /// `spec.attestation.interval`.
    pub interval: Duration,
    /// `spec.attestation.maxEvidenceAge`.
    pub max_age: Duration,
    /// `spec.attestation`: only verifications under this policy count.
    pub policy: &'a AttestationPolicy,
    /// The model claim's volume, as resolved at this reconcile.
    pub model_volume: Option<ModelVolume>,
    /// The time status is computed at; ages and expiries count from it.
    pub now: Timestamp,
}

impl StatusInputs<'_> {
    /// How old a published `lastAttested` may get before it is rewritten:
    /// two intervals before it would expire, so a client reading status
    /// always sees at least that much validity left.
    fn refresh_after(&self) -> Duration {
        self.max_age.saturating_sub(self.interval * 2)
    }
}

/// The status the resource should have. `current` is its stored status,
/// whose transition times and recent `lastAttested` values are kept.
pub fn desired(
    current: Option<&ConfidentialModelStatus>,
    inputs: &StatusInputs<'_>,
) -> ConfidentialModelStatus {
    let kept = build(current, inputs, true);
    if !needs_write(current, &kept) {
        return kept;
    }
    // A write happens anyway: publish every endpoint's latest verification
    // time with it, so that the published times of a model stay together
    // and come due for refresh in one write, not one write per endpoint.
    build(current, inputs, false)
}

fn build(
    current: Option<&ConfidentialModelStatus>,
    inputs: &StatusInputs<'_>,
    keep_recent_times: bool,
) -> ConfidentialModelStatus {
    let now = inputs.now;
    let refresh_after = if keep_recent_times {
        inputs.refresh_after()
    } else {
        Duration::ZERO
    };
    let endpoints: Vec<VerifiedEndpoint> = inputs
        .results
        .endpoints
        .values()
        .filter_map(|record| {
            let verification = record.listable(now, inputs.max_age, inputs.policy)?;
            let target = &record.target;
            let attested = &verification.endpoint;
            let mut entry = VerifiedEndpoint {
                pod: target.pod.clone(),
                node: target.node.clone(),
                address: target.address.clone(),
                port: i32::from(target.port),
                certificate_pem: attested.certificate_pem(),
                spki_sha256: attested.spki_sha256,
                last_attested: Time(whole_seconds(verification.at)),
                measurements: attested.measurements.clone(),
            };
            // Keep a still-recent published time for the same endpoint.
            if let Some(published) = current
                .into_iter()
                .flat_map(|s| s.endpoints.iter())
                .find(|e| e.pod == entry.pod)
            {
                let same = VerifiedEndpoint {
                    last_attested: published.last_attested.clone(),
                    ..entry.clone()
                };
                if *published == same
                    && published.last_attested.0 <= entry.last_attested.0
                    && age(now, published.last_attested.0) < refresh_after
                {
                    entry = same;
                }
            }
            Some(entry)
        })
        .chain(carried_over(current, inputs))
        .collect();
    let mut endpoints = endpoints;
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));

    let attested = i32::try_from(endpoints.len()).unwrap_or(i32::MAX);
    let recent_failures: Vec<_> = inputs
        .results
        .failures
        .iter()
        .filter(|f| age(now, f.at) <= inputs.max_age)
        .collect();
    let failing_now = inputs
        .results
        .endpoints
        .values()
        .filter(|r| r.consecutive_failures > 0)
        .count();

    let (ready, ready_reason, ready_message) = match &inputs.problem {
        Some(problem) => (false, problem.reason, problem.message.clone()),
        None if inputs.replicas == 0 => (true, "ScaledToZero", "spec.replicas is 0".to_owned()),
        None if attested >= inputs.replicas => (
            true,
            "AllReplicasAttested",
            format!("{attested}/{} replicas attested", inputs.replicas),
        ),
        None => (
            false,
            "ReplicasNotAttested",
            format!(
                "{attested}/{} replicas attested, {} ready",
                inputs.replicas, inputs.ready_replicas
            ),
        ),
    };

    let (is_attested, attested_reason, attested_message) = if failing_now > 0 {
        (
            false,
            "AttestationFailed",
            format!("{failing_now} endpoint(s) failed their latest attestation"),
        )
    } else if inputs.ready_replicas == 0 {
        (
            false,
            "NoReadyPods",
            "no pod is ready to be attested".to_owned(),
        )
    } else if attested < inputs.ready_replicas {
        (
            false,
            "AttestationPending",
            format!("{attested}/{} ready pods verified", inputs.ready_replicas),
        )
    } else {
        (
            true,
            "AllEndpointsVerified",
            format!(
                "{attested} endpoint(s) verified within {:?}",
                inputs.max_age
            ),
        )
    };

    let (degraded, degraded_reason, degraded_message) =
        match (&inputs.problem, recent_failures.last()) {
            (Some(problem), _) => (true, problem.reason, problem.message.clone()),
            (None, Some(latest)) => (
                true,
                "AttestationFailed",
                format!(
                    "{} failure(s) within {:?}; latest: pod {} on node {} ({}): {}",
                    recent_failures.len(),
                    inputs.max_age,
                    latest.pod,
                    latest.node,
                    latest.reason,
                    latest.message
                ),
            ),
            (None, None) => (false, "AsExpected", "no attestation failures".to_owned()),
        };

    let current_conditions = current.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = current_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(whole_seconds(now)));
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: inputs.generation,
            last_transition_time,
        }
    };

    ConfidentialModelStatus {
        observed_generation: inputs.generation,
        conditions: vec![
            condition(CONDITION_READY, ready, ready_reason, ready_message),
            condition(
                CONDITION_ATTESTED,
                is_attested,
                attested_reason,
                attested_message,
            ),
            condition(
                CONDITION_DEGRADED,
                degraded,
                degraded_reason,
                degraded_message,
            ),
        ],
        ready_replicas: inputs.ready_replicas,
        attested_replicas: attested,
        endpoints,
        model_volume: inputs.model_volume.clone(),
    }
}

/// Published endpoints kept as they are after a controller restart or a
/// leader change, until this controller's first attempt at them ends: the
/// previous controller verified them within `maxEvidenceAge`, and dropping
/// them would tell clients a healthy model has no endpoints for up to
/// `jitter × interval`. Kept only while nothing says otherwise: the
/// resource's generation is the one they were published for, the
/// publication is younger than `maxEvidenceAge`, and the pod is still a
/// target at the same node and address with no outcome yet (or the loop
/// has not listed the model's targets yet at all).
fn carried_over<'a>(
    current: Option<&'a ConfidentialModelStatus>,
    inputs: &'a StatusInputs<'_>,
) -> impl Iterator<Item = VerifiedEndpoint> + 'a {
    let same_generation = current.is_some_and(|s| {
        s.observed_generation.is_some() && s.observed_generation == inputs.generation
    });
    let results = inputs.results;
    current
        .into_iter()
        .filter(move |_| same_generation)
        .flat_map(|s| s.endpoints.iter())
        .filter(move |e| age(inputs.now, e.last_attested.0) < inputs.max_age)
        .filter(move |e| match results.endpoints.get(&e.pod) {
            None => !results.tracked,
            Some(record) => {
                let t = &record.target;
                record.is_pending()
                    && t.node == e.node
                    && t.address == e.address
                    && i32::from(t.port) == e.port
            }
        })
        .cloned()
}

/// When status would next change by the passage of time alone: an endpoint
/// expiring, a published `lastAttested` due for refresh, a failure ageing
/// out of Degraded. The reconciler requeues for then.
pub fn next_change(status: &ConfidentialModelStatus, inputs: &StatusInputs<'_>) -> Duration {
    let now = inputs.now;
    let until = |at: Timestamp, after: Duration| after.saturating_sub(age(now, at));
    let mut next = MAX_RECHECK;
    for record in inputs.results.endpoints.values() {
        if let Some(v) = record.listable(now, inputs.max_age, inputs.policy) {
            next = next.min(until(v.at, inputs.max_age) + Duration::from_secs(1));
        }
    }
    for endpoint in &status.endpoints {
        let verified_here = inputs
            .results
            .endpoints
            .get(&endpoint.pod)
            .and_then(|r| r.listable(now, inputs.max_age, inputs.policy))
            .is_some();
        next = next.min(if verified_here {
            until(endpoint.last_attested.0, inputs.refresh_after())
        } else {
            // Carried over from the previous controller: it can only
            // expire (its first attempt here triggers a reconcile anyway).
            until(endpoint.last_attested.0, inputs.max_age) + Duration::from_secs(1)
        });
    }
    for failure in &inputs.results.failures {
        let left = until(failure.at, inputs.max_age);
        if !left.is_zero() {
            next = next.min(left + Duration::from_secs(1));
        }
    }
    next.max(MIN_RECHECK)
}

/// Whether `desired` differs from what is stored.
pub fn needs_write(
    current: Option<&ConfidentialModelStatus>,
    desired: &ConfidentialModelStatus,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    // The API server may return list-map entries in another order.
    fn by_type(s: &ConfidentialModelStatus) -> Vec<&Condition> {
        let mut conditions: Vec<&Condition> = s.conditions.iter().collect();
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        conditions
    }
    current.observed_generation != desired.observed_generation
        || current.ready_replicas != desired.ready_replicas
        || current.attested_replicas != desired.attested_replicas
        || current.endpoints != desired.endpoints
        || current.model_volume != desired.model_volume
        || by_type(current) != by_type(desired)
}

/// Status times have whole seconds (that is how the API stores them), so
/// comparisons with stored values must too.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{attested, policy, target};
    use crate::results::{EndpointRecord, FailureRecord, Verification};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    fn results(entries: &[(&str, Option<i64>, u32)]) -> ModelResults {
        let mut r = ModelResults::default();
        for (pod, verified_at, failures) in entries {
            r.endpoints.insert(
                (*pod).to_owned(),
                EndpointRecord {
                    target: target(pod),
                    verified: verified_at.map(|s| Verification {
                        endpoint: attested(1),
                        at: at(s),
                        policy: policy(),
                    }),
                    consecutive_failures: *failures,
                },
            );
        }
        r.tracked = true;
        r
    }

    fn inputs(results: &ModelResults, now: i64) -> StatusInputs<'_> {
        static POLICY: std::sync::LazyLock<std::sync::Arc<AttestationPolicy>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(policy().policy().clone()));
        StatusInputs {
            policy: &POLICY,
            generation: Some(4),
            replicas: 2,
            ready_replicas: 2,
            results,
            problem: None,
            interval: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
            model_volume: None,
            now: at(now),
        }
    }

    fn condition<'a>(status: &'a ConfidentialModelStatus, type_: &str) -> &'a Condition {
        status.condition(type_).expect("condition present")
    }

    #[test]
    fn verified_endpoints_are_listed_and_conditions_follow() {
        let r = results(&[("a", Some(1_000), 0), ("b", Some(1_010), 0)]);
        let status = desired(None, &inputs(&r, 1_020));
        assert_eq!(status.attested_replicas, 2);
        assert_eq!(status.endpoints[0].pod, "a");
        assert_eq!(status.endpoints[0].last_attested, Time(at(1_000)));
        assert!(status.endpoints[0]
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Attested").status, "True");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert!(status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4)));
        assert_eq!(status.observed_generation, Some(4));
    }

    #[test]
    fn failed_and_expired_endpoints_are_not_listed() {
        let mut r = results(&[("a", Some(1_000), 1), ("b", Some(1_000), 0)]);
        r.failures.push(FailureRecord {
            pod: "a".into(),
            node: "node-a".into(),
            reason: "boot-pcr".into(),
            message: "boot PCR 9 is not a reference value".into(),
            at: at(1_020),
        });
        let status = desired(None, &inputs(&r, 1_030));
        let pods: Vec<_> = status.endpoints.iter().map(|e| e.pod.as_str()).collect();
        assert_eq!(pods, ["b"]);
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "AttestationFailed")
        );
        assert!(degraded.message.contains("pod a on node node-a (boot-pcr)"));
        assert_eq!(condition(&status, "Attested").reason, "AttestationFailed");
        assert_eq!(condition(&status, "Ready").status, "False");

        // b's evidence is older than maxEvidenceAge 5 minutes later.
        let status = desired(None, &inputs(&r, 1_000 + 301));
        assert!(status.endpoints.is_empty());
        assert_eq!(
            condition(&status, "Degraded").status,
            "True",
            "failure is recent"
        );
        let status = desired(None, &inputs(&r, 1_020 + 301));
        assert_eq!(
            condition(&status, "Degraded").status,
            "False",
            "failure aged out"
        );
    }

    #[test]
    fn unchanged_observations_give_an_identical_status() {
        let r = results(&[("a", Some(1_000), 0), ("b", Some(1_000), 0)]);
        let first = desired(None, &inputs(&r, 1_000));
        // 30 s later both endpoints were re-verified; nothing a client needs changed.
        let r2 = results(&[("a", Some(1_030), 0), ("b", Some(1_031), 0)]);
        let second = desired(Some(&first), &inputs(&r2, 1_032));
        assert!(
            !needs_write(Some(&first), &second),
            "{first:#?}\n{second:#?}"
        );
        assert_eq!(second.endpoints[0].last_attested, Time(at(1_000)));
    }

    #[test]
    fn published_time_is_refreshed_before_it_gets_old() {
        let r = results(&[("a", Some(1_000), 0)]);
        let first = desired(None, &inputs(&r, 1_000));
        // maxEvidenceAge 300 s, interval 30 s: refreshed once 240 s old.
        let r2 = results(&[("a", Some(1_239), 0)]);
        let kept = desired(Some(&first), &inputs(&r2, 1_239));
        assert!(!needs_write(Some(&first), &kept));
        let r3 = results(&[("a", Some(1_240), 0)]);
        let refreshed = desired(Some(&first), &inputs(&r3, 1_240));
        assert!(needs_write(Some(&first), &refreshed));
        assert_eq!(refreshed.endpoints[0].last_attested, Time(at(1_240)));
        // Ready's transition time did not move.
        assert_eq!(
            condition(&refreshed, "Ready").last_transition_time,
            condition(&first, "Ready").last_transition_time
        );
        let requeue = next_change(&first, &inputs(&r, 1_100));
        assert_eq!(requeue, Duration::from_secs(140));
    }

    #[test]
    fn a_write_refreshes_every_published_time_at_once() {
        let r = results(&[("a", Some(1_000), 0), ("b", Some(1_100), 0)]);
        let first = desired(None, &inputs(&r, 1_100));
        // 240 s later a's published time is due; b's (140 s old) is not yet,
        // but is refreshed in the same write so both come due together.
        let r2 = results(&[("a", Some(1_239), 0), ("b", Some(1_230), 0)]);
        let second = desired(Some(&first), &inputs(&r2, 1_240));
        let times: Vec<_> = second
            .endpoints
            .iter()
            .map(|e| e.last_attested.clone())
            .collect();
        assert_eq!(times, [Time(at(1_239)), Time(at(1_230))]);
    }

    #[test]
    fn condition_order_does_not_cause_a_write() {
        let r = results(&[("a", Some(1_000), 0)]);
        let first = desired(None, &inputs(&r, 1_000));
        let mut reordered = first.clone();
        reordered.conditions.reverse();
        assert!(!needs_write(Some(&reordered), &first));
        assert!(!needs_write(
            Some(&reordered),
            &desired(Some(&reordered), &inputs(&r, 1_001))
        ));
    }

    #[test]
    fn a_changed_certificate_is_published_at_once() {
        let r = results(&[("a", Some(1_000), 0)]);
        let first = desired(None, &inputs(&r, 1_000));
        let mut r2 = r.clone();
        if let Some(record) = r2.endpoints.get_mut("a") {
            record.verified = Some(Verification {
                endpoint: attested(7),
                at: at(1_030),
                policy: policy(),
            });
        }
        let second = desired(Some(&first), &inputs(&r2, 1_030));
        assert!(needs_write(Some(&first), &second));
        assert_eq!(second.endpoints[0].last_attested, Time(at(1_030)));
    }

    #[test]
    fn a_problem_makes_the_model_degraded_and_not_ready() {
        let r = ModelResults::default();
        let mut i = inputs(&r, 1_000);
        i.problem = Some(Problem {
            reason: "InvalidPolicy",
            message: "policy trusts no attestation key".into(),
        });
        let status = desired(None, &i);
        assert_eq!(condition(&status, "Ready").reason, "InvalidPolicy");
        assert_eq!(condition(&status, "Degraded").status, "True");
        i.problem = None;
        i.replicas = 0;
        i.ready_replicas = 0;
        let status = desired(None, &i);
        assert_eq!(condition(&status, "Ready").reason, "ScaledToZero");
        assert_eq!(condition(&status, "Attested").reason, "NoReadyPods");
    }

    /// Results right after a restart: the loop lists the pods, no attempt
    /// has ended yet.
    fn pending(pods: &[&str]) -> ModelResults {
        let mut r = results(&[]);
        for pod in pods {
            r.endpoints.insert(
                (*pod).to_owned(),
                EndpointRecord {
                    target: target(pod),
                    verified: None,
                    consecutive_failures: 0,
                },
            );
        }
        r
    }

    fn published(now: i64) -> ConfidentialModelStatus {
        let r = results(&[("a", Some(now - 20), 0), ("b", Some(now - 10), 0)]);
        desired(None, &inputs(&r, now))
    }

    fn pods(status: &ConfidentialModelStatus) -> Vec<&str> {
        status.endpoints.iter().map(|e| e.pod.as_str()).collect()
    }

    #[test]
    fn a_restarted_controller_keeps_published_endpoints_until_its_first_attempt() {
        let before = published(1_000);
        // The loop has not listed the model yet, or has and not attested yet.
        for r in [ModelResults::default(), pending(&["a", "b"])] {
            let after = desired(Some(&before), &inputs(&r, 1_005));
            assert_eq!(after.endpoints, before.endpoints);
            assert_eq!(condition(&after, "Ready").status, "True");
            assert!(!needs_write(Some(&before), &after), "{after:#?}");
            // It can only expire: no reconcile every second meanwhile.
            let next = next_change(&after, &inputs(&r, 1_005));
            assert_eq!(next, Duration::from_secs(300 - 25 + 1));
        }
    }

    #[test]
    fn carried_endpoints_go_when_anything_says_otherwise() {
        let before = published(1_000);
        // A failed first attempt; the other pod still pending.
        let mut r = pending(&["a", "b"]);
        r.endpoints.get_mut("a").expect("a").consecutive_failures = 1;
        assert_eq!(pods(&desired(Some(&before), &inputs(&r, 1_005))), ["b"]);
        // A pod that is no longer a target.
        assert_eq!(
            pods(&desired(Some(&before), &inputs(&pending(&["b"]), 1_005))),
            ["b"]
        );
        // The same pod name at another address.
        let mut r = pending(&["a", "b"]);
        r.endpoints.get_mut("b").expect("b").target.address = "10.0.0.9".into();
        assert_eq!(pods(&desired(Some(&before), &inputs(&r, 1_005))), ["a"]);
        // A success replaces the published entry, once.
        let r = results(&[("a", Some(1_004), 0)]);
        let mut r2 = pending(&["b"]);
        r2.endpoints.extend(r.endpoints);
        let after = desired(Some(&before), &inputs(&r2, 1_005));
        assert_eq!(pods(&after), ["a", "b"]);
        // Older than maxEvidenceAge: gone, whatever else holds.
        assert!(desired(
            Some(&before),
            &inputs(&pending(&["a", "b"]), 1_000 - 10 + 300)
        )
        .endpoints
        .is_empty());
        // A new generation: its policy may refuse them.
        let r = pending(&["a", "b"]);
        let mut newer = inputs(&r, 1_005);
        newer.generation = Some(5);
        assert!(desired(Some(&before), &newer).endpoints.is_empty());
    }
}
