//! The Spec ID event (TCG_EfiSpecIdEvent) that opens a log and says which
//! digests every later record carries.

use super::error::UefiLogError;
use super::reader::Reader;

/// Signature of the crypto-agile header event (TCG PC Client PFP, 2.0).
pub const SPEC_ID_EVENT03: &[u8; 16] = b"Spec ID Event03\0";
/// Signature of the TPM 1.2 era header of a SHA-1 legacy log.
pub const SPEC_ID_EVENT00: &[u8; 16] = b"Spec ID Event00\0";
/// Signature of the TPM 2.0 SHA-1-only header of a legacy log.
pub const SPEC_ID_EVENT02: &[u8; 16] = b"Spec ID Event02\0";

/// At most this many algorithms in a Spec ID event: TPMs have a handful of
/// banks, and a larger count is a malformed (or hostile) header.
pub const MAX_SPEC_ID_ALGORITHMS: u32 = 16;

/// One algorithm the Spec ID event declares, with its digest size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecIdAlgorithm {
    /// TPM_ALG_ID.
    pub alg_id: u16,
    /// Digest size in bytes for that algorithm in every record.
    pub digest_size: u16,
}

/// The decoded Spec ID event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecId {
    /// The 16-byte signature, e.g. `Spec ID Event03\0`.
    pub signature: [u8; 16],
    /// 0 client, 1 server.
    pub platform_class: u32,
    /// specVersionMinor of the PC Client spec the log follows (0 for 2.0).
    pub spec_version_minor: u8,
    /// specVersionMajor of the PC Client spec the log follows (2 for 2.0).
    pub spec_version_major: u8,
    /// specErrata: the errata revision of that spec version.
    pub spec_errata: u8,
    /// Size of UINTN in UINT32s (1 for 32-bit, 2 for 64-bit firmware).
    pub uintn_size: u8,
    /// Declared algorithms (empty for the legacy Event00/Event02 headers).
    pub algorithms: Vec<SpecIdAlgorithm>,
    /// vendorInfo: opaque platform-vendor bytes (at most 255), not interpreted.
    pub vendor_info: Vec<u8>,
}

impl SpecId {
    /// Whether this is the crypto-agile header.
    pub fn is_crypto_agile(&self) -> bool {
        &self.signature == SPEC_ID_EVENT03
    }

    /// Decodes the event data of a Spec ID event; `offset` is where that
    /// data starts in the log, for the error.
    pub fn parse(data: &[u8], offset: usize) -> Result<SpecId, UefiLogError> {
        let bad = |reason| UefiLogError::BadSpecId { offset, reason };
        let mut r = Reader::new(data);
        let signature: [u8; 16] = r.array().ok_or(bad("truncated signature"))?;
        let agile = &signature == SPEC_ID_EVENT03;
        if !agile && &signature != SPEC_ID_EVENT00 && &signature != SPEC_ID_EVENT02 {
            return Err(bad("unknown signature"));
        }
        let platform_class = r.u32().ok_or(bad("truncated platformClass"))?;
        let spec_version_minor = r.u8().ok_or(bad("truncated specVersionMinor"))?;
        let spec_version_major = r.u8().ok_or(bad("truncated specVersionMajor"))?;
        let spec_errata = r.u8().ok_or(bad("truncated specErrata"))?;
        let uintn_size = r.u8().ok_or(bad("truncated uintnSize"))?;
        let mut algorithms = Vec::new();
        if agile {
            let n = r.u32().ok_or(bad("truncated numberOfAlgorithms"))?;
            if n == 0 {
                return Err(bad("no algorithms"));
            }
            if n > MAX_SPEC_ID_ALGORITHMS {
                return Err(bad("too many algorithms"));
            }
            for _ in 0..n {
                let alg_id = r.u16().ok_or(bad("truncated algorithm list"))?;
                let digest_size = r.u16().ok_or(bad("truncated algorithm list"))?;
                if digest_size == 0 {
                    return Err(bad("zero digest size"));
                }
                if algorithms
                    .iter()
                    .any(|a: &SpecIdAlgorithm| a.alg_id == alg_id)
                {
                    return Err(bad("algorithm declared twice"));
                }
                algorithms.push(SpecIdAlgorithm {
                    alg_id,
                    digest_size,
                });
            }
        }
        let vendor_size = r.u8().ok_or(bad("truncated vendorInfoSize"))?;
        let vendor_info = r
            .bytes(usize::from(vendor_size))
            .ok_or(bad("truncated vendorInfo"))?
            .to_vec();
        if !r.is_empty() {
            return Err(bad("bytes after vendorInfo"));
        }
        Ok(SpecId {
            signature,
            platform_class,
            spec_version_minor,
            spec_version_major,
            spec_errata,
            uintn_size,
            algorithms,
            vendor_info,
        })
    }
}
