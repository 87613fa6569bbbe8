//! Hardware root of trust against a real TPM 2.0 (swtpm): EK certificate
//! chains made by swtpm_setup with a CA this test creates, software
//! MakeCredential (`aver_verifier::ek`) activated by the TPM through
//! `aver_enclave::endorsement`, for RSA 2048 and ECC P-256 EKs, and the ways
//! it must fail: untrusted CA, a software key posing as the AK, a blob for
//! another TPM's EK or another AK, expired and malformed EK certificates.

use std::str::FromStr as _;

use aver_enclave::endorsement::{self, ActivateError};
use aver_enclave::tpm::DEFAULT_AK_HANDLE;
use aver_enclave::Tpm;
use aver_tests::ek_ca::TestCa;
use aver_tests::{require_swtpm, Swtpm};
use aver_verifier::ek::activation::unix_now;
use aver_verifier::ek::{
    ActivatedAk, ActivationError, ActivationOffer, EkChainError, EkKind, PendingActivation,
    TrustAnchors,
};
use aver_verifier::evidence::Base64Bytes;
use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, MaxNvBuffer, NvPublicBuilder, Public};
use tss_esapi::{Context, TctiNameConf};

/// A TPM manufactured with an EK certificate from `ca`.
fn manufactured(ca: &TestCa) -> Swtpm {
    Swtpm::start_with_ek_cert(ca).expect("swtpm_setup and swtpm start")
}

fn offer_of(tpm: &mut Tpm) -> ActivationOffer {
    let certificates = endorsement::read_certificates(tpm).expect("EK certificates read");
    endorsement::offer(tpm.ak_public_tpmt(), certificates, Vec::new())
}

/// The whole exchange, verifier and TPM side, without HTTP.
fn activate(
    offer: &ActivationOffer,
    roots_pem: &str,
    tpm: &mut Tpm,
) -> Result<ActivatedAk, ActivationError> {
    let roots = TrustAnchors::from_pem(roots_pem).expect("roots parse");
    let (request, pending) =
        PendingActivation::prepare(offer, &roots, unix_now(), &mut rand::thread_rng())?;
    match endorsement::activate(tpm, &request) {
        Ok(secret) => pending.complete(&aver_verifier::ek::ActivationResponse {
            version: 1,
            credential: Base64Bytes(secret),
        }),
        Err(ActivateError::Refused(message)) => Err(pending.refused(message)),
        Err(other) => panic!("activation failed for another reason: {other}"),
    }
}

fn context(tpm: &Swtpm) -> Context {
    Context::new(TctiNameConf::from_str(&tpm.tcti()).expect("tcti")).expect("TPM reachable")
}

/// The public key of the default EK of `selection`, as the subjectPublicKey
/// bits of a certificate: PKCS#1 RSAPublicKey, or an uncompressed point.
fn ek_public_key_bits(tpm: &Swtpm, selection: AsymmetricAlgorithmSelection) -> Vec<u8> {
    let mut context = context(tpm);
    let handle = ek::create_ek_object_2(&mut context, selection, None).expect("EK created");
    let (public, _, _) = context.read_public(handle).expect("EK public");
    context
        .flush_context(ObjectHandle::from(handle))
        .expect("EK flushed");
    match public {
        Public::Rsa { unique, .. } => {
            let modulus = unique.value();
            let mut n = vec![0u8];
            n.extend_from_slice(modulus);
            let integer_n = [vec![0x02, 0x82, (n.len() >> 8) as u8, n.len() as u8], n].concat();
            let integer_e = vec![0x02, 0x03, 0x01, 0x00, 0x01];
            let body = [integer_n, integer_e].concat();
            [
                vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8],
                body,
            ]
            .concat()
        }
        Public::Ecc { unique, .. } => {
            let mut point = vec![0x04];
            point.extend_from_slice(unique.x().value());
            point.extend_from_slice(unique.y().value());
            point
        }
        other => panic!("unexpected EK type {other:?}"),
    }
}

