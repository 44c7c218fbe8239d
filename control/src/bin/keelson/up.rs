//! `keelson up`: a whole cluster in one process tree — a single-member store, the API server,
//! the scheduler, the controller manager (with node IPAM) and a real agent with its own
//! containerd — with everything under one data directory. Ctrl-C stops it all, pods included;
//! the next `keelson up` over the same directory resumes the cluster and runs its pods again.
//! With `--nodes N` (N > 1) the nodes are N `keelson agent` processes, each in its own network
//! namespace standing for its own host (`control::nodenet`), linked by a bridge on this host.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use std::os::unix::process::CommandExt;

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
    /// How many nodes run: one runs in this process on this host; more run as agents of their
    /// own, each in its own network namespace with its own containerd, bridge and pod range,
    /// routing to each other's pods (host-gw).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=control::nodenet::NODES_MAX as i64))]
    nodes: u8,
    /// With --nodes: what names the nodes (`<prefix>1`…, also their network namespaces), the
    /// bridge `<prefix>br` and the links `<prefix>v1`….
    #[arg(long, default_value = "keelson")]
    node_prefix: String,
    /// With --nodes: the nodes' shared /24 (the bridge takes .1, node k .10+k).
    #[arg(long, default_value = "10.201.0.0/24")]
    node_network: String,
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
    if args.nodes > 1 {
        return up_nodes(args).await;
    }
    let data = &args.data_dir;
    let kubeconfig = args.write_kubeconfig.clone().unwrap_or_else(|| data.join("kubeconfig.yaml"));
    let mut server = server_args(&args, &args.api_listen)?;

    let name = args.node_name.clone().or_else(control::process::hostname).unwrap_or_else(|| "keelson".into());
    // Pods reach the cluster's DNS at their node's address, this host.
    server.dns = DnsFlags { advertise_node: Some(name.clone()), ..args.dns.clone() };
    let options = agent::AgentOptions {
        cgroup_root: args.real.cgroup_root.clone(),
        cluster_dns: Some(agent::dns::ClusterDns {
            servers: vec![args.dns.service_ip(&args.service_cluster_ip_range)?.to_string()],
            domain: args.dns.cluster_domain.clone(),
        }),
        ..agent::AgentOptions::default()
    };
    let mut node = args.real.node(name, data.join("agent"), image_dir(&args))?;
    node.stop_pods_on_exit = true;
    node.proxy = args.proxy.options(&args.service_cluster_ip_range, Some(&args.cluster_cidr))?;
    let identity = control::pki::Identity::node(&node.name);
    let agent = Extra {
        name: "agent",
        identity,
        stop_within: AGENT_STOP_TIMEOUT,
        run: Box::new(move |client, stop| Box::pin(agent::real::run(client, node, options, stop))),
    };
    eprintln!(
        "keelson: the cluster's data is in {}; kubectl's config: export KUBECONFIG={}",
        data.display(),
        kubeconfig.display()
    );
    server_with(server, vec![agent]).await
}

fn image_dir(args: &UpArgs) -> Option<PathBuf> {
    args.image_dir.clone().or_else(|| Some(args.data_dir.join("images")).filter(|d| d.is_dir()))
}

/// Where `keelson up` keeps its store (and, under it, the cluster's CAs).
fn store_dir(data: &std::path::Path) -> PathBuf {
    data.join("store")
}

/// The server's flags for `keelson up`'s control plane, its API at `api_listen`.
fn server_args(args: &UpArgs, api_listen: &str) -> anyhow::Result<ServerArgs> {
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let kubeconfig = args.write_kubeconfig.clone().unwrap_or_else(|| data.join("kubeconfig.yaml"));
    let store_dir = store_dir(data);
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
        api_listen,
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
    Ok(ServerCli::try_parse_from(server_argv).context("keelson up's server flags")?.server)
}

