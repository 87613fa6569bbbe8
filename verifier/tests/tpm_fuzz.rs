//! Bounded fuzzing of the TPM parsers: random bytes, and single-byte
//! mutations and truncations of well-formed structures, never panic; and
//! whatever of them parses marshals back to what was parsed.

use aver_testkit::tpm::{alg, ecdsa_signature, pcr_bitmap, rsa_signature, Quote};
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

/// TPMT_SIGNATURE as a TPM marshals it.
fn marshal_signature(sig: &Signature) -> Vec<u8> {
    match sig {
        Signature::Ecdsa { hash_alg, r, s } => ecdsa_signature(*hash_alg, r, s),
        Signature::RsaSsa { hash_alg, sig } => rsa_signature(alg::RSASSA, *hash_alg, sig),
        Signature::RsaPss { hash_alg, sig } => rsa_signature(alg::RSAPSS, *hash_alg, sig),
    }
}

/// TPMS_ATTEST of a quote with 3-byte PCR selections, as PC-client TPMs
/// marshal it; `None` if a selection names a PCR above 23.
fn marshal_quote(a: &Attest) -> Option<Vec<u8>> {
    let pcr_select = a
        .pcr_select
        .iter()
        .map(|s| Some((s.hash_alg, pcr_bitmap(&s.pcrs)?)))
        .collect::<Option<Vec<_>>>()?;
    let quote = Quote {
        qualified_signer: a.qualified_signer.clone(),
        extra_data: a.extra_data.clone(),
        clock: a.clock_info.clock,
        reset_count: a.clock_info.reset_count,
        restart_count: a.clock_info.restart_count,
        safe: a.clock_info.safe,
        firmware_version: a.firmware_version,
        pcr_select,
        pcr_digest: a.pcr_digest.clone(),
    };
    Some(quote.marshal())
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

    #[test]
    fn accepted_mutants_marshal_back(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        // A signature the parser accepts is exactly its bytes.
        for bytes in [pss_signature(), mutate(pss_signature(), pos, byte, cut).0] {
            if let Ok(sig) = Signature::parse(&bytes) {
                prop_assert_eq!(marshal_signature(&sig), bytes);
            }
        }
        // A quote's sizeofSelect is not kept, so the property is
        // parse . marshal . parse = parse.
        for bytes in [quote(), mutate(quote(), pos, byte, cut).0] {
            if let Ok(a) = Attest::parse(&bytes) {
                if let Some(again) = marshal_quote(&a) {
                    prop_assert_eq!(Attest::parse(&again), Ok(a));
                }
            }
        }
    }
}
