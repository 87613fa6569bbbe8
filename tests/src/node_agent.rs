//! A hardened node as the tests see it: a software TPM, a private
//! containerd, and the real `aver-node serve` in front of it, playing the
//! CRI runtime for a kubelet that the test plays with [`CriClient`].
//!
//! [`NodeAgent::start`] starts, under one temporary directory:
//!
//! - a [`Swtpm`] (the node's TPM, PCRs reset as after a boot);
//! - a [`Containerd`] with the test images and the images of the
//!   workspace's binaries (`scripts/images.sh --project`:
//!   [`ENCLAVE_IMAGE`], [`STUB_ENGINE_IMAGE`], [`AGENT_PROBE_IMAGE`]);
//! - `aver-node serve` with its CRI socket, its agent socket in a directory
//!   of its own (the directory pods mount, like `/run/aver-node`), its
//!   state directory, a kubelet root for pod volumes, and a node policy
//!   file that allows that agent socket directory.
//!
//! [`NodeAgent::cri`] is a CRI client on `aver-node`'s socket (the gate),
//! [`NodeAgent::runtime_cri`] one on containerd's (behind the gate, to see
//! what really exists). [`NodeAgent::restart`] restarts `aver-node` on the
//! same TPM, state and containerd; [`NodeAgent::node_log`] reads the node
//! log it keeps in its state directory.
//!
//! Needs what [`require_containerd!`](crate::require_containerd) and
//! [`require_swtpm!`](crate::require_swtpm) check, and the workspace's
//! binaries built (`cargo build --workspace --bins`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aver_node_log::NodeLogEntry;

use crate::containerd::{images_dir, Containerd, CriClient, ImportedImage};
use crate::controlplane::repo_root;
use crate::slow_tpm::{Delays, SlowTpm};
use crate::{cargo_bin, Swtpm};

/// `aver-enclave`, dynamically linked, with the swtpm and device TCTIs.
pub const ENCLAVE_IMAGE: &str = "aver.test/enclave:dev";
/// `aver-stub-engine`: an OpenAI-shaped echo server on the address given
/// as its first argument.
pub const STUB_ENGINE_IMAGE: &str = "aver.test/stub-engine:dev";
/// busybox plus `unix-http SOCKET METHOD PATH [BODY]`.
pub const AGENT_PROBE_IMAGE: &str = "aver.test/agent-probe:1";
/// Where confidential containers mount the agent socket directory, and the
/// socket inside it (the enclave's `--node-agent`).
pub const AGENT_MOUNT: &str = "/run/aver-node";
pub const AGENT_SOCKET_IN_POD: &str = "/run/aver-node/agent.sock";
/// The PCR the node log is extended into.
pub const NODE_PCR: u8 = aver_crds::policy::DEFAULT_WORKLOAD_PCR;

/// How long aver-node gets to answer the CRI after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long aver-node gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The node policy [`NodeAgent::start`] uses: confidential pods with the
/// default container names (`enclave`, `engine`; `enclave` holds the key
/// and gets the agent socket from aver-node), no host paths, and no system
/// pods. `_agent_dir` is where this node keeps its agent socket, for
/// policies that want to refuse or allow it by path.
pub fn default_node_policy(_agent_dir: &Path) -> String {
    "# aver-node test policy\n\
     version: 1\n\
     confidential:\n\
     \x20 containers: [enclave, engine]\n\
     \x20 keyHolder: enclave\n"
        .to_owned()
}

/// A node: TPM, containerd and aver-node; everything is stopped and
/// removed on drop (aver-node first, then containerd's pods, containerd,
/// the TPM, the directory).
pub struct NodeAgent {
    node: Option<Child>,
    // Declared in drop order after `node`, which Drop stops by hand.
    containerd: Containerd,
    /// aver-node's way to the TPM: a pass-through relay, so that a test can
    /// extend a PCR while aver-node holds swtpm's only connection.
    relay: SlowTpm,
    tpm: Swtpm,
    policy: String,
    ak_name: String,
    images: Vec<ImportedImage>,
    dir: tempfile::TempDir,
}

