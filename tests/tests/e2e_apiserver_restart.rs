//! The API server dies (SIGKILL) under a running operator and comes back on
//! the same etcd. While it is gone a node is tampered with. The controller
//! must come back by itself — watches resumed, the tampered endpoint
//! removed, its pod replaced and verified, later changes acted on — and no
//! status it writes may list the tampered endpoint after an interval.

mod e2e_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aver_tests::require_e2e;
use e2e_common::{Cluster, CONVERGE, GRACE, INTERVAL};
use kube::api::{Patch, PatchParams, PostParams};
use kube::ResourceExt as _;
use serde_json::json;

const MODEL: &str = "llama";

/// What the monitor knows about the tamper: when, which pod, and the
/// resource version of the status written before it.
#[derive(Clone, Default)]
struct Tamper(Arc<Mutex<Option<(Instant, String, String)>>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_recovers_from_an_apiserver_restart() {
    require_e2e!();
    // The fixture restarts a dead component after 6 s, long enough for
    // every client to see the outage.
    let mut cluster =
        Cluster::start_real("restart", 4, 0, &["--restart-delay=6s"], "restricted").await;
    let v1 = cluster
        .write_model("/models/llama", b"tiny model weights")
        .await;
    let policy = cluster.policy(&[v1]);
    // A Lease that outlives the outage, so this test is about the
    // controller's watches and writes recovering in-process (losing the
    // Lease makes it exit for a restart: e2e_leader covers hand-over).
    cluster.start_controller(
        "controller-0",
        &["--lease-duration", "90s", "--renew-deadline", "60s"],
    );
    cluster
        .models()
        .create(
            &PostParams::default(),
            &cluster.model(MODEL, 3, "/models/llama", v1, policy),
        )
        .await
        .expect("model created");
    let status = cluster.wait_verified(MODEL, 3, CONVERGE, |_| true).await;

    let tamper = Tamper::default();
    let seen = tamper.clone();
    let monitor = cluster.monitor(MODEL, move |cm| {
        let Some((at, pod, before)) = seen.0.lock().unwrap().clone() else {
            return Vec::new();
        };
        let listed = cm
            .status
            .iter()
            .flat_map(|s| &s.endpoints)
            .any(|e| e.pod == pod);
        let written_since = cm.resource_version().as_deref() != Some(before.as_str());
        if listed && written_since && at.elapsed() > INTERVAL + GRACE {
            vec![format!(
                "status written {:.1} s after the tamper still lists {pod}",
                at.elapsed().as_secs_f64()
            )]
        } else {
            Vec::new()
        }
    });

    let victim = status.endpoints[0].clone();
    cluster.cordon(&victim.node).await;
    let before = cluster
        .models()
        .get(MODEL)
        .await
        .unwrap()
        .resource_version()
        .unwrap();

    let killed = cluster.cp.kill_apiserver().expect("apiserver killed");
    let down = Instant::now();
    cluster.tamper(&victim.node);
    *tamper.0.lock().unwrap() = Some((Instant::now(), victim.pod.clone(), before));
    eprintln!(
        "e2e: apiserver pid {killed} killed; {} tampered",
        victim.node
    );

    let client = cluster.client.clone();
    cluster
        .wait_for("apiserver back", Duration::from_secs(90), || async {
            client.apiserver_version().await.ok()
        })
        .await;
    eprintln!(
        "e2e: apiserver served again after {:.1} s",
        down.elapsed().as_secs_f64()
    );

    // The controller noticed by itself: endpoint gone, Degraded, the pod
    // replaced elsewhere and verified.
    let status = cluster
        .wait_verified(MODEL, 3, CONVERGE, |s| {
            s.endpoints
                .iter()
                .all(|e| e.pod != victim.pod && e.node != victim.node)
        })
        .await;
    let degraded = status.condition("Degraded").expect("Degraded");
    assert_eq!(degraded.status, "True", "{degraded:?}");
    assert!(
        cluster
            .events(MODEL, "AttestationFailed")
            .await
            .iter()
            .any(|n| n.contains(&victim.pod)),
        "AttestationFailed Event for {}",
        victim.pod
    );
    assert!(
        cluster.controllers[0].is_running(),
        "the controller survived the outage"
    );

    // And it acts on new changes through the new apiserver.
    cluster
        .models()
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scaled");
    cluster.wait_verified(MODEL, 2, CONVERGE, |_| true).await;

    let statuses = monitor.finish();
    eprintln!("e2e: {statuses} published statuses checked");
}
