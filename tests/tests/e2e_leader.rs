//! Two controller replicas on a real control plane: exactly one holds the
//! Lease and acts (reconciles, attests, writes status); the other only
//! waits. When the leader stops (SIGTERM, releasing the Lease) the other
//! takes over and acts, and the published endpoints never drop meanwhile.

mod e2e_common;

use std::time::Duration;

use aver_tests::controlplane::ControllerProcess;
use aver_tests::require_e2e;
use e2e_common::{Cluster, CONVERGE};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const MODEL: &str = "llama";

/// Sum of a counter's lines whose name starts with `prefix` (any labels);
/// 0 if absent.
async fn counter(controller: &ControllerProcess, prefix: &str) -> f64 {
    let Ok(text) = aver_tests::controlplane::http_get(controller.metrics, "/metrics").await else {
        return f64::NAN;
    };
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("aver-controller")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_acts() {
    require_e2e!();
    let mut cluster = Cluster::start_real("leader", 3, 0, &[], "restricted").await;
    let v1 = cluster
        .write_model("/models/llama", b"tiny model weights")
        .await;
    let policy = cluster.policy(&[v1]);
    cluster.start_controller("controller-a", &[]);
    cluster.start_controller("controller-b", &[]);
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let leader = cluster
        .wait_for("a leader", Duration::from_secs(30), || holder(&leases))
        .await;
    let (l, f) = if leader == "controller-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(cluster.controllers[l].identity, leader);
    let follower = cluster.controllers[f].identity.clone();

    cluster
        .models()
        .create(
            &PostParams::default(),
            &cluster.model(MODEL, 2, "/models/llama", v1, policy),
        )
        .await
        .expect("model created");
    cluster.wait_verified(MODEL, 2, CONVERGE, |_| true).await;
    // Let the follower have several retry periods in which it could act.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (lead, follow) = (&cluster.controllers[l], &cluster.controllers[f]);
    assert_eq!(lead.metric("aver_leader").await, Some(1.0));
    assert_eq!(follow.metric("aver_leader").await, Some(0.0));
    for metric in [
        "aver_reconciles_total",
        "aver_attestations_total",
        "aver_status_writes_total",
    ] {
        let (by_leader, by_follower) = (counter(lead, metric).await, counter(follow, metric).await);
        eprintln!("e2e: {metric}: leader {by_leader}, follower {by_follower}");
        assert!(by_leader > 0.0, "the leader acts: {metric} = {by_leader}");
        assert_eq!(by_follower, 0.0, "the follower must not act: {metric}");
    }
    assert_eq!(holder(&leases).await.as_deref(), Some(leader.as_str()));

    // The leader stops gracefully and releases the Lease: the follower
    // takes over, and the endpoints stay published through the handover
    // (the new leader keeps them until its own first attempts end, instead
    // of emptying status while it starts).
    let monitor = cluster.monitor(MODEL, |cm| {
        let listed = cm.status.as_ref().map_or(0, |s| s.endpoints.len());
        if listed < 2 {
            vec![format!(
                "only {listed} endpoint(s) published during the handover"
            )]
        } else {
            Vec::new()
        }
    });
    cluster.controllers[l].stop();
    cluster
        .wait_for("the follower leads", Duration::from_secs(30), || async {
            (holder(&leases).await.as_deref() == Some(follower.as_str())).then_some(())
        })
        .await;
    let new_leader = &cluster.controllers[f];
    cluster
        .wait_for(
            "the new leader attests both endpoints",
            Duration::from_secs(30),
            || async {
                let done = counter(new_leader, "aver_attestations_total").await;
                (done >= 2.0).then_some(())
            },
        )
        .await;
    // The status its attestations lead to is in too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statuses = monitor.finish();
    eprintln!("e2e: {statuses} statuses seen during the handover, none with fewer endpoints");
    cluster
        .models()
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scaled");
    cluster.wait_verified(MODEL, 3, CONVERGE, |_| true).await;
    assert_eq!(new_leader.metric("aver_leader").await, Some(1.0));
    assert!(counter(new_leader, "aver_status_writes_total").await > 0.0);
}
