//! What the gate costs, in one run so that both sides see the same noise:
//!
//! - a container start: the same pod sandbox and container created and
//!   started through `aver-node` (admission, image resolution, canonical
//!   spec, write-ahead log, TPM extend) and directly on the containerd
//!   behind it, interleaved;
//! - an evidence request: an attested connect (TLS handshake, evidence for a
//!   fresh nonce, verification) to an enclave whose quotes come from
//!   `aver-node` over the agent socket (node log in the evidence, v2), and
//!   to an enclave quoting its own swtpm directly (legacy v1), alternating.
//!
//! Medians and their ratio.
//!
//! `cargo build --workspace --bins && cargo build --release --bins && cargo bench -p aver-tests --bench node_gate`
//! (needs root, containerd, runc, the CNI plugins and swtpm; the node's
//! images are built from the release binaries, like the legacy enclave).

use std::time::{Duration, Instant};

use aver_client::{AttestedConnection, Endpoint};
use aver_node_log::CONFIDENTIAL_LABEL;
use aver_tests::confidential_pod::{
    client_policy, engine_container, expected_enclave_spec, expected_spec, run_confidential_pod,
};
use aver_tests::containerd::{containerd_missing, ContainerSpec, CriClient, BUSYBOX_IMAGE};
use aver_tests::node::TestNode;
use aver_tests::node_agent::NodeAgent;
use aver_tests::stub_upstream::StubUpstream;
use aver_verifier::measurement::model_digest;
use aver_verifier::AttestationPolicy;

const ATTESTS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(10);

const ROUNDS: usize = 15;

fn main() -> anyhow::Result<()> {
    let missing = containerd_missing();
    if !missing.is_empty() || !aver_tests::swtpm_available() {
        println!("node_gate bench skipped: missing {missing:?} or swtpm");
        return Ok(());
    }
    // The node's images from the same (release) binaries as the legacy
    // enclave it is compared with.
    if std::env::var_os("AVER_IMAGES_PROFILE").is_none() {
        std::env::set_var("AVER_IMAGES_PROFILE", "release");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node = NodeAgent::start()?;
    runtime.block_on(run(&node))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
struct Samples {
    sandbox: Vec<f64>,
    container: Vec<f64>,
}

async fn round(cri: &mut CriClient, name: &str, into: &mut Samples) -> anyhow::Result<()> {
    let uid = format!("{name}-uid");
    let t = Instant::now();
    let pod = cri
        .run_pod("ml", name, &uid, &[(CONFIDENTIAL_LABEL, "bench")])
        .await?;
    into.sandbox.push(ms(t.elapsed()));
    let t = Instant::now();
    let id = cri
        .create_container(
            &pod,
            ContainerSpec::new("engine", BUSYBOX_IMAGE).command(["sleep", "3600"]),
        )
        .await?;
    cri.start_container(&id).await?;
    into.container.push(ms(t.elapsed()));
    cri.stop_pod(&pod.id).await?;
    cri.remove_pod(&pod.id).await?;
    Ok(())
}

async fn run(node: &NodeAgent) -> anyhow::Result<()> {
    let mut gated = node.cri().await?;
    let mut direct = node.runtime_cri().await?;
    // Warm both paths (image unpack, first CNI call).
    round(&mut gated, "warm-gated", &mut Samples::default()).await?;
    round(&mut direct, "warm-direct", &mut Samples::default()).await?;
    let (mut through, mut plain) = (Samples::default(), Samples::default());
    for i in 0..ROUNDS {
        round(&mut gated, &format!("gated-{i}"), &mut through).await?;
        round(&mut direct, &format!("direct-{i}"), &mut plain).await?;
    }
    let log = node.node_log()?;
    println!("# node gate bench ({ROUNDS} rounds, interleaved; real containerd, runc, swtpm)\n");
    println!("| step | through aver-node | containerd directly | ratio | added |");
    println!("| --- | --- | --- | --- | --- |");
    for (step, a, b) in [
        ("RunPodSandbox", &mut through.sandbox, &mut plain.sandbox),
        (
            "CreateContainer + StartContainer",
            &mut through.container,
            &mut plain.container,
        ),
    ] {
        let (a, b) = (median(a), median(b));
        println!(
            "| {step} | {a:.1} ms | {b:.1} ms | {:.2} | {:.1} ms |",
            a / b,
            a - b
        );
    }
    println!("\nnode log after the run: {} events", log.len());
    evidence(node, &mut gated).await
}

async fn attest_median(
    endpoint: &Endpoint,
    policy: &AttestationPolicy,
    out: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    AttestedConnection::attest(endpoint, &aver_tests::checked(policy), TIMEOUT).await?;
    out.push(ms(t.elapsed()));
    Ok(())
}

async fn evidence(node: &NodeAgent, cri: &mut CriClient) -> anyhow::Result<()> {
    let pod = run_confidential_pod(node, cri, "bench-evidence", engine_container()).await?;
    let policy = client_policy(
        node,
        model_digest(&pod.model_dir)?,
        &expected_enclave_spec(node, &pod.enclave_spec),
        &expected_spec(&engine_container(), &[]),
    );
    let via_node = Endpoint::from_url(&pod.url())?;
    let legacy_node = TestNode::start()?;
    let stub = StubUpstream::start().await?;
    let legacy = legacy_node.serve(&stub.url(), &[])?;
    let legacy_endpoint = Endpoint::from_url(&legacy.url)?;
    let legacy_policy = legacy_node.policy()?;
    attest_median(&via_node, &policy, &mut Vec::new()).await?;
    attest_median(&legacy_endpoint, &legacy_policy, &mut Vec::new()).await?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ATTESTS {
        attest_median(&via_node, &policy, &mut a).await?;
        attest_median(&legacy_endpoint, &legacy_policy, &mut b).await?;
    }
    let (a, b) = (median(&mut a), median(&mut b));
    let log = node.node_log()?.len();
    println!("\n## evidence request ({ATTESTS} attested connects each, alternating)\n");
    println!("| enclave | attested connect, median |");
    println!("| --- | --- |");
    println!("| quotes from aver-node (agent socket, {log}-event node log, v2) | {a:.2} ms |");
    println!("| quotes its own swtpm (legacy, v1) | {b:.2} ms |");
    println!("| ratio | {:.2} |", a / b);
    println!("| added per evidence request | {:.2} ms |", a - b);
    Ok(())
}
