//! `aver-node`: the node agent of a hardened node, and the only user of its
//! TPM (docs/node-measurement.md).
//!
//! It measures below the pod: as a CRI proxy between the kubelet and
//! containerd ([`cri`]) it sees every sandbox, container, exec, attach and
//! port-forward before the runtime acts, so the gate (built on
//! [`cri::Hooks`]) can refuse what the node policy does not allow and record
//! what it lets through. Enclaves get their evidence from it over the agent
//! socket ([`agent`]), which identifies callers by the kernel's word, not by
//! what they claim.
//!
//! Without the default `server` feature the crate is only
//! [`agent::protocol`] and [`agent::client`], for the enclave.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod agent;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod cri;
#[cfg(feature = "server")]
pub mod gate;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod platform_logs;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod unix;
