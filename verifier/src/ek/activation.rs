//! The activation protocol and its pure steps.
//!
//! On the enclave's TLS endpoint (same listener as the evidence):
//!
//! `GET /.well-known/aver/activate` answers an [`ActivationOffer`]:
//!
//! ```json
//! {
//!   "version": 1,
//!   "akPublic": "<base64 TPMT_PUBLIC of the AK>",
//!   "endorsementKeys": [
//!     { "kind": "rsa2048", "certificate": "<base64 DER, NV 0x01c00002>" },
//!     { "kind": "eccP256", "certificate": "<base64 DER, NV 0x01c0000a>" }
//!   ],
//!   "ekChain": ["<base64 DER intermediate CA>", …]           // optional
//! }
//! ```
//!
//! `POST /.well-known/aver/activate` with an [`ActivationRequest`]
//! (`{"version":1,"kind":"rsa2048","credentialBlob":"<base64
//! TPM2B_ID_OBJECT contents>","encryptedSecret":"<base64
//! TPM2B_ENCRYPTED_SECRET contents>"}`) runs TPM2_ActivateCredential with
//! the AK and that EK and answers an [`ActivationResponse`]
//! (`{"version":1,"credential":"<base64>"}`), or HTTP 422 when the TPM
//! refuses (wrong EK, wrong AK name, tampered blob).
//!
//! Nothing in the offer is trusted: the certificate must chain to the
//! policy's roots, the credential is made for the certified key, and the
//! AK name it is bound to is computed here from the AK public area.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aver_crds::{AkName, Sha256Digest};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::chain::{validate_ek_certificate, EkCertificateInfo, EkChainError, TrustAnchors};
use super::credential::{make_credential, CredentialError, SEED_BYTES};
use super::pin::EkPin;
use super::EkKind;
use crate::evidence::Base64Bytes;
use crate::tpm::{AkPublic, TpmParseError};

/// The only activation document version this verifier understands.
pub const ACTIVATION_VERSION: u32 = 1;

/// Largest offer accepted: a few certificates of a few KiB each.
pub const MAX_OFFER_BYTES: usize = 256 * 1024;

/// Largest activation request or response: the blob and secret are a few
/// hundred bytes.
pub const MAX_ACTIVATION_BYTES: usize = 16 * 1024;

/// What the enclave presents for activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivationOffer {
    pub version: u32,
    /// The AK's marshalled TPMT_PUBLIC, the same bytes as evidence's `akPublic`.
    pub ak_public: Base64Bytes,
    /// EK certificates found in the TPM's NV, in the enclave's order of
    /// preference.
    pub endorsement_keys: Vec<EndorsementCertificate>,
    /// Intermediate CA certificates to build the path with (untrusted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ek_chain: Vec<Base64Bytes>,
}

/// One EK certificate as read from its NV index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndorsementCertificate {
    pub kind: EkKind,
    /// DER.
    pub certificate: Base64Bytes,
}

/// A credential for the enclave's TPM to activate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivationRequest {
    pub version: u32,
    /// Which EK the credential is wrapped to.
    pub kind: EkKind,
    /// Contents of the TPM2B_ID_OBJECT.
    pub credential_blob: Base64Bytes,
    /// Contents of the TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Base64Bytes,
}

/// The secret the TPM released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivationResponse {
    pub version: u32,
    pub credential: Base64Bytes,
}

/// Why an attestation key was not proven resident in a genuine TPM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    #[error("malformed activation {document}: {reason}")]
    Malformed {
        document: &'static str,
        reason: String,
    },
    #[error("activation {document} version {found} is not supported (this verifier understands version {ACTIVATION_VERSION})")]
    UnsupportedVersion { document: &'static str, found: u32 },
    #[error(
        "the policy sets no trust.ekRoots: there is nothing to validate an EK certificate against"
    )]
    NoEkRoots,
    #[error("invalid trust.ekRoots: {0}")]
    BadRoots(EkChainError),
    #[error("the endpoint's TPM presents no EK certificate (NV 0x01c00002 for RSA 2048, 0x01c0000a for ECC P-256)")]
    NoEkCertificate,
    #[error("activation offer refused: {0}")]
    OfferTooLarge(EkChainError),
    #[error("{kind} EK certificate rejected: {source}")]
    EkChain { kind: EkKind, source: EkChainError },
    #[error("malformed AK public area in the activation offer: {0}")]
    AkPublic(TpmParseError),
    #[error("attestation key {name} offered for activation is not a restricted, TPM-resident signing key")]
    NotAnAttestationKey { name: String },
    #[error("cannot make a credential: {0}")]
    Credential(CredentialError),
    #[error("the TPM refused to activate the credential for attestation key {name}: it is not resident in the TPM of the certified EK ({message})")]
    Refused { name: String, message: String },
    #[error("the TPM returned the wrong secret for attestation key {name}: it is not resident in the TPM of the certified EK")]
    WrongSecret { name: String },
}

