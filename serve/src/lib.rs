//! `aver-serve`: the server shell shared by every aver binary that serves
//! (the enclave, the controller, the node agent and the proxy).
//!
//! Each of them used to carry its own accept loop, metrics endpoint and
//! JSON error body, and the copies had drifted: one retried a failing
//! `accept` in a busy loop, another slept a fixed time, one formatted the
//! Prometheus text by hand. What is common is written once here:
//!
//! - [`Accepting`]: accepting connections, where running out of file
//!   descriptors (or kernel buffers) backs off exponentially instead of
//!   spinning a core or exiting, and other accept errors are retried;
//! - [`MetricsServer`]: the plain-HTTP server of
//!   [`METRICS_PATH`](aver_crds::protocol::METRICS_PATH),
//!   [`HEALTHZ_PATH`](aver_crds::protocol::HEALTHZ_PATH) and
//!   [`READYZ_PATH`](aver_crds::protocol::READYZ_PATH), from a
//!   prometheus-client [`Registry`](prometheus_client::registry::Registry)
//!   (or anything [`Scrape`]) and a [`Readiness`] flag, with graceful
//!   shutdown;
//! - [`encode`] and [`OPENMETRICS_CONTENT_TYPE`]: the one exposition format;
//! - [`json_error`]: the JSON error body in the shape OpenAI-compatible
//!   clients expect (`{"error": {"type": …, "message": …}}`).
//!
//! What differs stays with each binary: the enclave's TLS handshake,
//! connection slots and drain, the node agent's caller identification on
//! its unix socket, the proxy's forwarding.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

mod accept;
mod error;
mod metrics;

pub use accept::{AcceptBackoff, Accepting, AfterAcceptError};
pub use error::json_error;
pub use metrics::{encode, MetricsServer, Readiness, Scrape, OPENMETRICS_CONTENT_TYPE};
