//! The TPM's endorsement key (EK): its certificates, read from the TCG NV
//! indices, and TPM2_ActivateCredential, which lets a verifier prove that
//! the AK is resident in the TPM those certificates vouch for (docs/architecture.md#platform-identity,
//! protocol in `aver_verifier::ek::activation`).
//!
//! The EKs are the TCG default (low-range) templates, RSA 2048 and ECC NIST
//! P-256, re-created from the endorsement seed with TPM2_CreatePrimary, so
//! their public keys are the ones the manufacturer certified (the
//! high-range P-384 EK that swtpm_setup also provisions is not used). Their
//! authPolicy is PolicySecret(TPM_RH_ENDORSEMENT), which is satisfied with
//! a policy session and the (empty) endorsement authorization.

use aver_verifier::ek::{ActivationOffer, ActivationRequest, EkKind, ACTIVATION_VERSION};
use aver_verifier::evidence::Base64Bytes;
use tss_esapi::abstraction::{ek, nv, AsymmetricAlgorithmSelection};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{CapabilityData, EncryptedSecret, IdObject, SymmetricDefinition};
use tss_esapi::utils::TpmsContext;
use tss_esapi::Context;

use crate::tpm::{describe, Tpm, TpmError};

/// Why a credential was not activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The request's `version` is not [`ACTIVATION_VERSION`].
    #[error("activation request version {0} is not supported (this enclave understands version {ACTIVATION_VERSION})")]
    UnsupportedVersion(u32),
    /// The named request field (credentialBlob or encryptedSecret) is longer
    /// than its TPM2B buffer allows; the request never reaches the TPM.
    #[error("{0} does not fit the TPM structure it is passed in")]
    TooLarge(&'static str),
    /// The TPM itself refused: wrong EK, an AK name other than the loaded
    /// AK's, or a tampered blob all end here (TPM_RC_INTEGRITY and kin).
    #[error("the TPM refused TPM2_ActivateCredential: {0}")]
    Refused(String),
    /// A TPM failure that says nothing about the AK: loading the EK, the
    /// policy session, or an ActivateCredential error other than a refusal.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The thread that owns the TPM has exited, so nothing will answer the
    /// request (returned by the enclave's TPM backend, not by [`activate`]).
    #[error("the TPM worker has stopped")]
    WorkerStopped,
}

/// The EK certificates in the TPM's NV, RSA first. An index that is not
/// defined is skipped; a defined index that cannot be read is an error.
pub fn read_certificates(tpm: &mut Tpm) -> Result<Vec<(EkKind, Vec<u8>)>, TpmError> {
    let (context, _) = tpm.context_and_ak();
    let defined = defined_nv_indices(context)?;
    let mut certificates = Vec::new();
    for kind in [EkKind::Rsa2048, EkKind::EccP256] {
        let index = kind.certificate_nv_index();
        if !defined.contains(&index) {
            continue;
        }
        let der = read_index(context, index)?;
        certificates.push((kind, trim_nv_padding(der)));
    }
    Ok(certificates)
}

/// The whole contents of NV index `index` (with the index's own, empty,
/// authorization), such as a cloud vTPM's AK certificate (GCE
/// `0x01c10000`/`0x01c10002`, Azure `0x01c101d0`). An index that is not
/// defined is an error naming it.
pub fn read_nv(tpm: &mut Tpm, index: u32) -> Result<Vec<u8>, TpmError> {
    let (context, _) = tpm.context_and_ak();
    if !defined_nv_indices_from(context, index, 1)?.contains(&index) {
        return Err(TpmError::UnexpectedResponse {
            command: "NV_Read",
            reason: format!("NV index 0x{index:08x} is not defined"),
        });
    }
    read_index(context, index)
}

fn read_index(context: &mut Context, index: u32) -> Result<Vec<u8>, TpmError> {
    let handle = NvIndexTpmHandle::new(index).map_err(nv_error(index))?;
    let auth = context
        .execute_without_session(|ctx| {
            ctx.tr_from_tpm_public(TpmHandle::NvIndex(handle))
                .map(|object| NvAuth::NvIndex(object.into()))
        })
        .map_err(nv_error(index))?;
    context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            nv::read_full(ctx, auth, handle)
        })
        .map_err(nv_error(index))
}

