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
use control::pki::{Identity, Pki};

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
    /// `controller-manager`, `cluster-dns`.
    #[arg(long, value_delimiter = ',', value_parser = ["scheduler", "controller-manager", "cluster-dns"])]
    disable: Vec<String>,
    /// Where the cluster's CAs are kept (made there on the first start): default
    /// `<data-dir>/tls`. Servers on one machine may share one.
    #[arg(long)]
    cert_dir: Option<std::path::PathBuf>,
    /// The scheduler's KubeSchedulerConfiguration file.
    #[arg(long)]
    scheduler_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    controllers: ControllerFlags,
    #[command(flatten)]
    election: ElectionFlags,
    #[command(flatten)]
    pub dns: DnsFlags,
}

/// Cluster DNS's flags.
#[derive(Args, Debug, Clone)]
pub struct DnsFlags {
    /// The kube-dns Service's cluster IP (default: the tenth address of
    /// --service-cluster-ip-range, 10.96.0.10 for the default range).
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where cluster DNS listens, UDP and TCP (port 0, the default, takes any free port: the
    /// kube-dns Service's endpoints name it, and several servers may share a host).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub cluster_dns_listen: std::net::SocketAddr,
    /// The address pods reach this server's DNS at (default: the host's default-route address).
    #[arg(long)]
    pub cluster_dns_advertise_address: Option<std::net::Ipv4Addr>,
    /// Resolvers for names outside the cluster, ip:port,… (default: /etc/resolv.conf's
    /// nameservers).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns_upstream: Vec<std::net::SocketAddr>,
    /// `keelson up`: pods reach DNS at this node's address as they see it.
    #[arg(skip)]
    pub advertise_node: Option<String>,
}

impl DnsFlags {
    /// The kube-dns Service's address for a service range.
    pub fn service_ip(&self, service_cidr: &str) -> anyhow::Result<std::net::Ipv4Addr> {
        match self.cluster_dns {
            Some(ip) => Ok(ip),
            None => control::dns::default_service_ip(service_cidr).context("--service-cluster-ip-range"),
        }
    }

    fn options(&self, service_cidr: &str) -> anyhow::Result<control::dns::DnsOptions> {
        use control::dns::Advertise;
        let advertise = match (&self.advertise_node, self.cluster_dns_advertise_address) {
            (_, Some(ip)) => Advertise::Address(ip),
            (Some(node), None) => Advertise::Node(node.clone()),
            (None, None) => match agent::machine::default_address().parse() {
                Ok(ip) => Advertise::Address(ip),
                Err(_) => anyhow::bail!("no IPv4 address for cluster DNS: give --cluster-dns-advertise-address"),
            },
        };
        let upstreams = if self.cluster_dns_upstream.is_empty() {
            control::dns::resolv_conf_nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            self.cluster_dns_upstream.clone()
        };
        Ok(control::dns::DnsOptions {
            domain: self.cluster_domain.clone(),
            service_ip: self.service_ip(service_cidr)?,
            listen: self.cluster_dns_listen,
            advertise,
            upstreams,
        })
    }
}

/// A component run beside the API server in this process (`keelson up` adds the agent): given a
/// client of the local API and a future that resolves when it is to stop.
pub struct Extra {
    pub name: &'static str,
    /// Who its client of the API is.
    pub identity: Identity,
    /// How long it gets to stop.
    pub stop_within: Duration,
    pub run: Box<dyn FnOnce(kube::Client, Stop) -> BoxFuture<anyhow::Result<()>> + Send>,
}

pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

fn waiter(rx: &tokio::sync::watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A client of the API at `url` acting as `who`, with a client certificate made for it now.
async fn client_as(pki: &Pki, url: &str, who: &Identity) -> anyhow::Result<kube::Client> {
    agent::client::from_kubeconfig_yaml(&pki.kubeconfig(url, who)?).await
}

/// What the API's serving certificate names: the local names and addresses, the API's listen
/// address, this host's name and address, and the `kubernetes` Service's names and cluster IP.
fn serving_names(args: &ServerArgs) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> =
        ["localhost", "127.0.0.1", "::1", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    names.push(format!("kubernetes.default.svc.{}", args.dns.cluster_domain));
    let kubernetes_ip = control::dns::service_range_address(args.api.service_cluster_ip_range(), 1)
        .context("--service-cluster-ip-range")?;
    names.push(kubernetes_ip.to_string());
    let listen = args.api.api_listen();
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if !a.ip().is_unspecified() => names.push(a.ip().to_string()),
        Ok(_) => {}
        Err(_) => names.extend(listen.rsplit_once(':').map(|(host, _)| host.to_string())),
    }
    // A host name that is no DNS name (an underscore, say) cannot be one of a certificate's.
    let dns_name =
        |h: &String| h.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    names.extend(control::process::hostname().filter(dns_name));
    let address = agent::machine::default_address();
    if address.parse::<std::net::IpAddr>().is_ok() {
        names.push(address);
    }
    Ok(names)
}

pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    server_with(args, Vec::new()).await
}

