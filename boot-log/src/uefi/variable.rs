//! EFI variables as measured (UEFI_VARIABLE_DATA) and the signature lists
//! of the Secure Boot databases in them.

use sha2::{Digest, Sha256};

use super::error::UefiLogError;
use super::guid::Guid;
use super::reader::Reader;

/// A measured EFI variable: PCR 7's Secure Boot state and keys, PCR 1's
/// boot order and options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiVariable {
    /// The vendor GUID the variable lives under.
    pub guid: Guid,
    /// The variable name (UTF-16LE in the log).
    pub name: String,
    /// The variable's contents as measured.
    pub data: Vec<u8>,
}

impl EfiVariable {
    /// Decodes UEFI_VARIABLE_DATA. `None` on any malformation; the caller
    /// turns that into an error naming the event.
    pub(crate) fn parse(data: &[u8]) -> Result<EfiVariable, &'static str> {
        let mut r = Reader::new(data);
        let guid = Guid(r.array().ok_or("truncated VariableName GUID")?);
        let name_len = r.u64().ok_or("truncated UnicodeNameLength")?;
        let data_len = r.u64().ok_or("truncated VariableDataLength")?;
        let name_bytes = name_len
            .checked_mul(2)
            .and_then(|n| r.bytes_u64(n))
            .ok_or("UnicodeName longer than the event")?;
        let units: Vec<u16> = name_bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let name = String::from_utf16_lossy(&units)
            .trim_end_matches('\0')
            .to_string();
        let value = r
            .bytes_u64(data_len)
            .ok_or("VariableData longer than the event")?
            .to_vec();
        if !r.is_empty() {
            return Err("bytes after VariableData");
        }
        Ok(EfiVariable {
            guid,
            name,
            data: value,
        })
    }

    /// Whether this is the SecureBoot variable (EFI_GLOBAL_VARIABLE).
    pub fn is_secure_boot(&self) -> bool {
        self.guid == Guid::EFI_GLOBAL_VARIABLE && self.name == "SecureBoot"
    }

    /// Secure Boot's state from the SecureBoot variable: `None` for any
    /// other variable or a value that is neither 0 nor 1. Firmware without
    /// the variable set measures it empty, which means disabled.
    pub fn secure_boot_enabled(&self) -> Option<bool> {
        if !self.is_secure_boot() {
            return None;
        }
        match self.data.as_slice() {
            [] | [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }

    /// Whether the variable holds signature lists (PK, KEK, db, dbx, and
    /// shim's MokList-style variables use the same format).
    pub fn is_signature_database(&self) -> bool {
        (self.guid == Guid::EFI_GLOBAL_VARIABLE && matches!(self.name.as_str(), "PK" | "KEK"))
            || (self.guid == Guid::EFI_IMAGE_SECURITY_DATABASE_GUID
                && matches!(self.name.as_str(), "db" | "dbx" | "dbt" | "dbr"))
    }

    /// The entries of the EFI_SIGNATURE_LIST sequence the variable holds;
    /// empty for an empty variable (no keys enrolled).
    pub fn signature_lists(&self) -> Result<Vec<SignatureEntry>, UefiLogError> {
        parse_signature_lists(&self.data)
    }
}

/// What kind of signature a list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureKind {
    /// EFI_CERT_X509_GUID: a DER certificate.
    X509,
    /// EFI_CERT_SHA256_GUID: a SHA-256 image digest.
    Sha256,
    /// Any other signature type, by GUID.
    Other(Guid),
}

/// One EFI_SIGNATURE_DATA entry: an enrolled key, certificate or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The list's SignatureType: what [`SignatureEntry::data`] holds.
    pub kind: SignatureKind,
    /// SignatureOwner: who enrolled it (e.g. Microsoft's GUID).
    pub owner: Guid,
    /// SignatureData: the DER certificate, the hash, ...
    pub data: Vec<u8>,
}

impl SignatureEntry {
    /// The value policies list the entry by: the SHA-256 of the DER
    /// certificate for X.509 entries, the hash itself for SHA-256 entries,
    /// the SHA-256 of the data otherwise.
    pub fn sha256(&self) -> [u8; 32] {
        if self.kind == SignatureKind::Sha256 {
            if let Ok(h) = <[u8; 32]>::try_from(self.data.as_slice()) {
                return h;
            }
        }
        Sha256::digest(&self.data).into()
    }
}

/// EFI_SIGNATURE_LIST header: SignatureType, ListSize, HeaderSize, Size.
const LIST_HEADER: usize = 16 + 4 + 4 + 4;

