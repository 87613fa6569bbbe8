//! The operator end to end on a real control plane (kube-apiserver + etcd,
//! the upstream scheduler, Deployment and ReplicaSet controllers) and real
//! nodes: kubelets with containerd, and on TPM nodes aver-node in front of
//! containerd with swtpm as the TPM, running the images the project builds
//! (node-measured pods):
//!
//! CRDs accepted by the API server (schema and CEL) → 3 replicas verified
//! with the enclaves' real certificates, on distinct TPM nodes → `aver
//! request --from-cluster`, pinned and with `--policy` → a tampered node's
//! endpoint leaves status within an interval, with an Event and Degraded,
//! and its pod is replaced and verified → a new model digest rolls out and
//! only the new endpoints remain → an unplaceable replica stays Pending →
//! the disruption budget refuses to evict a serving pod while one is down →
//! uninstalled without a controller, nothing is left behind.

mod e2e_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aver_crds::confidential_model::ConfidentialModel;
use aver_tests::require_e2e;
use e2e_common::{run, Cluster, CONVERGE, GRACE, INTERVAL};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const MODEL: &str = "llama";
const V1: &str = "/models/llama-v1";
const V2: &str = "/models/llama-v2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_on_a_real_control_plane() {
    require_e2e!();
    // Four TPM nodes for three replicas (one spare for replacements) and a
    // node without a TPM, where no enclave may ever land.
    // PodSecurity `restricted`: the model comes from a claim, and the pods
    // have no host path, privilege or capability.
    let mut cluster = Cluster::start_real("operator", 4, 1, &[], "restricted").await;
    let v1 = cluster.write_model(V1, b"tiny model weights v1").await;
    let policy = cluster.policy(&[v1]);

    // The API server itself enforces the CRD's CEL rules.
    let mut wrong = cluster.model(MODEL, 3, V1, v1, policy.clone());
    wrong.spec.attestation.allowed.model_digests = vec![aver_crds::Sha256Digest([0x42; 32])];
    let err = cluster
        .models()
        .create(&PostParams::default(), &wrong)
        .await
        .expect_err("a model whose digest the policy refuses is invalid");
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains("model.digest must be one of"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 422 from the API server, got {other}"),
    }

    // The benchmark's peer, in the same run on the same kubelets: the
    // engine image alone in a plain Deployment, time to Ready pods.
    let (plain_first, plain_all) = cluster.plain_engine_rollout(3).await;
    eprintln!(
        "e2e: plain engine Deployment (peer): first pod Ready {plain_first:.1} s, all 3 {plain_all:.1} s after kubectl apply"
    );

    cluster.start_controller("controller-0", &[]);
    let reviewed = cluster.model(MODEL, 3, V1, v1, policy.clone());
    let applied = Instant::now();
    cluster.kubectl_apply("model.json", &serde_json::to_value(&reviewed).unwrap());
    let monitor = cluster.monitor(MODEL, |_| Vec::new());

    // 1. Three verified endpoints, with the enclaves' real certificates, on
    //    three distinct TPM nodes.
    cluster
        .wait_for("a first verified endpoint", CONVERGE, || async {
            let status = cluster.status(MODEL).await;
            (!status.endpoints.is_empty() && cluster.check_endpoints(&status).await.is_empty())
                .then_some(())
        })
        .await;
    let first = applied.elapsed().as_secs_f64();
    let status = cluster.wait_verified(MODEL, 3, CONVERGE, |_| true).await;
    let all = applied.elapsed().as_secs_f64();
    eprintln!(
        "e2e: first endpoint verified {first:.1} s, all 3 {all:.1} s after kubectl apply \
         ({:.1}x and {:.1}x the plain Deployment's Ready pods)",
        first / plain_first,
        all / plain_all
    );
    let nodes: BTreeSet<&str> = status.endpoints.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one enclave per node: {nodes:?}");
    for node in &nodes {
        assert!(
            node.contains("-tpm-"),
            "enclave on a node without a TPM: {node}"
        );
    }
    assert_eq!(status.attested_replicas, 3);
    for endpoint in &status.endpoints {
        assert_eq!(endpoint.measurements.model, v1);
        assert_eq!(endpoint.measurements.boot_policy.result, "Passed");
    }

    // 2. aver request --from-cluster: pinned from status, and verified by
    //    the client itself with --policy.
    let body = r#"{"model":"stub-model","messages":[{"role":"user","content":"hello"}]}"#;
    let (ok, out, err) = run(cluster.aver().args([
        "request",
        "--from-cluster",
        MODEL,
        "-n",
        &cluster.namespace,
        "--fail",
        "-d",
        body,
        "/v1/chat/completions",
    ]));
    assert!(ok, "pinned request failed: {err}");
    assert!(out.contains("echo: hello"), "{out}");
    assert!(
        err.contains("pinned"),
        "the client says it trusted the status: {err}"
    );
    // The client reads the resource from the cluster, status included: the
    // claim's volume (status.modelVolume) is part of the pod's specs.
    let mut reviewed = reviewed;
    reviewed.status = Some(cluster.status(MODEL).await);
    assert!(
        reviewed
            .status
            .as_ref()
            .is_some_and(|s| s.model_volume.is_some()),
        "the controller published the claim's volume"
    );
    let policy_file = cluster.client_policy_file("policy.json", &reviewed);
    let (ok, out, err) = run(cluster
        .aver()
        .arg("request")
        .arg("--policy")
        .arg(&policy_file)
        .args([
            "--from-cluster",
            MODEL,
            "-n",
            &cluster.namespace,
            "--fail",
            "-d",
            body,
            "/v1/chat/completions",
        ]));
    assert!(ok, "request with --policy failed: {err}");
    assert!(out.contains("echo: hello"), "{out}");
    // A client whose policy wants another model refuses the endpoint.
    let mut other = reviewed.clone();
    other.spec.attestation.allowed.model_digests = vec![aver_crds::Sha256Digest([0x42; 32])];
    let other_file = cluster.client_policy_file("other.json", &other);
    let (ok, out, err) = run(cluster
        .aver()
        .arg("request")
        .arg("--policy")
        .arg(&other_file)
        .args([
            "--from-cluster",
            MODEL,
            "-n",
            &cluster.namespace,
            "-d",
            body,
            "/v1/chat/completions",
        ]));
    assert!(
        !ok && !out.contains("echo"),
        "a policy mismatch must refuse: {out} {err}"
    );

    // 2b. The engine listens on its pod's loopback only: from another pod
    //     its port is closed, while the enclave's is open.
    let target = &status.endpoints[0];
    let script = format!(
        "for port in 8000 8443; do if nc -w 3 {ip} $port -e /bin/id; then echo \"open $port\"; else echo \"closed $port\"; fi; done",
        ip = target.address
    );
    let plain = format!("{}-plain-0", "operator");
    let output = cluster.run_probe_pod("port-probe", &plain, &script).await;
    eprintln!(
        "e2e: from another pod: {}",
        output.trim().replace('\n', ", ")
    );
    assert!(
        output.contains("open 8443"),
        "the enclave is reachable: {output}"
    );
    assert!(
        output.contains("closed 8000"),
        "the engine is not: {output}"
    );

    // 3. Someone extends a node's workload PCR. The operator takes the node
    //    out of service (cordon) so the replacement lands elsewhere.
    let victim = status.endpoints[0].clone();
    cluster.cordon(&victim.node).await;
    cluster.tamper(&victim.node);
    let tampered = Instant::now();
    cluster
        .wait_for(
            "tampered endpoint removed from status",
            INTERVAL + GRACE,
            || async {
                let status = cluster.status(MODEL).await;
                (!status.endpoints.iter().any(|e| e.pod == victim.pod)).then_some(())
            },
        )
        .await;
    eprintln!(
        "e2e: tampered endpoint left status {:.1} s after the extend (interval {INTERVAL:?})",
        tampered.elapsed().as_secs_f64()
    );
    let status = cluster.status(MODEL).await;
    let degraded = status.condition("Degraded").expect("Degraded condition");
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "AttestationFailed");
    let notes = cluster
        .wait_for(
            "AttestationFailed Event",
            Duration::from_secs(10),
            || async {
                let notes = cluster.events(MODEL, "AttestationFailed").await;
                notes
                    .iter()
                    .any(|n| n.contains(&victim.pod))
                    .then_some(notes)
            },
        )
        .await;
    assert!(
        notes.iter().any(|n| n.contains(&victim.node)),
        "the Event names the node: {notes:?}"
    );
    // The pod is deleted and replaced on another node, and re-verified.
    let status = cluster
        .wait_verified(MODEL, 3, CONVERGE, |s| {
            s.endpoints
                .iter()
                .all(|e| e.pod != victim.pod && e.node != victim.node)
        })
        .await;
    // The replacement can be verified while the tampered pod still drains
    // (spec.pod.drainSeconds): it must be gone by the end of its grace.
    cluster
        .wait_for("the tampered pod gone", Duration::from_secs(30), || async {
            (!cluster.pod_nodes(MODEL).await.contains_key(&victim.pod)).then_some(())
        })
        .await;
    assert!(
        !cluster.pod_running(&victim.pod).await,
        "its containers stopped"
    );
    eprintln!(
        "e2e: replacement verified on {:?}",
        status.endpoints.iter().map(|e| &e.node).collect::<Vec<_>>()
    );

    // 4. A new model digest: the Deployment rolls out (one pod at a time),
    //    the new endpoints are verified and the old ones leave.
    let v2 = cluster.write_model(V2, b"tiny model weights v2").await;
    let old: BTreeSet<String> = status.endpoints.iter().map(|e| e.pod.clone()).collect();
    let patch = json!({"spec": {
        "model": {"source": {"persistentVolumeClaim": {"claimName": cluster.claim_name(V2)}}, "digest": v2.to_string()},
        "attestation": {"allowed": {"modelDigests": [v1.to_string(), v2.to_string()]}},
    }});
    let rolled = Instant::now();
    cluster
        .models()
        .patch(MODEL, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("spec changed");
    let status = cluster
        .wait_verified(MODEL, 3, Duration::from_secs(180), |s| {
            s.endpoints
                .iter()
                .all(|e| e.measurements.model == v2 && !old.contains(&e.pod))
        })
        .await;
    eprintln!(
        "e2e: rollout verified in {:.1} s",
        rolled.elapsed().as_secs_f64()
    );
    cluster
        .wait_for("old pods gone", Duration::from_secs(30), || async {
            let pods = cluster.pod_nodes(MODEL).await;
            (pods.len() == 3 && old.iter().all(|p| !pods.contains_key(p))).then_some(())
        })
        .await;
    for pod in &old {
        assert!(!cluster.pod_running(pod).await, "{pod} still runs");
    }
    let nodes: BTreeSet<&str> = status.endpoints.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one enclave per node after the rollout");

    // 5. A fourth replica has nowhere to go: the only TPM node without an
    //    enclave is cordoned, and at most one enclave may run per node (the
    //    plain node has no TPM). The scheduler leaves it Pending.
    cluster
        .models()
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("scaled to 4");
    let pods = cluster.pods();
    let pending = cluster
        .wait_for(
            "a fourth pod the scheduler cannot place",
            Duration::from_secs(30),
            || async {
                let list = pods.list(&Default::default()).await.ok()?;
                list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| {
                            c.type_ == "PodScheduled"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                })
            },
        )
        .await;
    let message = pending
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find_map(|c| (c.type_ == "PodScheduled").then_some(c.message.unwrap_or_default()))
        .unwrap_or_default();
    eprintln!("e2e: fourth replica unschedulable: {message}");
    assert!(message.contains("anti-affinity"), "{message}");
    let status = cluster
        .wait_for(
            "Ready=False with 3 of 4 attested",
            Duration::from_secs(30),
            || async {
                let status = cluster.status(MODEL).await;
                let not_ready = status
                    .condition("Ready")
                    .is_some_and(|c| c.status == "False");
                (not_ready && status.endpoints.len() == 3).then_some(status)
            },
        )
        .await;
    assert!(cluster.check_endpoints(&status).await.is_empty());

    let statuses = monitor.finish();
    eprintln!("e2e: {statuses} published statuses checked against the enclaves' real keys");
    let model: ConfidentialModel = cluster.models().get(MODEL).await.unwrap();
    assert_eq!(
        model.status.unwrap().observed_generation,
        model.metadata.generation
    );

    // 6. The disruption budget: with the fourth replica Pending, one pod is
    //    already unavailable, so a drain may not evict a serving pod; the
    //    Pending one (not ready) may always go.
    let pdbs: Api<PodDisruptionBudget> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let pending_name = pending.metadata.name.clone().expect("pod name");
    // The model's NetworkPolicy admits the enclave port only. (This CNI,
    // bridge, does not enforce policies; the engine port is closed to other
    // pods because the engine binds loopback, step 2b.)
    let network_policies: Api<NetworkPolicy> =
        Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let admitted = network_policies
        .get(MODEL)
        .await
        .expect("the model's NetworkPolicy")
        .spec
        .and_then(|s| s.ingress)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|rule| rule.ports.unwrap_or_default())
        .map(|p| p.port)
        .collect::<Vec<_>>();
    assert_eq!(admitted, [Some(IntOrString::Int(8443))]);
    cluster
        .wait_for(
            "the budget counts 3 healthy of 4",
            Duration::from_secs(30),
            || async {
                let status = pdbs.get(MODEL).await.ok()?.status?;
                (status.expected_pods == 4 && status.current_healthy == 3).then_some(())
            },
        )
        .await;
    // Through kubectl, as a drain does: kube's client retries a 429 for
    // minutes before it gives up.
    let evict = |pod: &str| {
        let eviction = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": cluster.namespace},
        });
        let file = cluster.work.path().join(format!("evict-{pod}.json"));
        std::fs::write(&file, eviction.to_string()).expect("eviction written");
        run(cluster
            .cp
            .kubectl()
            .args(["create", "--raw"])
            .arg(format!(
                "/api/v1/namespaces/{}/pods/{pod}/eviction",
                cluster.namespace
            ))
            .arg("-f")
            .arg(&file))
    };
    let serving = status.endpoints[0].pod.clone();
    let (evicted, _, err) = evict(&serving);
    eprintln!("e2e: eviction of {serving}: {}", err.trim());
    assert!(
        !evicted,
        "a serving pod was evictable with one replica down"
    );
    assert!(err.contains("disruption budget"), "{err}");
    let (evicted, _, err) = evict(&pending_name);
    assert!(
        evicted,
        "a pod that is not ready may always be evicted: {err}"
    );

    // 7. Uninstall with the controller gone: nothing waits for it. The model
    //    goes at once and the garbage collector removes what it owned.
    assert!(
        model.metadata.finalizers.unwrap_or_default().is_empty(),
        "the controller adds no finalizer"
    );
    cluster.controllers[0].stop();
    cluster
        .models()
        .delete(MODEL, &DeleteParams::default())
        .await
        .expect("model deleted");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cluster
        .wait_for(
            "the model and everything it owned gone",
            Duration::from_secs(90),
            || async {
                let gone = cluster.models().get_opt(MODEL).await.ok()?.is_none()
                    && deployments.get_opt(MODEL).await.ok()?.is_none()
                    && services.get_opt(MODEL).await.ok()?.is_none()
                    && pdbs.get_opt(MODEL).await.ok()?.is_none()
                    && network_policies.get_opt(MODEL).await.ok()?.is_none()
                    && cluster
                        .pods()
                        .list(&ListParams::default().labels(&format!("aver.dev/model={MODEL}")))
                        .await
                        .ok()?
                        .items
                        .is_empty();
                gone.then_some(())
            },
        )
        .await;
}
