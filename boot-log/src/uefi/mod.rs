//! The UEFI firmware event log (TCG PC Client Platform Firmware Profile,
//! TCG EFI Protocol): what firmware, the boot loader and the kernel's EFI
//! stub measured into PCRs 0–9 before the OS ran.
//!
//! [`EventLog::parse`] reads both layouts (crypto-agile with a "Spec ID
//! Event03" header, and SHA-1 legacy) within the bounds below;
//! [`Event::decode`] interprets event data (EFI variables, image loads,
//! tagged events, ...); [`EventLog::replay`] recomputes the PCRs of one
//! bank, the only way to tell whether the log is the one the TPM saw.

mod alg;
mod data;
mod devpath;
mod error;
mod event;
mod guid;
mod parse;
mod reader;
mod replay;
mod spec_id;
mod variable;

pub use alg::HashAlg;
pub use data::{
    tagged_description, EventData, ImageLoad, LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG,
};
pub use devpath::device_path_text;
pub use error::UefiLogError;
pub use event::{Event, EventType};
pub use guid::Guid;
pub use parse::{EventLog, LogFormat};
pub use replay::PcrBank;
pub use spec_id::{
    SpecId, SpecIdAlgorithm, MAX_SPEC_ID_ALGORITHMS, SPEC_ID_EVENT00, SPEC_ID_EVENT02,
    SPEC_ID_EVENT03,
};
pub use variable::{EfiVariable, SignatureEntry, SignatureKind};

/// Largest log accepted: real logs are tens of KiB (the fixture is 5.5
/// KiB); the TCG2 event log area firmware reserves is typically 64 KiB.
pub const MAX_UEFI_LOG_BYTES: usize = 1 << 20;

/// Most events accepted: a real boot logs a few dozen to a few hundred.
pub const MAX_UEFI_EVENTS: usize = 8192;

/// Largest event data accepted: EFI variables (db with certificates) and
/// GPT headers are a few KiB.
pub const MAX_UEFI_EVENT_DATA_BYTES: usize = 256 * 1024;

/// PCRs of a PC Client TPM: 0..=23.
pub const PCR_COUNT: usize = 24;
