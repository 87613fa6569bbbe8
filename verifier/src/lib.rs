//! Verification of aver TPM evidence, in pure Rust with no TPM at hand.
//!
//! A client holds raw [`Evidence`] fetched from an endpoint and turns it into
//! a [`VerifiedReport`] only through [`verify()`]: the two are different
//! types so that code cannot mistake "received" for "checked".
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod binding;
pub mod clock;
pub mod ek;
pub mod error;
pub mod eventlog;
pub mod evidence;
pub mod measurement;
pub mod platform;
pub mod policy;
pub mod policy_init;
pub mod reference_values;
pub mod report;
pub mod tpm;
pub mod verify;

pub use aver_crds::{AkName, AttestationPolicy, Sha256Digest};
pub use binding::Nonce;
pub use clock::ClockHistory;
pub use error::VerifyError;
pub use evidence::{
    Evidence, EvidenceError, EVIDENCE_VERSIONS, EVIDENCE_VERSION_ENCLAVE, EVIDENCE_VERSION_NODE,
};
pub use platform::{BootError, CheckedLog, PlatformReport, RuntimeError};
pub use policy::ValidatedPolicy;
pub use report::{MeasuredBy, MeasuredContainer, VerifiedLaunch, VerifiedNode, VerifiedReport};
pub use verify::{verify, verify_activated, verify_node, verify_with, Challenge, VerifyOptions};
