//! An AK trusted by an AK certificate in the TPM's NV, as cloud vTPMs
//! provision one (GCE: NV 0x01c10002 for the ECC AK): `aver-node quote
//! --ak-certificate-nv` attaches it, and `aver verify-node` accepts the AK
//! under `trust.akRoots` alone, naming the issuer, or refuses it with the
//! reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aver_tests::ek_ca::TestCa;
use aver_tests::{cargo_bin, Swtpm};
use aver_verifier::evidence::NodeQuote;
use aver_verifier::tpm::{AkPublic, PublicKey};

const NONCE: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
const NV_INDEX: &str = "0x01c10002";

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(cargo_bin(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin} runs: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tools(tcti: &str, tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
    assert!(out.status.success(), "{tool}: {}", text(&out.stderr));
}

/// Writes `certificate` into the AK certificate index, padded with 0xFF
/// to a larger index as clouds provision it.
fn write_nv(tcti: &str, dir: &Path, certificate: &[u8]) {
    let file = dir.join("ak-cert.bin");
    let mut padded = certificate.to_vec();
    padded.resize(certificate.len() + 64, 0xff);
    std::fs::write(&file, &padded).expect("write certificate");
    let _ = Command::new("tpm2_nvundefine")
        .args([NV_INDEX])
        .env("TPM2TOOLS_TCTI", tcti)
        .output();
    let size = padded.len().to_string();
    tools(
        tcti,
        "tpm2_nvdefine",
        &[
            NV_INDEX,
            "-s",
            &size,
            "-a",
            "ownerread|ownerwrite|authread|authwrite",
        ],
    );
    tools(
        tcti,
        "tpm2_nvwrite",
        &[NV_INDEX, "-i", file.to_str().expect("utf-8 path")],
    );
}

fn quote(tcti: &str, dir: &Path, nv: bool) -> PathBuf {
    let mut args = vec!["quote", "--tcti", tcti, "--qualifying-data", NONCE];
    if nv {
        args.extend(["--ak-certificate-nv", NV_INDEX]);
    }
    let out = run("aver-node", &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.join("quote.json");
    std::fs::write(&path, &out.stdout).expect("write quote");
    path
}

fn verify(dir: &Path, quote: &Path, roots: &str) -> Output {
    let policy = dir.join("policy.yaml");
    let digest = |b: u8| format!("\"sha256:{}\"", format!("{b:02x}").repeat(32));
    let indented: String = roots.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &policy,
        format!(
            "allowed:\n  engineDigests: [{}]\n  modelDigests: [{}]\ntrust:\n  akRoots: |\n{indented}allowUnverifiedBoot: true\n",
            digest(1),
            digest(2)
        ),
    )
    .expect("write policy");
    run(
        "aver",
        &[
            "verify-node",
            quote.to_str().expect("utf-8 path"),
            "--policy",
            policy.to_str().expect("utf-8 path"),
            "--nonce",
            NONCE,
        ],
    )
}

/// The SubjectPublicKeyInfo bit string of a P-256 point.
fn sec1(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut point = vec![0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    point
}

#[test]
fn an_ak_certificate_in_nv_trusts_the_ak_under_ak_roots() {
    aver_tests::require_swtpm!();
    let tpm = Swtpm::start().expect("swtpm starts");
    let tcti = tpm.tcti();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run("aver-node", &["ak", "--tcti", &tcti]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The AK's public key, from a quote without a certificate.
    let plain = quote(&tcti, dir.path(), false);
    let parsed: NodeQuote =
        serde_json::from_slice(&std::fs::read(&plain).expect("quote")).expect("JSON quote");
    assert!(parsed.ak_certificate.is_none());
    let ak = AkPublic::parse(&parsed.ak_public.0).expect("AK");
    let PublicKey::EccP256 { x, y } = &ak.key else {
        panic!("the node's AK is ECC P-256: {:?}", ak.key);
    };
    let cloud = TestCa::new("Cloud vTPM Root CA").expect("CA");
    let roots = cloud.root_pem().to_owned();

    // No certificate: refused.
    let out = verify(dir.path(), &plain, &roots);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no certificate"),
        "{}",
        text(&out.stderr)
    );

    // A certificate for the AK, in NV: accepted, naming the issuer.
    let certificate = cloud
        .issue_ek_certificate(&sec1(x, y), &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2099))
        .expect("AK certificate");
    write_nv(&tcti, dir.path(), &certificate);
    let certified = quote(&tcti, dir.path(), true);
    let parsed: NodeQuote =
        serde_json::from_slice(&std::fs::read(&certified).expect("quote")).expect("JSON quote");
    assert_eq!(
        parsed.ak_certificate.as_ref().map(|c| c.0.clone()),
        Some(certificate),
        "NV padding is stripped"
    );
    let out = verify(dir.path(), &certified, &roots);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ak trust          certified by")
            && stdout.contains("Cloud vTPM Root CA\" (trust.akRoots)"),
        "{stdout}"
    );

    // Another CA's root: refused, naming the issuer.
    let other = TestCa::new("Other Root CA").expect("CA");
    let out = verify(dir.path(), &certified, other.root_pem());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Cloud vTPM Root CA") && stderr.contains("untrusted issuer"),
        "{stderr}"
    );

    // A certificate for another key: refused as a key mismatch.
    let foreign = p256::SecretKey::random(&mut rand::thread_rng()).public_key();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&foreign, false);
    let wrong = cloud
        .issue_ek_certificate(
            point.as_bytes(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
            (2020, 2099),
        )
        .expect("certificate for another key");
    write_nv(&tcti, dir.path(), &wrong);
    let mismatched = quote(&tcti, dir.path(), true);
    let out = verify(dir.path(), &mismatched, &roots);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("key mismatch"),
        "{}",
        text(&out.stderr)
    );
}