/// Runs the server and `extras` beside it; on SIGTERM or SIGINT, the components stop first (each
/// within its time), then the API, then the store.
pub async fn server_with(args: ServerArgs, extras: Vec<Extra>) -> anyhow::Result<()> {
    let config = args.store.to_config()?;
    let scheduling = if args.disable.iter().any(|d| d == "scheduler") {
        None
    } else {
        Some(crate::scheduler::load_config(args.scheduler_config.as_deref(), "--scheduler-config")?)
    };
    let managing = !args.disable.iter().any(|d| d == "controller-manager");
    let dns = if args.disable.iter().any(|d| d == "cluster-dns") {
        None
    } else {
        Some(args.dns.options(args.api.service_cluster_ip_range())?)
    };
    if managing {
        args.controllers.enabled().map_err(anyhow::Error::msg)?;
    }
    let cert_dir = args.cert_dir.clone().unwrap_or_else(|| config.data_dir.join("tls"));
    let pki = Pki::open(&cert_dir).context("the cluster's certificates")?;
    let serving = args.api.server_serving(&pki, &serving_names(&args)?)?;
    let url = args.api.local_url(&serving);
    let node = raft_store::StoreNode::open(config).await.context("cannot start the store member")?;
    // The API replica calls its member directly rather than through the member's client port.
    let local_store = Store::local(raft_store::server::client_routes(node.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (components_tx, components_rx) = tokio::sync::watch::channel(false);
    let store = tokio::spawn(raft_store::server::serve(node, waiter(&stop_rx)));
    let mut components: Vec<(&str, Duration, tokio::task::JoinHandle<anyhow::Result<()>>)> = Vec::new();
    for extra in extras {
        let client = client_as(&pki, &url, &extra.identity).await?;
        let task = tokio::spawn((extra.run)(client, Box::pin(waiter(&components_rx))));
        components.push((extra.name, extra.stop_within, task));
    }
    if let Some(options) = dns {
        // Cluster DNS reads services and endpoints as the controller manager's identity does.
        let client = client_as(&pki, &url, &Identity::new(control::pki::CONTROLLER_MANAGER_USER, &[])).await?;
        let stop = waiter(&components_rx);
        components.push((
            "cluster DNS",
            COMPONENTS_STOP_TIMEOUT,
            tokio::spawn(control::dns::run(client, options, stop)),
        ));
    }
    if let Some(config) = scheduling {
        let client = client_as(&pki, &url, &Identity::new(control::pki::SCHEDULER_USER, &[])).await?;
        let election = args.election.clone();
        let stop = waiter(&components_rx);
        components.push((
            "scheduler",
            COMPONENTS_STOP_TIMEOUT,
            tokio::spawn(async move { crate::scheduler::run_scheduler(client, &election, config, stop).await }),
        ));
    }
    if managing {
        let client = client_as(&pki, &url, &Identity::new(control::pki::CONTROLLER_MANAGER_USER, &[])).await?;
        let (election, mut flags) = (args.election.clone(), args.controllers.clone());
        if flags.root_ca_file.is_none() {
            flags.root_ca = Some(pki.server_ca().to_string());
        }
        let stop = waiter(&components_rx);
        components.push((
            "controller manager",
            COMPONENTS_STOP_TIMEOUT,
            tokio::spawn(async move {
                crate::controller_manager::run_controller_manager(client, &election, flags, stop).await
            }),
        ));
    }
    let signing_key = Some(pki.service_account_key().to_string());
    let api = run_api(&args.api, serving, signing_key, local_store, "the member in this process", waiter(&stop_rx));
    tokio::pin!(api);
    // A component that ends on its own (it could not start, e.g. the agent without containerd)
    // brings the whole server down with its error rather than leaving a cluster without it.
    let ended = async {
        if components.is_empty() {
            return std::future::pending().await;
        }
        let (result, i, _) = futures::future::select_all(components.iter_mut().map(|(_, _, task)| task)).await;
        (i, result)
    };
    let (outcome, ended) = tokio::select! {
        r = &mut api => (Some(r), None),
        _ = stop_signal() => (None, None),
        (i, result) = ended => {
            let name = components[i].0;
            let error = match result {
                Ok(Ok(())) => anyhow::anyhow!("the {name} stopped"),
                Ok(Err(e)) => e.context(format!("the {name} stopped")),
                Err(e) => anyhow::anyhow!("the {name} task failed: {e}"),
            };
            tracing::error!(error = format!("{error:#}"), "shutting down");
            (Some(Err(error)), Some(i))
        },
    };
    let _ = components_tx.send(true);
    for (i, (name, within, task)) in components.into_iter().enumerate() {
        if ended == Some(i) {
            continue;
        }
        match tokio::time::timeout(within, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = format!("{e:#}"), "the {name} stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the {name} task failed"),
            Err(_) => tracing::warn!("the {name} did not stop in time"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    let _ = stop_tx.send(true);
    let outcome = match outcome {
        Some(Err(e)) if ended.is_some() => {
            let _ = api.await;
            Err(e)
        }
        Some(r) => r,
        None => api.await,
    };
    store.await.context("the store task failed")?.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped");
    outcome
}
