//! A real Kubernetes control plane for end-to-end tests: the Go fixture in
//! `tests/controlplane/` (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kubectl from the upstream modules), built once per
//! checkout by `scripts/e2e.sh build` into `target/controlplane/`, and
//! `aver-controller` processes pointed at it.
//!
//! Every [`ControlPlane`] has its own state directory and ports; dropping it
//! stops every component. Tests that need it start with [`require_e2e!`](crate::require_e2e),
//! which skips them outside CI when Go or swtpm is missing and fails them
//! under `CI=true`.

use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{cargo_bin, in_ci, swtpm_available};

/// How long the control plane may take to become ready (the fixture's own
/// limit is 60 s; the issue asks for under 30 s, which the fixture prints).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stopping process gets before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/` of the running test executable (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    repo_root().join("target")
}

/// The Go toolchain: `go` on PATH, else the usual install location.
pub fn go_binary() -> Option<PathBuf> {
    let runs = |go: &Path| {
        Command::new(go)
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")]
        .into_iter()
        .find(|go| runs(go))
}

/// Decides whether an end-to-end test can run: it needs swtpm, the TPM
/// tools and Go (to build the fixture). `false` after printing why, outside
/// CI; panics under `CI=true`. Use through [`require_e2e!`](crate::require_e2e).
pub fn e2e_or_skip(test: &str) -> bool {
    let mut missing = Vec::new();
    if !swtpm_available() {
        missing.push("swtpm (apt-get install swtpm swtpm-tools)");
    }
    if !tool_runs("tpm2_pcrextend", "--version") {
        missing.push("tpm2-tools (apt-get install tpm2-tools)");
    }
    if go_binary().is_none() {
        missing.push("Go (https://go.dev/dl, to build tests/controlplane)");
    }
    // Building the fixture from scratch takes minutes: outside CI a plain
    // `cargo test` only runs these tests once it exists (scripts/test.sh and
    // scripts/e2e.sh build it), or when asked to build it (AVER_E2E=1).
    let fixture_built = target_dir()
        .join("controlplane/bin/aver-controlplane")
        .is_file();
    let asked = std::env::var("AVER_E2E").is_ok_and(|v| v == "1");
    if !in_ci() && !fixture_built && !asked {
        missing.push("the control-plane fixture (bash scripts/e2e.sh build, or AVER_E2E=1)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if in_ci() {
        panic!("{test}: missing {why}, and CI=true forbids skipping");
    }
    let _ = writeln!(io::stderr(), "skipping {test}: missing {why}");
    false
}

fn tool_runs(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns early from the calling test when the end-to-end prerequisites
/// are missing (outside CI; under `CI=true` the test fails instead).
#[macro_export]
macro_rules! require_e2e {
    () => {
        if !$crate::controlplane::e2e_or_skip(
            ::std::thread::current()
                .name()
                .unwrap_or(::std::module_path!()),
        ) {
            return;
        }
    };
}

/// Paths of the built fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The multi-call binary (`up`, `kube-apiserver`, ..., `kubectl`).
    pub binary: PathBuf,
    /// A `kubectl` symlink to it.
    pub kubectl: PathBuf,
}

/// Builds the fixture (once per test process; `go build` is incremental,
/// so a fixture built by `scripts/e2e.sh build` earlier costs a cache check).
/// A lock file serialises builds of concurrent test processes.
pub fn fixture() -> anyhow::Result<Fixture> {
    static BUILT: OnceLock<Result<Fixture, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_fixture().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_fixture() -> anyhow::Result<Fixture> {
    let out = target_dir().join("controlplane");
    std::fs::create_dir_all(&out)?;
    let lock = File::create(out.join(".build.lock"))?;
    lock.lock().context("cannot lock the fixture build")?;
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/e2e.sh"))
        .arg("build")
        .env("AVER_CONTROLPLANE_OUT", &out)
        .stdin(Stdio::null());
    if let Some(go) = go_binary() {
        if let Some(dir) = go.parent().filter(|d| !d.as_os_str().is_empty()) {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs)?);
        }
    }
    let output = cmd.output().context("cannot run scripts/e2e.sh build")?;
    if !output.status.success() {
        bail!(
            "building the control-plane fixture failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let fixture = Fixture {
        binary: out.join("bin/aver-controlplane"),
        kubectl: out.join("bin/kubectl"),
    };
    if !fixture.binary.is_file() {
        bail!("{} missing after the build", fixture.binary.display());
    }
    Ok(fixture)
}

/// A running control plane (`aver-controlplane up`); stopped on drop.
pub struct ControlPlane {
    fixture: Fixture,
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// Seconds the fixture took to become ready, as it reported.
    pub start_seconds: f64,
}

impl ControlPlane {
    /// Builds (if needed) and starts a control plane in a new directory,
    /// waiting until it serves and its controller manager works.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Like [`Self::start`], with extra `up` flags (e.g. `--restart-delay=5s`).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let fixture = fixture()?;
        let dir = tempfile::Builder::new()
            .prefix("aver-controlplane-")
            .tempdir()?;
        let mut child = Command::new(&fixture.binary)
            .arg("up")
            .arg("--exit-with-parent")
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(dir.path().join("up.log"))?))
            .spawn()
            .context("cannot start aver-controlplane up")?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.starts_with("ready ") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "control plane did not start ({other:?}); {}",
                    tail(&dir.path().join("up.log"), 30)
                );
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).map(str::to_owned))
        };
        let kubeconfig = PathBuf::from(field("kubeconfig=").context("ready line has kubeconfig")?);
        let start_seconds = field("seconds=")
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        Ok(Self {
            fixture,
            child: Mutex::new(child),
            dir,
            kubeconfig,
            start_seconds,
        })
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory (logs in `logs/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client as the cluster admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl` (the fixture's own, same version as the server) with
    /// `KUBECONFIG` set.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.fixture.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Kills kube-apiserver (SIGKILL, no graceful shutdown). The fixture
    /// restarts it after its `--restart-delay` on the same etcd; this waits
    /// until the new process has taken over the PID file.
    pub fn kill_apiserver(&self) -> anyhow::Result<u32> {
        let pid_file = self.dir.path().join("kube-apiserver.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .context("kube-apiserver.pid")?
            .trim()
            .parse()?;
        crate::process::signal(pid, crate::process::Signal::Kill)?;
        Ok(pid)
    }

    /// The last lines of each component's log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in [
            "up",
            "logs/kube-apiserver",
            "logs/kube-controller-manager",
            "logs/kube-scheduler",
        ] {
            out.push_str(&tail(&self.dir.path().join(format!("{name}.log")), lines));
        }
        out
    }

    fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        stop_child(&mut child);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, then SIGKILL after `STOP_TIMEOUT`; reaps the process.
pub fn stop_child(child: &mut Child) {
    crate::process::stop(child, STOP_TIMEOUT);
}

/// The last `lines` lines of a file, headed by its name.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "\n--- {} (last {lines} lines)\n{}\n",
        path.display(),
        all[start..].join("\n")
    )
}

