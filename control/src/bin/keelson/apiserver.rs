//! `keelson apiserver`: an API replica over existing store endpoints (and the API half of
//! `keelson server`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use control::apiserver::{self as api, store::Store, Api};
use control::process::{parse_duration, stop_signal};

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Address the Kubernetes API is served on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_listen: String,
    /// Write a kubeconfig for kubectl naming this API server to this file.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// The range services' cluster IPs are allocated from (the same on every API replica).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The range services' node ports are allocated from (the same on every API replica).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// How long events are kept after their last write (Kubernetes' --event-ttl), as 1h, 30m,
    /// 90s, 1h30m or plain seconds.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: std::time::Duration,
}

impl ApiArgs {
    pub fn service_cluster_ip_range(&self) -> &str {
        &self.service_cluster_ip_range
    }

    /// The URL a client in this process reaches the API at (loopback for a wildcard address).
    pub fn local_url(&self) -> String {
        let addr = self.api_listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
        format!("http://{addr}")
    }
}

#[derive(Args, Debug)]
pub struct ApiserverArgs {
    /// Comma-separated client URLs of the store (Keelson's or etcd's).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    store_endpoints: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// How long requests under way may take to finish once the API server is asked to stop, in
/// milliseconds.
const SHUTDOWN_GRACE_MS: u64 = 3_000;

/// How long the API replica keeps trying to create the system objects (namespaces, priority
/// classes) while the store comes up.
const STORE_READY_TIMEOUT_MS: u64 = 60_000;

pub async fn run_api(
    args: &ApiArgs,
    store: Store,
    store_name: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ranges = api::alloc::Ranges::parse(&args.service_cluster_ip_range, &args.service_node_port_range)
        .map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(&args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.api_listen))?;
    let address = listener.local_addr()?;
    let api = Api::new(store, ranges, args.event_ttl);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(STORE_READY_TIMEOUT_MS);
    // Asked to stop while still waiting for the store: nothing to serve.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    loop {
        if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
            return Ok(());
        }
        let ready = async {
            api.ensure_system_objects().await?;
            api.detect_store().await
        };
        match ready.await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e.message, "waiting for the store");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = shutdown.clone() => return Ok(()),
                }
            }
            Err(e) => anyhow::bail!("the store at {store_name} is not usable: {}", e.message),
        }
    }
    if let Some(path) = &args.write_kubeconfig {
        std::fs::write(path, api::kubeconfig(&format!("http://{address}")))
            .with_context(|| format!("cannot write the kubeconfig to {}", path.display()))?;
    }
    tracing::info!(%address, store = store_name, "serving the Kubernetes API");
    // Once asked to stop, requests under way get a grace period; watches never end on their own,
    // so whatever is still open after it is closed.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = api::serve(listener, api, async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    tokio::pin!(serving);
    let grace_over = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = &mut serving => served.context("the API server failed"),
        _ = grace_over => {
            tracing::info!(grace_ms = SHUTDOWN_GRACE_MS, "closing the connections still open");
            Ok(())
        }
    }
}

pub async fn apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> =
        args.store_endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let store = Store::connect(&endpoints)?;
    run_api(&args.api, store, &endpoints.join(","), stop_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
