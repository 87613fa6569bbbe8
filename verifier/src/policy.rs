//! A policy checked once, before any evidence meets it.
//!
//! [`AttestationPolicy`] is the schema: what a policy file or a
//! `ConfidentialModel` says, strings and all. [`ValidatedPolicy`] is what
//! the verifier enforces: the same policy after every rule of
//! [`AttestationPolicy::validate`] passed, with its durations, AK names and
//! trust anchors parsed. Verification takes only the validated form, so a
//! policy that cannot be enforced is refused where it is loaded, with one
//! message, and no verification re-parses it.
//!
//! A validated policy cannot be widened after the checks, through its
//! fields or the policy it dereferences to:
//!
//! ```compile_fail,E0596
//! fn widen(policy: &mut aver_verifier::ValidatedPolicy) {
//!     policy.trust.ak_names.push("000b".to_owned() + &"00".repeat(32));
//! }
//! ```
//!
//! nor rebuilt around an unchecked policy:
//!
//! ```compile_fail,E0451
//! use aver_verifier::{AttestationPolicy, ValidatedPolicy};
//! fn forge(checked: &ValidatedPolicy, policy: AttestationPolicy) -> ValidatedPolicy {
//!     ValidatedPolicy { policy, ..checked.clone() }
//! }
//! ```

use std::ops::Deref;
use std::time::Duration;

use aver_crds::{AkName, AttestationPolicy};

use crate::ek::chain::TrustAnchors;
use crate::error::VerifyError;

/// An [`AttestationPolicy`] that passed validation, with its parts parsed.
///
/// Only [`ValidatedPolicy::new`] makes one, and it cannot be changed
/// afterwards: it dereferences to the policy for reading, never for writing.
/// To change a policy, change the [`AttestationPolicy`] and validate again.
#[derive(Debug, Clone)]
pub struct ValidatedPolicy {
    policy: AttestationPolicy,
    interval: Duration,
    max_evidence_age: Duration,
    ak_names: Vec<AkName>,
    ek_roots: Option<TrustAnchors>,
    ak_roots: Option<TrustAnchors>,
}

