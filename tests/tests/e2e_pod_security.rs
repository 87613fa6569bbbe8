//! The pods the controller renders, against the real API server's
//! PodSecurity admission: a node-measured model whose weights are not on a
//! host path passes `restricted`; a host path model source, or the legacy
//! enclave-measured pod (TPM device and state on host paths), is refused
//! with the reason the API server gives. Server-side dry runs: admission
//! runs in full and nothing is stored.

use aver_crds::confidential_model::{ConfidentialModel, ModelSource, PvcModelSource};
use aver_crds::Measurement;
use aver_tests::controlplane::ControlPlane;
use aver_tests::require_e2e;
use aver_workload::render::deployment;
use aver_workload::testing::{node_model, node_workload_config};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;

const NAMESPACE: &str = "models";

/// The pod the Deployment of `cm` would create, dry-run in the namespace.
async fn admit(pods: &Api<Pod>, cm: &ConfidentialModel) -> Result<(), String> {
    let deploy = deployment(cm, &node_workload_config()).expect("renders");
    let template = deploy.spec.expect("spec").template;
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = Some(format!(
        "{}-probe",
        cm.metadata.name.clone().unwrap_or_default()
    ));
    meta.namespace = Some(NAMESPACE.to_owned());
    let pod = Pod {
        metadata: meta,
        spec: template.spec,
        status: None,
    };
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    pods.create(&params, &pod)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_pods_against_pod_security_restricted() {
    require_e2e!();
    let cp = ControlPlane::start().expect("control plane");
    let client = cp.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "v1.34",
            }}}))
            .expect("namespace"),
        )
        .await
        .expect("namespace created");
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);

    // Node-measured, weights from a claim: no host path, no privilege, both
    // containers non-root with every capability dropped and RuntimeDefault
    // seccomp.
    let mut claim = node_model("llama");
    claim.metadata.namespace = Some(NAMESPACE.into());
    claim.spec.model.source = ModelSource {
        persistent_volume_claim: Some(PvcModelSource {
            claim_name: "weights".into(),
            sub_path: None,
        }),
        image: None,
        host_path: None,
    };
    admit(&pods, &claim)
        .await
        .expect("the node-measured pod passes PodSecurity restricted");

    // Weights on a host path: refused, and the API server says why.
    let mut host = node_model("llama-host");
    host.metadata.namespace = Some(NAMESPACE.into());
    let refused = admit(&pods, &host)
        .await
        .expect_err("a host path is refused");
    assert!(
        refused.contains("violates PodSecurity \"restricted"),
        "{refused}"
    );
    assert!(
        refused.contains("volume \"model\" uses restricted volume type \"hostPath\""),
        "{refused}"
    );

    // The legacy pod: the TPM device and the state directory are host paths.
    let mut legacy = node_model("llama-legacy");
    legacy.metadata.namespace = Some(NAMESPACE.into());
    legacy.spec.measurement = Measurement::Enclave;
    legacy.spec.model.source = claim.spec.model.source.clone();
    let refused = admit(&pods, &legacy)
        .await
        .expect_err("the legacy pod is refused");
    assert!(
        refused.contains("volumes \"state\", \"tpm\" use restricted volume type \"hostPath\""),
        "{refused}"
    );
}
