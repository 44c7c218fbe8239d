//! `keelson store`: a raft-store member alone, with etcd's flag names and defaults.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use control::process::stop_signal;
use raft_store::{ClusterState, StoreConfig, StoreNode};

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Where the member keeps its data; defaults to `<name>.keelson`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on.
    #[arg(long, default_value = "http://localhost:2379")]
    listen_client_urls: String,
    /// Comma-separated client URLs of this member, as told to the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    advertise_client_urls: String,
    /// Comma-separated URLs to serve peers on.
    #[arg(long, default_value = "http://localhost:2380")]
    listen_peer_urls: String,
    /// Comma-separated peer URLs of this member, as told to the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Initial members, `name=peer-url,...`; defaults to this member alone.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` to form a cluster, `existing` to join one after `member add`.
    #[arg(long, default_value = "new")]
    initial_cluster_state: String,
    /// Token mixed into the cluster ID, so that separate clusters get separate IDs.
    #[arg(long, default_value = "keelson-cluster")]
    initial_cluster_token: String,
    /// Milliseconds between leader heartbeats.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Milliseconds without a heartbeat before a follower stands for election.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Applied entries between two snapshots (after which the log is purged); etcd 3.4's default.
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    #[arg(long, default_value_t = 5_000)]
    snapshot_catchup_entries: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    max_request_bytes: usize,
    /// Most operations in one Txn.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// How often watchers that asked for it get a progress notification (e.g. `10m`, `5s`, `500ms`).
    #[arg(long, default_value = "10m", value_parser = parse_duration_ms)]
    experimental_watch_progress_notify_interval: u64,
}

/// A duration such as `10m`, `5s` or `500ms`, in milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 10m, 5s or 500ms"))?;
    let scale = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if n == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(n * scale)
}

fn urls(flag: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let out: Vec<String> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if out.is_empty() {
        bail!("--{flag} must name at least one URL");
    }
    for u in &out {
        if !u.starts_with("http://") {
            bail!("--{flag}: {u:?} is not an http:// URL (TLS is not supported yet)");
        }
    }
    Ok(out)
}

fn parse_initial_cluster(value: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            bail!("--initial-cluster: {part:?} is not name=url");
        };
        let url = urls("initial-cluster", url)?.remove(0);
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, list)) => list.push(url),
            None => members.push((name.to_string(), vec![url])),
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster names no member");
    }
    Ok(members)
}

impl StoreArgs {
    pub fn to_config(&self) -> anyhow::Result<StoreConfig> {
        let peer_urls = urls("initial-advertise-peer-urls", &self.initial_advertise_peer_urls)?;
        let initial_cluster = match &self.initial_cluster {
            Some(v) => parse_initial_cluster(v)?,
            None => vec![(self.name.clone(), peer_urls.clone())],
        };
        let initial_cluster_state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => bail!("--initial-cluster-state must be `new` or `existing`, not {other:?}"),
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.keelson", self.name)));
        Ok(StoreConfig {
            name: self.name.clone(),
            data_dir,
            listen_client_urls: urls("listen-client-urls", &self.listen_client_urls)?,
            advertise_client_urls: urls("advertise-client-urls", &self.advertise_client_urls)?,
            listen_peer_urls: urls("listen-peer-urls", &self.listen_peer_urls)?,
            initial_advertise_peer_urls: peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token.clone(),
            heartbeat_interval_ms: self.heartbeat_interval,
            election_timeout_ms: self.election_timeout,
            snapshot_count: self.snapshot_count.max(1),
            snapshot_catchup_entries: self.snapshot_catchup_entries,
            request_timeout_ms: (3 * self.election_timeout).max(3_000),
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            watch_progress_notify_interval_ms: self.experimental_watch_progress_notify_interval,
        })
    }
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let node = StoreNode::open(config).await.context("cannot start the store member")?;
    raft_store::server::serve(node, stop_signal()).await.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped");
    Ok(())
}
