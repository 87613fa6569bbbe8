//! Zero-trust AK activation end to end (docs/architecture.md#platform-identity): swtpm manufactured
//! with an EK certificate from a test CA, `aver-enclave serve`, and the
//! attested client / `aver verify --activate` with a policy that trusts no
//! AK by name, only the CA (`trust.ekRoots`).

use std::time::Duration;

use aver_client::{AttestedClient, ClientError, Endpoint};
use aver_crds::{AttestationPolicy, Sha256Digest};
use aver_tests::ek_ca::TestCa;
use aver_tests::node::{EnclaveProcess, TestNode};
use aver_tests::stub_upstream::StubUpstream;
use aver_tests::{cargo_bin, require_swtpm, Swtpm};
use aver_verifier::ek::{ActivationError, EkChainError, EkKind};
use aver_verifier::error::VerifyError;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};

const PATIENCE: Duration = Duration::from_secs(60);

struct Rig {
    ca: TestCa,
    node: TestNode,
    stub: StubUpstream,
    enclave: EnclaveProcess,
}

async fn rig() -> Rig {
    let ca = TestCa::new("aver e2e TPM CA").unwrap();
    let node = TestNode::with_tpm(Swtpm::start_with_ek_cert(&ca).unwrap()).unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let enclave = node.serve(&stub.url(), &[]).unwrap();
    Rig {
        ca,
        node,
        stub,
        enclave,
    }
}

/// The node's policy, trusting AKs only through `roots`.
fn ek_policy(node: &TestNode, roots: &str) -> AttestationPolicy {
    let mut policy = node.policy().unwrap();
    policy.trust.ak_names.clear();
    policy.trust.ek_roots = Some(roots.to_owned());
    policy.validate().unwrap();
    policy
}

