//! Bounded fuzzing of the EK certificate chain validator and of the
//! activation documents, through their public API only.
//!
//! Properties:
//! - arbitrary bytes as the EK certificate, as intermediates or as the
//!   `trust.ekRoots` bundle never panic and never validate;
//! - a genuine chain (root → intermediate → EK certificate) validates, and
//!   any change to the EK certificate's bytes (bit flips anywhere, every
//!   truncation, huge DER lengths) or to the intermediate's makes it fail;
//! - duplicated, reordered and decoy intermediates and chains that loop
//!   never panic, end, and never validate a certificate that was altered;
//! - arbitrary and mutated activation offers, requests and responses never
//!   panic and fail with the activation document errors.
//!
//! Case counts are kept small so the file runs in seconds in `cargo test`.

use aver_testkit::tpm::AK_ATTRIBUTES;
use aver_testkit::{rsa_ek, ForeignKey, TestCa};
use aver_verifier::ek::activation::{
    ActivationError, ActivationOffer, ActivationResponse, EndorsementCertificate,
};
use aver_verifier::ek::chain::{
    ca_certificates_from_pem, validate_ek_certificate, EkChainError, TrustAnchors,
};
use aver_verifier::ek::{ActivationRequest, EkKind, PendingActivation};
use aver_verifier::evidence::Base64Bytes;
use base64::Engine as _;
use proptest::prelude::*;
use rand::SeedableRng as _;
use rcgen::BasicConstraints;
use sha2::{Digest as _, Sha256};

/// 2027-01-15, inside every test certificate's validity.
const NOW: i64 = 1_800_000_000;

// --- Test PKI, shaped like a TPM vendor's ----------------------------------

fn ca(common_name: &str, parent: Option<&TestCa>, constraint: BasicConstraints) -> TestCa {
    TestCa::build(common_name, parent, constraint, |_| {})
}

fn rsa_ek_key() -> ForeignKey {
    ForeignKey::rsa(&rsa_ek().to_public_key())
}

fn ek_certificate(ca: &TestCa, key: &ForeignKey) -> Vec<u8> {
    aver_testkit::ek_certificate(ca, key, (2020, 2099), |_| {})
}

/// Everything the properties mutate, built once.
struct Pki {
    root: TestCa,
    intermediate: TestCa,
    anchors: TrustAnchors,
    /// EK certificates issued by `intermediate`.
    rsa_ek: Vec<u8>,
    p256_ek: Vec<u8>,
    /// CAs with the intermediate's name but another key.
    impostors: Vec<TestCa>,
    /// CAs under the root, with names of their own.
    unrelated: Vec<TestCa>,
    /// Two CAs that certify each other, and an EK certificate under one.
    loop_a: TestCa,
    loop_b: TestCa,
    loop_ek: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let root = ca("TPM Vendor Root", None, BasicConstraints::Unconstrained);
        let intermediate = ca(
            "TPM Vendor Intermediate",
            Some(&root),
            BasicConstraints::Constrained(0),
        );
        let anchors = TrustAnchors::from_pem(&root.pem).unwrap();
        let rsa_ek = ek_certificate(&intermediate, &rsa_ek_key());
        let p256_ek = ek_certificate(&intermediate, &ForeignKey::random_p256());
        let impostors = (0..3)
            .map(|_| {
                ca(
                    "TPM Vendor Intermediate",
                    Some(&root),
                    BasicConstraints::Unconstrained,
                )
            })
            .collect();
        let unrelated = (0..3)
            .map(|i| {
                ca(
                    &format!("Other CA {i}"),
                    Some(&root),
                    BasicConstraints::Unconstrained,
                )
            })
            .collect();
        let loop_a = ca("Loop A", None, BasicConstraints::Unconstrained);
        let loop_b = ca("Loop B", None, BasicConstraints::Unconstrained);
        let loop_ek = ek_certificate(&loop_a, &ForeignKey::random_p256());
        Self {
            root,
            intermediate,
            anchors,
            rsa_ek,
            p256_ek,
            impostors,
            unrelated,
            loop_a,
            loop_b,
            loop_ek,
        }
    }

    fn ek(&self, kind: EkKind) -> &[u8] {
        match kind {
            EkKind::Rsa2048 => &self.rsa_ek,
            EkKind::EccP256 => &self.p256_ek,
        }
    }

    fn validate(
        &self,
        ek: &[u8],
        kind: EkKind,
        intermediates: &[Vec<u8>],
    ) -> Result<[u8; 32], EkChainError> {
        validate_ek_certificate(ek, kind, intermediates, &self.anchors, NOW)
            .map(|validated| validated.info().certificate_sha256.0)
    }

    fn genuine_chain(&self) -> Vec<Vec<u8>> {
        vec![self.intermediate.der.clone()]
    }
}

fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(Pki::new)
}

const KINDS: [EkKind; 2] = [EkKind::Rsa2048, EkKind::EccP256];

fn kind() -> impl Strategy<Value = EkKind> {
    prop::sample::select(KINDS.to_vec())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A DER length header claiming far more content than any certificate has.
const HUGE_LENGTHS: [&[u8]; 5] = [
    &[0x84, 0xff, 0xff, 0xff, 0xff],
    &[0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[
        0x8f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff,
    ],
    &[0x80],
    &[0x82, 0xff, 0xff],
];

/// The header length and total length of the DER TLV at the start of `der`
/// (definite lengths only).
fn tlv_extent(der: &[u8]) -> Option<(usize, usize)> {
    let first = *der.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = der.get(2..2 + n)?;
        (
            2 + n,
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
        )
    };
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some((header, total))
}

/// What the signature covers and the signature itself: the TBSCertificate
/// and the signatureValue TLVs of a certificate. The outer header and the
/// outer signatureAlgorithm are neither.
fn signed_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, total) = tlv_extent(der)?;
    let content = &der[header..total];
    let (_, tbs_len) = tlv_extent(content)?;
    let (tbs, rest) = content.split_at(tbs_len);
    let (_, algorithm_len) = tlv_extent(rest)?;
    let rest = &rest[algorithm_len..];
    let (_, signature_len) = tlv_extent(rest)?;
    Some((tbs, &rest[..signature_len]))
}

/// Whether `mutated` differs from `original` in what is signed or in the
/// signature (or is no longer even shaped like a certificate).
fn signed_part_altered(original: &[u8], mutated: &[u8]) -> bool {
    let original = signed_parts(original).expect("a generated certificate");
    signed_parts(mutated) != Some(original)
}

/// The verdict on `mutated`, presented in place of the EK certificate
/// `original`: an error whenever the signed part or the signature changed;
/// otherwise, if it validates, it is reported as the bytes presented.
fn check_mutated_ek(
    original: &[u8],
    mutated: &[u8],
    kind: EkKind,
    intermediates: &[Vec<u8>],
) -> Result<(), String> {
    match pki().validate(mutated, kind, intermediates) {
        Err(_) => Ok(()),
        Ok(_) if signed_part_altered(original, mutated) => Err(format!(
            "{kind} EK certificate altered in its signed part validated"
        )),
        Ok(digest)
            if digest != <[u8; 32]>::from(Sha256::digest(mutated))
                && digest != <[u8; 32]>::from(Sha256::digest(original)) =>
        {
            Err("validated, but reported as other bytes than presented".into())
        }
        Ok(_) => Ok(()),
    }
}

// --- Deterministic sweeps ---------------------------------------------------

