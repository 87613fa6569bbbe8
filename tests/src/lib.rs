//! Harness for aver's integration tests: a private software TPM per test,
//! locating built binaries, and skipping (or, under CI, failing) when a
//! prerequisite is missing.
//!
//! Each [`Swtpm`] is a `swtpm socket --tpm2` process on free loopback ports
//! with its own state directory, so tests run in parallel without sharing
//! PCRs or keys, and a test can simulate a reboot with [`Swtpm::restart`].
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod confidential_pod;
pub mod containerd;
pub mod controlplane;
pub mod ek_ca;
pub mod kubelet;
pub mod llama;
pub mod mitm;
pub mod node;
pub mod node_agent;
pub mod node_sim;
pub mod process;
pub mod slow_tpm;
pub mod stub_upstream;
pub mod vm;

pub use slow_tpm::{Delays, SlowTpm};

use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long swtpm gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a port collision with another test is retried.
const START_ATTEMPTS: usize = 5;

/// A running `swtpm` with its own state; killed and reaped on drop.
///
/// The TPM is started with `startup-clear`, so it is ready for commands as
/// soon as [`Swtpm::start`] returns, like a TPM after a boot.
pub struct Swtpm {
    child: Child,
    port: u16,
    state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts a fresh TPM (new state directory: new endorsement seed, no
    /// persistent keys).
    pub fn start() -> anyhow::Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("aver-swtpm-")
            .tempdir()
            .context("cannot create a state directory for swtpm")?;
        let (child, port) = spawn_on_free_ports(state.path())?;
        Ok(Self { child, port, state })
    }

    /// Starts a TPM manufactured like a real one: `swtpm_setup
    /// --create-ek-cert` creates its EKs and writes EK certificates issued
    /// by `ca` into its NV (RSA 2048 at 0x01c00002).
    pub fn start_with_ek_cert(ca: &ek_ca::TestCa) -> anyhow::Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("aver-swtpm-")
            .tempdir()
            .context("cannot create a state directory for swtpm")?;
        ca.manufacture(state.path())?;
        let (child, port) = spawn_on_free_ports(state.path())?;
        Ok(Self { child, port, state })
    }

    /// Power-cycles the TPM: stops the process and starts a new one on the
    /// same state. Persistent objects (the AK) and seeds survive; PCRs are
    /// reset, as after a reboot. The TCTI may change (new ports).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        stop(&mut self.child);
        let (child, port) = spawn_on_free_ports(self.state.path())?;
        self.child = child;
        self.port = port;
        Ok(())
    }

    /// The TCTI string for tss-esapi / tpm2-tools. The swtpm TCTI always
    /// uses `port + 1` as the control port, which is why the harness
    /// reserves two consecutive ports.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM's state directory (for tests that inspect or copy it).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    // Already exited is fine: kill fails, wait reaps.
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_on_free_ports(state: &Path) -> anyhow::Result<(Child, u16)> {
    let mut last_error = None;
    for _ in 0..START_ATTEMPTS {
        let port = free_port_pair().context("cannot find two free consecutive loopback ports")?;
        match spawn(state, port) {
            Ok(child) => return Ok((child, port)),
            // Most likely another test took one of the ports between our
            // probe and swtpm's bind: pick new ones.
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("swtpm did not start"))).context(format!(
        "swtpm did not start after {START_ATTEMPTS} attempts"
    ))
}

/// Finds a port `p` such that `p` and `p + 1` are both free on 127.0.0.1.
fn free_port_pair() -> io::Result<u16> {
    for _ in 0..100 {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = server.local_addr()?.port();
        let Some(ctrl) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no two consecutive free ports after 100 tries",
    ))
}

fn spawn(state: &Path, port: u16) -> anyhow::Result<Child> {
    let ctrl = port + 1;
    let log = state.join("swtpm.log");
    let mut child = Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run swtpm (is the swtpm package installed?)")?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            bail!(
                "swtpm exited with {status} on ports {port}/{ctrl}: {}",
                stderr.trim()
            );
        }
        if accepts(port) && accepts(ctrl) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            bail!("swtpm did not listen on port {port} within {START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether the `swtpm` binary can be run.
pub fn swtpm_available() -> bool {
    Command::new("swtpm")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the tests run in CI (`CI=true`), where a missing prerequisite is
/// a failure rather than a reason to skip: a green CI must mean the tests ran.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Decides whether a test that needs swtpm can run: `true` if it can;
/// `false` (after printing why) if swtpm is missing outside CI; panics if it
/// is missing under `CI=true`. Use through [`require_swtpm!`].
pub fn swtpm_or_skip(test: &str) -> bool {
    if swtpm_available() {
        return true;
    }
    if in_ci() {
        panic!("{test}: swtpm is not installed, and CI=true forbids skipping (apt-get install swtpm swtpm-tools)");
    }
    // Written to the process's stderr directly, not through `eprintln!`,
    // which the test harness captures and shows only for failed tests.
    let _ = writeln!(
        io::stderr(),
        "skipping {test}: swtpm is not installed (apt-get install swtpm swtpm-tools)"
    );
    false
}

/// Returns early from the calling test when swtpm is missing (outside CI;
/// under `CI=true` the test fails instead).
///
/// ```ignore
/// #[test]
/// fn quotes() {
///     aver_tests::require_swtpm!();
///     let tpm = aver_tests::Swtpm::start().unwrap();
/// }
/// ```
#[macro_export]
macro_rules! require_swtpm {
    () => {
        if !$crate::swtpm_or_skip(
            ::std::thread::current()
                .name()
                .unwrap_or(::std::module_path!()),
        ) {
            return;
        }
    };
}

/// Path of a binary built by this workspace, e.g. `cargo_bin("aver")`.
///
/// `env!("CARGO_BIN_EXE_<name>")` works only for binaries of the test's own
/// package, and these tests live in their own package. Integration test
/// executables are `target/<profile>/deps/<test>-<hash>`, and cargo puts
/// the workspace's binaries in `target/<profile>/`, so the binary is looked
/// up in the parent directories of the running test executable. The binary
/// must have been built (`cargo build -p aver-enclave` or `cargo test
/// --workspace`); a missing one panics with that advice.
pub fn cargo_bin(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().expect("the test executable's path is known");
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "binary {file} not found next to {} or its parent directories: build it first (cargo build --bin {name})",
        exe.display()
    );
}

/// `policy` as verification takes it. Tests edit the written policy and
/// validate it at each use; a policy a test expects to be refused is
/// checked with `ValidatedPolicy::new` itself.
pub fn checked(policy: &aver_crds::AttestationPolicy) -> aver_verifier::ValidatedPolicy {
    aver_verifier::ValidatedPolicy::new(policy.clone())
        .unwrap_or_else(|e| panic!("the test's policy is refused: {e}"))
}
