//! Reading a ConfidentialModel's published endpoints from the cluster.
//!
//! The status is written by the controller and readable by anyone with API
//! access, cluster admins included: it is a discovery and pinning
//! convenience, not proof. `--policy` re-verifies each endpoint; without it
//! the client trusts the status's pinned keys, and says so.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use aver_crds::confidential_model::{ConfidentialModel, VerifiedEndpoint};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

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

/// Fetches the resource named `name`.
pub async fn fetch(name: &str, args: &ClusterArgs) -> anyhow::Result<ConfidentialModel> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            let options = KubeConfigOptions {
                context: args.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .context("invalid kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found")?,
    };
    let client = kube::Client::try_from(config).context("cannot build the Kubernetes client")?;
    let api: Api<ConfidentialModel> = Api::namespaced(client, &args.namespace);
    api.get(name)
        .await
        .with_context(|| format!("cannot read ConfidentialModel {}/{name}", args.namespace))
}

/// The published endpoints, or an error saying why there are none.
pub fn endpoints(model: &ConfidentialModel) -> anyhow::Result<Vec<VerifiedEndpoint>> {
    let endpoints = model
        .status
        .as_ref()
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    if endpoints.is_empty() {
        bail!(
            "ConfidentialModel {} has no verified endpoints in its status (yet)",
            model.metadata.name.as_deref().unwrap_or("?")
        );
    }
    Ok(endpoints)
}
