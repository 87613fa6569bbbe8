//! `aver tpm check-quote` against `tpm2_checkquote` on the same tpm2-tools
//! quote (ECDSA P-256 AK, sha256:0,1,2,7, with the PCR file): whole-process
//! CPU time (user + sys of the child, from getrusage(RUSAGE_CHILDREN)
//! deltas) and wall time, interleaved in one run so that both see the same
//! noise. Medians and their ratio.
//!
//! `cargo build --release -p aver-cli --bin aver && cargo bench -p aver-tests --bench check_quote`
//! (needs swtpm and tpm2-tools; `AVER_BIN=path` measures another aver build).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aver_tests::{cargo_bin, Swtpm};

const RUNS: usize = 30;
const NONCE: &str = "0102abcd";

// The one unsafe block of the suite: rustix has no getrusage.
#[allow(unsafe_code)]
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tool(dir: &Path, tcti: &str, tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tcti)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(status.success(), "{tool} {args:?} failed");
    let flush = Command::new("tpm2_flushcontext")
        .arg("-t")
        .env("TPM2TOOLS_TCTI", tcti)
        .status()
        .unwrap();
    assert!(flush.success());
}

/// CPU and wall time of one run of `command`, which must exit 0.
fn measure(command: &mut Command) -> (Duration, Duration) {
    let cpu = children_cpu();
    let start = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let wall = start.elapsed();
    assert!(status.success(), "{command:?} refused the quote");
    (children_cpu() - cpu, wall)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if !aver_tests::swtpm_available() {
        println!("check_quote bench skipped: swtpm is not installed");
        return;
    }
    let tpm = Swtpm::start().unwrap();
    let tcti = tpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool(d, &tcti, "tpm2_createek", &["-c", "ek.ctx", "-G", "rsa"]);
    tool(
        d,
        &tcti,
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u",
            "ak.pub",
        ],
    );
    tool(
        d,
        &tcti,
        "tpm2_quote",
        &[
            "-c",
            "ak.ctx",
            "-l",
            "sha256:0,1,2,7",
            "-q",
            NONCE,
            "-g",
            "sha256",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "quote.pcrs",
        ],
    );
    drop(tpm);

    // AVER_BIN measures another build (e.g. release from a dev-profile bench).
    let aver = std::env::var_os("AVER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cargo_bin("aver"));
    let mut aver_cmd = Command::new(&aver);
    aver_cmd.current_dir(d).args([
        "tpm",
        "check-quote",
        "--ak-public",
        "ak.pub",
        "--quote",
        "quote.msg",
        "--signature",
        "quote.sig",
        "--pcrs",
        "quote.pcrs",
        "--qualifying-data",
        NONCE,
    ]);
    let mut tools_cmd = Command::new("tpm2_checkquote");
    tools_cmd.current_dir(d).args([
        "-u",
        "ak.pub",
        "-m",
        "quote.msg",
        "-s",
        "quote.sig",
        "-f",
        "quote.pcrs",
        "-g",
        "sha256",
        "-q",
        NONCE,
    ]);

    // One warm-up each (page cache, dynamic loader).
    measure(&mut aver_cmd);
    measure(&mut tools_cmd);
    let (mut aver_cpu, mut aver_wall, mut tools_cpu, mut tools_wall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let (cpu, wall) = measure(&mut aver_cmd);
        aver_cpu.push(cpu);
        aver_wall.push(wall);
        let (cpu, wall) = measure(&mut tools_cmd);
        tools_cpu.push(cpu);
        tools_wall.push(wall);
    }
    let (ac, aw, tc, tw) = (
        median(aver_cpu),
        median(aver_wall),
        median(tools_cpu),
        median(tools_wall),
    );
    println!(
        "check_quote: {RUNS} runs each, interleaved, medians ({})",
        aver.display()
    );
    println!(
        "  aver tpm check-quote   cpu {:7.2} ms   wall {:7.2} ms",
        ms(ac),
        ms(aw)
    );
    println!(
        "  tpm2_checkquote        cpu {:7.2} ms   wall {:7.2} ms",
        ms(tc),
        ms(tw)
    );
    println!(
        "  ratio aver / tpm2_checkquote: cpu {:.2}, wall {:.2}",
        ac.as_secs_f64() / tc.as_secs_f64().max(1e-9),
        aw.as_secs_f64() / tw.as_secs_f64().max(1e-9)
    );
}
