//! `aver-node quote` on swtpm and `aver verify-node` on its output, through
//! the real binaries. A software TPM did not measure any boot, so it is
//! given the firmware log and IMA list captured from a real boot: the
//! verifier must notice that they do not explain the quoted PCRs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aver_tests::{cargo_bin, Swtpm};
use aver_verifier::evidence::NodeQuote;
use aver_verifier::tpm::AkPublic;

const NONCE: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../boot-log/testdata")
        .join(name)
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(cargo_bin(bin))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin} runs: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn policy_file(dir: &Path, name: &str, ak_name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let digest = |b: u8| format!("\"sha256:{}\"", format!("{b:02x}").repeat(32));
    std::fs::write(
        &path,
        format!(
            "allowed:\n  engineDigests: [{}]\n  modelDigests: [{}]\ntrust:\n  akNames: [\"{ak_name}\"]\n{extra}",
            digest(1),
            digest(2)
        ),
    )
    .expect("write policy");
    path
}

#[test]
fn a_node_quote_verifies_on_its_own_and_foreign_logs_are_refused() {
    aver_tests::require_swtpm!();
    let tpm = Swtpm::start().expect("swtpm starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let boot_log = testdata("ovmf-q35-swtpm.bin");
    let ima_log = testdata("ima-ng-initramfs.bin");

    let out = run(
        "aver-node",
        &[
            "quote",
            "--tcti",
            &tpm.tcti(),
            "--qualifying-data",
            NONCE,
            "--boot-log",
            boot_log.to_str().expect("utf-8 path"),
            "--ima-log",
            ima_log.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let quote: NodeQuote = serde_json::from_slice(&out.stdout).expect("one JSON quote");
    let quoted: Vec<u8> = quote.pcrs.iter().map(|p| p.pcr).collect();
    assert_eq!(quoted, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13]);
    assert_eq!(
        quote.boot_log.as_ref().map(|b| b.0.clone()),
        Some(std::fs::read(&boot_log).expect("fixture"))
    );
    assert!(quote.node_log.is_empty());
    let ak_name = AkPublic::parse(&quote.ak_public.0).expect("AK").name_hex();
    let quote_file = dir.path().join("quote.json");
    std::fs::write(&quote_file, &out.stdout).expect("write quote");
    let quote_arg = quote_file.to_str().expect("utf-8 path");

    // The platform without boot rules: the AK and the quote verify.
    let plain = policy_file(
        dir.path(),
        "plain.yaml",
        &ak_name,
        "allowUnverifiedBoot: true\n",
    );
    let plain_arg = plain.to_str().expect("utf-8 path");
    let out = run(
        "aver",
        &[
            "verify-node",
            quote_arg,
            "--policy",
            plain_arg,
            "--nonce",
            NONCE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("node platform accepted"));

    // Boot rules: the captured log does not explain swtpm's PCRs.
    let boot = policy_file(
        dir.path(),
        "boot.yaml",
        &ak_name,
        "boot:\n  secureBoot: disabled\n",
    );
    let out = run(
        "aver",
        &[
            "verify-node",
            quote_arg,
            "--policy",
            boot.to_str().expect("utf-8 path"),
            "--nonce",
            NONCE,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("verification failed (boot)"), "{stderr}");
    assert!(
        stderr.contains("but the firmware event log replays to"),
        "{stderr}"
    );

    // Another nonce: refused as not fresh.
    let other = "ab".repeat(32);
    let out = run(
        "aver",
        &[
            "verify-node",
            quote_arg,
            "--policy",
            plain_arg,
            "--nonce",
            &other,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("freshness"),
        "{}",
        text(&out.stderr)
    );

    // Not a quote: bad input, exit 2.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, b"{\"attest\": 1}").expect("write junk");
    let out = run(
        "aver",
        &[
            "verify-node",
            junk.to_str().expect("utf-8 path"),
            "--policy",
            plain_arg,
            "--nonce",
            NONCE,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not an aver-node quote"));

    // aver-node refuses bad qualifying data and a missing log file.
    let out = run(
        "aver-node",
        &["quote", "--tcti", &tpm.tcti(), "--qualifying-data", "abcd"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("64 hex"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        "aver-node",
        &[
            "quote",
            "--tcti",
            &tpm.tcti(),
            "--qualifying-data",
            NONCE,
            "--ima-log",
            "/nonexistent/ima",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read the IMA measurement list /nonexistent/ima"),
        "{}",
        text(&out.stderr)
    );
}
