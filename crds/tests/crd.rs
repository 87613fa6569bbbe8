//! The generated CRD: committed files are fresh, every field is documented
//! for `kubectl explain`, and the CEL rules accept good resources and refuse
//! the mistakes they exist for (evaluated client-side with kube's CEL
//! validator, the same rules the API server runs).

use std::path::Path;

use aver_crds::crd::{crd_yaml, CRD_PATHS};
use aver_crds::{ConfidentialModel, ConfidentialModelSpec};
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::{json, Value};

#[test]
fn committed_crd_yaml_is_what_the_types_generate() {
    let generated = crd_yaml().expect("CRD renders");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for relative in CRD_PATHS {
        let committed = std::fs::read_to_string(root.join(relative)).unwrap_or_default();
        assert!(
            committed == generated,
            "{relative} is stale or missing: run `cargo run -p aver-crds --bin crdgen -- --write` and commit the result"
        );
    }
}

#[test]
fn crd_identity_scope_and_subresources() {
    let crd = ConfidentialModel::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("confidentialmodels.aver.dev")
    );
    assert_eq!(crd.spec.group, "aver.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some());
    let columns: Vec<String> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.to_uppercase())
        .collect();
    assert_eq!(columns, ["READY", "ATTESTED", "AGE"]);
}

fn schema() -> Value {
    let crd = ConfidentialModel::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema present");
    serde_json::to_value(schema).expect("schema is JSON")
}

