//! Measurement below the pod, narrated (docs/node-measurement.md): a node
//! with swtpm as its TPM, a private containerd and the real `aver-node` in
//! front of it; a genuine confidential pod that the real `aver verify`
//! accepts against a policy written on the client; a pod with its engine
//! swapped that it refuses; a debug container and an exec that the gate
//! refuses at the CRI; and the node log that records it all.
//!
//! Plays the kubelet over aver-node's CRI socket, as the node tests do
//! (`tests/tests/node_gate.rs`, with the same pods from
//! `aver_tests::confidential_pod`). Every expected outcome is checked: the
//! demo exits non-zero if one does not happen, so it doubles as a smoke
//! test. Needs root, containerd, runc, the CNI plugins and swtpm (`bash
//! scripts/setup.sh`) and the workspace's binaries (`cargo build
//! --workspace --bins`); part of `scripts/demo.sh`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use aver_node_log::{policy_digest, replay, NodeEvent, NodeLogEntry, CONFIDENTIAL_LABEL};
use aver_tests::confidential_pod::{
    aver_verify_file, client_policy, engine_container, expected_enclave_spec, expected_spec,
    run_confidential_pod, MODEL, NAMESPACE,
};
use aver_tests::containerd::{containerd_missing, images_dir, ContainerSpec, BUSYBOX_IMAGE};
use aver_tests::node_agent::{NodeAgent, ENCLAVE_IMAGE, NODE_PCR, STUB_ENGINE_IMAGE};
use aver_tests::swtpm_available;
use aver_verifier::measurement::model_digest;
use k8s_cri::v1 as cri;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut missing: Vec<&str> = containerd_missing();
    if !swtpm_available() {
        missing.push("swtpm (apt-get install swtpm swtpm-tools)");
    }
    if !missing.is_empty() {
        eprintln!(
            "aver-node-demo: cannot run: missing {}; run `bash scripts/setup.sh` as root",
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    let t0 = Instant::now();
    let mut demo = Demo { step: 0 };

    demo.step("A node: swtpm as its TPM, a private containerd, aver-node in front of it");
    let node = match tokio::task::spawn_blocking(NodeAgent::start).await {
        Ok(Ok(node)) => node,
        Ok(Err(e)) => {
            eprintln!("aver-node-demo: the node does not start: {e:#}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("aver-node-demo: the node does not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::select! {
        result = run(&mut demo, &node) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => {
            println!();
            println!(
                "aver-node-demo: ok in {:.1}s (genuine pod verified, swapped engine refused by the client, debug container and exec refused by the gate)",
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aver-node-demo: FAILED: {e:#}");
            eprintln!("{}", node.diagnostics());
            ExitCode::FAILURE
        }
    }
    // The node (aver-node, containerd and its pods, swtpm) stops on drop.
}

/// Numbered steps on stdout, each ending with what it proves.
struct Demo {
    step: usize,
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.step += 1;
        if self.step > 1 {
            println!();
        }
        println!("--- {}. {title}", self.step);
    }

    fn proves(&self, sentence: &str) {
        println!("    => {sentence}");
    }
}

/// `text`, every line indented.
fn show(text: &str) {
    for line in text.trim_end().lines() {
        println!("       {line}");
    }
}

fn short(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}…", &hex[..12]),
        _ => digest.to_owned(),
    }
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

async fn run(demo: &mut Demo, node: &NodeAgent) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("aver-node-demo-")
        .tempdir()?;
    let mut cri = node.cri().await?;
    let mut runtime = node.runtime_cri().await?;

    // --- 1. The node.
    println!(
        "    TPM         swtpm ({}), PCRs reset as after a boot",
        node.tpm().tcti()
    );
    println!(
        "    runtime     containerd at {}",
        node.containerd().socket_path().display()
    );
    println!(
        "    CRI         aver-node at {} (where the kubelet connects)",
        node.cri_socket().display()
    );
    println!(
        "    agent       {} (mounted read-only into confidential pods)",
        node.agent_socket().display()
    );
    println!("    AK          {}", node.ak_name());
    println!(
        "    node policy {} ({}):",
        node.policy_path().display(),
        short(&policy_digest(node.policy()).to_string())
    );
    show(node.policy());
    let log = node.node_log()?;
    ensure!(
        matches!(log.as_slice(), [NodeLogEntry { event: NodeEvent::AgentStart { policy, .. }, .. }] if policy == node.policy()),
        "the node log does not start with agent-start and this policy: {log:?}"
    );
    demo.proves(&format!(
        "aver-node, the only user of the TPM, began the node log by extending agent-start with this node policy into PCR {NODE_PCR}, so everything after it is bound to the policy in force."
    ));

    // --- 2. The genuine pod.
    demo.step("A genuine confidential pod through the gate: ml/llama-0");
    println!(
        "    RunPodSandbox   {NAMESPACE}/llama-0, label {CONFIDENTIAL_LABEL}={MODEL}, model in its emptyDir"
    );
    let engine = engine_container();
    println!(
        "    CreateContainer engine:  {} {}",
        engine.image,
        [engine.command.clone(), engine.args.clone()]
            .concat()
            .join(" ")
    );
    println!(
        "    CreateContainer enclave: {} /bin/aver-enclave serve --node-agent … (no TPM device, no TCTI)",
        ENCLAVE_IMAGE
    );
    let t = Instant::now();
    let genuine = run_confidential_pod(node, &mut cri, "llama-0", engine).await?;
    println!(
        "    serving at {} after {:.1}s; its node log events:",
        genuine.url(),
        t.elapsed().as_secs_f64()
    );
    let log = node.node_log()?;
    show(&describe_log(&log, Some(&genuine.pod.id)));
    demo.proves(
        "the gate measured the sandbox and both containers (image and canonical spec) into the PCR before either could start, and the enclave had its TLS key recorded over the agent socket without touching a TPM.",
    );

    // --- 3. The client's policy.
    demo.step("The client writes its policy from what it sent, not from what the node reports");
    let enclave_spec = expected_enclave_spec(node, &genuine.enclave_spec);
    let engine_spec = expected_spec(&engine_container(), &[]);
    let model = model_digest(&genuine.model_dir)?;
    for (name, reference) in [
        ("enclave", ENCLAVE_IMAGE),
        ("stub-engine", STUB_ENGINE_IMAGE),
    ] {
        let built = fs::read_to_string(images_dir().join(format!("{name}.digest")))
            .with_context(|| format!("the digest of the {name} image"))?;
        ensure!(
            built.trim() == node.image(reference).digest,
            "the {name} image on the node is not the one built here"
        );
    }
    let policy = client_policy(node, model, &enclave_spec, &engine_spec);
    let policy_path = dir.path().join("policy.yaml");
    fs::write(&policy_path, policy.to_yaml())?;
    println!(
        "    image digests  manifest digests of the images built here (target/images/*.digest), which this client imported"
    );
    println!(
        "    spec digests   computed here from the CRI ContainerConfigs this client sent (command, args, env, user, namespaces, mounts):"
    );
    println!("                   enclave {}", enclave_spec.digest());
    println!("                   engine  {}", engine_spec.digest());
    println!("    model digest   {model} of the files this client put into the model volume");
    println!("    node policy    SHA-256 of the node policy file above; AK from `aver-node ak`");
    println!("    {}:", policy_path.display());
    show(&policy.to_yaml());
    demo.proves(
        "nothing in this policy was read from the node log or the pod's evidence, so the node has to match the client, not the other way round.",
    );

    // --- 4. aver verify.
    demo.step(&format!(
        "The client verifies the live endpoint: aver verify {} --policy policy.yaml",
        genuine.url()
    ));
    let outcome = aver_verify_file(&genuine.url(), &policy_path);
    ensure!(
        outcome.ok,
        "aver verify refused the genuine pod:\n{}{}",
        outcome.stderr,
        outcome.stdout
    );
    show(&outcome.stdout);
    demo.proves(
        "a fresh quote from the node's TPM matches the node log the verifier replayed, and that log shows this TLS connection's key held by the enclave of a pod running exactly the client's containers and model.",
    );

    // --- 5. The engine swapped.
    demo.step("A second pod with the engine image swapped: ml/llama-1 runs busybox as `engine`");
    let busybox = node.image(BUSYBOX_IMAGE);
    println!(
        "    CreateContainer engine: {BUSYBOX_IMAGE} ({}) /bin/sleep 3600; the node policy admits it (the name is allowed)",
        short(&busybox.digest)
    );
    let swapped = run_confidential_pod(
        node,
        &mut cri,
        "llama-1",
        ContainerSpec::new("engine", BUSYBOX_IMAGE).command(["/bin/sleep", "3600"]),
    )
    .await?;
    println!("    $ aver verify {} --policy policy.yaml", swapped.url());
    let outcome = aver_verify_file(&swapped.url(), &policy_path);
    ensure!(!outcome.ok, "aver verify accepted the swapped engine");
    let said = format!("{}{}", outcome.stderr, outcome.stdout);
    let expected = format!(
        "container engine in pod ml/llama-1 runs image {}",
        busybox.digest
    );
    let reason = said
        .lines()
        .find(|line| line.contains(&expected))
        .with_context(|| format!("aver verify refused, but without {expected:?}:\n{said}"))?;
    println!("    refused:");
    show(reason.trim());
    demo.proves(
        "the node ran what it was asked to but recorded it, so the client refuses an endpoint whose engine is not the image it allows, and says which image runs.",
    );

    // --- 6. Debug container and exec.
    demo.step(
        "kubectl debug and kubectl exec into the genuine pod: refused by the gate at the CRI",
    );
    let debugger = cri
        .create_container(
            &genuine.pod,
            ContainerSpec::new("debugger", BUSYBOX_IMAGE).command(["sleep", "3600"]),
        )
        .await;
    let message = match debugger {
        Ok(id) => bail!("the gate let a debug container into the confidential pod: {id}"),
        Err(e) => e.root_cause().to_string(),
    };
    ensure!(
        message.starts_with("CRI error PermissionDenied: aver-node: "),
        "CreateContainer debugger failed, but not with the gate's PermissionDenied: {message}"
    );
    println!("    CreateContainer debugger ({BUSYBOX_IMAGE}) in ml/llama-0:");
    show(&message);
    let behind = runtime.list_containers().await?;
    ensure!(
        !behind
            .iter()
            .any(|c| c.metadata.as_ref().is_some_and(|m| m.name == "debugger")),
        "containerd has a debugger container behind the gate"
    );
    println!("    containerd (behind the gate) has no debugger container");
    let exec = cri
        .runtime()
        .exec_sync(cri::ExecSyncRequest {
            container_id: genuine.engine.clone(),
            cmd: vec!["cat".into(), "/proc/1/environ".into()],
            timeout: 5,
        })
        .await;
    let status = match exec {
        Ok(response) => bail!("the gate let an exec into the engine: {response:?}"),
        Err(status) => status,
    };
    ensure!(
        status.code() == tonic::Code::PermissionDenied,
        "ExecSync into the engine failed, but not with PermissionDenied: {status:?}"
    );
    println!("    ExecSync `cat /proc/1/environ` in engine of ml/llama-0:");
    show(&format!(
        "CRI error {:?}: {}",
        status.code(),
        status.message()
    ));
    let outcome = aver_verify_file(&genuine.url(), &policy_path);
    ensure!(
        outcome.ok,
        "the genuine pod no longer verifies after the refusals:\n{}{}",
        outcome.stderr,
        outcome.stdout
    );
    println!("    aver verify {}: still verified", genuine.url());
    demo.proves(
        "not even the cluster's administrator can add a container to a confidential pod or run a command in it, so the pod that was measured stays the pod that runs.",
    );

    // --- 7. The node log.
    demo.step("The node log: every event since the TPM was reset");
    let log = node.node_log()?;
    show(&describe_log(&log, None));
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &log {
        *kinds.entry(entry.event.kind()).or_default() += 1;
    }
    let count = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
    println!(
        "    {} events: {} agent start(s), {} sandboxes, {} containers, {} TLS keys, {} accesses; replayed PCR {NODE_PCR} {}",
        log.len(),
        count("agent-start"),
        count("pod-sandbox"),
        count("container"),
        count("tls-key"),
        count("access"),
        short(&replay(&log).to_string())
    );
    ensure!(
        count("agent-start") == 1
            && count("pod-sandbox") == 2
            && count("container") == 4
            && count("tls-key") == 2
            && count("access") == 0,
        "unexpected node log: {kinds:?}"
    );
    let refusals: Vec<String> = fs::read_to_string(node.log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once("refused: ").map(|(_, r)| r))
        .map(|refusal| match refusal.rsplit_once(" reason=") {
            Some((text, reason)) => format!("{text} [{}]", reason.trim_matches('"')),
            None => refusal.to_owned(),
        })
        .collect();
    println!("    aver-node's own log, refusals ({}):", refusals.len());
    for refusal in &refusals {
        show(refusal);
    }
    ensure!(
        refusals.len() >= 2,
        "aver-node logged {} refusals, expected the debug container and the exec",
        refusals.len()
    );
    demo.proves(
        "the log holds what ran and nothing that was refused, and the verifier checks it against the TPM's PCR rather than trusting it as data.",
    );
    Ok(())
}

/// One line per event, for the sandbox `only` or all of them.
fn describe_log(log: &[NodeLogEntry], only: Option<&str>) -> String {
    let mut pods: BTreeMap<&str, String> = BTreeMap::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut lines = Vec::new();
    for (i, entry) in log.iter().enumerate() {
        let (sandbox, text) = match &entry.event {
            NodeEvent::AgentStart {
                agent_version,
                policy,
            } => (
                None,
                format!(
                    "agent-start  aver-node {agent_version}, node policy {}",
                    short(&policy_digest(policy).to_string())
                ),
            ),
            NodeEvent::PodSandbox {
                sandbox_id,
                sandbox,
            } => {
                pods.insert(sandbox_id, sandbox.pod.to_string());
                (
                    Some(sandbox_id),
                    format!(
                        "pod-sandbox  {} (sandbox {}){}",
                        sandbox.pod,
                        short_id(sandbox_id),
                        sandbox
                            .confidential_model
                            .as_deref()
                            .map(|m| format!(", confidential model {m}"))
                            .unwrap_or_default()
                    ),
                )
            }
            NodeEvent::Container {
                sandbox_id,
                container_id,
                name,
                image,
                spec,
                ..
            } => {
                names.insert(container_id, name);
                let manifest = image
                    .repo_digests
                    .first()
                    .and_then(|d| d.split_once('@'))
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_else(|| image.id.to_string());
                (
                    Some(sandbox_id),
                    format!(
                        "container    {}/{name} image {} ({}), spec {}",
                        pod_name(&pods, sandbox_id),
                        short(&manifest),
                        image.reference,
                        short(&spec.digest().to_string())
                    ),
                )
            }
            NodeEvent::Access {
                sandbox_id, kind, ..
            } => (
                Some(sandbox_id),
                format!(
                    "access       {} into {}",
                    kind.name(),
                    pod_name(&pods, sandbox_id)
                ),
            ),
            NodeEvent::TlsKey {
                sandbox_id,
                container_id,
                spki_sha256,
                model_digest,
            } => (
                Some(sandbox_id),
                format!(
                    "tls-key      {}/{} key {}, model {}",
                    pod_name(&pods, sandbox_id),
                    names.get(container_id.as_str()).unwrap_or(&"?"),
                    short(&spki_sha256.to_string()),
                    short(&model_digest.to_string())
                ),
            ),
        };
        if only.is_none() || sandbox.map(String::as_str) == only {
            lines.push(format!("#{:<2} {text}", i + 1));
        }
    }
    lines.join("\n")
}

fn pod_name(pods: &BTreeMap<&str, String>, sandbox_id: &str) -> String {
    pods.get(sandbox_id)
        .cloned()
        .unwrap_or_else(|| short_id(sandbox_id).to_owned())
}