/// Writes `contents` as the EK certificate at `index`, replacing what is
/// there, with platform authorization (as a manufacturer does).
fn write_ek_certificate(tpm: &Swtpm, index: u32, contents: &[u8]) {
    let mut context = context(tpm);
    let tpm_handle = NvIndexTpmHandle::new(index).expect("NV index");
    let (capability, _) = context
        .get_capability(CapabilityType::Handles, index, 1)
        .expect("handles listed");
    let defined = match capability {
        CapabilityData::Handles(list) => {
            list.into_inner().contains(&TpmHandle::NvIndex(tpm_handle))
        }
        _ => false,
    };
    if defined {
        let object = context
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
            .expect("NV index object");
        context.set_sessions((Some(AuthSession::Password), None, None));
        context
            .nv_undefine_space(Provision::Platform, NvIndexHandle::from(object))
            .expect("old certificate removed");
    }
    let attributes = NvIndexAttributesBuilder::new()
        .with_pp_write(true)
        .with_pp_read(true)
        .with_owner_read(true)
        .with_auth_read(true)
        .with_no_da(true)
        .with_platform_create(true)
        .build()
        .expect("attributes");
    let public = NvPublicBuilder::new()
        .with_nv_index(tpm_handle)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(contents.len())
        .build()
        .expect("NV public");
    context.set_sessions((Some(AuthSession::Password), None, None));
    let handle = context
        .nv_define_space(Provision::Platform, None, public)
        .expect("NV index defined");
    for (i, chunk) in contents.chunks(512).enumerate() {
        context
            .nv_write(
                NvAuth::Platform,
                handle,
                MaxNvBuffer::try_from(chunk.to_vec()).expect("chunk"),
                (i * 512) as u16,
            )
            .expect("NV written");
    }
}

fn open(tpm: &Swtpm) -> Tpm {
    Tpm::open(&tpm.tcti(), DEFAULT_AK_HANDLE).expect("TPM opens with its AK")
}

#[test]
fn genuine_rsa_ek_chain_activates_the_resident_ak() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let swtpm = manufactured(&ca);
    let mut tpm = open(&swtpm);
    let offer = offer_of(&mut tpm);
    assert_eq!(
        offer.endorsement_keys.len(),
        1,
        "swtpm_setup wrote the RSA EK certificate"
    );
    assert_eq!(offer.endorsement_keys[0].kind, EkKind::Rsa2048);

    let activated = activate(&offer, ca.root_pem(), &mut tpm).expect("activation succeeds");
    assert_eq!(activated.ak_name().as_str(), hex::encode(tpm.ak_name()));
    assert_eq!(activated.ek().kind, EkKind::Rsa2048);
    let manufacturer = activated.ek().tpm.as_ref().expect("SAN attributes");
    assert_eq!(manufacturer.manufacturer, "id:00001014");
    assert_eq!(manufacturer.model.as_deref(), Some("swtpm"));
    assert_eq!(
        activated.ek().chain,
        vec!["\"O=aver tests, CN=aver test TPM CA\"".to_owned()]
    );

    // The EK is flushed after each activation: many in a row do not fill
    // the TPM's object slots.
    for _ in 0..4 {
        activate(&offer, ca.root_pem(), &mut tpm).expect("repeated activation succeeds");
    }
}

#[test]
fn ecc_p256_ek_activates_with_ecdh_and_kdfe() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let swtpm = manufactured(&ca);
    let point = ek_public_key_bits(
        &swtpm,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    );
    let certificate = ca
        .issue_ek_certificate(&point, &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2099))
        .unwrap();
    write_ek_certificate(&swtpm, EkKind::EccP256.certificate_nv_index(), &certificate);

    let mut tpm = open(&swtpm);
    let mut offer = offer_of(&mut tpm);
    let kinds: Vec<EkKind> = offer.endorsement_keys.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EkKind::Rsa2048, EkKind::EccP256]);
    offer.endorsement_keys.retain(|e| e.kind == EkKind::EccP256);
    let activated = activate(&offer, ca.root_pem(), &mut tpm).expect("ECC activation succeeds");
    assert_eq!(activated.ek().kind, EkKind::EccP256);
    assert_eq!(activated.ak_name().as_str(), hex::encode(tpm.ak_name()));
}

