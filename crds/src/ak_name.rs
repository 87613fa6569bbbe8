//! The name of a TPM attestation key, parsed once.
//!
//! A TPM name is the key's name algorithm (two bytes) followed by that
//! algorithm's digest of its public area. Policies write it as hex, in
//! either case; reports and comparisons use [`AkName`], which holds the
//! canonical lowercase form, so two spellings of one key are equal and a
//! string that is not a name never reaches a comparison.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A TPM name: nameAlg and digest, in lowercase hex.
///
/// Only SHA-256, SHA-384, SHA-512 and SHA-1 names exist here; whether a
/// SHA-1 name is acceptable is the policy's decision ([`AkName::is_sha1`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AkName(String);

/// Why a string is not a TPM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("{0:?} is not a hex TPM name: nameAlg and digest, 000b + 64 hex (SHA-256), 000c + 96 (SHA-384), 000d + 128 (SHA-512), or 0004 + 40 (SHA-1)")]
pub struct AkNameError(pub String);

const SHA1: &str = "0004";

impl AkName {
    /// Parses a hex TPM name, in either case.
    pub fn parse(text: &str) -> Result<Self, AkNameError> {
        let bad = || AkNameError(text.to_owned());
        let lower = text.to_ascii_lowercase();
        let digest_hex = match lower.get(..4) {
            Some(SHA1) => 40,
            Some("000b") => 64,
            Some("000c") => 96,
            Some("000d") => 128,
            _ => return Err(bad()),
        };
        if lower.len() != 4 + digest_hex || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self(lower))
    }

    /// The name of the key whose marshalled name (nameAlg then digest) is
    /// `bytes`, as a TPM computes it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AkNameError> {
        Self::parse(&hex::encode(bytes))
    }

    /// Whether the name algorithm is SHA-1, whose collisions are practical.
    pub fn is_sha1(&self) -> bool {
        self.0.starts_with(SHA1)
    }

    /// The canonical lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AkName {
    type Err = AkNameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for AkName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl PartialEq<str> for AkName {
    /// Compares with a hex name in either case; a string that is not a
    /// name is equal to no name.
    fn eq(&self, other: &str) -> bool {
        other.eq_ignore_ascii_case(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_lowercase_and_spellings_are_equal() {
        let upper = format!("000B{}", "AB".repeat(32));
        let lower = format!("000b{}", "ab".repeat(32));
        let a = AkName::parse(&upper).unwrap();
        assert_eq!(a.as_str(), lower);
        assert_eq!(a, AkName::parse(&lower).unwrap());
        assert!(a == *upper.as_str());
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{lower}\""));
    }

    #[test]
    fn every_name_algorithm_has_its_length() {
        for (alg, bytes) in [("0004", 20), ("000b", 32), ("000c", 48), ("000d", 64)] {
            let name = format!("{alg}{}", "01".repeat(bytes));
            let parsed = AkName::parse(&name).unwrap();
            assert_eq!(parsed.is_sha1(), alg == "0004");
            // One byte short or long, or the digest of another algorithm.
            assert!(AkName::parse(&name[..name.len() - 2]).is_err());
            assert!(AkName::parse(&format!("{name}01")).is_err());
        }
        assert!(AkName::parse(&format!("000c{}", "ab".repeat(32))).is_err());
    }

    #[test]
    fn non_names_are_refused() {
        for text in ["", "000b", "0001abcd", "zz0b", "000b xx", "é000b"] {
            assert_eq!(AkName::parse(text), Err(AkNameError(text.to_owned())));
        }
        let not_hex = format!("000b{}", "g".repeat(64));
        assert!(AkName::parse(&not_hex).is_err());
    }

    #[test]
    fn bytes_give_the_hex_name() {
        let mut bytes = vec![0x00, 0x0b];
        bytes.extend([0xcd; 32]);
        assert_eq!(
            AkName::from_bytes(&bytes).unwrap().as_str(),
            format!("000b{}", "cd".repeat(32))
        );
        assert!(AkName::from_bytes(&[0x00, 0x0b, 1]).is_err());
    }
}
