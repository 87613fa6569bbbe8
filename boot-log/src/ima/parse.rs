//! The bounded parser of the binary list.

use sha1::{Digest, Sha1};

use super::{
    ImaEntry, ImaLog, Template, MAX_IMA_ENTRIES, MAX_IMA_LOG_BYTES, MAX_PATH_BYTES,
    MAX_TEMPLATE_DATA_BYTES, MAX_TEMPLATE_NAME_BYTES,
};

/// Largest digest a `d-ng` field can carry (the kernel's
/// `IMA_MAX_DIGEST_SIZE`, SHA-512).
const MAX_DIGEST_BYTES: usize = 64;

/// Longest hash algorithm name accepted in a `d-ng` prefix (the kernel's
/// names are short: `sha256`, `sm3`, `streebog512`, `sha3-512`).
const MAX_ALG_NAME_BYTES: usize = 32;

/// Why a binary list was refused. Every variant after the two list-wide
/// bounds names the entry (`index`, from 0) and the byte `offset` in the
/// list where the problem is, so a refused list can be diagnosed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImaLogError {
    /// The list is larger than [`MAX_IMA_LOG_BYTES`].
    #[error("IMA list of {len} bytes exceeds the bound of {max} bytes")]
    LogTooLarge {
        /// Size of the list.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The list has more than [`MAX_IMA_ENTRIES`] entries.
    #[error("IMA list has more than {max} entries")]
    TooManyEntries {
        /// The bound.
        max: usize,
    },
    /// The list (or an entry's template data) ends inside `what`.
    #[error("IMA entry {index} at byte {offset}: truncated in {what}")]
    Truncated {
        /// Entry index.
        index: usize,
        /// Byte offset of the incomplete item.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A length field is larger than its bound.
    #[error(
        "IMA entry {index} at byte {offset}: {what} of {len} bytes exceeds the bound of {max}"
    )]
    Oversize {
        /// Entry index.
        index: usize,
        /// Byte offset of the length field.
        offset: usize,
        /// What the length is of.
        what: &'static str,
        /// The length read.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// The template is not one this parser interprets (the original `ima`
    /// template included); refused rather than skipped.
    #[error("IMA entry {index} at byte {offset}: unsupported template {name:?}")]
    UnsupportedTemplate {
        /// Entry index.
        index: usize,
        /// Byte offset of the template name.
        offset: usize,
        /// The name, with non-printable bytes escaped.
        name: String,
    },
    /// A template field is malformed.
    #[error("IMA entry {index} at byte {offset}: bad {field} field: {reason}")]
    BadField {
        /// Entry index.
        index: usize,
        /// Byte offset of the field's bytes (after its length), or of the
        /// trailing bytes.
        offset: usize,
        /// The field (`d-ng`, `n-ng`, `sig`, `buf`, or `template data`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The `n-ng` field does not end with a NUL, or has one inside.
    #[error("IMA entry {index} at byte {offset}: path is not a NUL-terminated string")]
    PathNotNulTerminated {
        /// Entry index.
        index: usize,
        /// Byte offset of the `n-ng` field's bytes.
        offset: usize,
    },
    /// The listed template digest is not the SHA-1 of the template data:
    /// the list is inconsistent with itself.
    #[error("IMA entry {index} at byte {offset}: template digest {listed} is not the SHA-1 of the template data ({computed})")]
    TemplateDigestMismatch {
        /// Entry index.
        index: usize,
        /// Byte offset of the entry.
        offset: usize,
        /// The digest in the list, hex.
        listed: String,
        /// SHA-1 of the template data, hex.
        computed: String,
    },
}

/// A cursor over `buf` whose reads fail instead of panicking. `base` is
/// the offset of `buf` in the whole list, for error offsets.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    index: usize,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ImaLogError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(ImaLogError::Truncated {
                index: self.index,
                offset: self.offset(),
                what,
            }),
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ImaLogError> {
        let bytes = self.take(4, what)?;
        let mut le = [0u8; 4];
        le.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(le))
    }

    /// A `u32` length followed by that many bytes, the length at most `max`.
    fn sized(&mut self, what: &'static str, max: usize) -> Result<(usize, &'a [u8]), ImaLogError> {
        let at = self.offset();
        let len = self.u32(what)?;
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(ImaLogError::Oversize {
                index: self.index,
                offset: at,
                what,
                len: u64::from(len),
                max,
            })?;
        let data_at = self.offset();
        Ok((data_at, self.take(n, what)?))
    }
}

/// Kernel hash algorithm names and digest sizes, to check a `d-ng`
/// digest's length when its algorithm is known.
fn known_digest_size(alg: &str) -> Option<usize> {
    Some(match alg {
        "md4" | "md5" | "tgr128" => 16,
        "sha1" | "rmd160" | "tgr160" => 20,
        "tgr192" => 24,
        "sha224" | "sha3-224" => 28,
        "sha256" | "sha3-256" | "sm3" | "streebog256" | "wp256" => 32,
        "sha384" | "sha3-384" | "wp384" => 48,
        "sha512" | "sha3-512" | "streebog512" | "wp512" => 64,
        _ => return None,
    })
}

