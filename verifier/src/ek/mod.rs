//! Hardware root of trust for attestation keys (docs/architecture.md#platform-identity): the AK is
//! trusted because it is proven to live in a genuine TPM, not because
//! someone listed its name.
//!
//! 1. The enclave presents its TPM's EK certificate (from the TCG NV index)
//!    and its AK public area ([`activation::ActivationOffer`]).
//! 2. The verifier validates the certificate's chain to the policy's
//!    manufacturer roots, `trust.ekRoots` ([`chain`]).
//! 3. It wraps a random secret to the certified EK public key, bound to the
//!    AK's name, in software ([`credential`], with the TPM's KDFs in
//!    [`kdf`]).
//! 4. The TPM releases the secret (TPM2_ActivateCredential) only if it holds
//!    the EK's private key *and* has an object with exactly that name
//!    loaded; the AK's name covers its attributes (fixedTPM, restricted),
//!    so a match proves the AK is resident in that TPM.
//! 5. The verifier compares the secret in constant time; the result is an
//!    [`ActivatedAk`], which `verify_activated` accepts in place of a
//!    `trust.akNames` entry.

pub mod activation;
mod cert_signature;
pub mod chain;
pub mod credential;
pub mod kdf;
pub mod pin;

pub use activation::{
    ActivatedAk, ActivationCache, ActivationError, ActivationOffer, ActivationRequest,
    ActivationResponse, EndorsementCertificate, PendingActivation, ACTIVATION_VERSION,
};
pub use chain::{EkCertificateInfo, EkChainError, TpmIdentity, TrustAnchors};
pub use credential::{make_credential, CredentialBlob, EkPublicKey};
pub use pin::EkPin;

use serde::{Deserialize, Serialize};

/// The endorsement keys aver supports: the TCG default (low-range)
/// templates, whose certificates live at fixed NV indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EkKind {
    /// RSA 2048, template L-1; certificate at NV 0x01c00002.
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// ECC NIST P-256, template L-2; certificate at NV 0x01c0000a.
    #[serde(rename = "eccP256")]
    EccP256,
}

impl EkKind {
    /// NV index of the EK certificate (TCG EK Credential Profile §2.2.1.4).
    pub fn certificate_nv_index(self) -> u32 {
        match self {
            Self::Rsa2048 => 0x01c0_0002,
            Self::EccP256 => 0x01c0_000a,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::EccP256 => "eccP256",
        }
    }
}

impl std::fmt::Display for EkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
