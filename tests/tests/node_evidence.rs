//! Node-measured evidence (v2) against a real (software) TPM: a node log as
//! `aver-node` writes it is extended into the workload PCR, quoted with the
//! challenge's qualifying data, and verified against a policy with
//! `allowed.pod`. Every way of running something else, or of hiding it,
//! fails with its own typed error, and the genuine log passes on the same
//! kind of TPM, so each refusal comes from the check it names.

use aver_crds::{
    AllowedContainer, AllowedPod, AllowedWorkload, AttestationPolicy, ReferencePcr, Sha256Digest,
    TrustRoots,
};
use aver_node_log::spec::{EnvVar, Mount, NamespaceMode};
use aver_node_log::{
    policy_digest, ContainerSpec, ImageIdentity, MountSource, NodeEvent, NodeLogEntry,
    NodeLogError, PodMismatch, PodRef, SandboxInfo,
};
use aver_tests::{require_swtpm, Swtpm};
use aver_tpm::tpm::DEFAULT_AK_HANDLE;
use aver_tpm::Tpm;
use aver_verifier::binding::{qualifying_data, Nonce};
use aver_verifier::eventlog::{LaunchMeasurements, LogEntry};
use aver_verifier::evidence::{Base64Bytes, PcrValue, Quote};
use aver_verifier::{
    verify, verify_with, Challenge, Evidence, MeasuredBy, VerifiedReport, VerifyError,
    VerifyOptions, EVIDENCE_VERSION_ENCLAVE, EVIDENCE_VERSION_NODE,
};

const WORKLOAD_PCR: u8 = 15;
const QUOTE_PCRS: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 7, WORKLOAD_PCR];

/// The node policy in the node image: confidential pods with the default
/// containers (enclave, engine), and one system pod, a CNI agent on the
/// host network.
const NODE_POLICY: &str = "\
version: 1
system:
- name: cni
  namespace: kube-system
  images: [sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc]
  hostNetwork: true
  capabilities: [NET_ADMIN]
";

const SPKI: Sha256Digest = Sha256Digest([0x5a; 32]);
const MODEL: Sha256Digest = Sha256Digest([0x3d; 32]);

fn digest(byte: u8) -> Sha256Digest {
    Sha256Digest([byte; 32])
}

/// An image as containerd resolves it: config digest as ID, and the
/// manifest digest the policy pins.
fn image(repository: &str, id: u8, manifest: u8) -> ImageIdentity {
    ImageIdentity {
        reference: format!("{repository}@{}", digest(manifest)),
        id: digest(id),
        repo_digests: vec![format!("{repository}@{}", digest(manifest))],
    }
}

fn enclave_image() -> ImageIdentity {
    image("registry.example/aver-enclave", 0xe1, 0xe2)
}

fn engine_image() -> ImageIdentity {
    image("registry.example/vllm", 0x71, 0x72)
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar::new(name, value)
}

fn enclave_spec() -> ContainerSpec {
    ContainerSpec {
        command: vec!["/aver-enclave".into()],
        args: vec!["serve".into(), "--listen".into(), "0.0.0.0:8443".into()],
        env: vec![env("AVER_AGENT_SOCKET", "/run/aver-node/agent.sock")],
        readonly_rootfs: true,
        no_new_privs: true,
        capabilities_drop: vec!["ALL".into()],
        mounts: vec![
            Mount {
                container_path: "/run/aver-node".into(),
                source: MountSource::NodeAgent,
                readonly: true,
                propagation: "private".into(),
                selinux_relabel: false,
            },
            Mount {
                container_path: "/models".into(),
                source: MountSource::Volume {
                    plugin: "kubernetes.io~csi".into(),
                    name: "model".into(),
                },
                readonly: true,
                propagation: "private".into(),
                selinux_relabel: false,
            },
        ],
        ..Default::default()
    }
}

fn engine_spec() -> ContainerSpec {
    ContainerSpec {
        args: vec![
            "--model".into(),
            "/models".into(),
            "--host".into(),
            "127.0.0.1".into(),
        ],
        env: vec![env("HF_HUB_OFFLINE", "1")],
        no_new_privs: true,
        mounts: vec![Mount {
            container_path: "/models".into(),
            source: MountSource::Volume {
                plugin: "kubernetes.io~csi".into(),
                name: "model".into(),
            },
            readonly: true,
            propagation: "private".into(),
            selinux_relabel: false,
        }],
        ..Default::default()
    }
}

