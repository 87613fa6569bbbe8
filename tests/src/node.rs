//! A simulated TPM node for tests: its own swtpm, enclave state directory
//! and model, plus helpers to run `aver-enclave` on it the way a pod would.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use aver_crds::{AllowedWorkload, AttestationPolicy, ReferencePcr, Sha256Digest, TrustRoots};
use aver_verifier::binding::Nonce;
use aver_verifier::measurement::model_digest;
use aver_verifier::Evidence;

use crate::{cargo_bin, Swtpm};

/// Engine image digest every test node measures.
pub const ENGINE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// One node: TPM, enclave state and a tiny model.
pub struct TestNode {
    pub tpm: Swtpm,
    pub state: tempfile::TempDir,
    pub model: tempfile::TempDir,
}

impl TestNode {
    pub fn start() -> anyhow::Result<Self> {
        Self::with_tpm(Swtpm::start()?)
    }

    /// A node on a given TPM (e.g. one with an EK certificate).
    pub fn with_tpm(tpm: Swtpm) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let model = tempfile::tempdir()?;
        std::fs::write(model.path().join("weights.bin"), b"tiny model weights")?;
        std::fs::write(model.path().join("tokenizer.json"), b"{\"vocab\":[]}")?;
        Ok(Self { tpm, state, model })
    }

    /// `aver-enclave` with this node's TPM, state and model settings.
    pub fn enclave_command(&self, subcommand: &str) -> Command {
        self.enclave_command_through(subcommand, &self.tpm.tcti())
    }

    /// [`Self::enclave_command`] through another TCTI (e.g. a
    /// [`crate::SlowTpm`] in front of this node's swtpm).
    pub fn enclave_command_through(&self, subcommand: &str, tcti: &str) -> Command {
        let mut cmd = Command::new(cargo_bin("aver-enclave"));
        cmd.args(self.enclave_args(subcommand, tcti));
        cmd
    }

    /// The arguments of [`Self::enclave_command_through`], for callers that
    /// run the enclave under another program (e.g. `prlimit`).
    pub fn enclave_args(&self, subcommand: &str, tcti: &str) -> Vec<std::ffi::OsString> {
        vec![
            subcommand.into(),
            "--tcti".into(),
            tcti.into(),
            "--state-dir".into(),
            self.state.path().into(),
            "--engine-digest".into(),
            ENGINE.into(),
            "--model-dir".into(),
            self.model.path().into(),
        ]
    }

    /// Runs `aver-enclave evidence` (one launch + one quote) and returns the
    /// evidence and the SPKI digest it printed.
    pub fn evidence(&self, nonce: &Nonce) -> anyhow::Result<(Evidence, Sha256Digest)> {
        let out_dir = tempfile::tempdir()?;
        let out = out_dir.path().join("evidence.json");
        let output = self
            .enclave_command("evidence")
            .args(["--nonce", &nonce.to_hex()])
            .arg("--out")
            .arg(&out)
            .output()
            .context("aver-enclave runs")?;
        if !output.status.success() {
            bail!(
                "aver-enclave evidence failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let spki = Sha256Digest::parse(String::from_utf8_lossy(&output.stdout).trim())
            .context("aver-enclave prints the SPKI digest")?;
        let evidence = Evidence::from_json(&std::fs::read(&out)?)?;
        Ok((evidence, spki))
    }

    /// The AK name as `aver-enclave ak` prints it.
    pub fn ak_name(&self) -> anyhow::Result<String> {
        let output = Command::new(cargo_bin("aver-enclave"))
            .arg("ak")
            .args(["--tcti", &self.tpm.tcti()])
            .output()?;
        if !output.status.success() {
            bail!(
                "aver-enclave ak: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// A policy written from independent knowledge: the AK read from the
    /// TPM, the model digest computed here, swtpm's boot PCRs (never
    /// extended, so zero).
    pub fn policy(&self) -> anyhow::Result<AttestationPolicy> {
        Ok(policy_for(
            &[self.ak_name()?],
            model_digest(self.model.path())?,
        ))
    }

    /// Starts `aver-enclave serve` on a free loopback port in front of
    /// `upstream`, with extra flags.
    pub fn serve(&self, upstream: &str, extra: &[&str]) -> anyhow::Result<EnclaveProcess> {
        self.serve_on("127.0.0.1:0", upstream, extra)
    }

    /// Like [`Self::serve`], on a given listen address.
    pub fn serve_on(
        &self,
        listen: &str,
        upstream: &str,
        extra: &[&str],
    ) -> anyhow::Result<EnclaveProcess> {
        let mut child = self
            .enclave_command("serve")
            .args(["--listen", listen, "--upstream", upstream])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("aver-enclave serve starts")?;
        let (url, port) = listening_url(&mut child)?;
        Ok(EnclaveProcess { child, url, port })
    }
}

/// The URL and port from the first stdout line (`listening on
/// https://HOST:PORT`) of a started `aver-enclave serve` with piped stdout.
/// A child that does not say so is killed and reaped.
pub fn listening_url(child: &mut Child) -> anyhow::Result<(String, u16)> {
    let listening = read_listening_url(child);
    if listening.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    listening
}

fn read_listening_url(child: &mut Child) -> anyhow::Result<(String, u16)> {
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        bail!("aver-enclave serve did not start (first line {line:?})");
    };
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("listening line has a port")?;
    Ok((url.to_owned(), port))
}

/// The policy a test node satisfies, trusting `ak_names`.
pub fn policy_for(ak_names: &[String], model: Sha256Digest) -> AttestationPolicy {
    AttestationPolicy {
        reference_pcrs: (0..8)
            .map(|pcr| ReferencePcr {
                pcr,
                values: vec![Sha256Digest([0; 32])],
            })
            .collect(),
        workload_pcr: aver_crds::policy::DEFAULT_WORKLOAD_PCR,
        boot: None,
        runtime: None,
        allow_unverified_boot: false,
        allowed: AllowedWorkload {
            engine_digests: vec![Sha256Digest([0x11; 32])],
            model_digests: vec![model],
            config_digests: None,
            pod: None,
            node_policies: None,
        },
        trust: TrustRoots {
            ak_names: ak_names.to_vec(),
            ek_roots: None,
            ak_roots: None,
            ek_pins: vec![],
            allow_sha1: false,
        },
        interval: "30s".into(),
        max_evidence_age: "5m".into(),
    }
}

/// A running `aver-enclave serve`; killed when dropped.
pub struct EnclaveProcess {
    child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
}

impl EnclaveProcess {
    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EnclaveProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The leaf certificate (DER) `addr` serves over TLS, read without
/// verifying anything (what a kubelet's HTTPS probe sees); `None` if
/// nothing completes a handshake within two seconds.
pub async fn served_certificate(addr: &str) -> Option<Vec<u8>> {
    use aver_client::tls::danger::to_be_attested_client_config;
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .ok()?
    .ok()?;
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(to_be_attested_client_config()));
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        connector.connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        ),
    )
    .await
    .ok()?
    .ok()?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}
