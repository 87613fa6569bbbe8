//! `aver policy from-model` (the client) and the controller compute the same
//! policy for the same ConfidentialModel: the client derives from the
//! resource it reviewed exactly what the controller re-attests with.

use std::process::Command;

use aver_controller::config::Args;
use aver_controller::workload::attestation_policy;
use aver_crds::{AttestationPolicy, ConfidentialModel};
use serde_json::json;

const ENCLAVE: &str =
    "ghcr.io/aver-dev/aver-enclave@sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

fn model() -> ConfidentialModel {
    let digest = |b: &str| format!("sha256:{}", b.repeat(64));
    serde_json::from_value(json!({
        "apiVersion": "aver.dev/v1alpha1",
        "kind": "ConfidentialModel",
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {
            "model": {"source": {"hostPath": {"path": "/srv/models/llama"}}, "digest": digest("2")},
            "engine": {
                "image": format!("ghcr.io/example/vllm@{}", digest("1")),
                "digest": digest("1"),
                "args": ["--model", "/models", "--port", "$(PORT)"],
                "env": [
                    {"name": "PORT", "value": "8000"},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                ]
            },
            "attestation": {
                "referencePcrs": [{"pcr": 0, "values": [digest("0")]}],
                "allowed": {"engineDigests": [digest("1")], "modelDigests": [digest("2")]},
                "trust": {"akNames": [format!("000b{}", "cd".repeat(32))]}
            }
        }
    }))
    .expect("resource parses")
}

#[test]
fn client_and_controller_derive_the_same_policy() {
    let cm = model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cm.yaml");
    std::fs::write(&file, serde_json::to_vec(&cm).unwrap()).unwrap();
    let out = dir.path().join("policy.yaml");
    let status = Command::new(aver_tests::cargo_bin("aver"))
        .args(["policy", "from-model"])
        .arg(&file)
        .args([
            "--enclave-image",
            ENCLAVE,
            "--kubernetes-service",
            "10.43.0.1:443",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("aver runs");
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("# container enclave: image"), "{text}");
    let client = AttestationPolicy::from_yaml(&text).expect("the written policy is valid");

    let args = Args::try_from_flags([
        "aver-controller",
        "--enclave-image",
        ENCLAVE,
        "--allowed-model-host-paths",
        "/srv/models",
        "--kubernetes-service",
        "10.43.0.1:443",
    ])
    .expect("controller flags parse");
    let controller = attestation_policy(&cm, &args.workload(), args.kubelet().as_ref())
        .expect("the controller derives a policy");
    assert_eq!(client, controller);
    let pod = client.allowed.pod.as_ref().expect("allowed.pod");
    assert_eq!(pod.containers.len(), 2);
    assert!(client.allowed.engine_digests.is_empty());

    // Another kubernetes Service: other environment, other digests.
    let elsewhere = Command::new(aver_tests::cargo_bin("aver"))
        .args(["policy", "from-model"])
        .arg(&file)
        .args(["--enclave-image", ENCLAVE])
        .output()
        .expect("aver runs");
    assert!(elsewhere.status.success());
    let other =
        AttestationPolicy::from_yaml(&String::from_utf8(elsewhere.stdout).unwrap()).unwrap();
    assert_ne!(other.allowed.pod, client.allowed.pod);
}