/// Collects the paths of schema properties that have no description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let sub_path = format!("{path}.{name}");
            let documented = sub
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // apiVersion, kind and metadata are described by Kubernetes itself.
            if !documented && !path.is_empty() {
                out.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = schema.get("additionalProperties") {
        undocumented(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_field_has_a_description() {
    let mut missing = Vec::new();
    undocumented(&schema(), "", &mut missing);
    // The top level spec and status must be documented too.
    let top = schema();
    for field in ["spec", "status"] {
        if top["properties"][field].get("description").is_none() {
            missing.push(field.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "fields without description: {missing:#?}"
    );
}

fn digest(byte: u8) -> String {
    format!("sha256:{}", hex(byte))
}

fn hex(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A resource every rule accepts.
fn good() -> Value {
    json!({
        "apiVersion": "aver.dev/v1alpha1",
        "kind": "ConfidentialModel",
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {
            "model": {
                "source": {"persistentVolumeClaim": {"claimName": "weights"}},
                "digest": digest(2)
            },
            "engine": {
                "image": format!("ghcr.io/example/vllm@{}", digest(1)),
                "digest": digest(1)
            },
            "replicas": 2,
            "attestation": {
                "referencePcrs": [{"pcr": 0, "values": [digest(0)]}],
                "allowed": {"engineDigests": [digest(1)], "modelDigests": [digest(2)]},
                "trust": {"akNames": [format!("000b{}", hex(0xcd))]},
                "interval": "30s",
                "maxEvidenceAge": "5m"
            }
        }
    })
}

fn cel(object: &Value) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), object, None)
        .map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// Asserts that the change is refused with a message containing `expected`.
fn refused(change: impl FnOnce(&mut Value), expected: &str) {
    let mut object = good();
    change(&mut object);
    match cel(&object) {
        Ok(()) => panic!("accepted, expected refusal mentioning {expected:?}: {object:#}"),
        Err(message) => assert!(
            message.contains(expected),
            "refused with {message:?}, expected {expected:?}"
        ),
    }
}

#[test]
fn good_resource_passes_cel_and_parses() {
    cel(&good()).expect("good resource accepted");
    let model: ConfidentialModel = serde_json::from_value(good()).expect("parses");
    let spec: &ConfidentialModelSpec = &model.spec;
    spec.attestation.validate().expect("policy valid");
    assert_eq!(spec.replicas, 2);
    assert_eq!(spec.service.port, 443);
    assert_eq!(spec.engine.port, 8000);
}

#[test]
fn interval_below_five_seconds_is_refused() {
    refused(
        |o| o["spec"]["attestation"]["interval"] = json!("4s"),
        "interval must be at least 5s",
    );
    refused(
        |o| o["spec"]["attestation"]["interval"] = json!("4999ms"),
        "interval must be at least 5s",
    );
    let mut ok = good();
    ok["spec"]["attestation"]["interval"] = json!("5s");
    cel(&ok).expect("5s is allowed");
}

#[test]
fn max_evidence_age_below_interval_is_refused() {
    refused(
        |o| {
            o["spec"]["attestation"]["interval"] = json!("10m");
            o["spec"]["attestation"]["maxEvidenceAge"] = json!("5m");
        },
        "maxEvidenceAge must be at least attestation.interval",
    );
}

#[test]
fn engine_image_must_be_pinned_to_its_digest() {
    refused(
        |o| o["spec"]["engine"]["image"] = json!(format!("vllm@{}", digest(9))),
        "image must be pinned to digest",
    );
    refused(
        |o| o["spec"]["engine"]["image"] = json!("vllm:latest"),
        "image must be pinned to digest",
    );
}

#[test]
fn deployed_digests_must_be_allowed_by_the_policy() {
    refused(
        |o| o["spec"]["model"]["digest"] = json!(digest(7)),
        "model.digest must be one of",
    );
    refused(
        |o| {
            o["spec"]["engine"]["digest"] = json!(digest(8));
            o["spec"]["engine"]["image"] = json!(format!("vllm@{}", digest(8)));
        },
        "engine.digest must be one of",
    );
}

#[test]
fn exactly_one_model_source() {
    refused(
        |o| o["spec"]["model"]["source"] = json!({}),
        "exactly one of persistentVolumeClaim",
    );
    refused(
        |o| {
            o["spec"]["model"]["source"]["hostPath"] = json!({"path": "/models"});
        },
        "exactly one of persistentVolumeClaim",
    );
}

#[test]
fn device_and_tcti_are_exclusive() {
    refused(
        |o| {
            o["spec"]["tpm"] = json!({
                "device": {"path": "/dev/tpmrm0"},
                "tcti": "swtpm:host=$(AVER_NODE_IP),port=2321"
            });
        },
        "at most one of device and tcti",
    );
    let mut ok = good();
    ok["spec"]["measurement"] = json!("enclave");
    ok["spec"]["tpm"] = json!({"tcti": "swtpm:host=$(AVER_NODE_IP),port=2321"});
    cel(&ok).expect("tcti alone is allowed");
}

#[test]
fn tpm_access_only_with_enclave_measurement() {
    for tpm in [
        json!({"tcti": "swtpm:host=$(AVER_NODE_IP),port=2321"}),
        json!({"device": {"path": "/dev/tpmrm0"}}),
    ] {
        for measurement in [None, Some("node")] {
            refused(
                |o| {
                    o["spec"]["tpm"] = tpm.clone();
                    if let Some(m) = measurement {
                        o["spec"]["measurement"] = json!(m);
                    }
                },
                "only measurement: enclave does",
            );
        }
        let mut ok = good();
        ok["spec"]["tpm"] = tpm.clone();
        ok["spec"]["measurement"] = json!("enclave");
        cel(&ok).expect("enclave measurement may reach the TPM");
    }
    // The node selector still picks TPM nodes in node mode.
    let mut ok = good();
    ok["spec"]["tpm"] = json!({"nodeSelector": {"aver.dev/tpm": "true"}});
    cel(&ok).expect("node selector alone is allowed");
    let model: ConfidentialModel = serde_json::from_value(good()).expect("parses");
    assert_eq!(model.spec.measurement, aver_crds::Measurement::Node);
    assert!(serde_json::from_value::<ConfidentialModel>({
        let mut o = good();
        o["spec"]["measurement"] = json!("pod");
        o
    })
    .is_err());
}

#[test]
fn workload_pcr_cannot_be_a_boot_pcr() {
    refused(
        |o| o["spec"]["attestation"]["workloadPcr"] = json!(0),
        "workloadPcr must not also be a reference (boot) PCR",
    );
}

#[test]
fn schema_bounds_what_cel_cannot_need_to() {
    let schema = schema();
    let policy = &schema["properties"]["spec"]["properties"]["attestation"]["properties"];
    assert_eq!(
        policy["referencePcrs"]["x-kubernetes-list-type"],
        json!("map"),
        "duplicate PCRs are refused by list-map keys"
    );
    assert_eq!(
        policy["trust"]["properties"]["akNames"]["minItems"],
        json!(1)
    );
    assert!(
        policy["trust"]["properties"]["akNames"]
            .get("default")
            .is_none(),
        "an empty default would not pass minItems"
    );
    assert_eq!(
        policy["allowed"]["properties"]["engineDigests"]["items"]["pattern"],
        json!("^sha256:[0-9a-f]{64}$")
    );
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
}

#[test]
fn trust_needs_ak_names_or_ek_roots() {
    refused(
        |o| o["spec"]["attestation"]["trust"] = json!({}),
        "trust needs akNames, ekRoots or akRoots",
    );
    let mut ek_only = good();
    ek_only["spec"]["attestation"]["trust"] = json!({
        "ekRoots": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    });
    cel(&ek_only).expect("ekRoots alone is a trust root");
    let mut ak_only = good();
    ak_only["spec"]["attestation"]["trust"] = json!({
        "akRoots": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    });
    cel(&ak_only).expect("akRoots alone is a trust root");
}

/// The attestation policy of [`good`] in node-measured mode.
fn node_measured() -> Value {
    let mut o = good();
    o["spec"]["attestation"]["allowed"] = json!({
        "modelDigests": [digest(2)],
        "pod": {"containers": [
            {"name": "enclave", "imageDigests": [digest(5)], "specDigests": [digest(6)]},
            {"name": "engine", "imageDigests": [digest(1)], "specDigests": [digest(7)]}
        ]},
        "nodePolicies": [digest(8)]
    });
    o
}

#[test]
fn node_measured_policies_pass_without_engine_digests() {
    let o = node_measured();
    cel(&o).expect("pod mode accepted");
    let model: ConfidentialModel = serde_json::from_value(o).expect("parses");
    model.spec.attestation.validate().expect("policy valid");
    assert!(model.spec.attestation.allowed.engine_digests.is_empty());
    let schema = schema();
    let allowed = &schema["properties"]["spec"]["properties"]["attestation"]["properties"]
        ["allowed"]["properties"];
    assert!(
        allowed["engineDigests"].get("default").is_none(),
        "absent engineDigests must stay absent"
    );
}

#[test]
fn exactly_one_workload_mode_in_the_schema() {
    let with = |change: fn(&mut Value), expected: &str| {
        let mut object = node_measured();
        change(&mut object["spec"]["attestation"]["allowed"]);
        match cel(&object) {
            Ok(()) => panic!("accepted, expected {expected:?}: {object:#}"),
            Err(message) => assert!(message.contains(expected), "{message}"),
        }
    };
    with(
        |a| a["engineDigests"] = json!([digest(1)]),
        "allowed.pod and allowed.engineDigests are exclusive",
    );
    with(
        |a| a["configDigests"] = json!([digest(3)]),
        "allowed.configDigests is for enclave-reported evidence only",
    );
    with(
        |a| {
            a.as_object_mut().unwrap().remove("pod");
        },
        "allowed.nodePolicies needs allowed.pod",
    );
    with(
        |a| {
            let a = a.as_object_mut().unwrap();
            a.remove("pod");
            a.remove("nodePolicies");
        },
        "allowed needs pod (node-measured evidence from aver-node) or engineDigests",
    );
    refused(
        |o| o["spec"]["attestation"]["allowed"]["engineDigests"] = json!([]),
        "allowed needs pod (node-measured evidence from aver-node) or engineDigests",
    );
}
