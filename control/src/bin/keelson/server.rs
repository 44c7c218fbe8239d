//! `keelson server`: a store member with a Kubernetes API replica beside it.

use anyhow::Context;
use clap::Args;
use control::process::stop_signal;

use crate::apiserver::{run_api, ApiArgs};
use crate::store::StoreArgs;

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.store.to_config()?;
    let endpoints = config.listen_client_urls.clone();
    let node = raft_store::StoreNode::open(config).await.context("cannot start the store member")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let store = tokio::spawn(raft_store::server::serve(node, wait(stop_rx.clone())));
    let api = run_api(&args.api, endpoints, wait(stop_rx));
    tokio::pin!(api);
    let outcome = tokio::select! {
        r = &mut api => r,
        _ = stop_signal() => {
            let _ = stop_tx.send(true);
            api.await
        }
    };
    let _ = stop_tx.send(true);
    store.await.context("the store task failed")?.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped");
    outcome
}
