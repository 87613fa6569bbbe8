//! Decoding an event's data by its type, and the one-line description
//! operators read.

use super::devpath::device_path_text;
use super::error::UefiLogError;
use super::event::{Event, EventType};
use super::reader::Reader;
use super::spec_id::SpecId;
use super::variable::EfiVariable;

/// Tagged event ID Linux's EFI stub logs the initrd under (PCR 9).
pub const LINUX_INITRD_TAG: u32 = 0x8F3B_22EC;
/// Tagged event ID Linux's EFI stub logs the kernel command line (the
/// image's LoadOptions) under (PCR 9).
pub const LINUX_LOAD_OPTIONS_TAG: u32 = 0x8F3B_22ED;

/// What an event's data says, by event type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventData {
    /// The log header (EV_NO_ACTION "Spec ID Event…").
    SpecId(SpecId),
    /// EV_NO_ACTION "StartupLocality": the locality the CRTM started the
    /// TPM from, which sets PCR 0's initial value.
    StartupLocality(u8),
    /// Any other EV_NO_ACTION (never extended).
    NoAction,
    /// EV_SEPARATOR: the end of pre-OS measurements into a PCR; `error`
    /// when firmware logged the error value instead.
    Separator {
        /// Firmware logged the error value (1 or 0xFFFFFFFF), not 0.
        error: bool,
    },
    /// EV_ACTION / EV_EFI_ACTION text.
    Action(String),
    /// EV_EFI_VARIABLE_DRIVER_CONFIG, _BOOT, _BOOT2, _AUTHORITY.
    Variable(EfiVariable),
    /// EV_EFI_BOOT_SERVICES_APPLICATION/DRIVER, _RUNTIME_SERVICES_DRIVER.
    ImageLoad(ImageLoad),
    /// EV_EVENT_TAG (TCG_PCClientTaggedEvent).
    Tagged {
        /// taggedEventID, e.g. [`LINUX_INITRD_TAG`].
        id: u32,
        /// taggedEventData, taggedEventDataSize bytes.
        data: Vec<u8>,
    },
    /// EV_IPL: what a boot loader (grub) measured.
    Ipl(Vec<u8>),
    /// EV_EFI_PLATFORM_FIRMWARE_BLOB: a firmware volume by address.
    FirmwareBlob {
        /// BlobBase: the volume's physical address.
        base: u64,
        /// BlobLength, in bytes.
        length: u64,
    },
    /// EV_EFI_PLATFORM_FIRMWARE_BLOB2: the same with a description.
    FirmwareBlob2 {
        /// BlobDescription, as text (trailing NULs trimmed).
        description: String,
        /// BlobBase: the volume's physical address.
        base: u64,
        /// BlobLength, in bytes.
        length: u64,
    },
    /// EV_S_CRTM_VERSION: the CRTM's version string.
    CrtmVersion(String),
    /// EV_POST_CODE text.
    PostCode(String),
    /// A type this decoder does not interpret.
    Other,
}

/// UEFI_IMAGE_LOAD_EVENT: a PE image firmware loaded and measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLoad {
    /// ImageLocationInMemory: the physical address the image was loaded at.
    pub location_in_memory: u64,
    /// ImageLengthInMemory, in bytes.
    pub length_in_memory: u64,
    /// ImageLinkTimeAddress: the base address the PE image was linked for.
    pub link_time_address: u64,
    /// The raw device path the image was loaded from.
    pub device_path: Vec<u8>,
}

impl ImageLoad {
    /// The device path as UEFI text (best effort, never fails).
    pub fn device_path_text(&self) -> String {
        device_path_text(&self.device_path)
    }
}

/// The text of a tagged event's data up to its first NUL ("Linux
/// initrd", "LOADED_IMAGE::LoadOptions").
pub fn tagged_description(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(data.get(..end).unwrap_or_default()).into_owned()
}

impl EventData {
    /// For [`EventData::Tagged`], the text of the tag; `None` otherwise.
    pub fn description(&self) -> Option<String> {
        match self {
            EventData::Tagged { data, .. } => Some(tagged_description(data)),
            _ => None,
        }
    }

