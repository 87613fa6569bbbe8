//! The volume a node-measured model's PersistentVolumeClaim is bound to.
//!
//! The kubelet mounts a claim from a directory named after its
//! PersistentVolume (`kubernetes.io~local-volume/<pv>`,
//! `kubernetes.io~csi/<pv>/mount`, or a hostPath volume's own path), and
//! aver-node records that source in each container's spec. So the policy of
//! a node-measured model depends on the volume, which the resource does not
//! name: the controller resolves it here and publishes it in
//! `status.modelVolume`, where the re-attestation loop and `aver policy
//! from-model` read it.
//!
//! Trusting the API for the volume's name is no weaker than trusting it for
//! the claim's: what the evidence proves is that the enclave hashed the same
//! source the engine serves from, and that source's files have an allowed
//! digest.

use aver_crds::{ConfidentialModel, Measurement, ModelVolume, ModelVolumeType};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::{Client, ResourceExt};

/// What the model's claim resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The model has no claim, or is not node-measured: nothing to resolve.
    NotNeeded,
    /// Bound to a volume of a supported kind.
    Bound(ModelVolume),
    /// Not bound yet (a `WaitForFirstConsumer` class binds once a pod is
    /// scheduled): the workload is applied anyway and the claim resolved
    /// again soon.
    Pending(String),
    /// The claim, or the volume it names, does not exist: reported, and
    /// otherwise like [`Resolution::Pending`] (it may be created later).
    Missing(String),
    /// Bound to a volume whose mount directory is not known, or not
    /// readable with the controller's permissions: the model cannot be
    /// attested.
    Refused(String),
}

/// Why the claim could not be resolved this time (retried).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what}: {source}")]
pub struct ResolveError {
    what: String,
    #[source]
    source: kube::Error,
}

/// Resolves the claim of `cm` (two GETs; none without a claim).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    cm: &ConfidentialModel,
) -> Result<Resolution, ResolveError> {
    let Some(claim_name) = claim_to_resolve(cm) else {
        return Ok(Resolution::NotNeeded);
    };
    let what = format!("PersistentVolumeClaim {namespace}/{claim_name}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = match claims.get_opt(claim_name).await {
        Ok(Some(claim)) => claim,
        Ok(None) => {
            return Ok(Resolution::Missing(format!(
                "{what} (spec.model.source.persistentVolumeClaim) does not exist"
            )))
        }
        Err(source) => return refused_or_error(what, source),
    };
    let Some(volume_name) = bound_volume(&claim) else {
        return Ok(Resolution::Pending(format!("{what} is not bound yet")));
    };
    let what = format!("PersistentVolume {volume_name} (bound to {namespace}/{claim_name})");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    match volumes.get_opt(volume_name).await {
        Ok(Some(volume)) => Ok(classify(&claim, &volume)),
        Ok(None) => Ok(Resolution::Missing(format!("{what} does not exist"))),
        Err(source) => refused_or_error(what, source),
    }
}

/// The claim whose volume shapes the pod's measured specs, if any.
pub fn claim_to_resolve(cm: &ConfidentialModel) -> Option<&str> {
    if cm.spec.measurement != Measurement::Node {
        return None;
    }
    let claim = cm.spec.model.source.persistent_volume_claim.as_ref()?;
    Some(claim.claim_name.as_str())
}

/// A permission error will not go away by retrying: it is reported on the
/// resource. Anything else is retried.
fn refused_or_error(what: String, source: kube::Error) -> Result<Resolution, ResolveError> {
    match &source {
        kube::Error::Api(status) if status.code == 403 => Ok(Resolution::Refused(format!(
            "cannot read {what}: {} (the controller needs get on persistentvolumeclaims and persistentvolumes)",
            status.message
        ))),
        _ => Err(ResolveError { what, source }),
    }
}

/// The volume a claim is bound to (`Bound`, with `spec.volumeName`).
fn bound_volume(claim: &PersistentVolumeClaim) -> Option<&str> {
    let phase = claim.status.as_ref()?.phase.as_deref()?;
    let name = claim.spec.as_ref()?.volume_name.as_deref()?;
    (phase == "Bound" && !name.is_empty()).then_some(name)
}