/// `keelson up --nodes N`: the control plane in this process, its API and cluster DNS on the
/// nodes' bridge, and N agents, each in its own network namespace. Stopping stops the agents
/// (their pods first) and removes the namespaces, links and bridge.
async fn up_nodes(args: UpArgs) -> anyhow::Result<()> {
    if args.node_name.is_some() {
        anyhow::bail!("--node-name names one node; with --nodes the nodes are named --node-prefix and a number");
    }
    let net = control::nodenet::NodeNetwork::new(&args.node_prefix, &args.node_network)?;
    let shared = args.real.shared_argv()?;
    // Held until this process exits: the next run that takes it knows leftovers for crashed.
    let lock = net.claim()?;
    net.create_bridge()?;
    let api: std::net::SocketAddr =
        args.api_listen.parse().with_context(|| format!("--api-listen {:?} is not address:port", args.api_listen))?;
    // The nodes reach the API on their link to this host.
    let api = if api.ip().is_loopback() { std::net::SocketAddr::new(net.gateway().into(), api.port()) } else { api };
    let mut server = server_args(&args, &api.to_string())?;
    server.dns = DnsFlags {
        cluster_dns_advertise_address: Some(args.dns.cluster_dns_advertise_address.unwrap_or(net.gateway())),
        ..args.dns.clone()
    };
    let dns_ip = args.dns.service_ip(&args.service_cluster_ip_range)?;
    let api_url = format!(
        "https://{}",
        if api.ip().is_unspecified() { std::net::SocketAddr::new(net.gateway().into(), api.port()) } else { api }
    );
    let binary = std::env::current_exe().context("finding the keelson binary")?;
    // The server opens the same CAs; each node's agent gets a client certificate of its own.
    let pki = control::pki::Pki::open(&store_dir(&args.data_dir).join("tls")).context("the cluster's certificates")?;
    let mut agents = Vec::new();
    for k in 1..=args.nodes as usize {
        let name = net.node_name(k);
        let dir = args.data_dir.join("nodes").join(&name);
        let kubeconfig = dir.join("kubeconfig.yaml");
        control::pki::write_private(&kubeconfig, &pki.kubeconfig(&api_url, &control::pki::Identity::node(&name))?)?;
        let mut argv: Vec<String> = vec!["agent".into(), "--kubeconfig".into(), kubeconfig.display().to_string()];
        argv.extend(["--node-name".into(), name.clone()]);
        argv.extend(["--node-ip".into(), net.node_ip(k).to_string(), "--data-dir".into(), dir.display().to_string()]);
        argv.extend(["--cgroup-root".into(), net.cgroup_root(k), "--stop-pods-on-exit".into()]);
        argv.extend([
            "--cluster-cidr".into(),
            args.cluster_cidr.clone(),
            "--service-cluster-ip-range".into(),
            args.service_cluster_ip_range.clone(),
        ]);
        argv.extend([
            "--cluster-dns".into(),
            dns_ip.to_string(),
            "--cluster-domain".into(),
            args.dns.cluster_domain.clone(),
        ]);
        if let Some(images) = image_dir(&args) {
            argv.extend(["--image-dir".into(), images.display().to_string()]);
        }
        argv.extend(shared.iter().cloned());
        argv.extend(args.proxy.argv());
        agents.push((k, name, dir, argv));
    }
    let nodes = Extra {
        name: "nodes",
        // Its client goes unused: the nodes' agents have their own.
        identity: control::pki::Identity::new(control::pki::ADMIN_USER, &[control::pki::MASTERS_GROUP]),
        stop_within: AGENT_STOP_TIMEOUT + Duration::from_secs(15),
        run: Box::new(move |_client, stop| Box::pin(run_nodes(net, binary, agents, stop, lock))),
    };
    let kubeconfig = args.write_kubeconfig.clone().unwrap_or_else(|| args.data_dir.join("kubeconfig.yaml"));
    eprintln!(
        "keelson: {} nodes; the cluster's data is in {}; kubectl's config: export KUBECONFIG={}",
        args.nodes,
        args.data_dir.display(),
        kubeconfig.display()
    );
    server_with(server, vec![nodes]).await
}

/// Starts the nodes' agents and, once `stop` resolves, stops them (SIGTERM: each stops its pods
/// and containerd) and removes what the nodes were.
async fn run_nodes(
    net: control::nodenet::NodeNetwork,
    binary: PathBuf,
    agents: Vec<(usize, String, PathBuf, Vec<String>)>,
    stop: crate::server::Stop,
    _lock: std::fs::File,
) -> anyhow::Result<()> {
    let mut children = Vec::new();
    let started = async {
        for (k, name, dir, argv) in &agents {
            net.create_node(*k)?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let log_path = dir.join("agent.log");
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
            let mut command = net.command(*k, &binary)?;
            command.args(argv).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
            let child = tokio::process::Command::from(command).spawn().with_context(|| format!("starting node {name}'s agent"))?;
            tracing::info!(node = %name, pid = child.id(), ip = %net.node_ip(*k), log = %log_path.display(), "node started");
            children.push((name.clone(), child));
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = started {
        stop_nodes(&net, &mut children).await;
        return Err(e);
    }
    tokio::pin!(stop);
    // A node whose agent exits (killed with its namespace, as a host is lost) stays down.
    let mut watching: Vec<bool> = vec![true; children.len()];
    loop {
        let exited = {
            let exits: Vec<_> = children
                .iter_mut()
                .zip(watching.iter())
                .enumerate()
                .filter(|(_, (_, w))| **w)
                .map(|(i, ((_, c), _))| Box::pin(async move { (i, c.wait().await) }))
                .collect();
            let any = !exits.is_empty();
            tokio::select! {
                _ = &mut stop => None,
                (r, _, _) = futures::future::select_all(exits), if any => Some(r),
            }
        };
        let Some((i, status)) = exited else { break };
        watching[i] = false;
        tracing::warn!(node = %children[i].0, status = ?status, "the node's agent exited; the node stays down");
    }
    stop_nodes(&net, &mut children).await;
    Ok(())
}

async fn stop_nodes(net: &control::nodenet::NodeNetwork, children: &mut [(String, tokio::process::Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill has no memory effects.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (name, child) in children.iter_mut() {
        match tokio::time::timeout(AGENT_STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(node = %name, error = %e, "cannot wait for the agent"),
            Err(_) => {
                tracing::warn!(node = %name, "the agent did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
    let net = net.clone();
    match tokio::task::spawn_blocking(move || net.remove_all()).await {
        Ok(Ok(())) => tracing::info!("nodes removed"),
        Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "the nodes were not all removed"),
        Err(e) => tracing::warn!(error = %e, "removing the nodes failed"),
    }
}
