//! Real nodes for the end-to-end tests: the upstream kubelet (built into
//! the control-plane fixture, `aver-controlplane kubelet`) in front of a
//! private containerd, registered with the fixture's API server.
//!
//! [`RealNode::start_tpm`] is a hardened TPM node: swtpm, containerd and
//! aver-node ([`NodeAgent`]) with the kubelet talking CRI to aver-node, so
//! every pod the scheduler binds there is measured below the pod.
//! [`RealNode::start_plain`] is a node without TPM or label, where no
//! enclave may land. Every node shares this machine's network namespace and
//! filesystem; what keeps them apart is their own kubelet root, containerd
//! root, cgroup root, CNI bridge and subnet, and ports.
//!
//! Every node's InternalIP is this machine's address (the kubelet refuses a
//! loopback one); the kubelets listen there on ports of their own.
//!
//! The kubelet runs with the cgroupfs driver (PID 1 is not systemd here),
//! the admin kubeconfig of the fixture (the API server runs RBAC only, no
//! Node authorizer), no static pods, and eviction thresholds low enough
//! that a busy CI disk does not evict the test's pods.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use aver_node_log::NodeEvent;
use aver_verifier::Sha256Digest;

use crate::containerd::Containerd;
use crate::controlplane::{fixture, free_port, stop_child, tail, ControlPlane};
use crate::node_agent::{build_project_images, NodeAgent};

/// Label of nodes with a TPM (the controller's default `--tpm-node-label`).
pub const TPM_LABEL: (&str, &str) = ("aver.dev/tpm", "true");
/// Taint of hardened TPM nodes, which the controller's pods tolerate.
pub const HARDENED_TAINT: &str = "aver.dev/hardened";
/// How long a kubelet gets to register its Node and report it Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What runs the node's containers.
enum Runtime {
    /// TPM node: aver-node in front of containerd.
    Agent(Box<NodeAgent>),
    /// Plain node: containerd only, and the directory it lives in (dropped
    /// after it).
    Plain {
        containerd: Box<Containerd>,
        _dir: tempfile::TempDir,
    },
}

/// One real node. Dropping it stops the kubelet first, then the runtime
/// (which removes every pod and container it ran).
pub struct RealNode {
    /// The Node's name.
    pub name: String,
    kubelet: Option<Child>,
    runtime: Runtime,
    dir: tempfile::TempDir,
    /// The kubelet's HTTPS port (logs, exec; `status.daemonEndpoints`).
    pub port: u16,
}

impl RealNode {
    /// A hardened TPM node: labelled [`TPM_LABEL`], tainted
    /// [`HARDENED_TAINT`], its pods measured by aver-node under the node
    /// policy `policy`. Blocking.
    pub fn start_tpm(cp: &ControlPlane, name: &str, policy: &str) -> anyhow::Result<Self> {
        let policy = policy.to_owned();
        let agent = NodeAgent::start_with_policy(move |_| policy)
            .context("the node's TPM, containerd and aver-node")?;
        let cri = agent.cri_socket();
        let root = agent.kubelet_root();
        let cgroup = agent.containerd().cgroup_parent().to_owned();
        Self::start(
            cp,
            name,
            Runtime::Agent(Box::new(agent)),
            &cri,
            &root,
            &cgroup,
            &[TPM_LABEL],
            &[format!("{HARDENED_TAINT}=true:NoSchedule")],
        )
    }