fn sandbox(id: &str, namespace: &str, name: &str, confidential: bool) -> NodeEvent {
    NodeEvent::PodSandbox {
        sandbox_id: id.into(),
        sandbox: SandboxInfo {
            pod: PodRef {
                namespace: namespace.into(),
                name: name.into(),
                uid: format!("uid-{id}"),
            },
            confidential_model: confidential.then(|| "llama".into()),
            host_network: !confidential,
            host_pid: false,
            host_ipc: false,
            privileged: false,
        },
    }
}

fn container(
    sandbox: &str,
    id: &str,
    name: &str,
    image: ImageIdentity,
    spec: ContainerSpec,
) -> NodeEvent {
    NodeEvent::Container {
        sandbox_id: sandbox.into(),
        container_id: id.into(),
        name: name.into(),
        attempt: 0,
        image,
        spec,
    }
}

fn tls_key(sandbox: &str, container: &str) -> NodeEvent {
    NodeEvent::TlsKey {
        sandbox_id: sandbox.into(),
        container_id: container.into(),
        spki_sha256: SPKI,
        model_digest: MODEL,
    }
}

/// A genuine node since boot: aver-node started with the node policy, the
/// CNI agent runs, and one confidential pod runs its enclave and engine and
/// registered its TLS key.
fn genuine() -> Vec<NodeEvent> {
    let cni_spec = ContainerSpec {
        capabilities_add: vec!["NET_ADMIN".into()],
        namespaces: aver_node_log::spec::Namespaces {
            network: NamespaceMode::Node,
            ..Default::default()
        },
        ..Default::default()
    };
    vec![
        NodeEvent::AgentStart {
            agent_version: "0.1.0".into(),
            policy: NODE_POLICY.into(),
        },
        sandbox("s-cni", "kube-system", "cni-x7k2p", false),
        container(
            "s-cni",
            "c-cni",
            "cni",
            image("registry.example/cni", 0xcb, 0xcc),
            cni_spec,
        ),
        sandbox("s-llama", "ml", "llama-0", true),
        container(
            "s-llama",
            "c-enclave",
            "enclave",
            enclave_image(),
            enclave_spec(),
        ),
        container(
            "s-llama",
            "c-engine",
            "engine",
            engine_image(),
            engine_spec(),
        ),
        tls_key("s-llama", "c-enclave"),
    ]
}

/// Index of the engine container event in [`genuine`].
const ENGINE_EVENT: usize = 5;
/// Index of the tls-key event in [`genuine`].
const KEY_EVENT: usize = 6;

fn entries(events: &[NodeEvent]) -> Vec<NodeLogEntry> {
    events
        .iter()
        .map(|event| NodeLogEntry {
            pcr: WORKLOAD_PCR,
            event: event.clone(),
        })
        .collect()
}

/// A node's TPM (its own swtpm) after booting and measuring `events`.
struct Node {
    tpm: Tpm,
    ak_name: String,
    _swtpm: Swtpm,
}

impl Node {
    fn measuring(events: &[NodeEvent]) -> Self {
        let swtpm = Swtpm::start().expect("swtpm starts");
        let tpm = Tpm::open(&swtpm.tcti(), DEFAULT_AK_HANDLE).expect("TPM opens");
        let ak_name = hex::encode(tpm.ak_name());
        let mut node = Self {
            tpm,
            ak_name,
            _swtpm: swtpm,
        };
        for event in events {
            node.extend(&event.digest());
        }
        node
    }

    fn extend(&mut self, value: &Sha256Digest) {
        self.tpm.extend(WORKLOAD_PCR, &value.0).expect("PCR extend");
    }