    /// For [`EventData::Ipl`], the data as (lossy) text without the
    /// trailing NUL grub writes; `None` otherwise.
    pub fn ipl_text(&self) -> Option<String> {
        match self {
            EventData::Ipl(d) => Some(lossy_trimmed(d)),
            _ => None,
        }
    }
}

fn lossy_trimmed(d: &[u8]) -> String {
    String::from_utf8_lossy(d)
        .trim_end_matches('\0')
        .to_string()
}

/// UTF-16LE if the data looks like it (even length, NUL high bytes or a
/// UTF-16 NUL terminator), ASCII otherwise; NULs trimmed.
fn utf16_or_ascii(d: &[u8]) -> String {
    let looks_utf16 = d.len().is_multiple_of(2)
        && !d.is_empty()
        && (d.ends_with(&[0, 0]) || d.iter().skip(1).step_by(2).all(|b| *b == 0));
    if looks_utf16 {
        let units: Vec<u16> = d
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
            .trim_end_matches('\0')
            .to_string()
    } else {
        lossy_trimmed(d)
    }
}

impl Event {
    /// Decodes the event data by type. An error means the data does not
    /// have its type's structure; parsing and replay do not depend on it.
    pub fn decode(&self) -> Result<EventData, UefiLogError> {
        let bad = |reason| UefiLogError::BadEventData {
            index: self.index,
            event_type: self.event_type,
            reason,
        };
        let d = self.data.as_slice();
        let mut r = Reader::new(d);
        let t = self.event_type;
        Ok(match t {
            EventType::EV_NO_ACTION => {
                if d.starts_with(b"Spec ID Event") {
                    EventData::SpecId(
                        SpecId::parse(d, 0).map_err(|_| bad("malformed Spec ID event"))?,
                    )
                } else if let Some(rest) = d.strip_prefix(b"StartupLocality\0") {
                    match rest {
                        [loc] => EventData::StartupLocality(*loc),
                        _ => return Err(bad("StartupLocality is not one byte")),
                    }
                } else {
                    EventData::NoAction
                }
            }
            EventType::EV_SEPARATOR => match d {
                [0, 0, 0, 0] => EventData::Separator { error: false },
                [1, 0, 0, 0] | [0xFF, 0xFF, 0xFF, 0xFF] => EventData::Separator { error: true },
                _ => return Err(bad("separator is not 0, 1 or 0xFFFFFFFF")),
            },
            EventType::EV_ACTION | EventType::EV_EFI_ACTION => {
                let s = lossy_trimmed(d);
                if !d.is_ascii() {
                    return Err(bad("action text is not ASCII"));
                }
                EventData::Action(s)
            }
            EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
            | EventType::EV_EFI_VARIABLE_BOOT
            | EventType::EV_EFI_VARIABLE_BOOT2
            | EventType::EV_EFI_VARIABLE_AUTHORITY => {
                EventData::Variable(EfiVariable::parse(d).map_err(bad)?)
            }
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION
            | EventType::EV_EFI_BOOT_SERVICES_DRIVER
            | EventType::EV_EFI_RUNTIME_SERVICES_DRIVER => {
                let trunc = || bad("truncated UEFI_IMAGE_LOAD_EVENT");
                let location_in_memory = r.u64().ok_or_else(trunc)?;
                let length_in_memory = r.u64().ok_or_else(trunc)?;
                let link_time_address = r.u64().ok_or_else(trunc)?;
                let dp_len = r.u64().ok_or_else(trunc)?;
                let device_path = r
                    .bytes_u64(dp_len)
                    .ok_or(bad("device path longer than the event"))?
                    .to_vec();
                if !r.is_empty() {
                    return Err(bad("bytes after the device path"));
                }
                EventData::ImageLoad(ImageLoad {
                    location_in_memory,
                    length_in_memory,
                    link_time_address,
                    device_path,
                })
            }
            EventType::EV_EVENT_TAG => {
                let trunc = || bad("truncated TCG_PCClientTaggedEvent");
                let id = r.u32().ok_or_else(trunc)?;
                let size = r.u32().ok_or_else(trunc)?;
                let data = r
                    .bytes(size as usize)
                    .ok_or(bad("tagged data longer than the event"))?
                    .to_vec();
                if !r.is_empty() {
                    return Err(bad("bytes after the tagged data"));
                }
                EventData::Tagged { id, data }
            }
            EventType::EV_IPL => EventData::Ipl(d.to_vec()),
            EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB => match (r.u64(), r.u64(), r.is_empty()) {
                (Some(base), Some(length), true) => EventData::FirmwareBlob { base, length },
                _ => return Err(bad("firmware blob is not 16 bytes")),
            },
            EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => {
                let trunc = || bad("truncated UEFI_PLATFORM_FIRMWARE_BLOB2");
                let n = r.u8().ok_or_else(trunc)?;
                let description = lossy_trimmed(r.bytes(usize::from(n)).ok_or_else(trunc)?);
                let base = r.u64().ok_or_else(trunc)?;
                let length = r.u64().ok_or_else(trunc)?;
                if !r.is_empty() {
                    return Err(bad("bytes after the blob length"));
                }
                EventData::FirmwareBlob2 {
                    description,
                    base,
                    length,
                }
            }
            EventType::EV_S_CRTM_VERSION => EventData::CrtmVersion(utf16_or_ascii(d)),
            EventType::EV_POST_CODE => EventData::PostCode(lossy_trimmed(d)),
            _ => EventData::Other,
        })
    }

