//! `aver ek`: checking a TPM's EK certificate, as read from its NV, against
//! manufacturer roots.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use aver_verifier::ek::chain::{ca_certificates_from_pem, validate_ek_certificate, TrustAnchors};
use aver_verifier::ek::{EkChainError, EkKind};
use x509_parser::prelude::FromDer as _;

use super::{read_input, CommandResult, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum EkCommand {
    /// Validate an EK certificate up to manufacturer roots and print its
    /// path and the TPM it names.
    #[command(long_about = VERIFY_ABOUT)]
    Verify(VerifyArgs),
}

const VERIFY_ABOUT: &str = "\
Validate an EK certificate (DER as read from the TPM's NV, e.g. `tpm2_nvread \
0x01c00002`, trailing padding included, or PEM) up to one of the --roots, \
using the --chain intermediates; print the path, subjects up to the root, and \
the TPM manufacturer, model and firmware version. Exit 0: the certificate is \
valid. Exit 1: it is not, the reason on stderr. Exit 2: an input could not be \
read or parsed.";

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The EK certificate: DER (possibly padded, as stored in NV) or PEM.
    pub cert: PathBuf,
    /// PEM bundle of trusted manufacturer root (or CA) certificates.
    #[arg(long, value_name = "PEM")]
    pub roots: PathBuf,
    /// PEM bundle of intermediate CA certificates (untrusted, used to build
    /// the path).
    #[arg(long, value_name = "PEM")]
    pub chain: Option<PathBuf>,
    /// The EK's kind, `rsa2048` or `eccP256`; inferred from the
    /// certificate's key when absent.
    #[arg(long)]
    pub kind: Option<String>,
}

pub fn run(cmd: EkCommand) -> CommandResult {
    match cmd {
        EkCommand::Verify(args) => verify(args),
    }
}

fn verify(args: VerifyArgs) -> CommandResult {
    let raw = read_input(&args.cert, "EK certificate")?;
    let der =
        certificate_der(&raw).with_context(|| format!("EK certificate {}", args.cert.display()))?;
    let kind = match &args.kind {
        Some(text) => parse_kind(text)?,
        None => infer_kind(&der).with_context(|| {
            format!(
                "EK certificate {} (give --kind to skip inference)",
                args.cert.display()
            )
        })?,
    };
    let roots_pem = String::from_utf8(read_input(&args.roots, "roots")?)
        .with_context(|| format!("roots {} are not PEM text", args.roots.display()))?;
    let anchors = TrustAnchors::from_pem(&roots_pem)
        .with_context(|| format!("roots {}", args.roots.display()))?;
    let intermediates = match &args.chain {
        Some(path) => {
            let pem = String::from_utf8(read_input(path, "chain")?)
                .with_context(|| format!("chain {} is not PEM text", path.display()))?;
            ca_certificates_from_pem(&pem, "--chain")
                .with_context(|| format!("chain {}", path.display()))?
        }
        None => Vec::new(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);

    match validate_ek_certificate(&der, kind, &intermediates, &anchors, now) {
        Ok(valid) => {
            let info = valid.info();
            println!("EK certificate: {} ({kind})", info.subject);
            println!("serial: {}", info.serial);
            println!("not after: {}", info.not_after);
            println!("sha256: {}", hex::encode(info.certificate_sha256.0));
            match &info.tpm {
                Some(tpm) => println!("TPM: {}", tpm.describe()),
                None => println!("TPM: not named by the certificate"),
            }
            println!("path:");
            println!("  {}", info.subject);
            for subject in &info.chain {
                println!("  issued by {subject}");
            }
            println!("EK certificate: valid");
            Ok(())
        }
        Err(error) => {
            describe_unvalidated(&der);
            Err(chain_failure(error))
        }
    }
}

/// Input problems (exit 2) are told apart from a certificate that is
/// readable but not valid (exit 1).
fn chain_failure(error: EkChainError) -> Failure {
    match error {
        EkChainError::NoRoots { .. }
        | EkChainError::BadRoots(_)
        | EkChainError::Malformed { .. } => Failure::Input(anyhow::Error::new(error)),
        other => Failure::Failed(format!("EK certificate check failed: {other}")),
    }
}

/// What can be said about a certificate that did not validate.
fn describe_unvalidated(der: &[u8]) {
    if let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) {
        println!("EK certificate: \"{}\"", cert.subject());
        println!("issuer: \"{}\"", cert.issuer());
        println!("serial: {}", cert.raw_serial_as_string());
    }
}

/// PEM is decoded; DER is passed through as read (an NV index is usually
/// larger than the certificate and padded with 0xff or 0x00).
fn certificate_der(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let text_start = raw
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(raw.len());
    if raw[text_start..].starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(raw).context("malformed PEM")?;
        if pem.label != "CERTIFICATE" {
            bail!("a PEM {:?}, not a CERTIFICATE", pem.label);
        }
        return Ok(pem.contents);
    }
    if raw.is_empty() {
        bail!("empty file");
    }
    Ok(raw.to_vec())
}

fn parse_kind(text: &str) -> anyhow::Result<EkKind> {
    match text {
        "rsa2048" | "rsa" => Ok(EkKind::Rsa2048),
        "eccP256" | "ecc" | "ecc256" | "p256" => Ok(EkKind::EccP256),
        other => bail!("--kind {other:?}: expected rsa2048 or eccP256"),
    }
}

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";

/// The EK kind from the certificate's key algorithm; the validator then
/// checks the key really is of that kind (size, curve).
fn infer_kind(der: &[u8]) -> anyhow::Result<EkKind> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("not a DER certificate: {e}"))?;
    let algorithm = cert.public_key().algorithm.algorithm.to_id_string();
    match algorithm.as_str() {
        OID_RSA_ENCRYPTION | OID_RSAES_OAEP => Ok(EkKind::Rsa2048),
        OID_EC_PUBLIC_KEY => Ok(EkKind::EccP256),
        other => bail!("the certificate's key algorithm {other} is neither RSA nor ECC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(parse_kind("rsa2048").unwrap(), EkKind::Rsa2048);
        assert_eq!(parse_kind("eccP256").unwrap(), EkKind::EccP256);
        assert!(parse_kind("dsa").is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(infer_kind(&[0xff; 64]).is_err());
        assert!(certificate_der(b"").is_err());
        assert!(certificate_der(b"-----BEGIN CERTIFICATE-----\nnope\n").is_err());
    }
}
