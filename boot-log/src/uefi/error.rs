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
    LogTooLarge {
        /// Size of the log received, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The log has more than [`super::MAX_UEFI_EVENTS`] events.
    #[error("UEFI event log has more than {max} events (at offset {offset})")]
    TooManyEvents {
        /// Byte offset in the log of the first event over the limit.
        offset: usize,
        /// The limit, in events.
        max: usize,
    },
    /// A record ends before its fields do.
    #[error("event {index} at offset {offset}: truncated {field}")]
    Truncated {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log.
        offset: usize,
        /// The part of the record that is cut short (e.g. `eventSize`,
        /// `event data`).
        field: &'static str,
    },
    /// A PCR index above 23.
    #[error("event {index} at offset {offset}: PCR index {pcr} is out of range 0..=23")]
    PcrOutOfRange {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log (0 when found in
        /// replay).
        offset: usize,
        /// The pcrIndex the record declares.
        pcr: u32,
    },
    /// An event's data is larger than [`super::MAX_UEFI_EVENT_DATA_BYTES`].
    #[error(
        "event {index} at offset {offset}: event data of {size} bytes exceeds the limit of {max}"
    )]
    EventTooLarge {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log.
        offset: usize,
        /// The eventSize the record declares, in bytes.
        size: u64,
        /// The limit, in bytes.
        max: usize,
    },
    /// The "Spec ID Event03" header event is malformed.
    #[error("bad Spec ID event at offset {offset}: {reason}")]
    BadSpecId {
        /// Byte offset in the log where the Spec ID event's data starts.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The Spec ID event declares a size for a known algorithm that is not
    /// that algorithm's digest size.
    #[error("Spec ID event at offset {offset}: algorithm {alg:#06x} declared with digest size {declared}, expected {expected}")]
    DigestSizeMismatch {
        /// Byte offset in the log where the Spec ID event's data starts.
        offset: usize,
        /// The algorithm's TPM_ALG_ID.
        alg: u16,
        /// The digestSize the Spec ID event declares, in bytes.
        declared: u16,
        /// That algorithm's real digest size, in bytes.
        expected: usize,
    },
    /// A TCG_PCR_EVENT2 record carries a different number of digests than
    /// the Spec ID event declares algorithms.
    #[error("event {index} at offset {offset}: {count} digests, the Spec ID event declares {expected} algorithms")]
    DigestCountMismatch {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log.
        offset: usize,
        /// The record's digests.count.
        count: u32,
        /// How many algorithms the Spec ID event declares.
        expected: usize,
    },
    /// A digest for an algorithm the Spec ID event did not declare.
    #[error("event {index} at offset {offset}: digest for algorithm {alg:#06x}, not declared in the Spec ID event")]
    UndeclaredAlgorithm {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log.
        offset: usize,
        /// The digest's TPM_ALG_ID.
        alg: u16,
    },
    /// Two digests for the same algorithm in one record.
    #[error("event {index} at offset {offset}: two digests for algorithm {alg:#06x}")]
    DuplicateDigest {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// Byte offset of the event's record in the log.
        offset: usize,
        /// The repeated TPM_ALG_ID.
        alg: u16,
    },
    /// Bytes after the last event that are neither all 0x00 nor all 0xFF.
    #[error("{len} trailing bytes at offset {offset} after the last event")]
    TrailingBytes {
        /// Byte offset in the log where the trailing bytes start.
        offset: usize,
        /// How many there are.
        len: usize,
    },
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
    LocalityAfterExtend {
        /// Position of the StartupLocality event in the log.
        index: usize,
    },
    /// A StartupLocality other than 0, 3 or 4.
    #[error("event {index}: StartupLocality {locality} is not 0, 3 or 4")]
    BadLocality {
        /// Position of the StartupLocality event in the log.
        index: usize,
        /// The locality it declares.
        locality: u8,
    },
    /// An event's data does not have the structure its type requires.
    #[error("event {index} ({event_type}): bad event data: {reason}")]
    BadEventData {
        /// Position of the event in the log (0 for the first record).
        index: usize,
        /// The type whose structure the data does not have.
        event_type: EventType,
        /// What is wrong with the data.
        reason: &'static str,
    },
    /// A malformed EFI_SIGNATURE_LIST in a PK/KEK/db/dbx variable.
    #[error("bad EFI_SIGNATURE_LIST at offset {offset} of the variable data: {reason}")]
    BadSignatureList {
        /// Byte offset of the list in the variable's data (not in the log).
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}
