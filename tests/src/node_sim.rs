//! A node simulator: stands in for the kubelets of a cluster whose control
//! plane is real (see [`crate::controlplane`]).
//!
//! It registers Nodes, each TPM node with its own swtpm, and runs every Pod
//! the real scheduler binds to one of them the way a kubelet would:
//!
//! - the pod gets its own loopback address (`127.X.N.P`: X per simulator,
//!   N per node, P per pod), written to `status.podIP`; the node's address
//!   is `127.X.N.1` (`status.hostIP`, the Node's InternalIP);
//! - the `aver-enclave` container runs the workspace's `aver-enclave` with the
//!   container's own args and env: downward-API env vars are resolved,
//!   `$(VAR)` references expanded, and what only exists inside a pod mapped
//!   onto this machine — `hostPath` volumes onto a directory per node (its
//!   "root filesystem"), listening on all interfaces onto the pod address,
//!   the pod's `127.0.0.1` onto the pod address, the TPM (a device, or a
//!   TCTI naming the node) onto the node's swtpm;
//! - every other container is the inference engine, played by the stub
//!   OpenAI engine on the pod address at the port the enclave proxies to;
//! - the readiness probe is the pod's own (HTTPS GET, certificate not
//!   checked, as a kubelet does); the pod is reported Running, and Ready once
//!   the probe passes; a container that exits is restarted, as with
//!   `restartPolicy: Always`;
//! - a pod being deleted has its processes stopped and is then removed
//!   (grace period 0, UID precondition), which is what lets a replacement
//!   that must not share the node (pod anti-affinity) be scheduled.
//!
//! The simulator records the certificate each enclave really serves, so
//! tests compare what the controller publishes with the truth.

mod kubelet;
mod pod_spec;
mod probe;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use aver_verifier::Sha256Digest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{cargo_bin, Swtpm};

/// Name of the enclave container in the controller's pod template.
pub const ENCLAVE_CONTAINER: &str = "aver-enclave";
/// Label of nodes with a TPM (the controller's default `--tpm-node-label`).
pub const TPM_LABEL: (&str, &str) = ("aver.dev/tpm", "true");
/// Taint of hardened TPM nodes, which the controller's pods tolerate.
pub const HARDENED_TAINT: &str = "aver.dev/hardened";
/// How long a container gets to start and pass its readiness probe.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a stopping container gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the simulated cluster looks like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Prefix of node names (`<prefix>-tpm-0`, `<prefix>-plain-0`).
    pub prefix: String,
    /// Nodes with a TPM: labelled [`TPM_LABEL`], tainted [`HARDENED_TAINT`].
    pub tpm_nodes: usize,
    /// Nodes without a TPM or label, where no enclave may land.
    pub plain_nodes: usize,
}

/// One simulated node.
pub struct SimNode {
    pub name: String,
    /// The node's address (InternalIP, `status.hostIP` of its pods).
    pub ip: Ipv4Addr,
    /// Its TPM (TPM nodes only).
    pub tpm: Option<Swtpm>,
    /// Its "root filesystem": hostPath volumes resolve below it.
    pub root: tempfile::TempDir,
    next_pod: Mutex<u8>,
}

impl SimNode {
    /// A path of this node's filesystem (`/var/lib/aver` → `<root>/var/lib/aver`).
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// Extends a PCR of this node's TPM from outside any enclave, as an
    /// attacker with access to the TPM would.
    pub fn extend_pcr(&self, pcr: u8) -> anyhow::Result<()> {
        let tpm = self.tpm.as_ref().context("not a TPM node")?;
        let status = std::process::Command::new("tpm2_pcrextend")
            .arg(format!("{pcr}:sha256={}", "ab".repeat(32)))
            .env("TPM2TOOLS_TCTI", tpm.tcti())
            .stdout(Stdio::null())
            .status()
            .context("cannot run tpm2_pcrextend (apt-get install tpm2-tools)")?;
        if !status.success() {
            bail!("tpm2_pcrextend failed on {}", self.name);
        }
        Ok(())
    }

