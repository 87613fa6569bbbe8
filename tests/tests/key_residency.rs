//! Key residency (docs/architecture.md#key-residency): the enclave's TLS private key exists only in
//! its memory. It is in no file the enclave writes and in no answer of any
//! endpoint, and what clients pin is its public half.

mod process_memory;

use std::time::Duration;

use aver_client::AttestedClient;
use aver_crds::boot_policy::PLATFORM_PCRS as DEFAULT_BOOT_PCRS;
use aver_enclave::server::{ServeConfig, Server};
use aver_enclave::{Enclave, LaunchConfig, WorkloadInputs};
use aver_tests::node::{TestNode, ENGINE};
use aver_tests::require_swtpm;
use aver_tests::stub_upstream::StubUpstream;
use aver_verifier::Sha256Digest;
use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use p256::pkcs8::EncodePrivateKey as _;

/// Every encoding in which key bytes could plausibly leak.
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        b64.encode(secret).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_private_key_is_never_written_or_served() {
    require_swtpm!();
    let node = TestNode::start().unwrap();
    let stub = StubUpstream::start().await.unwrap();
    let mut quote_pcrs = DEFAULT_BOOT_PCRS.to_vec();
    quote_pcrs.push(aver_crds::policy::DEFAULT_WORKLOAD_PCR);
    let config = LaunchConfig {
        tcti: node.tpm.tcti(),
        ak_handle: aver_enclave::tpm::DEFAULT_AK_HANDLE,
        state_dir: node.state.path().to_owned(),
        workload_pcr: aver_crds::policy::DEFAULT_WORKLOAD_PCR,
        quote_pcrs,
        max_launches: aver_enclave::launch_log::DEFAULT_MAX_LAUNCHES,
        workload: WorkloadInputs {
            engine_digest: Sha256Digest::parse(ENGINE).unwrap(),
            model_dir: node.model.path().to_owned(),
            serving_config: None,
        },
    };
    let enclave = tokio::task::block_in_place(|| Enclave::launch(&config)).unwrap();
    let spki = enclave.tls_key().spki_sha256();
    // The test finds the private key only to search for it elsewhere: the
    // key has no export, so it is read from where this process holds it, the
    // one locked page of the enclave's key (tests/key_hygiene.rs).
    let scalar = process_memory::find_locked_scalar("self", &spki)
        .expect("the TLS key's scalar is in a locked page of this process");
    let private_der = p256::SecretKey::from_slice(&scalar)
        .unwrap()
        .to_pkcs8_der()
        .unwrap();
    // Every 32-byte window of its PKCS#8 DER, one of which is the secret
    // scalar, raw, hex and base64.
    let secrets: Vec<Vec<u8>> = private_der
        .as_bytes()
        .windows(32)
        .flat_map(encodings)
        .collect();

    let serve = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: stub.url(),
        max_request_bytes: 1 << 20,
        upstream_timeout: Duration::from_secs(10),
        batch: Default::default(),
        certificate_names: vec!["localhost".into()],
        limits: Default::default(),
    };
    let server = Server::bind(enclave, &serve).await.unwrap();
    let url = format!("https://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let client = AttestedClient::new(node.policy().unwrap()).unwrap();
    let mut answers = Vec::new();
    for path in [
        "/.well-known/aver/evidence?nonce=".to_owned() + &"ab".repeat(32),
        "/.well-known/aver/key".into(),
        "/.well-known/aver/".into(),
        "/metrics".into(),
        "/healthz".into(),
        "/readyz".into(),
        "/v1/models".into(),
    ] {
        let request = Request::get(format!("{url}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let mut text = format!("{:?}", response.headers()).into_bytes();
        text.extend(response.into_body().collect().await.unwrap().to_bytes());
        answers.push((path, text));
    }
    // What the client pinned is the public key the evidence bound.
    let pinned = client
        .pins()
        .get_fresh(url.trim_start_matches("https://"))
        .unwrap();
    assert_eq!(pinned.spki_sha256, spki);

    for (path, answer) in &answers {
        for secret in &secrets {
            assert!(!contains(answer, secret), "{path} leaks private key bytes");
        }
    }
    for entry in walk(node.state.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds private key bytes",
                entry.display()
            );
        }
    }
    let _ = stop.send(());
    let _ = task.await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
