//! `keelson agent`: a node agent (kubelet). It runs containers through CRI — its own containerd,
//! or the runtime at `--container-runtime-endpoint`. With `--runtime hollow` it runs any number
//! of hollow nodes in one process instead, for scale tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use agent::hollow::HollowNodes;
use agent::AgentOptions;
use anyhow::Context;
use clap::{Args, ValueEnum};
use control::process::{parse_duration, stop_signal};
use k8s_openapi::api::core::v1::Taint;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Runtime {
    /// Real containers through CRI (containerd).
    Cri,
    /// Pods run in memory, without containers (thousands of nodes per process).
    Hollow,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The Kubernetes API's URL, e.g. http://127.0.0.1:6443.
    #[arg(long, conflicts_with = "kubeconfig")]
    server: Option<String>,
    /// A kubeconfig file to reach the Kubernetes API with.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (one node); defaults to the host's name.
    #[arg(long)]
    node_name: Option<String>,
    /// What runs the pods.
    #[arg(long, value_enum, default_value = "cri")]
    runtime: Runtime,
    #[command(flatten)]
    real: RealArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// The range services' cluster IPs come from (as the API server's flag): the proxy drops
    /// traffic to its addresses that no service holds.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The pods' range across the cluster: traffic to a service from outside it is masqueraded
    /// (default: the node's own pod range).
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Cluster DNS servers for ClusterFirst pods (kubelet's flag), ip,…; without them such pods
    /// get the node's resolv.conf.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::Ipv4Addr>,
    /// The cluster's DNS domain (kubelet's flag).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where a real node keeps its containerd, pod logs and network state.
    #[arg(long, default_value = "/var/lib/keelson/agent")]
    data_dir: PathBuf,
    /// OCI image archives (`*.tar`) imported at start, for clusters without a registry.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Hollow nodes this process runs.
    #[arg(long, default_value_t = 1)]
    hollow_nodes: usize,
    /// Names of hollow nodes: this prefix and the node's index.
    #[arg(long, default_value = "hollow-")]
    hollow_node_prefix: String,
    /// Zones the hollow nodes are spread over (label topology.kubernetes.io/zone=zone-N).
    #[arg(long, default_value_t = 1)]
    hollow_zones: usize,
    /// Each hollow node's cpu capacity.
    #[arg(long, default_value = "8")]
    hollow_cpu: String,
    /// Each hollow node's memory capacity.
    #[arg(long, default_value = "32Gi")]
    hollow_memory: String,
    /// Pods each hollow node accepts.
    #[arg(long, default_value_t = 110)]
    hollow_pods: u32,
    /// Each hollow node's ephemeral storage.
    #[arg(long, default_value = "100Gi")]
    hollow_ephemeral_storage: String,
    /// Labels to register the nodes with: key=value,…
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints to register the nodes with: key[=value]:Effect,…
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// The node lease's duration, in seconds (kubelet's flag).
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u32,
    /// How often the node lease is renewed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    node_lease_renew_interval: std::time::Duration,
    /// How often an unchanged node status is reported anyway (kubelet's flag).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    node_status_report_frequency: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// kube-proxy's nftables mode: one table, replaced atomically on each change.
    Nftables,
    /// No service proxy (another one serves the node).
    None,
}

/// The service proxy's flags (kube-proxy's names).
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// How services are routed on the node.
    #[arg(long, value_enum, default_value = "nftables")]
    proxy_mode: ProxyMode,
    /// The nftables table (family ip) the proxy owns; agents that share a network namespace
    /// need one each.
    #[arg(long, default_value = "keelson-proxy")]
    proxy_table: String,
    /// The `nft` binary.
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
}

impl ProxyArgs {
    /// These flags as `keelson agent` takes them, for an agent this process starts.
    pub fn argv(&self) -> Vec<String> {
        let mode = match self.proxy_mode {
            ProxyMode::Nftables => "nftables",
            ProxyMode::None => "none",
        };
        vec![
            "--proxy-mode".into(),
            mode.into(),
            "--proxy-table".into(),
            self.proxy_table.clone(),
            "--nft".into(),
            self.nft.display().to_string(),
        ]
    }

