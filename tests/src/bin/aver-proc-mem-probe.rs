//! Test helper for `tests/tests/key_hygiene.rs`: runs a program as its child
//! and tries, on request, to read the child's memory through
//! `/proc/PID/mem`, the way any other process of the same uid could.
//!
//! Being the parent keeps the attempt meaningful where Yama's
//! `ptrace_scope` is 1 (only ancestors may attach): then a dumpable child
//! can be read and a non-dumpable one cannot, which is the difference the
//! test checks.
//!
//! ```text
//! aver-proc-mem-probe PROGRAM [ARGS...]
//! ```
//!
//! The child inherits stdout and stderr. The probe writes `pid N` on stdout
//! once the child runs; then for each line `read HEXADDRESS` on stdin it
//! answers one line on stdout: `read ok`, `read open-error ERRNO` or
//! `read read-error ERRNO`. At the end of stdin it kills the child and exits.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::process::{Command, ExitCode, Stdio};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: aver-proc-mem-probe PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let mut child = match Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("aver-proc-mem-probe: cannot run {program}: {e}");
            return ExitCode::from(2);
        }
    };
    let pid = child.id();
    say(&format!("pid {pid}"));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some(address) = line
            .strip_prefix("read ")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        else {
            say("read bad-request");
            continue;
        };
        say(&attempt(pid, address));
    }
    let _ = child.kill();
    let _ = child.wait();
    ExitCode::SUCCESS
}

fn attempt(pid: u32, address: u64) -> String {
    let mem = match File::open(format!("/proc/{pid}/mem")) {
        Ok(mem) => mem,
        Err(e) => return format!("read open-error {}", e.raw_os_error().unwrap_or(0)),
    };
    let mut buf = [0u8; 8];
    match mem.read_exact_at(&mut buf, address) {
        Ok(()) => "read ok".into(),
        Err(e) => format!("read read-error {}", e.raw_os_error().unwrap_or(0)),
    }
}

/// One line in one write, so that it does not interleave with the child's
/// output on the shared stdout.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(format!("{line}\n").as_bytes());
    let _ = stdout.flush();
}
