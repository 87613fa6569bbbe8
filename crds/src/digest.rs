//! The one digest type used in policies, evidence and status.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the textual form; the algorithm is spelled out so that a later
/// algorithm can be added without reinterpreting old documents.
pub const SHA256_PREFIX: &str = "sha256:";

/// A SHA-256 digest, written `sha256:<64 lowercase hex>` everywhere a human or
/// the API server sees it (the form container image digests already use).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

/// Why a string is not a `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestParseError {
    /// The text lacks the `sha256:` prefix: a bare hex string, or another algorithm.
    #[error("digest {0:?} must start with \"sha256:\"")]
    MissingPrefix(String),
    /// After the prefix there are not exactly 64 lowercase hex digits
    /// (uppercase is refused, so that each digest has one textual form).
    #[error("digest {0:?} must have exactly 64 hex characters after \"sha256:\"")]
    BadHex(String),
}

impl Sha256Digest {
    /// Wraps a digest computed in code (a hash output), which needs no parsing.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes, as hash functions and TPM structures hold them.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex without the algorithm prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Accepts the prefixed form only, so that a bare hex string copied from
    /// the wrong place is not silently taken for a SHA-256.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let hex_part = text
            .strip_prefix(SHA256_PREFIX)
            .ok_or_else(|| DigestParseError::MissingPrefix(text.to_owned()))?;
        let mut out = [0u8; 32];
        let lowercase_hex = hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex_part.len() != 64
            || !lowercase_hex
            || hex::decode_to_slice(hex_part, &mut out).is_err()
        {
            return Err(DigestParseError::BadHex(text.to_owned()));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Sha256Digest {
    fn schema_name() -> Cow<'static, str> {
        "Sha256Digest".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^sha256:[0-9a-f]{64}$",
            "minLength": 71,
            "maxLength": 71,
            "description": "A SHA-256 digest written sha256:<64 lowercase hex>."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_through_text() {
        let d = Sha256Digest([0xab; 32]);
        let text = d.to_string();
        assert_eq!(text, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(Sha256Digest::parse(&text), Ok(d));
    }

    #[test]
    fn rejects_bare_hex_and_wrong_length() {
        assert!(matches!(
            Sha256Digest::parse(&"ab".repeat(32)),
            Err(DigestParseError::MissingPrefix(_))
        ));
        assert!(matches!(
            Sha256Digest::parse("sha256:abcd"),
            Err(DigestParseError::BadHex(_))
        ));
        assert!(matches!(
            Sha256Digest::parse(&format!("sha256:{}", "zz".repeat(32))),
            Err(DigestParseError::BadHex(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = Sha256Digest::parse(&s);
        }

        #[test]
        fn any_bytes_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = Sha256Digest(bytes);
            prop_assert_eq!(Sha256Digest::parse(&d.to_string()), Ok(d));
        }
    }
}
