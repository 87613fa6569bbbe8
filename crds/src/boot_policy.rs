//! What the node's boot chain and kernel must have measured, by meaning
//! rather than by PCR value: the firmware event log and the IMA list that
//! the evidence carries are replayed against the quoted PCRs, and then the
//! events are checked against these rules.
//!
//! Raw PCR values (`referencePcrs`) change with every firmware or kernel
//! update and cannot say what they mean; these rules name what a hardened
//! node image is (Secure Boot and its keys, the boot applications, the
//! kernel command line that carries the root file system's dm-verity hash,
//! the initrd) and what may run on it since boot.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::PolicyError;
use crate::Sha256Digest;

/// PCRs the firmware event log explains: 0–7 (firmware, Secure Boot
/// configuration, boot applications), 8 (boot loader commands) and 9 (the
/// kernel's EFI stub: initrd and command line).
pub const BOOT_LOG_PCRS: std::ops::RangeInclusive<u8> = 0..=9;

/// The PCR the kernel's IMA extends its runtime measurements into.
pub const IMA_PCR: u8 = 10;

/// PCRs every aver quote covers besides the workload PCR: the boot chain
/// the event log explains and IMA's PCR, so that a boot or runtime policy
/// can be checked against any evidence without asking for a new quote.
pub const PLATFORM_PCRS: [u8; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, IMA_PCR];

/// Largest number of files a runtime allow-list holds: a node image's
/// root file system (Debian with kubelet and containerd is ~40 000 files).
pub const MAX_RUNTIME_FILES: usize = 200_000;

/// Secure Boot as the firmware reported it in the `SecureBoot` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SecureBoot {
    /// The firmware verified every boot application against `db`/`dbx`.
    Enabled,
    /// The firmware ran boot applications unverified (then only the
    /// measured digests protect the boot).
    Disabled,
}

/// The boot chain a node must have run, checked against the firmware event
/// log after it replayed to the quoted PCRs 0–9. Every field is optional:
/// an absent field is not checked, a listed one must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootPolicy {
    /// Required Secure Boot state (`enabled` for a hardened node image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBoot>,
    /// Allowed entries of the platform key `PK` (SHA-256 of each X.509
    /// certificate's DER, or the hash itself for hash entries): every entry
    /// the firmware measured must be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub pk: Option<Vec<Sha256Digest>>,
    /// Allowed entries of the key exchange keys `KEK`, as for `pk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub kek: Option<Vec<Sha256Digest>>,
    /// Allowed entries of the signature database `db`, as for `pk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub db: Option<Vec<Sha256Digest>>,
    /// Forbidden signatures that the revocation database `dbx` must hold
    /// (e.g. revoked shims and boot loaders): each must be among its
    /// entries, so a node with an outdated `dbx` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub dbx: Option<Vec<Sha256Digest>>,
    /// Allowed boot applications (shim, boot loader, UKI or kernel), as the
    /// SHA-256 Authenticode digests the firmware measured into PCR 4: every
    /// measured boot application must be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub boot_applications: Option<Vec<Sha256Digest>>,
    /// Allowed kernel command lines, exactly (it carries the dm-verity root
    /// hash of the node image): the measured command line must be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    pub kernel_cmdlines: Option<Vec<String>>,
    /// Allowed initrds (SHA-256 of the file as the kernel loaded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub initrd_digests: Option<Vec<Sha256Digest>>,
}

/// What may have run on the node since boot, checked against the kernel's
/// IMA list after it replayed to the quoted PCR 10 (Keylime's runtime
/// policy): every file IMA measured must be listed with its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePolicy {
    /// The allowed files by absolute path, each with its allowed SHA-256
    /// digests (`aver policy runtime --from-rootfs DIR` writes them).
    #[schemars(length(min = 1, max = 200000))]
    pub files: Vec<AllowedFile>,
}

/// One file of a runtime allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedFile {
    /// Absolute path as IMA records it.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// Allowed SHA-256 digests of its content.
    #[schemars(length(min = 1, max = 64))]
    pub digests: Vec<Sha256Digest>,
}

impl BootPolicy {
    /// No allow-list may be empty where "nothing allowed" would make every
    /// node fail for a reason the author did not mean; `pk`, `kek`, `db` and
    /// `dbx` may be empty (an empty `PK` is what a firmware without Secure
    /// Boot keys measures).
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        if self.boot_applications.as_ref().is_some_and(Vec::is_empty) {
            return Err(PolicyError::NothingAllowed("boot.bootApplications"));
        }
        if self.kernel_cmdlines.as_ref().is_some_and(Vec::is_empty) {
            return Err(PolicyError::NothingAllowed("boot.kernelCmdlines"));
        }
        if self.initrd_digests.as_ref().is_some_and(Vec::is_empty) {
            return Err(PolicyError::NothingAllowed("boot.initrdDigests"));
        }
        Ok(())
    }
}

impl RuntimePolicy {
    /// Paths are absolute, unique and each has a digest.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        if self.files.is_empty() {
            return Err(PolicyError::NothingAllowed("runtime.files"));
        }
        if self.files.len() > MAX_RUNTIME_FILES {
            return Err(PolicyError::BadRuntimeFile(format!(
                "{} files, more than the {MAX_RUNTIME_FILES} a runtime policy may list",
                self.files.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for file in &self.files {
            if !file.path.starts_with('/') {
                return Err(PolicyError::BadRuntimeFile(format!(
                    "{:?} is not an absolute path",
                    file.path
                )));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(PolicyError::BadRuntimeFile(format!(
                    "{:?} is listed more than once",
                    file.path
                )));
            }
            if file.digests.is_empty() {
                return Err(PolicyError::BadRuntimeFile(format!(
                    "{:?} allows no digest",
                    file.path
                )));
            }
        }
        Ok(())
    }
}
