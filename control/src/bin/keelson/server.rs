//! `keelson server`: a store member with a Kubernetes API replica beside it, and a scheduler
//! and a controller manager replica (unless `--disable scheduler,controller-manager`) that talk
//! to that API like any other client.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use control::apiserver::store::Store;
use control::controllers::ControllerFlags;
use control::election::ElectionFlags;
use control::process::stop_signal;

use crate::apiserver::{run_api, ApiArgs};
use crate::store::StoreArgs;

/// How long the components on top get to stop (and release their leases) before the API and the
/// store stop under them.
const COMPONENTS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// Components not to run in this process (Kubernetes' names): `scheduler`,
    /// `controller-manager`.
    #[arg(long, value_delimiter = ',', value_parser = ["scheduler", "controller-manager"])]
    disable: Vec<String>,
    /// The scheduler's KubeSchedulerConfiguration file.
    #[arg(long)]
    scheduler_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    controllers: ControllerFlags,
    #[command(flatten)]
    election: ElectionFlags,
}

fn waiter(rx: &tokio::sync::watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.store.to_config()?;
    let scheduling = if args.disable.iter().any(|d| d == "scheduler") {
        None
    } else {
        Some(crate::scheduler::load_config(args.scheduler_config.as_deref(), "--scheduler-config")?)
    };
    let managing = !args.disable.iter().any(|d| d == "controller-manager");
    if managing {
        args.controllers.enabled().map_err(anyhow::Error::msg)?;
    }
    let node = raft_store::StoreNode::open(config).await.context("cannot start the store member")?;
    // The API replica calls its member directly rather than through the member's client port.
    let local_store = Store::local(raft_store::server::client_routes(node.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (components_tx, components_rx) = tokio::sync::watch::channel(false);
    let store = tokio::spawn(raft_store::server::serve(node, waiter(&stop_rx)));
    let mut components = Vec::new();
    if let Some(config) = scheduling {
        let client = agent::client::connect(Some(&args.api.local_url()), None).await?;
        let election = args.election.clone();
        let stop = waiter(&components_rx);
        components.push(("scheduler", tokio::spawn(async move { crate::scheduler::run_scheduler(client, &election, config, stop).await })));
    }
    if managing {
        let client = agent::client::connect(Some(&args.api.local_url()), None).await?;
        let (election, flags) = (args.election.clone(), args.controllers.clone());
        let stop = waiter(&components_rx);
        components.push((
            "controller manager",
            tokio::spawn(async move { crate::controller_manager::run_controller_manager(client, &election, flags, stop).await }),
        ));
    }
    let api = run_api(&args.api, local_store, "the member in this process", waiter(&stop_rx));
    tokio::pin!(api);
    let outcome = tokio::select! {
        r = &mut api => Some(r),
        _ = stop_signal() => None,
    };
    let _ = components_tx.send(true);
    for (name, task) in components {
        match tokio::time::timeout(COMPONENTS_STOP_TIMEOUT, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = format!("{e:#}"), "the {name} stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the {name} task failed"),
            Err(_) => tracing::warn!("the {name} did not stop in time"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    let _ = stop_tx.send(true);
    let outcome = match outcome {
        Some(r) => r,
        None => api.await,
    };
    store.await.context("the store task failed")?.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped");
    outcome
}