impl ValidatedPolicy {
    /// Validates `policy` and parses what verification needs: the
    /// durations, the AK names, and the `trust.ekRoots` and `trust.akRoots`
    /// certificates (each must parse and be a CA).
    pub fn new(policy: AttestationPolicy) -> Result<Self, VerifyError> {
        policy.validate()?;
        let interval = policy.interval()?;
        let max_evidence_age = policy.max_evidence_age()?;
        let ak_names = policy
            .trust
            .ak_names
            .iter()
            .map(|name| {
                AkName::parse(name).map_err(|_| aver_crds::PolicyError::BadAkName(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let ek_roots = policy
            .trust
            .ek_roots
            .as_deref()
            .map(TrustAnchors::from_pem)
            .transpose()
            .map_err(VerifyError::PolicyRoots)?;
        let ak_roots = policy
            .trust
            .ak_roots
            .as_deref()
            .map(|roots| TrustAnchors::from_pem_field(roots, "trust.akRoots"))
            .transpose()
            .map_err(VerifyError::PolicyRoots)?;
        Ok(Self {
            policy,
            interval,
            max_evidence_age,
            ak_names,
            ek_roots,
            ak_roots,
        })
    }

    /// Parses a policy file (YAML, which includes JSON) and validates it.
    pub fn from_yaml(text: &str) -> Result<Self, VerifyError> {
        Self::new(AttestationPolicy::from_yaml(text)?)
    }

    /// The policy as written.
    pub fn policy(&self) -> &AttestationPolicy {
        &self.policy
    }

    /// The policy as written, to edit and validate again.
    pub fn into_policy(self) -> AttestationPolicy {
        self.policy
    }

    /// How often the controller re-attests every endpoint.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long verified evidence may be relied on before it is fetched
    /// and verified again.
    pub fn max_evidence_age(&self) -> Duration {
        self.max_evidence_age
    }

    /// `trust.akNames`, parsed.
    pub fn ak_names(&self) -> &[AkName] {
        &self.ak_names
    }

    /// Whether `trust.akNames` lists `name`: such an AK needs no other proof.
    pub fn lists_ak(&self, name: &AkName) -> bool {
        self.ak_names.contains(name)
    }

    /// `trust.ekRoots`, parsed: the TPM manufacturer CAs an activated AK's
    /// EK certificate must chain to.
    pub fn ek_roots(&self) -> Option<&TrustAnchors> {
        self.ek_roots.as_ref()
    }

    /// `trust.akRoots`, parsed: the CAs an AK certificate must chain to.
    pub fn ak_roots(&self) -> Option<&TrustAnchors> {
        self.ak_roots.as_ref()
    }
}

impl Deref for ValidatedPolicy {
    type Target = AttestationPolicy;

    fn deref(&self) -> &AttestationPolicy {
        &self.policy
    }
}

/// Two validated policies are equal when they were validated from equal
/// policies: everything else in them is parsed from the policy.
impl PartialEq for ValidatedPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.policy == other.policy
    }
}

impl Eq for ValidatedPolicy {}

impl TryFrom<AttestationPolicy> for ValidatedPolicy {
    type Error = VerifyError;

    fn try_from(policy: AttestationPolicy) -> Result<Self, VerifyError> {
        Self::new(policy)
    }
}

#[cfg(test)]
mod tests {
    use aver_crds::PolicyError;

    use super::*;
    use crate::ek::chain::EkChainError;

    const POLICY: &str = include_str!("../testdata/policy-swtpm.yaml");
    const ROOT: &str = include_str!("../testdata/test-root-ca.pem");

    fn written() -> AttestationPolicy {
        AttestationPolicy::from_yaml(POLICY).unwrap()
    }

    #[test]
    fn durations_names_and_roots_are_parsed_once() {
        let mut policy = written();
        policy.interval = "2m".into();
        policy.max_evidence_age = "90s".into();
        let listed = policy.trust.ak_names[0].clone();
        policy.trust.ak_names[0] = listed.to_uppercase();
        policy.trust.ek_roots = Some(ROOT.into());
        policy.trust.ak_roots = Some(format!("{ROOT}{ROOT}"));
        let checked = ValidatedPolicy::new(policy.clone()).unwrap();
        assert_eq!(checked.interval(), Duration::from_secs(120));
        assert_eq!(checked.max_evidence_age(), Duration::from_secs(90));
        // The upper-case spelling lists the key the TPM names in lower case.
        assert!(checked.lists_ak(&AkName::parse(&listed).unwrap()));
        assert_eq!(checked.ak_names()[0].as_str(), listed.to_lowercase());
        assert_eq!(checked.ek_roots().map(TrustAnchors::len), Some(1));
        assert_eq!(checked.ak_roots().map(TrustAnchors::len), Some(2));
        assert_eq!(
            checked.ek_roots().unwrap().policy_sha256(),
            crate::ek::chain::roots_sha256(ROOT)
        );
        assert_eq!(checked.policy(), &policy);
        assert_eq!(checked.into_policy(), policy);
    }

    #[test]
    fn a_policy_that_cannot_be_enforced_is_refused_when_loaded() {
        let mut policy = written();
        policy.interval = "1s".into();
        assert_eq!(
            ValidatedPolicy::new(policy).unwrap_err(),
            VerifyError::Policy(PolicyError::IntervalTooShort("1s".into()))
        );
        let mut policy = written();
        policy.trust.ak_names = vec!["000b1234".into()];
        assert!(matches!(
            ValidatedPolicy::try_from(policy),
            Err(VerifyError::Policy(PolicyError::BadAkName(_)))
        ));
        assert!(matches!(
            ValidatedPolicy::from_yaml("trust: {}"),
            Err(VerifyError::Policy(_))
        ));
    }

    #[test]
    fn roots_that_are_not_ca_certificates_are_refused_when_loaded() {
        // The shape is a PEM certificate block, so the policy itself passes;
        // its contents are not a certificate.
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        for field in ["ek", "ak"] {
            let mut policy = written();
            match field {
                "ek" => policy.trust.ek_roots = Some(garbage.into()),
                _ => policy.trust.ak_roots = Some(garbage.into()),
            }
            policy.validate().unwrap();
            let error = ValidatedPolicy::new(policy).unwrap_err();
            assert!(
                matches!(
                    error,
                    VerifyError::PolicyRoots(EkChainError::Malformed { .. })
                ),
                "{field}: {error:?}"
            );
            assert!(
                error.to_string().contains(&format!("trust.{field}Roots")),
                "{error}"
            );
            assert_eq!(error.reason(), "policy-invalid");
            assert!(error.to_string().starts_with("invalid policy: "), "{error}");
        }
    }
}