/// A free TCP port on 127.0.0.1 (for metrics addresses).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Image reference the controller puts in pod specs. The node simulator
/// runs the workspace's `aver-enclave` whatever it names.
pub const ENCLAVE_IMAGE: &str =
    "registry.invalid/aver-enclave@sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// An `aver-controller` process against a control plane; stopped with
/// SIGTERM (graceful: releases its Lease) on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    /// `/metrics`, `/healthz` and `/readyz`.
    pub metrics: SocketAddr,
    /// Identity in the leader Lease.
    pub identity: String,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts `aver-controller` watching `namespace` (its Lease lives there
    /// too), with `extra` flags; logs go to `log_dir/<identity>.log`.
    pub fn start(
        cp: &ControlPlane,
        namespace: &str,
        identity: &str,
        log_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let log = log_dir.join(format!("{identity}.log"));
        let default_image: &[&str] = if extra.contains(&"--enclave-image") {
            &[]
        } else {
            &["--enclave-image", ENCLAVE_IMAGE]
        };
        let child = Command::new(cargo_bin("aver-controller"))
            .env("KUBECONFIG", cp.kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("AVER_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(default_image)
            .args(["--namespace", namespace])
            .args(["--identity", identity])
            .arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&log)?))
            .stderr(Stdio::from(File::options().append(true).open(&log)?))
            .spawn()
            .context("cannot start aver-controller")?;
        Ok(Self {
            child: Some(child),
            metrics,
            identity: identity.to_owned(),
            log,
        })
    }

    /// Its log so far (last `lines` lines).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait (SIGKILL after a timeout).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }

    /// SIGKILL, as a crash: no Lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Value of a metric line (`name` or `name{labels}`) on `/metrics`, or
    /// `None` if the controller does not answer or lacks it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.metrics, "/metrics").await.ok()?;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.1 GET on loopback; the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await??;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}
