//! `keelson up`: a whole cluster in one process tree — a single-member store, the API server,
//! the scheduler, the controller manager (with node IPAM) and a real agent with its own
//! containerd — with everything under one data directory. Ctrl-C stops it all, pods included;
//! the next `keelson up` over the same directory resumes the cluster and runs its pods again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};

use crate::agent::{ProxyArgs, RealArgs};
use crate::server::{server_with, DnsFlags, Extra, ServerArgs};

/// How long the agent gets to stop its pods and its containerd.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Everything the cluster keeps: the store, the agent's containerd and pod logs, the kubeconfig.
    #[arg(long, default_value = "/var/lib/keelson")]
    data_dir: PathBuf,
    /// Where the admin kubeconfig goes (default: <data-dir>/kubeconfig.yaml).
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Address the Kubernetes API is served on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_listen: String,
    /// The store's client URL (etcd's API).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// The store's peer URL.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// The range pods' addresses come from (a /24 per node).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The range services' cluster IPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The node's name (default: the host's name).
    #[arg(long)]
    node_name: Option<String>,
    /// OCI image archives imported at start (default: <data-dir>/images, where scripts/setup
    /// puts the images examples/ use).
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[command(flatten)]
    real: RealArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    dns: DnsFlags,
}

/// `keelson server`'s flags, parsed from the arguments `up` chooses.
#[derive(Parser)]
struct ServerCli {
    #[command(flatten)]
    server: ServerArgs,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("keelson up runs containers (containerd, network namespaces) and needs root");
    }
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let kubeconfig = args.write_kubeconfig.clone().unwrap_or_else(|| data.join("kubeconfig.yaml"));
    let store_dir = data.join("store");
    let path = |p: &PathBuf| p.display().to_string();
    let server_argv: Vec<String> = [
        "keelson-server",
        "--data-dir",
        &path(&store_dir),
        "--listen-client-urls",
        &args.listen_client_urls,
        "--advertise-client-urls",
        &args.listen_client_urls,
        "--listen-peer-urls",
        &args.listen_peer_urls,
        "--initial-advertise-peer-urls",
        &args.listen_peer_urls,
        "--api-listen",
        &args.api_listen,
        "--write-kubeconfig",
        &path(&kubeconfig),
        "--service-cluster-ip-range",
        &args.service_cluster_ip_range,
        "--allocate-node-cidrs",
        "--cluster-cidr",
        &args.cluster_cidr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = ServerCli::try_parse_from(server_argv).context("keelson up's server flags")?.server;

    let name = args.node_name.clone().or_else(control::process::hostname).unwrap_or_else(|| "keelson".into());
    // Pods reach the cluster's DNS at their node's address, this host.
    server.dns = DnsFlags { advertise_node: Some(name.clone()), ..args.dns.clone() };
    let options = agent::AgentOptions {
        cluster_dns: Some(agent::dns::ClusterDns {
            servers: vec![args.dns.service_ip(&args.service_cluster_ip_range)?.to_string()],
            domain: args.dns.cluster_domain.clone(),
        }),
        ..agent::AgentOptions::default()
    };
    let image_dir = args.image_dir.clone().or_else(|| Some(data.join("images")).filter(|d| d.is_dir()));
    let mut node = args.real.node(name, data.join("agent"), image_dir)?;
    node.stop_pods_on_exit = true;
    node.proxy = args.proxy.options(&args.service_cluster_ip_range, Some(&args.cluster_cidr))?;
    let agent = Extra {
        name: "agent",
        stop_within: AGENT_STOP_TIMEOUT,
        run: Box::new(move |client, stop| Box::pin(agent::real::run(client, node, options, stop))),
    };
    eprintln!("keelson: the cluster's data is in {}; kubectl's config: export KUBECONFIG={}", data.display(), kubeconfig.display());
    server_with(server, vec![agent]).await
}
