//! The only door to the TPM: the attestation key, PCR reads and
//! extends, and quotes, through `tss-esapi`.
//!
//! Everything leaves this module in TPM wire format (marshalled
//! `TPMT_PUBLIC`, `TPMS_ATTEST`, `TPMT_SIGNATURE`), because those bytes are
//! what the TPM signed and what the verifier parses; no re-encoding happens
//! between the TPM and the evidence document.
//!
//! The attestation key (AK) is an ECC NIST P-256 restricted signing key in
//! the endorsement hierarchy, persisted at a fixed handle so that every start
//! of the enclave (and every verifier's policy) sees the same key. Being a
//! primary key, it is derived from the endorsement seed and the template, so
//! even if the persistent copy is lost the same key comes back.

use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{
    EccSchemeAlgorithm, HashingAlgorithm, PublicAlgorithm,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    AttestInfo, CapabilityData, Data, Digest, DigestValues, EccPoint, EccScheme,
    KeyDerivationFunctionScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Public,
    PublicBuilder, PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

/// Persistent handle of the AK unless configured otherwise. It lies in the
/// range the TCG reserves for endorsement-hierarchy keys, clear of the
/// low handles the EK credential profile assigns to EKs (0x81010001 RSA,
/// 0x81010002 ECC P-256, …); a key found there that does not match the AK
/// template is refused, never used.
pub const DEFAULT_AK_HANDLE: u32 = 0x8101_0100;

/// A persistent handle (0x81000000 to 0x81ffffff) given in hex (`0x…`) or
/// decimal, as the binaries' `--ak-handle` flags take it; the error is the
/// message clap shows.
pub fn parse_persistent_handle(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse::<u32>(),
    };
    let handle = parsed
        .map_err(|_| format!("{text:?} is not a TPM handle (e.g. 0x{DEFAULT_AK_HANDLE:08x})"))?;
    if handle >> 24 != 0x81 {
        return Err(format!(
            "0x{handle:08x} is not a persistent handle (0x81000000 to 0x81ffffff)"
        ));
    }
    Ok(handle)
}

/// Number of PCRs of a PC-client TPM (0..=23), the only kind aver supports.
pub const PCR_COUNT: u8 = 24;

/// TPM2_PCR_Read returns at most this many values per call (the size of a
/// TPML_DIGEST), so reads of more PCRs are split.
const PCRS_PER_READ: usize = 8;

/// `TPM_ALG_SHA256`, the name algorithm of the AK, as it prefixes a TPM name.
const NAME_ALG_SHA256: [u8; 2] = [0x00, 0x0b];

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string given to [`Tpm::open`] does not parse as a TCTI name
    /// and configuration.
    #[error("invalid TCTI {tcti:?}: expected e.g. \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\"")]
    BadTcti {
        /// The TCTI string as given.
        tcti: String,
        /// Why tss-esapi rejected it.
        source: tss_esapi::Error,
    },
    /// The TCTI parsed but no TPM answered through it.
    #[error("cannot reach the TPM through {tcti:?}: is the device present, or swtpm running and listening on that port and the next one (its control port)? ({})", describe(source))]
    Unreachable {
        /// The TCTI string as given.
        tcti: String,
        /// The connection failure tss-esapi reported.
        source: tss_esapi::Error,
    },
    /// The configured AK handle is outside the persistent range.
    #[error("AK handle 0x{0:08x} is not a persistent handle (0x81000000..=0x81ffffff)")]
    BadAkHandle(u32),
    /// Something other than aver's AK template already occupies the AK
    /// handle; it is refused, never used or evicted.
    #[error("persistent handle 0x{handle:08x} holds a key that is not an aver attestation key ({reason}); choose another --ak-handle or evict it")]
    UnexpectedAk {
        /// The persistent handle that was asked for.
        handle: u32,
        /// How its public area differs from the AK template.
        reason: String,
    },
    /// A PCR index of [`PCR_COUNT`] or more was asked for.
    #[error("PCR {0} does not exist: PCRs are numbered 0 to 23")]
    BadPcr(u8),
    /// The TPM (or tss-esapi) returned an error for a command.
    #[error("TPM2_{command} failed: {}", describe(source))]
    Command {
        /// The command without its `TPM2_` prefix, e.g. "Quote".
        command: &'static str,
        /// The response code or library error.
        source: tss_esapi::Error,
    },
    /// A command succeeded but its response is not what the request
    /// implies (wrong structure, name or selection), so it is not trusted.
    #[error("the TPM answered TPM2_{command} unexpectedly: {reason}")]
    UnexpectedResponse {
        /// The command without its `TPM2_` prefix, e.g. "ReadPublic".
        command: &'static str,
        /// What was wrong with the response.
        reason: String,
    },
}

