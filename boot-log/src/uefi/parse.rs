//! Parsing the binary log (both formats) into [`EventLog`].

use super::alg::HashAlg;
use super::error::UefiLogError;
use super::event::{Event, EventType};
use super::reader::Reader;
use super::spec_id::{SpecId, SPEC_ID_EVENT03};
use super::{MAX_UEFI_EVENTS, MAX_UEFI_EVENT_DATA_BYTES, MAX_UEFI_LOG_BYTES, PCR_COUNT};

/// The two layouts of a firmware event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// TCG_PCR_EVENT2 records after a "Spec ID Event03" header: one digest
    /// per PCR bank the firmware extended.
    CryptoAgile,
    /// TCG_PCClientPCREvent records with one SHA-1 digest each (TPM 1.2 and
    /// SHA-1-only TPM 2.0 firmware).
    Sha1Legacy,
}

/// A parsed firmware event log: syntactically valid, not yet trusted (its
/// meaning comes from a replay that matches quoted PCRs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    format: LogFormat,
    banks: Vec<HashAlg>,
    spec_id: Option<SpecId>,
    events: Vec<Event>,
}

/// Smallest record header: legacy pcr + type + SHA-1 + size.
const LEGACY_HEADER: usize = 4 + 4 + 20 + 4;

impl EventLog {
    /// Parses a log as `/sys/kernel/security/tpm0/binary_bios_measurements`
    /// (or the TCG2 protocol's GetEventLog) gives it, detecting its format
    /// from the first record.
    pub fn parse(bytes: &[u8]) -> Result<EventLog, UefiLogError> {
        if bytes.len() > MAX_UEFI_LOG_BYTES {
            return Err(UefiLogError::LogTooLarge {
                len: bytes.len(),
                max: MAX_UEFI_LOG_BYTES,
            });
        }
        if is_padding(bytes) {
            return Err(UefiLogError::Empty);
        }
        let mut r = Reader::new(bytes);
        let first = read_legacy(&mut r, 0)?;
        let header_data_offset = LEGACY_HEADER;
        let agile =
            first.event_type == EventType::EV_NO_ACTION && first.data.starts_with(SPEC_ID_EVENT03);
        let mut events = Vec::new();
        if !agile {
            let spec_id = if first.event_type == EventType::EV_NO_ACTION
                && first.data.starts_with(b"Spec ID Event")
            {
                Some(SpecId::parse(&first.data, header_data_offset)?)
            } else {
                None
            };
            events.push(first);
            while !at_end(&r)? {
                check_count(&events, &r)?;
                let e = read_legacy(&mut r, events.len())?;
                events.push(e);
            }
            return Ok(EventLog {
                format: LogFormat::Sha1Legacy,
                banks: vec![HashAlg::Sha1],
                spec_id,
                events,
            });
        }

        let bad = |reason| UefiLogError::BadSpecId { offset: 0, reason };
        if first.pcr != 0 {
            return Err(bad("Spec ID event not in PCR 0"));
        }
        if first
            .digest(HashAlg::Sha1)
            .is_some_and(|d| d.iter().any(|b| *b != 0))
        {
            return Err(bad("Spec ID event digest is not zero"));
        }
        let spec_id = SpecId::parse(&first.data, header_data_offset)?;
        let mut banks = Vec::new();
        for a in &spec_id.algorithms {
            if let Some(alg) = HashAlg::from_id(a.alg_id) {
                if usize::from(a.digest_size) != alg.digest_len() {
                    return Err(UefiLogError::DigestSizeMismatch {
                        offset: header_data_offset,
                        alg: a.alg_id,
                        declared: a.digest_size,
                        expected: alg.digest_len(),
                    });
                }
                banks.push(alg);
            }
        }
        events.push(first);
        while !at_end(&r)? {
            check_count(&events, &r)?;
            let e = read_agile(&mut r, events.len(), &spec_id)?;
            events.push(e);
        }
        Ok(EventLog {
            format: LogFormat::CryptoAgile,
            banks,
            spec_id: Some(spec_id),
            events,
        })
    }

    /// Which layout the log had.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The banks the log has a digest for in every record, in Spec ID
    /// order (just SHA-1 for a legacy log).
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// The decoded header event, if the log has one.
    pub fn spec_id(&self) -> Option<&SpecId> {
        self.spec_id.as_ref()
    }

