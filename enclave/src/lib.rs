//! `aver-enclave`: the hardened server in each model pod.
//!
//! It generates its TLS key in memory ([`tls_key`]), measures the workload
//! it fronts ([`measure`]) into the workload PCR with a write-ahead event log
//! that survives restarts ([`launch_log`]), and answers verifiers' nonces with
//! TPM-signed evidence bound to that key ([`evidence`]). [`launch`] ties the
//! steps together in the order the security properties of DESIGN §3 need;
//! [`tpm`] is the only code that talks to the TPM.

pub mod batcher;
pub mod cli;
pub mod endorsement;
pub mod evidence;
pub mod launch;
pub mod launch_log;
pub mod measure;
pub mod server;
pub mod tls_key;
pub mod tpm;

pub use evidence::{collect, CollectError};
pub use launch::{Enclave, LaunchConfig, LaunchError};
pub use launch_log::{LaunchLog, LaunchLogError};
pub use measure::WorkloadInputs;
pub use tls_key::TlsKey;
pub use tpm::{Tpm, TpmError};
