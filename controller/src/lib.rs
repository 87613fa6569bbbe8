//! The aver operator: reconciles `ConfidentialModel` resources into enclave
//! workloads on TPM nodes, re-attests every endpoint continuously, and
//! publishes the verified ones (certificate, SPKI pin, measurements) in
//! status.
//!
//! Module map:
//! - [`workload`]: the Deployment and Service built for a model (pure);
//! - [`reconcile`]: the kube-runtime reconciler (apply, status);
//! - [`model_volume`]: the volume a model's claim is bound to;
//! - [`status`]: the status a model should have, and when to write it (pure);
//! - [`attestation`]: the [`attestation::EndpointAttester`] seam and its types;
//! - [`source`]: the [`source::EndpointSource`] seam (what to attest);
//! - [`reattest`]: the re-attestation loop (jitter, bounded concurrency);
//! - [`results`]: the latest outcome of every endpoint, shared;
//! - [`effects`]: Events, pod deletion, reconcile triggers;
//! - [`leader`]: Lease-based leader election;
//! - [`metrics`]: Prometheus metrics and the health/metrics HTTP server;
//! - [`config`]: flags and settings.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod attestation;
pub mod config;
pub mod effects;
pub mod leader;
pub mod metrics;
pub mod model_volume;
pub mod reattest;
pub mod reconcile;
pub mod results;
pub mod source;
pub mod status;
pub mod tls_attester;
pub mod workload;

#[cfg(test)]
pub(crate) mod testing;

pub use attestation::{AttestError, AttestTarget, AttestedEndpoint, EndpointAttester};
pub use reattest::{AttestationEvent, Failure, Reattester};
pub use results::{ModelKey, ResultStore};
pub use source::{EndpointSource, ModelTargets, StaticSource};
