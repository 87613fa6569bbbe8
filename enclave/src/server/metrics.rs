//! The enclave's Prometheus metrics (`GET /metrics` on its TLS listener).
//!
//! Names, types, help texts and order are those scrapers have seen since
//! the first release; prometheus-client appends `_total` to counter samples
//! (so counters are registered without it) and a full stop to help texts
//! (so they are registered without one).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::batcher::BatchStats;
use crate::launch_log::LaunchStats;

/// Every counter and gauge of the server, registered under `aver_enclave_`.
pub(crate) struct EnclaveMetrics {
    registry: Registry,
    pub(crate) evidence_requests: Counter,
    pub(crate) evidence_failures: Counter,
    pub(crate) evidence_busy: Counter,
    pub(crate) proxied_requests: Counter,
    pub(crate) activations: Counter,
    pub(crate) activation_refusals: Counter,
    pub(crate) activations_limited_peer: Counter,
    pub(crate) activations_limited_queue: Counter,
    pub(crate) deadlines_exceeded: Counter,
    pub(crate) connections_open: Gauge,
    pub(crate) accept_errors: Counter,
}

impl EnclaveMetrics {
    /// Registers the server's metrics, the batcher's counters `batch`, the
    /// connection bound and (local TPM mode) the launch log's size.
    pub(crate) fn new(
        batch: &BatchStats,
        max_connections: usize,
        launches: Option<LaunchStats>,
    ) -> Self {
        let mut registry = Registry::with_prefix("aver_enclave");
        let r = &mut registry;
        let evidence_requests = counter(r, "evidence_requests", "Evidence requests received");
        let evidence_failures = counter(
            r,
            "evidence_failures",
            "Evidence requests answered with an error",
        );
        let evidence_busy = counter(
            r,
            "evidence_busy",
            "Evidence requests answered 503 because too many were waiting for the TPM",
        );
        r.register(
            "quotes",
            "TPM quotes signed (one per batch of challenges)",
            batch.quotes.clone(),
        );
        r.register(
            "challenges",
            "Challenges answered by those quotes",
            batch.challenges.clone(),
        );
        r.register(
            "quote_failures",
            "Batches whose quote failed (each of their challenges got the error)",
            batch.failures.clone(),
        );
        let proxied_requests = counter(
            r,
            "proxied_requests",
            "Requests forwarded to the inference engine",
        );
        let activations = counter(
            r,
            "activations",
            "Credentials the TPM activated for verifiers",
        );
        let activation_refusals = counter(
            r,
            "activation_refusals",
            "Credentials the TPM refused to activate",
        );
        let activations_limited_peer = counter(
            r,
            "activations_limited_peer",
            "Activation requests answered 429: over the per-peer rate",
        );
        let activations_limited_queue = counter(
            r,
            "activations_limited_queue",
            "Activation requests answered 429: the activation queue was full",
        );
        let deadlines_exceeded = counter(
            r,
            "deadlines_exceeded",
            "Evidence or activation requests that exceeded the request deadline",
        );
        let connections_open = Gauge::default();
        r.register(
            "connections_open",
            "TLS connections open now",
            connections_open.clone(),
        );
        r.register(
            "connections_limit",
            "Most connections open at once (--max-connections)",
            constant(u64::try_from(max_connections).unwrap_or(u64::MAX)),
        );
        let accept_errors = counter(
            r,
            "accept_errors",
            "Failed accepts (e.g. out of file descriptors)",
        );
        if let Some(launches) = launches {
            r.register(
                "launches",
                "Launches recorded in this boot's launch log (the workload PCR cannot be compacted)",
                constant(u64::from(launches.launches)),
            );
            r.register(
                "launch_limit",
                "Most launches per boot (--max-launches); the next start beyond it is refused until the node reboots",
                constant(u64::from(launches.limit)),
            );
        }
        Self {
            registry,
            evidence_requests,
            evidence_failures,
            evidence_busy,
            proxied_requests,
            activations,
            activation_refusals,
            activations_limited_peer,
            activations_limited_queue,
            deadlines_exceeded,
            connections_open,
            accept_errors,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        aver_serve::encode(&self.registry)
    }
}

/// A counter registered as `name` (its samples get `_total`).
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// A gauge that never changes after startup.
fn constant(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series as scraped before prometheus-client: name, type, help.
    const SERIES: [(&str, &str, &str); 17] = [
        ("evidence_requests_total", "counter", "Evidence requests received."),
        ("evidence_failures_total", "counter", "Evidence requests answered with an error."),
        ("evidence_busy_total", "counter", "Evidence requests answered 503 because too many were waiting for the TPM."),
        ("quotes_total", "counter", "TPM quotes signed (one per batch of challenges)."),
        ("challenges_total", "counter", "Challenges answered by those quotes."),
        ("quote_failures_total", "counter", "Batches whose quote failed (each of their challenges got the error)."),
        ("proxied_requests_total", "counter", "Requests forwarded to the inference engine."),
        ("activations_total", "counter", "Credentials the TPM activated for verifiers."),
        ("activation_refusals_total", "counter", "Credentials the TPM refused to activate."),
        ("activations_limited_peer_total", "counter", "Activation requests answered 429: over the per-peer rate."),
        ("activations_limited_queue_total", "counter", "Activation requests answered 429: the activation queue was full."),
        ("deadlines_exceeded_total", "counter", "Evidence or activation requests that exceeded the request deadline."),
        ("connections_open", "gauge", "TLS connections open now."),
        ("connections_limit", "gauge", "Most connections open at once (--max-connections)."),
        ("accept_errors_total", "counter", "Failed accepts (e.g. out of file descriptors)."),
        ("launches", "gauge", "Launches recorded in this boot's launch log (the workload PCR cannot be compacted)."),
        ("launch_limit", "gauge", "Most launches per boot (--max-launches); the next start beyond it is refused until the node reboots."),
    ];

    #[test]
    fn names_types_and_help_are_unchanged() {
        let batch = BatchStats::default();
        let metrics = EnclaveMetrics::new(
            &batch,
            1024,
            Some(LaunchStats {
                launches: 3,
                limit: 64,
            }),
        );
        batch.quotes.inc();
        batch.challenges.inc_by(5);
        metrics.evidence_requests.inc();
        metrics.connections_open.inc();
        let text = metrics.encode();
        let mut at = 0;
        for (name, kind, help) in SERIES {
            // The family (HELP and TYPE) is the sample name without the
            // counter suffix.
            let family = name.strip_suffix("_total").unwrap_or(name);
            let block = format!(
                "# HELP aver_enclave_{family} {help}\n# TYPE aver_enclave_{family} {kind}\naver_enclave_{name} "
            );
            let found = text[at..]
                .find(&block)
                .unwrap_or_else(|| panic!("missing or out of order:\n{block}\nin\n{text}"));
            at += found + block.len();
        }
        for sample in [
            "aver_enclave_evidence_requests_total 1\n",
            "aver_enclave_quotes_total 1\n",
            "aver_enclave_challenges_total 5\n",
            "aver_enclave_connections_open 1\n",
            "aver_enclave_connections_limit 1024\n",
            "aver_enclave_launches 3\n",
            "aver_enclave_launch_limit 64\n",
        ] {
            assert!(text.contains(sample), "missing {sample:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn without_a_local_tpm_there_is_no_launch_log() {
        let metrics = EnclaveMetrics::new(&BatchStats::default(), 8, None);
        let text = metrics.encode();
        assert!(!text.contains("aver_enclave_launch"), "{text}");
        assert!(
            text.contains("aver_enclave_connections_limit 8\n"),
            "{text}"
        );
    }
}