/// A tss-esapi error as one line: its chain of causes, each said once
/// (tss-esapi repeats the same text at several levels of the chain).
pub fn describe(error: &tss_esapi::Error) -> String {
    let mut line = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

fn command(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { command, source }
}

/// An open TPM with the AK loaded.
///
/// Every command takes `&mut self`: a TPM executes one command at a time,
/// so a server shares it behind a mutex (it is `Send`, see the tests).
pub struct Tpm {
    context: Context,
    ak: KeyHandle,
    ak_public_tpmt: Vec<u8>,
    ak_name: Vec<u8>,
    ak_handle: u32,
    /// Saved contexts of the EKs created so far (one per kind), so that a
    /// credential activation costs a ContextLoad instead of re-deriving the
    /// primary (seconds for RSA on a hardware TPM).
    saved_eks: Vec<(aver_verifier::ek::EkKind, tss_esapi::utils::TpmsContext)>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("ak_handle", &format_args!("0x{:08x}", self.ak_handle))
            .field("ak_name", &hex::encode(&self.ak_name))
            .finish_non_exhaustive()
    }
}

impl Tpm {
    /// Connects through `tcti` and loads the AK from `ak_handle`, creating
    /// and persisting it there first if the handle is empty.
    pub fn open(tcti: &str, ak_handle: u32) -> Result<Self, TpmError> {
        let persistent =
            PersistentTpmHandle::new(ak_handle).map_err(|_| TpmError::BadAkHandle(ak_handle))?;
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::BadTcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let mut context = Context::new(conf).map_err(|source| TpmError::Unreachable {
            tcti: tcti.to_owned(),
            source,
        })?;

        let template = ak_template()?;
        let ak = match load_persistent(&mut context, persistent, ak_handle)? {
            Some(handle) => handle,
            None => create_and_persist(&mut context, template.clone(), persistent, ak_handle)?,
        };
        let (public, name, _) = context.read_public(ak).map_err(command("ReadPublic"))?;
        check_matches_template(&public, &template).map_err(|reason| TpmError::UnexpectedAk {
            handle: ak_handle,
            reason,
        })?;
        let ak_public_tpmt = public.marshall().map_err(command("ReadPublic"))?;
        let computed = name_of_public(&ak_public_tpmt);
        if name.value() != computed.as_slice() {
            return Err(TpmError::UnexpectedResponse {
                command: "ReadPublic",
                reason: "the TPM's name of the AK is not the SHA-256 of its public area".into(),
            });
        }
        tracing::debug!(ak_handle = format_args!("0x{ak_handle:08x}"), ak_name = %hex::encode(&computed), "attestation key ready");
        Ok(Self {
            context,
            ak,
            ak_public_tpmt,
            ak_name: computed,
            ak_handle,
            saved_eks: Vec::new(),
        })
    }

    /// The AK's public area as a marshalled `TPMT_PUBLIC`, as it goes into
    /// evidence (`akPublic`) and into the AK name.
    pub fn ak_public_tpmt(&self) -> Vec<u8> {
        self.ak_public_tpmt.clone()
    }

    /// The AK's TPM name: `0x000b || SHA-256(TPMT_PUBLIC)`, the identifier a
    /// policy pins and the TPM puts into every quote as the signer.
    pub fn ak_name(&self) -> &[u8] {
        &self.ak_name
    }

    /// The TSS context and the AK's handle, for commands implemented in
    /// other modules (credential activation in [`crate::endorsement`]).
    pub(crate) fn context_and_ak(&mut self) -> (&mut Context, KeyHandle) {
        (&mut self.context, self.ak)
    }

    /// The TSS context, the AK and the saved EK contexts, for
    /// [`crate::endorsement`].
    pub(crate) fn context_ak_and_saved_eks(
        &mut self,
    ) -> (
        &mut Context,
        KeyHandle,
        &mut Vec<(aver_verifier::ek::EkKind, tss_esapi::utils::TpmsContext)>,
    ) {
        (&mut self.context, self.ak, &mut self.saved_eks)
    }

