//! The one error type of the UEFI log parser, decoder and replay.

use super::alg::HashAlg;
use super::event::EventType;

/// Why a UEFI event log (or one of its events) was rejected.
///
/// The log is untrusted input from the node, so every malformation has its
/// own variant, with the byte offset into the log and/or the index of the
/// event it was found in, for an operator to find it with a hex dump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UefiLogError {
    /// The log has no bytes (or nothing but padding).
    #[error("empty UEFI event log")]
    Empty,
    /// The log is larger than [`super::MAX_UEFI_LOG_BYTES`].
    #[error("UEFI event log of {len} bytes exceeds the limit of {max} bytes")]
    LogTooLarge { len: usize, max: usize },
    /// The log has more than [`super::MAX_UEFI_EVENTS`] events.
    #[error("UEFI event log has more than {max} events (at offset {offset})")]
    TooManyEvents { offset: usize, max: usize },
    /// A record ends before its fields do.
    #[error("event {index} at offset {offset}: truncated {field}")]
    Truncated {
        index: usize,
        offset: usize,
        field: &'static str,
    },
    /// A PCR index above 23.
    #[error("event {index} at offset {offset}: PCR index {pcr} is out of range 0..=23")]
    PcrOutOfRange {
        index: usize,
        offset: usize,
        pcr: u32,
    },
    /// An event's data is larger than [`super::MAX_UEFI_EVENT_DATA_BYTES`].
    #[error(
        "event {index} at offset {offset}: event data of {size} bytes exceeds the limit of {max}"
    )]
    EventTooLarge {
        index: usize,
        offset: usize,
        size: u64,
        max: usize,
    },
    /// The "Spec ID Event03" header event is malformed.
    #[error("bad Spec ID event at offset {offset}: {reason}")]
    BadSpecId { offset: usize, reason: &'static str },
    /// The Spec ID event declares a size for a known algorithm that is not
    /// that algorithm's digest size.
    #[error("Spec ID event at offset {offset}: algorithm {alg:#06x} declared with digest size {declared}, expected {expected}")]
    DigestSizeMismatch {
        offset: usize,
        alg: u16,
        declared: u16,
        expected: usize,
    },
    /// A TCG_PCR_EVENT2 record carries a different number of digests than
    /// the Spec ID event declares algorithms.
    #[error("event {index} at offset {offset}: {count} digests, the Spec ID event declares {expected} algorithms")]
    DigestCountMismatch {
        index: usize,
        offset: usize,
        count: u32,
        expected: usize,
    },
    /// A digest for an algorithm the Spec ID event did not declare.
    #[error("event {index} at offset {offset}: digest for algorithm {alg:#06x}, not declared in the Spec ID event")]
    UndeclaredAlgorithm {
        index: usize,
        offset: usize,
        alg: u16,
    },
    /// Two digests for the same algorithm in one record.
    #[error("event {index} at offset {offset}: two digests for algorithm {alg:#06x}")]
    DuplicateDigest {
        index: usize,
        offset: usize,
        alg: u16,
    },
    /// Bytes after the last event that are neither all 0x00 nor all 0xFF.
    #[error("{len} trailing bytes at offset {offset} after the last event")]
    TrailingBytes { offset: usize, len: usize },
    /// A TPM_ALG_ID this crate has no hash for.
    #[error("unsupported hash algorithm {0:#06x}")]
    UnsupportedAlgorithm(u16),
    /// A hash algorithm name that is not sha1, sha256, sha384 or sha512.
    #[error("unknown hash algorithm name {0:?}")]
    UnknownAlgorithmName(String),
    /// Replay of a bank the log carries no digests for.
    #[error("the UEFI event log has no {0} digests")]
    BankNotInLog(HashAlg),
    /// A StartupLocality event after PCR 0 was already extended (or a
    /// second one): the locality only sets PCR 0's initial value.
    #[error("event {index}: StartupLocality event after PCR 0 was extended or set")]
    LocalityAfterExtend { index: usize },
    /// A StartupLocality other than 0, 3 or 4.
    #[error("event {index}: StartupLocality {locality} is not 0, 3 or 4")]
    BadLocality { index: usize, locality: u8 },
    /// An event's data does not have the structure its type requires.
    #[error("event {index} ({event_type}): bad event data: {reason}")]
    BadEventData {
        index: usize,
        event_type: EventType,
        reason: &'static str,
    },
    /// A malformed EFI_SIGNATURE_LIST in a PK/KEK/db/dbx variable.
    #[error("bad EFI_SIGNATURE_LIST at offset {offset} of the variable data: {reason}")]
    BadSignatureList { offset: usize, reason: &'static str },
}
