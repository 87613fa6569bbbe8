//! The PCR banks' hash algorithms, by their TPM_ALG_ID.

use std::fmt;
use std::str::FromStr;

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::error::UefiLogError;

/// A PCR bank's hash algorithm: the ones firmware logs digests for.
///
/// Other TPM_ALG_IDs a Spec ID event may declare (SM3) are skipped while
/// parsing, since nothing here could check them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// TPM_ALG_SHA1 (0x0004), the only bank of a legacy log.
    Sha1,
    /// TPM_ALG_SHA256 (0x000B), the bank policies use.
    Sha256,
    /// TPM_ALG_SHA384 (0x000C).
    Sha384,
    /// TPM_ALG_SHA512 (0x000D).
    Sha512,
}

impl HashAlg {
    /// All algorithms, in TPM_ALG_ID order.
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];

    /// The TPM_ALG_ID the log records the algorithm by.
    pub const fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
        }
    }

    /// The algorithm for a TPM_ALG_ID, `None` for one without a hash here.
    pub const fn from_id(id: u16) -> Option<HashAlg> {
        match id {
            0x0004 => Some(HashAlg::Sha1),
            0x000B => Some(HashAlg::Sha256),
            0x000C => Some(HashAlg::Sha384),
            0x000D => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// Digest (and PCR) size in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of `data`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The TPM's PCR extend: `H(old || digest)`.
    pub fn extend(self, old: &[u8], digest: &[u8]) -> Vec<u8> {
        fn ext<D: Digest>(old: &[u8], digest: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update(old);
            h.update(digest);
            h.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => ext::<Sha1>(old, digest),
            HashAlg::Sha256 => ext::<Sha256>(old, digest),
            HashAlg::Sha384 => ext::<Sha384>(old, digest),
            HashAlg::Sha512 => ext::<Sha512>(old, digest),
        }
    }

    /// The lower-case name tpm2-tools and policies use ("sha256").
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlg {
    type Err = UefiLogError;

    /// Accepts "sha256", "SHA256" and "sha-256" alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        HashAlg::ALL
            .into_iter()
            .find(|a| a.name() == norm)
            .ok_or_else(|| UefiLogError::UnknownAlgorithmName(s.to_string()))
    }
}

impl TryFrom<u16> for HashAlg {
    type Error = UefiLogError;

    fn try_from(id: u16) -> Result<Self, Self::Error> {
        HashAlg::from_id(id).ok_or(UefiLogError::UnsupportedAlgorithm(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_sizes_round_trip() {
        for alg in HashAlg::ALL {
            assert_eq!(HashAlg::from_id(alg.id()), Some(alg));
            assert_eq!(alg.to_string().parse::<HashAlg>(), Ok(alg));
            assert_eq!(alg.hash(b"").len(), alg.digest_len());
            assert_eq!(
                alg.extend(&[0; 64][..alg.digest_len()], b"x").len(),
                alg.digest_len()
            );
        }
        assert_eq!("SHA-256".parse::<HashAlg>(), Ok(HashAlg::Sha256));
        assert!(matches!(
            "md5".parse::<HashAlg>(),
            Err(UefiLogError::UnknownAlgorithmName(_))
        ));
        assert_eq!(
            HashAlg::try_from(0x0012),
            Err(UefiLogError::UnsupportedAlgorithm(0x0012))
        );
    }

    #[test]
    fn extend_is_hash_of_concatenation() {
        let old = [0u8; 32];
        let d = HashAlg::Sha256.hash(b"abc");
        let mut cat = old.to_vec();
        cat.extend_from_slice(&d);
        assert_eq!(HashAlg::Sha256.extend(&old, &d), HashAlg::Sha256.hash(&cat));
    }
}
