//! Credential activation over an attested connection (docs/architecture.md#platform-identity):
//! `GET` the enclave's [`ActivationOffer`], check its EK certificate chain
//! and wrap a secret to the certified EK in software, `POST` the credential
//! and compare what the TPM released. The pure steps are in
//! [`aver_verifier::ek::activation`]; this module only moves the documents, over
//! any [`Exchange`] (the attested connection implements it: activation
//! must happen on the TLS session whose key the evidence binds).

use aver_crds::AkName;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use crate::error::ClientError;
use crate::ACTIVATE_PATH;
use aver_verifier::ek::activation::{unix_now, MAX_ACTIVATION_BYTES, MAX_OFFER_BYTES};
use aver_verifier::ek::{
    ActivatedAk, ActivationCache, ActivationError, ActivationOffer, ActivationRequest,
    ActivationResponse, PendingActivation, TrustAnchors,
};
use aver_verifier::evidence::Evidence;
use aver_verifier::tpm::AkPublic;
use aver_verifier::ValidatedPolicy;

/// When an attestation proves the AK's residency by credential activation.
#[derive(Debug, Clone, Copy)]
pub enum ActivationMode<'a> {
    /// When the policy needs it: it has `trust.ekRoots` and `trust.akNames`
    /// does not list the AK. A proof in the cache for the same AK and roots
    /// is reused; a new one is added.
    IfNeeded(&'a ActivationCache),
    /// Always, afresh, even if the AK is listed or cached (`aver verify
    /// --activate`); the proof is added to the cache. Needs `trust.ekRoots`.
    Always(&'a ActivationCache),
}

/// A non-success answer from the activation endpoint.
enum Answer {
    Refused(String),
}

/// What activation needs of a connection: HTTP exchanges on it.
pub(super) trait Exchange {
    /// `host:port`, for `Host` and messages.
    fn authority(&self) -> String;
    /// Sends `request` as it is and returns the response head.
    async fn send_raw(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError>;
}

/// The proof of the evidence's AK that `mode` asks for, if any: none when
/// the policy lists the AK (or has no `trust.ekRoots`), a cached one, or
/// one made now on `connection`.
pub(super) async fn activation_for(
    connection: &mut impl Exchange,
    evidence: &Evidence,
    policy: &ValidatedPolicy,
    mode: ActivationMode<'_>,
) -> Result<Option<ActivatedAk>, ClientError> {
    let (cache, always) = match mode {
        ActivationMode::IfNeeded(cache) => (cache, false),
        ActivationMode::Always(cache) => (cache, true),
    };
    let Some(anchors) = policy.ek_roots() else {
        if always {
            return Err(aver_verifier::VerifyError::from(ActivationError::NoEkRoots).into());
        }
        return Ok(None);
    };
    if !always {
        // An unparsable AK is reported by verification, with context.
        let Ok(ak) = AkPublic::parse(&evidence.ak_public.0) else {
            return Ok(None);
        };
        let Ok(name) = AkName::parse(&ak.name_hex()) else {
            return Ok(None);
        };
        if policy.lists_ak(&name) {
            return Ok(None);
        }
        if let Some(proof) = cache.find(&name, &anchors.policy_sha256(), unix_now()) {
            return Ok(Some(proof));
        }
    }
    let activated = activate(connection, anchors.clone()).await?;
    tracing::debug!(
        endpoint = %connection.authority(),
        ak = %activated.ak_name(),
        ek = %activated.ek().certificate_sha256,
        "attestation key activated"
    );
    cache.insert(activated.clone());
    Ok(Some(activated))
}

/// Activates the enclave's AK against `anchors` (the policy's
/// `trust.ekRoots`, parsed).
pub(super) async fn activate(
    connection: &mut impl Exchange,
    anchors: TrustAnchors,
) -> Result<ActivatedAk, ClientError> {
    let offer = activation_offer(connection).await?;
    // Chain validation is CPU work on what the server sent: off the
    // async threads.
    let (request, pending) = tokio::task::spawn_blocking(move || {
        PendingActivation::prepare(&offer, &anchors, unix_now(), &mut rand::thread_rng())
    })
    .await
    .map_err(|e| ClientError::Request(format!("EK certificate validation stopped: {e}")))?
    .map_err(aver_verifier::VerifyError::from)?;
    let result = match submit_activation(connection, &request).await? {
        Ok(response) => pending.complete(&response),
        Err(Answer::Refused(message)) => Err(pending.refused(message)),
    };
    result.map_err(|e| aver_verifier::VerifyError::from(e).into())
}

/// `GET /.well-known/aver/activate`.
pub(super) async fn activation_offer(
    connection: &mut impl Exchange,
) -> Result<ActivationOffer, ClientError> {
    let body = activation_exchange(connection, Method::GET, Bytes::new(), MAX_OFFER_BYTES)
        .await?
        .map_err(|Answer::Refused(message)| ClientError::ActivationStatus {
            endpoint: connection.authority(),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        })?;
    ActivationOffer::from_json(&body).map_err(|e| aver_verifier::VerifyError::from(e).into())
}

/// `POST /.well-known/aver/activate`: the TPM's answer, or its refusal
/// (HTTP 422) as a message.
async fn submit_activation(
    connection: &mut impl Exchange,
    request: &ActivationRequest,
) -> Result<Result<ActivationResponse, Answer>, ClientError> {
    let json = serde_json::to_vec(request).map_err(|e| ClientError::Request(e.to_string()))?;
    match activation_exchange(
        connection,
        Method::POST,
        Bytes::from(json),
        MAX_ACTIVATION_BYTES,
    )
    .await?
    {
        Ok(body) => ActivationResponse::from_json(&body)
            .map(Ok)
            .map_err(|e| aver_verifier::VerifyError::from(e).into()),
        Err(refused) => Ok(Err(refused)),
    }
}

async fn activation_exchange(
    connection: &mut impl Exchange,
    method: Method,
    body: Bytes,
    limit: usize,
) -> Result<Result<Bytes, Answer>, ClientError> {
    let authority = connection.authority();
    let mut builder = Request::builder()
        .method(method)
        .uri(ACTIVATE_PATH)
        .header(header::HOST, &authority);
    if !body.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| ClientError::Request(e.to_string()))?;
    let response = connection.send_raw(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|_| ClientError::ActivationStatus {
            endpoint: authority.clone(),
            status,
            message: format!("answer larger than {limit} bytes or cut short"),
        })?
        .to_bytes();
    match status {
        StatusCode::OK => Ok(Ok(body)),
        StatusCode::UNPROCESSABLE_ENTITY => Ok(Err(Answer::Refused(error_message(&body)))),
        status => Err(ClientError::ActivationStatus {
            endpoint: authority,
            status,
            message: error_message(&body),
        }),
    }
}

/// The message of an enclave error body (`{"error":{"message":…}}`), or
/// the body itself, shortened.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}
