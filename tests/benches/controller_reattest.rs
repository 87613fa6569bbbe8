//! Controller attestation throughput: the production re-attestation loop
//! (TLS attester, verifier) on ONE core (a current-thread runtime) against
//! local enclaves on swtpm, and the controller's CPU time per attestation.
//! The enclaves and swtpms are separate processes, so this process's CPU
//! time is the controller's alone.
//!
//! `cargo build --release --bins && cargo bench -p aver-tests --bench controller_reattest`

use std::sync::Arc;
use std::time::{Duration, Instant};

use aver_controller::config::ReattestConfig;
use aver_controller::metrics::Metrics;
use aver_controller::tls_attester::TlsAttester;
use aver_controller::{AttestTarget, ModelTargets, Reattester, ResultStore, StaticSource};
use aver_tests::node::{policy_for, TestNode};
use aver_verifier::measurement::model_digest;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;

const NODES: usize = 4;
const TARGETS: usize = 2_000;
const MEASURE: Duration = Duration::from_secs(10);

/// User + system CPU time of this process, from /proc/self/stat.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Ok(Duration::from_millis(ticks * 10))
}

fn main() -> anyhow::Result<()> {
    if !aver_tests::swtpm_available() {
        println!("controller_reattest bench skipped: swtpm is not installed");
        return Ok(());
    }
    let nodes: Vec<TestNode> = (0..NODES)
        .map(|_| TestNode::start())
        .collect::<Result<_, _>>()?;
    // The engine is never called: attestation only needs the enclave.
    let enclaves = nodes
        .iter()
        .map(|n| n.serve("http://127.0.0.1:9", &[]))
        .collect::<Result<Vec<_>, _>>()?;
    let ak_names = nodes
        .iter()
        .map(TestNode::ak_name)
        .collect::<Result<Vec<_>, _>>()?;
    let policy = Arc::new(aver_tests::checked(&policy_for(
        &ak_names,
        model_digest(nodes[0].model.path())?,
    )));

    let targets = (0..TARGETS)
        .map(|i| AttestTarget {
            pod: format!("pod-{i}"),
            pod_uid: format!("uid-{i}"),
            node: format!("node-{}", i % NODES),
            address: "127.0.0.1".into(),
            port: enclaves[i % NODES].port,
        })
        .collect();
    // An interval far shorter than the loop can serve keeps it saturated.
    let source = StaticSource::new(vec![ModelTargets {
        key: ObjectRef::new("bench").within("default"),
        reference: ObjectReference::default(),
        policy,
        interval: Duration::from_millis(500),
        max_age: Duration::from_secs(300),
        targets,
    }]);
    let metrics = Metrics::new();
    let (events, mut sink) = tokio::sync::mpsc::unbounded_channel();
    let reattester = Reattester::new(
        source,
        Arc::new(TlsAttester::new(Duration::from_secs(10))),
        ResultStore::new(),
        ReattestConfig::default(),
        metrics.clone(),
        events,
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::spawn(async move { while sink.recv().await.is_some() {} });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reattester.run(async {
            let _ = stopped.await;
        }));
        // Warm up until every endpoint was seen once, then measure.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (count0, cpu0, t0) = (metrics.attestation_count("verified"), cpu_time()?, Instant::now());
        tokio::time::sleep(MEASURE).await;
        let (count1, cpu1, elapsed) = (metrics.attestation_count("verified"), cpu_time()?, t0.elapsed());
        let _ = stop.send(());
        let _ = task.await;
        let done = count1 - count0;
        let rate = done as f64 / elapsed.as_secs_f64();
        let cpu = (cpu1 - cpu0).as_secs_f64();
        let cpu_per = cpu / done.max(1) as f64;
        let failures = metrics.attestation_count("unreachable") + metrics.attestation_count("tls");
        println!("# controller re-attestation bench ({NODES} swtpm enclaves, {TARGETS} targets, 1 controller core)\n");
        println!("| | value |\n| --- | --- |");
        println!("| attestations verified in {:.1} s | {done} |", elapsed.as_secs_f64());
        println!("| endpoints verified per second | {rate:.0} |");
        println!("| controller CPU time | {cpu:.2} s ({:.0} % of one core) |", 100.0 * cpu / elapsed.as_secs_f64());
        println!("| controller CPU per attestation | {:.3} ms |", cpu_per * 1e3);
        println!("| endpoints one core can re-attest per 60 s interval (CPU bound) | {:.0} |", 60.0 / cpu_per);
        println!("| transient failures | {failures} |");
        anyhow::Ok(())
    })
}
