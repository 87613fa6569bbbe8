//! `measurement: enclave` end to end: the legacy pod, in which the enclave
//! reaches the node's TPM itself and reports its own measurements. It needs
//! a TPM device in the pod, which this machine cannot give a real kubelet's
//! container (no TPM device; swtpm's CUSE device needs a kernel module it
//! lacks), so the node simulator plays the kubelets and hands the enclave
//! the node's swtpm over a TCTI. The control plane and scheduler are real.
//! An image-volume model on this API server (no ImageVolume feature) is
//! reported, not silently run without its weights.

mod e2e_common;

use aver_tests::require_e2e;
use e2e_common::{run, Cluster, CONVERGE, GRACE, INTERVAL};
use kube::api::PostParams;

const MODEL: &str = "legacy";
const DIR: &str = "/models/legacy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_measured_models_on_simulated_nodes() {
    require_e2e!();
    let mut cluster = Cluster::start("legacy", 2, 1).await;
    let digest = cluster.write_model(DIR, b"legacy weights").await;
    let policy = cluster.policy(&[digest]);
    cluster.start_controller("controller-0", &[]);
    let model = cluster.model(MODEL, 2, DIR, digest, policy);
    assert_eq!(model.spec.measurement, aver_crds::Measurement::Enclave);
    cluster
        .models()
        .create(&PostParams::default(), &model)
        .await
        .expect("model created");
    let status = cluster.wait_verified(MODEL, 2, CONVERGE, |_| true).await;
    for endpoint in &status.endpoints {
        assert!(endpoint.node.contains("-tpm-"), "{}", endpoint.node);
        assert_eq!(endpoint.measurements.model, digest);
    }

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
    assert!(ok, "request failed: {err}");
    assert!(out.contains("echo: hello"), "{out}");

    // The enclave's own log no longer explains the workload PCR.
    let victim = status.endpoints[0].clone();
    cluster.tamper(&victim.node);
    cluster
        .wait_for("tampered endpoint removed", INTERVAL + GRACE, || async {
            let status = cluster.status(MODEL).await;
            (!status.endpoints.iter().any(|e| e.pod == victim.pod)).then_some(())
        })
        .await;
    assert!(!cluster.events(MODEL, "AttestationFailed").await.is_empty());

    // An image-volume model on an API server without the ImageVolume
    // feature (off by default in v1.34): the server drops the volume and
    // its mounts without an error, and the model says so.
    let mut image = cluster.model("image", 1, DIR, digest, cluster.policy(&[digest]));
    image.spec.model.source.host_path = None;
    image.spec.model.source.image = Some(aver_crds::ImageModelSource {
        reference: format!("registry.invalid/weights@sha256:{}", "ab".repeat(32)),
    });
    cluster
        .models()
        .create(&PostParams::default(), &image)
        .await
        .expect("image model created");
    let degraded = cluster
        .wait_for("Degraded=ImageVolumeUnsupported", CONVERGE, || async {
            let status = cluster.status("image").await;
            status
                .condition("Degraded")
                .filter(|c| c.status == "True" && c.reason == "ImageVolumeUnsupported")
                .map(|c| c.message.clone())
        })
        .await;
    assert!(degraded.contains("ImageVolume feature gate"), "{degraded}");
    let notes = cluster.events("image", "ImageVolumeUnsupported").await;
    assert!(!notes.is_empty(), "a Warning Event says so too");
}
