//! A TPM manufacturer CA for tests: a fresh root per test run, wired into
//! `swtpm_setup --create-ek-cert` through a swtpm-localca configuration, so
//! that swtpm gets an EK certificate that chains to a root the test hands
//! to the policy (`trust.ekRoots`).
//!
//! swtpm_setup creates the RSA 2048 EK certificate (NV 0x01c00002) and a
//! P-384 one in the high range; the P-256 EK certificate aver also uses
//! (NV 0x01c0000a) is issued with [`TestCa::issue_ek_certificate`] and
//! written by the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm,
};

/// A manufacturer CA: a root, and optionally an intermediate below it.
/// swtpm-localca signs EK certificates with the lowest of the two.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The issuing CA's parameters and key.
    params: CertificateParams,
    key: KeyPair,
    root_pem: String,
    /// The intermediate's certificate, when there is one.
    intermediate_pem: Option<String>,
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "aver tests");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl TestCa {
    /// Creates a root CA (ECDSA P-256) that issues EK certificates itself,
    /// and the swtpm-localca and swtpm_setup configuration files using it.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(common_name);
        let root_pem = params.self_signed(&key)?.pem();
        Self::configure(params, key, root_pem, None)
    }

    /// A root and an intermediate CA below it that issues the EK
    /// certificates, as TPM vendors do: the root alone goes into
    /// `trust.ekRoots`, the intermediate is served by the enclave
    /// (`--ek-chain`, [`Self::intermediate_pem`]).
    pub fn with_intermediate(common_name: &str) -> anyhow::Result<Self> {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(common_name);
        let root_pem = root_params.self_signed(&root_key)?.pem();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(&format!("{common_name} intermediate"));
        let issuer = Issuer::from_params(&root_params, &root_key);
        let intermediate_pem = params.signed_by(&key, &issuer)?.pem();
        Self::configure(params, key, root_pem, Some(intermediate_pem))
    }

    fn configure(
        params: CertificateParams,
        key: KeyPair,
        root_pem: String,
        intermediate_pem: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("aver-ekca-").tempdir()?;
        let issuer_pem = intermediate_pem.as_deref().unwrap_or(&root_pem);
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("signkey.pem"), key.serialize_pem())?;
        std::fs::write(path("issuercert.pem"), issuer_pem)?;
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
            params,
            key,
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
    /// subject, critical SAN with the TPM attributes, EK EKU).
    pub fn issue_ek_certificate(
        &self,
        public_key: &[u8],
        algorithm: &'static SignatureAlgorithm,
        (from, until): (i32, i32),
    ) -> anyhow::Result<Vec<u8>> {
        struct Key<'a>(&'a [u8], &'static SignatureAlgorithm);
        impl PublicKeyData for Key<'_> {
            fn der_bytes(&self) -> &[u8] {
                self.0
            }
            fn algorithm(&self) -> &'static SignatureAlgorithm {
                self.1
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
        let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], tpm_san());
        san.set_criticality(true);
        params.custom_extensions = vec![san];
        let issuer = Issuer::from_params(&self.params, &self.key);
        Ok(params
            .signed_by(&Key(public_key, algorithm), &issuer)?
            .der()
            .to_vec())
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

/// A subjectAltName with one directoryName carrying the TPM manufacturer,
/// model and version attributes (2.23.133.2.1/2/3), as vendors write it.
fn tpm_san() -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, content.len() as u8];
        out.extend_from_slice(content);
        out
    }
    let attribute = |arc: u8, value: &str| {
        tlv(
            0x30,
            &[
                tlv(0x06, &[0x67, 0x81, 0x05, 0x02, arc]),
                tlv(0x0c, value.as_bytes()),
            ]
            .concat(),
        )
    };
    let set = tlv(
        0x31,
        &[
            attribute(1, "id:00001014"),
            attribute(2, "swtpm"),
            attribute(3, "id:20191023"),
        ]
        .concat(),
    );
    tlv(0x30, &tlv(0xa4, &tlv(0x30, &set)))
}
