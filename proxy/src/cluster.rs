//! Reading a ConfidentialModel's published endpoints from the cluster (what
//! `aver request --from-cluster` and `aver discover` read; the CLI calls
//! these).
//!
//! The status is written by the controller and readable by anyone with API
//! access, cluster admins included: it is a discovery convenience, not
//! proof. The proxy attests every endpoint it finds against its own policy.

use std::path::Path;

use aver_crds::confidential_model::{ConfidentialModel, VerifiedEndpoint};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the resource or its endpoints could not be read. The message is one
/// line, with the underlying error appended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(String);

/// Fetches the ConfidentialModel `namespace/name`, with the API server
/// reached through `kubeconfig` (or `$KUBECONFIG`, `~/.kube/config`,
/// in-cluster configuration).
pub async fn fetch(
    name: &str,
    namespace: &str,
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<ConfidentialModel, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                ClusterError(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            let options = KubeConfigOptions {
                context: context.map(str::to_owned),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ClusterError(format!("invalid kubeconfig: {e}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClusterError(format!("no Kubernetes configuration found: {e}")))?,
    };
    let client = kube::Client::try_from(config)
        .map_err(|e| ClusterError(format!("cannot build the Kubernetes client: {e}")))?;
    let api: Api<ConfidentialModel> = Api::namespaced(client, namespace);
    api.get(name).await.map_err(|e| {
        ClusterError(format!(
            "cannot read ConfidentialModel {namespace}/{name}: {e}"
        ))
    })
}

/// The published endpoints, or an error saying why there are none.
pub fn endpoints(model: &ConfidentialModel) -> Result<Vec<VerifiedEndpoint>, ClusterError> {
    let endpoints = model
        .status
        .as_ref()
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    if endpoints.is_empty() {
        return Err(ClusterError(format!(
            "ConfidentialModel {} has no verified endpoints in its status (yet)",
            model.metadata.name.as_deref().unwrap_or("?")
        )));
    }
    Ok(endpoints)
}

/// `https://address:port` of a published endpoint (IPv6 bracketed).
pub fn endpoint_url(endpoint: &VerifiedEndpoint) -> String {
    if endpoint.address.contains(':') {
        format!("https://[{}]:{}", endpoint.address, endpoint.port)
    } else {
        format!("https://{}:{}", endpoint.address, endpoint.port)
    }
}