    /// Reads PCRs of the SHA-256 bank, returned in ascending PCR order
    /// without duplicates whatever the order of `pcrs`.
    pub fn read_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<(u8, [u8; 32])>, TpmError> {
        let wanted = normalise(pcrs)?;
        let mut out = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(PCRS_PER_READ) {
            let mut remaining = chunk.to_vec();
            while !remaining.is_empty() {
                let selection = sha256_selection(&remaining)?;
                let (_, read, digests) = self
                    .context
                    .execute_without_session(|ctx| ctx.pcr_read(selection))
                    .map_err(command("PCR_Read"))?;
                let slots: Vec<u8> = read
                    .get_selections()
                    .iter()
                    .filter(|s| s.hashing_algorithm() == HashingAlgorithm::Sha256)
                    .flat_map(|s| s.selected())
                    .map(slot_index)
                    .collect();
                if slots.is_empty() || slots.len() != digests.len() {
                    return Err(TpmError::UnexpectedResponse {
                        command: "PCR_Read",
                        reason: format!(
                            "{} PCRs selected but {} values returned (is the SHA-256 bank allocated?)",
                            slots.len(),
                            digests.len()
                        ),
                    });
                }
                for (pcr, digest) in slots.into_iter().zip(digests.value()) {
                    if !remaining.contains(&pcr) {
                        return Err(TpmError::UnexpectedResponse {
                            command: "PCR_Read",
                            reason: format!("returned PCR {pcr}, which was not asked for"),
                        });
                    }
                    let value: [u8; 32] =
                        digest
                            .value()
                            .try_into()
                            .map_err(|_| TpmError::UnexpectedResponse {
                                command: "PCR_Read",
                                reason: format!(
                                    "PCR {pcr} value is {} bytes, not 32",
                                    digest.value().len()
                                ),
                            })?;
                    out.push((pcr, value));
                    remaining.retain(|&p| p != pcr);
                }
            }
        }
        out.sort_by_key(|&(pcr, _)| pcr);
        Ok(out)
    }

    /// Extends one PCR of the SHA-256 bank with `digest`.
    pub fn extend(&mut self, pcr: u8, digest: &[u8; 32]) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(command("PCR_Extend"))?,
        );
        self.context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(command("PCR_Extend"))
    }

    /// Quotes the SHA-256 values of `pcrs` with the AK's own scheme
    /// (ECDSA-SHA256), carrying `qualifying_data` as `extraData`, and
    /// returns the marshalled `TPMS_ATTEST` and `TPMT_SIGNATURE`.
    pub fn quote(
        &mut self,
        pcrs: &[u8],
        qualifying_data: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let selection = sha256_selection(&normalise(pcrs)?)?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(command("Quote"))?;
        let ak = self.ak;
        let (attest, signature) = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                // A restricted key signs only with its own scheme; Null
                // selects it.
                ctx.quote(ak, data, SignatureScheme::Null, selection)
            })
            .map_err(command("Quote"))?;
        if !matches!(attest.attested(), AttestInfo::Quote { .. }) {
            return Err(TpmError::UnexpectedResponse {
                command: "Quote",
                reason: "the attestation structure is not a quote".into(),
            });
        }
        let attest = attest.marshall().map_err(command("Quote"))?;
        let signature = signature.marshall().map_err(command("Quote"))?;
        Ok((attest, signature))
    }
}

/// The TPM name of an object with a SHA-256 name algorithm:
/// `0x000b || SHA-256(marshalled TPMT_PUBLIC)`.
pub fn name_of_public(tpmt_public: &[u8]) -> Vec<u8> {
    let mut name = NAME_ALG_SHA256.to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt_public));
    name
}

/// The pcrDigest a quote of `values` carries: SHA-256 over the values
/// concatenated in ascending PCR order (the order TPM2_Quote hashes them).
pub fn pcr_digest(values: &[(u8, [u8; 32])]) -> [u8; 32] {
    let mut sorted: Vec<&(u8, [u8; 32])> = values.iter().collect();
    sorted.sort_by_key(|(pcr, _)| *pcr);
    let mut h = Sha256::new();
    for (_, value) in sorted {
        h.update(value);
    }
    h.finalize().into()
}

/// What a marshalled quote says about itself, as far as the enclave needs
/// to check it before serving: the signed extraData, the SHA-256 PCRs it
/// covers and their digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotedPcrs {
    /// The qualifying data the quote signed.
    pub extra_data: Vec<u8>,
    /// The SHA-256 PCRs covered, ascending.
    pub pcrs: Vec<u8>,
    /// SHA-256 over the covered PCR values in ascending order.
    pub pcr_digest: Vec<u8>,
}

