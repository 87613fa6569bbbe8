//! Prometheus metrics of the controller, served with the health endpoints
//! (`/metrics`, `/healthz`, `/readyz`) by [`aver_serve::MetricsServer`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of a result: "ok"/"error" for reconciles, "verified" or the failure
/// reason for attestations.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// "ok"/"error", "verified", or a failure reason such as "boot-pcr".
    pub result: String,
}

/// Every metric the controller exports. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_seconds: Histogram,
    attestations: Family<ResultLabel, Counter>,
    attestation_seconds: Histogram,
    verified_endpoints: Gauge,
    attestations_in_flight: Gauge,
    status_writes: Counter,
    pod_deletions: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric, prefixed `aver_`, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aver");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "ConfidentialModel reconciles by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one ConfidentialModel",
            reconcile_seconds.clone(),
        );
        let attestations = Family::<ResultLabel, Counter>::default();
        registry.register(
            "attestations",
            "Endpoint attestations by result: verified, or the failure reason",
            attestations.clone(),
        );
        // 1 ms .. ~16 s
        let attestation_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "attestation_duration_seconds",
            "Time to attest one endpoint (TLS, evidence, verification)",
            attestation_seconds.clone(),
        );
        let verified_endpoints = Gauge::default();
        registry.register(
            "verified_endpoints",
            "Endpoints whose latest attestation succeeded",
            verified_endpoints.clone(),
        );
        let attestations_in_flight = Gauge::default();
        registry.register(
            "attestations_in_flight",
            "Attestations currently running",
            attestations_in_flight.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "ConfidentialModel status writes (only when status changed)",
            status_writes.clone(),
        );
        let pod_deletions = Counter::default();
        registry.register(
            "pod_deletions",
            "Pods deleted because their endpoint failed attestation",
            pod_deletions.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_seconds,
            attestations,
            attestation_seconds,
            verified_endpoints,
            attestations_in_flight,
            status_writes,
            pod_deletions,
            leader,
        }
    }

    /// Records one reconcile and how long it took.
    pub fn reconciled(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Records one attestation: `reason` is None on success.
    pub fn attested(&self, reason: Option<&str>, took: Duration) {
        self.attestations
            .get_or_create(&ResultLabel {
                result: reason.unwrap_or("verified").to_owned(),
            })
            .inc();
        self.attestation_seconds.observe(took.as_secs_f64());
    }

    /// Endpoints whose latest attestation succeeded, set each time the loop
    /// refreshes its targets.
    pub fn set_verified_endpoints(&self, n: usize) {
        self.verified_endpoints
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// How many attestations are running now.
    pub fn set_in_flight(&self, n: usize) {
        self.attestations_in_flight
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a status write (the reconciler writes only when status changed).
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Counts a pod deleted because its endpoint failed attestation.
    pub fn pod_deleted(&self) {
        self.pod_deletions.inc();
    }

    /// Whether this replica is acting (it holds the leader Lease, or runs
    /// without an election); only then does it reconcile and attest.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Number of status writes so far (for tests and benchmarks).
    pub fn status_write_count(&self) -> u64 {
        self.status_writes.get()
    }

    /// Attestations recorded with this result so far.
    pub fn attestation_count(&self, result: &str) -> u64 {
        self.attestations
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .get()
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        aver_serve::encode(&self.registry)
    }
}

impl aver_serve::Scrape for Metrics {
    fn scrape(&self) -> String {
        self.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_the_documented_names() {
        let m = Metrics::new();
        m.reconciled(true, Duration::from_millis(3));
        m.attested(None, Duration::from_millis(20));
        m.attested(Some("boot-pcr"), Duration::from_millis(20));
        m.set_verified_endpoints(7);
        m.status_written();
        let text = m.encode();
        for expected in [
            "aver_reconciles_total{result=\"ok\"} 1",
            "aver_attestations_total{result=\"verified\"} 1",
            "aver_attestations_total{result=\"boot-pcr\"} 1",
            "aver_attestation_duration_seconds_bucket",
            "aver_verified_endpoints 7",
            "aver_status_writes_total 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(m.attestation_count("boot-pcr"), 1);
    }

    #[tokio::test]
    async fn http_endpoints_answer() {
        let metrics = Metrics::new();
        metrics.set_verified_endpoints(3);
        let server = aver_serve::MetricsServer::bind(
            "127.0.0.1:0".parse().expect("address"),
            Arc::new(metrics),
            aver_serve::Readiness::new(true),
        )
        .await
        .expect("bind");
        let addr = server.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("aver_verified_endpoints 3"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await.expect("server stops");
    }
}
