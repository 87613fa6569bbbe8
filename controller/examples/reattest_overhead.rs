//! The controller's own cost per attestation, without TLS or verification:
//! the re-attestation loop (scheduling, jitter, bounded concurrency,
//! outcome recording) and status computation, driving N endpoints through
//! an attester that answers at once, on one core.
//!
//! `cargo run --release -p aver-controller --example reattest_overhead -- [ENDPOINTS] [SECONDS]`
//!
//! Add the verifier's cost per evidence (BENCHMARKS.md) and a TLS handshake
//! to get the full cost of one attestation; the end-to-end benchmark
//! against enclaves on swtpm measures that directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aver_controller::attestation::{AttestError, AttestTarget, AttestedEndpoint, EndpointAttester};
use aver_controller::config::ReattestConfig;
use aver_controller::metrics::Metrics;
use aver_controller::source::{ModelTargets, StaticSource};
use aver_controller::status::{self, StatusInputs};
use aver_controller::{Reattester, ResultStore};
use aver_crds::{
    AllowedWorkload, AttestationPolicy, BootPolicyResult, EndpointMeasurements, Sha256Digest,
    TrustRoots,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;

/// Answers every attestation at once with the same endpoint.
struct Instant0(AttestedEndpoint);

impl EndpointAttester for Instant0 {
    async fn attest(
        &self,
        _target: &AttestTarget,
        _policy: &aver_verifier::ValidatedPolicy,
    ) -> Result<AttestedEndpoint, AttestError> {
        Ok(self.0.clone())
    }
}

/// CPU time (user + system) of this process, from /proc (Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let endpoints: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let interval = Duration::from_secs(5);

    let digest = |b: u8| Sha256Digest([b; 32]);
    let policy = AttestationPolicy {
        reference_pcrs: vec![],
        workload_pcr: 15,
        boot: None,
        runtime: None,
        allow_unverified_boot: true,
        allowed: AllowedWorkload {
            engine_digests: vec![digest(1)],
            model_digests: vec![digest(2)],
            config_digests: None,
            pod: None,
            node_policies: None,
        },
        trust: TrustRoots {
            ak_names: vec![format!("000b{}", "cd".repeat(32))],
            ek_roots: None,
            ak_roots: None,
            ek_pins: vec![],
            allow_sha1: false,
        },
        interval: "5s".into(),
        max_evidence_age: "1m".into(),
    };
    let policy = Arc::new(aver_verifier::ValidatedPolicy::new(policy).expect("valid policy"));
    // 100 models of endpoints/100 pods each.
    let models: Vec<ModelTargets> = (0..100)
        .map(|m| ModelTargets {
            key: ObjectRef::new(&format!("model-{m}")).within("bench"),
            reference: ObjectReference::default(),
            policy: Arc::clone(&policy),
            interval,
            max_age: Duration::from_secs(60),
            targets: (0..endpoints / 100)
                .map(|p| AttestTarget {
                    pod: format!("model-{m}-{p}"),
                    pod_uid: format!("uid-{m}-{p}"),
                    node: format!("node-{p}"),
                    address: "127.0.0.1".into(),
                    port: 8443,
                })
                .collect(),
        })
        .collect();
    let keys: Vec<_> = models.iter().map(|m| m.key.clone()).collect();
    let attested = AttestedEndpoint {
        certificate_der: vec![0x30; 450],
        spki_sha256: digest(3),
        measurements: EndpointMeasurements {
            model: digest(2),
            engine: Some(digest(1)),
            serving_config: Some(digest(4)),
            ak_name: format!("000b{}", "cd".repeat(32)),
            boot_policy: BootPolicyResult {
                result: "Passed".into(),
                checked_pcrs: vec![0, 1, 2, 3, 4, 5, 6, 7],
                proven: vec![],
            },
            ak_activation: None,
        },
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = ResultStore::new();
    let metrics = Metrics::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reattester = Reattester::new(
        StaticSource::new(models),
        Arc::new(Instant0(attested)),
        store.clone(),
        ReattestConfig::default(),
        metrics.clone(),
        tx,
    );

    let cpu_before = cpu_time();
    let wall = Instant::now();
    let mut status_cpu = Duration::ZERO;
    runtime.block_on(async {
        let loop_task =
            tokio::spawn(reattester.run(tokio::time::sleep(Duration::from_secs(seconds))));
        // Recompute every model's status once per interval, as reconciles would.
        let mut tick = tokio::time::interval(interval);
        while !loop_task.is_finished() {
            tick.tick().await;
            while rx.try_recv().is_ok() {}
            let started = Instant::now();
            for key in &keys {
                let results = store.snapshot(key);
                let inputs = StatusInputs {
                    generation: Some(1),
                    replicas: i32::try_from(endpoints / 100).unwrap_or(i32::MAX),
                    ready_replicas: i32::try_from(endpoints / 100).unwrap_or(i32::MAX),
                    results: &results,
                    problem: None,
                    interval,
                    max_age: Duration::from_secs(60),
                    policy: &policy,
                    model_volume: None,
                    now: jiff::Timestamp::now(),
                };
                std::hint::black_box(status::desired(None, &inputs));
            }
            status_cpu += started.elapsed();
        }
        let _ = loop_task.await;
    });
    let cpu = cpu_time().saturating_sub(cpu_before);
    let wall = wall.elapsed();
    let verified = metrics.attestation_count("verified");
    println!("endpoints                 {endpoints}");
    println!("interval                  {interval:?}");
    println!(
        "attestations              {verified} in {:.1} s",
        wall.as_secs_f64()
    );
    println!(
        "attestations per second   {:.0} (needed: {:.0})",
        verified as f64 / wall.as_secs_f64(),
        endpoints as f64 / interval.as_secs_f64()
    );
    println!(
        "process CPU               {:.2} s ({:.0}% of one core)",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    if verified > 0 {
        println!(
            "CPU per attestation       {:.1} µs (loop + store; status recomputation {:.2} s of it)",
            cpu.as_secs_f64() * 1e6 / verified as f64,
            status_cpu.as_secs_f64()
        );
    }
}