    /// Quotes for `nonce` and `spki` and wraps the quote in a document of
    /// `version` with `node_log` (v2) or `event_log` (v1), sent as JSON and
    /// parsed again as a client receives it.
    fn evidence(
        &mut self,
        version: u32,
        nonce: &Nonce,
        node_log: Vec<NodeLogEntry>,
        event_log: Vec<LogEntry>,
    ) -> Evidence {
        let qualifying = qualifying_data(nonce, &SPKI, None).expect("unbatched qualifying data");
        let (attest, signature) = self
            .tpm
            .quote(&QUOTE_PCRS, &qualifying)
            .expect("TPM quotes");
        let pcrs = self.tpm.read_pcrs(&QUOTE_PCRS).expect("PCRs read");
        let evidence = Evidence {
            version,
            nonce: *nonce,
            spki_sha256: SPKI,
            quote: Quote {
                attest: Base64Bytes(attest),
                signature: Base64Bytes(signature),
            },
            pcrs: pcrs
                .into_iter()
                .map(|(pcr, value)| PcrValue {
                    pcr,
                    value: Sha256Digest(value),
                })
                .collect(),
            ak_public: Base64Bytes(self.tpm.ak_public_tpmt()),
            event_log,
            node_log,
            boot_log: None,
            ima_log: None,
            batch: None,
            ak_certificate: None,
            ak_chain: Vec::new(),
        };
        Evidence::from_json(&evidence.to_json_compact()).expect("evidence parses")
    }

    fn node_evidence(&mut self, nonce: &Nonce, log: Vec<NodeLogEntry>) -> Evidence {
        self.evidence(EVIDENCE_VERSION_NODE, nonce, log, Vec::new())
    }

    /// The policy a client writes from what it knows independently: this
    /// node's AK, swtpm's boot PCRs (never extended, so zero), and the pod
    /// it expects.
    fn policy(&self) -> AttestationPolicy {
        AttestationPolicy {
            reference_pcrs: (0..8)
                .map(|pcr| ReferencePcr {
                    pcr,
                    values: vec![Sha256Digest([0; 32])],
                })
                .collect(),
            workload_pcr: WORKLOAD_PCR,
            boot: None,
            runtime: None,
            allow_unverified_boot: false,
            allowed: AllowedWorkload {
                engine_digests: Vec::new(),
                model_digests: vec![MODEL],
                config_digests: None,
                pod: Some(AllowedPod {
                    containers: vec![
                        AllowedContainer {
                            name: "enclave".into(),
                            image_digests: vec![digest(0xe2)],
                            spec_digests: vec![enclave_spec().digest()],
                        },
                        AllowedContainer {
                            name: "engine".into(),
                            image_digests: vec![digest(0x72)],
                            spec_digests: vec![engine_spec().digest()],
                        },
                    ],
                }),
                node_policies: None,
            },
            trust: TrustRoots {
                ak_names: vec![self.ak_name.clone()],
                ek_roots: None,
                ak_roots: None,
                ek_pins: vec![],
                allow_sha1: false,
            },
            interval: "30s".into(),
            max_evidence_age: "5m".into(),
        }
    }
}

fn challenge(nonce: Nonce) -> Challenge {
    Challenge {
        nonce,
        spki_sha256: SPKI,
    }
}

/// Measures `events`, sends them in full, and verifies.
fn verify_node(events: &[NodeEvent]) -> Result<VerifiedReport, VerifyError> {
    let mut node = Node::measuring(events);
    let nonce = Nonce::random();
    let evidence = node.node_evidence(&nonce, entries(events));
    verify(
        &evidence,
        &challenge(nonce),
        &aver_tests::checked(&node.policy()),
    )
}

