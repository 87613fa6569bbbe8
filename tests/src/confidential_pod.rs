//! A confidential model pod on a [`NodeAgent`] node, as the node tests and
//! the demo (`aver-node-demo`) run it: the pod the kubelet would start for a
//! node-measured model (an `enclave` with `--node-agent` and an `engine`),
//! the container specs a client expects the node to have measured, and the
//! client policy built from them.
//!
//! The expected specs are written out from the [`ContainerSpec`]s the
//! caller sends, not read back from the node log, so a gate that recorded
//! something else than it received fails verification.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aver_crds::{AttestationPolicy, Sha256Digest};
use aver_node_log::spec::{EnvVar, Mount, MountSource, NamespaceMode, Namespaces, User};
use aver_node_log::{policy_digest, NodeEvent, CONFIDENTIAL_LABEL};
use k8s_cri::v1 as cri;

use crate::cargo_bin;
use crate::containerd::{ContainerSpec, CriClient, Pod};
use crate::node_agent::{
    NodeAgent, AGENT_MOUNT, AGENT_SOCKET_IN_POD, ENCLAVE_IMAGE, STUB_ENGINE_IMAGE,
};

/// How long a pod's enclave gets to come up and register its key.
pub const PATIENCE: Duration = Duration::from_secs(60);
pub const NAMESPACE: &str = "ml";
pub const MODEL: &str = "llama";
/// The emptyDir the model is in, as the kubelet lays out pod volumes.
pub const MODEL_PLUGIN: &str = "kubernetes.io~empty-dir";
pub const MODEL_VOLUME: &str = "model";
pub const MODEL_MOUNT: &str = "/models";
pub const ENGINE_ADDR: &str = "127.0.0.1:8000";
pub const ENCLAVE_PORT: u16 = 8443;

// ---------------------------------------------------------------------------
// What is sent, and what the node is expected to have measured

/// The enclave container of a confidential pod: `aver-enclave serve` with
/// evidence from aver-node (which mounts the agent socket itself), the
/// model volume read-only.
pub fn enclave_container(_node: &NodeAgent, model_dir: &Path) -> ContainerSpec {
    ContainerSpec::new("enclave", ENCLAVE_IMAGE)
        .command(["/bin/aver-enclave"])
        .args([
            "serve",
            "--node-agent",
            AGENT_SOCKET_IN_POD,
            "--model-dir",
            MODEL_MOUNT,
            "--upstream",
            &format!("http://{ENGINE_ADDR}"),
            "--listen",
            &format!("0.0.0.0:{ENCLAVE_PORT}"),
        ])
        .env("RUST_LOG", "info")
        .mount(model_dir, MODEL_MOUNT, true)
}

/// The stub engine on the pod's loopback.
pub fn engine_container() -> ContainerSpec {
    ContainerSpec::new("engine", STUB_ENGINE_IMAGE)
        .command(["/bin/aver-stub-engine"])
        .args([ENGINE_ADDR])
}

/// The canonical spec of a container created with `spec` through
/// [`CriClient::create_container`], written out from what that sends: the
/// command, args and env as given, the pod's network and IPC namespaces
/// and a PID namespace of its own, no security settings, and the mounts
/// with their sources as `mounts` says the node must classify them.
pub fn expected_spec(
    spec: &ContainerSpec,
    mounts: &[(&str, MountSource)],
) -> aver_node_log::ContainerSpec {
    assert_eq!(spec.mounts.len(), mounts.len(), "every mount is described");
    aver_node_log::ContainerSpec {
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec
            .env
            .iter()
            .map(|(name, value)| EnvVar::new(name.clone(), value))
            .collect(),
        working_dir: spec.working_dir.clone(),
        user: User {
            uid: spec.run_as_user,
            ..User::default()
        },
        namespaces: Namespaces {
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Container,
            ipc: NamespaceMode::Pod,
            target_id: String::new(),
        },
        mounts: mounts
            .iter()
            .map(|(container_path, source)| {
                let sent = spec
                    .mounts
                    .iter()
                    .find(|m| m.container_path == *container_path)
                    .expect("the mount was sent");
                Mount {
                    container_path: (*container_path).to_owned(),
                    source: source.clone(),
                    readonly: sent.readonly,
                    propagation: "private".into(),
                    selinux_relabel: false,
                }
            })
            .collect(),
        ..aver_node_log::ContainerSpec::default()
    }
}

/// The expected spec of [`enclave_container`]: the model directory is the
/// pod's `model` emptyDir, and aver-node added its agent socket read-only.
pub fn expected_enclave_spec(
    _node: &NodeAgent,
    enclave: &ContainerSpec,
) -> aver_node_log::ContainerSpec {
    let mut spec = expected_spec(
        enclave,
        &[(
            MODEL_MOUNT,
            MountSource::Volume {
                plugin: MODEL_PLUGIN.into(),
                name: MODEL_VOLUME.into(),
            },
        )],
    );
    spec.mounts.push(Mount {
        container_path: AGENT_MOUNT.to_owned(),
        source: MountSource::NodeAgent,
        readonly: true,
        propagation: "private".into(),
        selinux_relabel: false,
    });
    spec.canonicalize();
    spec
}

