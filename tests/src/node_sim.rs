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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use aver_verifier::client::spki::spki_sha256;
use aver_verifier::client::tls::{client_config, KeyAcceptance};
use aver_verifier::Sha256Digest;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::ResourceExt as _;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stub_upstream::StubUpstream;
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
        let kubelet = Kubelet {
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
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
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

/// The watch loop: one "kubelet" for every simulated node.
#[derive(Clone)]
struct Kubelet {
    client: kube::Client,
    nodes: Vec<Arc<SimNode>>,
    shared: Arc<Mutex<Shared>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Kubelet {
    async fn run(self) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut seen = HashSet::new();
        let mut stream = watcher(pods).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => seen.clear(),
                Ok(Event::InitApply(pod)) => {
                    if let Some(uid) = pod.uid() {
                        seen.insert(uid);
                    }
                    self.observe(pod);
                }
                Ok(Event::InitDone) => self.forget_unseen(&seen),
                Ok(Event::Apply(pod)) => self.observe(pod),
                Ok(Event::Delete(pod)) => {
                    if let Some(uid) = pod.uid() {
                        self.stop(&uid);
                    }
                }
                // The apiserver went away, or the watch expired: the
                // watcher re-lists with backoff; pods keep running, as
                // they do when a kubelet loses its apiserver.
                Err(e) => tracing_line(&format!("pod watch: {e}")),
            }
        }
    }

    fn node_of(&self, pod: &Pod) -> Option<Arc<SimNode>> {
        let name = pod.spec.as_ref()?.node_name.as_deref()?;
        self.nodes.iter().find(|n| n.name == name).cloned()
    }

    fn observe(&self, pod: Pod) {
        let Some(node) = self.node_of(&pod) else {
            return;
        };
        let Some(uid) = pod.uid() else { return };
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if pod.metadata.deletion_timestamp.is_some() {
            if shared.finalizing.insert(uid.clone()) {
                let stop = shared.runtimes.remove(&uid);
                drop(shared);
                self.spawn(self.clone().finalize(pod, stop));
            }
            return;
        }
        let terminal = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if terminal || shared.runtimes.contains_key(&uid) {
            return;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        shared.runtimes.insert(uid, stop_tx);
        drop(shared);
        self.spawn(self.clone().run_pod(node, pod, stop_rx));
    }

    fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(future);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn stop(&self, uid: &str) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = shared.runtimes.remove(uid) {
            let _ = stop.send(true);
        }
    }

    /// After a re-list: pods that no longer exist are stopped.
    fn forget_unseen(&self, seen: &HashSet<String>) {
        let gone: Vec<String> = {
            let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared
                .runtimes
                .keys()
                .filter(|uid| !seen.contains(*uid))
                .cloned()
                .collect()
        };
        for uid in gone {
            self.stop(&uid);
        }
    }

    /// Graceful deletion: stop the processes, then remove the pod.
    async fn finalize(self, pod: Pod, stop: Option<watch::Sender<bool>>) {
        if let Some(stop) = stop {
            let _ = stop.send(true);
            // The runtime task marks the record not running once its
            // processes are gone.
            stop.closed().await;
        }
        let (Some(namespace), Some(uid)) = (pod.namespace(), pod.uid()) else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        // Retried: the apiserver may be restarting.
        for _ in 0..60 {
            match pods.delete(&pod.name_any(), &params).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => tracing_line(&format!("finalizing {}: {e}", pod.name_any())),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs a pod until told to stop: its engine and enclave, restarting the
    /// enclave when it exits, and its status as a kubelet reports it.
    async fn run_pod(self, node: Arc<SimNode>, pod: Pod, mut stop: watch::Receiver<bool>) {
        let name = pod.name_any();
        let namespace = pod.namespace().unwrap_or_default();
        let uid = pod.uid().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let ip = match node.allocate_pod_ip() {
            Ok(ip) => ip,
            Err(e) => return self.problem(&pods, &name, &e).await,
        };
        let plan = match plan(&node, &pod, ip) {
            Ok(plan) => plan,
            Err(e) => return self.problem(&pods, &name, &e).await,
        };
        self.record(PodRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            node: node.name.clone(),
            ip,
            certificate_der: None,
            spki_sha256: None,
            running: true,
        });
        let _engine = match StubUpstream::start_on(plan.engine).await {
            Ok(stub) => stub,
            Err(e) => {
                let e = anyhow::anyhow!("engine on {}: {e}", plan.engine);
                return self.problem(&pods, &name, &e).await;
            }
        };
        let log = pod_log(&node, &namespace, &name);
        let started = jiff::Timestamp::now();
        let mut restarts = 0u32;
        loop {
            let mut child = match plan.spawn(&log) {
                Ok(child) => child,
                Err(e) => return self.problem(&pods, &name, &e).await,
            };
            let _ = patch_pod_status(&pods, &name, &status(&node, ip, started, false, restarts)).await;
            let ready = tokio::select! {
                ready = wait_listening_and_ready(&mut child, &plan) => ready,
                _ = stop.wait_for(|s| *s) => Err(anyhow::anyhow!("stopped")),
            };
            match ready {
                Ok(cert) => {
                    self.observe_certificate(&uid, cert);
                    let _ = patch_pod_status(
                        &pods,
                        &name,
                        &status(&node, ip, started, true, restarts),
                    )
                    .await;
                }
                Err(e) => tracing_line(&format!("pod {name}: {e:#}")),
            }
            let exit = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                exit = child.wait() => Some(exit),
            };
            let Some(exit) = exit else {
                stop_process(&mut child).await;
                break;
            };
            tracing_line(&format!("pod {name}: enclave exited ({exit:?}); restarting"));
            restarts += 1;
            let _ = patch_pod_status(&pods, &name, &status(&node, ip, started, false, restarts)).await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = shared.pods.get_mut(&uid) {
            record.running = false;
        }
    }

    fn record(&self, record: PodRecord) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.pods.insert(record.uid.clone(), record);
    }

    fn observe_certificate(&self, uid: &str, der: Vec<u8>) {
        let spki = spki_sha256(&der).ok();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spki) = spki {
            shared.served.insert(spki);
        }
        if let Some(record) = shared.pods.get_mut(uid) {
            record.certificate_der = Some(der);
            record.spki_sha256 = spki;
        }
    }

    /// A pod that cannot run here: reported in its status (as a kubelet
    /// reports a container that cannot be created) and kept for the test.
    async fn problem(&self, pods: &Api<Pod>, name: &str, error: &anyhow::Error) {
        let message = format!("{error:#}");
        tracing_line(&format!("pod {name}: {message}"));
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .problems
            .push(format!("{name}: {message}"));
        let patch = json!({"status": {"phase": "Pending", "reason": "SimulatorError", "message": message}});
        let _ = patch_pod_status(pods, name, &patch).await;
    }
}