fn parse_signature_lists(data: &[u8]) -> Result<Vec<SignatureEntry>, UefiLogError> {
    let mut out = Vec::new();
    let mut r = Reader::new(data);
    while !r.is_empty() {
        let offset = r.offset();
        let bad = |reason| UefiLogError::BadSignatureList { offset, reason };
        let sig_type = Guid(r.array().ok_or(bad("truncated SignatureType"))?);
        let list_size = r.u32().ok_or(bad("truncated SignatureListSize"))? as usize;
        let header_size = r.u32().ok_or(bad("truncated SignatureHeaderSize"))? as usize;
        let sig_size = r.u32().ok_or(bad("truncated SignatureSize"))? as usize;
        let body = list_size
            .checked_sub(LIST_HEADER)
            .and_then(|b| b.checked_sub(header_size))
            .ok_or(bad("SignatureListSize smaller than its headers"))?;
        if sig_size <= 16 {
            return Err(bad("SignatureSize too small for an owner and data"));
        }
        if !body.is_multiple_of(sig_size) {
            return Err(bad("SignatureListSize not a multiple of SignatureSize"));
        }
        let kind = if sig_type == Guid::EFI_CERT_X509_GUID {
            SignatureKind::X509
        } else if sig_type == Guid::EFI_CERT_SHA256_GUID {
            if sig_size != 16 + 32 {
                return Err(bad("EFI_CERT_SHA256 entry is not 48 bytes"));
            }
            SignatureKind::Sha256
        } else {
            SignatureKind::Other(sig_type)
        };
        r.bytes(header_size)
            .ok_or(bad("truncated SignatureHeader"))?;
        let mut body = Reader::new(r.bytes(body).ok_or(bad("truncated signatures"))?);
        while !body.is_empty() {
            let owner = Guid(body.array().ok_or(bad("truncated SignatureOwner"))?);
            let sig = body
                .bytes(sig_size - 16)
                .ok_or(bad("truncated SignatureData"))?;
            out.push(SignatureEntry {
                kind,
                owner,
                data: sig.to_vec(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(kind: Guid, entries: &[(Guid, &[u8])]) -> Vec<u8> {
        let sig_size = 16 + entries.first().map_or(0, |e| e.1.len());
        let mut out = kind.0.to_vec();
        out.extend(((LIST_HEADER + sig_size * entries.len()) as u32).to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((sig_size as u32).to_le_bytes());
        for (owner, data) in entries {
            out.extend(owner.0);
            out.extend(*data);
        }
        out
    }

    #[test]
    fn signature_lists_of_certificates_and_hashes() {
        let owner = Guid::SHIM_LOCK_GUID;
        let mut data = list(Guid::EFI_CERT_X509_GUID, &[(owner, b"0\x03der")]);
        data.extend(list(
            Guid::EFI_CERT_SHA256_GUID,
            &[(owner, &[7u8; 32]), (owner, &[8u8; 32])],
        ));
        let var = EfiVariable {
            guid: Guid::EFI_IMAGE_SECURITY_DATABASE_GUID,
            name: "db".into(),
            data,
        };
        assert!(var.is_signature_database());
        let entries = var.signature_lists().expect("valid lists");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].kind, SignatureKind::X509);
        let expected: [u8; 32] = Sha256::digest(b"0\x03der").into();
        assert_eq!(entries[0].sha256(), expected);
        assert_eq!(entries[1].kind, SignatureKind::Sha256);
        assert_eq!(entries[2].sha256(), [8u8; 32]);
        assert_eq!(entries[2].owner, owner);
    }

    #[test]
    fn malformed_signature_lists_are_errors() {
        let good = list(Guid::EFI_CERT_X509_GUID, &[(Guid::SHIM_LOCK_GUID, b"abcd")]);
        for cut in 1..good.len() {
            assert!(matches!(
                parse_signature_lists(&good[..cut]),
                Err(UefiLogError::BadSignatureList { .. })
            ));
        }
        let mut wrong_size = good.clone();
        wrong_size[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_signature_lists(&wrong_size).is_err());
        let mut tiny = good.clone();
        tiny[24..28].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_signature_lists(&tiny).is_err());
        let bad_sha = list(
            Guid::EFI_CERT_SHA256_GUID,
            &[(Guid::SHIM_LOCK_GUID, b"short")],
        );
        assert!(parse_signature_lists(&bad_sha).is_err());
    }

    #[test]
    fn secure_boot_states() {
        let mut v = EfiVariable {
            guid: Guid::EFI_GLOBAL_VARIABLE,
            name: "SecureBoot".into(),
            data: vec![1],
        };
        assert_eq!(v.secure_boot_enabled(), Some(true));
        v.data = vec![];
        assert_eq!(v.secure_boot_enabled(), Some(false));
        v.data = vec![2];
        assert_eq!(v.secure_boot_enabled(), None);
        v.guid = Guid::SHIM_LOCK_GUID;
        assert!(!v.is_secure_boot());
    }
}