/// The model volume of a bound claim, if the volume points back at it and
/// its kind is one whose kubelet mount directory is known.
pub fn classify(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> Resolution {
    let claim_name = claim.name_any();
    let volume_name = volume.name_any();
    let points_back = volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.name.as_deref() == Some(claim_name.as_str())
                && r.namespace == claim.namespace()
                && r.uid == claim.uid()
        });
    if !points_back {
        return Resolution::Pending(format!(
            "PersistentVolume {volume_name} is not bound to claim {claim_name} yet"
        ));
    }
    let spec = volume.spec.as_ref();
    let (type_, path) = if spec.is_some_and(|s| s.local.is_some()) {
        (ModelVolumeType::Local, None)
    } else if spec.is_some_and(|s| s.csi.is_some()) {
        (ModelVolumeType::Csi, None)
    } else if let Some(host) = spec.and_then(|s| s.host_path.as_ref()) {
        (ModelVolumeType::HostPath, Some(host.path.clone()))
    } else {
        return Resolution::Refused(format!(
            "PersistentVolume {volume_name} (bound to claim {claim_name}) is of a kind whose kubelet mount directory aver does not know, so a node-measured pod using it cannot be attested: use a local, csi or hostPath volume"
        ));
    };
    Resolution::Bound(ModelVolume {
        claim_name,
        volume_name,
        type_,
        path,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        CSIPersistentVolumeSource, HostPathVolumeSource, LocalVolumeSource, NFSVolumeSource,
        ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
        PersistentVolumeSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::workload::tests::node_model;

    fn claim(bound_to: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("weights".into()),
                namespace: Some("ml".into()),
                uid: Some("claim-uid".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: bound_to.map(Into::into),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(
                    if bound_to.is_some() {
                        "Bound"
                    } else {
                        "Pending"
                    }
                    .into(),
                ),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn volume(uid: &str, f: impl FnOnce(&mut PersistentVolumeSpec)) -> PersistentVolume {
        let mut spec = PersistentVolumeSpec {
            claim_ref: Some(ObjectReference {
                name: Some("weights".into()),
                namespace: Some("ml".into()),
                uid: Some(uid.into()),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        };
        f(&mut spec);
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv-1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    #[test]
    fn only_node_measured_claims_are_resolved() {
        let mut cm = node_model("llama");
        assert_eq!(claim_to_resolve(&cm), None, "a host path model");
        cm.spec.model.source = aver_crds::ModelSource {
            persistent_volume_claim: Some(aver_crds::PvcModelSource {
                claim_name: "weights".into(),
                sub_path: None,
            }),
            image: None,
            host_path: None,
        };
        assert_eq!(claim_to_resolve(&cm), Some("weights"));
        cm.spec.measurement = Measurement::Enclave;
        assert_eq!(claim_to_resolve(&cm), None);
    }

    #[test]
    fn bound_volumes_of_known_kinds_resolve() {
        let bound = claim(Some("pv-1"));
        assert_eq!(bound_volume(&bound), Some("pv-1"));
        assert_eq!(bound_volume(&claim(None)), None);
        let cases = [
            (
                volume("claim-uid", |s| {
                    s.local = Some(LocalVolumeSource {
                        path: "/mnt/disks/1".into(),
                        fs_type: None,
                    })
                }),
                ModelVolumeType::Local,
                None,
            ),
            (
                volume("claim-uid", |s| {
                    s.csi = Some(CSIPersistentVolumeSource {
                        driver: "ebs.csi.aws.com".into(),
                        volume_handle: "vol-1".into(),
                        ..CSIPersistentVolumeSource::default()
                    })
                }),
                ModelVolumeType::Csi,
                None,
            ),
            (
                volume("claim-uid", |s| {
                    s.host_path = Some(HostPathVolumeSource {
                        path: "/srv/weights".into(),
                        type_: None,
                    })
                }),
                ModelVolumeType::HostPath,
                Some("/srv/weights".to_owned()),
            ),
        ];
        for (pv, type_, path) in cases {
            assert_eq!(
                classify(&bound, &pv),
                Resolution::Bound(ModelVolume {
                    claim_name: "weights".into(),
                    volume_name: "pv-1".into(),
                    type_,
                    path,
                })
            );
        }
    }

    #[test]
    fn a_volume_of_another_claim_or_kind_does_not_resolve() {
        let bound = claim(Some("pv-1"));
        let local = |s: &mut PersistentVolumeSpec| {
            s.local = Some(LocalVolumeSource {
                path: "/mnt/disks/1".into(),
                fs_type: None,
            })
        };
        // A claim deleted and recreated under the same name has a new UID.
        assert!(matches!(
            classify(&bound, &volume("old-uid", local)),
            Resolution::Pending(m) if m.contains("not bound to claim weights")
        ));
        let nfs = volume("claim-uid", |s| {
            s.nfs = Some(NFSVolumeSource {
                server: "nfs".into(),
                path: "/export".into(),
                read_only: None,
            })
        });
        assert!(matches!(
            classify(&bound, &nfs),
            Resolution::Refused(m) if m.contains("local, csi or hostPath")
        ));
    }
}
