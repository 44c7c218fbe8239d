//! A real node: its resources measured from the machine, a pod CIDR from the controller
//! manager's node IPAM (or given), containers run by containerd through CRI — the agent's own
//! containerd (configured and started here, as k3s runs one) or one at a given endpoint.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::Api;

use crate::containerd::{self, Containerd};
use crate::cri::CriRuntime;
use crate::machine::{self, Resources};
use crate::node::{self, NodeSetup};
use crate::runtime::RuntimeService;
use crate::AgentOptions;

/// How often the agent looks for the pod CIDR the node IPAM gives its node.
const POD_CIDR_POLL: Duration = Duration::from_millis(200);
/// How often it says it is still waiting.
const POD_CIDR_NAG: Duration = Duration::from_secs(10);
/// How long a runtime at an endpoint may take to report ready.
const RUNTIME_READY_WITHIN: Duration = Duration::from_secs(60);
/// Pods starting at once on a real node (measured with `pod-startup`: a burst of 100 pods on
/// 2 cores started faster 4 at a time than 64 at a time).
const STARTS_IN_FLIGHT_MAX: usize = 4;
/// How long pods' containers get to stop when the agent stops them on its way out.
const EXIT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RealNode {
    pub name: String,
    /// The node's InternalIP; found from the default route when not given.
    pub node_ip: Option<String>,
    /// Everything the agent keeps: containerd's root and state, pod logs, IPAM state.
    pub data_dir: PathBuf,
    /// A CRI server's unix socket; without one the agent runs its own containerd.
    pub endpoint: Option<PathBuf>,
    pub containerd_binary: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// containerd's registry host configs (`<host>/hosts.toml`).
    pub registry_config: Option<PathBuf>,
    /// OCI archives imported at start.
    pub image_dir: Option<PathBuf>,
    /// The node's pod range; from the node IPAM when not given.
    pub pod_cidr: Option<String>,
    /// The pods' bridge on this host.
    pub bridge: String,
    pub reserved: Resources,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Where the agent's endpoint listens (kubelet's `--address` and `--port`; port 0 takes any).
    pub listen: std::net::SocketAddr,
    /// Whether stopping the agent stops its pods too (`keelson up`, which also removes its
    /// service rules); a plain agent leaves them running for the next start to adopt, as kubelet
    /// does, and its rules in place so that traffic flows on.
    pub stop_pods_on_exit: bool,
    /// The service proxy, unless another one serves the node.
    pub proxy: Option<crate::proxy::ProxyOptions>,
    /// Whether the agent routes other nodes' pod ranges through their InternalIPs (host-gw).
    pub pod_routes: bool,
}

/// The socket path of a `unix://` endpoint (kubelet's `--container-runtime-endpoint`).
pub fn endpoint_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    match endpoint.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => anyhow::bail!("--container-runtime-endpoint {endpoint:?}: expected unix:///path/to/socket"),
    }
}

impl RealNode {
    fn setup(&self) -> anyhow::Result<NodeSetup> {
        let capacity = machine::capacity(&self.data_dir)?;
        let (capacity, allocatable) = machine::node_resources(capacity, self.reserved);
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), std::env::consts::OS.into());
        labels.insert("kubernetes.io/arch".into(), machine::architecture());
        Ok(NodeSetup {
            name: self.name.clone(),
            labels,
            taints: self.taints.clone(),
            capacity,
            allocatable,
            pod_cidr: self.pod_cidr.clone(),
            internal_ip: self.node_ip.clone().unwrap_or_else(machine::default_address),
            hostname: self.name.clone(),
            system: machine::system_info(node::KUBELET_VERSION),
            not_ready: Some("container runtime is starting".into()),
            kubelet_port: self.listen.port(),
            measure_dir: Some(self.data_dir.clone()),
            observed: Default::default(),
            since: Default::default(),
        })
    }
}

/// Waits until the node has a pod CIDR (the controller manager's node IPAM gives it).
async fn wait_pod_cidr(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut nagged = Instant::now();
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(n)) => {
                if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    return Ok(cidr);
                }
            }
            Ok(None) => anyhow::bail!("node {name} was deleted while waiting for its pod CIDR"),
            Err(e) => tracing::debug!(error = %e, "cannot read the node"),
        }
        if nagged.elapsed() >= POD_CIDR_NAG {
            tracing::info!(
                node = name,
                "waiting for a pod CIDR (does the controller manager run with --allocate-node-cidrs?)"
            );
            nagged = Instant::now();
        }
        tokio::time::sleep(POD_CIDR_POLL).await;
    }
}

async fn wait_ready(runtime: &CriRuntime) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUNTIME_READY_WITHIN;
    loop {
        match runtime.ready().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.context("the container runtime is not ready")),
            Err(_) => tokio::time::sleep(POD_CIDR_POLL).await,
        }
    }
}

