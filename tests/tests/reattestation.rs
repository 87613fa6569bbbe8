//! The controller's re-attestation loop against real enclaves on swtpm,
//! with no API server: the endpoint source is a fixed list, the attester is
//! the production TLS attester. Proves that verified endpoints are the
//! enclaves' real keys and that a tampered node is reported and dropped
//! within an interval.

use std::sync::Arc;
use std::time::Duration;

use aver_client::{AttestedConnection, Endpoint};
use aver_controller::config::ReattestConfig;
use aver_controller::metrics::Metrics;
use aver_controller::tls_attester::TlsAttester;
use aver_controller::{
    AttestTarget, AttestationEvent, ModelKey, ModelTargets, Reattester, ResultStore, StaticSource,
};
use aver_tests::node::{policy_for, EnclaveProcess, TestNode};
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::StubUpstream;
use aver_verifier::measurement::model_digest;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(300);

fn model_key() -> ModelKey {
    ObjectRef::new("llama").within("ml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattestation_publishes_real_keys_and_drops_a_tampered_node() {
    require_swtpm!();
    let stub = StubUpstream::start().await.unwrap();
    let nodes: Vec<TestNode> = (0..3).map(|_| TestNode::start().unwrap()).collect();
    let enclaves: Vec<EnclaveProcess> = nodes
        .iter()
        .map(|n| n.serve(&stub.url(), &[]).unwrap())
        .collect();
    let ak_names: Vec<String> = nodes.iter().map(|n| n.ak_name().unwrap()).collect();
    let policy = Arc::new(aver_tests::checked(&policy_for(
        &ak_names,
        model_digest(nodes[0].model.path()).unwrap(),
    )));
    // Every node measures the same model bytes, so one model digest fits all.
    for n in &nodes {
        assert_eq!(
            model_digest(n.model.path()).unwrap(),
            policy.allowed.model_digests[0]
        );
    }

    let targets: Vec<AttestTarget> = enclaves
        .iter()
        .enumerate()
        .map(|(i, e)| AttestTarget {
            pod: format!("llama-{i}"),
            pod_uid: format!("uid-{i}"),
            node: format!("node-{i}"),
            address: "127.0.0.1".into(),
            port: e.port,
        })
        .collect();
    let source = StaticSource::new(vec![ModelTargets {
        key: model_key(),
        reference: ObjectReference {
            kind: Some("ConfidentialModel".into()),
            name: Some("llama".into()),
            namespace: Some("ml".into()),
            ..ObjectReference::default()
        },
        policy: policy.clone(),
        interval: INTERVAL,
        max_age: Duration::from_secs(60),
        targets,
    }]);
    let store = ResultStore::new();
    let metrics = Metrics::new();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let config = ReattestConfig {
        refresh: Duration::from_millis(200),
        ..ReattestConfig::default()
    };
    let reattester = Reattester::new(
        source,
        Arc::new(TlsAttester::new(Duration::from_secs(5))),
        store.clone(),
        config,
        metrics.clone(),
        events_tx,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let loop_task = tokio::spawn(reattester.run(async {
        let _ = stopped.await;
    }));

    // All three endpoints verified, with the enclaves' real keys.
    tokio::time::timeout(PATIENCE, async {
        while store.verified_count() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("three endpoints verified");
    let snapshot = store.snapshot(&model_key());
    for (i, enclave) in enclaves.iter().enumerate() {
        let real = AttestedConnection::attest(
            &Endpoint::new("127.0.0.1", enclave.port),
            &policy,
            PATIENCE,
        )
        .await
        .unwrap();
        let record = &snapshot.endpoints[&format!("llama-{i}")];
        let verified = record.verified.as_ref().expect("verified");
        assert_eq!(verified.endpoint.certificate_der, real.certificate_der());
        assert_eq!(verified.endpoint.spki_sha256, real.spki_sha256());
    }

    // Someone extends node 1's workload PCR: within an interval or two the
    // loop reports it, asks for the pod to go, and stops listing it.
    let status = std::process::Command::new("tpm2_pcrextend")
        .arg(format!(
            "{}:sha256={}",
            aver_crds::policy::DEFAULT_WORKLOAD_PCR,
            "ab".repeat(32)
        ))
        .env("TPM2TOOLS_TCTI", nodes[1].tpm.tcti())
        .status()
        .expect("tpm2_pcrextend runs");
    assert!(status.success());
    let failure = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Some(AttestationEvent::Failed(f)) => break f,
                Some(_) => continue,
                None => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("failure reported");
    assert_eq!(failure.target.pod, "llama-1");
    assert_eq!(failure.reason, "event-log");
    assert!(failure.delete_pod, "a rejected endpoint's pod is replaced");
    let now = jiff::Timestamp::now();
    let snapshot = store.snapshot(&model_key());
    let listable: Vec<&String> = snapshot
        .endpoints
        .iter()
        .filter(|(_, r)| r.listable(now, Duration::from_secs(60), &policy).is_some())
        .map(|(pod, _)| pod)
        .collect();
    assert_eq!(listable, ["llama-0", "llama-2"]);
    assert!(metrics.attestation_count("event-log") >= 1);

    let _ = stop.send(());
    let _ = tokio::time::timeout(PATIENCE, loop_task).await;
}