#[test]
fn genuine_node_log_verifies_and_reports_the_pod() {
    require_swtpm!();
    let events = genuine();
    let mut node = Node::measuring(&events);
    let nonce = Nonce::random();
    let evidence = node.node_evidence(&nonce, entries(&events));
    assert_eq!(evidence.version, EVIDENCE_VERSION_NODE);
    assert!(evidence.event_log.is_empty());
    let json = String::from_utf8(evidence.to_json()).unwrap();
    assert!(
        json.contains("\"nodeLog\"") && !json.contains("eventLog"),
        "{json}"
    );

    let policy = node.policy();
    let report = verify(&evidence, &challenge(nonce), &aver_tests::checked(&policy))
        .expect("genuine node log verifies");
    assert_eq!(report.evidence_version(), EVIDENCE_VERSION_NODE);
    assert_eq!(report.ak_name(), node.ak_name);
    assert_eq!(report.launch().model(), MODEL);
    assert_eq!(report.launch().tls_spki(), SPKI);
    assert_eq!(report.launch().engine(), None);
    assert_eq!(report.launches_since_boot(), 1);
    let MeasuredBy::Node {
        pod,
        confidential_model,
        containers,
        agent_starts,
        node_policies,
        ..
    } = report.measured_by()
    else {
        panic!("measured by {:?}", report.measured_by());
    };
    assert_eq!(pod, "ml/llama-0");
    assert_eq!(confidential_model, "llama");
    assert_eq!(*agent_starts, 1);
    assert_eq!(node_policies, &[policy_digest(NODE_POLICY)]);
    let seen: Vec<(&str, &str, Sha256Digest)> = containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_str(), c.spec_digest))
        .collect();
    let (enclave, engine) = (digest(0xe2).to_string(), digest(0x72).to_string());
    assert_eq!(
        seen,
        [
            ("enclave", enclave.as_str(), enclave_spec().digest()),
            ("engine", engine.as_str(), engine_spec().digest()),
        ]
    );

    let text = report.to_text();
    assert!(
        text.contains("measured by       aver-node, below the pod"),
        "{text}"
    );
    assert!(text.contains("pod               ml/llama-0"), "{text}");
    assert!(
        text.contains(&format!("container         engine image {engine}")),
        "{text}"
    );
    assert!(!text.contains("weaker"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["measuredBy"]["kind"], "node");
    assert_eq!(json["measuredBy"]["containers"][1]["name"], "engine");

    // Pinning the node policy: the one the log records passes.
    let mut pinned = policy.clone();
    pinned.allowed.node_policies = Some(vec![policy_digest(NODE_POLICY)]);
    verify(&evidence, &challenge(nonce), &aver_tests::checked(&pinned))
        .expect("the recorded node policy is allowed");

    // The same quote for a model the policy does not allow.
    let mut other_model = policy;
    other_model.allowed.model_digests = vec![digest(0x99)];
    assert_eq!(
        verify(
            &evidence,
            &challenge(nonce),
            &aver_tests::checked(&other_model)
        ),
        Err(VerifyError::ModelNotAllowed(MODEL))
    );
}

#[test]
fn a_swapped_engine_image_is_refused() {
    require_swtpm!();
    let mut events = genuine();
    events[ENGINE_EVENT] = container(
        "s-llama",
        "c-engine",
        "engine",
        image("registry.example/vllm-patched", 0x81, 0x82),
        engine_spec(),
    );
    let error = verify_node(&events).unwrap_err();
    assert!(
        matches!(&error, VerifyError::Pod(PodMismatch::ImageNotAllowed { name, image, pod })
            if name == "engine" && *image == digest(0x82).to_string() && pod == "ml/llama-0"),
        "{error}"
    );
    assert_eq!(error.reason(), "pod");
}

#[test]
fn an_added_engine_argument_or_variable_is_refused_and_named() {
    require_swtpm!();
    let mut with_arg = engine_spec();
    with_arg.args.push("--enable-log-requests".into());
    let mut with_env = engine_spec();
    with_env
        .env
        .push(env("HTTPS_PROXY", "http://proxy.example:3128"));
    let references = [("engine".to_owned(), engine_spec())];
    for (spec, change) in [
        (with_arg, "--enable-log-requests"),
        (with_env, "env HTTPS_PROXY added"),
    ] {
        let changed = spec.digest();
        let mut events = genuine();
        events[ENGINE_EVENT] = container("s-llama", "c-engine", "engine", engine_image(), spec);
        let mut node = Node::measuring(&events);
        let nonce = Nonce::random();
        let evidence = node.node_evidence(&nonce, entries(&events));
        let policy = node.policy();

        // The decision is the policy's spec digests alone.
        let error =
            verify(&evidence, &challenge(nonce), &aver_tests::checked(&policy)).unwrap_err();
        assert!(
            matches!(&error, VerifyError::Pod(PodMismatch::SpecNotAllowed { name, digest, .. })
                if name == "engine" && *digest == changed),
            "{error}"
        );
        // With the expected spec at hand, the error says what changed.
        let options = VerifyOptions {
            reference_specs: &references,
            ..VerifyOptions::default()
        };
        let error = verify_with(
            &evidence,
            &challenge(nonce),
            &aver_tests::checked(&policy),
            &options,
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("container engine in pod ml/llama-0 runs spec")
                && message.contains(change),
            "{message}"
        );
    }
}