    /// The proxy's options: `service_cidr` is the range whose unallocated addresses are dropped,
    /// `cluster_cidr` the pods' range (the node's own when not given).
    pub fn options(
        &self,
        service_cidr: &str,
        cluster_cidr: Option<&str>,
    ) -> anyhow::Result<Option<agent::proxy::ProxyOptions>> {
        if self.proxy_mode == ProxyMode::None {
            return Ok(None);
        }
        let parse = |flag: &str, v: &str| v.parse::<agent::proxy::Cidr>().map_err(|e| anyhow::anyhow!("{flag}: {e}"));
        let service = service_cidr
            .split(',')
            .map(|c| parse("--service-cluster-ip-range", c.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let local = cluster_cidr.map(|c| parse("--cluster-cidr", c)).transpose()?;
        Ok(Some(agent::proxy::ProxyOptions {
            config: agent::proxy::Config {
                table: self.proxy_table.clone(),
                node_name: String::new(),
                service_cidrs: service,
                local_cidr: local,
                pod_cidr: None,
            },
            nft: self.nft.clone(),
        }))
    }
}

/// The flags of a real node (kubelet's names where kubelet has them).
#[derive(Args, Debug, Clone)]
pub struct RealArgs {
    /// The CRI server to run containers with, e.g. unix:///run/containerd/containerd.sock;
    /// without it the agent runs its own containerd under --data-dir.
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// The node's address (InternalIP); by default the address of the default route.
    #[arg(long)]
    node_ip: Option<String>,
    /// The address the agent's endpoint (logs, exec, port-forward) listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// The port of the agent's endpoint (0: any free port, reported in the node's status).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The node's pod range; by default the controller manager's node IPAM gives one.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The containerd binary the agent runs.
    #[arg(long, default_value = "containerd")]
    containerd: PathBuf,
    /// Where the CNI plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The bridge the node's pods are attached to.
    #[arg(long, default_value = "keelson0")]
    cni_bridge: String,
    /// Registry host configs for containerd: a directory of `<host>/hosts.toml` (plain-HTTP
    /// registries and mirrors are declared there).
    #[arg(long)]
    pub registry_config: Option<PathBuf>,
    /// Resources held back for Kubernetes' own daemons: cpu=…,memory=…,ephemeral-storage=…
    #[arg(long, value_delimiter = ',')]
    kube_reserved: Vec<String>,
    /// Resources held back for the operating system: cpu=…,memory=…,ephemeral-storage=…
    #[arg(long, value_delimiter = ',')]
    system_reserved: Vec<String>,
    /// The cgroup pods' cgroups go under (kubelet's flag); agents sharing a host need one each.
    #[arg(long, default_value = agent::cgroups::DEFAULT_ROOT)]
    pub cgroup_root: String,
    /// How pods reach pods on other nodes: host-gw routes each other node's pod range through
    /// its InternalIP (the nodes must share a link); none leaves it to another network plugin.
    #[arg(long, value_enum, default_value = "host-gw")]
    pub pod_routes: PodRoutes,
    /// Stop the node's pods and remove its service rules when the agent stops (by default they
    /// run on, and the next start adopts them).
    #[arg(long)]
    pub stop_pods_on_exit: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PodRoutes {
    /// Routes to other nodes' pod ranges through their InternalIPs (flannel's host-gw).
    HostGw,
    /// No routes: another network plugin connects the nodes.
    None,
}

impl RealArgs {
    /// The flags every node started by `keelson up --nodes` shares, as `keelson agent` takes
    /// them; what names one node (its address, range, runtime) is refused.
    pub fn shared_argv(&self) -> anyhow::Result<Vec<String>> {
        for (flag, given) in [
            ("--container-runtime-endpoint", self.container_runtime_endpoint.is_some()),
            ("--node-ip", self.node_ip.is_some()),
            ("--pod-cidr", self.pod_cidr.is_some()),
        ] {
            if given {
                anyhow::bail!("{flag} names one node; with --nodes each node gets its own");
            }
        }
        let mut argv: Vec<String> = vec![
            "--address".into(),
            self.address.to_string(),
            "--port".into(),
            self.port.to_string(),
            "--containerd".into(),
            self.containerd.display().to_string(),
            "--cni-bin-dir".into(),
            self.cni_bin_dir.display().to_string(),
            "--cni-bridge".into(),
            self.cni_bridge.clone(),
            "--pod-routes".into(),
            match self.pod_routes {
                PodRoutes::HostGw => "host-gw".into(),
                PodRoutes::None => "none".into(),
            },
        ];
        if let Some(dir) = &self.registry_config {
            argv.extend(["--registry-config".into(), dir.display().to_string()]);
        }
        for (flag, values) in [("--kube-reserved", &self.kube_reserved), ("--system-reserved", &self.system_reserved)] {
            if !values.is_empty() {
                argv.extend([flag.to_string(), values.join(",")]);
            }
        }
        Ok(argv)
    }

    pub fn node(
        &self,
        name: String,
        data_dir: PathBuf,
        image_dir: Option<PathBuf>,
    ) -> anyhow::Result<agent::real::RealNode> {
        let kube = agent::machine::parse_reserved("--kube-reserved", &self.kube_reserved)?;
        let system = agent::machine::parse_reserved("--system-reserved", &self.system_reserved)?;
        let reserved = agent::machine::Resources {
            cpu_millis: kube.cpu_millis + system.cpu_millis,
            memory_bytes: kube.memory_bytes + system.memory_bytes,
            ephemeral_storage_bytes: kube.ephemeral_storage_bytes + system.ephemeral_storage_bytes,
        };
        Ok(agent::real::RealNode {
            name,
            node_ip: self.node_ip.clone(),
            data_dir,
            endpoint: self.container_runtime_endpoint.as_deref().map(agent::real::endpoint_path).transpose()?,
            containerd_binary: self.containerd.clone(),
            cni_bin_dir: self.cni_bin_dir.clone(),
            registry_config: self.registry_config.clone(),
            image_dir,
            pod_cidr: self.pod_cidr.clone(),
            bridge: self.cni_bridge.clone(),
            reserved,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            stop_pods_on_exit: self.stop_pods_on_exit,
            proxy: None,
            pod_routes: self.pod_routes == PodRoutes::HostGw,
            listen: std::net::SocketAddr::new(self.address, self.port),
        })
    }
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (k, v) = item.split_once('=').with_context(|| format!("--node-labels: {item:?} is not key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn parse_taints(items: &[String]) -> anyhow::Result<Vec<Taint>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (kv, effect) = item
                .rsplit_once(':')
                .with_context(|| format!("--register-with-taints: {item:?} is not key[=value]:Effect"))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                anyhow::bail!(
                    "--register-with-taints: {item:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
                );
            }
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (kv, None),
            };
            if key.is_empty() {
                anyhow::bail!("--register-with-taints: {item:?} has no key");
            }
            Ok(Taint { key: key.into(), value, effect: effect.into(), time_added: None })
        })
        .collect()
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let client = agent::client::connect(args.server.as_deref(), args.kubeconfig.as_deref()).await?;
    let name =
        args.node_name.clone().or_else(|| if args.hollow_nodes == 1 { control::process::hostname() } else { None });
    let options = AgentOptions {
        cgroup_root: args.real.cgroup_root.clone(),
        lease_duration: std::time::Duration::from_secs(args.node_lease_duration_seconds.into()),
        lease_renew_interval: args.node_lease_renew_interval,
        status_report_frequency: args.node_status_report_frequency,
        cluster_dns: (!args.cluster_dns.is_empty()).then(|| agent::dns::ClusterDns {
            servers: args.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
            domain: args.cluster_domain.clone(),
        }),
        ..AgentOptions::default()
    };
    match args.runtime {
        Runtime::Cri => {
            let name = name.context("the host has no name in /etc/hostname; give --node-name")?;
            let mut node = args.real.node(name, args.data_dir, args.image_dir)?;
            node.labels = parse_labels(&args.node_labels)?;
            node.taints = parse_taints(&args.register_with_taints)?;
            node.proxy = args.proxy.options(&args.service_cluster_ip_range, args.cluster_cidr.as_deref())?;
            agent::real::run(client, node, options, stop_signal()).await
        }
        Runtime::Hollow => {
            let nodes = HollowNodes {
                prefix: args.hollow_node_prefix,
                name,
                count: args.hollow_nodes,
                zones: args.hollow_zones,
                cpu: args.hollow_cpu,
                memory: args.hollow_memory,
                pods: args.hollow_pods,
                ephemeral_storage: args.hollow_ephemeral_storage,
                labels: parse_labels(&args.node_labels)?,
                taints: parse_taints(&args.register_with_taints)?,
            }
            .build()
            .map_err(anyhow::Error::msg)?;
            agent::run(client, nodes, options, stop_signal()).await
        }
    }
}