impl ActivationError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed { .. }
            | Self::UnsupportedVersion { .. }
            | Self::AkPublic(_)
            | Self::OfferTooLarge(_) => "malformed",
            Self::NoEkRoots | Self::BadRoots(_) => "policy-invalid",
            Self::NoEkCertificate | Self::EkChain { .. } => "ek-chain",
            Self::NotAnAttestationKey { .. } => "untrusted-key",
            Self::Credential(_) | Self::Refused { .. } | Self::WrongSecret { .. } => "activation",
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    document: &'static str,
    limit: usize,
    version_of: impl Fn(&T) -> u32,
) -> Result<T, ActivationError> {
    if bytes.len() > limit {
        return Err(ActivationError::Malformed {
            document,
            reason: format!("{} bytes, more than the {limit}-byte limit", bytes.len()),
        });
    }
    let value: T = serde_json::from_slice(bytes).map_err(|e| ActivationError::Malformed {
        document,
        reason: e.to_string(),
    })?;
    let found = version_of(&value);
    if found != ACTIVATION_VERSION {
        return Err(ActivationError::UnsupportedVersion { document, found });
    }
    Ok(value)
}

impl ActivationOffer {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ActivationError> {
        from_json(bytes, "offer", MAX_OFFER_BYTES, |o: &Self| o.version)
    }
}

impl ActivationRequest {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ActivationError> {
        from_json(bytes, "request", MAX_ACTIVATION_BYTES, |r: &Self| r.version)
    }
}

impl ActivationResponse {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ActivationError> {
        from_json(bytes, "response", MAX_ACTIVATION_BYTES, |r: &Self| {
            r.version
        })
    }
}

/// Proof that an attestation key is resident in a TPM whose EK certificate
/// chains to the policy's roots. Only [`PendingActivation::complete`]
/// makes one, so holding it means the TPM released the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ActivatedAk {
    /// TPM name (hex) of the activated AK.
    pub(crate) ak_name: AkName,
    /// The certified EK the credential was wrapped to, and its chain.
    pub(crate) ek: EkCertificateInfo,
    /// SHA-256 of the policy's `trust.ekRoots` text the chain was checked
    /// against.
    pub(crate) roots_sha256: Sha256Digest,
    /// The digests that pin this TPM in `trust.ekPins`.
    pub(crate) ek_pin: EkPin,
    /// The `trust.ekPins` entry this TPM matched, when the policy pins
    /// nodes (set by the verification that relied on this proof).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pinned_by: Option<Sha256Digest>,
    /// When the TPM released the secret (RFC 3339).
    pub(crate) activated_at: String,
    /// Unix time at which a certificate of the path expires; the proof is
    /// not reused after it.
    #[serde(skip)]
    pub(crate) valid_until: i64,
}

impl ActivatedAk {
    /// TPM name of the activated AK.
    pub fn ak_name(&self) -> &AkName {
        &self.ak_name
    }

    /// The certified EK the credential was wrapped to, and its chain.
    pub fn ek(&self) -> &EkCertificateInfo {
        &self.ek
    }

    /// SHA-256 of the policy's `trust.ekRoots` text the chain was checked
    /// against.
    pub fn roots_sha256(&self) -> Sha256Digest {
        self.roots_sha256
    }

    /// The digests that pin this TPM in `trust.ekPins`.
    pub fn ek_pin(&self) -> EkPin {
        self.ek_pin
    }

    /// The `trust.ekPins` entry this TPM matched, when the policy pins
    /// nodes (set by the verification that relied on this proof).
    pub fn pinned_by(&self) -> Option<Sha256Digest> {
        self.pinned_by
    }

    /// When the TPM released the secret (RFC 3339).
    pub fn activated_at(&self) -> &str {
        &self.activated_at
    }

    /// Unix time at which a certificate of the path expires; the proof is
    /// not reused after it.
    pub fn valid_until(&self) -> i64 {
        self.valid_until
    }

