//! Just enough of the TPM 2.0 wire format (TPM 2.0 Library, Part 2) to verify
//! a quote: TPMS_ATTEST of type quote, TPMT_SIGNATURE (ECDSA, RSASSA) and
//! TPMT_PUBLIC (ECC P-256, RSA 2048+).
//!
//! Written here, not taken from the C TSS, so that a client verifies with no
//! native library and no TPM; every parser is bounded (sizes are checked
//! before use, trailing bytes are rejected) and fuzzed by proptest. Anything
//! outside the supported subset is an explicit error, never skipped.

mod attest;
mod public;
mod reader;
mod signature;

pub use attest::{Attest, ClockInfo, PcrSelection};
pub use public::{AkPublic, PublicKey};
pub use signature::Signature;

/// TPM_ALG_ID values this verifier knows by name.
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA256: u16 = 0x000B;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDAA: u16 = 0x001A;
    pub const ECC: u16 = 0x0023;
}

/// TPM_ECC_NIST_P256.
pub const ECC_NIST_P256: u16 = 0x0003;

/// Why TPM bytes could not be read as the expected structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmParseError {
    #[error("{structure} is truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        structure: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("{structure} has {count} trailing bytes after its end")]
    TrailingBytes {
        structure: &'static str,
        count: usize,
    },
    #[error("{structure}: {field} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        structure: &'static str,
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error(
        "TPMS_ATTEST does not start with TPM_GENERATED_VALUE (0xff544347): not produced by a TPM"
    )]
    NotTpmGenerated,
    #[error("TPMS_ATTEST has type {0:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)")]
    NotAQuote(u16),
    #[error("{structure}: unsupported {what} {value:#06x}")]
    Unsupported {
        structure: &'static str,
        what: &'static str,
        value: u16,
    },
    #[error("{structure}: {reason}")]
    Invalid {
        structure: &'static str,
        reason: &'static str,
    },
}
