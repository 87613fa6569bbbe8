//! Writing binary measurement lists, for tests and simulated nodes that
//! need a list the parser accepts (or, through [`ImaLogWriter::raw`], one
//! it must refuse). Nothing on a verification path uses it.

use sha1::{Digest, Sha1};

/// Builds a little-endian binary list entry by entry, computing template
/// digests as the kernel does.
#[derive(Debug, Clone, Default)]
pub struct ImaLogWriter {
    bytes: Vec<u8>,
}

/// The `d-ng` field: `"<alg>:\0"` + digest, or the bare digest when `alg`
/// is empty (the legacy SHA-1 form).
pub fn d_ng(alg: &str, digest: &[u8]) -> Vec<u8> {
    let mut field = Vec::with_capacity(alg.len() + 2 + digest.len());
    if !alg.is_empty() {
        field.extend_from_slice(alg.as_bytes());
        field.extend_from_slice(b":\0");
    }
    field.extend_from_slice(digest);
    field
}

/// The `n-ng` field: the path and a NUL.
pub fn n_ng(path: &[u8]) -> Vec<u8> {
    let mut field = path.to_vec();
    field.push(0);
    field
}

/// Template data from fields: each as a `u32` length and its bytes.
pub fn template_data(fields: &[&[u8]]) -> Vec<u8> {
    let mut data = Vec::new();
    for field in fields {
        put_sized(&mut data, field);
    }
    data
}

fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

impl ImaLogWriter {
    /// An empty list.
    pub fn new() -> ImaLogWriter {
        ImaLogWriter::default()
    }

    /// Appends an entry with the given template digest, name and data,
    /// unchecked (to build malformed lists).
    pub fn raw(
        &mut self,
        pcr: u32,
        template_digest: [u8; 20],
        name: &[u8],
        data: &[u8],
    ) -> &mut Self {
        self.bytes.extend_from_slice(&pcr.to_le_bytes());
        self.bytes.extend_from_slice(&template_digest);
        put_sized(&mut self.bytes, name);
        put_sized(&mut self.bytes, data);
        self
    }

    /// Appends a measurement: the template digest is SHA-1 of `data`.
    pub fn measurement(&mut self, pcr: u32, name: &str, data: &[u8]) -> &mut Self {
        let digest: [u8; 20] = Sha1::digest(data).into();
        self.raw(pcr, digest, name.as_bytes(), data)
    }

    /// Appends an `ima-ng` entry for `path` with file digest `alg:digest`.
    pub fn ima_ng(&mut self, pcr: u32, alg: &str, digest: &[u8], path: &[u8]) -> &mut Self {
        let data = template_data(&[&d_ng(alg, digest), &n_ng(path)]);
        self.measurement(pcr, "ima-ng", &data)
    }

    /// Appends an `ima-sig` entry (`sig` may be empty).
    pub fn ima_sig(
        &mut self,
        pcr: u32,
        alg: &str,
        digest: &[u8],
        path: &[u8],
        sig: &[u8],
    ) -> &mut Self {
        let data = template_data(&[&d_ng(alg, digest), &n_ng(path), sig]);
        self.measurement(pcr, "ima-sig", &data)
    }

    /// Appends an `ima-buf` entry for buffer `buf` named `name`, with its
    /// digest `alg:digest`.
    pub fn ima_buf(
        &mut self,
        pcr: u32,
        alg: &str,
        digest: &[u8],
        name: &[u8],
        buf: &[u8],
    ) -> &mut Self {
        let data = template_data(&[&d_ng(alg, digest), &n_ng(name), buf]);
        self.measurement(pcr, "ima-buf", &data)
    }

    /// Appends a violation as the kernel writes one for `ima-ng`: zero
    /// template digest, and a `d-ng` of `alg` with a zero digest of
    /// `digest_len` bytes.
    pub fn violation(&mut self, pcr: u32, alg: &str, digest_len: usize, path: &[u8]) -> &mut Self {
        let data = template_data(&[&d_ng(alg, &vec![0u8; digest_len]), &n_ng(path)]);
        self.raw(pcr, [0u8; 20], b"ima-ng", &data)
    }

    /// The list so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The finished list.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