    /// Whether this proof may vouch for `ak_name` under a policy whose
    /// `ekRoots` text hashes to `roots_sha256`, at Unix time `now`.
    pub fn vouches_for(&self, ak_name: &AkName, roots_sha256: &Sha256Digest, now: i64) -> bool {
        self.ak_name == *ak_name && self.roots_sha256 == *roots_sha256 && now <= self.valid_until
    }

    /// Report lines, indented like [`crate::VerifiedReport::to_text`].
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let ek = &self.ek;
        let _ = writeln!(
            out,
            "  ak residency      activated: the TPM of the {} EK below released the credential for this AK",
            ek.kind
        );
        let _ = writeln!(out, "  ek certificate    {}", ek.certificate_sha256);
        if let Some(pin) = &self.pinned_by {
            let _ = writeln!(
                out,
                "  node pinned       {pin} (trust.ekPins): this is an enrolled TPM, not just one of its vendor's"
            );
        }
        let _ = writeln!(
            out,
            "    subject         {} (serial {})",
            ek.subject, ek.serial
        );
        let _ = writeln!(out, "    not after       {}", ek.not_after);
        if let Some(tpm) = &ek.tpm {
            let _ = writeln!(out, "    tpm             {}", tpm.describe());
        }
        let last = ek.chain.len().saturating_sub(1);
        for (i, issuer) in ek.chain.iter().enumerate() {
            let role = if i == last {
                "trust.ekRoots"
            } else {
                "intermediate"
            };
            let _ = writeln!(out, "    issued by       {issuer} ({role})");
        }
        let _ = writeln!(out, "  activated at      {}", self.activated_at);
        out
    }
}

/// An activation in flight: the secret the TPM must give back.
#[derive(Debug)]
pub struct PendingActivation {
    ak_name: AkName,
    secret: [u8; SEED_BYTES],
    ek: EkCertificateInfo,
    ek_pin: EkPin,
    roots_sha256: Sha256Digest,
    valid_until: i64,
}

