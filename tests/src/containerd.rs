//! A real containerd per test, and a CRI client that plays the kubelet.
//!
//! [`Containerd::start`] runs a private `containerd` (Debian's 1.6 with
//! runc and the CNI plugins) with its own root, state, socket, CNI network
//! (a bridge of its own on a /24 of `10.199.0.0/16`) and cgroup parent, and
//! imports the test images built by `scripts/images.sh` (no registry: a
//! static pause, busybox). Dropping it removes every pod through the CRI,
//! stops containerd, kills anything left in its cgroups, unmounts whatever
//! is mounted below its directory and deletes its bridge.
//!
//! [`CriClient`] talks CRI v1 over the unix socket the way the kubelet (or
//! `crictl`) does: pod sandboxes with a cgroup parent per instance,
//! containers, `ExecSync`, status and logs.
//!
//! Tests that need it start with [`require_containerd!`](crate::require_containerd),
//! which skips them (outside CI) when containerd, runc, the CNI plugins or
//! root are missing.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::controlplane::repo_root;
use crate::in_ci;

/// The sandbox ("infra") image, built from `tests/images/pause.c`.
pub const PAUSE_IMAGE: &str = "aver.test/pause:1";
/// A static busybox with `sh`, `sleep`, `cat`, `env`, `ls`, `nc`, `wget`, `id`.
pub const BUSYBOX_IMAGE: &str = "aver.test/busybox:1";
/// The containerd namespace the CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The default user of the test images.
pub const IMAGE_USER: i64 = 65532;

/// How long containerd gets to answer CRI with runtime and network ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a single CRI call may take before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Cgroup (below every controller's root) holding all the harness's pods:
/// `/aver-test/<instance>/pod<uid>/<container id>`.
const CGROUP_ROOT: &str = "/aver-test";
/// The pods of instance `n` get `10.199.n.0/24`.
const SUBNET_PREFIX: &str = "10.199";
/// Where subnet leases (one lock file per /24) live.
const LEASE_DIR: &str = "/run/aver-test-cni";
/// The CNI plugins, as Debian's containernetworking-plugins installs them.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

static INSTANCES: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------
// Prerequisites

/// What the harness needs and this machine lacks (empty when it can run).
pub fn containerd_missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !crate::process::is_root() {
        missing.push("root (containerd and runc need it)");
    }
    if !tool_runs("containerd", &["--version"]) || !tool_runs("ctr", &["--version"]) {
        missing.push("containerd (apt-get install containerd)");
    }
    if !tool_runs("runc", &["--version"]) {
        missing.push("runc (apt-get install runc)");
    }
    if ["bridge", "host-local", "loopback"]
        .iter()
        .any(|p| !Path::new(CNI_BIN_DIR).join(p).is_file())
    {
        missing.push("the CNI plugins (apt-get install containernetworking-plugins)");
    }
    if !tool_runs("ip", &["-V"]) {
        missing.push("ip (apt-get install iproute2)");
    }
    let built = ["pause", "busybox"]
        .iter()
        .all(|name| images_dir().join(format!("{name}.oci.tar")).is_file());
    if !built && (!tool_runs("gcc", &["--version"]) || !Path::new("/bin/busybox").is_file()) {
        missing.push("the test image inputs (apt-get install build-essential busybox-static)");
    }
    missing
}

/// Decides whether a test that needs containerd can run: `true` if it can;
/// `false` (after printing why) if something is missing outside CI; panics
/// under `CI=true`. Use through [`require_containerd!`](crate::require_containerd).
pub fn containerd_or_skip(test: &str) -> bool {
    let missing = containerd_missing();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if in_ci() {
        panic!("{test}: missing {why}, and CI=true forbids skipping (bash scripts/setup.sh installs them)");
    }
    // Straight to stderr: the harness would only show eprintln! of failures.
    let _ = writeln!(io::stderr(), "skipped: {test}: missing {why}");
    false
}

