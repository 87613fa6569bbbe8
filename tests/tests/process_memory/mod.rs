//! Reading a process's memory through `/proc/PID/{smaps,mem}`, and finding
//! a P-256 private key in it, for the key residency and key hygiene tests.
//! Reading another process's memory needs root (`CAP_SYS_PTRACE`) once the
//! process is non-dumpable; a process can always read its own (`"self"`).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use aver_verifier::Sha256Digest;
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// e.g. `rw-p`
    pub perms: String,
    /// The backing file or a name like `[heap]`; empty for anonymous memory.
    pub path: String,
    /// `VmFlags`, e.g. `rd wr mr mw me lo dd`.
    pub flags: Vec<String>,
}

impl Mapping {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn readable(&self) -> bool {
        self.perms.starts_with('r')
    }

    /// Locked (`lo`) and excluded from core dumps (`dd`): the TLS key's page.
    pub fn locked_and_not_dumped(&self) -> bool {
        self.has_flag("lo") && self.has_flag("dd")
    }
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {} [{}]",
            self.start,
            self.end,
            self.perms,
            self.path,
            self.flags.join(" ")
        )
    }
}

/// The mappings of process `pid` (a number or `"self"`).
pub fn smaps(pid: &str) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/smaps: {e}"));
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = mappings.last_mut() {
                last.flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        // A mapping's first line: "START-END perms offset dev inode [path]";
        // the other lines are "Name: value".
        let mut fields = line.split_whitespace();
        let Some((start, end)) = fields.next().and_then(|range| range.split_once('-')) else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let perms = fields.next().unwrap_or_default().to_owned();
        let path = fields.skip(3).collect::<Vec<_>>().join(" ");
        mappings.push(Mapping {
            start,
            end,
            perms,
            path,
            flags: Vec::new(),
        });
    }
    mappings
}

/// A value of `/proc/PID/status` in kB, e.g. `VmLck`.
pub fn status_kb(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_mem(pid: &str) -> File {
    File::open(format!("/proc/{pid}/mem"))
        .unwrap_or_else(|e| panic!("cannot open /proc/{pid}/mem: {e}"))
}

fn read_mapping(mem: &File, mapping: &Mapping) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; (mapping.end - mapping.start) as usize];
    mem.read_exact_at(&mut bytes, mapping.start)?;
    Ok(bytes)
}

/// The contents of every readable mapping of `pid` that can be read
/// (the kernel's `[vvar]`-like pseudo mappings cannot), with the mapping.
pub fn read_memory(pid: &str) -> Vec<(Mapping, Vec<u8>)> {
    let mem = open_mem(pid);
    let mut regions = Vec::new();
    for mapping in smaps(pid) {
        if !mapping.readable() || mapping.path.starts_with("[vvar") || mapping.path == "[vsyscall]"
        {
            continue;
        }
        match read_mapping(&mem, &mapping) {
            Ok(bytes) => regions.push((mapping, bytes)),
            Err(e) => {
                assert!(
                    !mapping.locked_and_not_dumped(),
                    "cannot read the locked mapping {mapping}: {e}"
                );
                eprintln!("note: mapping {mapping} is not readable: {e}");
            }
        }
    }
    regions
}

/// SHA-256 of the DER SubjectPublicKeyInfo of the P-256 public key of
/// `scalar`, or `None` if `scalar` is not a valid private key.
pub fn spki_sha256_of_scalar(scalar: &[u8]) -> Option<Sha256Digest> {
    let secret = p256::SecretKey::from_slice(scalar).ok()?;
    let spki = secret.public_key().to_public_key_der().ok()?;
    Some(Sha256Digest(Sha256::digest(spki.as_bytes()).into()))
}

/// The P-256 private scalar (32 big-endian bytes at a 32-byte aligned
/// offset of `region`) whose public key has SPKI digest `spki`.
pub fn find_scalar(region: &[u8], spki: &Sha256Digest) -> Option<[u8; 32]> {
    region
        .chunks_exact(32)
        // A page of zeros around the key: skip what cannot be a scalar fast.
        .filter(|window| window.iter().any(|&b| b != 0))
        .find(|window| spki_sha256_of_scalar(window).as_ref() == Some(spki))
        .map(|window| window.try_into().unwrap())
}

/// The P-256 private scalar of the key with SPKI digest `spki` that process
/// `pid` holds in a mapping locked and excluded from core dumps, where
/// `aver-enclave` keeps its TLS key.
pub fn find_locked_scalar(pid: &str, spki: &Sha256Digest) -> Option<[u8; 32]> {
    let mem = open_mem(pid);
    smaps(pid)
        .iter()
        .filter(|mapping| mapping.locked_and_not_dumped())
        .find_map(|mapping| find_scalar(&read_mapping(&mem, mapping).ok()?, spki))
}

/// Offsets of `needle` in `haystack`.
pub fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let Some((&first, rest)) = needle.split_first() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let Some(i) = haystack[from..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        else {
            break;
        };
        let at = from + i;
        if &haystack[at + 1..at + needle.len()] == rest {
            found.push(at);
        }
        from = at + 1;
    }
    found
}

/// The start of a PKCS#8 (RFC 5208) PrivateKeyInfo of a P-256 key as rcgen,
/// ring and p256 write it: version 0, algorithm id-ecPublicKey with
/// prime256v1; the SEC1 ECPrivateKey follows, whose scalar starts
/// [`PKCS8_SCALAR_OFFSET`] bytes in.
pub const PKCS8_P256_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// Prefix, then `04 6d` (OCTET STRING), `30 6b 02 01 01 04 20`.
pub const PKCS8_SCALAR_OFFSET: usize = PKCS8_P256_PREFIX.len() + 2 + 7;
/// The start of a SEC1 (RFC 5915) ECPrivateKey with a 32-byte scalar, which
/// follows it directly.
pub const SEC1_PREFIX: &[u8] = &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];

/// A place where memory holds the start of an encoded EC private key.
#[derive(Debug)]
pub struct EncodedKeyHit {
    pub mapping: String,
    pub offset: usize,
    pub form: &'static str,
    /// Whether the 32 bytes where the scalar would be are the private key of
    /// the SPKI the search was for.
    pub is_the_key: bool,
}

/// Every PKCS#8 or SEC1 encoding of a P-256 private key in `regions`, each
/// checked against `spki`.
pub fn encoded_private_keys(
    regions: &[(Mapping, Vec<u8>)],
    spki: &Sha256Digest,
) -> Vec<EncodedKeyHit> {
    let mut hits = Vec::new();
    for (mapping, bytes) in regions {
        for (form, prefix, scalar_at) in [
            ("PKCS#8", PKCS8_P256_PREFIX, PKCS8_SCALAR_OFFSET),
            ("SEC1", SEC1_PREFIX, SEC1_PREFIX.len()),
        ] {
            for offset in occurrences(bytes, prefix) {
                let scalar = bytes.get(offset + scalar_at..offset + scalar_at + 32);
                let is_the_key = scalar.and_then(spki_sha256_of_scalar).as_ref() == Some(spki);
                hits.push(EncodedKeyHit {
                    mapping: mapping.to_string(),
                    offset,
                    form,
                    is_the_key,
                });
            }
        }
    }
    hits
}