#[test]
fn a_debug_container_the_gate_let_through_is_refused_by_the_node_policy() {
    require_swtpm!();
    let debugger = image("docker.io/library/busybox", 0xdb, 0xdc);
    let mut events = genuine();
    events.insert(
        KEY_EVENT,
        container(
            "s-llama",
            "c-debug",
            "debugger",
            debugger,
            ContainerSpec {
                command: vec!["sh".into()],
                ..Default::default()
            },
        ),
    );
    let error = verify_node(&events).unwrap_err();
    assert!(
        matches!(
            &error,
            VerifyError::NodeLog(NodeLogError::NotAllowed { index, refusal })
                if *index == KEY_EVENT && refusal.label == "not-allowed"
        ),
        "{error}"
    );
    let expected = format!(
        "container debugger (image {}) in pod ml/llama-0",
        digest(0xdc)
    );
    assert!(error.to_string().contains(&expected), "{error}");
    assert_eq!(error.reason(), "node-policy");
}

#[test]
fn a_privileged_pod_elsewhere_on_the_node_is_refused() {
    require_swtpm!();
    let mut events = genuine();
    let NodeEvent::PodSandbox {
        sandbox_id,
        mut sandbox,
    } = sandbox("s-shell", "kube-system", "node-shell-q8v", false)
    else {
        unreachable!()
    };
    sandbox.privileged = true;
    sandbox.host_pid = true;
    events.push(NodeEvent::PodSandbox {
        sandbox_id,
        sandbox,
    });
    let error = verify_node(&events).unwrap_err();
    assert!(
        matches!(
            &error,
            VerifyError::NodeLog(NodeLogError::NotAllowed { index: 7, refusal })
                if refusal.subject == "pod kube-system/node-shell-q8v"
        ),
        "{error}"
    );
}

#[test]
fn a_foreign_extend_of_the_workload_pcr_is_a_replay_mismatch() {
    require_swtpm!();
    let events = genuine();
    let mut node = Node::measuring(&events);
    // What `tpm2_pcrextend 15:sha256=…` by anyone with TPM access does.
    node.extend(&Sha256Digest(rand::random()));
    let nonce = Nonce::random();
    let evidence = node.node_evidence(&nonce, entries(&events));
    let error = verify(
        &evidence,
        &challenge(nonce),
        &aver_tests::checked(&node.policy()),
    )
    .unwrap_err();
    assert!(
        matches!(
            &error,
            VerifyError::NodeLog(NodeLogError::ReplayMismatch {
                pcr: WORKLOAD_PCR,
                ..
            })
        ),
        "{error}"
    );
    assert_eq!(error.reason(), "node-log");
}

#[test]
fn a_second_key_registration_for_the_same_spki_is_refused() {
    require_swtpm!();
    // Another confidential pod on the node registers the same TLS key: the
    // key no longer says which pod serves.
    let mut events = genuine();
    events.extend([
        sandbox("s-llama-1", "ml", "llama-1", true),
        container(
            "s-llama-1",
            "c-enclave-1",
            "enclave",
            enclave_image(),
            enclave_spec(),
        ),
        container(
            "s-llama-1",
            "c-engine-1",
            "engine",
            engine_image(),
            engine_spec(),
        ),
        tls_key("s-llama-1", "c-enclave-1"),
    ]);
    let error = verify_node(&events).unwrap_err();
    assert_eq!(
        error,
        VerifyError::NodeLog(NodeLogError::KeyBoundTwice(SPKI)),
        "{error}"
    );
    assert_eq!(error.reason(), "channel-binding");
}

