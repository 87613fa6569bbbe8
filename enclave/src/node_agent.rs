//! Node-agent mode (`serve --node-agent SOCKET`): the enclave has no TPM.
//!
//! `aver-node`, the node agent, measured every container of the pod before
//! it started and is the only user of the node's TPM
//! (`docs/node-measurement.md`). The enclave generates its TLS key, digests
//! the model directory, and registers both on the agent socket
//! (`POST /v1/tls-key`, recorded as the pod's `tls-key` event) before it
//! serves anything. Each batch of verifier challenges then becomes one
//! `POST /v1/quote` with the batch's Merkle root as qualifying data, and the
//! answer is wrapped into evidence v2 (the node log instead of the enclave's
//! own launch log).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aver_crds::Sha256Digest;
use aver_node::agent::protocol::{QuoteResponse, TlsKeyRequest};
use aver_node::agent::{AgentClient, ClientError};
use aver_node_log::{NodeEvent, NodeLogEntry};
use aver_verifier::evidence::{PcrValue, Quote};
use aver_verifier::measurement::{self, model_digest};
use tokio::time::Instant;

use crate::evidence::{QuotedLog, QuotedState};
use crate::tls_key::{TlsKey, TlsKeyError};
use crate::tpm::{parse_quote, pcr_digest};

/// First pause between attempts to reach an absent agent; doubled after
/// each attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often waiting for the agent is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Bound on the `/readyz` probe of the agent socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of node-agent mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgentConfig {
    /// The agent socket.
    pub socket: PathBuf,
    /// How long registration keeps retrying while the agent is unreachable,
    /// and the bound on each answer of the agent.
    pub timeout: Duration,
    /// Directory of the model files, digested and registered with the key.
    pub model_dir: PathBuf,
}

/// Why the enclave could not register with aver-node (each is fatal).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    TlsKey(#[from] TlsKeyError),
    #[error("cannot measure the model: {0}")]
    Model(#[source] measurement::MeasureError),
    /// The agent answered, and said no (e.g. not the enclave container of a
    /// confidential pod, or a key already registered for this container).
    #[error("aver-node refused to register the TLS key: {message}")]
    Refused {
        status: http::StatusCode,
        message: String,
    },
    #[error(
        "aver-node is not reachable at {socket} after {waited:?} ({attempts} attempts): {last}"
    )]
    Unreachable {
        socket: PathBuf,
        waited: Duration,
        attempts: u32,
        last: String,
    },
    #[error("cannot register the TLS key with aver-node at {socket}: {source}")]
    Agent {
        socket: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error("measuring the model stopped unexpectedly: {0}")]
    Join(String),
}

/// An enclave whose TLS key aver-node has recorded in the node log.
#[derive(Debug)]
pub struct RegisteredEnclave {
    tls_key: TlsKey,
    model: Sha256Digest,
    client: AgentClient,
}

impl RegisteredEnclave {
    /// Generates the TLS key, digests the model and registers both with the
    /// agent, retrying (with backoff, for up to `config.timeout`) only while
    /// the agent socket cannot be connected to: once the agent has answered,
    /// its answer is final.
    pub async fn register(config: &NodeAgentConfig) -> Result<Self, RegisterError> {
        let tls_key = TlsKey::generate()?;
        let model_dir = config.model_dir.clone();
        let model = tokio::task::spawn_blocking(move || model_digest(&model_dir))
            .await
            .map_err(|e| RegisterError::Join(e.to_string()))?
            .map_err(RegisterError::Model)?;
        tracing::info!(
            model = %model,
            tls_spki = %tls_key.spki_sha256(),
            socket = %config.socket.display(),
            "model measured; registering the TLS key with aver-node"
        );
        let request = TlsKeyRequest {
            spki_sha256: tls_key.spki_sha256(),
            model_digest: model,
        };
        register_with_retry(&config.socket, config.timeout, &request).await?;
        tracing::info!("aver-node recorded the TLS key");
        Ok(Self {
            tls_key,
            model,
            client: AgentClient::new(&config.socket).with_timeout(config.timeout),
        })
    }

    /// The in-memory TLS key the agent recorded.
    pub fn tls_key(&self) -> &TlsKey {
        &self.tls_key
    }

    /// The model digest registered with the key.
    pub fn model_digest(&self) -> Sha256Digest {
        self.model
    }

    /// What the batcher quotes through; the TLS key stays with the caller.
    pub fn quoter(&self) -> NodeAgentQuoter {
        NodeAgentQuoter {
            client: self.client.clone(),
            spki: self.tls_key.spki_sha256(),
        }
    }
}

