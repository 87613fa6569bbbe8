//! Replaying the list to PCR values, and the `boot_aggregate` that binds
//! the list to the boot PCRs.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::ImaLog;

/// One step of the SHA-256 bank's replay: a violation extends 0xFF×32, any
/// other entry the SHA-256 of its template data.
fn extend_sha256(value: &[u8; 32], e: &super::ImaEntry) -> [u8; 32] {
    let measurement: [u8; 32] = if e.is_violation() {
        [0xFF; 32]
    } else {
        Sha256::digest(&e.template_data).into()
    };
    let mut h = Sha256::new();
    h.update(value);
    h.update(measurement);
    h.finalize().into()
}

impl ImaLog {
    /// The value the SHA-256 bank of `pcr` holds after the kernel extended
    /// every entry of this list that names `pcr`, starting from zeros
    /// (PCR 10 is never extended by firmware).
    ///
    /// For a non-SHA-1 bank whose algorithm the kernel has (SHA-256
    /// always), the kernel computes a per-bank template digest: SHA-256 of
    /// the template data, exactly the bytes the list carries (each field's
    /// `u32` length and bytes). The list itself only records the SHA-1
    /// template digest, so this recomputes it. A violation entry extends
    /// the bank with 32 bytes of `0xFF` instead (the kernel "invalidates"
    /// the PCR). So, for each entry `e` of `pcr` in order:
    /// `PCR = SHA-256(PCR || (e is a violation ? FF×32 : SHA-256(e.data)))`.
    pub fn replay_sha256(&self, pcr: u8) -> [u8; 32] {
        let mut value = [0u8; 32];
        for e in self.entries.iter().filter(|e| e.pcr == u32::from(pcr)) {
            value = extend_sha256(&value, e);
        }
        value
    }

    /// The shortest prefix of the list whose SHA-256 replay of `pcr` is
    /// `quoted`, as a list of its own; `None` if no prefix replays to it.
    ///
    /// The list is read after the quote and keeps growing, so it may hold
    /// entries the quote does not cover: only the returned prefix is
    /// attested. Entries of other PCRs are kept in place (they are not
    /// covered by `pcr`'s value; callers refuse lists that have them).
    pub fn prefix_replaying_to(&self, pcr: u8, quoted: &[u8; 32]) -> Option<ImaLog> {
        let mut value = [0u8; 32];
        if value == *quoted {
            return Some(ImaLog {
                entries: Vec::new(),
            });
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.pcr != u32::from(pcr) {
                continue;
            }
            value = extend_sha256(&value, e);
            if value == *quoted {
                return Some(ImaLog {
                    entries: self.entries.get(..=i)?.to_vec(),
                });
            }
        }
        None
    }

    /// The value the SHA-1 bank of `pcr` holds after this list, for TPMs
    /// (or verifiers) that only use SHA-1: each entry extends the bank
    /// with its listed template digest, a violation with 20 bytes of
    /// `0xFF`.
    pub fn replay_sha1(&self, pcr: u8) -> [u8; 20] {
        let mut value = [0u8; 20];
        for e in self.entries.iter().filter(|e| e.pcr == u32::from(pcr)) {
            let measurement = if e.is_violation() {
                [0xFF; 20]
            } else {
                e.template_digest
            };
            let mut h = Sha1::new();
            h.update(value);
            h.update(measurement);
            value = h.finalize().into();
        }
        value
    }
}

/// The `boot_aggregate` the kernel computes from the TPM's SHA-256 bank:
/// SHA-256 over the values of PCRs 0–7, then 8 and 9 (the kernel, since
/// 5.8, adds PCRs 8 and 9 for every bank except SHA-1, so that the boot
/// loader's measurements of the kernel command line and the kernel and
/// initrd are covered). `pcr(i)` gives PCR `i`'s SHA-256 value; `None` if
/// any of PCRs 0–9 is missing, so that a PCR left out of a quote is never
/// silently taken as zero (a PCR never extended *is* 32 zero bytes; a
/// caller that knows that passes zeros).
///
/// Comparing this with [`ImaLog::boot_aggregate`] binds the IMA list to
/// the boot whose firmware log explains PCRs 0–9.
pub fn boot_aggregate_sha256(pcr: impl Fn(u8) -> Option<[u8; 32]>) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    for i in 0..10u8 {
        h.update(pcr(i)?);
    }
    Some(h.finalize().into())
}

/// The `boot_aggregate` the kernel computes when it reads the SHA-1 bank
/// (a TPM without a SHA-256 bank, or a TPM 1.2): SHA-1 over PCRs 0–7 only.
/// `None` if any of them is missing.
pub fn boot_aggregate_sha1(pcr: impl Fn(u8) -> Option<[u8; 20]>) -> Option<[u8; 20]> {
    let mut h = Sha1::new();
    for i in 0..8u8 {
        h.update(pcr(i)?);
    }
    Some(h.finalize().into())
}
