//! The gate at the CRI, against a real containerd, the real `aver-node`
//! and swtpm (docs/node-measurement.md): what the kubelet asks for is
//! admitted under the node policy and measured into PCR 15 before it can
//! start, and the verifier, replaying the node log, accepts exactly the
//! pod its policy describes.
//!
//! The test plays the kubelet over `aver-node`'s CRI socket
//! ([`NodeAgent::cri`]) and looks behind the gate on containerd's own
//! socket ([`NodeAgent::runtime_cri`]). The expected container specs are
//! built from the configurations the test sends
//! ([`aver_tests::confidential_pod`]), not read back from the node log, so
//! a gate that recorded something else than it received fails
//! verification.
//!
//! Needs root, containerd, runc, the CNI plugins and swtpm: skipped with a
//! message outside CI when one is missing, a failure under `CI=true`.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Instant;

use aver_crds::AttestationPolicy;
use aver_node_log::{NodeEvent, CONFIDENTIAL_LABEL};
use aver_tests::confidential_pod::{
    self, client_policy, engine_container, expected_enclave_spec, expected_spec, ConfidentialPod,
    ENCLAVE_PORT, ENGINE_ADDR, MODEL, NAMESPACE, PATIENCE,
};
use aver_tests::containerd::{
    build_test_images, images_dir, ContainerSpec, CriClient, BUSYBOX_IMAGE,
};
use aver_tests::node_agent::{
    default_node_policy, NodeAgent, AGENT_MOUNT, AGENT_PROBE_IMAGE, AGENT_SOCKET_IN_POD,
    STUB_ENGINE_IMAGE,
};
use aver_tests::{require_containerd, require_swtpm};
use aver_verifier::measurement::model_digest;
use k8s_cri::v1 as cri;

/// To the real stderr: the harness shows `eprintln!` only for failures.
fn note(message: &str) {
    let _ = writeln!(io::stderr(), "node_gate: {message}");
}

// ---------------------------------------------------------------------------
// Pods and verification (the pods, expected specs and client policy are
// aver_tests::confidential_pod's, shared with the demo)

/// Runs `ml/<name>` through the gate and waits until its enclave serves.
async fn run_confidential_pod(
    node: &NodeAgent,
    cri: &mut CriClient,
    name: &str,
    engine: ContainerSpec,
) -> ConfidentialPod {
    confidential_pod::run_confidential_pod(node, cri, name, engine)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `aver verify URL --policy FILE`: exit status, stdout, stderr.
fn aver_verify(url: &str, policy: &AttestationPolicy, dir: &Path) -> (bool, String, String) {
    let outcome = confidential_pod::aver_verify(url, policy, dir);
    (outcome.ok, outcome.stdout, outcome.stderr)
}

fn assert_verified(url: &str, policy: &AttestationPolicy, dir: &Path) -> String {
    let (ok, stdout, stderr) = aver_verify(url, policy, dir);
    assert!(ok, "aver verify {url} failed:\n{stderr}{stdout}");
    stdout
}

/// Verification must fail, saying `expected`.
fn assert_refused(url: &str, policy: &AttestationPolicy, dir: &Path, expected: &str) -> String {
    let (ok, stdout, stderr) = aver_verify(url, policy, dir);
    assert!(
        !ok,
        "aver verify {url} passed but must fail with {expected:?}:\n{stdout}"
    );
    let said = format!("{stderr}{stdout}");
    assert!(
        said.contains(expected),
        "aver verify {url} failed, but without {expected:?}:\n{said}"
    );
    said
}

/// The CRI error, which the harness formats as `CRI error <Code>: <message>`.
fn cri_refusal<T: std::fmt::Debug>(result: anyhow::Result<T>, what: &str) -> String {
    match result {
        Ok(value) => panic!("{what} was let through: {value:?}"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains("CRI error PermissionDenied: aver-node: "),
                "{what} failed, but not with the gate's PermissionDenied: {text}"
            );
            text
        }
    }
}

fn status_refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) -> String {
    match result {
        Ok(value) => panic!("{what} was let through: {value:?}"),
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{what}: {}",
                status.message()
            );
            status.message().to_owned()
        }
    }
}

