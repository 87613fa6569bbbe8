//! Test support shared by aver's test suites.
//!
//! Tests of the EK chain, of activation and of the TPM parsers all need the
//! same fixtures: a manufacturer CA that issues EK certificates shaped like
//! a vendor's, the unit tests' RSA EK, and TPM structures marshalled as a
//! TPM writes them. Each suite used to build its own, and the copies
//! drifted (one DER encoder wrote every length in the short form, wrong
//! above 127 bytes). This crate is the one test CA and the one set of builders,
//! so that tests agree on their fixtures.
//!
//! - [`ca`]: the test PKI (root, intermediate, EK certificates), made with
//!   rcgen;
//! - [`der`]: DER and PEM encoding by hand, for shapes certificate
//!   generators cannot make;
//! - [`tpm`]: TPMT_PUBLIC, TPMS_ATTEST and TPMT_SIGNATURE builders.
//!
//! It depends on no aver crate: the verifier's own unit tests use it, and a
//! dependency back on the verifier would give them two copies of its types.
//! Builders therefore take plain fields, not the verifier's parsed types.
//!
//! Everything here panics on failure: a fixture that cannot be built is a
//! bug in the test, not a condition to handle.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod ca;
pub mod der;
pub mod tpm;

pub use ca::{ek_certificate, rsa_ek, ForeignKey, TestCa, TpmAttributes};
