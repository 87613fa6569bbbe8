//! Interoperability with tpm2-tools: quotes and EK certificates made by the
//! reference tools on a software TPM are checked by `aver tpm check-quote`
//! and `aver ek verify`, and `tpm2_checkquote` must reach the same verdict
//! on every quote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aver_tests::ek_ca::TestCa;
use aver_tests::{cargo_bin, require_swtpm, Swtpm};

/// A software TPM and a directory for the tools' files.
struct Tools {
    tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Tools {
    fn new(tpm: Swtpm) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aver-interop-")
            .tempdir()
            .unwrap();
        Self { tpm, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .args(args)
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tpm.tcti())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool} (is tpm2-tools installed?): {e}"))
    }

    /// Runs a tool that must succeed, then flushes the transient objects
    /// it left loaded (there is no resource manager in front of swtpm).
    fn must(&self, tool: &str, args: &[&str]) {
        let out = self.tool(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flush = self.tool("tpm2_flushcontext", &["-t"]);
        assert!(flush.status.success(), "tpm2_flushcontext -t failed");
    }

    /// An EK and an AK of `algorithm` (`ecc` with ecdsa, `rsa` with rsassa),
    /// as `tpm2_createak -u` writes it (TPM2B_PUBLIC).
    fn make_ak(&self, algorithm: &str) -> (String, String) {
        let (scheme, ek, ak_ctx, ak_pub) = match algorithm {
            "ecc" => ("ecdsa", "ek-ecc.ctx", "ak-ecc.ctx", "ak-ecc.pub"),
            _ => ("rsassa", "ek-rsa.ctx", "ak-rsa.ctx", "ak-rsa.pub"),
        };
        self.must("tpm2_createek", &["-c", ek, "-G", "rsa"]);
        self.must(
            "tpm2_createak",
            &[
                "-C", ek, "-c", ak_ctx, "-G", algorithm, "-g", "sha256", "-s", scheme, "-u", ak_pub,
            ],
        );
        (ak_ctx.into(), ak_pub.into())
    }

    /// `tpm2_quote` of sha256:0,1,2,7 with `nonce`; returns the message,
    /// signature and PCR file names.
    fn quote(&self, ak_ctx: &str, nonce: &str, name: &str) -> [String; 3] {
        let files = [
            format!("{name}.msg"),
            format!("{name}.sig"),
            format!("{name}.pcrs"),
        ];
        self.must(
            "tpm2_quote",
            &[
                "-c",
                ak_ctx,
                "-l",
                "sha256:0,1,2,7",
                "-q",
                nonce,
                "-g",
                "sha256",
                "-m",
                &files[0],
                "-s",
                &files[1],
                "-o",
                &files[2],
            ],
        );
        files
    }

    fn aver(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(cargo_bin("aver"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().expect("aver exited normally"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// aver's exit code and stderr, and whether tpm2_checkquote accepted.
    fn check(
        &self,
        ak_pub: &str,
        msg: &str,
        sig: &str,
        pcrs: &str,
        nonce: &str,
    ) -> (i32, String, bool) {
        let (code, _, stderr) = self.aver(&[
            "tpm",
            "check-quote",
            "--ak-public",
            ak_pub,
            "--quote",
            msg,
            "--signature",
            sig,
            "--pcrs",
            pcrs,
            "--qualifying-data",
            nonce,
        ]);
        let reference = self.tool(
            "tpm2_checkquote",
            &[
                "-u", ak_pub, "-m", msg, "-s", sig, "-f", pcrs, "-g", "sha256", "-q", nonce,
            ],
        );
        (code, stderr, reference.status.success())
    }
}

fn flip_last_byte(path: &Path, to: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn check_quote_agrees_with_tpm2_checkquote() {
    require_swtpm!();
    let tools = Tools::new(Swtpm::start().unwrap());
    for algorithm in ["ecc", "rsa"] {
        let (ak_ctx, ak_pub) = tools.make_ak(algorithm);
        let [msg, sig, pcrs] = tools.quote(&ak_ctx, "0102abcd", &format!("a-{algorithm}"));

        let (code, stderr, reference) = tools.check(&ak_pub, &msg, &sig, &pcrs, "0102abcd");
        assert_eq!(code, 0, "{algorithm}: genuine quote refused: {stderr}");
        assert!(
            reference,
            "{algorithm}: tpm2_checkquote refused the genuine quote"
        );
        let (_, stdout, _) = tools.aver(&[
            "tpm",
            "check-quote",
            "--ak-public",
            &ak_pub,
            "--quote",
            &msg,
            "--signature",
            &sig,
            "--qualifying-data",
            "0102abcd",
        ]);
        assert!(stdout.contains("AK name: 000b"), "{stdout}");
        assert!(stdout.contains("PCR selection: sha256:0,1,2,7"), "{stdout}");
        assert!(stdout.contains("clock: "), "{stdout}");

        // Another qualifying data.
        let (code, stderr, reference) = tools.check(&ak_pub, &msg, &sig, &pcrs, "0102abce");
        assert_eq!(code, 1, "{algorithm}: wrong nonce: {stderr}");
        assert!(stderr.contains("qualifying data check failed"), "{stderr}");
        assert!(
            !reference,
            "{algorithm}: tpm2_checkquote accepted a wrong nonce"
        );

        // A flipped signature byte.
        let bad_sig = format!("bad-{algorithm}.sig");
        flip_last_byte(&tools.path(&sig), &tools.path(&bad_sig));
        let (code, stderr, reference) = tools.check(&ak_pub, &msg, &bad_sig, &pcrs, "0102abcd");
        assert_eq!(code, 1, "{algorithm}: bad signature: {stderr}");
        assert!(stderr.contains("signature check failed"), "{stderr}");
        assert!(
            !reference,
            "{algorithm}: tpm2_checkquote accepted a bad signature"
        );

        // The PCR file of a later quote, after PCR 7 changed.
        tools.must(
            "tpm2_pcrextend",
            &[&format!("7:sha256={}", "ab".repeat(32))],
        );
        let [_, _, later_pcrs] = tools.quote(&ak_ctx, "0102abcd", &format!("b-{algorithm}"));
        let (code, stderr, reference) = tools.check(&ak_pub, &msg, &sig, &later_pcrs, "0102abcd");
        assert_eq!(code, 1, "{algorithm}: other PCRs: {stderr}");
        assert!(stderr.contains("PCR check failed"), "{stderr}");
        assert!(
            !reference,
            "{algorithm}: tpm2_checkquote accepted other PCR values"
        );

        // Garbage instead of a quote.
        std::fs::write(tools.path("garbage"), b"not a quote at all").unwrap();
        let (code, stderr, reference) = tools.check(&ak_pub, "garbage", &sig, &pcrs, "0102abcd");
        assert_eq!(code, 2, "{algorithm}: garbage: {stderr}");
        assert!(!reference, "{algorithm}: tpm2_checkquote accepted garbage");
        let (code, _, _) = tools.check("garbage", &msg, &sig, &pcrs, "0102abcd");
        assert_eq!(code, 2);
        let (code, _, _) = tools.check(&ak_pub, &msg, &sig, "garbage", "0102abcd");
        assert_eq!(code, 2);
    }
}

#[test]
fn ek_certificate_from_nv_verifies_against_its_root_only() {
    require_swtpm!();
    let ca = TestCa::new("aver interop EK root").unwrap();
    let tools = Tools::new(Swtpm::start_with_ek_cert(&ca).unwrap());
    // As on a real TPM: the certificate is read from its NV index.
    tools.must("tpm2_nvread", &["0x01c00002", "-o", "ek.der"]);
    std::fs::write(tools.path("root.pem"), ca.root_pem()).unwrap();
    let other = TestCa::new("aver interop other root").unwrap();
    std::fs::write(tools.path("other.pem"), other.root_pem()).unwrap();

    let (code, stdout, stderr) = tools.aver(&["ek", "verify", "ek.der", "--roots", "root.pem"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("EK certificate: valid"), "{stdout}");
    assert!(stdout.contains("(rsa2048)"), "{stdout}");
    assert!(
        stdout.contains("TPM: id:"),
        "manufacturer not printed: {stdout}"
    );
    assert!(
        stdout.contains("issued by") && stdout.contains("aver interop EK root"),
        "{stdout}"
    );

    // A larger NV index pads the certificate, as real TPMs do.
    let mut padded = std::fs::read(tools.path("ek.der")).unwrap();
    padded.resize(padded.len() + 200, 0xff);
    std::fs::write(tools.path("ek-padded.der"), padded).unwrap();
    let (code, stdout, stderr) = tools.aver(&[
        "ek",
        "verify",
        "ek-padded.der",
        "--roots",
        "root.pem",
        "--kind",
        "rsa2048",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    let (code, stdout, stderr) = tools.aver(&["ek", "verify", "ek.der", "--roots", "other.pem"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("EK certificate check failed"), "{stderr}");

    std::fs::write(tools.path("garbage"), b"not a certificate").unwrap();
    let (code, _, stderr) = tools.aver(&["ek", "verify", "garbage", "--roots", "root.pem"]);
    assert_eq!(code, 2, "{stderr}");
}