async fn register_with_retry(
    socket: &Path,
    timeout: Duration,
    request: &TlsKeyRequest,
) -> Result<(), RegisterError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut last_logged: Option<Instant> = None;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let client = AgentClient::new(socket).with_timeout(remaining.max(PROBE_TIMEOUT));
        let error = match client.register_tls_key(request).await {
            Ok(()) => return Ok(()),
            Err(ClientError::Refused {
                status, message, ..
            }) => return Err(RegisterError::Refused { status, message }),
            // Not connected: the request was never sent, so trying again
            // cannot register the key twice.
            Err(e @ ClientError::Connect { .. }) => e,
            Err(source) => {
                return Err(RegisterError::Agent {
                    socket: socket.to_owned(),
                    source,
                })
            }
        };
        let now = Instant::now();
        if now + backoff > deadline {
            return Err(RegisterError::Unreachable {
                socket: socket.to_owned(),
                waited: now - start,
                attempts,
                last: error.to_string(),
            });
        }
        match last_logged {
            None => {
                tracing::warn!(%error, timeout = ?timeout, "aver-node not reachable yet; retrying");
                last_logged = Some(now);
            }
            Some(at) if now - at >= PROGRESS_EVERY => {
                tracing::info!(
                    %error,
                    attempts,
                    waited = ?(now - start),
                    "still waiting for aver-node"
                );
                last_logged = Some(now);
            }
            Some(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why aver-node's answer to a quote request is not usable as evidence.
#[derive(Debug, thiserror::Error)]
pub enum NodeQuoteError {
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("aver-node's quote does not match what was asked for: {0}")]
    Mismatch(String),
    #[error("aver-node's node log is malformed: {0}")]
    Log(String),
}

/// Quotes through aver-node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeAgentQuoter {
    client: AgentClient,
    spki: Sha256Digest,
}

impl NodeAgentQuoter {
    /// A quote bound to `qualifying`, checked for consistency before it is
    /// served: a broken answer is reported here, in one place, rather than
    /// by every verifier.
    pub async fn quote(&self, qualifying: [u8; 32]) -> Result<QuotedState, NodeQuoteError> {
        let response = self.client.quote(qualifying).await?;
        quoted_state(response, &qualifying, &self.spki)
    }

    /// Whether the agent socket accepts connections (for `/readyz`).
    pub async fn reachable(&self) -> Result<(), String> {
        let socket = self.client.socket();
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(socket)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "aver-node is not reachable at {}: {e}",
                socket.display()
            )),
            Err(_) => Err(format!(
                "aver-node at {} did not accept a connection within {PROBE_TIMEOUT:?}",
                socket.display()
            )),
        }
    }
}

/// Checks the agent's answer against the request and itself, and keeps
/// what evidence v2 carries.
fn quoted_state(
    response: QuoteResponse,
    qualifying: &[u8; 32],
    spki: &Sha256Digest,
) -> Result<QuotedState, NodeQuoteError> {
    let mismatch = |reason: String| NodeQuoteError::Mismatch(reason);
    let quoted = parse_quote(&response.attest.0).map_err(|e| mismatch(e.to_string()))?;
    if quoted.extra_data != qualifying {
        return Err(mismatch(
            "the quote's extraData is not the qualifying data sent".into(),
        ));
    }
    let listed: Vec<u8> = response.pcrs.iter().map(|p| p.pcr).collect();
    if listed != quoted.pcrs {
        return Err(mismatch(format!(
            "the answer lists PCRs {listed:?}, the quote covers {:?}",
            quoted.pcrs
        )));
    }
    let values: Vec<(u8, [u8; 32])> = response.pcrs.iter().map(|p| (p.pcr, p.value.0)).collect();
    if quoted.pcr_digest != pcr_digest(&values) {
        return Err(mismatch(
            "the PCR values are not the ones the quote signed".into(),
        ));
    }
    check_log(&response.node_log, &response.pcrs, spki)?;
    Ok(QuotedState {
        quote: Quote {
            attest: response.attest,
            signature: response.signature,
        },
        pcrs: response.pcrs,
        ak_public: response.ak_public,
        log: QuotedLog::Node(response.node_log),
        boot_log: response.boot_log,
        ima_log: response.ima_log,
        ak_certificate: response.ak_certificate,
        ak_chain: response.ak_chain,
    })
}

/// The log must name one quoted PCR and hold this enclave's `tls-key`
/// event; otherwise the agent is broken, and saying so here names it. A log
/// that does not replay to the PCR is passed on (with an error logged): that
/// is a node tampered with, for the verifier to refuse.
fn check_log(
    log: &[NodeLogEntry],
    pcrs: &[PcrValue],
    spki: &Sha256Digest,
) -> Result<(), NodeQuoteError> {
    let bad = |reason: String| NodeQuoteError::Log(reason);
    let Some(first) = log.first() else {
        return Err(bad("it is empty".into()));
    };
    let pcr = first.pcr;
    if let Some(other) = log.iter().find(|e| e.pcr != pcr) {
        return Err(bad(format!("it names PCR {} and PCR {}", pcr, other.pcr)));
    }
    let Some(quoted) = pcrs.iter().find(|p| p.pcr == pcr) else {
        return Err(bad(format!("its PCR {pcr} is not quoted")));
    };
    let replayed = aver_node_log::replay(log);
    if replayed != quoted.value {
        // Something besides the node agent extended the PCR: the node is
        // not what its log says. Served anyway, so that verifiers see a
        // failed attestation (and replace this pod), not an unavailable one.
        tracing::error!(
            pcr,
            quoted = %quoted.value,
            %replayed,
            "the node log does not replay to the quoted PCR: verifiers will refuse this evidence"
        );
    }
    let registered = log
        .iter()
        .any(|e| matches!(&e.event, NodeEvent::TlsKey { spki_sha256, .. } if spki_sha256 == spki));
    if !registered {
        return Err(bad(format!(
            "it has no tls-key event for this enclave's key {spki}"
        )));
    }
    Ok(())
}