#[test]
fn the_genuine_chains_validate() {
    let pki = pki();
    for kind in KINDS {
        let ek = pki.ek(kind);
        let digest = pki.validate(ek, kind, &pki.genuine_chain()).unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(ek)));
        // Without the intermediate there is no path.
        assert!(matches!(
            pki.validate(ek, kind, &[]),
            Err(EkChainError::UntrustedIssuer { .. })
        ));
        // The other kind's NV index holds another kind of key.
        let other = KINDS.into_iter().find(|k| *k != kind).unwrap();
        assert!(matches!(
            pki.validate(ek, other, &pki.genuine_chain()),
            Err(EkChainError::WrongKey { .. })
        ));
    }
}

#[test]
fn every_truncation_of_the_ek_certificate_is_refused() {
    let pki = pki();
    for kind in KINDS {
        let ek = pki.ek(kind);
        for len in 0..ek.len() {
            let result = pki.validate(&ek[..len], kind, &pki.genuine_chain());
            assert!(
                result.is_err(),
                "{kind} EK certificate cut at {len} validated"
            );
        }
    }
}

#[test]
fn every_single_bit_flip_of_the_ek_certificate_is_refused() {
    let pki = pki();
    for kind in KINDS {
        let ek = pki.ek(kind);
        for offset in 0..ek.len() {
            // One bit per offset, a different one each time, and the whole
            // byte inverted: covers tags, lengths, TBS and signature.
            for mask in [1u8 << (offset % 8), 0xff] {
                let mut mutated = ek.to_vec();
                mutated[offset] ^= mask;
                if let Err(e) = check_mutated_ek(ek, &mutated, kind, &pki.genuine_chain()) {
                    panic!("byte {offset} ^ {mask:#04x}: {e}");
                }
            }
        }
    }
}

#[test]
fn huge_der_lengths_anywhere_in_the_ek_certificate_are_refused() {
    let pki = pki();
    for kind in KINDS {
        let ek = pki.ek(kind);
        for offset in 0..ek.len() {
            for huge in HUGE_LENGTHS {
                // The byte at `offset` (a length in the TLVs it starts)
                // becomes a huge or indefinite length.
                let mutated = [&ek[..offset], huge, &ek[offset + 1..]].concat();
                if let Err(e) = check_mutated_ek(ek, &mutated, kind, &pki.genuine_chain()) {
                    panic!("huge length {huge:02x?} at {offset}: {e}");
                }
            }
        }
        // A certificate whose outer length claims everything up to the size
        // limit and beyond, actually followed by that much data.
        for extra in [1usize, 4096, 64 * 1024] {
            let tail = vec![0u8; extra];
            let body = [&ek[4..], &tail[..]].concat();
            let mut der = vec![0x30, 0x84];
            der.extend((body.len() as u32).to_be_bytes());
            der.extend(&body);
            assert!(pki.validate(&der, kind, &pki.genuine_chain()).is_err());
            let appended = [ek, &tail[..]].concat();
            if let Ok(digest) = pki.validate(&appended, kind, &pki.genuine_chain()) {
                // Tolerated padding must not change which certificate it is.
                assert!(
                    digest == <[u8; 32]>::from(Sha256::digest(&appended))
                        || digest == <[u8; 32]>::from(Sha256::digest(ek))
                );
            }
        }
    }
}

#[test]
fn chains_that_loop_end_without_validating() {
    let pki = pki();
    let a_by_b = pki.loop_a.cross_signed_by(&pki.loop_b);
    let b_by_a = pki.loop_b.cross_signed_by(&pki.loop_a);
    let a_self = pki.loop_a.der.clone();
    let candidates = [
        vec![a_by_b.clone(), b_by_a.clone()],
        vec![b_by_a.clone(), a_by_b.clone()],
        vec![a_self.clone()],
        vec![a_self.clone(), a_self.clone(), a_self.clone()],
        std::iter::repeat_n([a_by_b.clone(), b_by_a.clone()], 8)
            .flatten()
            .collect(),
        std::iter::repeat_n(a_self.clone(), 16).collect(),
    ];
    for intermediates in &candidates {
        let result = pki.validate(&pki.loop_ek, EkKind::EccP256, intermediates);
        assert!(
            result.is_err(),
            "an EK certificate under a loop of {} certificates validated",
            intermediates.len()
        );
    }
    // The genuine EK certificate with a loop of the intermediate's own name
    // around it: the path ends, and only through the root.
    let inter_by_inter = pki.intermediate.cross_signed_by(&pki.intermediate);
    for kind in KINDS {
        let ek = pki.ek(kind);
        let looped = vec![inter_by_inter.clone(); 8];
        assert!(pki.validate(ek, kind, &looped).is_err());
        let mut with_genuine = looped.clone();
        with_genuine.insert(3, pki.intermediate.der.clone());
        if let Ok(digest) = pki.validate(ek, kind, &with_genuine) {
            assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(ek)));
        }
    }
}

