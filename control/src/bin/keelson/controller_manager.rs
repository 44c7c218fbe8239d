//! `keelson controller-manager`: a controller manager replica (any number run; one leads
//! through a Lease).

use std::path::PathBuf;

use clap::Args;
use control::controllers::ControllerFlags;
use control::election::ElectionFlags;
use control::process::stop_signal;

#[derive(Args, Debug)]
pub struct ControllerManagerArgs {
    /// The Kubernetes API's URL, e.g. http://127.0.0.1:6443.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub server: Option<String>,
    /// A kubeconfig file to reach the Kubernetes API with.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub controllers: ControllerFlags,
    #[command(flatten)]
    pub election: ElectionFlags,
}

/// Runs the controllers over `client` until `stop` resolves; the lease is released on the way out.
pub async fn run_controller_manager(
    client: kube::Client,
    election: &ElectionFlags,
    flags: ControllerFlags,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    flags.enabled().map_err(anyhow::Error::msg)?;
    control::election::run_elected(
        election,
        client.clone(),
        "kube-controller-manager",
        stop,
        |leadership, identity, stop| async move {
            control::controllers::run(client, &flags, leadership, &identity, stop).await
        },
    )
    .await
}

pub async fn controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    args.controllers.enabled().map_err(anyhow::Error::msg)?;
    let client = agent::client::connect(args.server.as_deref(), args.kubeconfig.as_deref()).await?;
    let mut flags = args.controllers;
    if flags.root_ca_file.is_none() {
        flags.root_ca = args.kubeconfig.as_deref().and_then(kubeconfig_ca);
    }
    run_controller_manager(client, &args.election, flags, stop_signal()).await
}

/// The CA the kubeconfig's current cluster trusts, PEM.
fn kubeconfig_ca(path: &std::path::Path) -> Option<String> {
    use base64::Engine;
    let config = kube::config::Kubeconfig::read_from(path).ok()?;
    let context = config.current_context.as_deref()?;
    let cluster = config.contexts.iter().find(|c| c.name == context)?.context.as_ref()?.cluster.clone();
    let cluster = config.clusters.iter().find(|c| c.name == cluster)?.cluster.as_ref()?;
    if let Some(data) = &cluster.certificate_authority_data {
        return base64::engine::general_purpose::STANDARD.decode(data).ok().and_then(|b| String::from_utf8(b).ok());
    }
    std::fs::read_to_string(cluster.certificate_authority.as_deref()?).ok()
}