#[test]
fn an_ek_certificate_from_an_untrusted_ca_fails() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let other = TestCa::new("some other CA").unwrap();
    let swtpm = manufactured(&ca);
    let mut tpm = open(&swtpm);
    let offer = offer_of(&mut tpm);
    let error = activate(&offer, other.root_pem(), &mut tpm).unwrap_err();
    assert!(
        matches!(
            &error,
            ActivationError::EkChain {
                kind: EkKind::Rsa2048,
                source: EkChainError::UntrustedIssuer { .. }
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("untrusted CA"), "{error}");
}

#[test]
fn a_software_key_presented_as_the_ak_fails_activation() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let swtpm = manufactured(&ca);
    let mut tpm = open(&swtpm);
    let mut offer = offer_of(&mut tpm);
    // A key generated in software, dressed up with the AK's attributes
    // (fixedTPM, restricted, sign): its public area and name look right,
    // but the TPM has no such object loaded.
    let software = p256::SecretKey::random(&mut rand::thread_rng());
    let mut fake = tpm.ak_public_tpmt();
    let point = {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        software
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    };
    let n = fake.len();
    fake[n - 66..n - 34].copy_from_slice(&point[1..33]);
    fake[n - 32..].copy_from_slice(&point[33..65]);
    offer.ak_public = Base64Bytes(fake);

    let error = activate(&offer, ca.root_pem(), &mut tpm).unwrap_err();
    assert!(matches!(error, ActivationError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("not resident"), "{error}");
}

#[test]
fn a_blob_for_another_tpms_ek_or_another_ak_fails() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let (swtpm_a, swtpm_b) = (manufactured(&ca), manufactured(&ca));
    let offer_b = {
        let mut tpm_b = open(&swtpm_b);
        offer_of(&mut tpm_b)
    };
    let mut tpm_a = open(&swtpm_a);
    let offer_a = offer_of(&mut tpm_a);
    assert_ne!(
        offer_a.ak_public, offer_b.ak_public,
        "each TPM has its own AK"
    );

    // A's AK, but wrapped to B's (genuine) EK: A cannot recover the seed.
    let mut for_b_ek = offer_a.clone();
    for_b_ek.endorsement_keys = offer_b.endorsement_keys.clone();
    let error = activate(&for_b_ek, ca.root_pem(), &mut tpm_a).unwrap_err();
    assert!(matches!(error, ActivationError::Refused { .. }), "{error}");

    // A's EK, but bound to B's (genuine, TPM-resident) AK: A has no object
    // with that name loaded, so the integrity check fails.
    let mut for_b_ak = offer_a.clone();
    for_b_ak.ak_public = offer_b.ak_public.clone();
    let error = activate(&for_b_ak, ca.root_pem(), &mut tpm_a).unwrap_err();
    assert!(matches!(error, ActivationError::Refused { .. }), "{error}");

    // And the genuine pairing still works on the same TPM afterwards.
    activate(&offer_a, ca.root_pem(), &mut tpm_a).expect("A activates its own AK");
}

#[test]
fn an_expired_ek_certificate_fails_with_its_date() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let swtpm = manufactured(&ca);
    let modulus = ek_public_key_bits(
        &swtpm,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    );
    let expired = ca
        .issue_ek_certificate(&modulus, &rcgen::PKCS_RSA_SHA256, (2015, 2020))
        .unwrap();
    write_ek_certificate(&swtpm, EkKind::Rsa2048.certificate_nv_index(), &expired);

    let mut tpm = open(&swtpm);
    let offer = offer_of(&mut tpm);
    let error = activate(&offer, ca.root_pem(), &mut tpm).unwrap_err();
    assert_eq!(
        error.to_string(),
        "rsa2048 EK certificate rejected: EK certificate ((empty subject)) expired on 2020-01-01T00:00:00Z"
    );
}

#[test]
fn a_malformed_ek_certificate_fails_clearly() {
    require_swtpm!();
    let ca = TestCa::new("aver test TPM CA").unwrap();
    let swtpm = manufactured(&ca);
    write_ek_certificate(
        &swtpm,
        EkKind::Rsa2048.certificate_nv_index(),
        b"\x30\x82\x01\x00 this is not a certificate",
    );
    let mut tpm = open(&swtpm);
    let offer = offer_of(&mut tpm);
    let error = activate(&offer, ca.root_pem(), &mut tpm).unwrap_err();
    assert!(
        error
            .to_string()
            // The DER header claims 260 bytes; the NV index holds 30.
            .starts_with("rsa2048 EK certificate rejected: malformed EK certificate: truncated: the certificate says 260 bytes, 30 were read"),
        "{error}"
    );
}