async fn start_node(policy: impl FnOnce(&Path) -> String + Send + 'static) -> NodeAgent {
    let t0 = Instant::now();
    let node = tokio::task::spawn_blocking(move || NodeAgent::start_with_policy(policy))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the node does not start: {e:#}"));
    note(&format!(
        "swtpm, containerd and aver-node up in {:?}",
        t0.elapsed()
    ));
    node
}

fn busybox_manifest() -> String {
    build_test_images().expect("test images");
    fs::read_to_string(images_dir().join("busybox.digest"))
        .unwrap()
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------
// The tests

/// One node for every scenario: the genuine pod verifies; pods whose
/// engine differs in image, args or env are named by the verifier; debug
/// containers, exec/attach/port-forward, host-network and privileged pods
/// are refused at the CRI; a container in a confidential pod reaches
/// neither the TPM nor, as anything but the enclave, the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_measures_confidential_pods_and_refuses_the_rest() {
    require_containerd!();
    require_swtpm!();
    let t0 = Instant::now();
    // A system pod namespace besides confidential pods: busybox may run in
    // kube-system, without host namespaces or privileges.
    let busybox = busybox_manifest();
    let node = start_node(move |agent_dir| {
        format!(
            "{}system:\n- name: node-tools\n  namespace: kube-system\n  images: [\"{busybox}\"]\n",
            default_node_policy(agent_dir)
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cri = node.cri().await.unwrap();
    let mut runtime = node.runtime_cri().await.unwrap();

    // --- The genuine pod verifies.
    let genuine = run_confidential_pod(&node, &mut cri, "llama-0", engine_container()).await;
    note(&format!(
        "genuine pod at {} after {:?}",
        genuine.url(),
        t0.elapsed()
    ));
    let enclave_spec = expected_enclave_spec(&node, &genuine.enclave_spec);
    let engine_spec = expected_spec(&engine_container(), &[]);
    let model = model_digest(&genuine.model_dir).unwrap();
    let policy = client_policy(&node, model, &enclave_spec, &engine_spec);
    let report = assert_verified(&genuine.url(), &policy, dir.path());
    note(&format!("aver verify {}:\n{report}", genuine.url()));

    // The node log: agent-start, the sandbox, both containers with the
    // specs built above, the enclave's key.
    let log = node.node_log().unwrap();
    assert!(
        matches!(&log[0].event, NodeEvent::AgentStart { policy, .. } if policy == node.policy()),
        "{:?}",
        log[0]
    );
    let recorded = |id: &str| {
        log.iter()
            .find_map(|e| match &e.event {
                NodeEvent::Container {
                    container_id,
                    spec,
                    image,
                    ..
                } if container_id == id => Some((spec.clone(), image.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("container {id} is not in the node log"))
    };
    let (spec, image) = recorded(&genuine.engine);
    assert_eq!(
        spec.digest(),
        engine_spec.digest(),
        "{:?}",
        spec.differences(&engine_spec)
    );
    assert_eq!(image.id.to_string(), node.image(STUB_ENGINE_IMAGE).id);
    let (spec, _) = recorded(&genuine.enclave);
    assert_eq!(
        spec.digest(),
        enclave_spec.digest(),
        "{:?}",
        spec.differences(&enclave_spec)
    );

    // --- Engines that differ from the policy: named by the verifier.
    let swapped = run_confidential_pod(
        &node,
        &mut cri,
        "llama-1",
        ContainerSpec::new("engine", BUSYBOX_IMAGE).command(["/bin/sleep", "3600"]),
    )
    .await;
    let busybox = node.image(BUSYBOX_IMAGE);
    let said = assert_refused(
        &swapped.url(),
        &policy,
        dir.path(),
        &format!(
            "container engine in pod ml/llama-1 runs image {}",
            busybox.digest
        ),
    );
    note(&format!("engine image swapped: {}", said.trim()));

    let with_arg = engine_container().args([ENGINE_ADDR, "--log-prompts"]);
    let with_arg_digest = expected_spec(&with_arg, &[]).digest();
    let extra_arg = run_confidential_pod(&node, &mut cri, "llama-2", with_arg).await;
    let said = assert_refused(
        &extra_arg.url(),
        &policy,
        dir.path(),
        &format!(
            "container engine in pod ml/llama-2 runs spec {with_arg_digest}, not an allowed one"
        ),
    );
    note(&format!("engine arg added: {}", said.trim()));

    let with_proxy = engine_container().env("HTTPS_PROXY", "http://10.0.0.1:3128");
    let with_proxy_digest = expected_spec(&with_proxy, &[]).digest();
    let proxied = run_confidential_pod(&node, &mut cri, "llama-3", with_proxy).await;
    let said = assert_refused(
        &proxied.url(),
        &policy,
        dir.path(),
        &format!(
            "container engine in pod ml/llama-3 runs spec {with_proxy_digest}, not an allowed one"
        ),
    );
    note(&format!("engine env added: {}", said.trim()));

    // --- A debug container in the confidential pod: refused, never created.
    let refusal = cri_refusal(
        cri.create_container(
            &genuine.pod,
            ContainerSpec::new("debugger", BUSYBOX_IMAGE).command(["sleep", "3600"]),
        )
        .await,
        "CreateContainer debugger",
    );
    assert!(
        refusal.contains(&format!(
            "container debugger (image {}) in pod ml/llama-0: not an allowed container of a confidential model pod",
            busybox.digest
        )),
        "{refusal}"
    );
    note(&format!("debug container: {refusal}"));
    let behind = runtime.list_containers().await.unwrap();
    assert!(
        !behind
            .iter()
            .any(|c| c.metadata.as_ref().is_some_and(|m| m.name == "debugger")),
        "containerd has a debugger container: {behind:?}"
    );

    // --- Exec, attach, port-forward into the confidential pod: refused.
    let exec_sync = cri
        .runtime()
        .exec_sync(cri::ExecSyncRequest {
            container_id: genuine.engine.clone(),
            cmd: vec!["cat".into(), "/proc/1/environ".into()],
            timeout: 5,
        })
        .await;
    let message = status_refusal(exec_sync, "ExecSync into the engine");
    assert!(
        message.contains("exec-sync into container engine of pod ml/llama-0: nobody may exec"),
        "{message}"
    );
    let exec = cri
        .runtime()
        .exec(cri::ExecRequest {
            container_id: genuine.engine.clone(),
            cmd: vec!["/bin/sh".into()],
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await;
    let message = status_refusal(exec, "Exec into the engine");
    assert!(
        message.contains("exec into container engine of pod ml/llama-0"),
        "{message}"
    );
    let attach = cri
        .runtime()
        .attach(cri::AttachRequest {
            container_id: genuine.enclave.clone(),
            stdout: true,
            ..Default::default()
        })
        .await;
    let message = status_refusal(attach, "Attach to the enclave");
    assert!(
        message.contains("attach into container enclave of pod ml/llama-0"),
        "{message}"
    );
    let forward = cri
        .runtime()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: genuine.pod.id.clone(),
            port: vec![i32::from(ENCLAVE_PORT)],
        })
        .await;
    let message = status_refusal(forward, "PortForward into the pod");
    assert!(
        message.contains("port-forward into pod ml/llama-0"),
        "{message}"
    );
    // Refused accesses leave no access event, and the pod still verifies.
    assert!(
        !node
            .node_log()
            .unwrap()
            .iter()
            .any(|e| matches!(e.event, NodeEvent::Access { .. })),
        "an access event was recorded"
    );
    assert_verified(&genuine.url(), &policy, dir.path());

    // --- Host namespaces and privileges the node policy does not allow.
    let pods_before = runtime.list_pods().await.unwrap().len();
    let refused_pod = |namespace: &str,
                       name: &str,
                       confidential: bool,
                       edit: &dyn Fn(&mut cri::PodSandboxConfig)| {
        let labels: Vec<(&str, &str)> = if confidential {
            vec![(CONFIDENTIAL_LABEL, MODEL)]
        } else {
            vec![]
        };
        let mut config = cri.pod_config(namespace, name, &format!("uid-{name}"), &labels);
        edit(&mut config);
        config
    };
    let host_network = |c: &mut cri::PodSandboxConfig| {
        let ns = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        ns.namespace_options.as_mut().unwrap().network = cri::NamespaceMode::Node as i32;
    };
    let privileged = |c: &mut cri::PodSandboxConfig| {
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
    };
    let cases = [
        (
            refused_pod("kube-system", "tools-hostnet", false, &host_network),
            "pod kube-system/tools-hostnet: not a confidential model pod, and no system pod of the node policy allows it",
        ),
        (
            refused_pod("kube-system", "tools-privileged", false, &privileged),
            "pod kube-system/tools-privileged: not a confidential model pod, and no system pod of the node policy allows it",
        ),
        (
            refused_pod("default", "stray", false, &|_| {}),
            "pod default/stray: not a confidential model pod",
        ),
        (
            refused_pod(NAMESPACE, "llama-hostnet", true, &host_network),
            "pod ml/llama-hostnet: a confidential model pod may not use the host network",
        ),
        (
            refused_pod(NAMESPACE, "llama-privileged", true, &privileged),
            "pod ml/llama-privileged: a confidential model pod may not use privileged mode",
        ),
    ];
    for (config, expected) in cases {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let refusal = cri_refusal(
            cri.run_pod_with_config(config).await,
            &format!("RunPodSandbox {name}"),
        );
        assert!(
            refusal.contains(expected),
            "{refusal}\nexpected {expected:?}"
        );
    }
    // The same system pod without host network or privileges is admitted,
    // so the refusals above are about what they asked for.
    let tools = cri
        .run_pod("kube-system", "tools", "uid-tools", &[])
        .await
        .unwrap();
    let behind = runtime.list_pods().await.unwrap();
    assert_eq!(behind.len(), pods_before + 1, "{behind:?}");
    assert!(behind.iter().any(|p| p.id == tools.id));

    // --- A container in a confidential pod that tries to reach the TPM:
    // no TPM device, swtpm's ports not reachable from the pod's network,
    // and the agent socket serves the enclave container only.
    let gateway = {
        let mut octets: Vec<&str> = genuine.ip.split('.').collect();
        octets[3] = "1";
        octets.join(".")
    };
    let port = node.tpm_port();
    let zero = "0".repeat(64);
    let script = format!(
        "for d in /dev/tpm0 /dev/tpmrm0; do if test -e $d; then echo \"present $d\"; else echo \"absent $d\"; fi; done\n\
         for host in 127.0.0.1 {gateway}; do\n\
           if nc -w 2 $host {port} </dev/null; then echo \"swtpm reachable at $host:{port}\"; else echo \"swtpm unreachable at $host:{port}\"; fi\n\
         done\n\
         unix-http {AGENT_SOCKET_IN_POD} POST /v1/tls-key '{{\"spkiSha256\":\"sha256:{zero}\",\"modelDigest\":\"sha256:{zero}\"}}'\n\
         unix-http {AGENT_SOCKET_IN_POD} POST /v1/quote '{{\"qualifyingData\":\"{zero}\"}}'\n\
         echo probe done\n"
    );
    let uid = "uid-llama-probe";
    let probe_pod = cri
        .run_pod(
            NAMESPACE,
            "llama-probe",
            uid,
            &[(CONFIDENTIAL_LABEL, MODEL)],
        )
        .await
        .unwrap();
    // Only the key holder gets the agent socket, and only from aver-node: a
    // host path mount of the socket's directory is refused at the CRI.
    let probe_spec =
        || ContainerSpec::new("engine", AGENT_PROBE_IMAGE).command(["/bin/sh", "-c", &script]);
    let refused = cri
        .create_container(
            &probe_pod,
            probe_spec().mount(&node.agent_dir(), AGENT_MOUNT, true),
        )
        .await
        .expect_err("a host path mount of the agent socket is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("PermissionDenied") || message.contains("permission"),
        "{message}"
    );
    assert!(
        message.contains(&format!("mounts host path {}", node.agent_dir().display())),
        "the refusal names the mount: {message}"
    );
    let probe = cri
        .create_container(&probe_pod, probe_spec())
        .await
        .unwrap();
    cri.start_container(&probe).await.unwrap();
    cri.wait_exited(&probe, PATIENCE).await.unwrap();
    let output = cri.container_logs(&probe).await.unwrap();
    note(&format!("probe container:\n{output}"));
    for expected in [
        "absent /dev/tpm0".to_owned(),
        "absent /dev/tpmrm0".to_owned(),
        format!("swtpm unreachable at 127.0.0.1:{port}"),
        format!("swtpm unreachable at {gateway}:{port}"),
        format!("unix-http: cannot connect to {AGENT_SOCKET_IN_POD}"),
        "probe done".to_owned(),
    ] {
        assert!(output.contains(&expected), "no {expected:?} in:\n{output}");
    }
    assert!(
        !output.contains("HTTP/1.1"),
        "the agent answered:\n{output}"
    );
    assert!(
        !node.node_log().unwrap().iter().any(|e| {
            matches!(&e.event, NodeEvent::TlsKey { container_id, .. } if *container_id == probe)
        }),
        "the probe's key was recorded"
    );

    // The genuine pod is unaffected by all of it.
    assert_verified(&genuine.url(), &policy, dir.path());
    note(&format!("done in {:?}", t0.elapsed()));
}

/// aver-node restarted on the same TPM and state: the log continues (a
/// second agent-start after the first one's events), the genuine pod still
/// verifies, a container measured before the restart starts after it, and
/// one created behind the gate cannot be started through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_agent_continues_its_log() {
    require_containerd!();
    require_swtpm!();
    let t0 = Instant::now();
    let mut node = start_node(default_node_policy).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cri = node.cri().await.unwrap();

    let genuine = run_confidential_pod(&node, &mut cri, "llama-0", engine_container()).await;
    let model = model_digest(&genuine.model_dir).unwrap();
    let policy = client_policy(
        &node,
        model,
        &expected_enclave_spec(&node, &genuine.enclave_spec),
        &expected_spec(&engine_container(), &[]),
    );
    assert_verified(&genuine.url(), &policy, dir.path());

    // Measured before the restart, started after it.
    let waiting_pod = cri
        .run_pod(
            NAMESPACE,
            "llama-1",
            "uid-llama-1",
            &[(CONFIDENTIAL_LABEL, MODEL)],
        )
        .await
        .unwrap();
    let waiting = cri
        .create_container(&waiting_pod, engine_container())
        .await
        .unwrap();

    let before = node.node_log().unwrap();
    drop(cri);
    let t_restart = Instant::now();
    tokio::task::block_in_place(|| node.restart()).expect("aver-node restarts");
    note(&format!("aver-node restarted in {:?}", t_restart.elapsed()));
    let after = node.node_log().unwrap();
    assert_eq!(after.len(), before.len() + 1, "{after:#?}");
    assert_eq!(after[..before.len()], before[..], "the log continues");
    let starts = after
        .iter()
        .filter(|e| matches!(e.event, NodeEvent::AgentStart { .. }))
        .count();
    assert_eq!(starts, 2);
    assert!(matches!(
        after.last().unwrap().event,
        NodeEvent::AgentStart { .. }
    ));

    // The genuine pod's enclave quotes through the restarted agent.
    let report = assert_verified(&genuine.url(), &policy, dir.path());
    note(&format!("after the restart:\n{report}"));

    let mut cri = node.cri().await.unwrap();
    cri.start_container(&waiting)
        .await
        .expect("a container measured before the restart starts after it");

    // Created behind the gate: not in the log, so it cannot be started.
    let mut runtime = node.runtime_cri().await.unwrap();
    let unmeasured = runtime
        .create_container(
            &waiting_pod,
            ContainerSpec::new("sidecar", BUSYBOX_IMAGE).command(["sleep", "3600"]),
        )
        .await
        .unwrap();
    let refusal = cri_refusal(
        cri.start_container(&unmeasured).await,
        "StartContainer of an unmeasured container",
    );
    assert!(
        refusal.contains(&format!(
            "container {unmeasured} was not created through aver-node and is not in the node log"
        )),
        "{refusal}"
    );
    let status = runtime.container_status(&unmeasured).await.unwrap();
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerCreated as i32,
        "{status:?}"
    );
    assert_verified(&genuine.url(), &policy, dir.path());
    note(&format!("done in {:?}", t0.elapsed()));
}
