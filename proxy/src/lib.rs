//! `aver-proxy`: a local plain-HTTP/1.1 proxy in front of attested aver
//! enclaves, so that unmodified clients (the OpenAI SDKs, curl) get the
//! guarantee `aver request` gives: no byte of a request leaves this machine
//! unless the TLS connection it travels over has been attested against the
//! policy (fresh nonce, evidence bound to that connection's key).
//!
//! ```no_run
//! # async fn example(policy: aver_crds::AttestationPolicy) -> Result<(), aver_proxy::ProxyError> {
//! use aver_proxy::{Listen, Proxy, ProxyConfig, Upstream};
//! let config = ProxyConfig::new(
//!     policy,
//!     Upstream::Url("https://10.0.0.7:8443".into()),
//!     Listen::Tcp("127.0.0.1:8080".parse().unwrap()),
//! );
//! let proxy = Proxy::bind(config).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Requests that cannot go to an attested endpoint are answered `502` with
//! `x-aver-error: <reason>` and a JSON body in the OpenAI error shape
//! (`{"error":{"type":"aver_attestation_error","code":…,"message":…}}`).
//! `GET /aver/status` serves [`ProxyStatus`] as JSON and `GET /aver/metrics`
//! Prometheus metrics; every other request is forwarded.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

#[cfg(feature = "cluster")]
pub mod cluster;
mod config;
mod error;
mod metrics;
mod pool;
mod server;
mod status;

pub use config::{Listen, ProxyConfig, Upstream};
pub use error::ProxyError;
pub use server::{LocalAddr, Proxy};
pub use status::{EndpointStatus, LastError, Measurements, PoolStatus, ProxyStatus};

/// Value of the `type` field of the JSON error body of a refused request.
pub const ERROR_TYPE: &str = "aver_attestation_error";

/// Header naming the reason a request was refused (a
/// `ClientError::reason()` label such as `model`, `spki`, `unreachable`).
pub const ERROR_HEADER: &str = "x-aver-error";

/// Header on forwarded answers naming the enclave (`host:port`) that
/// served them.
pub const ENDPOINT_HEADER: &str = "x-aver-endpoint";

/// Path of the status document.
pub const STATUS_PATH: &str = "/aver/status";

/// Path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/aver/metrics";