/// Runs the node until `stop` resolves. The agent's own containerd is stopped then; its
/// containers run on, and the next start adopts them.
pub async fn run(
    client: kube::Client,
    node: RealNode,
    mut options: AgentOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    std::fs::create_dir_all(&node.data_dir).with_context(|| format!("creating {}", node.data_dir.display()))?;
    let mut setup = node.setup()?;
    if let Some(p) = &node.proxy {
        crate::proxy::check(&p.nft).await?;
    }
    let listener = tokio::net::TcpListener::bind(node.listen)
        .await
        .with_context(|| format!("the agent's endpoint cannot listen on {}", node.listen))?;
    setup.kubelet_port = listener.local_addr()?.port();
    let prepare = async {
        let (runtime, containerd) = match &node.endpoint {
            Some(socket) => {
                let runtime = CriRuntime::connect(socket)
                    .await
                    .with_context(|| format!("connecting to the runtime at {}", socket.display()))?;
                wait_ready(&runtime).await?;
                if let Some(dir) = &node.image_dir {
                    anyhow::bail!(
                        "--image-dir {} needs the agent's own containerd (no --container-runtime-endpoint)",
                        dir.display()
                    );
                }
                (runtime, None)
            }
            None => {
                let cidr = match &setup.pod_cidr {
                    Some(c) => c.clone(),
                    None => {
                        // Registered (not ready) first, so that the node IPAM gives it a range.
                        crate::register_with_retry(&client, &setup).await?;
                        wait_pod_cidr(&client, &setup.name).await?
                    }
                };
                tracing::info!(pod_cidr = %cidr, "the node's pod range");
                setup.pod_cidr = Some(cidr.clone());
                let mut o = containerd::Options::new(&node.data_dir.join("containerd"));
                o.binary = node.containerd_binary.clone();
                o.cni_bin_dir = node.cni_bin_dir.clone();
                o.registry_config_dir = node.registry_config.clone();
                let network = containerd::bridge_network(&node.bridge, &cidr, &node.data_dir.join("ipam"));
                let (c, runtime) = Containerd::start(o, &network).await?;
                if let Some(dir) = &node.image_dir {
                    let n = c.import_dir(dir).await?;
                    tracing::info!(archives = n, dir = %dir.display(), "images imported");
                }
                (runtime, Some(c))
            }
        };
        anyhow::Ok((runtime, containerd))
    };
    let (runtime, containerd) = tokio::select! {
        r = prepare => r?,
        _ = &mut stop => return Ok(()),
    };
    let version = runtime.version().await?;
    setup.system.container_runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    setup.not_ready = None;
    options.container_id_scheme = if version.runtime_name == "containerd" { "containerd" } else { "cri" };
    options.pod_log_root = Some(node.data_dir.join("pod-logs"));
    options.starts_in_flight_max = STARTS_IN_FLIGHT_MAX;
    options.pods_dir = Some(node.data_dir.join("pods"));
    options.host_dns =
        Some(crate::dns::DnsConfig::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()));
    tracing::info!(node = %setup.name, runtime = %setup.system.container_runtime_version, "container runtime ready");
    let proxy = node.proxy.clone().map(|mut p| {
        p.config.node_name = setup.name.clone();
        p.config.pod_cidr = setup.pod_cidr.as_deref().and_then(|c| c.parse().ok());
        if p.config.local_cidr.is_none() {
            p.config.local_cidr = p.config.pod_cidr;
        }
        let (client, options) = (client.clone(), p.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = crate::proxy::run(client, options, std::future::pending()).await {
                tracing::error!(error = format!("{e:#}"), "the service proxy stopped");
            }
        });
        (p, task)
    });
    let routes = node.pod_routes.then(|| {
        let options = crate::podnet::PodNetOptions { node_name: setup.name.clone(), ip: "ip".into() };
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::podnet::run(client, options, std::future::pending()).await {
                tracing::error!(error = format!("{e:#}"), "routes to other nodes' pods are no longer kept");
            }
        })
    });
    let runtime = Arc::new(runtime);
    let endpoint = crate::server::NodeServer { runtime: runtime.clone(), pod_log_root: node.data_dir.join("pod-logs") };
    let serving = tokio::spawn(crate::server::serve(listener, Arc::new(endpoint)));
    tracing::info!(port = setup.kubelet_port, "the agent's endpoint serves logs, exec, attach and port-forward");
    let result = crate::run(client, vec![(setup, runtime.clone())], options, stop).await;
    serving.abort();
    if let Some((_, task)) = &proxy {
        task.abort();
    }
    if let Some(task) = &routes {
        task.abort();
    }
    if node.stop_pods_on_exit {
        if let Err(e) = stop_all(&runtime).await {
            tracing::warn!(error = format!("{e:#}"), "not every pod stopped");
        }
        if let Some((p, _)) = &proxy {
            if let Err(e) = crate::proxy::remove(&p.nft, &p.config.table).await {
                tracing::warn!(error = format!("{e:#}"), "the service rules were not removed");
            }
        }
    }
    if let Some(c) = containerd {
        if let Err(e) = c.stop().await {
            tracing::warn!(error = format!("{e:#}"), "containerd did not stop cleanly");
        }
    }
    result
}

/// Stops every pod's containers (SIGTERM, SIGKILL after `EXIT_GRACE`) and sandboxes, all pods
/// at once; they stay in the runtime, and the next start runs them again.
async fn stop_all(runtime: &CriRuntime) -> anyhow::Result<()> {
    let sandboxes = runtime.list_pod_sandbox().await?;
    let stops = sandboxes.iter().map(|s| async move {
        for c in runtime.list_containers(Some(&s.id)).await? {
            if c.state == crate::runtime::ContainerState::Running {
                runtime.stop_container(&c.id, EXIT_GRACE).await?;
            }
        }
        runtime.stop_pod_sandbox(&s.id).await?;
        anyhow::Ok(())
    });
    let results = futures::future::join_all(stops).await;
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    tracing::info!(pods = sandboxes.len(), "pods stopped");
    Ok(())
}