#[test]
fn a_node_log_edited_in_transit_is_a_replay_mismatch() {
    require_swtpm!();
    // The node ran a debug container; the log sent leaves it out, so what
    // the client reads no longer explains the quoted PCR.
    let mut measured = genuine();
    measured.insert(
        KEY_EVENT,
        container(
            "s-llama",
            "c-debug",
            "debugger",
            image("docker.io/library/busybox", 0xdb, 0xdc),
            ContainerSpec::default(),
        ),
    );
    let mut node = Node::measuring(&measured);
    let nonce = Nonce::random();
    let sent = entries(&genuine());
    let evidence = node.node_evidence(&nonce, sent);
    let error = verify(
        &evidence,
        &challenge(nonce),
        &aver_tests::checked(&node.policy()),
    )
    .unwrap_err();
    assert!(
        matches!(
            &error,
            VerifyError::NodeLog(NodeLogError::ReplayMismatch { .. })
        ),
        "{error}"
    );

    // Or an entry is rewritten: the swapped engine reported as the allowed one.
    let mut swapped = genuine();
    swapped[ENGINE_EVENT] = container(
        "s-llama",
        "c-engine",
        "engine",
        image("registry.example/vllm-patched", 0x81, 0x82),
        engine_spec(),
    );
    let mut node = Node::measuring(&swapped);
    let nonce = Nonce::random();
    let evidence = node.node_evidence(&nonce, entries(&genuine()));
    assert!(matches!(
        verify(
            &evidence,
            &challenge(nonce),
            &aver_tests::checked(&node.policy())
        ),
        Err(VerifyError::NodeLog(NodeLogError::ReplayMismatch { .. }))
    ));
}

#[test]
fn enclave_reported_evidence_is_refused_by_a_pod_policy() {
    require_swtpm!();
    // A genuine v1 document: the enclave's launch sequence in the PCR,
    // quoted for this challenge. It passes a legacy policy, so the refusal
    // below is about what it is, not about a broken quote.
    let launch = LaunchMeasurements {
        enclave_version: "0.1.0".into(),
        enclave_digest: digest(0xe1),
        engine: digest(0x72),
        model: MODEL,
        serving_config: digest(0x5c),
        tls_spki: SPKI,
    };
    let mut node = Node::measuring(&[]);
    for event in launch.events() {
        node.extend(&event.digest());
    }
    let event_log = launch
        .events()
        .into_iter()
        .map(|event| LogEntry {
            pcr: WORKLOAD_PCR,
            event,
        })
        .collect();
    let nonce = Nonce::random();
    let evidence = node.evidence(EVIDENCE_VERSION_ENCLAVE, &nonce, Vec::new(), event_log);

    let mut legacy = node.policy();
    legacy.allowed.pod = None;
    legacy.allowed.engine_digests = vec![digest(0x72)];
    let report = verify(&evidence, &challenge(nonce), &aver_tests::checked(&legacy))
        .expect("v1 passes a legacy policy");
    assert!(matches!(report.measured_by(), MeasuredBy::Enclave { .. }));
    assert!(report.to_text().contains(
        "measured by       the enclave itself (weaker: proves what the enclave reports, not what the node ran)"
    ));

    let error = verify(
        &evidence,
        &challenge(nonce),
        &aver_tests::checked(&node.policy()),
    )
    .unwrap_err();
    assert_eq!(error, VerifyError::NodeEvidenceRequired { found: 1 });
    assert!(
        error
            .to_string()
            .contains("requires node-measured evidence (version 2, from aver-node)"),
        "{error}"
    );
}

#[test]
fn an_unknown_node_policy_is_refused_with_allowed_node_policies() {
    require_swtpm!();
    let events = genuine();
    let mut node = Node::measuring(&events);
    let nonce = Nonce::random();
    let evidence = node.node_evidence(&nonce, entries(&events));
    let mut policy = node.policy();
    let hardened = "version: 1\n";
    policy.allowed.node_policies = Some(vec![policy_digest(hardened)]);
    let error = verify(&evidence, &challenge(nonce), &aver_tests::checked(&policy)).unwrap_err();
    assert_eq!(
        error,
        VerifyError::NodeLog(NodeLogError::NodePolicyNotAllowed {
            index: 0,
            digest: policy_digest(NODE_POLICY),
        }),
        "{error}"
    );
    assert_eq!(error.reason(), "node-policy");
}
