//! What ties a quote to one verifier's challenge and one TLS key
//! (docs/architecture.md, "Freshness" and "Channel binding"), including the batched form in which many concurrent challenges
//! share one TPM quote.
//!
//! Each challenge is a leaf `SHA-256("aver-evidence-v1" || nonce ||
//! spki_sha256)`; the quote's qualifying data is the Merkle root over the
//! leaves, with inner nodes `SHA-256(0x01 || left || right)`. A lone
//! challenge is the one-leaf tree, whose root is exactly the leaf, so the
//! unbatched quote carries the qualifying data docs/architecture.md#channel-binding specifies.

use std::fmt;

use aver_crds::Sha256Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// SHA-256 of the DER SubjectPublicKeyInfo of a certificate: the TLS key's
/// identity that evidence binds, independent of the certificate's other
/// (unauthenticated) fields.
pub fn spki_sha256(
    cert_der: &[u8],
) -> Result<Sha256Digest, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    Ok(Sha256Digest(
        Sha256::digest(cert.tbs_certificate.subject_pki.raw).into(),
    ))
}

/// Domain separator of a leaf (and of the unbatched qualifying data).
pub const LEAF_DOMAIN: &[u8] = b"aver-evidence-v1";
/// Prefix of an inner Merkle node; leaves start with `LEAF_DOMAIN` and are
/// longer, so a leaf can never be read as an inner node or the reverse.
pub const NODE_PREFIX: u8 = 0x01;
/// Deepest proof accepted (2^32 leaves is far beyond any batch).
pub const MAX_PROOF_DEPTH: usize = 32;

/// A verifier-chosen 32-byte challenge, hex in JSON and URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    /// A fresh nonce from the operating system's CSPRNG.
    pub fn random() -> Self {
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, NonceError> {
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return Err(NonceError(text.len()));
        }
        hex::decode_to_slice(text, &mut out).map_err(|_| NonceError(text.len()))?;
        Ok(Self(out))
    }
}

/// A nonce that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nonce must be 64 hex characters (32 bytes), got {0} characters or non-hex input")]
pub struct NonceError(pub usize);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

impl Serialize for Nonce {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Nonce {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// The leaf for one (nonce, TLS key) challenge.
pub fn leaf(nonce: &Nonce, spki_sha256: &Sha256Digest) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LEAF_DOMAIN);
    h.update(nonce.0);
    h.update(spki_sha256.as_bytes());
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Inclusion proof of one leaf in a batch: its index and the sibling hashes
/// from the leaf up to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MerkleProof {
    pub leaf_index: u32,
    pub siblings: Vec<HexHash>,
}

/// A 32-byte hash as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexHash(pub [u8; 32]);

impl fmt::Debug for HexHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for HexHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for HexHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(Self(out))
    }
}

/// The qualifying data a quote must carry for this challenge: the leaf
/// itself when unbatched, else the root the proof leads to. `None` when the
/// proof is deeper than any real batch or its index does not fit its depth.
pub fn qualifying_data(
    nonce: &Nonce,
    spki_sha256: &Sha256Digest,
    proof: Option<&MerkleProof>,
) -> Option<[u8; 32]> {
    let mut hash = leaf(nonce, spki_sha256);
    let Some(proof) = proof else {
        return Some(hash);
    };
    if proof.siblings.len() > MAX_PROOF_DEPTH
        || u64::from(proof.leaf_index) >> proof.siblings.len() != 0
    {
        return None;
    }
    let mut index = proof.leaf_index;
    for sibling in &proof.siblings {
        hash = if index & 1 == 0 {
            node(&hash, &sibling.0)
        } else {
            node(&sibling.0, &hash)
        };
        index >>= 1;
    }
    Some(hash)
}

/// A Merkle tree over a batch of leaves, built by the enclave. Odd nodes are
/// paired with themselves, so every leaf has a proof of the same depth.
pub struct MerkleTree {
    levels: Vec<Vec<[u8; 32]>>,
}

