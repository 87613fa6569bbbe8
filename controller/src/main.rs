//! `aver-controller`: reconciles `ConfidentialModel` resources, re-attests
//! every endpoint, and publishes the verified ones in status.
//!
//! Wiring only: flags, logging, the API client, leader election, and the
//! tasks that make up the operator. Errors end the process with one line.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use aver_controller::config::Args;
use aver_controller::effects::Effects;
use aver_controller::leader::{ElectionConfig, LeaderElector};
use aver_controller::metrics::Metrics;
use aver_controller::reconcile::{error_policy, reconcile, Context};
use aver_controller::source::{slim_pod, ClusterSource};
use aver_controller::tls_attester::TlsAttester;
use aver_controller::workload::MODEL_LABEL;
use aver_controller::{ModelKey, Reattester, ResultStore};
use aver_crds::ConfidentialModel;
use aver_serve::{MetricsServer, Readiness};
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, Controller, WatchStreamExt as _};
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Labels of objects the controller created, so that its watches of
/// Deployments and Services see only its own.
const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=aver-controller";

fn main() -> ExitCode {
    let args = Args::parse();
    aver_logging::init(args.log_format, aver_logging::DEFAULT_FILTER);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("aver-controller: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The context and its immediate cause; kube errors already
            // repeat their own sources in their message.
            let mut line = e.to_string();
            if let Some(cause) = e.chain().nth(1) {
                line = format!("{line}: {cause}");
            }
            eprintln!("aver-controller: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives (or at once if already sent).
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let metrics = Metrics::new();
    // Ready as soon as it serves: a replica that is not the leader is a
    // warm standby, not an unready one.
    let server = MetricsServer::bind(
        args.metrics_addr,
        Arc::new(metrics.clone()),
        Readiness::new(true),
    )
    .await
    .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    tokio::spawn(server.run(stopped(stop_rx.clone())));

    let client = Client::try_default().await.context(
        "cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG)",
    )?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("aver-controller-{}", std::process::id()));

    let mut elector = args.leader_elect.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &namespace),
            ElectionConfig {
                name: args.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
            },
        )
    });
    if args.renew_deadline >= args.lease_duration {
        anyhow::bail!("--renew-deadline must be shorter than --lease-duration, or two replicas could act at once");
    }

    if let Some(elector) = elector.as_mut() {
        tracing::info!(%identity, "waiting to become leader");
        tokio::select! {
            () = elector.acquire() => {}
            () = stopped(stop_rx.clone()) => return Ok(()),
        }
    }
    metrics.set_leader(true);

    let operate = operate(&args, client, metrics.clone(), identity, stop_rx.clone());
    let result = match elector.as_mut() {
        Some(elector) => tokio::select! {
            result = operate => result,
            lost = elector.hold() => Err(anyhow::anyhow!("stopped acting: {lost}")),
        },
        None => operate.await,
    };
    metrics.set_leader(false);
    if result.is_ok() {
        if let Some(elector) = elector.as_mut() {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "could not release the leader Lease; it will expire");
            }
        }
    }
    result
}

/// The API of `K` in the watched namespace, or in all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until shutdown is requested: the controller, the pod
/// cache, the re-attestation loop and the effects of its outcomes. Dropping
/// the returned future (lost leadership) stops all of them.
async fn operate(
    args: &Args,
    client: Client,
    metrics: Metrics,
    identity: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let namespace = args.namespace.as_deref();
    let models: Api<ConfidentialModel> = scoped(&client, namespace);
    let deployments: Api<Deployment> = scoped(&client, namespace);
    let services: Api<Service> = scoped(&client, namespace);
    let pdbs: Api<PodDisruptionBudget> = scoped(&client, namespace);
    let network_policies: Api<NetworkPolicy> = scoped(&client, namespace);
    let pods: Api<Pod> = scoped(&client, namespace);
    models
        .list(&ListParams::default().limit(1))
        .await
        .context("cannot list ConfidentialModels: is the CRD installed (crds/confidentialmodel.yaml) and is the controller allowed to list them?")?;

    let store = ResultStore::new();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel::<ModelKey>();
    let triggers = futures::stream::unfold(trigger_rx, |mut rx| async move {
        rx.recv().await.map(|key| (key, rx))
    });

    let (pod_reader, pod_writer) = reflector::store();
    let pod_cache = reflector(
        pod_writer,
        watcher(pods, watcher::Config::default().labels(MODEL_LABEL)).modify(slim_pod),
    )
    .default_backoff()
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %e, "pod watch failed; retrying");
        }
    });

    let owned = watcher::Config::default().labels(MANAGED_SELECTOR);
    let controller = Controller::new(models, watcher::Config::default())
        .owns(deployments, owned.clone())
        .owns(services, owned.clone())
        .owns(pdbs, owned.clone())
        .owns(network_policies, owned)
        .reconcile_on(triggers)
        .graceful_shutdown_on(stopped(stop.clone()));

    let kubelet = args.kubelet();
    if kubelet.is_none() {
        tracing::warn!("the default/kubernetes Service's address is unknown (no --kubernetes-service, no KUBERNETES_SERVICE_HOST): models with measurement: node cannot be deployed");
    }
    let source = ClusterSource {
        models: controller.store(),
        pods: pod_reader,
        workload: args.workload(),
        kubelet: kubelet.clone(),
    };
    let reattester = Reattester::new(
        source,
        Arc::new(TlsAttester::new(args.attest_timeout)),
        store.clone(),
        args.reattest(),
        metrics.clone(),
        events_tx,
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "aver-controller".to_owned(),
            instance: Some(identity),
        },
    );
    let effects = Effects {
        client: client.clone(),
        recorder: recorder.clone(),
        metrics: metrics.clone(),
        reconcile: trigger_tx,
    };
    let context = Arc::new(Context {
        client,
        workload: args.workload(),
        kubelet,
        store,
        metrics,
        recorder: Some(recorder),
    });

    // Dropped (and so aborted) when this function returns or is dropped.
    let mut tasks = JoinSet::new();
    tasks.spawn(pod_cache);
    tasks.spawn(reattester.run(stopped(stop.clone())));
    tasks.spawn(effects.run(events_rx));

    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "controller started"
    );
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((model, _)) => tracing::debug!(%model, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
