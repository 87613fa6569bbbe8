//! The node under the workload: its boot chain (firmware event log, PCRs
//! 0–9) and what it ran since boot (IMA list, PCR 10), checked by meaning.
//!
//! Both logs arrive with the evidence and are untrusted until they replay
//! to the PCR values of a verified quote; only then are their events read
//! against the policy's `boot` and `runtime` rules. Each rule that holds is
//! stated in words in the report, so a reader learns what the boot proved,
//! not just that some hash matched.

mod boot;
mod runtime;

use std::collections::BTreeMap;

use aver_crds::{BootPolicy, RuntimePolicy};
use serde::Serialize;

use crate::evidence::Evidence;

pub(crate) use boot::foreign_extend;
pub use boot::BootError;
pub use runtime::RuntimeError;

/// What the boot chain and the runtime list proved, in words. Part of a
/// verified report; only the verifier builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlatformReport {
    /// The boot chain, when the policy checks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) boot: Option<CheckedLog>,
    /// What ran since boot, when the policy checks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) runtime: Option<CheckedLog>,
}

impl PlatformReport {
    /// The boot chain, when the policy checks it.
    pub fn boot(&self) -> Option<&CheckedLog> {
        self.boot.as_ref()
    }

    /// What ran since boot, when the policy checks it.
    pub fn runtime(&self) -> Option<&CheckedLog> {
        self.runtime.as_ref()
    }
}

/// One log that replayed to the quote, and the statements it proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CheckedLog {
    /// Events (or IMA entries) the quote covers.
    pub(crate) events: usize,
    /// What the log proved, one sentence each, in the order checked.
    pub(crate) statements: Vec<String>,
}

impl CheckedLog {
    /// Events (or IMA entries) the quote covers.
    pub fn events(&self) -> usize {
        self.events
    }

    /// What the log proved, one sentence each, in the order checked.
    pub fn statements(&self) -> &[String] {
        &self.statements
    }
}

/// Checks the evidence's platform logs against the policy's `boot` and
/// `runtime` rules. `quoted` holds the verified quote's SHA-256 PCR values.
/// `None` when the policy has neither rule.
pub(crate) fn verify_platform(
    evidence: &Evidence,
    quoted: &BTreeMap<u8, [u8; 32]>,
    boot: Option<&BootPolicy>,
    runtime: Option<&RuntimePolicy>,
) -> Result<Option<PlatformReport>, crate::VerifyError> {
    if boot.is_none() && runtime.is_none() {
        return Ok(None);
    }
    let boot = match boot {
        Some(policy) => Some(boot::verify(evidence, quoted, policy)?),
        None => None,
    };
    let runtime = match runtime {
        Some(policy) => Some(runtime::verify(evidence, quoted, policy)?),
        None => None,
    };
    Ok(Some(PlatformReport { boot, runtime }))
}

/// A PCR value as the verifier prints it.
fn hex32(value: &[u8]) -> String {
    format!("sha256:{}", hex::encode(value))
}

#[cfg(test)]
mod tests;
