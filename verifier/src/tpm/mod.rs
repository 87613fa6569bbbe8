//! Just enough of the TPM 2.0 wire format (TPM 2.0 Library, Part 2) to verify
//! a quote: TPMS_ATTEST of type quote, TPMT_SIGNATURE (ECDSA, RSASSA,
//! RSAPSS with SHA-1/256/384/512) and TPMT_PUBLIC or TPM2B_PUBLIC (ECC
//! P-256 and P-384, RSA 2048 to 4096).
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

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// TPM_ALG_ID values this verifier knows by name.
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const SHA256: u16 = 0x000B;
    pub const SHA384: u16 = 0x000C;
    pub const SHA512: u16 = 0x000D;
    pub const NULL: u16 = 0x0010;
    pub const RSASSA: u16 = 0x0014;
    pub const RSAPSS: u16 = 0x0016;
    pub const ECDSA: u16 = 0x0018;
    pub const ECDAA: u16 = 0x001A;
    pub const ECC: u16 = 0x0023;
}

/// TPM_ECC_NIST_P256.
pub const ECC_NIST_P256: u16 = 0x0003;
/// TPM_ECC_NIST_P384.
pub const ECC_NIST_P384: u16 = 0x0004;

/// The name tpm2-tools gives a hash algorithm ("sha256"), for messages.
pub fn hash_name(hash_alg: u16) -> Option<&'static str> {
    Some(match hash_alg {
        alg::SHA1 => "sha1",
        alg::SHA256 => "sha256",
        alg::SHA384 => "sha384",
        alg::SHA512 => "sha512",
        _ => return None,
    })
}

/// `data` hashed with `hash_alg`, for the hash algorithms this verifier knows.
pub fn digest(hash_alg: u16, data: &[u8]) -> Option<Vec<u8>> {
    Some(match hash_alg {
        alg::SHA1 => Sha1::digest(data).to_vec(),
        alg::SHA256 => Sha256::digest(data).to_vec(),
        alg::SHA384 => Sha384::digest(data).to_vec(),
        alg::SHA512 => Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

/// A PCR bank's name for messages: "sha384", or the algorithm id in hex.
pub fn bank_name(hash_alg: u16) -> String {
    hash_name(hash_alg).map_or_else(|| format!("{hash_alg:#06x}"), str::to_owned)
}

/// Why TPM bytes could not be read as the expected structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    #[error("evidence PCR values are sha256; the quote selects the {bank} bank")]
    OtherPcrBank { bank: String },
    #[error(
        "not a TPMT_PUBLIC or TPM2B_PUBLIC: {len} bytes starting {first:#06x}, which is neither \
         a key type (RSA 0x0001, ECC 0x0023) nor the size of the rest ({rest} bytes)"
    )]
    UnrecognisedPublic { len: usize, first: u16, rest: usize },
    #[error("{structure}: {reason}")]
    Invalid {
        structure: &'static str,
        reason: &'static str,
    },
}
