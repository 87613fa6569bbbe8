//! What the gate costs a container start: the same pod sandbox and
//! container created and started through `aver-node` (admission, image
//! resolution, canonical spec, write-ahead log, TPM extend) and directly on
//! the containerd behind it, interleaved in one run so both see the same
//! noise. Medians and their ratio.
//!
//! `cargo build --workspace --bins && cargo bench -p aver-tests --bench node_gate`
//! (needs root, containerd, runc, the CNI plugins and swtpm).

use std::time::{Duration, Instant};

use aver_node_log::CONFIDENTIAL_LABEL;
use aver_tests::containerd::{containerd_missing, ContainerSpec, CriClient, BUSYBOX_IMAGE};
use aver_tests::node_agent::NodeAgent;

const ROUNDS: usize = 15;

fn main() -> anyhow::Result<()> {
    let missing = containerd_missing();
    if !missing.is_empty() || !aver_tests::swtpm_available() {
        println!("node_gate bench skipped: missing {missing:?} or swtpm");
        return Ok(());
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
    Ok(())
}
