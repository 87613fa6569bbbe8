//! The TPM's key derivation functions with SHA-256 (TPM 2.0 Library,
//! Part 1, §11.4.10): KDFa, a counter-mode HMAC KDF (SP 800-108), and KDFe,
//! the concatenation KDF of SP 800-56A that turns an ECDH shared secret into
//! a seed.
//!
//! Both take a `label` that the TPM treats as a NUL-terminated string: the
//! terminating zero byte is part of the hashed data, and callers pass the
//! label without it ("STORAGE", not "STORAGE\0").

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// KDFa(SHA-256, key, label, contextU, contextV, 8 × `len`).
///
/// Each block is `HMAC(key, counter || label || 0x00 || contextU ||
/// contextV || bits)` with a 32-bit big-endian counter starting at 1 and
/// `bits` the requested output size in bits, also 32-bit big-endian.
/// Output sizes here are whole bytes, so no masking of the first byte is
/// needed.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    len: usize,
) -> Vec<u8> {
    let bits = u32::try_from(len * 8).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// KDFe(SHA-256, Z, label, partyUInfo, partyVInfo, 8 × `len`).
///
/// Each block is `SHA-256(counter || Z || label || 0x00 || partyUInfo ||
/// partyVInfo)` with a 32-bit big-endian counter starting at 1. For
/// credential protection with an ECC EK, `Z` is the x-coordinate of the
/// ECDH shared point, partyU the ephemeral key's x and partyV the EK's x.
pub fn kdfe_sha256(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first block of KDFa written out by hand from Part 1's formula,
    /// so that a change to field order or the NUL terminator is caught even
    /// without a TPM (interoperability with swtpm is tested in tests/).
    #[test]
    fn kdfa_block_layout_matches_the_spec() {
        let key = [7u8; 32];
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&[0, 0, 0, 1]);
        mac.update(b"STORAGE\0");
        mac.update(b"name");
        mac.update(&[0, 0, 0, 128]);
        let block = mac.finalize().into_bytes();
        assert_eq!(
            kdfa_sha256(&key, "STORAGE", b"name", b"", 16),
            block[..16].to_vec()
        );
    }

    #[test]
    fn kdfa_counts_blocks_and_binds_the_length() {
        let long = kdfa_sha256(b"k", "INTEGRITY", b"", b"", 48);
        assert_eq!(long.len(), 48);
        // The requested size is hashed into every block, so a shorter
        // request is not a prefix of a longer one.
        let short = kdfa_sha256(b"k", "INTEGRITY", b"", b"", 32);
        assert_ne!(&long[..32], short.as_slice());
        // contextU and contextV are separate inputs only by position.
        assert_ne!(
            kdfa_sha256(b"k", "L", b"a", b"", 16),
            kdfa_sha256(b"k", "L", b"", b"b", 16)
        );
    }

    #[test]
    fn kdfe_block_layout_matches_the_spec() {
        let mut h = Sha256::new();
        h.update([0, 0, 0, 1]);
        h.update(b"Z");
        h.update(b"IDENTITY\0");
        h.update(b"U");
        h.update(b"V");
        assert_eq!(
            kdfe_sha256(b"Z", "IDENTITY", b"U", b"V", 32),
            h.finalize().to_vec()
        );
        assert_eq!(kdfe_sha256(b"Z", "IDENTITY", b"U", b"V", 40).len(), 40);
    }
}
