//! Fixtures for tests of this crate and of its users (feature `testing`):
//! a resource as the API server would hand it over, and platform settings.

use std::collections::BTreeMap;

use aver_crds::{
    ConfidentialModel, ConfidentialModelSpec, EngineSpec, HostPathModelSource, Measurement,
    ModelSource, ModelSpec, PvcModelSource, Sha256Digest, TpmSpec,
};

use crate::WorkloadConfig;

/// A digest of 32 copies of `byte`, so that fixtures tell digests apart by one
/// number (in [`model`], `digest(1)` is the engine and `digest(2)` the model).
pub fn digest(byte: u8) -> Sha256Digest {
    Sha256Digest([byte; 32])
}

/// A legacy (`measurement: enclave`) model on a PVC with a sub path.
pub fn model(name: &str) -> ConfidentialModel {
    let mut cm = ConfidentialModel::new(
        name,
        ConfidentialModelSpec {
            model: ModelSpec {
                source: ModelSource {
                    persistent_volume_claim: Some(PvcModelSource {
                        claim_name: "weights".into(),
                        sub_path: Some("llama".into()),
                    }),
                    image: None,
                    host_path: None,
                },
                digest: digest(2),
            },
            engine: EngineSpec {
                image: format!("vllm@{}", digest(1)),
                digest: digest(1),
                port: 8000,
                args: vec!["--host".into(), "127.0.0.1".into()],
                env: vec![],
                resources: None,
                run_as_user: None,
            },
            replicas: 3,
            measurement: Measurement::Enclave,
            tpm: TpmSpec::default(),
            // Through JSON, so that fields added to the policy later keep
            // their defaults here.
            attestation: serde_json::from_value(serde_json::json!({
                "referencePcrs": [{"pcr": 12, "values": [digest(0)]}],
                "workloadPcr": 15,
                "allowed": {"engineDigests": [digest(1)], "modelDigests": [digest(2)]},
                "trust": {"akNames": [format!("000b{}", "cd".repeat(32))]},
                "interval": "30s",
                "maxEvidenceAge": "5m",
            }))
            .expect("sample policy"),
            service: aver_crds::ServiceSpec::default(),
            pod: aver_crds::PodSettings::default(),
        },
    );
    cm.metadata.namespace = Some("ml".into());
    cm.metadata.uid = Some("uid-1".into());
    cm.metadata.generation = Some(4);
    cm
}

/// A node-measured model (the default) with model files in an allowed
/// host directory.
pub fn node_model(name: &str) -> ConfidentialModel {
    let mut cm = model(name);
    cm.spec.measurement = Measurement::Node;
    cm.spec.model.source = ModelSource {
        persistent_volume_claim: None,
        image: None,
        host_path: Some(HostPathModelSource {
            path: "/srv/models/llama".into(),
        }),
    };
    cm
}

/// Image of the enclave in [`workload_config`], pinned by digest.
pub fn enclave_image() -> String {
    format!("aver/enclave@{}", digest(0xee))
}

/// Platform settings allowing model host paths below `/srv/models` (where
/// [`node_model`] keeps its files), with an enclave image by tag, as
/// `measurement: enclave` accepts.
pub fn workload_config() -> WorkloadConfig {
    WorkloadConfig {
        enclave_image: "aver/enclave:test".into(),
        tpm_node_selector: BTreeMap::from([("aver.dev/tpm".into(), "true".into())]),
        state_host_path: "/var/lib/aver".into(),
        allowed_model_host_paths: vec!["/srv/models".into()],
    }
}

/// [`workload_config`] with a pinned enclave image, as node mode needs.
pub fn node_workload_config() -> WorkloadConfig {
    WorkloadConfig {
        enclave_image: enclave_image(),
        ..workload_config()
    }
}