fn watcher(pods: Api<Pod>) -> impl futures_util::Stream<Item = Result<Event<Pod>, watcher::Error>> {
    watcher::watcher(pods, watcher::Config::default()).default_backoff()
}

/// Diagnostics of the simulator, on the test's stderr (shown for failed tests).
fn tracing_line(message: &str) {
    eprintln!("node-sim: {message}");
}

fn pod_log(node: &SimNode, namespace: &str, name: &str) -> PathBuf {
    node.host_path(&format!("/var/log/pods/{namespace}_{name}/{ENCLAVE_CONTAINER}.log"))
}

/// The pod status a kubelet reports.
fn status(
    node: &SimNode,
    ip: Ipv4Addr,
    started: jiff::Timestamp,
    ready: bool,
    restarts: u32,
) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let ready_text = if ready { "True" } else { "False" };
    let condition = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now})
    };
    json!({"status": {
        "phase": "Running",
        "hostIP": node.ip.to_string(),
        "hostIPs": [{"ip": node.ip.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": started.to_string(),
        "conditions": [
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", ready_text),
            condition("Ready", ready_text),
        ],
        "containerStatuses": [{
            "name": ENCLAVE_CONTAINER,
            "ready": ready,
            "started": true,
            "restartCount": restarts,
            "image": "aver-enclave",
            "imageID": "",
            "state": {"running": {"startedAt": now}},
        }],
    }})
}

async fn patch_pod_status(
    pods: &Api<Pod>,
    name: &str,
    patch: &serde_json::Value,
) -> anyhow::Result<()> {
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("cannot patch the status of pod {name}"))?;
    Ok(())
}

/// How a pod's containers run on this machine.
#[derive(Debug, Clone)]
struct Plan {
    /// aver-enclave's arguments, mapped.
    args: Vec<String>,
    /// The container's environment, resolved.
    env: Vec<(String, String)>,
    /// Where the engine listens (the pod address, the enclave's upstream port).
    engine: SocketAddr,
    /// The readiness probe: HTTPS path and address.
    probe: Option<(SocketAddr, String)>,
}

impl Plan {
    fn spawn(&self, log: &Path) -> anyhow::Result<tokio::process::Child> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::File::options().create(true).append(true).open(log)?;
        // A container does not inherit the node's environment.
        let mut cmd = tokio::process::Command::new(cargo_bin("aver-enclave"));
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        cmd.spawn().context("cannot start aver-enclave")
    }
}

