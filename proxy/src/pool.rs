//! Upstream endpoints and their pools of attested connections.
//!
//! A connection enters the pool only attested (fresh nonce, evidence bound to
//! its own TLS key). Before it carries a request it is re-attested in place
//! if its evidence has reached `reattest_after` (below maxEvidenceAge); idle
//! connections are refreshed in the background the same way, so that a
//! request rarely waits for a quote.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aver_client::{AttestedClient, AttestedConnection, ClientError, Endpoint};
use aver_verifier::{ValidatedPolicy, VerifiedReport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::status::{EndpointStatus, LastError, Measurements, PoolStatus};

/// What every endpoint's pool works with.
pub(crate) struct Settings {
    pub client: AttestedClient,
    pub policy: ValidatedPolicy,
    pub max_age: Duration,
    pub reattest_after: Duration,
    pub idle_timeout: Duration,
    pub retry_after: Duration,
    pub attest_timeout: Duration,
    pub max_per_endpoint: usize,
}

/// One enclave, its pool and what the proxy last learnt about it.
pub(crate) struct EndpointState {
    pub endpoint: Endpoint,
    /// `https://host:port`.
    pub url: String,
    pub pod: Option<String>,
    pub node: Option<String>,
    permits: Arc<Semaphore>,
    max: usize,
    idle: Mutex<Vec<Idle>>,
    busy: AtomicUsize,
    info: Mutex<Info>,
}

struct Idle {
    connection: AttestedConnection,
    attested_at: Instant,
    since: Instant,
}

#[derive(Default)]
struct Info {
    measurements: Option<Measurements>,
    attested_at: Option<(Instant, jiff::Timestamp)>,
    /// The last attempt failed (and nothing succeeded since).
    failing: bool,
    failed_at: Option<Instant>,
    last_error: Option<LastError>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A one-line message (for a header-adjacent JSON body and logs).
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn last_error(reason: &str, message: &str, endpoint: Option<&str>) -> LastError {
    LastError {
        reason: reason.to_owned(),
        message: one_line(message),
        at: jiff::Timestamp::now().to_string(),
        endpoint: endpoint.map(str::to_owned),
    }
}

impl EndpointState {
    pub(crate) fn new(
        endpoint: Endpoint,
        max: usize,
        pod: Option<String>,
        node: Option<String>,
    ) -> Self {
        let url = format!("https://{}", endpoint.authority());
        let max = max.max(1);
        Self {
            endpoint,
            url,
            pod,
            node,
            permits: Arc::new(Semaphore::new(max)),
            max,
            idle: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            info: Mutex::new(Info::default()),
        }
    }

    /// In rotation unless it failed less than `retry_after` ago.
    pub(crate) fn in_rotation(&self, retry_after: Duration) -> bool {
        let info = lock(&self.info);
        !info.failing || info.failed_at.is_none_or(|t| t.elapsed() >= retry_after)
    }

    pub(crate) fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    pub(crate) fn busy_count(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// An attested connection for one request: a pooled one (re-attested
    /// first if its evidence is due), or a new one. Nothing of the caller's
    /// request is involved: on error the caller may try another endpoint.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Result<Lease, ClientError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        self.busy.fetch_add(1, Ordering::Relaxed);
        let mut lease = Lease {
            endpoint: self.clone(),
            connection: None,
            attested_at: Instant::now(),
            _permit: permit,
        };
        if let Some(idle) = self.take_idle(settings.idle_timeout) {
            if idle.attested_at.elapsed() < settings.reattest_after {
                lease.connection = Some(idle.connection);
                lease.attested_at = idle.attested_at;
                return Ok(lease);
            }
            let mut connection = idle.connection;
            match self.refresh(&mut connection, settings, metrics).await {
                Ok(()) => {
                    lease.connection = Some(connection);
                    lease.attested_at = Instant::now();
                    return Ok(lease);
                }
                Err(e @ ClientError::Verify(_)) => return Err(e),
                // The server may have closed an idle connection: a new one
                // is attested from scratch below.
                Err(e) => {
                    tracing::debug!(endpoint = %self.url, error = %e, "re-attestation on a pooled connection failed; opening a new one");
                }
            }
        }
        let attempt = settings.client.attest(&self.endpoint);
        let outcome = match tokio::time::timeout(settings.attest_timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::ConnectTimeout(self.endpoint.authority())),
        };
        match outcome {
            Ok(connection) => {
                if let Some(report) = connection.report() {
                    self.record_success(report);
                }
                metrics.attested("connect");
                tracing::info!(endpoint = %self.url, "upstream connection attested");
                lease.connection = Some(connection);
                lease.attested_at = Instant::now();
                Ok(lease)
            }
            Err(e) => {
                self.record_failure(&e, metrics);
                Err(e)
            }
        }
    }

    /// Re-attests `connection` in place (fresh nonce, same TLS key). A
    /// verification failure takes the endpoint out of rotation and closes
    /// its other pooled connections; other failures only concern this
    /// connection.
    async fn refresh(
        &self,
        connection: &mut AttestedConnection,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Result<(), ClientError> {
        if connection.is_closed() {
            return Err(ClientError::Request("connection closed".into()));
        }
        let attempt = connection.reattest(&settings.policy);
        let outcome = match tokio::time::timeout(settings.attest_timeout, attempt).await {
            Ok(Ok(report)) => Ok(report.clone()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::ConnectTimeout(self.endpoint.authority())),
        };
        match outcome {
            Ok(report) => {
                self.record_success(&report);
                metrics.attested("refresh");
                tracing::debug!(endpoint = %self.url, "evidence refreshed on a pooled connection");
                Ok(())
            }
            Err(e @ ClientError::Verify(_)) => {
                self.record_failure(&e, metrics);
                lock(&self.idle).clear();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The most recently used idle connection still open and not idle too
    /// long; others found on the way are closed.
    fn take_idle(&self, idle_timeout: Duration) -> Option<Idle> {
        let mut idle = lock(&self.idle);
        while let Some(candidate) = idle.pop() {
            if !candidate.connection.is_closed() && candidate.since.elapsed() < idle_timeout {
                return Some(candidate);
            }
        }
        None
    }

    /// Background upkeep: closes idle connections past the idle timeout and
    /// re-attests those whose evidence is due.
    pub(crate) async fn maintain(&self, settings: &Settings, metrics: &Metrics) {
        let due: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            idle.retain(|c| !c.connection.is_closed() && c.since.elapsed() < settings.idle_timeout);
            let (due, fresh): (Vec<_>, Vec<_>) = idle
                .drain(..)
                .partition(|c| c.attested_at.elapsed() >= settings.reattest_after);
            *idle = fresh;
            due
        };
        for mut c in due {
            if self
                .refresh(&mut c.connection, settings, metrics)
                .await
                .is_ok()
            {
                c.attested_at = Instant::now();
                lock(&self.idle).push(c);
            }
        }
    }

    fn record_success(&self, report: &VerifiedReport) {
        let mut info = lock(&self.info);
        info.measurements = Some(Measurements {
            model: report.launch().model().to_string(),
            engine: report.launch().engine().map(|d| d.to_string()),
            ak_name: report.ak_name().to_owned(),
            tls_spki: report.spki_sha256().to_string(),
            launches_since_boot: report.launches_since_boot(),
        });
        info.attested_at = Some((Instant::now(), jiff::Timestamp::now()));
        info.failing = false;
    }

    pub(crate) fn record_failure(&self, error: &ClientError, metrics: &Metrics) {
        let reason = error.reason();
        metrics.attestation_failed(reason);
        tracing::warn!(endpoint = %self.url, reason, error = %error, "upstream endpoint not attested");
        let mut info = lock(&self.info);
        info.failing = true;
        info.failed_at = Some(Instant::now());
        info.last_error = Some(last_error(reason, &error.to_string(), Some(&self.url)));
    }

    pub(crate) fn last_error(&self) -> Option<LastError> {
        lock(&self.info).last_error.clone()
    }

    pub(crate) fn status(&self, settings: &Settings) -> EndpointStatus {
        let info = lock(&self.info);
        let age = info.attested_at.map(|(at, _)| at.elapsed());
        EndpointStatus {
            url: self.url.clone(),
            pod: self.pod.clone(),
            node: self.node.clone(),
            attested: !info.failing && age.is_some_and(|a| a < settings.max_age),
            in_rotation: !info.failing
                || info
                    .failed_at
                    .is_none_or(|t| t.elapsed() >= settings.retry_after),
            measurements: info.measurements.clone(),
            evidence_age_seconds: age.map(|a| a.as_secs_f64()),
            last_attested: info.attested_at.map(|(_, ts)| ts.to_string()),
            pool: PoolStatus {
                idle: self.idle_count(),
                busy: self.busy_count(),
                max: self.max,
            },
            last_error: info.last_error.clone(),
        }
    }
}

/// One attested connection lent to one request. Dropped, the connection is
/// closed; [`Self::release`]d (after a complete answer), it goes back to the
/// pool.
pub(crate) struct Lease {
    endpoint: Arc<EndpointState>,
    connection: Option<AttestedConnection>,
    attested_at: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    pub(crate) fn connection(&mut self) -> &mut AttestedConnection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until released")
    }

    pub(crate) fn endpoint(&self) -> &EndpointState {
        &self.endpoint
    }

    /// Returns the connection to the pool, if it can carry another request.
    pub(crate) fn release(mut self) {
        if let Some(connection) = self.connection.take() {
            if !connection.is_closed() {
                lock(&self.endpoint.idle).push(Idle {
                    connection,
                    attested_at: self.attested_at,
                    since: Instant::now(),
                });
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.busy.fetch_sub(1, Ordering::Relaxed);
    }
}
