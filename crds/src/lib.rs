//! API types of aver, defined once and shared by every part that speaks them.
//!
//! The attestation policy lives here (not in the verifier) because the same
//! schema is embedded in the `ConfidentialModel` resource and read from client
//! policy files: one definition keeps the operator and zero-trust clients from
//! drifting apart on what "verified" means.

pub mod digest;
pub mod policy;

pub use digest::{DigestParseError, Sha256Digest};
pub use policy::{AllowedWorkload, AttestationPolicy, PolicyError, ReferencePcr, TrustRoots};