    /// A node without TPM, label or taint, with the stub engine image
    /// (for workloads that are not confidential). Blocking.
    pub fn start_plain(cp: &ControlPlane, name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aver-plain-")
            .tempdir()
            .context("cannot create the node's directory")?;
        let containerd = Containerd::start(dir.path())?;
        containerd.import(&build_project_images()?.join("stub-engine.oci.tar"))?;
        let cri = containerd.socket_path().to_owned();
        let root = dir.path().join("kubelet");
        fs::create_dir_all(&root)?;
        let cgroup = containerd.cgroup_parent().to_owned();
        Self::start(
            cp,
            name,
            Runtime::Plain {
                containerd: Box::new(containerd),
                _dir: dir,
            },
            &cri,
            &root,
            &cgroup,
            &[],
            &[],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        cp: &ControlPlane,
        name: &str,
        runtime: Runtime,
        cri_socket: &Path,
        root_dir: &Path,
        cgroup_root: &str,
        labels: &[(&str, &str)],
        taints: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aver-kubelet-")
            .tempdir()
            .context("cannot create the kubelet's directory")?;
        make_cgroup_root(cgroup_root)?;
        let port = free_port()?;
        let healthz = free_port()?;
        let config = dir.path().join("kubelet.yaml");
        fs::write(
            &config,
            kubelet_config(
                cri_socket,
                cgroup_root,
                &host_ip()?.to_string(),
                port,
                healthz,
                taints,
            ),
        )?;
        let log = File::create(dir.path().join("kubelet.log"))?;
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(&fixture()?.binary);
        cmd.arg("kubelet")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg(format!("--root-dir={}", root_dir.display()))
            .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
            .arg(format!("--hostname-override={name}"))
            .arg(format!("--node-ip={}", host_ip()?))
            .arg("--v=2");
        if !labels.is_empty() {
            cmd.arg(format!("--node-labels={labels}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the kubelet (bash scripts/e2e.sh build)")?;
        Ok(Self {
            name: name.to_owned(),
            kubelet: Some(child),
            runtime,
            dir,
            port,
        })
    }

    /// Waits until the Node is registered and Ready.
    pub async fn wait_ready(&mut self, client: &kube::Client) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .kubelet
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "kubelet of {} exited ({status}):\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            let ready = nodes
                .get_opt(&self.name)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "node {} not Ready after {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The node's aver-node, swtpm and containerd (TPM nodes only).
    pub fn agent(&self) -> Option<&NodeAgent> {
        match &self.runtime {
            Runtime::Agent(agent) => Some(agent),
            Runtime::Plain { .. } => None,
        }
    }

    /// The node's containerd.
    pub fn containerd(&self) -> &Containerd {
        match &self.runtime {
            Runtime::Agent(agent) => agent.containerd(),
            Runtime::Plain { containerd, .. } => containerd,
        }
    }

    /// The kubelet's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kubelet.log")
    }

    /// The last `lines` lines of the kubelet's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Stops the kubelet (its containers keep running, as on a real node).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut child) = self.kubelet.take() {
            stop_child(&mut child);
        }
    }

    /// Everything that could explain a failure on this node.
    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "--- kubelet {} ---\n{}\n--- containerd ---\n{}\n",
            self.name,
            self.log_tail(30),
            self.containerd().log_tail(15)
        );
        if let Some(agent) = self.agent() {
            out.push_str(&agent.diagnostics());
        }
        out
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // Before the runtime (a field, dropped after this): a kubelet left
        // running would restart what the runtime's cleanup removes.
        self.stop_kubelet();
    }
}

/// The kubelet's configuration file.
fn kubelet_config(
    cri_socket: &Path,
    cgroup_root: &str,
    address: &str,
    port: u16,
    healthz: u16,
    taints: &[String],
) -> String {
    let endpoint = format!("unix://{}", cri_socket.display());
    let taints = taints
        .iter()
        .map(|t| {
            let (kv, effect) = t.split_once(':').unwrap_or((t, "NoSchedule"));
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            format!("- key: {key}\n  value: \"{value}\"\n  effect: {effect}\n")
        })
        .collect::<String>();
    let taints = if taints.is_empty() {
        "registerWithTaints: []\n".to_owned()
    } else {
        format!("registerWithTaints:\n{taints}")
    };
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: {endpoint}
imageServiceEndpoint: {endpoint}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
resolvConf: /etc/resolv.conf
staticPodPath: \"\"
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 30s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
evictionPressureTransitionPeriod: 10s
maxPods: 20
serializeImagePulls: false
shutdownGracePeriod: 0s
rotateCertificates: false
serverTLSBootstrap: false
localStorageCapacityIsolation: true
{taints}"
    )
}

/// This machine's address on its default route: every node's InternalIP
/// (the kubelet refuses a loopback node IP), told apart by port.
pub fn host_ip() -> anyhow::Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // No packet is sent: connecting a UDP socket only picks the route.
    socket
        .connect("192.0.2.1:9")
        .context("no default route to find this machine's address")?;
    Ok(socket.local_addr()?.ip())
}