/// Reads back a marshalled `TPMS_ATTEST` produced by [`Tpm::quote`] (with
/// tss-esapi's unmarshaller, i.e. independently of the verifier's parser).
pub fn parse_quote(attest: &[u8]) -> Result<QuotedPcrs, TpmError> {
    let bad = |reason: String| TpmError::UnexpectedResponse {
        command: "Quote",
        reason,
    };
    let attest = tss_esapi::structures::Attest::unmarshall(attest)
        .map_err(|e| bad(format!("TPMS_ATTEST does not unmarshal: {e}")))?;
    let AttestInfo::Quote { info } = attest.attested() else {
        return Err(bad("the attestation structure is not a quote".into()));
    };
    let mut pcrs = Vec::new();
    for selection in info.pcr_selection().get_selections() {
        if selection.hashing_algorithm() != HashingAlgorithm::Sha256 {
            return Err(bad(format!(
                "quote covers the {:?} bank, only SHA-256 is expected",
                selection.hashing_algorithm()
            )));
        }
        pcrs.extend(selection.selected().into_iter().map(slot_index));
    }
    pcrs.sort_unstable();
    Ok(QuotedPcrs {
        extra_data: attest.extra_data().value().to_vec(),
        pcrs,
        pcr_digest: info.pcr_digest().value().to_vec(),
    })
}

/// The AK template: ECC NIST P-256, ECDSA-SHA256, name algorithm SHA-256,
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted
/// | sign, empty auth and policy. Restricted means the TPM only signs
/// digests it computed itself (quotes, certifications), so nobody can make
/// the AK sign a forged TPMS_ATTEST.
fn ak_template() -> Result<Public, TpmError> {
    let build = |e| TpmError::Command {
        command: "CreatePrimary",
        source: e,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()
        .map_err(build)?;
    let parameters = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(
            EccScheme::create(
                EccSchemeAlgorithm::EcDsa,
                Some(HashingAlgorithm::Sha256),
                None,
            )
            .map_err(build)?,
        )
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()
        .map_err(build)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(build)
}

/// Everything but the public point must equal the template: a key with
/// other attributes (say, not fixedTPM or not restricted) must not sign
/// evidence, even if it sits at our handle.
fn check_matches_template(found: &Public, template: &Public) -> Result<(), String> {
    match (found, template) {
        (
            Public::Ecc {
                object_attributes,
                name_hashing_algorithm,
                auth_policy,
                parameters,
                ..
            },
            Public::Ecc {
                object_attributes: want_attributes,
                name_hashing_algorithm: want_name_alg,
                auth_policy: want_policy,
                parameters: want_parameters,
                ..
            },
        ) => {
            if object_attributes != want_attributes {
                return Err(format!(
                    "object attributes 0x{:08x}, expected 0x{:08x}",
                    u32::from(*object_attributes),
                    u32::from(*want_attributes)
                ));
            }
            if name_hashing_algorithm != want_name_alg {
                return Err(format!(
                    "name algorithm {name_hashing_algorithm:?}, expected SHA-256"
                ));
            }
            if auth_policy != want_policy {
                return Err("it has an authorization policy".into());
            }
            if parameters != want_parameters {
                return Err(format!(
                    "ECC parameters {parameters:?}, expected NIST P-256 with ECDSA-SHA256"
                ));
            }
            Ok(())
        }
        (other, _) => Err(format!("{:?} key, expected ECC", other_algorithm(other))),
    }
}

fn other_algorithm(public: &Public) -> &'static str {
    match public {
        Public::Rsa { .. } => "RSA",
        Public::KeyedHash { .. } => "keyed-hash",
        Public::Ecc { .. } => "ECC",
        Public::SymCipher { .. } => "symmetric",
    }
}

/// Loads the object at `persistent` if the TPM has one there.
fn load_persistent(
    context: &mut Context,
    persistent: PersistentTpmHandle,
    raw: u32,
) -> Result<Option<KeyHandle>, TpmError> {
    let (capability, _) = context
        .get_capability(CapabilityType::Handles, raw, 1)
        .map_err(command("GetCapability"))?;
    let present = match capability {
        CapabilityData::Handles(list) => list
            .into_inner()
            .into_iter()
            .any(|h| h == TpmHandle::Persistent(persistent)),
        _ => {
            return Err(TpmError::UnexpectedResponse {
                command: "GetCapability",
                reason: "asked for handles, got another capability".into(),
            })
        }
    };
    if !present {
        return Ok(None);
    }
    let object = context
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent)))
        .map_err(command("ReadPublic"))?;
    Ok(Some(KeyHandle::from(object)))
}