/// Returns early from the calling test when containerd cannot run here
/// (outside CI; under `CI=true` the test fails instead).
#[macro_export]
macro_rules! require_containerd {
    () => {
        if !$crate::containerd::containerd_or_skip(
            ::std::thread::current()
                .name()
                .unwrap_or(::std::module_path!()),
        ) {
            return;
        }
    };
}

fn tool_runs(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------
// Images

/// `target/images`, where `scripts/images.sh` writes the archives.
pub fn images_dir() -> PathBuf {
    target_dir().join("images")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// Runs `scripts/images.sh` once per test process (it is idempotent and
/// takes about a second; a lock in the script serialises test processes) and
/// returns the directory of the archives.
pub fn build_test_images() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let output = Command::new("bash")
                .arg(repo_root().join("scripts/images.sh"))
                .env("CARGO_TARGET_DIR", target_dir())
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run scripts/images.sh: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "scripts/images.sh failed ({}): {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            Ok(images_dir())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// An image imported into the instance, as the CRI resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The reference it was imported as, e.g. `aver.test/busybox:1`.
    pub reference: String,
    /// The image ID the CRI reports (the config digest, `sha256:...`).
    pub id: String,
    /// The manifest digest (`sha256:...`), what a registry would serve.
    pub digest: String,
}

// ---------------------------------------------------------------------------
// The containerd instance

/// A private containerd; stopped and cleaned up on drop (see the module
/// documentation).
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    bridge: String,
    subnet: String,
    cgroup_parent: String,
    snapshotter: String,
    images: Mutex<BTreeMap<String, ImportedImage>>,
    lease: Option<SubnetLease>,
}

