//! `keelson scheduler`: a scheduler replica (any number run; one leads through a Lease).

use std::path::PathBuf;

use clap::Args;
use control::election::ElectionFlags;
use control::process::stop_signal;
use control::scheduler::config::SchedulerConfiguration;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// The Kubernetes API's URL, e.g. http://127.0.0.1:6443.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub server: Option<String>,
    /// A kubeconfig file to reach the Kubernetes API with.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A KubeSchedulerConfiguration file (YAML or JSON): profiles, plugins, weights.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub election: ElectionFlags,
}

/// Reads the scheduler's configuration file, if one is given; `flag` names it in errors.
pub fn load_config(path: Option<&std::path::Path>, flag: &str) -> anyhow::Result<SchedulerConfiguration> {
    match path {
        Some(path) => SchedulerConfiguration::from_file(path).map_err(|e| anyhow::anyhow!("{flag} {e}")),
        None => Ok(SchedulerConfiguration::default()),
    }
}

/// Runs a scheduler over `client` until `stop` resolves; the lease is released on the way out.
pub async fn run_scheduler(
    client: kube::Client,
    election: &ElectionFlags,
    config: SchedulerConfiguration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    control::election::run_elected(
        election,
        client.clone(),
        "kube-scheduler",
        stop,
        |leadership, identity, stop| async move {
            control::scheduler::run::run(client, config, leadership, &identity, stop).await
        },
    )
    .await
}

pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref(), "--config")?;
    let client = agent::client::connect(args.server.as_deref(), args.kubeconfig.as_deref()).await?;
    run_scheduler(client, &args.election, config, stop_signal()).await
}
