//! Attestation keys of every scheme real TPMs offer, made and quoted by
//! tpm2-tools against swtpm: the verifier accepts exactly what
//! `tpm2_checkquote` accepts, names keys as `tpm2_readpublic` does, and
//! recomputes the pcrDigest with the signing scheme's hash.

use std::path::Path;
use std::process::Command;

use aver_verifier::tpm::{self, alg, AkPublic, Attest, Signature, TpmParseError};

/// The qualifying data of every quote: 32 bytes, a verifier's nonce.
const NONCE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn tool(tcti: &str, dir: &Path, args: &[&str]) -> bool {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", tcti)
        .current_dir(dir)
        .output()
        .expect("tpm2-tools installed");
    if !out.status.success() {
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

struct Quoted {
    ak_pub: Vec<u8>,
    ak_name: Vec<u8>,
    attest: Vec<u8>,
    signature: Vec<u8>,
    pcr_values: Vec<u8>,
    checkquote_ok: bool,
}

/// An AK made with `tpm2_createak -G key -g hash -s scheme`, quoting
/// `selection` with `quote_hash`.
fn quote(key: &str, hash: &str, scheme: &str, selection: &str, quote_hash: &str) -> Quoted {
    let tpm = aver_tests::Swtpm::start().unwrap();
    let tcti = tpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ek_type = if key.starts_with("ecc") { "ecc" } else { "rsa" };
    // Without a resource manager transient objects stay loaded and fill
    // swtpm's three slots: flush after each tool that loads one.
    let flush = || assert!(tool(&tcti, d, &["tpm2_flushcontext", "-t"]));
    assert!(tool(
        &tcti,
        d,
        &["tpm2_createek", "-c", "ek.ctx", "-G", ek_type]
    ));
    flush();
    assert!(tool(
        &tcti,
        d,
        &[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            key,
            "-g",
            hash,
            "-s",
            scheme,
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
        ]
    ));
    flush();
    let nonce = NONCE;
    assert!(tool(
        &tcti,
        d,
        &[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            selection,
            "--scheme",
            scheme,
            "-q",
            nonce,
            "-g",
            quote_hash,
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
        ]
    ));
    assert!(tool(
        &tcti,
        d,
        &["tpm2_pcrread", selection, "-o", "pcrs.bin"]
    ));
    let checkquote_ok = tool(
        &tcti,
        d,
        &[
            "tpm2_checkquote",
            "-u",
            "ak.pub",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-f",
            "quote.pcrs",
            "-g",
            quote_hash,
            "-q",
            nonce,
        ],
    );
    let read = |f: &str| std::fs::read(d.join(f)).unwrap();
    Quoted {
        ak_pub: read("ak.pub"),
        ak_name: read("ak.name"),
        attest: read("quote.msg"),
        signature: read("quote.sig"),
        pcr_values: read("pcrs.bin"),
        checkquote_ok,
    }
}

/// Parses and verifies as the verifier does; returns the signature's hash.
fn verify(q: &Quoted) -> u16 {
    // tpm2_checkquote (5.4) checks RSA signatures with PKCS#1 v1.5 padding
    // only and so rejects every RSA-PSS quote; the PSS signature is checked
    // here against the tampered message instead.
    let sig = Signature::parse(&q.signature).unwrap();
    if !matches!(sig, Signature::RsaPss { .. }) {
        assert!(q.checkquote_ok, "tpm2_checkquote rejected the quote");
    }
    // tpm2_createak -u writes TPM2B_PUBLIC (size-prefixed).
    let ak = AkPublic::parse(&q.ak_pub).expect("TPM2B_PUBLIC parses");
    assert_eq!(AkPublic::parse(&q.ak_pub[2..]).unwrap(), ak);
    assert!(ak.is_attestation_key());
    assert_eq!(ak.name, q.ak_name, "name as tpm2_readpublic gives it");
    assert!(sig.verifies(&ak.key, &q.attest), "signature verifies");
    let mut tampered = q.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(!sig.verifies(&ak.key, &tampered));
    let attest = Attest::parse(&q.attest).unwrap();
    assert_eq!(
        tpm::digest(sig.hash_alg(), &q.pcr_values).unwrap(),
        attest.pcr_digest,
        "pcrDigest is the signing hash over the PCR values"
    );
    sig.hash_alg()
}

#[test]
fn rsassa_sha1_verifies_and_is_sha1() {
    aver_tests::require_swtpm!();
    let q = quote("rsa", "sha1", "rsassa", "sha256:0,1", "sha1");
    assert_eq!(verify(&q), alg::SHA1);
}

#[test]
fn rsassa_sha384_and_sha512() {
    aver_tests::require_swtpm!();
    for hash in ["sha384", "sha512"] {
        let q = quote("rsa", hash, "rsassa", "sha256:0,1,7", hash);
        verify(&q);
    }
}

#[test]
fn rsapss_sha256_sha384_sha512() {
    aver_tests::require_swtpm!();
    for hash in ["sha256", "sha384", "sha512"] {
        let q = quote("rsa", hash, "rsapss", "sha256:0,1", hash);
        verify(&q);
    }
}

#[test]
fn ecdsa_p256_sha256_and_sha384() {
    aver_tests::require_swtpm!();
    for hash in ["sha256", "sha384"] {
        let q = quote("ecc", hash, "ecdsa", "sha256:0,1", hash);
        verify(&q);
    }
}

#[test]
fn ecdsa_p384_sha384_quotes_the_sha256_bank() {
    aver_tests::require_swtpm!();
    let q = quote("ecc384", "sha384", "ecdsa", "sha256:0,1,7", "sha384");
    assert_eq!(verify(&q), alg::SHA384);
    assert_eq!(
        Attest::parse(&q.attest).unwrap().sha256_pcrs().unwrap(),
        &[0, 1, 7]
    );
}

#[test]
fn other_banks_are_refused_by_name() {
    aver_tests::require_swtpm!();
    for bank in ["sha1", "sha384"] {
        let q = quote("rsa", "sha256", "rsassa", &format!("{bank}:0,1"), "sha256");
        verify(&q);
        let err = Attest::parse(&q.attest).unwrap().sha256_pcrs().unwrap_err();
        assert!(matches!(err, TpmParseError::OtherPcrBank { .. }));
        assert_eq!(
            err.to_string(),
            format!("evidence PCR values are sha256; the quote selects the {bank} bank")
        );
    }
}

/// The quote as `aver-node` would serve it, for the verifier's node check.
fn node_evidence(q: &Quoted, pcrs: &[u8]) -> aver_verifier::Evidence {
    use aver_verifier::evidence::{Base64Bytes, NodeQuote, PcrValue};
    let pcrs = pcrs
        .iter()
        .zip(q.pcr_values.chunks(32))
        .map(|(&pcr, value)| PcrValue {
            pcr,
            value: aver_verifier::Sha256Digest(value.try_into().unwrap()),
        })
        .collect();
    NodeQuote {
        attest: Base64Bytes(q.attest.clone()),
        signature: Base64Bytes(q.signature.clone()),
        pcrs,
        ak_public: Base64Bytes(q.ak_pub.clone()),
        node_log: vec![],
        boot_log: None,
        ima_log: None,
        ak_certificate: None,
        ak_chain: Vec::new(),
    }
    .into_evidence(
        aver_verifier::Nonce::from_hex(NONCE).unwrap(),
        aver_verifier::Sha256Digest([0; 32]),
        None,
    )
}

fn node_policy(
    ak_name: &str,
    allow_sha1: bool,
) -> Result<aver_crds::AttestationPolicy, aver_crds::PolicyError> {
    let digest = |b: u8| format!("sha256:{}", format!("{b:02x}").repeat(32));
    aver_crds::AttestationPolicy::from_yaml(&format!(
        "allowUnverifiedBoot: true\nallowed:\n  engineDigests: [\"{}\"]\n  modelDigests: [\"{}\"]\ntrust:\n  akNames: [\"{ak_name}\"]\n  allowSha1: {allow_sha1}\n",
        digest(1),
        digest(2)
    ))
}

#[test]
fn sha1_passes_verification_only_with_the_policys_opt_in() {
    aver_tests::require_swtpm!();
    let nonce = aver_verifier::Nonce::from_hex(NONCE).unwrap();

    // A SHA-256 ECDSA AK: verified without any opt-in, not weak.
    let q = quote("ecc", "sha256", "ecdsa", "sha256:0,1", "sha256");
    let name = AkPublic::parse(&q.ak_pub).unwrap().name_hex();
    let report = aver_verifier::verify_node(
        &node_evidence(&q, &[0, 1]),
        &nonce,
        &aver_tests::checked(&node_policy(&name, false).unwrap()),
    )
    .expect("a SHA-256 AK verifies");
    assert!(!report.weak_hash());

    // An RSASSA-SHA1 AK: refused without trust.allowSha1 (by the policy
    // itself when its name is a SHA-1 name, else by the verifier), accepted
    // and reported as weak with it.
    let q = quote("rsa", "sha1", "rsassa", "sha256:0,1", "sha1");
    let name = AkPublic::parse(&q.ak_pub).unwrap().name_hex();
    let evidence = node_evidence(&q, &[0, 1]);
    match node_policy(&name, false) {
        Err(e) => assert!(matches!(e, aver_crds::PolicyError::Sha1AkName(_)), "{e}"),
        Ok(strict) => {
            let err = aver_verifier::verify_node(&evidence, &nonce, &aver_tests::checked(&strict))
                .unwrap_err();
            assert_eq!(err.reason(), "weak-hash", "{err}");
        }
    }
    let report = aver_verifier::verify_node(
        &evidence,
        &nonce,
        &aver_tests::checked(&node_policy(&name, true).unwrap()),
    )
    .expect("accepted with trust.allowSha1");
    assert!(report.weak_hash());
    assert!(
        report.to_text().contains("weak hash"),
        "{}",
        report.to_text()
    );
}