impl Containerd {
    /// Starts containerd with everything below `dir` (which must exist and
    /// is left in place, with `containerd.log`) and imports the test images
    /// ([`PAUSE_IMAGE`], [`BUSYBOX_IMAGE`]), building them first if needed.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let containerd = Self::start_without_images(dir)?;
        containerd.import_test_images()?;
        Ok(containerd)
    }

    /// Starts containerd and waits until its CRI reports the runtime and the
    /// network ready, without importing anything. Nothing can run a pod
    /// until [`PAUSE_IMAGE`] is imported.
    pub fn start_without_images(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("{} must exist", dir.display()))?;
        let instance = format!(
            "{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let lease = SubnetLease::take()?;
        let snapshotter =
            std::env::var("AVER_CONTAINERD_SNAPSHOTTER").unwrap_or_else(|_| "overlayfs".into());
        let socket = dir.join("containerd.sock");
        // Unix socket paths are limited to 108 bytes (the shim's ttrpc
        // socket is this path plus ".ttrpc").
        if socket.as_os_str().len() > 90 {
            bail!("{} is too long for a unix socket path", socket.display());
        }
        let mut containerd = Self {
            child: None,
            socket,
            bridge: format!("avertest{}", lease.index),
            subnet: format!("{SUBNET_PREFIX}.{}.0/24", lease.index),
            cgroup_parent: format!("{CGROUP_ROOT}/{instance}"),
            snapshotter,
            images: Mutex::new(BTreeMap::new()),
            lease: Some(lease),
            dir,
        };
        containerd.write_config()?;
        let log = File::create(containerd.log_path())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(containerd.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd")?;
        containerd.child = Some(child);
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// The CRI (and containerd) gRPC socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The instance's directory (root, state, CNI config, pod logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The cgroup below which [`CriClient::run_pod`] puts this instance's
    /// pods (`/aver-test/<pid>-<n>`; the same path in every controller).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The Linux bridge of the pod network (created with the first pod).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pod network, e.g. `10.199.7.0/24`.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The snapshotter the CRI unpacks images with (`overlayfs`; override
    /// with `AVER_CONTAINERD_SNAPSHOTTER=native`).
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// A CRI client on this instance, putting pods below
    /// [`cgroup_parent`](Self::cgroup_parent) and their logs below the
    /// instance's directory.
    pub async fn cri(&self) -> anyhow::Result<CriClient> {
        Ok(CriClient::connect(&self.socket)
            .await?
            .with_cgroup_parent(&self.cgroup_parent)
            .with_log_root(self.dir.join("pods")))
    }

    /// Imports the pause and busybox images (building them first if this
    /// process has not yet).
    pub fn import_test_images(&self) -> anyhow::Result<()> {
        let dir = build_test_images()?;
        for name in ["pause", "busybox"] {
            self.import(&dir.join(format!("{name}.oci.tar")))?;
        }
        Ok(())
    }

    /// Imports an OCI archive into the CRI's namespace with `ctr images
    /// import` (unpacked for the CRI's snapshotter) and returns the image as
    /// the CRI resolves it. The archive's `io.containerd.image.name`
    /// annotation names it. The `<repository>@sha256:<manifest>` name a
    /// registry pull would create is added too, so the CRI reports
    /// `repo_digests` as for a pulled image.
    pub fn import(&self, archive: &Path) -> anyhow::Result<ImportedImage> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .args(["--snapshotter", &self.snapshotter])
            .arg(archive)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "ctr images import {} failed ({}): {stdout}{}",
                archive.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // "unpacking aver.test/busybox:1 (sha256:...)...done", per image.
        let mut imported = None;
        for line in stdout.lines() {
            let Some(rest) = line.strip_prefix("unpacking ") else {
                continue;
            };
            let Some((reference, rest)) = rest.split_once(" (") else {
                continue;
            };
            let Some((digest, _)) = rest.split_once(')') else {
                continue;
            };
            if reference.contains('@') {
                continue;
            }
            let (reference, digest) = (reference.to_owned(), digest.to_owned());
            self.tag_digest(&reference, &digest)?;
            let socket = self.socket.clone();
            let lookup = reference.clone();
            let image = block_on(async move {
                CriClient::connect(&socket)
                    .await?
                    .image_status(&lookup)
                    .await
            })?
            .with_context(|| format!("the CRI does not know {reference} after its import"))?;
            let image = ImportedImage {
                reference,
                id: image.id,
                digest,
            };
            self.images
                .lock()
                .unwrap()
                .insert(image.reference.clone(), image.clone());
            imported.get_or_insert(image);
        }
        imported.with_context(|| {
            format!(
                "ctr imported no named image from {}: {stdout}",
                archive.display()
            )
        })
    }

    /// Adds the `<repository>@<manifest digest>` name a registry pull
    /// creates (`ctr images import --digests` would name it after the
    /// archive, `import-<date>@sha256:...`).
    fn tag_digest(&self, reference: &str, digest: &str) -> anyhow::Result<()> {
        let repository = match reference.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => repository,
            _ => reference,
        };
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CRI_NAMESPACE, "images", "tag", "--force"])
            .arg(reference)
            .arg(format!("{repository}@{digest}"))
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr")?;
        if !output.status.success() {
            bail!(
                "ctr images tag {reference} {repository}@{digest} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The CRI image ID of an image imported by this instance.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        self.image(reference).map(|i| i.id)
    }

    /// An image imported by this instance.
    pub fn image(&self, reference: &str) -> Option<ImportedImage> {
        self.images.lock().unwrap().get(reference).cloned()
    }

    /// The last lines of containerd's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let cni_conf = self.dir.join("cni");
        let cni_data = self.dir.join("cni-ipam");
        for dir in [
            self.root(),
            self.state(),
            cni_conf.clone(),
            cni_data.clone(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let network = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("aver-test-{}", self.bridge),
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": cni_data,
                    "ranges": [[{ "subnet": self.subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            }],
        });
        fs::write(
            cni_conf.join("10-aver-test.conflist"),
            serde_json::to_vec_pretty(&network)?,
        )?;
        let config = format!(
            r#"# Generated by the aver test harness (tests/src/containerd.rs).
version = 2
root = {root:?}
state = {state:?}
# Only what the CRI needs: no aufs/btrfs/zfs/devmapper snapshotters, no
# /opt plugin directory, no tracing.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
# Fail at startup, not at the first request, if the CRI cannot load.
required_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {socket:?}

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here (as in many CI sandboxes): runc could not set
  # the sandbox's oom_score_adj of -998 below containerd's own.
  restrict_oom_score_adj = true
  # Network namespaces below the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = {cni_conf:?}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs: PID 1 is not systemd.
        SystemdCgroup = false
        # runc's state of this instance's containers, not /run/containerd/runc.
        Root = {runc_root:?}
"#,
            root = self.root(),
            state = self.state(),
            socket = self.socket,
            cni_conf = cni_conf,
            snapshotter = self.snapshotter,
            runc_root = self.state().join("runc"),
        );
        fs::write(self.dir.join("config.toml"), config)?;
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("the socket did not appear");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited ({status}) while starting:\n{}",
                    self.log_tail(30)
                );
            }
            if self.socket.exists() {
                let socket = self.socket.clone();
                match block_on(async move { CriClient::connect(&socket).await?.status().await }) {
                    Ok(status) => {
                        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
                        let ready =
                            |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
                        if ready("RuntimeReady") && ready("NetworkReady") {
                            return Ok(());
                        }
                        last = format!("not ready: {conditions:?}");
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "containerd's CRI not ready after {START_TIMEOUT:?} ({last}):\n{}",
            self.log_tail(30)
        )
    }

    /// Processes still running in this instance's cgroups.
    fn cgroup_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.cgroup_dirs() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Every cgroup directory of this instance, in every hierarchy, deepest
    /// first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let relative = self.cgroup_parent.trim_start_matches('/');
        let mut dirs = Vec::new();
        for hierarchy in cgroup_hierarchies() {
            collect_dirs(&hierarchy.join(relative), &mut dirs);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs
    }

    /// Shims started by this instance (their command line names our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let socket = self.socket.as_os_str().as_bytes();
        let mut pids = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let mut args = cmdline.split(|b| *b == 0);
            let is_shim = args
                .next()
                .is_some_and(|arg0| arg0.ends_with(b"containerd-shim-runc-v2"));
            if is_shim && args.any(|arg| arg == socket) {
                pids.push(pid);
            }
        }
        pids
    }

    fn cleanup(&mut self) {
        // 1. As the kubelet on a drained node: stop and remove every pod, so
        //    that shims exit, CNI releases addresses and mounts go away.
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if alive {
            let socket = self.socket.clone();
            let removed = block_on(async move {
                let mut cri = CriClient::connect(&socket).await?;
                tokio::time::timeout(Duration::from_secs(30), cri.remove_all_pods())
                    .await
                    .context("removing the pods timed out")?
            });
            if let Err(e) = removed {
                let _ = writeln!(io::stderr(), "containerd harness: removing pods: {e:#}");
            }
        }
        // 2. containerd itself: SIGTERM, then SIGKILL.
        if let Some(mut child) = self.child.take() {
            crate::process::stop(&mut child, Duration::from_secs(5));
        }
        // 3. Whatever survived: shims, then container processes.
        for pid in self.shim_pids().into_iter().chain(self.cgroup_pids()) {
            // At worst it no longer exists.
            if let Ok(pid) = u32::try_from(pid) {
                let _ = crate::process::signal(pid, crate::process::Signal::Kill);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.cgroup_pids().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // 4. Mounts below the directory (rootfs overlays, shm, netns).
        unmount_below(&self.dir);
        // 5. Cgroups (deepest first; empty ones only, which is all of them now).
        for dir in self.cgroup_dirs() {
            let _ = fs::remove_dir(&dir);
        }
        for hierarchy in cgroup_hierarchies() {
            let _ = fs::remove_dir(hierarchy.join(CGROUP_ROOT.trim_start_matches('/')));
        }
        // 6. The bridge (the CNI bridge plugin never deletes it).
        delete_link(&self.bridge);
        // 7. The big directories; the log and config stay for debugging.
        for dir in [self.root(), self.state(), self.dir.join("cni-ipam")] {
            let _ = fs::remove_dir_all(dir);
        }
        self.lease = None;
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The mounted cgroup hierarchies (v1 controllers, named ones, unified).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(unescape_mount_path(left.split(' ').nth(4)?)))
        })
        .collect()
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

