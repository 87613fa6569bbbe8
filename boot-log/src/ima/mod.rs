//! The kernel's IMA measurement list
//! (`/sys/kernel/security/ima/binary_runtime_measurements`): what the
//! kernel measured after boot (files executed, mapped or read under the IMA
//! policy, plus buffers such as the kexec command line), each measurement
//! extended into a PCR (10 unless the policy says otherwise).
//!
//! The list arrives from the node, so it is untrusted: [`ImaLog::parse`] is
//! bounded ([`MAX_IMA_LOG_BYTES`], [`MAX_IMA_ENTRIES`],
//! [`MAX_TEMPLATE_DATA_BYTES`], [`MAX_PATH_BYTES`]), never panics, and
//! checks the list's own integrity (every template digest is the SHA-1 of
//! its template data). A parsed list says nothing by itself: it means
//! something once [`ImaLog::replay_sha256`] equals the PCR value of a
//! verified quote, and its first entry ([`ImaLog::boot_aggregate`]) equals
//! [`boot_aggregate_sha256`] of that quote's PCRs 0–9, which binds the list
//! to the boot the firmware log describes. [`Allowlist`] then decides
//! whether what was measured is allowed.
//!
//! # Binary format
//!
//! Host byte order (little-endian on x86; `ima_canonical_fmt` makes it
//! little-endian everywhere; this parser reads little-endian only). Each
//! entry:
//!
//! | field            | size                 |
//! |------------------|----------------------|
//! | PCR index        | `u32`                |
//! | template digest  | 20 bytes (SHA-1 of the template data; zeros for a violation) |
//! | template name    | `u32` length + bytes (at most 255) |
//! | template data    | `u32` length + bytes |
//!
//! For the supported templates the data is a sequence of fields, each a
//! `u32` length and bytes:
//!
//! - `ima-ng`: `d-ng`, `n-ng`
//! - `ima-sig`: `d-ng`, `n-ng`, `sig` (empty, or an IMA signature such as
//!   the v2 header `03 02 …`; carried, not verified here)
//! - `ima-buf`: `d-ng`, `n-ng`, `buf` (a measured buffer, e.g.
//!   `kexec-cmdline` or a device-mapper table)
//!
//! `d-ng` is `"<alg>:\0"` followed by the digest (`sha256:\0` + 32 bytes),
//! or, in the legacy form, a bare 20-byte SHA-1 digest. `n-ng` is the path
//! (or buffer name) followed by one NUL.
//!
//! The original `ima` template (fixed-width fields without length
//! prefixes) and every other template are refused with
//! [`ImaLogError::UnsupportedTemplate`]: an entry that cannot be
//! interpreted is never skipped, because skipping it would hide a
//! measurement from the allow-list while its digest still counts in the
//! replay.
//!
//! # Paths are bytes
//!
//! Linux paths are byte strings. The parser keeps them as bytes
//! ([`ImaEntry::path_bytes`]) so a list with an odd file name still parses
//! and replays; [`ImaEntry::path`] returns the path only when it is UTF-8.
//! A lossy conversion would map distinct paths to the same string, which a
//! security check must not do: the allow-list is keyed by UTF-8 paths and
//! refuses a non-UTF-8 entry with [`RuntimeViolation::NonUtf8Path`].

mod allowlist;
pub mod encode;
mod parse;
mod replay;

pub use allowlist::{
    Allowlist, AllowlistError, CheckOptions, CheckedRuntime, RuntimeViolation, MAX_ALLOWLIST_FILES,
};
pub use parse::ImaLogError;
pub use replay::{boot_aggregate_sha1, boot_aggregate_sha256};

/// Bound on a whole binary list. A busy node's list holds some thousands of
/// entries of a few hundred bytes each; 16 MiB leaves room for
/// signature-carrying `ima-sig` lists while refusing a list that would make
/// the verifier buffer and hash without end.
pub const MAX_IMA_LOG_BYTES: usize = 16 * 1024 * 1024;

/// Bound on the number of entries, for the same reason as
/// [`MAX_IMA_LOG_BYTES`] (entries can be tiny, so both bounds are needed).
pub const MAX_IMA_ENTRIES: usize = 200_000;

/// Bound on one entry's template data, signatures and measured buffers
/// included (an RSA-4096 signature is 512 bytes; paths are at most
/// [`MAX_PATH_BYTES`]).
pub const MAX_TEMPLATE_DATA_BYTES: usize = 64 * 1024;

/// Bound on a template name: the kernel's `MAX_TEMPLATE_NAME_LEN`.
pub const MAX_TEMPLATE_NAME_BYTES: usize = 255;

/// Bound on a path (or buffer name), without its NUL: Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;

/// The PCR the kernel extends IMA measurements into unless a policy rule
/// names another (`pcr=`).
pub const IMA_PCR: u8 = 10;

/// The name of the first entry, whose digest is the kernel's hash over the
/// boot PCRs (see [`boot_aggregate_sha256`]).
pub const BOOT_AGGREGATE_NAME: &str = "boot_aggregate";

/// Template name `ima-ng`: file digest and path.
pub const TEMPLATE_IMA_NG: &str = "ima-ng";
/// Template name `ima-sig`: file digest, path and signature.
pub const TEMPLATE_IMA_SIG: &str = "ima-sig";
/// Template name `ima-buf`: buffer digest, buffer name and the buffer.
pub const TEMPLATE_IMA_BUF: &str = "ima-buf";

/// The templates this module interprets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Template {
    /// `ima-ng`: `d-ng|n-ng`.
    ImaNg,
    /// `ima-sig`: `d-ng|n-ng|sig`.
    ImaSig,
    /// `ima-buf`: `d-ng|n-ng|buf`.
    ImaBuf,
}

