//! One measured event and its type.

use std::fmt;

use super::alg::HashAlg;

/// The TCG PC Client event type (UINT32), kept as a number so types this
/// crate does not know still parse and replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u32);

macro_rules! event_types {
    ($($name:ident = $value:expr,)*) => {
        impl EventType {
            $(
                #[doc = concat!("`", stringify!($name), "` (", stringify!($value), ").")]
                pub const $name: EventType = EventType($value);
            )*

            /// The spec's name for a known type.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    EV_PREBOOT_CERT = 0x0000_0000,
    EV_POST_CODE = 0x0000_0001,
    EV_UNUSED = 0x0000_0002,
    EV_NO_ACTION = 0x0000_0003,
    EV_SEPARATOR = 0x0000_0004,
    EV_ACTION = 0x0000_0005,
    EV_EVENT_TAG = 0x0000_0006,
    EV_S_CRTM_CONTENTS = 0x0000_0007,
    EV_S_CRTM_VERSION = 0x0000_0008,
    EV_CPU_MICROCODE = 0x0000_0009,
    EV_PLATFORM_CONFIG_FLAGS = 0x0000_000A,
    EV_TABLE_OF_DEVICES = 0x0000_000B,
    EV_COMPACT_HASH = 0x0000_000C,
    EV_IPL = 0x0000_000D,
    EV_IPL_PARTITION_DATA = 0x0000_000E,
    EV_NONHOST_CODE = 0x0000_000F,
    EV_NONHOST_CONFIG = 0x0000_0010,
    EV_NONHOST_INFO = 0x0000_0011,
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x0000_0012,
    EV_POST_CODE2 = 0x0000_0013,
    EV_EFI_EVENT_BASE = 0x8000_0000,
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x8000_0001,
    EV_EFI_VARIABLE_BOOT = 0x8000_0002,
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x8000_0003,
    EV_EFI_BOOT_SERVICES_DRIVER = 0x8000_0004,
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x8000_0005,
    EV_EFI_GPT_EVENT = 0x8000_0006,
    EV_EFI_ACTION = 0x8000_0007,
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x8000_0008,
    EV_EFI_HANDOFF_TABLES = 0x8000_0009,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000_000A,
    EV_EFI_HANDOFF_TABLES2 = 0x8000_000B,
    EV_EFI_VARIABLE_BOOT2 = 0x8000_000C,
    EV_EFI_GPT_EVENT2 = 0x8000_000D,
    EV_EFI_HCRTM_EVENT = 0x8000_0010,
    EV_EFI_VARIABLE_AUTHORITY = 0x8000_00E0,
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x8000_00E1,
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x8000_00E2,
    EV_EFI_SPDM_DEVICE_POLICY = 0x8000_00E3,
    EV_EFI_SPDM_DEVICE_AUTHORITY = 0x8000_00E4,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

/// One record of the log, as parsed: where it was measured, its digests per
/// bank and its raw event data (decode it with [`Event::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, 0 for the first record (the Spec ID event of a
    /// crypto-agile log), as tpm2_eventlog's `EventNum`.
    pub index: usize,
    /// The PCR the event extends (0..=23).
    pub pcr: u8,
    /// The event type.
    pub event_type: EventType,
    pub(crate) digests: Vec<(HashAlg, Vec<u8>)>,
    /// The event data, as logged (its digest is not necessarily the hash of
    /// these bytes: for images it is the Authenticode hash of the image).
    pub data: Vec<u8>,
}

impl Event {
    /// The logged digest for a bank, `None` if the record has none.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, d)| d.as_slice())
    }

    /// All digests of the record, in log order (algorithms this crate does
    /// not know are skipped).
    pub fn digests(&self) -> &[(HashAlg, Vec<u8>)] {
        &self.digests
    }
}

#[cfg(test)]
mod tests {
    use super::EventType;

    #[test]
    fn names_and_unknown_types() {
        assert_eq!(EventType::EV_EFI_VARIABLE_BOOT2.0, 0x8000_000C);
        assert_eq!(
            EventType(0x8000_00E0).to_string(),
            "EV_EFI_VARIABLE_AUTHORITY"
        );
        assert_eq!(EventType(4).to_string(), "EV_SEPARATOR");
        assert_eq!(EventType(0x1234).to_string(), "0x00001234");
    }
}