/// The certificate without the padding vendors leave after it in a larger
/// NV index (0xFF or 0x00 up to the index's size): the DER length of the
/// outer SEQUENCE says where it ends. Contents that are not a certificate
/// followed by padding are passed on whole, for the verifier to report.
pub fn trim_nv_padding(mut contents: Vec<u8>) -> Vec<u8> {
    if let Ok(certificate) = aver_verifier::ek::chain::strip_nv_padding(&contents) {
        let length = certificate.len();
        contents.truncate(length);
    }
    contents
}

fn nv_error(index: u32) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::UnexpectedResponse {
        command: "NV_Read",
        reason: format!("cannot read NV index 0x{index:08x}: {}", describe(&source)),
    }
}

/// NV indices defined in the EK certificate range 0x01c00000..
fn defined_nv_indices(context: &mut Context) -> Result<Vec<u32>, TpmError> {
    defined_nv_indices_from(context, 0x01c0_0000, 64)
}

/// Up to `count` NV indices defined from `start` on.
fn defined_nv_indices_from(
    context: &mut Context,
    start: u32,
    count: u32,
) -> Result<Vec<u32>, TpmError> {
    let (capability, _) = context
        .get_capability(CapabilityType::Handles, start, count)
        .map_err(|source| TpmError::Command {
            command: "GetCapability",
            source,
        })?;
    match capability {
        CapabilityData::Handles(list) => Ok(list
            .into_inner()
            .into_iter()
            .filter_map(|h| match h {
                TpmHandle::NvIndex(index) => Some(u32::from(index)),
                _ => None,
            })
            .collect()),
        _ => Err(TpmError::UnexpectedResponse {
            command: "GetCapability",
            reason: "asked for handles, got another capability".into(),
        }),
    }
}

/// The offer a verifier activates against: the AK public area and the EK
/// certificates (with optional intermediates from configuration).
pub fn offer(
    ak_public: Vec<u8>,
    certificates: Vec<(EkKind, Vec<u8>)>,
    chain: Vec<Vec<u8>>,
) -> ActivationOffer {
    ActivationOffer {
        version: ACTIVATION_VERSION,
        ak_public: Base64Bytes(ak_public),
        endorsement_keys: certificates
            .into_iter()
            .map(|(kind, der)| aver_verifier::ek::EndorsementCertificate {
                kind,
                certificate: Base64Bytes(der),
            })
            .collect(),
        ek_chain: chain.into_iter().map(Base64Bytes).collect(),
    }
}

/// Runs TPM2_ActivateCredential with the AK as the object and the EK of
/// `request.kind` as the decryption key; returns the released secret.
///
/// The EK is derived once per [`Tpm`] (TPM2_CreatePrimary, seconds for RSA
/// on a hardware TPM) and its context saved; each activation loads the
/// saved context and flushes the object after it. Without a resource
/// manager (swtpm, /dev/tpm0) a transient object outlives the connection,
/// so an EK left loaded by every enclave start would soon fill the TPM's
/// few object slots; a saved context takes no slot. A context that no
/// longer loads (the TPM was restarted) is replaced by a fresh primary.
pub fn activate(tpm: &mut Tpm, request: &ActivationRequest) -> Result<Vec<u8>, ActivateError> {
    if request.version != ACTIVATION_VERSION {
        return Err(ActivateError::UnsupportedVersion(request.version));
    }
    let blob = IdObject::try_from(request.credential_blob.0.clone())
        .map_err(|_| ActivateError::TooLarge("credentialBlob"))?;
    let secret = EncryptedSecret::try_from(request.encrypted_secret.0.clone())
        .map_err(|_| ActivateError::TooLarge("encryptedSecret"))?;
    let selection = match request.kind {
        EkKind::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    };
    let (context, ak, saved) = tpm.context_ak_and_saved_eks();
    let ek = load_or_create_ek(context, saved, request.kind, selection)?;
    let result = activate_with(context, ak, ek, blob, secret);
    let flushed = context.flush_context(ObjectHandle::from(ek));
    let released = result?;
    flushed.map_err(|source| TpmError::Command {
        command: "FlushContext",
        source,
    })?;
    Ok(released)
}