fn unmount_below(dir: &Path) {
    // A mount point can be stacked; a few rounds get them all.
    for _ in 0..5 {
        let mounts = mounts_below(dir);
        if mounts.is_empty() {
            return;
        }
        for mount in mounts {
            // MNT_DETACH cannot block.
            let _ = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(code) = code {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an address starting with `prefix` is configured on the host.
fn host_uses(prefix: &str) -> bool {
    Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {prefix}")))
        .unwrap_or(true)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn delete_link(name: &str) {
    if link_exists(name) {
        let _ = Command::new("ip")
            .args(["link", "delete", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A /24 of `10.199.0.0/16` held by this process: a lock file per subnet,
/// locked while the instance lives (the kernel drops the lock if the test
/// process dies, so a crashed run frees its subnet).
struct SubnetLease {
    index: u8,
    _file: File,
}

impl SubnetLease {
    fn take() -> anyhow::Result<Self> {
        fs::create_dir_all(LEASE_DIR).with_context(|| format!("cannot create {LEASE_DIR}"))?;
        let start = std::process::id() as usize + INSTANCES.load(Ordering::Relaxed) as usize * 7;
        for k in 0..250 {
            let index = u8::try_from((start + k) % 250 + 1).expect("1..=250");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(Path::new(LEASE_DIR).join(format!("{index}.lock")))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(e).context("cannot lock a subnet lease"),
            }
            // A crashed run leaves its bridge (with the gateway address)
            // behind: the subnet is ours now, so it goes.
            delete_link(&format!("avertest{index}"));
            // Something else on the host using this range: leave it alone.
            if host_uses(&format!("{SUBNET_PREFIX}.{index}.")) {
                continue;
            }
            return Ok(Self { index, _file: file });
        }
        bail!("no free /24 in {SUBNET_PREFIX}.0.0/16 for a test pod network")
    }
}

/// Runs a future to completion on a fresh current-thread runtime in its own
/// thread, so that the synchronous fixture works inside and outside async
/// tests alike.
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
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
    .expect("the CRI helper thread does not panic")
}

// ---------------------------------------------------------------------------
// The CRI client

/// A pod sandbox and the configuration it was created with (which
/// `CreateContainer` needs again, as from the kubelet).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

/// What a container runs; [`CriClient::create_container`] turns it into a
/// `ContainerConfig` the way the kubelet would.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// `None`: the image's user (65532 for the test images).
    pub run_as_user: Option<i64>,
    pub working_dir: String,
    pub mounts: Vec<cri::Mount>,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            ..Self::default()
        }
    }

    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, command: I) -> Self {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn user(mut self, uid: i64) -> Self {
        self.run_as_user = Some(uid);
        self
    }

    /// A bind mount of a host path.
    pub fn mount(mut self, host_path: &Path, container_path: &str, readonly: bool) -> Self {
        self.mounts.push(cri::Mount {
            host_path: host_path.display().to_string(),
            container_path: container_path.to_owned(),
            readonly,
            ..Default::default()
        });
        self
    }
}

/// The result of `ExecSync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// A CRI v1 client over a unix socket.
#[derive(Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    cgroup_parent: String,
    log_root: PathBuf,
}

impl CriClient {
    /// Connects to a CRI socket (containerd's, or a proxy's). Pods go below
    /// `/aver-test/cri-<pid>` unless [`with_cgroup_parent`](Self::with_cgroup_parent)
    /// says otherwise.
    pub async fn connect(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        // The URI is required but unused: every connection goes to `path`.
        let channel = Endpoint::try_from("http://[::1]:50051")?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to the CRI at {shown}"))?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            cgroup_parent: format!("{CGROUP_ROOT}/cri-{}", std::process::id()),
            log_root: std::env::temp_dir().join("aver-cri-pods"),
        })
    }

    /// The cgroup below which pods are created (`<parent>/pod<uid>`).
    pub fn with_cgroup_parent(mut self, parent: &str) -> Self {
        self.cgroup_parent = parent.to_owned();
        self
    }

    /// The directory below which pod log directories are created
    /// (`<root>/<namespace>_<name>_<uid>`, like `/var/log/pods`).
    pub fn with_log_root(mut self, root: PathBuf) -> Self {
        self.log_root = root;
        self
    }

    /// The generated runtime service client, for calls without a helper.
    pub fn runtime(&mut self) -> &mut RuntimeServiceClient<Channel> {
        &mut self.runtime
    }

    /// The generated image service client.
    pub fn image_service(&mut self) -> &mut ImageServiceClient<Channel> {
        &mut self.images
    }

    pub async fn version(&mut self) -> anyhow::Result<cri::VersionResponse> {
        let request = cri::VersionRequest {
            version: "v1".into(),
        };
        Ok(timed(self.runtime.version(request)).await?.into_inner())
    }

    pub async fn status(&mut self) -> anyhow::Result<cri::StatusResponse> {
        let request = cri::StatusRequest { verbose: false };
        Ok(timed(self.runtime.status(request)).await?.into_inner())
    }

    /// `ImageStatus` of a reference or ID; `None` if the image is unknown.
    pub async fn image_status(&mut self, image: &str) -> anyhow::Result<Option<cri::Image>> {
        let request = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        Ok(timed(self.images.image_status(request))
            .await?
            .into_inner()
            .image)
    }

    pub async fn list_images(&mut self) -> anyhow::Result<Vec<cri::Image>> {
        let request = cri::ListImagesRequest { filter: None };
        Ok(timed(self.images.list_images(request))
            .await?
            .into_inner()
            .images)
    }

    /// The sandbox configuration the kubelet would send for a pod: its
    /// cgroup below the client's parent (`<parent>/pod<uid>`), network and
    /// IPC namespaces of the pod, a PID namespace per container (the
    /// kubelet's default), logs in `<log root>/<namespace>_<name>_<uid>`.
    pub fn pod_config(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        labels: &[(&str, &str)],
    ) -> cri::PodSandboxConfig {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: namespace.to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: self
                .log_root
                .join(format!("{namespace}_{name}_{uid}"))
                .display()
                .to_string(),
            labels,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{uid}", self.cgroup_parent),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod sandbox (the pause container and its network) configured
    /// by [`pod_config`](Self::pod_config).
    pub async fn run_pod(
        &mut self,
        namespace: &str,
        name: &str,
        uid: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Pod> {
        let config = self.pod_config(namespace, name, uid, labels);
        self.run_pod_with_config(config).await
    }

    pub async fn run_pod_with_config(
        &mut self,
        config: cri::PodSandboxConfig,
    ) -> anyhow::Result<Pod> {
        if !config.log_directory.is_empty() {
            fs::create_dir_all(&config.log_directory)
                .with_context(|| format!("cannot create {}", config.log_directory))?;
        }
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = timed(self.runtime.run_pod_sandbox(request))
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// Creates (does not start) a container in `pod`, as the kubelet would:
    /// the pod's namespaces, logs at `<pod log dir>/<name>/0.log`.
    pub async fn create_container(
        &mut self,
        pod: &Pod,
        spec: ContainerSpec,
    ) -> anyhow::Result<String> {
        let log_path = format!("{}/0.log", spec.name);
        if !pod.config.log_directory.is_empty() {
            fs::create_dir_all(Path::new(&pod.config.log_directory).join(&spec.name))?;
        }
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(image_spec(&spec.image)),
            command: spec.command,
            args: spec.args,
            working_dir: spec.working_dir,
            envs: spec
                .env
                .into_iter()
                .map(|(key, value)| cri::KeyValue { key, value })
                .collect(),
            mounts: spec.mounts,
            labels: spec.labels.into_iter().collect(),
            log_path,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(pod_namespaces()),
                    run_as_user: spec.run_as_user.map(|value| cri::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_container_with_config(&pod.id, &pod.config, config)
            .await
            .with_context(|| format!("CreateContainer {}", spec.name))
    }

    pub async fn create_container_with_config(
        &mut self,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> anyhow::Result<String> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        Ok(timed(self.runtime.create_container(request))
            .await?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> anyhow::Result<()> {
        let request = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        timed(self.runtime.start_container(request))
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// `ExecSync`: runs `cmd` in the container and waits for it (at most
    /// `timeout`).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let request = cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        let response = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            self.runtime.exec_sync(request),
        )
        .await
        .context("ExecSync timed out")?
        .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
        .into_inner();
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
            exit_code: response.exit_code,
        })
    }

    pub async fn container_status(&mut self, id: &str) -> anyhow::Result<cri::ContainerStatus> {
        Ok(self.container_status_verbose(id, false).await?.0)
    }

    /// The container's main process as seen from the host (from the
    /// runtime's verbose status), e.g. to read `/proc/<pid>/cgroup`.
    pub async fn container_pid(&mut self, id: &str) -> anyhow::Result<u32> {
        let (_, info) = self.container_status_verbose(id, true).await?;
        let info = info
            .get("info")
            .context("the verbose container status has no info")?;
        let info: serde_json::Value = serde_json::from_str(info)?;
        info.get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid != 0)
            .with_context(|| format!("no pid in the container's info: {info}"))
    }

    async fn container_status_verbose(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> anyhow::Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose,
        };
        let response = timed(self.runtime.container_status(request))
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner();
        let status = response
            .status
            .with_context(|| format!("no status for container {id}"))?;
        Ok((status, response.info))
    }

    /// Waits until the container has exited and returns its final status.
    pub async fn wait_exited(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<cri::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id).await?;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} still not exited after {timeout:?}: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The container's output so far (stdout and stderr interleaved), with
    /// the CRI log format (`<time> <stream> <P|F> <text>`) removed.
    pub async fn container_logs(&mut self, id: &str) -> anyhow::Result<String> {
        let status = self.container_status(id).await?;
        let log = fs::read_to_string(&status.log_path)
            .with_context(|| format!("cannot read {}", status.log_path))?;
        let mut text = String::new();
        for line in log.lines() {
            let mut fields = line.splitn(4, ' ');
            let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
            text.push_str(fields.next().unwrap_or(""));
            if tag != Some("P") {
                text.push('\n');
            }
        }
        Ok(text)
    }

    pub async fn stop_container(&mut self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let request = cri::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        timed(self.runtime.stop_container(request))
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> anyhow::Result<()> {
        let request = cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        timed(self.runtime.remove_container(request))
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        Ok(())
    }

    pub async fn pod_status(&mut self, id: &str) -> anyhow::Result<cri::PodSandboxStatus> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        timed(self.runtime.pod_sandbox_status(request))
            .await
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .with_context(|| format!("no status for pod {id}"))
    }

    /// Stops the pod's containers and its sandbox (network torn down).
    pub async fn stop_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        timed(self.runtime.stop_pod_sandbox(request))
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    /// Removes a stopped pod and its containers.
    pub async fn remove_pod(&mut self, id: &str) -> anyhow::Result<()> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        timed(self.runtime.remove_pod_sandbox(request))
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    pub async fn list_pods(&mut self) -> anyhow::Result<Vec<cri::PodSandbox>> {
        let request = cri::ListPodSandboxRequest { filter: None };
        Ok(timed(self.runtime.list_pod_sandbox(request))
            .await?
            .into_inner()
            .items)
    }

    pub async fn list_containers(&mut self) -> anyhow::Result<Vec<cri::Container>> {
        let request = cri::ListContainersRequest { filter: None };
        Ok(timed(self.runtime.list_containers(request))
            .await?
            .into_inner()
            .containers)
    }

    /// Stops and removes every pod (and so every container).
    pub async fn remove_all_pods(&mut self) -> anyhow::Result<()> {
        for pod in self.list_pods().await? {
            self.stop_pod(&pod.id).await?;
            self.remove_pod(&pod.id).await?;
        }
        Ok(())
    }
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// Network and IPC shared by the pod, PID per container (the kubelet's
/// default without `shareProcessNamespace`).
fn pod_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    }
}

async fn timed<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<tonic::Response<T>> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(status)) => Err(anyhow::anyhow!(
            "CRI error {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => bail!("CRI call timed out after {CALL_TIMEOUT:?}"),
    }
}
