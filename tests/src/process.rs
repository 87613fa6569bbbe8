//! Signals to, and stopping of, the processes the harnesses start
//! (containerd, aver-node, kubelets, the control plane, enclaves).

use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustix::process::{kill_process, Pid};

/// The signals the harnesses send.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Term,
    Kill,
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    let signal = match signal {
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Kill => rustix::process::Signal::KILL,
    };
    kill_process(pid, signal).with_context(|| format!("cannot signal process {pid:?}"))
}

/// SIGTERM, then SIGKILL once `grace` has passed; reaps the process.
pub fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = signal(child.id(), Signal::Term);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether this process runs as root (containerd and runc need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
