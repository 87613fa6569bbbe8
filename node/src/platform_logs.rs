//! The node's own measurement logs, served with every quote so that a
//! verifier can check the boot chain and what ran since boot by meaning:
//! the firmware event log (PCRs 0–9) and the kernel's IMA list (PCR 10).
//!
//! The logs are read from securityfs as they are; `aver-node` does not
//! parse or trust them (the verifier replays them against the quote). The
//! IMA list grows while the node runs, so it is read right after the quote:
//! a prefix of it then explains the quoted PCR 10, and the verifier finds
//! that prefix.

use std::io::Read;
use std::path::{Path, PathBuf};

use aver_verifier::evidence::Base64Bytes;

/// Where Linux exposes the firmware's event log.
pub const DEFAULT_BOOT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// Where Linux exposes IMA's measurement list.
pub const DEFAULT_IMA_LOG: &str = "/sys/kernel/security/ima/binary_runtime_measurements";

/// Largest firmware event log served (the verifier's parser bound).
pub const MAX_BOOT_LOG_BYTES: u64 = 1 << 20;

/// Largest IMA list served. Evidence is bounded at 4 MiB and the list
/// travels base64-encoded; a node whose list outgrew this serves quotes
/// without it (logged), and runtime policies then fail on that node.
pub const MAX_IMA_LOG_BYTES: u64 = 2 << 20;

/// Which logs a quote carries, and where they are read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformLogs {
    boot: Option<PathBuf>,
    ima: Option<PathBuf>,
    /// The AK's certificate (DER) and its intermediates, read once at
    /// start and attached to every quote.
    ak_certificate: Option<Base64Bytes>,
    ak_chain: Vec<Base64Bytes>,
}

/// A log that should be served but cannot be.
#[derive(Debug, thiserror::Error)]
pub enum PlatformLogError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} is larger than {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
}

impl PlatformLogs {
    /// No logs: for a TPM that did not measure this node's boot.
    pub fn none() -> Self {
        Self::default()
    }

    /// The logs to serve for the TPM `tcti`.
    ///
    /// Paths given explicitly must be readable. Without them, the kernel's
    /// logs are used only for a `device:` TPM — the kernel's logs belong to
    /// the TPM it booted with, never to a software TPM — and only where the
    /// kernel has them (a missing default is logged, not fatal: a node
    /// without IMA still attests its boot).
    pub fn resolve(
        tcti: &str,
        boot: Option<PathBuf>,
        ima: Option<PathBuf>,
    ) -> Result<Self, PlatformLogError> {
        let device = tcti.starts_with("device:");
        let pick = |given: Option<PathBuf>, default: &str, what: &'static str| match given {
            Some(path) => {
                std::fs::metadata(&path).map_err(|source| PlatformLogError::Read {
                    what,
                    path: path.clone(),
                    source,
                })?;
                Ok(Some(path))
            }
            None if device && Path::new(default).exists() => Ok(Some(PathBuf::from(default))),
            None if device => {
                tracing::warn!(path = default, "no {what}: quotes are served without it");
                Ok(None)
            }
            None => Ok(None),
        };
        Ok(Self {
            boot: pick(boot, DEFAULT_BOOT_LOG, "firmware event log")?,
            ima: pick(ima, DEFAULT_IMA_LOG, "IMA measurement list")?,
            ak_certificate: None,
            ak_chain: Vec::new(),
        })
    }

    /// These logs, with the AK certificate (DER, NV padding already
    /// stripped) and its intermediates (DER) attached to every quote.
    pub fn with_ak_certificate(mut self, certificate: Vec<u8>, chain: Vec<Vec<u8>>) -> Self {
        self.ak_certificate = Some(Base64Bytes(certificate));
        self.ak_chain = chain.into_iter().map(Base64Bytes).collect();
        self
    }

    /// The AK certificate served with quotes, if any.
    pub fn ak_certificate(&self) -> Option<Base64Bytes> {
        self.ak_certificate.clone()
    }

    /// The AK certificate's intermediates served with quotes.
    pub fn ak_chain(&self) -> Vec<Base64Bytes> {
        self.ak_chain.clone()
    }

    /// The firmware event log, if served.
    pub fn read_boot(&self) -> Result<Option<Base64Bytes>, PlatformLogError> {
        read(
            self.boot.as_deref(),
            "firmware event log",
            MAX_BOOT_LOG_BYTES,
        )
    }

    /// The IMA list, if served; call it after the quote. A list over the
    /// limit is left out with a warning rather than failing the quote.
    pub fn read_ima(&self) -> Result<Option<Base64Bytes>, PlatformLogError> {
        match read(
            self.ima.as_deref(),
            "IMA measurement list",
            MAX_IMA_LOG_BYTES,
        ) {
            Err(error @ PlatformLogError::TooLarge { .. }) => {
                tracing::warn!(%error, "quote served without the IMA list");
                Ok(None)
            }
            other => other,
        }
    }

    /// Where the logs are read from, for the startup log line.
    pub fn paths(&self) -> (Option<&Path>, Option<&Path>) {
        (self.boot.as_deref(), self.ima.as_deref())
    }
}

/// Reads `path` whole, refusing more than `limit` bytes. securityfs files
/// report size 0, so the bound is enforced while reading.
fn read(
    path: Option<&Path>,
    what: &'static str,
    limit: u64,
) -> Result<Option<Base64Bytes>, PlatformLogError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let error = |source| PlatformLogError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    if bytes.len() as u64 > limit {
        return Err(PlatformLogError::TooLarge {
            what,
            path: path.to_owned(),
            limit,
        });
    }
    Ok(Some(Base64Bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_software_tpm_gets_no_kernel_logs_unless_asked() {
        let logs = PlatformLogs::resolve("swtpm:port=2321", None, None).unwrap();
        assert_eq!(logs, PlatformLogs::none());
        assert_eq!(logs.read_boot().unwrap(), None);
        assert_eq!(logs.read_ima().unwrap(), None);
    }

    #[test]
    fn explicit_logs_are_read_whole_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("bios");
        std::fs::write(&boot, b"firmware log").unwrap();
        let logs = PlatformLogs::resolve("swtpm:port=2321", Some(boot), None).unwrap();
        assert_eq!(
            logs.read_boot().unwrap(),
            Some(Base64Bytes(b"firmware log".to_vec()))
        );
        let missing = dir.path().join("nope");
        let err = PlatformLogs::resolve("device:/dev/tpmrm0", None, Some(missing)).unwrap_err();
        assert!(err.to_string().contains("IMA measurement list"), "{err}");
    }

    #[test]
    fn an_oversized_ima_list_is_left_out_and_an_oversized_boot_log_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; (MAX_IMA_LOG_BYTES + 1) as usize]).unwrap();
        let logs =
            PlatformLogs::resolve("swtpm:port=1", Some(big.clone()), Some(big.clone())).unwrap();
        assert_eq!(logs.read_ima().unwrap(), None);
        assert!(matches!(
            logs.read_boot(),
            Err(PlatformLogError::TooLarge { .. })
        ));
    }
}
