//! `aver-enclave`: the hardened server in each model pod.
//!
//! It makes itself non-dumpable ([`hardening`]), generates its TLS key in
//! one locked page of memory ([`tls_key`]), measures the workload
//! it fronts ([`measure`]) into the workload PCR with a write-ahead event log
//! that survives restarts ([`launch_log`]), and answers verifiers' nonces with
//! TPM-signed evidence bound to that key ([`evidence`]). [`launch`] ties the
//! steps together in the order the security properties need
//! (docs/architecture.md#security-properties);
//! [`tpm`] (from the shared crate `aver-tpm`) is the only code that talks to
//! the TPM.
//!
//! On a hardened node the enclave has no TPM at all ([`node_agent`]): the
//! node agent `aver-node` measured the pod, records the enclave's TLS key and
//! quotes for it. [`backend`] is where the two modes meet the batcher.
#![warn(unreachable_pub)]

/// TPM access lives in the shared crate `aver-tpm` (the node agent uses it
/// too); re-exported so `aver_enclave::tpm` and `aver_enclave::endorsement`
/// keep working.
pub use aver_tpm::{endorsement, tpm};

pub mod backend;
pub mod batcher;
pub mod evidence;
pub mod hardening;
pub mod launch;
pub mod launch_log;
#[allow(unsafe_code)] // audited: see the module docs
mod locked_page;
pub mod measure;
pub mod node_agent;
pub mod server;
pub mod tls_key;

pub use evidence::{collect, CollectError};
pub use launch::{Enclave, LaunchConfig, LaunchError};
pub use launch_log::{LaunchLog, LaunchLogError};
pub use measure::WorkloadInputs;
pub use node_agent::{NodeAgentConfig, RegisteredEnclave};
pub use tls_key::TlsKey;
pub use tpm::{Tpm, TpmError};