impl Template {
    /// The template's name as it appears in the list.
    pub fn name(self) -> &'static str {
        match self {
            Template::ImaNg => TEMPLATE_IMA_NG,
            Template::ImaSig => TEMPLATE_IMA_SIG,
            Template::ImaBuf => TEMPLATE_IMA_BUF,
        }
    }

    fn from_name(name: &[u8]) -> Option<Template> {
        match name {
            b"ima-ng" => Some(Template::ImaNg),
            b"ima-sig" => Some(Template::ImaSig),
            b"ima-buf" => Some(Template::ImaBuf),
            _ => None,
        }
    }

    /// Number of fields in the template data.
    fn field_count(self) -> usize {
        match self {
            Template::ImaNg => 2,
            Template::ImaSig | Template::ImaBuf => 3,
        }
    }
}

/// A parsed IMA measurement list, in the kernel's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaLog {
    entries: Vec<ImaEntry>,
}

/// One measurement: the raw entry (PCR, template digest, name, data, which
/// is what replay hashes) and its decoded fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaEntry {
    pcr: u32,
    template_digest: [u8; 20],
    template: Template,
    template_data: Vec<u8>,
    /// `None` for the legacy bare SHA-1 `d-ng` form, reported as `sha1`.
    digest_alg: Option<String>,
    digest: Vec<u8>,
    /// Without its NUL.
    path: Vec<u8>,
    /// The third field of `ima-sig` / `ima-buf`.
    extra: Vec<u8>,
}

impl ImaLog {
    /// The entries, in the order the kernel measured them.
    pub fn entries(&self) -> &[ImaEntry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list has no entries (a kernel with IMA on always has
    /// its `boot_aggregate`, so an empty list is suspicious, not invalid).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The PCRs the entries were extended into, ascending. Usually only
    /// [`IMA_PCR`]; a verifier must replay every one of them against a
    /// quote, or an entry in an unquoted PCR is unauthenticated.
    pub fn pcrs(&self) -> std::collections::BTreeSet<u32> {
        self.entries.iter().map(|e| e.pcr).collect()
    }

    /// The first entry's digest when that entry is the `boot_aggregate`
    /// (as `(algorithm, digest)`), the kernel's hash over the boot PCRs.
    /// Only the first entry counts: a later entry with that name is an
    /// ordinary measurement (the kernel falls back to a bare file name
    /// when it cannot build a path, so a file may be called that).
    pub fn boot_aggregate(&self) -> Option<(&str, &[u8])> {
        let first = self.entries.first()?;
        if first.is_boot_aggregate() {
            first.file_digest()
        } else {
            None
        }
    }
}

impl ImaEntry {
    /// The PCR this entry was extended into.
    pub fn pcr(&self) -> u32 {
        self.pcr
    }

    /// The template name (`ima-ng`, `ima-sig` or `ima-buf`).
    pub fn template_name(&self) -> &'static str {
        self.template.name()
    }

    /// The template.
    pub fn template(&self) -> Template {
        self.template
    }

    /// The template digest as listed: SHA-1 of the template data (checked
    /// by the parser), or zeros for a violation.
    pub fn template_digest(&self) -> &[u8; 20] {
        &self.template_digest
    }

    /// The template data as listed (the bytes replay hashes).
    pub fn template_data(&self) -> &[u8] {
        &self.template_data
    }

    /// Whether this is a violation entry (template digest all zeros): the
    /// kernel could not measure a file reliably (it was open for write
    /// while measured, or measured while open for write) and invalidated
    /// the PCR by extending it with all-ones instead of a digest.
    pub fn is_violation(&self) -> bool {
        self.template_digest == [0u8; 20]
    }

    /// The measured file's (or buffer's) digest as `(algorithm, digest)`,
    /// e.g. `("sha256", 32 bytes)`; the legacy bare form is reported as
    /// `sha1`. `None` for a violation, whose digest field holds zeros, not
    /// a digest.
    pub fn file_digest(&self) -> Option<(&str, &[u8])> {
        if self.is_violation() {
            return None;
        }
        Some((self.digest_alg.as_deref().unwrap_or("sha1"), &self.digest))
    }

    /// The path (for `ima-buf`, the buffer's name) as raw bytes, without
    /// the NUL.
    pub fn path_bytes(&self) -> &[u8] {
        &self.path
    }

    /// The path (for `ima-buf`, the buffer's name) when it is UTF-8;
    /// `None` otherwise (see the module documentation on why there is no
    /// lossy conversion).
    pub fn path(&self) -> Option<&str> {
        std::str::from_utf8(&self.path).ok()
    }

    /// The file's signature for an `ima-sig` entry that carries one
    /// (unverified bytes, typically an IMA v2 signature header `03 02`
    /// followed by the key id and signature); `None` otherwise.
    pub fn signature(&self) -> Option<&[u8]> {
        match self.template {
            Template::ImaSig if !self.extra.is_empty() => Some(&self.extra),
            _ => None,
        }
    }

    /// The measured buffer of an `ima-buf` entry (e.g. the kexec command
    /// line); `None` for other templates.
    pub fn buffer(&self) -> Option<&[u8]> {
        match self.template {
            Template::ImaBuf => Some(&self.extra),
            _ => None,
        }
    }

    /// Whether this entry is named `boot_aggregate` (a file-digest
    /// template, not a violation). Only meaningful for the first entry;
    /// see [`ImaLog::boot_aggregate`].
    pub fn is_boot_aggregate(&self) -> bool {
        !self.is_violation()
            && self.template != Template::ImaBuf
            && self.path == BOOT_AGGREGATE_NAME.as_bytes()
    }
}
