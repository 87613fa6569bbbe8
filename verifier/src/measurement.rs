//! How workload inputs are reduced to digests, shared by the enclave (which
//! measures) and the CLI (which computes reference values for a policy).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aver_crds::Sha256Digest;
use sha2::{Digest, Sha256};

/// Domain separator of the model digest, so that it cannot collide with the
/// digest of a single file or of another aver structure.
pub const MODEL_DOMAIN: &[u8] = b"aver-model-v1";

const CHUNK: usize = 1 << 20;

/// Why a workload input could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot walk model directory {path}: {message}")]
    Walk { path: PathBuf, message: String },
    #[error("model file name {0:?} is not UTF-8; rename it so the digest is portable")]
    NonUtf8Path(PathBuf),
    #[error("model directory {0} holds no files")]
    EmptyModel(PathBuf),
}

/// SHA-256 of one file's bytes, read in 1 MiB chunks.
pub fn file_digest(path: &Path) -> Result<Sha256Digest, MeasureError> {
    let mut h = Sha256::new();
    hash_file_into(path, &mut h)?;
    Ok(Sha256Digest(h.finalize().into()))
}

/// Digest of a model directory: every regular file below `dir` (symlinks
/// followed), sorted by relative path bytes with `/` separators, hashed as
/// `MODEL_DOMAIN || for each file: u64 len(path) || path || u64 len(file) ||
/// file bytes`. Files are streamed, so memory use does not grow with the
/// model, and renaming, moving or editing any file changes the digest.
pub fn model_digest(dir: &Path) -> Result<Sha256Digest, MeasureError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true) {
        let entry = entry.map_err(|e| MeasureError::Walk {
            path: dir.to_owned(),
            message: e.to_string(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| MeasureError::Walk {
                path: entry.path().to_owned(),
                message: e.to_string(),
            })?;
        let mut name = String::new();
        for (i, part) in relative.components().enumerate() {
            let part = part
                .as_os_str()
                .to_str()
                .ok_or_else(|| MeasureError::NonUtf8Path(relative.to_owned()))?;
            if i > 0 {
                name.push('/');
            }
            name.push_str(part);
        }
        files.push((name, entry.into_path()));
    }
    if files.is_empty() {
        return Err(MeasureError::EmptyModel(dir.to_owned()));
    }
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    let mut h = Sha256::new();
    h.update(MODEL_DOMAIN);
    for (name, path) in &files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        let len = path
            .metadata()
            .map_err(|source| MeasureError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        h.update(len.to_be_bytes());
        let hashed = hash_file_into(path, &mut h)?;
        if hashed != len {
            // The file changed while it was measured: the digest would
            // describe bytes that never existed together.
            return Err(MeasureError::Io {
                path: path.clone(),
                source: io::Error::other("file changed while it was being measured"),
            });
        }
    }
    Ok(Sha256Digest(h.finalize().into()))
}

fn hash_file_into(path: &Path, h: &mut Sha256) -> Result<u64, MeasureError> {
    let io_err = |source| MeasureError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn model(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
        dir
    }

    #[test]
    fn digest_is_independent_of_creation_order() {
        let a = model(&[
            ("b.bin", b"two"),
            ("a/config.json", b"{}"),
            ("a.bin", b"one"),
        ]);
        let b = model(&[
            ("a.bin", b"one"),
            ("b.bin", b"two"),
            ("a/config.json", b"{}"),
        ]);
        assert_eq!(
            model_digest(a.path()).unwrap(),
            model_digest(b.path()).unwrap()
        );
    }

    #[test]
    fn one_byte_rename_or_move_changes_the_digest() {
        let base =
            model_digest(model(&[("w.bin", b"weights"), ("t.json", b"tok")]).path()).unwrap();
        let edited =
            model_digest(model(&[("w.bin", b"weighty"), ("t.json", b"tok")]).path()).unwrap();
        let renamed =
            model_digest(model(&[("x.bin", b"weights"), ("t.json", b"tok")]).path()).unwrap();
        // Moving bytes across the file boundary must not collide either.
        let shifted =
            model_digest(model(&[("w.bin", b"weightst"), ("t.json", b"ok")]).path()).unwrap();
        assert_ne!(base, edited);
        assert_ne!(base, renamed);
        assert_ne!(base, shifted);
    }

    #[test]
    fn empty_or_missing_directory_is_an_error() {
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            model_digest(empty.path()),
            Err(MeasureError::EmptyModel(_))
        ));
        assert!(matches!(
            model_digest(&empty.path().join("absent")),
            Err(MeasureError::Walk { .. })
        ));
    }

    #[test]
    fn file_digest_matches_sha256() {
        let dir = model(&[("f", b"abc")]);
        let d = file_digest(&dir.path().join("f")).unwrap();
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