/// Splits a `d-ng` field into `(algorithm, digest)`; `None` algorithm for
/// the legacy bare SHA-1 form.
fn parse_d_ng(
    field: &[u8],
    index: usize,
    offset: usize,
) -> Result<(Option<String>, Vec<u8>), ImaLogError> {
    let bad = |reason: String| ImaLogError::BadField {
        index,
        offset,
        field: "d-ng",
        reason,
    };
    let prefixed = field
        .iter()
        .position(|&b| b == b':')
        .filter(|&colon| (1..=MAX_ALG_NAME_BYTES).contains(&colon))
        .and_then(|colon| {
            let name = field.get(..colon)?;
            let valid = name
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
            if !valid || field.get(colon + 1) != Some(&0) {
                return None;
            }
            Some((std::str::from_utf8(name).ok()?, field.get(colon + 2..)?))
        });
    let checked = prefixed.map(|(alg, digest)| {
        let expected = known_digest_size(alg);
        let ok = match expected {
            Some(size) => digest.len() == size,
            None => (1..=MAX_DIGEST_BYTES).contains(&digest.len()),
        };
        if ok {
            Ok((Some(alg.to_owned()), digest.to_vec()))
        } else {
            Err(format!(
                "{alg} digest of {} bytes (expected {})",
                digest.len(),
                expected.map_or_else(|| format!("1..={MAX_DIGEST_BYTES}"), |s| s.to_string())
            ))
        }
    });
    match checked {
        Some(Ok(parsed)) => Ok(parsed),
        // A bare SHA-1 digest whose bytes happen to look like a prefix
        // with a wrong length is still a bare SHA-1 digest.
        _ if field.len() == 20 => Ok((None, field.to_vec())),
        Some(Err(reason)) => Err(bad(reason)),
        None => Err(bad(format!(
            "{} bytes, neither \"<alg>:\\0\" + digest nor a 20-byte SHA-1 digest",
            field.len()
        ))),
    }
}

impl ImaLog {
    /// Parses a binary measurement list (little-endian), checking every
    /// bound, every field and every template digest; see the module
    /// documentation for the format. An empty input is an empty list.
    pub fn parse(bytes: &[u8]) -> Result<ImaLog, ImaLogError> {
        if bytes.len() > MAX_IMA_LOG_BYTES {
            return Err(ImaLogError::LogTooLarge {
                len: bytes.len(),
                max: MAX_IMA_LOG_BYTES,
            });
        }
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            base: 0,
            index: 0,
        };
        let mut entries = Vec::new();
        while r.remaining() > 0 {
            if entries.len() >= MAX_IMA_ENTRIES {
                return Err(ImaLogError::TooManyEntries {
                    max: MAX_IMA_ENTRIES,
                });
            }
            r.index = entries.len();
            entries.push(parse_entry(&mut r)?);
        }
        Ok(ImaLog { entries })
    }
}

fn parse_entry(r: &mut Reader<'_>) -> Result<ImaEntry, ImaLogError> {
    let index = r.index;
    let start = r.offset();
    let pcr = r.u32("PCR index")?;
    let mut template_digest = [0u8; 20];
    template_digest.copy_from_slice(r.take(20, "template digest")?);
    let (name_at, name) = r.sized("template name", MAX_TEMPLATE_NAME_BYTES)?;
    let (data_at, data) = r.sized("template data", MAX_TEMPLATE_DATA_BYTES)?;

    let template = Template::from_name(name).ok_or_else(|| ImaLogError::UnsupportedTemplate {
        index,
        offset: name_at,
        name: name.escape_ascii().to_string(),
    })?;

    let violation = template_digest == [0u8; 20];
    if !violation {
        let computed: [u8; 20] = Sha1::digest(data).into();
        if computed != template_digest {
            return Err(ImaLogError::TemplateDigestMismatch {
                index,
                offset: start,
                listed: hex::encode(template_digest),
                computed: hex::encode(computed),
            });
        }
    }

    let mut fields = Reader {
        buf: data,
        pos: 0,
        base: data_at,
        index,
    };
    let (d_at, d_ng) = fields.sized("d-ng field", MAX_TEMPLATE_DATA_BYTES)?;
    let (digest_alg, digest) = parse_d_ng(d_ng, index, d_at)?;

    let (n_at, n_ng) = fields.sized("n-ng field", MAX_TEMPLATE_DATA_BYTES)?;
    let path = match n_ng.split_last() {
        Some((0, path)) if !path.contains(&0) => path,
        _ => {
            return Err(ImaLogError::PathNotNulTerminated {
                index,
                offset: n_at,
            })
        }
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(ImaLogError::Oversize {
            index,
            offset: n_at,
            what: "path",
            len: path.len() as u64,
            max: MAX_PATH_BYTES,
        });
    }

    let extra = if template.field_count() == 3 {
        let what = match template {
            Template::ImaSig => "sig field",
            _ => "buf field",
        };
        fields.sized(what, MAX_TEMPLATE_DATA_BYTES)?.1.to_vec()
    } else {
        Vec::new()
    };
    if fields.remaining() > 0 {
        return Err(ImaLogError::BadField {
            index,
            offset: fields.offset(),
            field: "template data",
            reason: format!(
                "{} bytes after the {} fields of {}",
                fields.remaining(),
                template.field_count(),
                template.name()
            ),
        });
    }

    Ok(ImaEntry {
        pcr,
        template_digest,
        template,
        template_data: data.to_vec(),
        digest_alg,
        digest,
        path: path.to_vec(),
        extra,
    })
}
