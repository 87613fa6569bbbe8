//! The verifier against genuine swtpm evidence captured in testdata (see
//! scripts/gen-fixtures.sh), so parsers and checks are exercised on real TPM
//! bytes even where no TPM simulator is installed.

use aver_verifier::error::VerifyError;
use aver_verifier::{verify, Challenge, Evidence, ValidatedPolicy};

const EVIDENCE: &[u8] = include_bytes!("../testdata/evidence-swtpm.json");
const POLICY: &str = include_str!("../testdata/policy-swtpm.yaml");

fn fixture() -> (Evidence, Challenge, ValidatedPolicy) {
    let evidence = Evidence::from_json(EVIDENCE).unwrap();
    let challenge = Challenge {
        nonce: evidence.nonce,
        spki_sha256: evidence.spki_sha256,
    };
    (
        evidence,
        challenge,
        ValidatedPolicy::from_yaml(POLICY).unwrap(),
    )
}

#[test]
fn captured_evidence_verifies_with_four_launches() {
    let (evidence, challenge, policy) = fixture();
    let report = verify(&evidence, &challenge, &policy).unwrap();
    assert_eq!(report.launches_since_boot(), 4);
    assert_eq!(evidence.event_log.len(), 20);
}

#[test]
fn any_flipped_bit_in_the_signed_quote_is_refused() {
    let (evidence, challenge, policy) = fixture();
    for i in 0..evidence.quote.attest.0.len() {
        let mut tampered = evidence.clone();
        tampered.quote.attest.0[i] ^= 0x01;
        assert!(
            verify(&tampered, &challenge, &policy).is_err(),
            "flipping byte {i} of TPMS_ATTEST went unnoticed"
        );
    }
}

#[test]
fn any_flipped_bit_in_the_signature_or_ak_is_refused() {
    let (evidence, challenge, policy) = fixture();
    for i in 0..evidence.quote.signature.0.len() {
        let mut tampered = evidence.clone();
        tampered.quote.signature.0[i] ^= 0x80;
        assert!(
            verify(&tampered, &challenge, &policy).is_err(),
            "signature byte {i}"
        );
    }
    for i in 0..evidence.ak_public.0.len() {
        let mut tampered = evidence.clone();
        tampered.ak_public.0[i] ^= 0x01;
        let result = verify(&tampered, &challenge, &policy);
        assert!(result.is_err(), "AK byte {i}");
    }
}

#[test]
fn an_ak_without_the_restricted_attribute_is_refused_before_trust() {
    let (mut evidence, challenge, policy) = fixture();
    // objectAttributes is the u32 at offset 4 of TPMT_PUBLIC; bit 16 = restricted.
    evidence.ak_public.0[5] &= !0x01;
    assert!(matches!(
        verify(&evidence, &challenge, &policy),
        Err(VerifyError::NotAnAttestationKey { .. })
    ));
}