fn get(url: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("{url}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn metric(client: &AttestedClient, url: &str, name: &str) -> u64 {
    let response = tokio::time::timeout(PATIENCE, client.request(get(url, "/metrics")))
        .await
        .unwrap()
        .unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_trust_client_activates_each_tpm_once() {
    require_swtpm!();
    let rig = rig().await;
    let client = AttestedClient::new(ek_policy(&rig.node, rig.ca.root_pem())).unwrap();
    let endpoint = Endpoint::from_url(&rig.enclave.url).unwrap();

    let first = tokio::time::timeout(PATIENCE, client.attest(&endpoint))
        .await
        .unwrap()
        .expect("attested through the EK chain");
    let report = first.report().expect("fresh report");
    let activation = report.activation().expect("trusted by activation");
    assert_eq!(activation.ak_name(), report.ak_name());
    assert_eq!(activation.ek().kind, EkKind::Rsa2048);
    assert!(report.to_text().contains("ak residency      activated"));
    assert_eq!(client.activations().len(), 1);

    // Re-attestation reuses the proof: the TPM activated exactly once.
    let second = client.attest(&endpoint).await.expect("attested again");
    assert!(second.report().and_then(|r| r.activation()).is_some());
    assert_eq!(
        metric(&client, &rig.enclave.url, "aver_enclave_activations_total").await,
        1
    );
    // And requests flow as with an AK trusted by name.
    let response = client
        .request(get(&rig.enclave.url, "/v1/models"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_manufacturer_ca_is_refused_before_any_request() {
    require_swtpm!();
    let rig = rig().await;
    let other = TestCa::new("not the manufacturer").unwrap();
    let client = AttestedClient::new(ek_policy(&rig.node, other.root_pem())).unwrap();
    let error = client
        .request(get(&rig.enclave.url, "/v1/models"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::Verify(VerifyError::Activation(ActivationError::EkChain {
                source: EkChainError::UntrustedIssuer { .. },
                ..
            }))
        ),
        "{error}"
    );
    assert_eq!(error.reason(), "ek-chain");
    assert_eq!(rig.stub.requests(), 0, "nothing reached the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_without_an_ek_certificate_cannot_satisfy_ek_roots() {
    require_swtpm!();
    let ca = TestCa::new("aver e2e TPM CA").unwrap();
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let enclave = node.serve(&stub.url(), &[]).unwrap();
    let client = AttestedClient::new(ek_policy(&node, ca.root_pem())).unwrap();
    let error = client
        .attest(&Endpoint::from_url(&enclave.url).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Verify(VerifyError::Activation(ActivationError::NoEkCertificate))
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aver_verify_activate_reports_the_ek_chain() {
    require_swtpm!();
    let rig = rig().await;
    let dir = tempfile::tempdir().unwrap();
    // The AK is also listed: --activate proves residency anyway.
    let mut policy = ek_policy(&rig.node, rig.ca.root_pem());
    policy.trust.ak_names = vec![rig.node.ak_name().unwrap()];
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy.to_yaml()).unwrap();

    let output = std::process::Command::new(cargo_bin("aver"))
        .args(["verify", &rig.enclave.url, "--activate", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "aver verify --activate failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "ak residency      activated: the TPM of the rsa2048 EK below released the credential",
        "tpm             id:00001014 model swtpm version id:20191023",
        "issued by       \"O=aver tests, CN=aver e2e TPM CA\" (trust.ekRoots)",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // Without trust.ekRoots there is nothing to activate against.
    policy.trust.ek_roots = None;
    std::fs::write(&path, policy.to_yaml()).unwrap();
    let output = std::process::Command::new(cargo_bin("aver"))
        .args(["verify", &rig.enclave.url, "--activate", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--activate needs trust.ekRoots"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_activates_each_node_once_and_records_it() {
    use aver_controller::tls_attester::TlsAttester;
    use aver_controller::{AttestTarget, EndpointAttester as _};

    require_swtpm!();
    let rig = rig().await;
    let policy = ek_policy(&rig.node, rig.ca.root_pem());
    let attester = TlsAttester::new(Duration::from_secs(10));
    let target = AttestTarget {
        pod: "model-0".into(),
        pod_uid: "uid-0".into(),
        node: "tpm-node".into(),
        address: "127.0.0.1".into(),
        port: rig.enclave.port,
    };
    let first = attester
        .attest(&target, &aver_tests::checked(&policy))
        .await
        .expect("attested");
    let recorded = first
        .measurements
        .ak_activation
        .clone()
        .expect("status records the activation");
    assert_eq!(recorded.ek_kind, "rsa2048");
    assert_eq!(
        recorded.tpm.as_deref(),
        Some("id:00001014 model swtpm version id:20191023")
    );
    assert_eq!(recorded.ek_issuer, "\"O=aver tests, CN=aver e2e TPM CA\"");

    // Re-attestation reuses the proof (same activation time), and the TPM
    // saw one activation only.
    let second = attester
        .attest(&target, &aver_tests::checked(&policy))
        .await
        .expect("re-attested");
    assert_eq!(second.measurements.ak_activation, Some(recorded));
    assert_eq!(attester.activations().len(), 1);
    let client = AttestedClient::new(policy).unwrap();
    assert_eq!(
        metric(&client, &rig.enclave.url, "aver_enclave_activations_total").await,
        2,
        "one activation by the controller, one by this test's own client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_served_by_the_enclave_complete_the_chain() {
    require_swtpm!();
    let ca = TestCa::with_intermediate("aver e2e vendor root").unwrap();
    let node = TestNode::with_tpm(Swtpm::start_with_ek_cert(&ca).unwrap()).unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let policy = ek_policy(&node, ca.root_pem());

    // Without the intermediate the EK certificate's issuer is unknown.
    let bare = node.serve(&stub.url(), &[]).unwrap();
    let error = AttestedClient::new(policy.clone())
        .unwrap()
        .attest(&Endpoint::from_url(&bare.url).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.reason(), "ek-chain", "{error}");
    drop(bare);

    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("ek-chain.pem");
    std::fs::write(&chain, ca.intermediate_pem().unwrap()).unwrap();
    let enclave = node
        .serve(&stub.url(), &["--ek-chain", chain.to_str().unwrap()])
        .unwrap();
    let connection = AttestedClient::new(policy)
        .unwrap()
        .attest(&Endpoint::from_url(&enclave.url).unwrap())
        .await
        .expect("attested through root and served intermediate");
    let activation = connection.report().unwrap().activation().cloned().unwrap();
    assert_eq!(
        activation.ek().chain,
        [
            "\"O=aver tests, CN=aver e2e vendor root intermediate\"",
            "\"O=aver tests, CN=aver e2e vendor root\""
        ]
    );
}

/// What `aver-node enroll` prints for the TPM behind `tcti`.
fn enroll(tcti: &str) -> String {
    let output = std::process::Command::new(cargo_bin("aver-node"))
        .args(["enroll", "--tcti", tcti])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "aver-node enroll failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `policy` with the lines `aver-node enroll` printed pasted under `trust:`.
fn pasted(policy: &AttestationPolicy, enrolment: &str) -> AttestationPolicy {
    let indented: String = enrolment.lines().map(|l| format!("  {l}\n")).collect();
    let yaml = policy
        .to_yaml()
        .replacen("\ntrust:\n", &format!("\ntrust:\n{indented}"), 1);
    AttestationPolicy::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}:\n{yaml}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ek_pins_accept_the_enrolled_node_and_refuse_another_of_the_same_vendor() {
    require_swtpm!();
    let ca = TestCa::new("aver e2e TPM CA").unwrap();
    let node = TestNode::with_tpm(Swtpm::start_with_ek_cert(&ca).unwrap()).unwrap();
    let mine = enroll(&node.tpm.tcti());
    // Another machine with a TPM of the same vendor (the same CA).
    let other = enroll(&Swtpm::start_with_ek_cert(&ca).unwrap().tcti());
    let pins = |text: &str| -> Vec<Sha256Digest> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|l| Sha256Digest::parse(l.split_whitespace().next().unwrap()).unwrap())
            .collect()
    };
    assert_eq!(pins(&mine).len(), 2, "{mine}");
    assert!(
        mine.contains("# rsa2048 EK certificate (NV 0x01c00002)"),
        "{mine}"
    );
    assert!(mine.contains(&node.ak_name().unwrap()), "{mine}");
    assert_ne!(pins(&mine), pins(&other));

    let stub = StubUpstream::start().await.unwrap();
    let enclave = node.serve(&stub.url(), &[]).unwrap();
    let endpoint = Endpoint::from_url(&enclave.url).unwrap();
    let roots = ek_policy(&node, ca.root_pem());

    let policy = pasted(&roots, &mine);
    assert_eq!(policy.trust.ek_pins, pins(&mine));
    let client = AttestedClient::new(policy).unwrap();
    let attested = tokio::time::timeout(PATIENCE, client.attest(&endpoint))
        .await
        .unwrap()
        .expect("the enrolled node is accepted");
    let report = attested.report().expect("fresh report");
    let activation = report.activation().expect("trusted by activation");
    assert_eq!(activation.pinned_by(), Some(pins(&mine)[0]));
    assert!(
        report.to_text().contains("node pinned"),
        "{}",
        report.to_text()
    );

    // Pinning only the public key is enough too.
    let mut policy = pasted(&roots, &mine);
    policy.trust.ek_pins.remove(0);
    let client = AttestedClient::new(policy).unwrap();
    client
        .attest(&endpoint)
        .await
        .expect("pinned by its EK public key");

    let client = AttestedClient::new(pasted(&roots, &other)).unwrap();
    let error = client
        .request(get(&enclave.url, "/v1/models"))
        .await
        .unwrap_err();
    match &error {
        ClientError::Verify(VerifyError::EkNotPinned { certificate, .. }) => {
            assert_eq!(*certificate, pins(&mine)[0]);
        }
        other => panic!("{other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&pins(&mine)[0].to_string()), "{message}");
    assert!(message.contains("aver-node enroll"), "{message}");
    assert_eq!(stub.requests(), 0, "nothing reached the engine");
}