/// Maps the pod's enclave container onto this node.
fn plan(node: &SimNode, pod: &Pod, ip: Ipv4Addr) -> anyhow::Result<Plan> {
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let enclave = spec
        .containers
        .iter()
        .find(|c| c.name == ENCLAVE_CONTAINER)
        .with_context(|| format!("pod has no {ENCLAVE_CONTAINER} container"))?;
    let env = resolve_env(enclave, pod, node, ip)?;
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mounts = mounts(node, pod, enclave)?;

    let raw: Vec<String> = enclave
        .command
        .iter()
        .flatten()
        .skip(1) // the image's own binary; ours runs instead
        .chain(enclave.args.iter().flatten())
        .map(|a| expand(a, &vars))
        .collect();
    // Flags whose values name things of the pod's network or of the node
    // are mapped; any other argument that lies below a mount is mapped to
    // the node's directory.
    let mut args = Vec::with_capacity(raw.len());
    let mut engine = None;
    let mut iter = raw.into_iter();
    while let Some(arg) = iter.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) if is_mapped_flag(flag) => (flag.to_owned(), value.to_owned()),
            _ if is_mapped_flag(&arg) => {
                let value = iter
                    .next()
                    .with_context(|| format!("{arg} has no value"))?;
                (arg, value)
            }
            _ => {
                args.push(map_path(&arg, &mounts));
                continue;
            }
        };
        let value = match flag.as_str() {
            "--listen" => map_listen(&value, ip)?,
            "--upstream" => {
                let (url, addr) = map_upstream(&value, ip)?;
                engine = Some(addr);
                url
            }
            _ => map_tcti(&value, node)?,
        };
        args.push(flag);
        args.push(value);
    }
    let engine = engine.context("the enclave has no --upstream")?;
    let probe = enclave
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|get| -> anyhow::Result<(SocketAddr, String)> {
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => {
                    u16::try_from(*p)?
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => enclave
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .with_context(|| format!("probe port {name:?} is not a container port"))?,
            };
            if get.scheme.as_deref() != Some("HTTPS") {
                bail!("the simulator probes HTTPS only");
            }
            Ok((
                SocketAddr::from((ip, port)),
                get.path.clone().unwrap_or_else(|| "/".into()),
            ))
        })
        .transpose()?;
    Ok(Plan {
        args,
        env,
        engine,
        probe,
    })
}

fn is_mapped_flag(flag: &str) -> bool {
    matches!(flag, "--listen" | "--upstream" | "--tcti")
}

/// Mount path → directory on this node, for the enclave container's mounts.
fn mounts(node: &SimNode, pod: &Pod, container: &Container) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .with_context(|| format!("volume {} is not defined", mount.name))?;
        let Some(host) = &volume.host_path else {
            bail!(
                "volume {} is not a hostPath volume, which is all the node simulator mounts",
                volume.name
            );
        };
        let mut path = node.host_path(&host.path);
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            path = path.join(sub);
        }
        if host.type_.as_deref() == Some("Directory") && !path.is_dir() {
            bail!("hostPath {} does not exist on node {}", host.path, node.name);
        }
        if host.type_.as_deref() == Some("DirectoryOrCreate") || host.type_.is_none() {
            std::fs::create_dir_all(&path)?;
        }
        out.push((mount.mount_path.clone(), path));
    }
    // Longest mount path first, so nested mounts win.
    out.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(out)
}

fn map_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, host) in mounts {
        if value == mount {
            return host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(mount.as_str()).and_then(|r| r.strip_prefix('/')) {
            return host.join(rest).display().to_string();
        }
    }
    value.to_owned()
}

/// `0.0.0.0:P` (all of the pod's interfaces) → the pod address.
fn map_listen(value: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
    let addr: SocketAddr = value
        .parse()
        .with_context(|| format!("--listen {value:?} is not an address"))?;
    if !addr.ip().is_unspecified() && addr.ip() != std::net::IpAddr::V4(ip) {
        bail!("--listen {value} is neither all interfaces nor the pod address");
    }
    Ok(SocketAddr::from((ip, addr.port())).to_string())
}