    /// The AK name of this node's TPM, as `aver-enclave ak` prints it (and
    /// creates it if needed, as the enclave does at its first start).
    pub fn ak_name(&self) -> anyhow::Result<String> {
        let tpm = self.tpm.as_ref().context("not a TPM node")?;
        let output = std::process::Command::new(cargo_bin("aver-enclave"))
            .arg("ak")
            .args(["--tcti", &tpm.tcti()])
            .output()?;
        if !output.status.success() {
            bail!(
                "aver-enclave ak on {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn allocate_pod_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let mut next = self.next_pod.lock().unwrap_or_else(|e| e.into_inner());
        if *next == u8::MAX {
            bail!("node {} ran out of pod addresses", self.name);
        }
        *next += 1;
        let [a, b, c, _] = self.ip.octets();
        Ok(Ipv4Addr::new(a, b, c, *next))
    }
}

/// What the simulator knows about a pod it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// DER of the certificate the enclave served at its latest start.
    pub certificate_der: Option<Vec<u8>>,
    pub spki_sha256: Option<Sha256Digest>,
    /// Whether its processes run (false once stopped).
    pub running: bool,
}

#[derive(Default)]
struct Shared {
    pods: HashMap<String, PodRecord>,
    /// Every SPKI any enclave of this simulator served.
    served: HashSet<Sha256Digest>,
    /// Runtimes by pod UID: the stop signal of each.
    runtimes: HashMap<String, watch::Sender<bool>>,
    /// Pod UIDs whose deletion is being finalised.
    finalizing: HashSet<String>,
    /// Problems seen (a pod that cannot run here), for failure messages.
    problems: Vec<String>,
}

/// The running simulator; stops its watch and every pod's processes on drop.
pub struct NodeSim {
    pub nodes: Vec<Arc<SimNode>>,
    shared: Arc<Mutex<Shared>>,
    watch: JoinHandle<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _claim: std::net::TcpListener,
}

impl NodeSim {
    /// Starts the TPMs, registers the Nodes and starts watching Pods.
    pub async fn start(client: kube::Client, config: SimConfig) -> anyhow::Result<Self> {
        let (subnet, claim) = claim_subnet()?;
        let mut nodes = Vec::new();
        let kinds = std::iter::repeat_n(true, config.tpm_nodes)
            .chain(std::iter::repeat_n(false, config.plain_nodes));
        for (i, tpm) in kinds.enumerate() {
            let index = u8::try_from(i + 1).context("too many nodes")?;
            let kind = if tpm { "tpm" } else { "plain" };
            let ordinal = if tpm { i } else { i - config.tpm_nodes };
            let name = format!("{}-{kind}-{ordinal}", config.prefix);
            let node = SimNode {
                name,
                ip: Ipv4Addr::new(127, subnet, index, 1),
                tpm: if tpm { Some(Swtpm::start()?) } else { None },
                root: tempfile::Builder::new().prefix("aver-node-").tempdir()?,
                next_pod: Mutex::new(1),
            };
            register(&client, &node).await?;
            nodes.push(Arc::new(node));
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let kubelet = kubelet::Kubelet {
            client,
            nodes: nodes.clone(),
            shared: shared.clone(),
            tasks: tasks.clone(),
        };
        let watch = tokio::spawn(kubelet.run());
        Ok(Self {
            nodes,
            shared,
            watch,
            tasks,
            _claim: claim,
        })
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Arc<SimNode>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The TPM nodes.
    pub fn tpm_nodes(&self) -> impl Iterator<Item = &Arc<SimNode>> {
        self.nodes.iter().filter(|n| n.tpm.is_some())
    }

    /// AK names of every TPM node, for a policy.
    pub fn ak_names(&self) -> anyhow::Result<Vec<String>> {
        self.tpm_nodes().map(|n| n.ak_name()).collect()
    }

    /// Writes a file below `host_dir` on every node (model files, which a
    /// real cluster would have provisioned on each node).
    pub fn write_on_every_node(
        &self,
        host_dir: &str,
        file: &str,
        contents: &[u8],
    ) -> anyhow::Result<()> {
        for node in &self.nodes {
            let dir = node.host_path(host_dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(file), contents)?;
        }
        Ok(())
    }

    /// Every pod the simulator has run, by name.
    pub fn pods(&self) -> BTreeMap<String, PodRecord> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .pods
            .values()
            .map(|p| (p.name.clone(), p.clone()))
            .collect()
    }

    /// Whether an enclave of this simulator ever served this key.
    pub fn served(&self, spki: &Sha256Digest) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.served.contains(spki)
    }

    /// Problems seen so far (pods that could not run), for failure messages.
    pub fn problems(&self) -> Vec<String> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.problems.clone()
    }
}

impl Drop for NodeSim {
    fn drop(&mut self) {
        self.watch.abort();
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for stop in shared.runtimes.values() {
            let _ = stop.send(true);
        }
        drop(shared);
        // Aborting drops each pod's child processes (kill_on_drop) and stub.
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Port on `127.X.0.1` that a simulator holds while it lives, so that no
/// other simulator (a test running at the same time) picks the same X.
const CLAIM_PORT: u16 = 47_001;

/// A second octet X for the simulator's addresses 127.X.*.*, with the
/// listener that claims it.
fn claim_subnet() -> anyhow::Result<(u8, std::net::TcpListener)> {
    let mut seed = random_u32();
    for _ in 0..200 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let x = u8::try_from(16 + (seed >> 8) % 224).unwrap_or(16);
        if let Ok(claim) = std::net::TcpListener::bind((Ipv4Addr::new(127, x, 0, 1), CLAIM_PORT)) {
            return Ok((x, claim));
        }
    }
    bail!("no free 127.X.0.0/16 loopback range for the node simulator")
}

/// Randomness without a dependency: std's randomly keyed hasher.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    (h.finish() >> 16) as u32
}

/// Creates the Node and reports it Ready with capacity, as a kubelet does
/// when it registers.
async fn register(client: &kube::Client, node: &SimNode) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    let mut taints = json!([]);
    if node.tpm.is_some() {
        labels[TPM_LABEL.0] = json!(TPM_LABEL.1);
        taints = json!([{"key": HARDENED_TAINT, "value": "true", "effect": "NoSchedule"}]);
    }
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"taints": taints.clone()},
    }))?;
    nodes
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("cannot register node {}", node.name))?;
    let now = jiff::Timestamp::now().to_string();
    let resources = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": node.ip.to_string()},
            {"type": "Hostname", "address": node.name},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "aver node simulator", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "aver node simulator",
            "containerRuntimeVersion": "aver-sim://0", "kubeletVersion": "v1.34.0", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("cannot report node {} ready", node.name))?;
    // The API server taints every new Node not-ready (TaintNodesByCondition
    // admission); the node lifecycle controller lifts it once the node
    // reports Ready. That controller is not part of the fixture: lift it here.
    nodes
        .patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .with_context(|| format!("cannot untaint node {}", node.name))?;
    Ok(())
}
