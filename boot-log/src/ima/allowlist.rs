//! The runtime allow-list: which file digests may appear at which paths in
//! a node's IMA list (Keylime's "runtime policy" idea).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ImaLog, Template, MAX_PATH_BYTES};

/// Bound on the files of an allow-list (a full distribution root file
/// system has some hundred thousand).
pub const MAX_ALLOWLIST_FILES: usize = 500_000;

/// Allowed SHA-256 digests per absolute path.
///
/// Paths are UTF-8 and absolute, as the kernel records them: the path of
/// the file actually opened, symlinks resolved (on a merged-`/usr` system
/// `/bin/sh` is measured as `/usr/bin/dash`). Several digests per path let
/// one policy cover several builds of a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    files: BTreeMap<String, BTreeSet<[u8; 32]>>,
}

/// Why an allow-list could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllowlistError {
    /// Walking the root file system failed (unreadable directory, loop).
    #[error("walking {path}: {source}")]
    Walk {
        /// Where the walk failed.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A regular file could not be read; refused, not skipped, because a
    /// missing entry would later refuse a legitimate node (or an allow-list
    /// silently narrower than its root file system hides a mistake).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file name is not UTF-8 (allow-list paths are UTF-8).
    #[error("path {path:?} is not UTF-8")]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// A path given to [`Allowlist::from_entries`] is not absolute, is
    /// longer than [`MAX_PATH_BYTES`], or contains a NUL.
    #[error("allow-list path {path:?} is not an absolute path of at most {max} bytes without NUL", max = MAX_PATH_BYTES)]
    BadPath {
        /// The path.
        path: String,
    },
    /// More than [`MAX_ALLOWLIST_FILES`] paths.
    #[error("allow-list has more than {max} files")]
    TooManyFiles {
        /// The bound.
        max: usize,
    },
}

/// How [`Allowlist::check_with`] treats what it does not refuse by
/// default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Accept kernel violation entries (a file measured while open for
    /// write, or opened for write while measured). Off by default: such a
    /// file's content at use time is unknown.
    pub allow_violations: bool,
}

impl CheckOptions {
    /// These options with violation entries accepted (and counted in
    /// [`CheckedRuntime::violations`]).
    pub fn allowing_violations(mut self) -> CheckOptions {
        self.allow_violations = true;
        self
    }
}

/// What a successful check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckedRuntime {
    /// File measurements checked against the allow-list.
    pub measured_files: usize,
    /// Distinct paths among them.
    pub distinct_paths: usize,
    /// `ima-buf` entries, not checked by the allow-list (their content is
    /// available through [`super::ImaEntry::buffer`] for other checks).
    pub buffers: usize,
    /// Violation entries accepted because [`CheckOptions::allow_violations`]
    /// was set.
    pub violations: usize,
}

/// The first entry of a list the allow-list refuses. Each variant names
/// the entry index (from 0) and its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeViolation {
    /// The path is not in the allow-list.
    #[error("IMA entry {index}: {path} (sha256:{digest}) is not in the allow-list")]
    UnlistedPath {
        /// Entry index.
        index: usize,
        /// The path.
        path: String,
        /// The file's digest, hex.
        digest: String,
    },
    /// The path is listed, but not with this digest.
    #[error("IMA entry {index}: {path} has sha256:{digest}, not an allowed digest")]
    DigestNotAllowed {
        /// Entry index.
        index: usize,
        /// The path.
        path: String,
        /// The file's digest, hex.
        digest: String,
    },
    /// The file digest is not SHA-256 (the allow-list only holds SHA-256;
    /// boot the node with `ima_hash=sha256`).
    #[error("IMA entry {index}: {path} is measured with {alg}:{digest}, not sha256")]
    NotSha256 {
        /// Entry index.
        index: usize,
        /// The path.
        path: String,
        /// The algorithm.
        alg: String,
        /// The digest, hex.
        digest: String,
    },
    /// The path is not UTF-8, so it cannot be in the allow-list.
    #[error("IMA entry {index}: path {} is not UTF-8", path.escape_ascii())]
    NonUtf8Path {
        /// Entry index.
        index: usize,
        /// The raw path.
        path: Vec<u8>,
    },
    /// A kernel violation entry (ToMToU or open-writers), refused unless
    /// [`CheckOptions::allow_violations`].
    #[error("IMA entry {index}: violation for {path} (file measured while open for write)")]
    Violation {
        /// Entry index.
        index: usize,
        /// The path, non-UTF-8 bytes escaped (for the message only).
        path: String,
    },
}