#[test]
fn root_bundles_of_garbage_are_refused() {
    assert!(TrustAnchors::from_pem("").is_err());
    let pki = pki();
    for bundle in [
        pem_block("CERTIFICATE", b""),
        pem_block("CERTIFICATE", &pki.p256_ek),
        pem_block("PRIVATE KEY", &pki.root.der),
        pem_block("CERTIFICATE", &pki.root.der[..pki.root.der.len() - 1]),
        format!("{}-----BEGIN CERTIFICATE-----\n", pki.root.pem),
        pki.root.pem.replace("-----END CERTIFICATE-----", ""),
    ] {
        assert!(TrustAnchors::from_pem(&bundle).is_err(), "{bundle}");
        assert!(
            ca_certificates_from_pem(&bundle, "bundle").is_err(),
            "{bundle}"
        );
    }
}

// --- Random properties -----------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// How a certificate is changed.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR `mask` (non-zero) into the byte at `at` (an index modulo the length).
    Flip { at: usize, mask: u8 },
    /// Replace `len` bytes from `at` with `bytes`.
    Splice {
        at: usize,
        len: usize,
        bytes: Vec<u8>,
    },
    /// A huge length header at `at`.
    HugeLength { at: usize, which: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => (any::<usize>(), 0usize..8, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(at, len, bytes)| Mutation::Splice { at, len, bytes }),
        1 => (any::<usize>(), 0..HUGE_LENGTHS.len())
            .prop_map(|(at, which)| Mutation::HugeLength { at, which }),
    ]
}