/// Creates the node's cgroup root in every cgroup v1 hierarchy (the kubelet
/// requires it to exist), with cpuset's CPUs and memory nodes copied from
/// the parent, which a new cpuset cgroup does not inherit.
fn make_cgroup_root(cgroup_root: &str) -> anyhow::Result<()> {
    let relative = cgroup_root.trim_start_matches('/');
    let mounts = fs::read_to_string("/proc/self/mounts").context("cannot read the mounts")?;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (_, path, fstype) = (fields.next(), fields.next(), fields.next());
        let (Some(path), Some("cgroup")) = (path, fstype) else {
            continue;
        };
        let hierarchy = Path::new(path);
        let mut dir = hierarchy.to_path_buf();
        for part in relative.split('/') {
            let parent = dir.clone();
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir)
                    .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = dir.join(file);
                if own.exists() && fs::read_to_string(&own)?.trim().is_empty() {
                    let inherited = fs::read_to_string(parent.join(file))?;
                    fs::write(&own, inherited.trim())
                        .with_context(|| format!("cannot write {}", own.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// The nodes of one test cluster, all Ready, and a host directory for model
/// files that every node sees (they share this machine's filesystem).
pub struct RealNodes {
    /// TPM nodes first (`<prefix>-tpm-N`), then plain ones (`<prefix>-plain-N`).
    pub nodes: Vec<RealNode>,
    /// The node policy of every TPM node (model files below
    /// [`Self::models_dir`] allowed read-only).
    pub policy: String,
    models: tempfile::TempDir,
}

impl RealNodes {
    /// Starts the nodes in parallel and waits until the API server reports
    /// each Ready.
    pub async fn start(
        cp: &ControlPlane,
        client: &kube::Client,
        prefix: &str,
        tpm: usize,
        plain: usize,
    ) -> anyhow::Result<Self> {
        let models = tempfile::Builder::new()
            .prefix("aver-e2e-models-")
            .tempdir()
            .context("cannot create the model directory")?;
        // The enclave and engine run as 65532 and read the model files.
        fs::set_permissions(
            models.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let policy = format!(
            "# aver-node e2e policy\n\
             version: 1\n\
             confidential:\n\
             \x20 containers: [enclave, engine]\n\
             \x20 keyHolder: enclave\n\
             \x20 hostPaths:\n\
             \x20 - path: {}\n\
             \x20   readOnly: true\n",
            models.path().display()
        );
        let names: Vec<(String, bool)> = (0..tpm)
            .map(|i| (format!("{prefix}-tpm-{i}"), true))
            .chain((0..plain).map(|i| (format!("{prefix}-plain-{i}"), false)))
            .collect();
        let started: Vec<anyhow::Result<RealNode>> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = names
                    .iter()
                    .map(|(name, tpm)| {
                        let policy = &policy;
                        scope.spawn(move || {
                            if *tpm {
                                RealNode::start_tpm(cp, name, policy)
                            } else {
                                RealNode::start_plain(cp, name)
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("node start panicked")))
                    })
                    .collect()
            })
        });
        let mut nodes = Vec::with_capacity(started.len());
        for node in started {
            nodes.push(node?);
        }
        for node in &mut nodes {
            node.wait_ready(client).await?;
        }
        Ok(Self {
            nodes,
            policy,
            models,
        })
    }

    /// The directory model files go in (a `hostPath` model source below
    /// it is allowed by every TPM node's policy).
    pub fn models_dir(&self) -> &Path {
        self.models.path()
    }

    /// `reference` (an image the TPM nodes imported, e.g.
    /// `aver.test/enclave:dev`) as `repository@sha256:<manifest digest>`,
    /// what a pod spec pins.
    pub fn image_by_digest(&self, reference: &str) -> String {
        let repository = match reference.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => repository,
            _ => reference,
        };
        format!("{repository}@{}", self.manifest_digest(reference))
    }

    /// The manifest digest of an image the TPM nodes imported (the same
    /// bytes everywhere: the images are reproducible).
    pub fn manifest_digest(&self, reference: &str) -> Sha256Digest {
        let agent = self
            .tpm_nodes()
            .find_map(RealNode::agent)
            .expect("a TPM node");
        Sha256Digest::parse(&agent.image(reference).digest).expect("a sha256 digest")
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&RealNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The TPM nodes.
    pub fn tpm_nodes(&self) -> impl Iterator<Item = &RealNode> {
        self.nodes.iter().filter(|n| n.agent().is_some())
    }

    /// The AK names of the TPM nodes.
    pub fn ak_names(&self) -> Vec<String> {
        self.tpm_nodes()
            .filter_map(|n| n.agent().map(|a| a.ak_name().to_owned()))
            .collect()
    }

    /// Whether an enclave on one of the nodes registered `spki` with its
    /// aver-node: the truth published endpoints are checked against.
    pub fn served(&self, spki: &Sha256Digest) -> bool {
        self.tpm_nodes().filter_map(|n| n.agent()).any(|agent| {
            agent.node_log().is_ok_and(|log| {
                log.iter().any(|e| {
                    matches!(&e.event, NodeEvent::TlsKey { spki_sha256, .. } if spki_sha256 == spki)
                })
            })
        })
    }

    /// Everything that could explain a failure, node by node.
    pub fn diagnostics(&self) -> String {
        self.nodes.iter().map(RealNode::diagnostics).collect()
    }
}
