//! What ran since boot: the kernel's IMA list, the prefix of it the quote
//! covers replayed to PCR 10, bound to this boot by its `boot_aggregate`,
//! and every measured file checked against the runtime allow-list.

use std::collections::BTreeMap;

use aver_boot_log::ima::{
    boot_aggregate_sha256, Allowlist, ImaLog, ImaLogError, RuntimeViolation, IMA_PCR,
};
use aver_crds::boot_policy::BOOT_LOG_PCRS;
use aver_crds::RuntimePolicy;

use super::{hex32, CheckedLog};
use crate::evidence::Evidence;

/// Why what ran since boot was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("the policy checks what ran since boot, but the evidence carries no IMA list (boot the node with ima_policy=tcb ima_hash=sha256 ima_template=ima-ng)")]
    NoLog,
    #[error("the IMA list is malformed: {0}")]
    Malformed(#[from] ImaLogError),
    #[error("the policy checks what ran since boot, but the quote does not cover PCR {0}")]
    NotQuoted(u8),
    #[error("IMA entry {index} is measured into PCR {pcr}: only PCR {IMA_PCR} is verified, so the entry would be unattested")]
    OtherPcr { index: usize, pcr: u32 },
    #[error("no prefix of the IMA list replays to the quoted PCR {IMA_PCR} {quoted}: the list was altered, or something else extended PCR {IMA_PCR}")]
    Replay { quoted: String },
    #[error("the IMA list the quote covers is empty: IMA is not measuring on this node")]
    Empty,
    #[error("the IMA list does not start with a sha256 boot_aggregate (boot the node with ima_hash=sha256)")]
    NoBootAggregate,
    #[error("the IMA list's boot_aggregate {found} is not the digest of the quoted PCRs 0-9 ({expected}): the list belongs to another boot")]
    OtherBoot { found: String, expected: String },
    #[error("{0}")]
    Refused(#[from] RuntimeViolation),
    #[error("runtime.files cannot be used: {0}")]
    BadPolicy(String),
}

pub(super) fn verify(
    evidence: &Evidence,
    quoted: &BTreeMap<u8, [u8; 32]>,
    policy: &RuntimePolicy,
) -> Result<CheckedLog, RuntimeError> {
    let bytes = evidence.ima_log.as_ref().ok_or(RuntimeError::NoLog)?;
    let list = ImaLog::parse(&bytes.0)?;
    if let Some((index, entry)) = list
        .entries()
        .iter()
        .enumerate()
        .find(|(_, e)| e.pcr() != u32::from(IMA_PCR))
    {
        return Err(RuntimeError::OtherPcr {
            index,
            pcr: entry.pcr(),
        });
    }
    let pcr10 = quoted
        .get(&IMA_PCR)
        .ok_or(RuntimeError::NotQuoted(IMA_PCR))?;
    let covered = list
        .prefix_replaying_to(IMA_PCR, pcr10)
        .ok_or_else(|| RuntimeError::Replay {
            quoted: hex32(pcr10),
        })?;
    if covered.is_empty() {
        return Err(RuntimeError::Empty);
    }

    // The boot_aggregate binds the list to this boot's PCRs 0-9.
    for pcr in BOOT_LOG_PCRS {
        if !quoted.contains_key(&pcr) {
            return Err(RuntimeError::NotQuoted(pcr));
        }
    }
    let expected =
        boot_aggregate_sha256(|pcr| quoted.get(&pcr).copied()).ok_or(RuntimeError::NotQuoted(0))?;
    let found = match covered.boot_aggregate() {
        Some(("sha256", digest)) => digest,
        _ => return Err(RuntimeError::NoBootAggregate),
    };
    if found != expected.as_slice() {
        return Err(RuntimeError::OtherBoot {
            found: hex32(found),
            expected: hex32(&expected),
        });
    }

    let allowlist = Allowlist::from_entries(
        policy
            .files
            .iter()
            .map(|f| (f.path.clone(), f.digests.iter().map(|d| d.0))),
    )
    .map_err(|e| RuntimeError::BadPolicy(e.to_string()))?;
    let checked = allowlist.check(&covered)?;
    let after = list.len() - covered.len();
    Ok(CheckedLog {
        events: covered.len(),
        statements: vec![
            format!(
                "the IMA list replays to the quoted PCR 10 with {} entries ({after} more were measured after the quote and are not covered)",
                covered.len()
            ),
            "its boot_aggregate is the digest of the quoted PCRs 0-9: the list belongs to this boot".to_owned(),
            format!(
                "all {} files measured since boot ({} distinct paths) are in the runtime allow-list of {} files",
                checked.measured_files,
                checked.distinct_paths,
                allowlist.len()
            ),
        ],
    })
}
