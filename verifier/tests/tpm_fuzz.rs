//! Bounded fuzzing of the TPM parsers: random bytes, and single-byte
//! mutations and truncations of well-formed structures, never panic.

use aver_verifier::tpm::{AkPublic, Attest, Signature};
use proptest::prelude::*;

/// A P-384 ECDSA/SHA-384 AK as TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC).
fn p384_ak() -> Vec<u8> {
    let mut t = vec![0x00, 0x23, 0x00, 0x0c, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00];
    t.extend([0x00, 0x10, 0x00, 0x18, 0x00, 0x0c, 0x00, 0x04, 0x00, 0x10]);
    for c in [1u8, 2] {
        t.extend(48u16.to_be_bytes());
        t.extend([c; 48]);
    }
    let mut v = (t.len() as u16).to_be_bytes().to_vec();
    v.extend(t);
    v
}

fn pss_signature() -> Vec<u8> {
    let mut v = vec![0x00, 0x16, 0x00, 0x0d, 0x01, 0x00];
    v.extend([7u8; 256]);
    v
}

fn quote() -> Vec<u8> {
    let mut v = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x18, 0x00, 0x02, 0x00, 0x0b];
    v.extend(32u16.to_be_bytes());
    v.extend([3u8; 32]);
    v.extend([0u8; 16]);
    v.push(1);
    v.extend([0u8; 8]);
    v.extend(1u32.to_be_bytes());
    v.extend([0x00, 0x0c, 0x03, 0x83, 0x00, 0x00]);
    v.extend(48u16.to_be_bytes());
    v.extend([9u8; 48]);
    v
}

#[test]
fn seeds_parse() {
    assert!(AkPublic::parse(&p384_ak()).is_ok());
    assert!(Signature::parse(&pss_signature()).is_ok());
    assert!(Attest::parse(&quote()).is_ok());
}

fn mutate(
    mut bytes: Vec<u8>,
    pos: prop::sample::Index,
    byte: u8,
    cut: prop::sample::Index,
) -> (Vec<u8>, Vec<u8>) {
    let i = pos.index(bytes.len());
    bytes[i] = byte;
    let truncated = bytes[..cut.index(bytes.len())].to_vec();
    (bytes, truncated)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = AkPublic::parse(&bytes);
        let _ = Signature::parse(&bytes);
        let _ = Attest::parse(&bytes);
    }

    #[test]
    fn mutated_structures_never_panic(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (m, t) = mutate(p384_ak(), pos, byte, cut);
        let _ = AkPublic::parse(&m);
        let _ = AkPublic::parse(&t);
        let (m, t) = mutate(pss_signature(), pos, byte, cut);
        if let Ok(sig) = Signature::parse(&m) {
            if let Ok(ak) = AkPublic::parse(&p384_ak()) {
                let _ = sig.verifies(&ak.key, &m);
            }
        }
        let _ = Signature::parse(&t);
        let (m, t) = mutate(quote(), pos, byte, cut);
        let _ = Attest::parse(&m);
        let _ = Attest::parse(&t);
    }
}