    /// Every record, including the header and other EV_NO_ACTION events.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// All 0x00 or all 0xFF (or nothing): what firmware leaves after the log.
/// Stops at the first byte that differs, so it is cheap on real records.
fn is_padding(rest: &[u8]) -> bool {
    match rest.first() {
        None => true,
        Some(&b) if b == 0x00 || b == 0xFF => rest.iter().all(|&x| x == b),
        Some(_) => false,
    }
}

/// Whether the reader is at the end of the log (or at padding); an error
/// for trailing bytes too short to hold a record.
fn at_end(r: &Reader<'_>) -> Result<bool, UefiLogError> {
    let rest = r.rest();
    if is_padding(rest) {
        return Ok(true);
    }
    if rest.len() < 12 {
        return Err(UefiLogError::TrailingBytes {
            offset: r.offset(),
            len: rest.len(),
        });
    }
    Ok(false)
}

fn check_count(events: &[Event], r: &Reader<'_>) -> Result<(), UefiLogError> {
    if events.len() >= MAX_UEFI_EVENTS {
        return Err(UefiLogError::TooManyEvents {
            offset: r.offset(),
            max: MAX_UEFI_EVENTS,
        });
    }
    Ok(())
}

/// Reads pcrIndex and eventType, checking the PCR.
fn read_head(
    r: &mut Reader<'_>,
    index: usize,
    offset: usize,
) -> Result<(u8, EventType), UefiLogError> {
    let trunc = |field| UefiLogError::Truncated {
        index,
        offset,
        field,
    };
    let pcr = r.u32().ok_or(trunc("pcrIndex"))?;
    let event_type = EventType(r.u32().ok_or(trunc("eventType"))?);
    let pcr = u8::try_from(pcr)
        .ok()
        .filter(|p| usize::from(*p) < PCR_COUNT)
        .ok_or(UefiLogError::PcrOutOfRange { index, offset, pcr })?;
    Ok((pcr, event_type))
}

/// Reads eventSize and the event data, within the size bound.
fn read_data(r: &mut Reader<'_>, index: usize, offset: usize) -> Result<Vec<u8>, UefiLogError> {
    let trunc = |field| UefiLogError::Truncated {
        index,
        offset,
        field,
    };
    let size = r.u32().ok_or(trunc("eventSize"))?;
    if size as usize > MAX_UEFI_EVENT_DATA_BYTES {
        return Err(UefiLogError::EventTooLarge {
            index,
            offset,
            size: u64::from(size),
            max: MAX_UEFI_EVENT_DATA_BYTES,
        });
    }
    Ok(r.bytes(size as usize).ok_or(trunc("event data"))?.to_vec())
}

fn read_legacy(r: &mut Reader<'_>, index: usize) -> Result<Event, UefiLogError> {
    let offset = r.offset();
    let (pcr, event_type) = read_head(r, index, offset)?;
    let digest: [u8; 20] = r.array().ok_or(UefiLogError::Truncated {
        index,
        offset,
        field: "SHA-1 digest",
    })?;
    let data = read_data(r, index, offset)?;
    Ok(Event {
        index,
        pcr,
        event_type,
        digests: vec![(HashAlg::Sha1, digest.to_vec())],
        data,
    })
}

fn read_agile(r: &mut Reader<'_>, index: usize, spec: &SpecId) -> Result<Event, UefiLogError> {
    let offset = r.offset();
    let (pcr, event_type) = read_head(r, index, offset)?;
    let count = r.u32().ok_or(UefiLogError::Truncated {
        index,
        offset,
        field: "digest count",
    })?;
    if count as usize != spec.algorithms.len() {
        return Err(UefiLogError::DigestCountMismatch {
            index,
            offset,
            count,
            expected: spec.algorithms.len(),
        });
    }
    let mut seen: Vec<u16> = Vec::with_capacity(spec.algorithms.len());
    let mut digests = Vec::with_capacity(spec.algorithms.len());
    for _ in 0..count {
        let alg_id = r.u16().ok_or(UefiLogError::Truncated {
            index,
            offset,
            field: "digest algorithm",
        })?;
        let declared = spec.algorithms.iter().find(|a| a.alg_id == alg_id).ok_or(
            UefiLogError::UndeclaredAlgorithm {
                index,
                offset,
                alg: alg_id,
            },
        )?;
        if seen.contains(&alg_id) {
            return Err(UefiLogError::DuplicateDigest {
                index,
                offset,
                alg: alg_id,
            });
        }
        seen.push(alg_id);
        let digest = r
            .bytes(usize::from(declared.digest_size))
            .ok_or(UefiLogError::Truncated {
                index,
                offset,
                field: "digest",
            })?;
        if let Some(alg) = HashAlg::from_id(alg_id) {
            digests.push((alg, digest.to_vec()));
        }
    }
    let data = read_data(r, index, offset)?;
    Ok(Event {
        index,
        pcr,
        event_type,
        digests,
        data,
    })
}
