//! EFI_GUID: 16 bytes whose first three fields are little-endian.

use std::fmt;

/// An EFI_GUID as the log stores it (the raw 16 bytes).
///
/// The text form reverses the first three fields (u32, u16, u16) and keeps
/// the last eight bytes in order, which is how UEFI and tpm2-tools print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK, BootOrder, Boot####.
    pub const EFI_GLOBAL_VARIABLE: Guid = Guid::from_fields(
        0x8be4df61,
        0x93ca,
        0x11d2,
        [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
    );
    /// EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx (and dbt, dbr).
    pub const EFI_IMAGE_SECURITY_DATABASE_GUID: Guid = Guid::from_fields(
        0xd719b2cb,
        0x3d3a,
        0x4596,
        [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
    );
    /// EFI_CERT_X509_GUID: a signature list of DER X.509 certificates.
    pub const EFI_CERT_X509_GUID: Guid = Guid::from_fields(
        0xa5c059a1,
        0x94e4,
        0x4aa7,
        [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
    );
    /// EFI_CERT_SHA256_GUID: a signature list of SHA-256 image digests.
    pub const EFI_CERT_SHA256_GUID: Guid = Guid::from_fields(
        0xc1c41626,
        0x504c,
        0x4092,
        [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
    );
    /// SHIM_LOCK_GUID: shim's variables (MokList, SbatLevel) in PCR 7/14.
    pub const SHIM_LOCK_GUID: Guid = Guid::from_fields(
        0x605dab50,
        0xe046,
        0x4300,
        [0xab, 0xb6, 0x3d, 0xd8, 0x10, 0xdd, 0x8b, 0x23],
    );

    /// The GUID written as its fields, as specs and EDK2 headers give it.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Guid;

    #[test]
    fn display_is_mixed_endian() {
        assert_eq!(
            Guid::EFI_GLOBAL_VARIABLE.to_string(),
            "8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
        assert_eq!(Guid::EFI_GLOBAL_VARIABLE.0[0], 0x61);
        assert_eq!(
            Guid::SHIM_LOCK_GUID.to_string(),
            "605dab50-e046-4300-abb6-3dd810dd8b23"
        );
        assert_eq!(
            Guid::EFI_CERT_SHA256_GUID.to_string(),
            "c1c41626-504c-4092-aca9-41f936934328"
        );
    }
}