impl NodeAgent {
    /// Starts a node with [`default_node_policy`]. Blocking (it waits for
    /// containerd and aver-node): call it from `spawn_blocking` in async
    /// tests.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_policy(default_node_policy)
    }

    /// Starts a node whose policy file is `policy(agent socket directory)`.
    pub fn start_with_policy(policy: impl FnOnce(&Path) -> String) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aver-node-")
            .tempdir()
            .context("cannot create the node's directory")?;
        let root = dir.path();
        for sub in ["containerd", "state", "kubelet"] {
            fs::create_dir_all(root.join(sub))?;
        }
        // The agent directory is bind-mounted into pods whose processes are
        // not root (65532): they must be able to reach the socket in it.
        let agent_dir = root.join("agent");
        fs::create_dir_all(&agent_dir)?;
        fs::set_permissions(&agent_dir, fs::Permissions::from_mode(0o755))?;
        let policy = policy(&agent_dir);
        fs::write(root.join("node-policy.yaml"), &policy)?;

        let tpm = Swtpm::start().context("the node's TPM")?;
        let images = build_project_images()?;
        let containerd = Containerd::start(&root.join("containerd"))?;
        let mut imported = Vec::new();
        for name in ["enclave", "stub-engine", "agent-probe"] {
            imported.push(containerd.import(&images.join(format!("{name}.oci.tar")))?);
        }
        // The AK is created (and persisted) before serve takes the TPM:
        // swtpm serves one connection at a time and aver-node keeps its own.
        let ak_name = run_ak(&tpm)?;
        let relay = SlowTpm::start(&tpm, Delays::default()).context("the TPM relay")?;
        let mut node = Self {
            node: None,
            containerd,
            relay,
            tpm,
            policy,
            ak_name,
            images: imported,
            dir,
        };
        node.spawn_node()?;
        Ok(node)
    }

    fn spawn_node(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(cargo_bin("aver-node"))
            .arg("serve")
            .arg("--listen")
            .arg(self.cri_socket())
            .arg("--runtime-endpoint")
            .arg(self.containerd.socket_path())
            .arg("--agent-socket")
            .arg(self.agent_socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--policy")
            .arg(self.policy_path())
            .args(["--tcti", &self.relay.tcti()])
            .args(["--pcr", &NODE_PCR.to_string()])
            .arg("--kubelet-root")
            .arg(self.kubelet_root())
            .env("RUST_LOG", "info,aver_node=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start aver-node (cargo build --workspace --bins)")?;
        self.node = Some(child);
        self.wait_ready()
    }

    /// Waits until aver-node answers CRI `Version` (which it forwards to
    /// containerd) and its agent socket exists.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("the CRI socket did not appear");
        while Instant::now() < deadline {
            if let Some(status) = self.node.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.node = None;
                bail!(
                    "aver-node exited ({status}) while starting:\n{}",
                    self.log_tail(30)
                );
            }
            if self.cri_socket().exists() {
                let socket = self.cri_socket();
                match block_on(async move { CriClient::connect(&socket).await?.version().await }) {
                    Ok(_) if self.agent_socket().exists() => return Ok(()),
                    Ok(_) => last = "the agent socket did not appear".into(),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "aver-node did not answer the CRI within {READY_TIMEOUT:?} ({last}):\n{}",
            self.log_tail(30)
        )
    }

    /// Stops aver-node (SIGTERM, then SIGKILL after a grace period).
    /// Containers keep running: they belong to containerd.
    pub fn stop_node(&mut self) {
        if let Some(mut child) = self.node.take() {
            crate::process::stop(&mut child, STOP_GRACE);
        }
    }

    /// Restarts aver-node on the same TPM, state directory, policy and
    /// containerd, and waits until it answers again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_node();
        self.spawn_node()
    }

    /// Whether aver-node is running.
    pub fn node_running(&mut self) -> bool {
        self.node
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// A CRI client on aver-node's socket: the kubelet's view, through the
    /// gate. Pods go below containerd's cgroup parent, logs below its
    /// directory.
    pub async fn cri(&self) -> anyhow::Result<CriClient> {
        Ok(CriClient::connect(self.cri_socket())
            .await?
            .with_cgroup_parent(self.containerd.cgroup_parent())
            .with_log_root(self.containerd.dir().join("pods")))
    }

    /// A CRI client on containerd's own socket, behind the gate.
    pub async fn runtime_cri(&self) -> anyhow::Result<CriClient> {
        self.containerd.cri().await
    }

    /// The node log as aver-node stores it in its state directory (every
    /// committed event since the TPM was reset, oldest first).
    pub fn node_log(&self) -> anyhow::Result<Vec<NodeLogEntry>> {
        let path = self.state_dir().join("node-log.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut stored: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        serde_json::from_value(stored["entries"].take())
            .with_context(|| format!("{} has no node log entries", path.display()))
    }

    /// Creates `<kubelet root>/pods/<uid>/volumes/<plugin>/<name>` (mode
    /// 0755), where the kubelet would put a pod volume, and returns it.
    pub fn pod_volume(&self, uid: &str, plugin: &str, name: &str) -> anyhow::Result<PathBuf> {
        let path = self
            .kubelet_root()
            .join("pods")
            .join(uid)
            .join("volumes")
            .join(plugin)
            .join(name);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// An image imported into containerd by the fixture or the harness.
    pub fn image(&self, reference: &str) -> ImportedImage {
        self.images
            .iter()
            .find(|i| i.reference == reference)
            .cloned()
            .or_else(|| self.containerd.image(reference))
            .unwrap_or_else(|| panic!("{reference} was not imported"))
    }

    /// The TPM name of the node's AK (`aver-node ak`), for `trust.akNames`.
    pub fn ak_name(&self) -> &str {
        &self.ak_name
    }

    /// The node policy file, verbatim.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    pub fn tpm(&self) -> &Swtpm {
        &self.tpm
    }

    /// Extends PCR `pcr` of the node's TPM with `data` behind aver-node's
    /// back, as anything else with access to the TPM could.
    pub fn extend_pcr(&self, pcr: u8, data: [u8; 32]) -> anyhow::Result<()> {
        self.relay.extend_pcr(u32::from(pcr), data)
    }

    /// The swtpm's TCP port (its control port is the next one).
    pub fn tpm_port(&self) -> u16 {
        self.tpm
            .tcti()
            .rsplit("port=")
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the swtpm TCTI names its port")
    }

    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    /// The directory holding the agent socket, which pods mount.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.agent_dir().join("agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("node-policy.yaml")
    }

    /// aver-node's stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("aver-node.log")
    }

    /// The last lines of aver-node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// The ends of aver-node's and containerd's logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- aver-node log (end):\n{}\n--- containerd log (end):\n{}",
            self.log_tail(60),
            self.containerd.log_tail(30)
        )
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "node agent fixture: the test failed\n{}\n",
                    self.diagnostics()
                )
                .as_bytes(),
            );
        }
        self.stop_node();
        // Then the fields: containerd removes its pods and stops, swtpm
        // stops, the directory goes.
    }
}

/// Runs `scripts/images.sh --project` once per test process (the script
/// skips images whose inputs did not change) and returns the directory of
/// the archives.
pub fn build_project_images() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = images_dir();
            let target = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            let output = Command::new("bash")
                .arg(repo_root().join("scripts/images.sh"))
                .arg("--project")
                .env("CARGO_TARGET_DIR", target)
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run scripts/images.sh --project: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "scripts/images.sh --project failed ({}): {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            Ok(dir)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn run_ak(tpm: &Swtpm) -> anyhow::Result<String> {
    let output = Command::new(cargo_bin("aver-node"))
        .arg("ak")
        .args(["--tcti", &tpm.tcti()])
        .stdin(Stdio::null())
        .output()
        .context("cannot run aver-node ak")?;
    if !output.status.success() {
        bail!(
            "aver-node ak failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = File::open(path)
        .ok()
        .and_then(|mut f| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut f, &mut s).ok()?;
            Some(s)
        })
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a future on a fresh runtime in its own thread, so that the
/// blocking fixture works inside and outside async tests.
fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    })
    .join()
    .expect("the helper thread does not panic")
}