/// Creates the AK as an endorsement-hierarchy primary and makes it
/// persistent. If another process persisted it first (EvictControl fails
/// because the handle is now taken) that copy is loaded instead.
fn create_and_persist(
    context: &mut Context,
    template: Public,
    persistent: PersistentTpmHandle,
    raw: u32,
) -> Result<KeyHandle, TpmError> {
    tracing::info!(
        ak_handle = format_args!("0x{raw:08x}"),
        "creating the attestation key"
    );
    let transient = context
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .map_err(command("CreatePrimary"))?
        .key_handle;
    let evicted = context.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.evict_control(
            Provision::Owner,
            ObjectHandle::from(transient),
            Persistent::Persistent(persistent),
        )
    });
    // The transient copy has served its purpose either way; without a
    // resource manager (swtpm, /dev/tpm0) it would otherwise hold one of
    // the TPM's few object slots.
    let flushed = context
        .flush_context(ObjectHandle::from(transient))
        .map_err(command("FlushContext"));
    match evicted {
        Ok(object) => {
            flushed?;
            Ok(KeyHandle::from(object))
        }
        Err(source) => {
            flushed?;
            load_persistent(context, persistent, raw)?.ok_or(TpmError::Command {
                command: "EvictControl",
                source,
            })
        }
    }
}

/// Sorts, de-duplicates and range-checks a PCR list.
fn normalise(pcrs: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut sorted = pcrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if let Some(&bad) = sorted.iter().find(|&&p| p >= PCR_COUNT) {
        return Err(TpmError::BadPcr(bad));
    }
    Ok(sorted)
}

fn pcr_slot(pcr: u8) -> Result<PcrSlot, TpmError> {
    if pcr >= PCR_COUNT {
        return Err(TpmError::BadPcr(pcr));
    }
    PcrSlot::try_from(1u32 << pcr).map_err(|_| TpmError::BadPcr(pcr))
}

fn slot_index(slot: PcrSlot) -> u8 {
    // A PcrSlot is a single bit; its position is the PCR number (< 32).
    u32::from(slot).trailing_zeros() as u8
}

fn pcr_handle(pcr: u8) -> Result<PcrHandle, TpmError> {
    if pcr >= PCR_COUNT {
        return Err(TpmError::BadPcr(pcr));
    }
    // ESYS_TR_PCR0..ESYS_TR_PCR31 are the numbers 0..31.
    PcrHandle::try_from(u32::from(pcr)).map_err(|_| TpmError::BadPcr(pcr))
}

fn sha256_selection(pcrs: &[u8]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&p| pcr_slot(p))
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(command("PCR_Read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_a_restricted_p256_signing_key() {
        let template = ak_template().unwrap();
        let attrs = template.object_attributes();
        assert!(attrs.fixed_tpm() && attrs.fixed_parent() && attrs.sensitive_data_origin());
        assert!(attrs.user_with_auth() && attrs.restricted() && attrs.sign_encrypt());
        assert!(!attrs.decrypt());
        assert_eq!(template.name_hashing_algorithm(), HashingAlgorithm::Sha256);
        assert_eq!(check_matches_template(&template, &template), Ok(()));
    }

    #[test]
    fn tpm_can_move_to_a_server_thread() {
        fn is_send<T: Send>() {}
        is_send::<Tpm>();
    }

    #[test]
    fn pcr_lists_are_checked_and_sorted() {
        assert_eq!(normalise(&[15, 0, 7, 0]).unwrap(), vec![0, 7, 15]);
        assert!(matches!(normalise(&[1, 24]), Err(TpmError::BadPcr(24))));
        assert_eq!(slot_index(pcr_slot(15).unwrap()), 15);
        assert_eq!(pcr_handle(15).unwrap(), PcrHandle::Pcr15);
        assert_eq!(pcr_handle(0).unwrap(), PcrHandle::Pcr0);
    }

    #[test]
    fn pcr_digest_hashes_in_ascending_order() {
        let a = (0u8, [1u8; 32]);
        let b = (7u8, [2u8; 32]);
        let mut h = Sha256::new();
        h.update([1u8; 32]);
        h.update([2u8; 32]);
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(pcr_digest(&[b, a]), expected);
        assert_eq!(pcr_digest(&[a, b]), expected);
    }

    #[test]
    fn name_is_sha256_prefixed_with_its_algorithm() {
        let name = name_of_public(b"abc");
        assert_eq!(
            hex::encode(name),
            "000bba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_handles_and_tcti_are_reported_before_connecting() {
        assert!(matches!(
            Tpm::open("swtpm:port=1", 0x8000_0001),
            Err(TpmError::BadAkHandle(_))
        ));
        assert!(matches!(
            Tpm::open("carrier-pigeon", DEFAULT_AK_HANDLE),
            Err(TpmError::BadTcti { .. })
        ));
    }
}