fn digest(text: &str) -> Sha256Digest {
    Sha256Digest::parse(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The client's policy for the genuine pod, as a client writes it: the
/// node's AK, swtpm's boot PCRs (zero), the model, the node policy file,
/// and the two containers by manifest digest and expected spec digest.
pub fn client_policy(
    node: &NodeAgent,
    model: Sha256Digest,
    enclave_spec: &aver_node_log::ContainerSpec,
    engine_spec: &aver_node_log::ContainerSpec,
) -> AttestationPolicy {
    let container = |name: &str, image: &str, spec: &aver_node_log::ContainerSpec| {
        serde_json::json!({
            "name": name,
            "imageDigests": [digest(&node.image(image).digest).to_string()],
            "specDigests": [spec.digest().to_string()],
        })
    };
    let policy = serde_json::json!({
        "referencePcrs": (0..8)
            .map(|pcr| serde_json::json!({"pcr": pcr, "values": [Sha256Digest([0; 32]).to_string()]}))
            .collect::<Vec<_>>(),
        "workloadPcr": crate::node_agent::NODE_PCR,
        "allowed": {
            "modelDigests": [model.to_string()],
            "pod": {
                "containers": [
                    container("enclave", ENCLAVE_IMAGE, enclave_spec),
                    container("engine", STUB_ENGINE_IMAGE, engine_spec),
                ],
            },
            "nodePolicies": [policy_digest(node.policy()).to_string()],
        },
        "trust": {"akNames": [node.ak_name()]},
        "interval": "30s",
        "maxEvidenceAge": "5m",
    });
    let policy: AttestationPolicy =
        serde_json::from_value(policy).expect("a node-measured client policy");
    policy.validate().expect("the client policy is valid");
    policy
}

// ---------------------------------------------------------------------------
// Pods

/// A confidential pod started through the gate.
pub struct ConfidentialPod {
    pub name: String,
    pub pod: Pod,
    pub enclave: String,
    pub engine: String,
    pub ip: String,
    /// Where the model volume is on the node.
    pub model_dir: PathBuf,
    pub enclave_spec: ContainerSpec,
}

impl ConfidentialPod {
    pub fn url(&self) -> String {
        format!("https://{}:{ENCLAVE_PORT}", self.ip)
    }
}

/// The pod's `model` emptyDir where the kubelet would create it, with a
/// tiny model in it.
pub fn model_volume(node: &NodeAgent, uid: &str) -> anyhow::Result<PathBuf> {
    let dir = node
        .pod_volume(uid, MODEL_PLUGIN, MODEL_VOLUME)
        .context("model volume")?;
    fs::write(dir.join("weights.bin"), b"tiny model weights")?;
    fs::write(dir.join("tokenizer.json"), b"{\"vocab\":[]}")?;
    Ok(dir)
}

/// Runs `ml/<name>` with the confidential label, an enclave and `engine`,
/// through the gate, and waits until the enclave registered its TLS key.
pub async fn run_confidential_pod(
    node: &NodeAgent,
    cri: &mut CriClient,
    name: &str,
    engine: ContainerSpec,
) -> anyhow::Result<ConfidentialPod> {
    let uid = format!("uid-{name}");
    let model_dir = model_volume(node, &uid)?;
    let pod = cri
        .run_pod(NAMESPACE, name, &uid, &[(CONFIDENTIAL_LABEL, MODEL)])
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?;
    let enclave_spec = enclave_container(node, &model_dir);
    let engine_id = cri
        .create_container(&pod, engine)
        .await
        .with_context(|| format!("engine of {name}"))?;
    cri.start_container(&engine_id).await?;
    let enclave = cri
        .create_container(&pod, enclave_spec.clone())
        .await
        .with_context(|| format!("enclave of {name}"))?;
    cri.start_container(&enclave).await?;
    let ip = cri
        .pod_status(&pod.id)
        .await?
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    if ip.is_empty() {
        bail!("pod {name} has no IP");
    }
    let pod = ConfidentialPod {
        name: name.to_owned(),
        pod,
        enclave,
        engine: engine_id,
        ip,
        model_dir,
        enclave_spec,
    };
    wait_serving(node, cri, &pod).await?;
    Ok(pod)
}

/// Waits until the enclave's key is in the node log and its TLS port
/// accepts connections; fails with the enclave's output if it exits.
pub async fn wait_serving(
    node: &NodeAgent,
    cri: &mut CriClient,
    pod: &ConfidentialPod,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    let addr: SocketAddr = format!("{}:{ENCLAVE_PORT}", pod.ip).parse()?;
    loop {
        let registered = node.node_log().unwrap_or_default().iter().any(|e| {
            matches!(&e.event, NodeEvent::TlsKey { container_id, .. } if *container_id == pod.enclave)
        });
        if registered && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        let status = cri.container_status(&pod.enclave).await?;
        if status.state == cri::ContainerState::ContainerExited as i32 || Instant::now() > deadline
        {
            let logs = cri.container_logs(&pod.enclave).await.unwrap_or_default();
            bail!(
                "the enclave of {} is not serving (registered: {registered}, state {:?}, exit code {}):\n{logs}",
                pod.name,
                status.state,
                status.exit_code
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `aver verify` did.
pub struct VerifyOutcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `aver verify URL --policy FILE`, with `policy` written to
/// a file in `dir`.
pub fn aver_verify(url: &str, policy: &AttestationPolicy, dir: &Path) -> VerifyOutcome {
    let host = url.trim_start_matches("https://").replace([':', '/'], "_");
    let path = dir.join(format!("policy-{host}.yaml"));
    fs::write(&path, policy.to_yaml()).expect("the policy file is written");
    aver_verify_file(url, &path)
}

/// Runs the real `aver verify URL --policy FILE`.
pub fn aver_verify_file(url: &str, policy: &Path) -> VerifyOutcome {
    let output = Command::new(cargo_bin("aver"))
        .args(["verify", url, "--policy"])
        .arg(policy)
        .output()
        .expect("aver runs");
    VerifyOutcome {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
