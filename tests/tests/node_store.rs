//! `aver-node`'s node log store and TPM thread against a real (software)
//! TPM: events recorded through the `Measurer` are in the quoted workload
//! PCR, the log that comes with a quote replays to it, and a restart of the
//! agent on the same state directory and TPM continues the log.

use aver_crds::Sha256Digest;
use aver_node::store::{
    Measurer, MeasurerConfig, NodeQuote, StoreError, DEFAULT_BOOT_PCRS, LOG_FILE,
};
use aver_node_log::{replay, AccessKind, NodeEvent};
use aver_tests::{require_swtpm, Swtpm};
use aver_verifier::tpm::{AkPublic, Attest, Signature};
use sha2::{Digest as _, Sha256};

const POLICY: &str = "version: 1\n# node policy of the store test\n";
const WORKLOAD_PCR: u8 = aver_crds::policy::DEFAULT_WORKLOAD_PCR;

fn access(n: u32) -> NodeEvent {
    NodeEvent::Access {
        sandbox_id: format!("sandbox-{n}"),
        container_id: Some(format!("container-{n}")),
        kind: AccessKind::Exec,
    }
}

/// Checks a quote the way a verifier would (signature by the AK, extraData,
/// pcrDigest over the returned values) and returns the quoted workload PCR.
fn check_quote(quote: &NodeQuote, qualifying: &[u8; 32]) -> Sha256Digest {
    let attest = Attest::parse(&quote.attest.0).unwrap();
    assert_eq!(attest.extra_data, qualifying);
    let mut expected_pcrs = DEFAULT_BOOT_PCRS.to_vec();
    expected_pcrs.push(WORKLOAD_PCR);
    assert_eq!(attest.sha256_pcrs().unwrap(), expected_pcrs.as_slice());
    let returned: Vec<u8> = quote.pcrs.iter().map(|p| p.pcr).collect();
    assert_eq!(returned, expected_pcrs);
    let mut digest = Sha256::new();
    for value in &quote.pcrs {
        digest.update(value.value.as_bytes());
    }
    assert_eq!(attest.pcr_digest, digest.finalize().to_vec());

    let ak = AkPublic::parse(&quote.ak_public.0).unwrap();
    assert!(ak.is_attestation_key());
    let signature = Signature::parse(&quote.signature.0).unwrap();
    assert!(signature.verifies(&ak.key, &quote.attest.0));

    quote
        .pcrs
        .iter()
        .find(|p| p.pcr == WORKLOAD_PCR)
        .unwrap()
        .value
}

#[tokio::test]
async fn recorded_events_are_quoted_and_the_log_continues_after_a_restart() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = MeasurerConfig::new(swtpm.tcti(), POLICY);
    config.state_dir = state.path().to_owned();

    let measurer = Measurer::start(&config).unwrap();
    assert_eq!(measurer.workload_pcr(), WORKLOAD_PCR);
    measurer.record(access(1)).await.unwrap();
    // Concurrent callers are recorded one at a time, each exactly once.
    let concurrent: Vec<_> = (2..6)
        .map(|n| {
            let measurer = measurer.clone();
            tokio::spawn(async move { measurer.record(access(n)).await })
        })
        .collect();
    for task in concurrent {
        task.await.unwrap().unwrap();
    }

    let qualifying = [0x5a; 32];
    let quote = measurer.quote(qualifying).await.unwrap();
    let workload = check_quote(&quote, &qualifying);
    assert_eq!(replay(&quote.node_log), workload);
    assert_ne!(workload, Sha256Digest([0; 32]));
    assert_eq!(quote.node_log.len(), 6);
    assert!(matches!(
        &quote.node_log[0].event,
        NodeEvent::AgentStart { agent_version, policy }
            if agent_version == env!("CARGO_PKG_VERSION") && policy == POLICY
    ));
    assert_eq!(quote.node_log[1].event, access(1));
    let mut recorded: Vec<_> = quote.node_log[2..]
        .iter()
        .map(|e| e.event.clone())
        .collect();
    recorded.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(recorded, (2..6).map(access).collect::<Vec<_>>());
    assert_eq!(measurer.entries().await.unwrap(), quote.node_log);

    // One agent per state directory.
    assert!(matches!(Measurer::start(&config), Err(StoreError::Busy(_))));

    // Restart: same TPM (PCRs not reset), same state directory.
    measurer.stop().await;
    assert!(matches!(
        measurer.record(access(9)).await,
        Err(StoreError::Stopped)
    ));
    let first_log = quote.node_log;
    let measurer = Measurer::start(&config).unwrap();
    measurer.record(access(7)).await.unwrap();
    let qualifying = [0xa5; 32];
    let quote = measurer.quote(qualifying).await.unwrap();
    let workload = check_quote(&quote, &qualifying);
    assert_eq!(replay(&quote.node_log), workload);
    assert_eq!(&quote.node_log[..first_log.len()], first_log.as_slice());
    let starts = quote
        .node_log
        .iter()
        .filter(|e| matches!(e.event, NodeEvent::AgentStart { .. }))
        .count();
    assert_eq!(starts, 2);
    assert_eq!(quote.node_log.len(), first_log.len() + 2);
    assert_eq!(quote.node_log.last().unwrap().event, access(7));
    measurer.stop().await;

    // The log is on disk where the state directory says.
    assert!(state.path().join(LOG_FILE).is_file());
}

#[tokio::test]
async fn an_extend_behind_the_agents_back_is_not_explained_by_the_log() {
    require_swtpm!();
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = MeasurerConfig::new(swtpm.tcti(), POLICY);
    config.state_dir = state.path().to_owned();
    let measurer = Measurer::start(&config).unwrap();

    // Another program extends the workload PCR while the agent runs: quotes
    // are still served, with the log as it is, which no longer replays to
    // the quoted PCR (the verifier refuses them: a tampered node fails
    // attestation rather than looking unavailable)…
    let mut other = aver_enclave::Tpm::open(&swtpm.tcti(), config.ak_handle).unwrap();
    other.extend(WORKLOAD_PCR, &[0x66; 32]).unwrap();
    let quote = measurer.quote([1; 32]).await.expect("still quotes");
    let quoted = check_quote(&quote, &[1; 32]);
    assert_ne!(replay(&quote.node_log), quoted, "the log explains the PCR");
    measurer.stop().await;

    // …and the agent refuses to start again until the TPM is reset.
    let error = Measurer::start(&config).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Foreign {
                pcr: WORKLOAD_PCR,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(&format!(
        "something outside aver-node extended PCR {WORKLOAD_PCR}"
    )));
}
