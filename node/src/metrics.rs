//! Prometheus metrics of the node agent and the small HTTP server that
//! exposes them (`/metrics`, `--metrics-addr`).
//!
//! Refusals are what an operator watches: a node that refuses pods is either
//! under attack or misconfigured, and the counter says which call it was.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

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
        Self {
            registry: Arc::new(registry),
            cri_requests,
            refusals,
        }
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

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
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
}