impl Allowlist {
    /// Hashes every regular file under `dir` (SHA-256), keyed by its path
    /// relative to `dir` made absolute (`dir/bin/busybox` →
    /// `/bin/busybox`). Symlinks are not followed and not listed: the
    /// kernel never measures a symlink, it records the resolved path of
    /// the file opened, which the walk reaches on its own; devices, FIFOs
    /// and sockets are not listed either, the kernel measures regular files
    /// only. Every failure (an unreadable file or directory, a non-UTF-8
    /// name, more than [`MAX_ALLOWLIST_FILES`]) is an error: nothing is
    /// skipped silently.
    pub fn from_rootfs(dir: &Path) -> Result<Allowlist, AllowlistError> {
        let mut list = Allowlist::default();
        let meta = std::fs::metadata(dir).map_err(|source| AllowlistError::Walk {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(AllowlistError::Walk {
                path: dir.to_path_buf(),
                source: io::Error::other("not a directory"),
            });
        }
        let walk = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name();
        for entry in walk {
            let entry = entry.map_err(|e| AllowlistError::Walk {
                path: e
                    .path()
                    .map_or_else(|| dir.to_path_buf(), Path::to_path_buf),
                source: e.into(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let full = entry.path();
            let rel = full.strip_prefix(dir).map_err(|_| AllowlistError::Walk {
                path: full.to_path_buf(),
                source: io::Error::other("walked outside the root"),
            })?;
            let rel = rel.to_str().ok_or_else(|| AllowlistError::NonUtf8Path {
                path: full.to_path_buf(),
            })?;
            let digest = hash_file(full).map_err(|source| AllowlistError::Read {
                path: full.to_path_buf(),
                source,
            })?;
            list.insert(format!("/{rel}"), digest)?;
        }
        Ok(list)
    }

    /// An allow-list from `(path, digests)` pairs, e.g. a stored policy;
    /// repeated paths merge. Paths must be absolute, at most
    /// [`MAX_PATH_BYTES`], without NUL.
    pub fn from_entries<P, D>(
        entries: impl IntoIterator<Item = (P, D)>,
    ) -> Result<Allowlist, AllowlistError>
    where
        P: Into<String>,
        D: IntoIterator<Item = [u8; 32]>,
    {
        let mut list = Allowlist::default();
        for (path, digests) in entries {
            let path = path.into();
            for digest in digests {
                list.insert(path.clone(), digest)?;
            }
        }
        Ok(list)
    }

    /// Adds `digest` as allowed for `path` (see [`Allowlist::from_entries`]
    /// for the rules on paths).
    pub fn insert(&mut self, path: String, digest: [u8; 32]) -> Result<(), AllowlistError> {
        if !path.starts_with('/') || path.len() > MAX_PATH_BYTES || path.contains('\0') {
            return Err(AllowlistError::BadPath { path });
        }
        if !self.files.contains_key(&path) && self.files.len() >= MAX_ALLOWLIST_FILES {
            return Err(AllowlistError::TooManyFiles {
                max: MAX_ALLOWLIST_FILES,
            });
        }
        self.files.entry(path).or_default().insert(digest);
        Ok(())
    }

    /// The paths and their allowed digests, sorted by path (and digest),
    /// for serialising into a policy.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &BTreeSet<[u8; 32]>)> {
        self.files.iter().map(|(p, d)| (p.as_str(), d))
    }

    /// The digests allowed for `path`.
    pub fn digests(&self, path: &str) -> Option<&BTreeSet<[u8; 32]>> {
        self.files.get(path)
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no path is allowed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// [`Allowlist::check_with`] with the default options (violations
    /// refused).
    pub fn check(&self, log: &ImaLog) -> Result<CheckedRuntime, RuntimeViolation> {
        self.check_with(log, CheckOptions::default())
    }

    /// Checks that every file measurement of `log` is allowed: its digest
    /// is SHA-256 and listed for its path. The first entry, when it is the
    /// `boot_aggregate`, is not a file (compare it with
    /// [`super::boot_aggregate_sha256`]); `ima-buf` entries are buffers,
    /// counted but not checked here. Only the list's content is checked:
    /// that the list is the one the TPM holds is established by replaying
    /// it against a verified quote.
    pub fn check_with(
        &self,
        log: &ImaLog,
        options: CheckOptions,
    ) -> Result<CheckedRuntime, RuntimeViolation> {
        let mut measured_files = 0;
        let mut paths = BTreeSet::new();
        let mut buffers = 0;
        let mut violations = 0;
        for (index, e) in log.entries().iter().enumerate() {
            if index == 0 && e.is_boot_aggregate() {
                continue;
            }
            if e.is_violation() {
                if options.allow_violations {
                    violations += 1;
                    continue;
                }
                return Err(RuntimeViolation::Violation {
                    index,
                    path: e.path_bytes().escape_ascii().to_string(),
                });
            }
            if e.template() == Template::ImaBuf {
                buffers += 1;
                continue;
            }
            let path = e.path().ok_or_else(|| RuntimeViolation::NonUtf8Path {
                index,
                path: e.path_bytes().to_vec(),
            })?;
            let Some((alg, digest)) = e.file_digest() else {
                // Only violations have no digest, handled above.
                continue;
            };
            let digest32: Option<[u8; 32]> = digest.try_into().ok();
            let digest32 = match digest32 {
                Some(d) if alg == "sha256" => d,
                _ => {
                    return Err(RuntimeViolation::NotSha256 {
                        index,
                        path: path.to_owned(),
                        alg: alg.to_owned(),
                        digest: hex::encode(digest),
                    })
                }
            };
            match self.files.get(path) {
                None => {
                    return Err(RuntimeViolation::UnlistedPath {
                        index,
                        path: path.to_owned(),
                        digest: hex::encode(digest32),
                    })
                }
                Some(allowed) if !allowed.contains(&digest32) => {
                    return Err(RuntimeViolation::DigestNotAllowed {
                        index,
                        path: path.to_owned(),
                        digest: hex::encode(digest32),
                    })
                }
                Some(_) => {}
            }
            measured_files += 1;
            paths.insert(path);
        }
        Ok(CheckedRuntime {
            measured_files,
            distinct_paths: paths.len(),
            buffers,
            violations,
        })
    }
}

fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut file, &mut h)?;
    Ok(h.finalize().into())
}