fn apply(der: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = der.to_vec();
    for m in mutations {
        if out.is_empty() {
            break;
        }
        match m {
            Mutation::Flip { at, mask } => {
                let at = at % out.len();
                out[at] ^= mask;
            }
            Mutation::Splice { at, len, bytes } => {
                let at = at % out.len();
                let end = (at + len).min(out.len());
                out.splice(at..end, bytes.iter().copied());
            }
            Mutation::HugeLength { at, which } => {
                let at = at % out.len();
                out.splice(at..at + 1, HUGE_LENGTHS[*which].iter().copied());
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn random_bytes_never_validate(
        kind in kind(),
        ek in prop::collection::vec(any::<u8>(), 0..2048),
        junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..4),
        text in ".{0,512}",
        body in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let pki = pki();
        // As the EK certificate, with and without the genuine intermediate.
        prop_assert!(pki.validate(&ek, kind, &pki.genuine_chain()).is_err());
        prop_assert!(pki.validate(&ek, kind, &junk).is_err());
        // As intermediates next to a genuine EK certificate.
        let mut chain = junk.clone();
        chain.push(pki.intermediate.der.clone());
        prop_assert!(pki.validate(pki.ek(kind), kind, &chain).is_err());
        // As the roots bundle: text, and PEM-framed garbage.
        prop_assert!(TrustAnchors::from_pem(&text).is_err());
        if let Ok(certificates) = ca_certificates_from_pem(&text, "bundle") {
            prop_assert!(certificates.is_empty());
        }
        let framed = pem_block("CERTIFICATE", &body);
        prop_assert!(TrustAnchors::from_pem(&framed).is_err());
        prop_assert!(ca_certificates_from_pem(&framed, "bundle").is_err());
        let appended = format!("{}{framed}", pki.root.pem);
        prop_assert!(TrustAnchors::from_pem(&appended).is_err());
    }

    #[test]
    fn an_altered_ek_certificate_never_validates(
        kind in kind(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let pki = pki();
        let ek = pki.ek(kind);
        let mutated = apply(ek, &mutations);
        if let Err(e) = check_mutated_ek(ek, &mutated, kind, &pki.genuine_chain()) {
            prop_assert!(false, "{}: {:?}", e, mutations);
        }
    }

    #[test]
    fn an_altered_intermediate_never_validates(
        kind in kind(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let pki = pki();
        let mutated = apply(&pki.intermediate.der, &mutations);
        let result = pki.validate(pki.ek(kind), kind, std::slice::from_ref(&mutated));
        if signed_part_altered(&pki.intermediate.der, &mutated) {
            prop_assert!(result.is_err(), "altered intermediate validated: {:?}", mutations);
        }
    }

    #[test]
    fn an_altered_root_never_panics(
        kind in kind(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        // The root is trusted as given, so some of its bytes (dates, say)
        // may change without failing the path: only no panics, and a
        // validated EK certificate is still the one presented.
        let pki = pki();
        let root = apply(&pki.root.der, &mutations);
        if let Ok(anchors) = TrustAnchors::from_pem(&pem_block("CERTIFICATE", &root)) {
            let ek = pki.ek(kind);
            if let Ok(validated) =
                validate_ek_certificate(ek, kind, &pki.genuine_chain(), &anchors, NOW)
            {
                prop_assert_eq!(
                    validated.info().certificate_sha256.0,
                    <[u8; 32]>::from(Sha256::digest(ek))
                );
            }
        }
    }

    #[test]
    fn duplicated_reordered_and_decoy_intermediates(
        kind in kind(),
        copies in 1usize..4,
        decoys in prop::collection::vec((any::<bool>(), 0usize..3), 0..10),
        order in any::<prop::sample::Index>(),
        seed in any::<u64>(),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        let pki = pki();
        let mut chain: Vec<Vec<u8>> = vec![pki.intermediate.der.clone(); copies];
        for (impostor, i) in &decoys {
            let ca = if *impostor { &pki.impostors[*i] } else { &pki.unrelated[*i] };
            chain.push(ca.der.clone());
        }
        chain.push(pki.root.der.clone());
        // A deterministic shuffle from `seed`.
        let mut state = seed | 1;
        for i in (1..chain.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chain.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let rotation = order.index(chain.len());
        chain.rotate_left(rotation);

        let ek = pki.ek(kind);
        let mutated = apply(ek, &mutations);
        let result = pki.validate(&mutated, kind, &chain);
        if mutated != ek {
            if let Err(e) = check_mutated_ek(ek, &mutated, kind, &chain) {
                prop_assert!(false, "{}: {:?}", e, mutations);
            }
        } else if chain.len() <= 4 {
            // Decoys are skipped: the genuine intermediate is found.
            prop_assert_eq!(result, Ok(<[u8; 32]>::from(Sha256::digest(ek))));
        } else if let Ok(digest) = result {
            // Longer lists may be capped, but never validate another thing.
            prop_assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(ek)));
        }
    }
}

// --- Activation documents ---------------------------------------------------

/// A TPMT_PUBLIC of an ECC P-256 restricted signing key (aver's AK).
fn ak_public() -> Vec<u8> {
    aver_testkit::tpm::ak_public(AK_ATTRIBUTES, [1; 32], [2; 32])
}

fn b64(bytes: &[u8]) -> serde_json::Value {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into()
}

fn genuine_offer() -> serde_json::Value {
    let pki = pki();
    serde_json::json!({
        "version": 1,
        "akPublic": b64(&ak_public()),
        "endorsementKeys": [
            { "kind": "rsa2048", "certificate": b64(&pki.rsa_ek) },
            { "kind": "eccP256", "certificate": b64(&pki.p256_ek) },
        ],
        "ekChain": [b64(&pki.intermediate.der)],
    })
}

fn is_document_error(e: &ActivationError) -> bool {
    matches!(
        e,
        ActivationError::Malformed { .. } | ActivationError::UnsupportedVersion { .. }
    )
}

/// Parses `bytes` as an offer and, if it parses, runs the verifier's side
/// of activation on it; returns whether it was prepared.
fn offer_outcome(bytes: &[u8], seed: u64) -> Result<bool, TestCaseError> {
    let offer = match ActivationOffer::from_json(bytes) {
        Ok(offer) => offer,
        Err(e) => {
            prop_assert!(is_document_error(&e), "untyped offer error: {e:?}");
            prop_assert_eq!(e.reason(), "malformed");
            return Ok(false);
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    match PendingActivation::prepare(&offer, &pki().anchors, NOW, &mut rng) {
        Ok((request, pending)) => {
            // The answer must be the secret: anything else is refused.
            let wrong = ActivationResponse {
                version: 1,
                credential: request.credential_blob.clone(),
            };
            let completed = pending.complete(&wrong);
            prop_assert!(
                matches!(completed, Err(ActivationError::WrongSecret { .. })),
                "a wrong secret gave {:?}",
                completed
            );
            Ok(true)
        }
        Err(e) => {
            prop_assert!(!e.reason().is_empty());
            Ok(false)
        }
    }
}

#[test]
fn the_genuine_offer_prepares_an_activation() {
    let bytes = serde_json::to_vec(&genuine_offer()).unwrap();
    let offer = ActivationOffer::from_json(&bytes).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (request, pending) =
        PendingActivation::prepare(&offer, &pki().anchors, NOW, &mut rng).unwrap();
    assert_eq!(request.kind, EkKind::Rsa2048);
    assert_eq!(
        pending.ek().certificate_sha256.0,
        <[u8; 32]>::from(Sha256::digest(&pki().rsa_ek))
    );
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,16}".prop_map(serde_json::Value::from),
        prop::sample::select(vec!["rsa2048", "eccP256", "AAAA", "=", ""])
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "version",
                    "akPublic",
                    "endorsementKeys",
                    "ekChain",
                    "kind",
                    "certificate",
                    "credential",
                    "extra",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A structural change to the genuine offer.
fn offer_edit() -> impl Strategy<Value = (usize, serde_json::Value)> {
    (0usize..8, json_value())
}

fn edit_offer(
    mut offer: serde_json::Value,
    (what, value): (usize, serde_json::Value),
) -> serde_json::Value {
    let object = offer.as_object_mut().unwrap();
    match what {
        0 => {
            object.insert("version".into(), value);
        }
        1 => {
            object.insert("akPublic".into(), value);
        }
        2 => {
            object.insert("endorsementKeys".into(), value);
        }
        3 => {
            object.insert("ekChain".into(), value);
        }
        4 => {
            object.insert("unknownField".into(), value);
        }
        5 => {
            object["endorsementKeys"][0]["kind"] = value;
        }
        6 => {
            object["endorsementKeys"][1]["certificate"] = value;
        }
        _ => {
            let key = ["version", "akPublic", "endorsementKeys", "ekChain"]
                [value.as_i64().unwrap_or(0).unsigned_abs() as usize % 4];
            object.remove(key);
        }
    }
    offer
}

fn arb_base64(max: usize) -> impl Strategy<Value = Base64Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Base64Bytes)
}

/// Any offer of the supported version: AK and certificates as any bytes.
fn arb_offer() -> impl Strategy<Value = ActivationOffer> {
    (
        arb_base64(128),
        prop::collection::vec(
            (kind(), arb_base64(256))
                .prop_map(|(kind, certificate)| EndorsementCertificate { kind, certificate }),
            0..3,
        ),
        prop::collection::vec(arb_base64(256), 0..3),
    )
        .prop_map(|(ak_public, endorsement_keys, ek_chain)| ActivationOffer {
            version: 1,
            ak_public,
            endorsement_keys,
            ek_chain,
        })
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn activation_documents_round_trip_through_json(
        offer in arb_offer(),
        kind in kind(),
        credential_blob in arb_base64(256),
        encrypted_secret in arb_base64(256),
        credential in arb_base64(64),
    ) {
        let json = serde_json::to_vec(&offer).unwrap();
        prop_assert_eq!(ActivationOffer::from_json(&json), Ok(offer));
        let request = ActivationRequest { version: 1, kind, credential_blob, encrypted_secret };
        let json = serde_json::to_vec(&request).unwrap();
        prop_assert_eq!(ActivationRequest::from_json(&json), Ok(request));
        let response = ActivationResponse { version: 1, credential };
        let json = serde_json::to_vec(&response).unwrap();
        prop_assert_eq!(ActivationResponse::from_json(&json), Ok(response));
    }

    #[test]
    fn arbitrary_activation_documents_are_refused_with_typed_errors(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        value in json_value(),
    ) {
        for document in [bytes.clone(), serde_json::to_vec(&value).unwrap()] {
            offer_outcome(&document, 1)?;
            for e in [
                ActivationRequest::from_json(&document).err(),
                ActivationResponse::from_json(&document).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(is_document_error(&e), "untyped error: {e:?}");
            }
        }
    }

    #[test]
    fn mutated_offers_never_panic(
        mutations in prop::collection::vec(mutation(), 1..4),
        edit in offer_edit(),
        version in any::<u32>(),
        seed in any::<u64>(),
    ) {
        let genuine = serde_json::to_vec(&genuine_offer()).unwrap();
        // Byte-level damage to the JSON text.
        offer_outcome(&apply(&genuine, &mutations), seed)?;
        // Structural edits of the document.
        let edited = serde_json::to_vec(&edit_offer(genuine_offer(), edit)).unwrap();
        offer_outcome(&edited, seed)?;
        // Another version is refused as such.
        let mut other = genuine_offer();
        other["version"] = version.into();
        let result = ActivationOffer::from_json(&serde_json::to_vec(&other).unwrap());
        if version == 1 {
            prop_assert!(result.is_ok());
        } else {
            let refused = matches!(
                result,
                Err(ActivationError::UnsupportedVersion { found, .. }) if found == version
            );
            prop_assert!(refused, "version {} gave {:?}", version, result);
        }
    }

    #[test]
    fn offers_with_altered_certificates_never_activate(
        mutations in prop::collection::vec(mutation(), 1..4),
        on_chain in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let pki = pki();
        let mut offer = genuine_offer();
        if on_chain {
            let mutated = apply(&pki.intermediate.der, &mutations);
            prop_assume!(signed_part_altered(&pki.intermediate.der, &mutated));
            offer["ekChain"][0] = b64(&mutated);
        } else {
            let mutated = apply(&pki.p256_ek, &mutations);
            prop_assume!(signed_part_altered(&pki.p256_ek, &mutated));
            offer["endorsementKeys"] =
                serde_json::json!([{ "kind": "eccP256", "certificate": b64(&mutated) }]);
        }
        let bytes = serde_json::to_vec(&offer).unwrap();
        // Refused when the offer is read or when its chain is checked.
        let result = ActivationOffer::from_json(&bytes).and_then(|offer| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            PendingActivation::prepare(&offer, &pki.anchors, NOW, &mut rng)
        });
        match result {
            Err(e) => prop_assert!(
                matches!(e.reason(), "ek-chain" | "malformed"),
                "unexpected error {:?}",
                e
            ),
            Ok(_) => prop_assert!(false, "activation with an altered certificate"),
        }
    }
}
