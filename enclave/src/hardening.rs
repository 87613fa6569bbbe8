//! Process hardening that must be in place before the TLS key exists.
//!
//! A non-dumpable process (`prctl(PR_SET_DUMPABLE, 0)`) cannot be attached
//! to with ptrace, nor have its `/proc/PID/mem` (or `maps`, `environ`, ...)
//! opened, by other processes of the same uid, only by one with
//! `CAP_SYS_PTRACE`; and the kernel writes no core dump of it. Children
//! made by `fork` inherit the setting; `execve` of another program resets it.

use rustix::process::{dumpable_behavior, set_dumpable_behavior, DumpableBehavior};

/// Why the process could not be hardened.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    SetNotDumpable(#[source] rustix::io::Errno),
    #[error(
        "the process is still dumpable after prctl PR_SET_DUMPABLE 0 (PR_GET_DUMPABLE says {0:?})"
    )]
    StillDumpable(Option<DumpableBehavior>),
}

/// Makes this process non-dumpable and checks that it took effect. Call it
/// first thing in `main`, before any secret is in memory.
pub fn make_non_dumpable() -> Result<(), HardeningError> {
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(HardeningError::SetNotDumpable)?;
    match dumpable_behavior() {
        Ok(DumpableBehavior::NotDumpable) => Ok(()),
        Ok(other) => Err(HardeningError::StillDumpable(Some(other))),
        Err(_) => Err(HardeningError::StillDumpable(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_becomes_non_dumpable() {
        // Harmless for the other tests of this binary: a process can always
        // read its own /proc/self files.
        make_non_dumpable().unwrap();
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("VmRSS"), "own /proc files stay readable");
    }
}
