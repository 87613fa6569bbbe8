//! `aver-tpm`: the one implementation of aver's TPM access, through
//! `tss-esapi`.
//!
//! It exists as its own crate because two programs need the same TPM code:
//! the enclave (`aver-enclave`), which used to own the TPM, and the node
//! agent (`aver-node`), which measures below the pod and is becoming the only
//! user of the TPM on a node (docs/node-measurement.md). Sharing one crate
//! keeps the attestation key template, the PCR handling and the quote format
//! identical for both, so the verifier sees the same evidence whoever asked
//! for it.
//!
//! [`tpm`] opens the TPM, manages the persistent attestation key (AK), reads
//! and extends PCRs and quotes; [`pcrs`] is the workload PCR as a log uses
//! it and quotes paired with the values they signed; [`endorsement`] reads
//! the endorsement key (EK) certificates and performs credential activation.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub mod endorsement;
pub mod pcrs;
pub mod state_dir;
pub mod tpm;

pub use pcrs::{PcrQuote, QuoteError, WorkloadPcr};
pub use tpm::{Tpm, TpmError};
