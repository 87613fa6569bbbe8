//! Verification of aver TPM evidence, in pure Rust with no TPM at hand.
//!
//! A client holds raw [`Evidence`] fetched from an endpoint and turns it into
//! a [`VerifiedReport`] only through [`verify()`]: the two are different
//! types so that code cannot mistake "received" for "checked".

pub mod binding;
pub mod eventlog;
pub mod evidence;
pub mod measurement;
pub mod tpm;

pub use aver_crds::{AttestationPolicy, Sha256Digest};
pub use binding::Nonce;
pub use evidence::{Evidence, EvidenceError, EVIDENCE_VERSION};