impl MerkleTree {
    /// Builds the tree; `None` for an empty batch.
    pub fn new(leaves: Vec<[u8; 32]>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| node(&pair[0], pair.get(1).unwrap_or(&pair[0])))
                .collect();
            levels.push(next);
        }
        Some(Self { levels })
    }

    pub fn root(&self) -> [u8; 32] {
        // `new` guarantees at least one level with at least one node.
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// Proof for leaf `index`; `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.levels[0].len() {
            return None;
        }
        let mut siblings = Vec::with_capacity(self.levels.len() - 1);
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = level.get(i ^ 1).unwrap_or(&level[i]);
            siblings.push(HexHash(*sibling));
            i >>= 1;
        }
        Some(MerkleProof {
            leaf_index: u32::try_from(index).ok()?,
            siblings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spki(b: u8) -> Sha256Digest {
        Sha256Digest([b; 32])
    }

    #[test]
    fn single_challenge_is_the_design_formula() {
        let nonce = Nonce([7; 32]);
        let mut h = Sha256::new();
        h.update(b"aver-evidence-v1");
        h.update([7u8; 32]);
        h.update([9u8; 32]);
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(qualifying_data(&nonce, &spki(9), None), Some(expected));
    }

    #[test]
    fn proofs_fail_for_other_nonce_key_or_index() {
        let nonces: Vec<Nonce> = (0..5u8).map(|i| Nonce([i; 32])).collect();
        let tree = MerkleTree::new(nonces.iter().map(|n| leaf(n, &spki(1))).collect()).unwrap();
        let root = tree.root();
        let proof = tree.proof(3).unwrap();
        assert_eq!(
            qualifying_data(&nonces[3], &spki(1), Some(&proof)),
            Some(root)
        );
        assert_ne!(
            qualifying_data(&nonces[2], &spki(1), Some(&proof)),
            Some(root)
        );
        assert_ne!(
            qualifying_data(&nonces[3], &spki(2), Some(&proof)),
            Some(root)
        );
        let mut moved = proof.clone();
        moved.leaf_index = 2;
        assert_ne!(
            qualifying_data(&nonces[3], &spki(1), Some(&moved)),
            Some(root)
        );
        let mut too_far = proof;
        too_far.leaf_index = 8;
        assert_eq!(qualifying_data(&nonces[3], &spki(1), Some(&too_far)), None);
    }

    #[test]
    fn nonce_parsing_is_strict() {
        assert!(Nonce::from_hex(&"ab".repeat(32)).is_ok());
        assert!(Nonce::from_hex("abcd").is_err());
        assert!(Nonce::from_hex(&"zz".repeat(32)).is_err());
        assert_ne!(Nonce::random(), Nonce::random());
    }

    proptest! {
        #[test]
        fn nonces_round_trip_through_hex_and_json(bytes in prop::array::uniform32(any::<u8>())) {
            let nonce = Nonce(bytes);
            prop_assert_eq!(Nonce::from_hex(&nonce.to_hex()), Ok(nonce));
            let json = serde_json::to_string(&nonce).unwrap();
            prop_assert_eq!(serde_json::from_str::<Nonce>(&json).unwrap(), nonce);
            // Upper-case hex parses too and is written back in lower case.
            let upper = Nonce::from_hex(&nonce.to_hex().to_uppercase()).unwrap();
            prop_assert_eq!(upper.to_hex(), nonce.to_hex());
        }

        #[test]
        fn proofs_round_trip_through_json(
            leaf_index in any::<u32>(),
            siblings in proptest::collection::vec(prop::array::uniform32(any::<u8>()), 0..=MAX_PROOF_DEPTH),
        ) {
            let proof = MerkleProof {
                leaf_index,
                siblings: siblings.into_iter().map(HexHash).collect(),
            };
            let json = serde_json::to_vec(&proof).unwrap();
            prop_assert_eq!(serde_json::from_slice::<MerkleProof>(&json).unwrap(), proof);
        }

        #[test]
        fn every_leaf_of_any_batch_proves_into_the_root(n in 1usize..70, pick in any::<prop::sample::Index>()) {
            let nonces: Vec<Nonce> = (0..n).map(|i| Nonce([(i % 251) as u8; 32])).collect();
            let tree = MerkleTree::new(nonces.iter().map(|x| leaf(x, &spki(3))).collect()).unwrap();
            let i = pick.index(n);
            let proof = tree.proof(i).unwrap();
            prop_assert_eq!(qualifying_data(&nonces[i], &spki(3), Some(&proof)), Some(tree.root()));
        }
    }
}
