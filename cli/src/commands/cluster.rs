//! Reading a ConfidentialModel's published endpoints from the cluster.
//!
//! The status is written by the controller and readable by anyone with API
//! access, cluster admins included: it is a discovery and pinning
//! convenience, not proof. `--policy` re-verifies each endpoint; without it
//! the client trusts the status's pinned keys, and says so.

use std::path::PathBuf;

use aver_crds::confidential_model::{ConfidentialModel, VerifiedEndpoint};

/// Which resource, and how to reach the API server.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Namespace of the ConfidentialModel.
    #[arg(short = 'n', long, env = "AVER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Kubeconfig file [default: $KUBECONFIG, ~/.kube/config, or in-cluster].
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
}

/// Fetches the resource named `name` (the proxy library's reader, which
/// `aver proxy --from-cluster` uses too).
pub async fn fetch(name: &str, args: &ClusterArgs) -> anyhow::Result<ConfidentialModel> {
    Ok(aver_proxy::cluster::fetch(
        name,
        &args.namespace,
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
    )
    .await?)
}

/// The published endpoints, or an error saying why there are none.
pub fn endpoints(model: &ConfidentialModel) -> anyhow::Result<Vec<VerifiedEndpoint>> {
    Ok(aver_proxy::cluster::endpoints(model)?)
}
