//! Prometheus metrics of the node agent, served on `--metrics-addr` with the
//! health endpoints (`/metrics`, `/healthz`, `/readyz`) by
//! [`aver_serve::MetricsServer`].
//!
//! Refusals are what an operator watches: a node that refuses pods is either
//! under attack or misconfigured, and the counter says which call it was.
//! The node log's size against its bound (`aver_node_log_events`,
//! `aver_node_log_event_limit`) says how long until the node refuses every
//! new pod and must be rebooted ([`crate::store::StoreError::Full`]).

use std::sync::{Arc, OnceLock};

use aver_node_log::MAX_NODE_LOG_EVENTS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::worker::NodeLogSize;

/// Label naming a CRI call by its method name (`RunPodSandbox`, `Exec`, …).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: String,
}

/// Every metric `aver-node` exports. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    cri_requests: Family<CallLabel, Counter>,
    refusals: Family<CallLabel, Counter>,
    log_events: Gauge,
    /// Where `log_events` is read from at each scrape, once known.
    log_size: Arc<OnceLock<NodeLogSize>>,
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
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aver_node");
        let cri_requests = Family::<CallLabel, Counter>::default();
        registry.register(
            "cri_requests",
            "CRI calls received from the kubelet, by method",
            cri_requests.clone(),
        );
        let refusals = Family::<CallLabel, Counter>::default();
        registry.register(
            "refusals",
            "CRI calls the gate refused (or undid after the runtime acted), by method",
            refusals.clone(),
        );
        let log_events: Gauge = Gauge::default();
        registry.register(
            "log_events",
            "Events in the node log since boot; at aver_node_log_event_limit every new pod is refused until the node reboots",
            log_events.clone(),
        );
        let log_event_limit: Gauge = Gauge::default();
        log_event_limit.set(i64::try_from(MAX_NODE_LOG_EVENTS).unwrap_or(i64::MAX));
        registry.register(
            "log_event_limit",
            "Most events the node log holds per boot",
            log_event_limit,
        );
        Self {
            registry: Arc::new(registry),
            cri_requests,
            refusals,
            log_events,
            log_size: Arc::new(OnceLock::new()),
        }
    }

    /// Exports the size of this node log (from [`crate::store::Measurer::log_size`])
    /// as `aver_node_log_events`. Only the first call counts.
    pub fn watch_node_log(&self, size: NodeLogSize) {
        let _ = self.log_size.set(size);
    }

    /// Counts one CRI call.
    pub fn cri_request(&self, call: &str) {
        self.cri_requests
            .get_or_create(&CallLabel {
                call: call.to_owned(),
            })
            .inc();
    }

    /// Counts one refusal.
    pub fn refusal(&self, call: &str) {
        self.refusals
            .get_or_create(&CallLabel {
                call: call.to_owned(),
            })
            .inc();
    }

    /// CRI calls of this method counted so far.
    pub fn cri_requests(&self, call: &str) -> u64 {
        self.cri_requests
            .get_or_create(&CallLabel {
                call: call.to_owned(),
            })
            .get()
    }

    /// Refusals of this method counted so far.
    pub fn refusals(&self, call: &str) -> u64 {
        self.refusals
            .get_or_create(&CallLabel {
                call: call.to_owned(),
            })
            .get()
    }

    /// The metrics in the OpenMetrics text format, `aver_node_log_events`
    /// read from the node log first.
    pub fn encode(&self) -> String {
        if let Some(size) = self.log_size.get() {
            self.log_events
                .set(i64::try_from(size.events()).unwrap_or(i64::MAX));
        }
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
    fn counters_have_the_documented_names() {
        let metrics = Metrics::new();
        metrics.cri_request("RunPodSandbox");
        metrics.refusal("Exec");
        let text = metrics.encode();
        assert!(
            text.contains("aver_node_cri_requests_total{call=\"RunPodSandbox\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aver_node_refusals_total{call=\"Exec\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.refusals("Exec"), 1);
        assert_eq!(metrics.refusals("Attach"), 0);
    }

    #[test]
    fn the_node_log_gauge_follows_the_log_and_names_its_bound() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(text.contains("aver_node_log_events 0"), "{text}");
        assert!(
            text.contains(&format!("aver_node_log_event_limit {MAX_NODE_LOG_EVENTS}")),
            "{text}"
        );
        let size = NodeLogSize::default();
        metrics.watch_node_log(size.clone());
        size.set(17);
        assert!(metrics.encode().contains("aver_node_log_events 17"));
        size.set(18);
        assert!(metrics.clone().encode().contains("aver_node_log_events 18"));
    }
}
