//! The service proxy: kube-proxy's nftables mode, run by the agent. Informers on Services and
//! EndpointSlices feed one loop that, after any change, computes the node's whole rule set
//! (`rules.rs`) and applies it with `nft -f -` as one atomic transaction. Rules stay when the
//! agent stops, so that traffic flows on while it restarts; the next start replaces them.
//! NetworkPolicies of the node's pods are enforced in the same table (`policy.rs`), from
//! reflectors of NetworkPolicies, Pods and Namespaces.

pub mod policy;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use tokio::io::AsyncWriteExt;

use crate::client::{listed, Settling};
pub use rules::{Cidr, Config};
use rules::{Desired, Endpoint, Protocol, ServicePort};

/// Rules are synced this often even without changes (kube-proxy's `--nftables-sync-period`).
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// The table is replaced whole this often (between, syncs write only what changed), repairing
/// whatever else changed it.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// A failed apply is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);
/// A service without its own `sessionAffinityConfig` keeps a client's endpoint this long.
const AFFINITY_DEFAULT_SECONDS: u32 = 10800;
/// Services with this label belong to another proxy.
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub config: Config,
    /// The `nft` binary.
    pub nft: PathBuf,
}

/// The service ports `services` define, each with its endpoints from `slices`.
pub fn service_ports(
    services: &[std::sync::Arc<Service>],
    slices: &[std::sync::Arc<EndpointSlice>],
) -> Vec<ServicePort> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let (Some(ns), Some(svc)) =
            (s.metadata.namespace.as_deref(), s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)))
        else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) =
            (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref(), svc.spec.as_ref())
        else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName")
            || svc.metadata.labels.as_ref().is_some_and(|l| l.contains_key(PROXY_NAME_LABEL))
        {
            continue;
        }
        let ips: Vec<std::net::Ipv4Addr> = spec
            .cluster_ips
            .clone()
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        // Headless services (clusterIP None) have no address to route: DNS answers for them.
        if ips.is_empty() {
            continue;
        }
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            configured.and_then(|t| u32::try_from(t).ok()).unwrap_or(AFFINITY_DEFAULT_SECONDS)
        });
        let slices = by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            let Ok(number) = u16::try_from(port.port) else { continue };
            let port_name = port.name.clone().unwrap_or_default();
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for slice in slices {
                let Some(target) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                }) else {
                    continue;
                };
                let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else { continue };
                for e in &slice.endpoints {
                    let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else { continue };
                    if endpoints.iter().any(|x| x.ip == ip && x.port == target_port) {
                        continue;
                    }
                    let c = e.conditions.clone().unwrap_or_default();
                    let ready = c.ready.unwrap_or(true);
                    endpoints.push(Endpoint {
                        ip,
                        port: target_port,
                        ready,
                        serving: c.serving.unwrap_or(ready),
                        terminating: c.terminating.unwrap_or(false),
                        node: e.node_name.clone(),
                    });
                }
            }
            endpoints.sort_by_key(|e| (e.ip, e.port));
            for ip in &ips {
                out.push(ServicePort {
                    namespace: ns.into(),
                    name: name.into(),
                    port_name: port_name.clone(),
                    protocol,
                    cluster_ip: *ip,
                    port: number,
                    node_port: port.node_port.filter(|_| node_ports).and_then(|p| u16::try_from(p).ok()),
                    affinity_seconds: affinity,
                    internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                    external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                    endpoints: endpoints.clone(),
                });
            }
        }
    }
    out
}

/// Applies `script` with `nft -f -`.
pub async fn apply(nft: &std::path::Path, script: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {} (nftables)", nft.display()))?;
    let mut stdin = child.stdin.take().context("nft's stdin")?;
    stdin.write_all(script.as_bytes()).await.context("writing the rules to nft")?;
    drop(stdin);
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output()).await.context("nft took too long")??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::bail!("nft failed ({}): {}", out.status, err.lines().take(8).collect::<Vec<_>>().join("; "));
    }
    Ok(())
}

/// Fails unless `nft` runs and the kernel takes an nftables table (checked with one that is
/// created and deleted in the same transaction).
pub async fn check(nft: &std::path::Path) -> anyhow::Result<()> {
    let probe = format!("add table ip keelson-check-{0}\ndelete table ip keelson-check-{0}\n", std::process::id());
    apply(nft, &probe)
        .await
        .context("the service proxy needs nftables (Debian's nft package, and root); --proxy-mode none runs without it")
}

/// Removes the proxy's table, if it is there.
pub async fn remove(nft: &std::path::Path, table: &str) -> anyhow::Result<()> {
    apply(nft, &format!("add table ip {table}\ndelete table ip {table}\n")).await
}

