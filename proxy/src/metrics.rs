//! Prometheus metrics served at `GET /aver/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    /// `forwarded` (an answer came back from an attested endpoint),
    /// `refused` (no attested endpoint: 502, nothing sent), `failed` (the
    /// exchange with an attested endpoint broke: 502).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    /// `connect` (a new connection) or `refresh` (re-attested in place).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabel {
    pub endpoint: String,
    /// `idle` or `busy`.
    pub state: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabel, Counter>,
    pub attestations: Family<KindLabel, Counter>,
    pub attestation_failures: Family<ReasonLabel, Counter>,
    pub pool: Family<PoolLabel, Gauge>,
    pub endpoints_in_rotation: Gauge,
    pub endpoints_total: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("aver_proxy");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests received for the upstream, by outcome",
            requests.clone(),
        );
        let attestations = Family::<KindLabel, Counter>::default();
        registry.register(
            "attestations",
            "Successful attestations of upstream connections",
            attestations.clone(),
        );
        let attestation_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "attestation_failures",
            "Upstream connections that could not be attested, by reason",
            attestation_failures.clone(),
        );
        let pool = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "pool_connections",
            "Attested upstream connections, by endpoint and state",
            pool.clone(),
        );
        let endpoints_in_rotation = Gauge::default();
        registry.register(
            "endpoints_in_rotation",
            "Upstream endpoints currently in rotation",
            endpoints_in_rotation.clone(),
        );
        let endpoints_total = Gauge::default();
        registry.register(
            "endpoints",
            "Upstream endpoints known",
            endpoints_total.clone(),
        );
        Self {
            registry,
            requests,
            attestations,
            attestation_failures,
            pool,
            endpoints_in_rotation,
            endpoints_total,
        }
    }

    pub(crate) fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn attested(&self, kind: &'static str) {
        self.attestations.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn attestation_failed(&self, reason: &'static str) {
        self.attestation_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub(crate) fn encode(&self) -> String {
        aver_serve::encode(&self.registry)
    }
}
