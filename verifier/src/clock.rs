//! Clock-regression detection (docs/architecture.md#freshness): a TPM's reset and restart
//! counters only grow, and within one power cycle its clock only advances.
//! A quote that goes backwards for an AK already seen is a replay of old
//! evidence or a rolled-back TPM state, and is refused.

use std::collections::HashMap;

use crate::error::VerifyError;
use crate::report::{QuoteClock, VerifiedReport};

/// The latest TPM clock seen for each attestation key.
#[derive(Debug, Default, Clone)]
pub struct ClockHistory {
    seen: HashMap<String, QuoteClock>,
}

impl ClockHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the report's clock, or refuses it if it is older than what was
    /// already seen for the same AK (nothing is recorded then).
    pub fn observe(&mut self, report: &VerifiedReport) -> Result<(), VerifyError> {
        let now = report.clock;
        if let Some(seen) = self.seen.get(&report.ak_name) {
            let key = |c: &QuoteClock| (c.reset_count, c.restart_count, c.clock_ms);
            if key(&now) < key(seen) {
                return Err(VerifyError::ClockRegression {
                    name: report.ak_name.clone(),
                    seen_reset: seen.reset_count,
                    seen_restart: seen.restart_count,
                    seen_clock: seen.clock_ms,
                    now_reset: now.reset_count,
                    now_restart: now.restart_count,
                    now_clock: now.clock_ms,
                });
            }
        }
        self.seen.insert(report.ak_name.clone(), now);
        Ok(())
    }
}