/// Keeps the node's service rules in step with the cluster until `stop` resolves.
pub async fn run(client: kube::Client, options: ProxyOptions, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (policies, policies_writer) = reflector::store::<NetworkPolicy>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let service_events = reflector::reflector(
        services_writer,
        watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let slice_events = reflector::reflector(
        slices_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let policy_events = reflector::reflector(
        policies_writer,
        watcher(Api::<NetworkPolicy>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    // Only what policies look at is kept of a pod.
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff().modify(slim_pod),
    );
    let namespace_events = reflector::reflector(
        namespaces_writer,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()).default_backoff(),
    );
    tokio::pin!(service_events, slice_events, policy_events, pod_events, namespace_events, stop);
    let stores = Stores { services, slices, policies, pods, namespaces };
    let mut owned: Option<Desired> = None;
    let mut last_full = Instant::now();
    // Changes not yet applied (a change is applied once changes settle).
    let mut pending = Settling::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let settled = pending.is_due();
        let ready = stores.listed() && settled && retry_at.is_none_or(|at| at <= tokio::time::Instant::now());
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            e = service_events.next() => {
                if crate::client::store_changed(e, "service")? {
                    pending.changed();
                }
            }
            e = slice_events.next() => {
                if crate::client::store_changed(e, "endpointslice")? {
                    pending.changed();
                }
            }
            e = policy_events.next() => {
                if crate::client::store_changed(e, "networkpolicy")? {
                    pending.changed();
                }
            }
            e = pod_events.next() => {
                // Pods matter only where policies are.
                if crate::client::store_changed(e, "pod")? && !stores.policies.is_empty() {
                    pending.changed();
                }
            }
            e = namespace_events.next() => {
                if crate::client::store_changed(e, "namespace")? && !stores.policies.is_empty() {
                    pending.changed();
                }
            }
            _ = resync.tick() => pending.wanted(tokio::time::Instant::now()),
            _ = async { match retry_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } }, if !ready && retry_at.is_some() => {}
            _ = pending.wait(), if !settled && pending.due_at().is_some() => {}
            _ = std::future::ready(()), if ready => {
                let (since, batch) = pending.take().unwrap_or_else(|| (tokio::time::Instant::now(), 0));
                if last_full.elapsed() >= FULL_SYNC_PERIOD {
                    owned = None;
                }
                let full = owned.is_none();
                match sync(&options, &stores, owned.as_ref()).await {
                    Ok((now_owned, ports)) => {
                        if full {
                            last_full = Instant::now();
                        }
                        owned = Some(now_owned);
                        retry_at = None;
                        let latency = since.elapsed();
                        // Full syncs are rare (the first, after a failure, hourly).
                        if full {
                            tracing::info!(table = %options.config.table, service_ports = ports, latency_ms = latency.as_millis() as u64, "service rules applied whole");
                        } else {
                            tracing::debug!(service_ports = ports, changes = batch, latency_ms = latency.as_millis() as u64, "service rules applied");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "service rules not applied; retrying");
                        // Nothing is known of the table now: the next sync replaces it whole.
                        owned = None;
                        pending.wanted(since);
                        retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                    }
                }
            }
        }
    }
}

/// What the proxy watches.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
}

impl Stores {
    fn listed(&self) -> bool {
        listed(&self.services)
            && listed(&self.slices)
            && listed(&self.policies)
            && listed(&self.pods)
            && listed(&self.namespaces)
    }
}

/// Drops what policies do not look at (a pod's labels, node, address, phase and named ports are
/// kept), so that every node can hold every pod.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.init_containers = None;
        for c in &mut spec.containers {
            c.env = None;
            c.volume_mounts = None;
            c.command = None;
            c.args = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.lifecycle = None;
        }
    }
}

async fn sync(options: &ProxyOptions, stores: &Stores, owned: Option<&Desired>) -> anyhow::Result<(Desired, usize)> {
    // Rendering a large rule set takes a while (about 50 ms for 10,000 endpoints): off the
    // runtime's worker, whose other tasks (the watches feeding this loop among them) move on.
    let compute = || {
        let ports = service_ports(&stores.services.state(), &stores.slices.state());
        let policy = policy::rules(
            &options.config.node_name,
            &stores.policies.state(),
            &stores.pods.state(),
            &stores.namespaces.state(),
        );
        let (script, now_owned) = rules::render(&options.config, &ports, &policy, owned);
        (script, now_owned, ports.len())
    };
    let (script, now_owned, ports) = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(compute),
        _ => compute(),
    };
    apply(&options.nft, &script).await?;
    Ok((now_owned, ports))
}