/// The EK of `kind`, loaded from its saved context, or created (and its
/// context saved) if there is none or it no longer loads.
fn load_or_create_ek(
    context: &mut Context,
    saved: &mut Vec<(EkKind, TpmsContext)>,
    kind: EkKind,
    selection: AsymmetricAlgorithmSelection,
) -> Result<KeyHandle, TpmError> {
    if let Some(index) = saved.iter().position(|(k, _)| *k == kind) {
        match context.context_load(saved[index].1.clone()) {
            Ok(handle) => return Ok(KeyHandle::from(handle)),
            Err(error) => {
                tracing::info!(ek = %kind, error = %describe(&error), "saved EK context does not load; deriving the EK again");
                saved.remove(index);
            }
        }
    }
    let ek =
        ek::create_ek_object_2(context, selection, None).map_err(|source| TpmError::Command {
            command: "CreatePrimary",
            source,
        })?;
    match context.context_save(ObjectHandle::from(ek)) {
        Ok(saved_context) => saved.push((kind, saved_context)),
        // Still usable for this activation; the next one derives it again.
        Err(error) => {
            tracing::warn!(ek = %kind, error = %describe(&error), "cannot save the EK context")
        }
    }
    Ok(ek)
}

fn activate_with(
    context: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    blob: IdObject,
    secret: EncryptedSecret,
) -> Result<Vec<u8>, ActivateError> {
    let session = endorsement_policy_session(context)?;
    context.set_sessions((Some(AuthSession::Password), Some(session), None));
    let result = context.activate_credential(ak, ek, blob, secret);
    context.clear_sessions();
    // ESYS starts sessions with continueSession set, so the session outlives
    // the command either way; a TPM has room for only a few.
    let _ = context.flush_context(ObjectHandle::from(SessionHandle::from(session)));
    let released = result.map_err(classify)?;
    Ok(released.value().to_vec())
}

/// A refusal is the TPM rejecting the credential itself: the seed does not
/// decrypt with this EK (TPM_RC_VALUE, TPM_RC_ECC_POINT, TPM_RC_SIZE,
/// TPM_RC_KEY_SIZE; libtpms answers an RSA-OAEP decoding failure with
/// TPM_RC_FAILURE) or the integrity HMAC does not match the loaded AK's
/// name (TPM_RC_INTEGRITY). Anything else (out of memory, retry, a lost
/// connection) says nothing about the AK and is a TPM failure.
fn classify(error: tss_esapi::Error) -> ActivateError {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind as Kind;
    let refused = matches!(
        error,
        tss_esapi::Error::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(
                Kind::Integrity
                    | Kind::Value
                    | Kind::EccPoint
                    | Kind::Size
                    | Kind::KeySize
                    | Kind::Failure
            )
        )
    );
    if refused {
        ActivateError::Refused(describe(&error))
    } else {
        ActivateError::Tpm(TpmError::Command {
            command: "ActivateCredential",
            source: error,
        })
    }
}

/// A policy session satisfying the default EK authPolicy,
/// PolicySecret(TPM_RH_ENDORSEMENT), authorized with the endorsement
/// hierarchy's (empty) password.
fn endorsement_policy_session(context: &mut Context) -> Result<AuthSession, TpmError> {
    let fail = |command: &'static str| move |source| TpmError::Command { command, source };
    let session = context
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(fail("StartAuthSession"))?
        .ok_or_else(|| TpmError::UnexpectedResponse {
            command: "StartAuthSession",
            reason: "no session handle returned".into(),
        })?;
    let satisfied = PolicySession::try_from(session)
        .map_err(fail("StartAuthSession"))
        .and_then(|policy| {
            context
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(fail("PolicySecret"))
        });
    if let Err(error) = satisfied {
        let _ = context.flush_context(ObjectHandle::from(SessionHandle::from(session)));
        return Err(error);
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::trim_nv_padding;

    /// A DER SEQUENCE of 200 content bytes (long-form length).
    fn certificate() -> Vec<u8> {
        let mut der = vec![0x30, 0x81, 200];
        der.extend((0..200).map(|i| i as u8));
        der
    }

    #[test]
    fn nv_padding_after_the_certificate_is_trimmed() {
        for pad in [0xff, 0x00] {
            let mut nv = certificate();
            nv.resize(1024, pad);
            assert_eq!(trim_nv_padding(nv), certificate());
        }
        assert_eq!(trim_nv_padding(certificate()), certificate());
    }

    #[test]
    fn other_contents_are_passed_on_whole() {
        let mut garbage = certificate();
        garbage.extend([0xff, 0x01]);
        assert_eq!(trim_nv_padding(garbage.clone()), garbage);
        let short = certificate()[..100].to_vec();
        assert_eq!(trim_nv_padding(short.clone()), short);
    }
}