    /// One line for an operator: the type and what the data says, e.g.
    /// `EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot (8be4df61-…) = 0 (disabled)`.
    /// Falls back to the type and data length for undecodable data.
    pub fn describe(&self) -> String {
        let t = self.event_type;
        let data = match self.decode() {
            Ok(d) => d,
            Err(_) => return format!("{t} ({} bytes, undecodable)", self.data.len()),
        };
        match data {
            EventData::SpecId(s) => {
                let sig = tagged_description(&s.signature);
                let algs: Vec<String> = s
                    .algorithms
                    .iter()
                    .map(|a| match super::alg::HashAlg::from_id(a.alg_id) {
                        Some(h) => h.to_string(),
                        None => format!("{:#06x}", a.alg_id),
                    })
                    .collect();
                format!("{t} {sig:?} [{}]", algs.join(", "))
            }
            EventData::StartupLocality(l) => format!("{t} StartupLocality {l}"),
            EventData::NoAction => format!("{t} ({} bytes)", self.data.len()),
            EventData::Separator { error: false } => format!("{t}"),
            EventData::Separator { error: true } => format!("{t} (error)"),
            EventData::Action(s) => format!("{t} {s:?}"),
            EventData::Variable(v) => {
                let value = if let Some(on) = v.secure_boot_enabled() {
                    format!(
                        "{} ({})",
                        v.data.first().copied().unwrap_or(0),
                        if on { "enabled" } else { "disabled" }
                    )
                } else if v.is_signature_database() {
                    match v.signature_lists() {
                        Ok(_) if v.data.is_empty() => "empty".to_string(),
                        Ok(e) => format!("{} entries", e.len()),
                        Err(_) => format!("{} bytes (bad signature list)", v.data.len()),
                    }
                } else if v.data.len() <= 16 {
                    hex::encode(&v.data)
                } else {
                    format!("{} bytes", v.data.len())
                };
                format!("{t} {} ({}) = {value}", v.name, v.guid)
            }
            EventData::ImageLoad(i) => {
                format!(
                    "{t} {} (length {})",
                    i.device_path_text(),
                    i.length_in_memory
                )
            }
            EventData::Tagged { id, data } => {
                let text = tagged_description(&data);
                if text.is_empty() {
                    format!("{t} {id:#010x} ({} bytes)", data.len())
                } else {
                    format!("{t} {text}")
                }
            }
            EventData::Ipl(d) => format!("{t} {:?}", lossy_trimmed(&d)),
            EventData::FirmwareBlob { base, length } => {
                format!("{t} base {base:#x} length {length:#x}")
            }
            EventData::FirmwareBlob2 {
                description,
                base,
                length,
            } => format!("{t} {description:?} base {base:#x} length {length:#x}"),
            EventData::CrtmVersion(s) => format!("{t} {s:?}"),
            EventData::PostCode(s) => format!("{t} {s:?}"),
            EventData::Other => format!("{t} ({} bytes)", self.data.len()),
        }
    }
}
