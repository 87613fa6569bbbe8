//! A TPM manufacturer CA for tests: a fresh root per test run, wired into
//! `swtpm_setup --create-ek-cert` through a swtpm-localca configuration, so
//! that swtpm gets an EK certificate that chains to a root the test hands
//! to the policy (`trust.ekRoots`).
//!
//! swtpm_setup creates the RSA 2048 EK certificate (NV 0x01c00002) and a
//! P-384 one in the high range; the P-256 EK certificate aver also uses
//! (NV 0x01c0000a) is issued with [`TestCa::issue_ek_certificate`] and
//! written by the test.
//!
//! The certificates and keys are the shared test PKI's
//! ([`aver_testkit::TestCa`], the one the verifier's tests use); what is
//! here is the swtpm side: swtpm-localca signs with that CA's key and
//! certificate, written to its configuration directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use aver_testkit::ca::{ek_params, TpmAttributes};
use aver_testkit::ForeignKey;
use rcgen::{BasicConstraints, DistinguishedName, DnType, SignatureAlgorithm};

/// A manufacturer CA: a root, and optionally an intermediate below it.
/// swtpm-localca signs EK certificates with the lowest of the two.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The CA that issues EK certificates: the root, or the intermediate.
    issuing: aver_testkit::TestCa,
    root_pem: String,
    /// The intermediate's certificate, when there is one.
    intermediate_pem: Option<String>,
}

/// A CA named "O=aver tests, CN=`common_name`" (ECDSA P-256), issued by
/// `parent` or self-signed.
fn ca(common_name: &str, parent: Option<&aver_testkit::TestCa>) -> aver_testkit::TestCa {
    aver_testkit::TestCa::build(
        common_name,
        parent,
        BasicConstraints::Unconstrained,
        |params| {
            let mut name = DistinguishedName::new();
            name.push(DnType::OrganizationName, "aver tests");
            name.push(DnType::CommonName, common_name);
            params.distinguished_name = name;
        },
    )
}

impl TestCa {
    /// Creates a root CA (ECDSA P-256) that issues EK certificates itself,
    /// and the swtpm-localca and swtpm_setup configuration files using it.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let root = ca(common_name, None);
        let root_pem = root.pem.clone();
        Self::configure(root, root_pem, None)
    }

    /// A root and an intermediate CA below it that issues the EK
    /// certificates, as TPM vendors do: the root alone goes into
    /// `trust.ekRoots`, the intermediate is served by the enclave
    /// (`--ek-chain`, [`Self::intermediate_pem`]).
    pub fn with_intermediate(common_name: &str) -> anyhow::Result<Self> {
        let root = ca(common_name, None);
        let intermediate = ca(&format!("{common_name} intermediate"), Some(&root));
        let intermediate_pem = intermediate.pem.clone();
        Self::configure(intermediate, root.pem, Some(intermediate_pem))
    }

    fn configure(
        issuing: aver_testkit::TestCa,
        root_pem: String,
        intermediate_pem: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("aver-ekca-").tempdir()?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("signkey.pem"), issuing.key_pem())?;
        std::fs::write(path("issuercert.pem"), &issuing.pem)?;
        std::fs::write(path("certserial"), "1\n")?;
        std::fs::write(
            path("swtpm-localca.conf"),
            format!(
                "statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n",
                d = dir.path().display()
            ),
        )?;
        std::fs::write(
            path("swtpm-localca.options"),
            "--platform-manufacturer aver\n--platform-version 1.0\n--platform-model test\n",
        )?;
        std::fs::write(
            path("swtpm_setup.conf"),
            format!(
                "create_certs_tool = {tool}\ncreate_certs_tool_config = {d}/swtpm-localca.conf\ncreate_certs_tool_options = {d}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                tool = localca_tool(),
                d = dir.path().display()
            ),
        )?;
        Ok(Self {
            dir,
            issuing,
            root_pem,
            intermediate_pem,
        })
    }

    /// The root CA certificate, PEM: what goes into `trust.ekRoots`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The intermediate CA certificate, PEM, if EK certificates are issued
    /// by one.
    pub fn intermediate_pem(&self) -> Option<&str> {
        self.intermediate_pem.as_deref()
    }

    /// The swtpm_setup configuration that issues EK certificates with this CA.
    pub fn setup_config(&self) -> PathBuf {
        self.dir.path().join("swtpm_setup.conf")
    }

    /// Issues an EK certificate for a public key (its SubjectPublicKeyInfo
    /// bit string, `algorithm` naming its type), valid from January 1st of
    /// `from` to January 1st of `until`, shaped like swtpm's own (empty
    /// subject, critical SAN with swtpm's TPM attributes, EK EKU).
    pub fn issue_ek_certificate(
        &self,
        public_key: &[u8],
        algorithm: &'static SignatureAlgorithm,
        validity: (i32, i32),
    ) -> anyhow::Result<Vec<u8>> {
        let key = ForeignKey {
            bits: public_key.to_vec(),
            algorithm,
        };
        Ok(self
            .issuing
            .issue(&ek_params(validity, &TpmAttributes::SWTPM), &key))
    }

    /// Runs `swtpm_setup --create-ek-cert` on `state`, issuing the EK
    /// certificates with this CA.
    pub fn manufacture(&self, state: &Path) -> anyhow::Result<()> {
        let output = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(state)
            .arg("--create-ek-cert")
            .arg("--overwrite")
            .arg("--config")
            .arg(self.setup_config())
            .arg("--logfile")
            .arg(state.join("swtpm_setup.log"))
            .stdin(Stdio::null())
            .output()
            .context("cannot run swtpm_setup (is swtpm-tools installed?)")?;
        if !output.status.success() {
            let log = std::fs::read_to_string(state.join("swtpm_setup.log")).unwrap_or_default();
            bail!(
                "swtpm_setup --create-ek-cert failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                log.trim()
            );
        }
        Ok(())
    }
}

/// swtpm-localca's name differs between swtpm releases.
fn localca_tool() -> &'static str {
    for candidate in ["/usr/bin/swtpm_localca", "/usr/share/swtpm/swtpm-localca"] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    "swtpm_localca"
}