/// `http://127.0.0.1:P` (the pod's own loopback) → the pod address.
fn map_upstream(value: &str, ip: Ipv4Addr) -> anyhow::Result<(String, SocketAddr)> {
    let rest = value
        .strip_prefix("http://")
        .with_context(|| format!("--upstream {value:?} is not http://"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("--upstream {value:?} has no port"))?;
    if host != "127.0.0.1" && host != "localhost" {
        bail!("--upstream {value} is not the pod's own loopback");
    }
    let port: u16 = port.parse()?;
    let addr = SocketAddr::from((ip, port));
    let url = if path.is_empty() {
        format!("http://{addr}")
    } else {
        format!("http://{addr}/{path}")
    };
    Ok((url, addr))
}

/// The node's TPM, however the pod names it: a device of the node, or a
/// TCTI to a TPM at the node's address.
fn map_tcti(value: &str, node: &SimNode) -> anyhow::Result<String> {
    let tpm = node
        .tpm
        .as_ref()
        .with_context(|| format!("node {} has no TPM, but the pod wants {value}", node.name))?;
    let names_node = value.starts_with("swtpm:")
        && value
            .split([':', ','])
            .any(|kv| kv == format!("host={}", node.ip) || kv == format!("host={}", node.name));
    if value.starts_with("device:") || names_node {
        Ok(tpm.tcti())
    } else {
        bail!("--tcti {value} names no TPM of node {}", node.name)
    }
}

/// The container's env, with downward-API fields resolved and `$(VAR)`
/// references to earlier variables expanded, as the kubelet does.
fn resolve_env(
    container: &Container,
    pod: &Pod,
    node: &SimNode,
    ip: Ipv4Addr,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            let field = from
                .field_ref
                .as_ref()
                .with_context(|| format!("env {}: only fieldRef is simulated", var.name))?;
            match field.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => pod.namespace().unwrap_or_default(),
                "metadata.uid" => pod.uid().unwrap_or_default(),
                "spec.nodeName" => node.name.clone(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" => node.ip.to_string(),
                "status.podIP" => ip.to_string(),
                other => bail!("env {}: fieldRef {other} is not simulated", var.name),
            }
        } else {
            let vars: HashMap<&str, &str> =
                out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or_default(), &vars)
        };
        out.push((var.name.clone(), value));
    }
    Ok(out)
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a
/// literal `$`, unknown references stay as written.
fn expand(text: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                Some(end) => {
                    out.push_str(&rest[i..i + 2 + end + 1]);
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Waits for the enclave's "listening on" line, then for its readiness
/// probe to pass; returns the certificate it served.
async fn wait_listening_and_ready(
    child: &mut tokio::process::Child,
    plan: &Plan,
) -> anyhow::Result<Vec<u8>> {
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(START_PATIENCE, lines.next_line())
        .await
        .context("aver-enclave did not start listening in time")??
        .context("aver-enclave exited before listening (see its log under the node's /var/log/pods)")?;
    if !line.starts_with("listening on ") {
        bail!("aver-enclave printed {line:?} instead of its address");
    }
    // Keep draining stdout so the process never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (addr, path) = match &plan.probe {
        Some(probe) => probe.clone(),
        None => bail!("the enclave container has no readiness probe"),
    };
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    loop {
        match probe_https(addr, &path).await {
            Ok((200..=399, cert)) => return Ok(cert),
            Ok((status, _)) if tokio::time::Instant::now() >= deadline => {
                bail!("readiness probe https://{addr}{path} answered {status}")
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("readiness probe https://{addr}{path}")))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One HTTPS GET without certificate checks (what a kubelet's probe does);
/// the status and the server's certificate.
async fn probe_https(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(KeyAcceptance::ToBeAttested)));
    let tls = tokio::time::timeout(
        Duration::from_secs(2),
        connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .context("no certificate")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(2), sender.send_request(request))
        .await
        .context("probe timed out")??;
    Ok((response.status().as_u16(), cert))
}

/// SIGTERM, then SIGKILL after the grace period.
async fn stop_process(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = crate::controlplane::signal(pid, crate::controlplane::Signal::Term);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = HashMap::from([("A", "1"), ("NODE", "10.0.0.1")]);
        assert_eq!(expand("host=$(NODE),port=2321", &vars), "host=10.0.0.1,port=2321");
        assert_eq!(expand("$$(A) $(A) $(B) $x $", &vars), "$(A) 1 $(B) $x $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn pod_addresses_replace_all_interfaces_and_loopback() {
        let ip = Ipv4Addr::new(127, 40, 1, 2);
        assert_eq!(map_listen("0.0.0.0:8443", ip).unwrap(), "127.40.1.2:8443");
        assert!(map_listen("10.0.0.1:8443", ip).is_err());
        let (url, addr) = map_upstream("http://127.0.0.1:8000", ip).unwrap();
        assert_eq!(url, "http://127.40.1.2:8000");
        assert_eq!(addr.port(), 8000);
        assert!(map_upstream("http://engine.example:8000", ip).is_err());
    }

    #[test]
    fn paths_below_mounts_map_to_the_node() {
        let mounts = vec![
            ("/var/lib/aver".to_owned(), PathBuf::from("/n/var/lib/aver")),
            ("/models".to_owned(), PathBuf::from("/n/models/llama")),
        ];
        assert_eq!(map_path("/models", &mounts), "/n/models/llama");
        assert_eq!(map_path("/models/x.bin", &mounts), "/n/models/llama/x.bin");
        assert_eq!(map_path("/modelsx", &mounts), "/modelsx");
        assert_eq!(map_path("15", &mounts), "15");
    }
}
