//! Leader election on a `coordination.k8s.io/v1` Lease, so that two or more
//! replicas of the controller can run and exactly one of them acts.
//!
//! The algorithm is client-go's: a candidate takes the Lease only when its
//! holder has not renewed it for `leaseDurationSeconds`, measured on the
//! candidate's own monotonic clock from the moment it last saw the record
//! change (so clock skew between nodes does not matter). Every write
//! replaces the object at the resourceVersion that was read, so two
//! candidates cannot both win. The leader renews every retry period and
//! steps down when it cannot renew within the renew deadline; it must stop
//! acting before its Lease could be taken over (renew deadline < lease
//! duration).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Settings of an election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease is honoured without renewal.
    pub lease_duration: Duration,
    /// How long the leader tries to renew before stepping down.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease (acquired or renewed).
    Leading,
    /// Another replica holds a live Lease.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and write; try again.
    Conflict,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostLeadership {
    #[error("the Lease is now held by {0}")]
    /// Another replica took the Lease over after ours went unrenewed.
    TakenBy(String),
    #[error("could not renew the Lease within the renew deadline")]
    /// No renewal succeeded within the renew deadline (API errors or
    /// conflicts); another replica may take over.
    RenewDeadline,
}

/// The parts of a Lease whose change shows its holder is alive.
type LeaseRecord = (Option<String>, Option<MicroTime>);

/// A participant in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The last Lease record seen (holder, renew time) and when it was first
    /// seen in that state.
    observed: Option<(LeaseRecord, Instant)>,
}

impl LeaderElector {
    /// A candidate that has seen no Lease yet; nothing is sent to the API
    /// until its first attempt.
    pub fn new(api: Api<Lease>, config: ElectionConfig) -> Self {
        Self {
            api,
            config,
            observed: None,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Notes the record's state; returns how long it has been unchanged.
    fn observe(&mut self, spec: &LeaseSpec) -> Duration {
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        match &self.observed {
            Some((seen, since)) if *seen == record => since.elapsed(),
            _ => {
                self.observed = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One attempt to acquire or renew the Lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default());
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self.observe(&spec);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(holder) = &holder {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            if !mine && unchanged_for < duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
        }

        let new_spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !mine {
            new_spec.acquire_time = Some(now.clone());
            new_spec.lease_transitions =
                Some(new_spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(self.lease_seconds());
        new_spec.renew_time = Some(now);
        // `lease` carries the resourceVersion we read: a concurrent writer
        // makes this replace fail with 409 instead of both winning.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated.spec.unwrap_or_default());
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(%holder, "another replica leads; waiting");
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the Lease every retry period while leading; returns when
    /// leadership is lost. The caller must stop acting at once.
    pub async fn hold(&mut self) -> LostLeadership {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => last_renewal = Instant::now(),
                Ok(Attempt::HeldBy(holder)) => return LostLeadership::TakenBy(holder),
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
            }
            if last_renewal.elapsed() > self.config.renew_deadline {
                return LostLeadership::RenewDeadline;
            }
        }
    }

    /// Gives the Lease up on graceful shutdown, so that another replica
    /// takes over at once instead of after the lease duration.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(identity = %self.config.identity, "released the leader Lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ApiMock, Reply};
    use http::Method;

    fn config(identity: &str) -> ElectionConfig {
        ElectionConfig {
            name: "aver-controller".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease(holder: &str, renew_second: i64, version: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "aver-controller", "namespace": "aver-system", "resourceVersion": version},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "acquireTime": "2025-01-01T00:00:00.000000Z",
                "renewTime": format!("2025-01-01T00:00:{renew_second:02}.000000Z"),
                "leaseTransitions": 3
            }
        })
    }

    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/aver-system/leases/aver-controller";

    #[tokio::test]
    async fn first_candidate_creates_the_lease() {
        let mock = ApiMock::start(vec![
            Reply::not_found(Method::GET, LEASE_PATH),
            Reply::json(
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/aver-system/leases",
                201,
                lease("a", 0, "1"),
            )
            .expect_body(|body| {
                assert_eq!(body["spec"]["holderIdentity"], "a");
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            }),
        ]);
        let mut elector =
            LeaderElector::new(Api::namespaced(mock.client(), "aver-system"), config("a"));
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::Leading
        );
        mock.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_lease_is_respected_and_an_expired_one_taken_over() {
        let mut replies = vec![Reply::json(
            Method::GET,
            LEASE_PATH,
            200,
            lease("b", 0, "7"),
        )];
        // b stops renewing: the same record is seen for 16 s.
        replies.push(Reply::json(
            Method::GET,
            LEASE_PATH,
            200,
            lease("b", 0, "7"),
        ));
        replies.push(Reply::json(
            Method::GET,
            LEASE_PATH,
            200,
            lease("b", 0, "7"),
        ));
        replies.push(
            Reply::json(Method::PUT, LEASE_PATH, 200, lease("a", 16, "8")).expect_body(|body| {
                assert_eq!(
                    body["metadata"]["resourceVersion"], "7",
                    "optimistic concurrency"
                );
                assert_eq!(body["spec"]["holderIdentity"], "a");
                assert_eq!(body["spec"]["leaseTransitions"], 4);
            }),
        );
        let mock = ApiMock::start(replies);
        let mut elector =
            LeaderElector::new(Api::namespaced(mock.client(), "aver-system"), config("a"));
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::HeldBy("b".into())
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::HeldBy("b".into())
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::Leading
        );
        mock.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewing_holder_keeps_the_lease_and_conflicts_do_not_double_win() {
        let mock = ApiMock::start(vec![
            Reply::json(Method::GET, LEASE_PATH, 200, lease("b", 0, "7")),
            Reply::json(Method::GET, LEASE_PATH, 200, lease("b", 10, "8")),
            Reply::json(Method::GET, LEASE_PATH, 200, lease("b", 10, "8")),
            Reply::status(Method::PUT, LEASE_PATH, 409),
        ]);
        let mut elector =
            LeaderElector::new(Api::namespaced(mock.client(), "aver-system"), config("a"));
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::HeldBy("b".into())
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        // b renewed: the 15 s count starts again.
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::HeldBy("b".into())
        );
        tokio::time::sleep(Duration::from_secs(16)).await;
        // Expired, but another candidate wrote first.
        assert_eq!(
            elector.try_acquire_or_renew().await.expect("ok"),
            Attempt::Conflict
        );
        mock.finish().await;
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let mock = ApiMock::start(vec![
            Reply::json(Method::GET, LEASE_PATH, 200, lease("a", 0, "9")),
            Reply::json(Method::PUT, LEASE_PATH, 200, lease("", 1, "10")).expect_body(|body| {
                assert!(body["spec"].get("holderIdentity").is_none());
                assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
            }),
        ]);
        let mut elector =
            LeaderElector::new(Api::namespaced(mock.client(), "aver-system"), config("a"));
        elector.release().await.expect("released");
        mock.finish().await;
    }
}