impl PendingActivation {
    /// Validates the offer against `anchors` at Unix time `now` and wraps a
    /// fresh secret to the first EK whose certificate chains to them.
    /// Returns the request to send and what to check the answer against.
    pub fn prepare(
        offer: &ActivationOffer,
        anchors: &TrustAnchors,
        now: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(ActivationRequest, Self), ActivationError> {
        if offer.version != ACTIVATION_VERSION {
            return Err(ActivationError::UnsupportedVersion {
                document: "offer",
                found: offer.version,
            });
        }
        super::chain::check_offer_size(offer.endorsement_keys.len(), offer.ek_chain.len())
            .map_err(ActivationError::OfferTooLarge)?;
        let ak = AkPublic::parse(&offer.ak_public.0).map_err(ActivationError::AkPublic)?;
        let Ok(ak_name) = AkName::parse(&ak.name_hex()) else {
            return Err(ActivationError::NotAnAttestationKey {
                name: ak.name_hex(),
            });
        };
        if !ak.is_attestation_key() {
            return Err(ActivationError::NotAnAttestationKey {
                name: ak_name.to_string(),
            });
        }
        let intermediates: Vec<Vec<u8>> = offer.ek_chain.iter().map(|c| c.0.clone()).collect();
        let mut first_error = None;
        let mut validated = None;
        for candidate in &offer.endorsement_keys {
            match validate_ek_certificate(
                &candidate.certificate.0,
                candidate.kind,
                &intermediates,
                anchors,
                now,
            ) {
                // A certificate that validated parses, so it has pins.
                Ok(ek) => match EkPin::from_nv(&candidate.certificate.0) {
                    Ok(pin) => {
                        validated = Some((ek, pin));
                        break;
                    }
                    Err(reason) => {
                        first_error.get_or_insert(ActivationError::Malformed {
                            document: "offer",
                            reason: format!("{} EK certificate: {reason}", candidate.kind),
                        });
                    }
                },
                Err(source) => {
                    first_error.get_or_insert(ActivationError::EkChain {
                        kind: candidate.kind,
                        source,
                    });
                }
            }
        }
        let Some((ek, ek_pin)) = validated else {
            return Err(first_error.unwrap_or(ActivationError::NoEkCertificate));
        };
        let mut secret = [0u8; SEED_BYTES];
        rng.fill_bytes(&mut secret);
        let blob = make_credential(&ek.public_key, &secret, &ak.name, rng)
            .map_err(ActivationError::Credential)?;
        let request = ActivationRequest {
            version: ACTIVATION_VERSION,
            kind: ek.info.kind,
            credential_blob: Base64Bytes(blob.id_object),
            encrypted_secret: Base64Bytes(blob.encrypted_secret),
        };
        Ok((
            request,
            Self {
                ak_name,
                secret,
                ek: ek.info,
                ek_pin,
                roots_sha256: anchors.policy_sha256(),
                valid_until: ek.valid_until,
            },
        ))
    }

    /// The AK this activation is for.
    pub fn ak_name(&self) -> &AkName {
        &self.ak_name
    }

    /// The EK certificate the credential was wrapped to.
    pub fn ek(&self) -> &EkCertificateInfo {
        &self.ek
    }

    /// Checks the TPM's answer: only the right secret proves residency.
    pub fn complete(self, response: &ActivationResponse) -> Result<ActivatedAk, ActivationError> {
        if response.version != ACTIVATION_VERSION {
            return Err(ActivationError::UnsupportedVersion {
                document: "response",
                found: response.version,
            });
        }
        if !constant_time_eq(&response.credential.0, &self.secret) {
            return Err(ActivationError::WrongSecret {
                name: self.ak_name.to_string(),
            });
        }
        Ok(ActivatedAk {
            ak_name: self.ak_name,
            ek: self.ek,
            roots_sha256: self.roots_sha256,
            ek_pin: self.ek_pin,
            pinned_by: None,
            activated_at: jiff::Timestamp::now().to_string(),
            valid_until: self.valid_until,
        })
    }

    /// The TPM refused the credential (HTTP 422 from the enclave).
    pub fn refused(self, message: String) -> ActivationError {
        ActivationError::Refused {
            name: self.ak_name.to_string(),
            message,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Activated AKs by EK certificate, shared between clones: a client (or
/// the controller) activates each TPM's AK once and reuses the proof for
/// every later attestation signed by that AK. An entry is replaced when
/// the same EK presents another AK, and ignored once a certificate of its
/// path has expired.
#[derive(Debug, Clone, Default)]
pub struct ActivationCache {
    inner: Arc<Mutex<HashMap<(Sha256Digest, Sha256Digest), ActivatedAk>>>,
}

impl ActivationCache {
    pub fn insert(&self, activated: ActivatedAk) {
        let key = (activated.ek.certificate_sha256, activated.roots_sha256);
        self.lock().insert(key, activated);
    }

    /// A proof for `ak_name` under roots hashing to `roots_sha256`, if one
    /// is cached and still valid at Unix time `now`.
    pub fn find(
        &self,
        ak_name: &AkName,
        roots_sha256: &Sha256Digest,
        now: i64,
    ) -> Option<ActivatedAk> {
        self.lock()
            .values()
            .find(|a| a.vouches_for(ak_name, roots_sha256, now))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(Sha256Digest, Sha256Digest), ActivatedAk>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The current Unix time, for validity checks.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ek::credential::tpm_side::{activate, EkPrivateKey};
    use crate::ek::credential::CredentialBlob;
    use crate::tpm::AkPublic;
    use aver_testkit::tpm::{ak_public, AK_ATTRIBUTES};
    use aver_testkit::{ek_certificate, rsa_ek, ForeignKey, TestCa};

    struct Fixture {
        root: TestCa,
        offer: ActivationOffer,
        ak_name: Vec<u8>,
    }

    fn fixture() -> Fixture {
        let root = TestCa::root("Vendor Root");
        let ek = ek_certificate(
            &root,
            &ForeignKey::rsa(&rsa_ek().to_public_key()),
            (2020, 2099),
            |_| {},
        );
        let ak = ak_public(AK_ATTRIBUTES, [1; 32], [2; 32]);
        let ak_name = AkPublic::parse(&ak).unwrap().name;
        Fixture {
            offer: ActivationOffer {
                version: ACTIVATION_VERSION,
                ak_public: Base64Bytes(ak),
                endorsement_keys: vec![EndorsementCertificate {
                    kind: EkKind::Rsa2048,
                    certificate: Base64Bytes(ek),
                }],
                ek_chain: vec![],
            },
            root,
            ak_name,
        }
    }

    /// What the enclave's TPM does with a request, in software.
    fn tpm_answers(request: &ActivationRequest, object_name: &[u8]) -> ActivationResponse {
        let blob = CredentialBlob {
            id_object: request.credential_blob.0.clone(),
            encrypted_secret: request.encrypted_secret.0.clone(),
        };
        let secret = activate(&EkPrivateKey::Rsa(Box::new(rsa_ek())), &blob, object_name).unwrap();
        ActivationResponse {
            version: ACTIVATION_VERSION,
            credential: Base64Bytes(secret),
        }
    }

    #[test]
    fn the_right_secret_proves_residency_and_is_cached() {
        let f = fixture();
        let roots = TrustAnchors::from_pem(&f.root.pem).unwrap();
        let (request, pending) =
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng())
                .unwrap();
        assert_eq!(request.kind, EkKind::Rsa2048);
        let activated = pending
            .complete(&tpm_answers(&request, &f.ak_name))
            .unwrap();
        let name = AkName::from_bytes(&f.ak_name).unwrap();
        assert_eq!(activated.ak_name, name);
        let upper = AkName::parse(&name.as_str().to_uppercase()).unwrap();
        assert!(activated.vouches_for(&upper, &roots.policy_sha256(), unix_now()));
        assert!(!activated.vouches_for(&name, &Sha256Digest([0; 32]), unix_now()));
        assert!(!activated.vouches_for(&name, &roots.policy_sha256(), i64::MAX));
        assert!(activated
            .to_text()
            .contains("issued by       \"CN=Vendor Root\" (trust.ekRoots)"));

        let cache = ActivationCache::default();
        cache.insert(activated.clone());
        assert_eq!(
            cache.find(&name, &roots.policy_sha256(), unix_now()),
            Some(activated)
        );
        assert_eq!(
            cache.find(
                &AkName::parse(&format!("000b{}", "00".repeat(32))).unwrap(),
                &roots.policy_sha256(),
                unix_now()
            ),
            None
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let f = fixture();
        let roots = TrustAnchors::from_pem(&f.root.pem).unwrap();
        let (_, pending) =
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng())
                .unwrap();
        let wrong = ActivationResponse {
            version: ACTIVATION_VERSION,
            credential: Base64Bytes(vec![0; 32]),
        };
        assert!(matches!(
            pending.complete(&wrong),
            Err(ActivationError::WrongSecret { .. })
        ));
    }

    #[test]
    fn the_first_ek_that_chains_is_used() {
        let mut f = fixture();
        let rogue = TestCa::root("Rogue");
        let ecc = p256::SecretKey::random(&mut rand::thread_rng()).public_key();
        let untrusted = ek_certificate(&rogue, &ForeignKey::p256(&ecc), (2020, 2099), |_| {});
        f.offer.endorsement_keys.insert(
            0,
            EndorsementCertificate {
                kind: EkKind::EccP256,
                certificate: Base64Bytes(untrusted),
            },
        );
        let roots = TrustAnchors::from_pem(&f.root.pem).unwrap();
        let (request, _) =
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng())
                .unwrap();
        assert_eq!(request.kind, EkKind::Rsa2048);

        // With no trusted EK, the first failure is reported.
        f.offer.endorsement_keys.pop();
        let error =
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng())
                .unwrap_err();
        assert!(matches!(
            error,
            ActivationError::EkChain {
                kind: EkKind::EccP256,
                ..
            }
        ));
        assert_eq!(error.reason(), "ek-chain");
        f.offer.endorsement_keys.clear();
        assert_eq!(
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng())
                .unwrap_err(),
            ActivationError::NoEkCertificate
        );
    }

    #[test]
    fn only_attestation_keys_are_activated() {
        let mut f = fixture();
        f.offer.ak_public = Base64Bytes(ak_public(AK_ATTRIBUTES & !(1 << 16), [1; 32], [2; 32]));
        let roots = TrustAnchors::from_pem(&f.root.pem).unwrap();
        assert!(matches!(
            PendingActivation::prepare(&f.offer, &roots, unix_now(), &mut rand::thread_rng()),
            Err(ActivationError::NotAnAttestationKey { .. })
        ));
    }

    #[test]
    fn documents_round_trip_and_reject_other_versions() {
        let f = fixture();
        let json = serde_json::to_vec(&f.offer).unwrap();
        assert_eq!(ActivationOffer::from_json(&json).unwrap(), f.offer);
        let v2 = String::from_utf8(json)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            ActivationOffer::from_json(v2.as_bytes()),
            Err(ActivationError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            ActivationRequest::from_json(b"{\"version\":1}"),
            Err(ActivationError::Malformed { .. })
        ));
        assert!(matches!(
            ActivationResponse::from_json(&vec![b' '; MAX_ACTIVATION_BYTES + 1]),
            Err(ActivationError::Malformed { .. })
        ));
    }
}
