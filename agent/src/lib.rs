//! Keelson's node agent: registers nodes, keeps their leases, and runs the pods bound to them
//! through a CRI-shaped runtime (`runtime::RuntimeService`). It reaches the cluster only through
//! the Kubernetes API (kube-rs). One process may run many nodes (hollow nodes for scale tests):
//! one watch of pods feeds them all, and each node has a task of its own that owns its pods.

pub mod cgroups;
pub mod client;
pub mod containerd;
pub mod cri;
pub mod dns;
pub mod events;
pub mod hollow;
pub mod image;
pub mod lean;
pub mod logs;
pub mod machine;
pub mod node;
pub mod podnet;
pub mod pods;
pub mod podspec;
pub mod prober;
pub mod proxy;
pub mod real;
pub mod runtime;
pub mod server;
pub mod tokens;
pub mod upgrade;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, Semaphore};

use node::{NodeLease, NodeSetup};
use pods::{Next, NodeContext};
use runtime::{ImageService, RuntimeService};

/// Pod updates waiting for one node's task; the pod watch waits when a node falls behind.
pub const POD_UPDATES_QUEUED_MAX: usize = 128;
/// Finished syncs and retry timers waiting for one node's task.
const SYNC_RESULTS_QUEUED_MAX: usize = 256;
/// Nodes registering at once when a process starts many.
const REGISTRATIONS_IN_FLIGHT_MAX: usize = 32;
/// Relisting the runtime (kubelet's PLEG): how often, when it reports container events and when
/// it does not. A relist syncs the pods whose sandboxes or containers changed state.
const RELIST_PERIOD_EVENTED: Duration = Duration::from_secs(60);
const RELIST_PERIOD_POLLED: Duration = Duration::from_secs(1);
/// Every pod is synced at least this often, changed or not (kubelet's sync frequency).
const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Longest a pod's sync may take, beyond the pod's grace period for stopping its containers.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// A failing sync is retried after this, doubling up to the maximum.
const SYNC_RETRY_INITIAL: Duration = Duration::from_secs(1);
const SYNC_RETRY_MAX: Duration = Duration::from_secs(30);

/// How the agent's nodes keep in touch with the control plane.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node lease's `leaseDurationSeconds` (kubelet: 40 s).
    pub lease_duration: Duration,
    /// How often the lease is renewed (kubelet: every 10 s).
    pub lease_renew_interval: Duration,
    /// How often an unchanged node status is reported anyway (kubelet: 5 min).
    pub status_report_frequency: Duration,
    /// Pod syncs running at once across all of the process's nodes.
    pub syncs_in_flight_max: usize,
    /// Syncs of one node that create sandboxes or start containers at once: a real runtime
    /// starts more pods per second a few at a time than all at once (they share its CPUs).
    pub starts_in_flight_max: usize,
    /// The scheme of container IDs in pod status, e.g. `containerd`.
    pub container_id_scheme: &'static str,
    /// Where pods' log directories go (kubelet: `/var/log/pods`); none for runtimes that log
    /// nothing.
    pub pod_log_root: Option<std::path::PathBuf>,
    /// Where pods' volumes go (`<dir>/<uid>/volumes/…`); none for runtimes without mounts.
    pub pods_dir: Option<std::path::PathBuf>,
    /// The cgroup every pod's cgroup goes under (kubelet's `--cgroup-root`).
    pub cgroup_root: String,
    /// The cluster's DNS for ClusterFirst pods (kubelet's `--cluster-dns`, `--cluster-domain`).
    pub cluster_dns: Option<dns::ClusterDns>,
    /// The node's own resolv.conf, for `dnsPolicy: Default` (none: the runtime's default).
    pub host_dns: Option<dns::DnsConfig>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            lease_duration: Duration::from_secs(40),
            lease_renew_interval: Duration::from_secs(10),
            status_report_frequency: Duration::from_secs(300),
            syncs_in_flight_max: 64,
            starts_in_flight_max: 64,
            container_id_scheme: "hollow",
            pod_log_root: None,
            pods_dir: None,
            cgroup_root: cgroups::DEFAULT_ROOT.into(),
            cluster_dns: None,
            host_dns: None,
        }
    }
}

enum PodUpdate {
    Apply(Box<Pod>),
    Gone(String),
    /// The API shows the node other than this agent reports it (the node lifecycle controller
    /// marked it Unknown while the agent was unreachable): report it again now.
    ReportStatus,
}

/// Runs `nodes` (each with its own runtime) until `stop` resolves.
pub async fn run<R: RuntimeService + ImageService>(
    client: kube::Client,
    nodes: Vec<(NodeSetup, Arc<R>)>,
    options: AgentOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let single = (nodes.len() == 1).then(|| nodes[0].0.name.clone());
    let registered = futures::stream::iter(nodes)
        .map(|(setup, rt)| {
            let client = client.clone();
            async move { register_with_retry(&client, &setup).await.map(|uid| (setup, rt, uid)) }
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT_MAX)
        .try_collect::<Vec<_>>();
    let registered = tokio::select! {
        r = registered => r?,
        _ = &mut stop => return Ok(()),
    };
    tracing::info!(nodes = registered.len(), "nodes registered");

    let syncs = Arc::new(Semaphore::new(options.syncs_in_flight_max.max(1)));
    let mut routes: HashMap<String, mpsc::Sender<PodUpdate>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (setup, rt, uid)) in registered.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(POD_UPDATES_QUEUED_MAX);
        routes.insert(setup.name.clone(), tx);
        let ctx = Arc::new(NodeContext::new(&setup, rt, client.clone(), &options));
        node::announce(&client, &setup);
        let lease = NodeLease::new(&client, &setup.name, uid, options.lease_duration);
        // Spread the nodes' heartbeats over the renewal interval instead of sending them at once.
        let offset = options.lease_renew_interval.mul_f64((i as f64 * 0.618_033_988_7).fract());
        tasks.spawn(node_loop(ctx, setup, lease, rx, syncs.clone(), options.clone(), offset));
    }

    // One watch of this process's nodes: one shown not Ready is reported again.
    let nodes_watch = tokio::spawn(watch_own_nodes(client.clone(), routes.clone(), single.clone()));
    // One watch of the pods bound to this process's nodes.
    let fields = match &single {
        Some(name) => format!("spec.nodeName={name}"),
        None => "spec.nodeName!=".to_string(),
    };
    let pods: Api<lean::LeanPod> = Api::all(client.clone());
    let stream = watcher(pods, watcher::Config::default().fields(&fields));
    let mut stream = std::pin::pin!(stream);
    let mut known: HashMap<String, String> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = &mut stop => break,
        };
        let event = match event {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(SYNC_RETRY_INITIAL).await;
                continue;
            }
            Some(Ok(e)) => e,
        };
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(lean::LeanPod(pod)) | watcher::Event::Apply(lean::LeanPod(pod)) => {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
                let Some(route) = routes.get(&node) else { continue };
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                listing.insert(uid.clone());
                if route.send(PodUpdate::Apply(Box::new(pod))).await.is_err() {
                    anyhow::bail!("the task of node {node:?} stopped");
                }
                known.insert(uid, node);
            }
            watcher::Event::Delete(lean::LeanPod(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(node) = known.remove(&uid) {
                    if let Some(route) = routes.get(&node) {
                        let _ = route.send(PodUpdate::Gone(uid)).await;
                    }
                }
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down.
                let gone: Vec<(String, String)> = known
                    .iter()
                    .filter(|(uid, _)| !listing.contains(*uid))
                    .map(|(u, n)| (u.clone(), n.clone()))
                    .collect();
                for (uid, node) in gone {
                    known.remove(&uid);
                    if let Some(route) = routes.get(&node) {
                        let _ = route.send(PodUpdate::Gone(uid)).await;
                    }
                }
            }
        }
    }
    drop(routes);
    nodes_watch.abort();
    tasks.abort_all();
    Ok(())
}

/// Follows this process's nodes; a node the API shows other than Ready (while its agent runs,
/// so it is) is reported again at once rather than at the next periodic report.
async fn watch_own_nodes(
    client: kube::Client,
    routes: HashMap<String, mpsc::Sender<PodUpdate>>,
    single: Option<String>,
) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let config = match &single {
        Some(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        None => watcher::Config::default(),
    };
    let mut stream = std::pin::pin!(watcher(nodes, config));
    while let Some(event) = stream.next().await {
        let node = match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                tokio::time::sleep(SYNC_RETRY_INITIAL).await;
                continue;
            }
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str() == "True");
        if ready == Some(false) {
            if let Some(route) = node.metadata.name.as_ref().and_then(|n| routes.get(n)) {
                // A full queue already holds work for the node; the periodic report follows.
                let _ = route.try_send(PodUpdate::ReportStatus);
            }
        }
    }
}

pub(crate) async fn register_with_retry(client: &kube::Client, setup: &NodeSetup) -> anyhow::Result<String> {
    let mut delay = SYNC_RETRY_INITIAL;
    loop {
        match node::register(client, setup).await {
            Ok(uid) => return Ok(uid),
            Err(e) => {
                tracing::warn!(node = %setup.name, error = format!("{e:#}"), "cannot register; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SYNC_RETRY_MAX);
            }
        }
    }
}

/// A pod as its node's task tracks it: the latest object (None once the API deleted it), and
/// whether a sync is running and whether another is owed after it (kubelet's pod workers).
struct Worker {
    pod: Option<Box<Pod>>,
    busy: bool,
    dirty: bool,
    retry: Duration,
}

/// A finished sync (`Some`) or a retry timer that fired (`None`).
type SyncResult = (String, Option<anyhow::Result<Next>>);

async fn node_loop<R: RuntimeService + ImageService>(
    ctx: Arc<NodeContext<R>>,
    mut setup: NodeSetup,
    mut lease: NodeLease,
    mut updates: mpsc::Receiver<PodUpdate>,
    syncs: Arc<Semaphore>,
    options: AgentOptions,
    offset: Duration,
) {
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::channel::<SyncResult>(SYNC_RESULTS_QUEUED_MAX);
    // A probe whose verdict changed has its pod synced (as a retry timer would); when the queue
    // is full, the periodic relist brings it.
    let kick_tx = done_tx.clone();
    ctx.prober.set_kick(Arc::new(move |uid: &str| {
        let _ = kick_tx.try_send((uid.to_string(), None));
    }));
    let mut events = ctx.runtime.container_events();
    let relist_period = if events.is_some() { RELIST_PERIOD_EVENTED } else { RELIST_PERIOD_POLLED };
    let start = tokio::time::Instant::now();
    let every = |first: Duration, period: Duration| {
        let mut i = tokio::time::interval_at(start + first, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut renew = every(offset, options.lease_renew_interval);
    let mut report = every(offset + options.status_report_frequency, options.status_report_frequency);
    let mut relist = every(offset + relist_period, relist_period);
    let mut resync = every(offset + RESYNC_PERIOD, RESYNC_PERIOD);
    // What the last relist saw: each sandbox's pod and state, each container's sandbox and state.
    let mut seen_sandboxes: HashMap<String, (String, runtime::SandboxState)> = HashMap::new();
    let mut seen_containers: HashMap<String, (String, runtime::ContainerState)> = HashMap::new();

    let kick = |workers: &mut HashMap<String, Worker>, uid: &str| {
        let Some(w) = workers.get_mut(uid) else { return };
        if w.busy {
            w.dirty = true;
            return;
        }
        w.busy = true;
        let (ctx, pod, tx, syncs, uid) = (ctx.clone(), w.pod.clone(), done_tx.clone(), syncs.clone(), uid.to_string());
        tokio::spawn(async move {
            let Ok(_permit) = syncs.acquire_owned().await else { return };
            // A call that never answers must not hold the pod (and a sync slot) forever.
            let limit = SYNC_TIMEOUT + pod.as_deref().map(pods::grace_of).unwrap_or_default();
            let sync = async {
                match pod {
                    Some(pod) => pods::sync_pod(&ctx, &pod).await,
                    None => pods::kill_pod(&ctx, &uid, None, Duration::ZERO).await.map(|()| Next::Gone),
                }
            };
            let result = tokio::time::timeout(limit, sync)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the sync took longer than {limit:?}")));
            let _ = tx.send((uid, Some(result))).await;
        });
    };

    loop {
        tokio::select! {
            update = updates.recv() => match update {
                None => return,
                Some(PodUpdate::Apply(pod)) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    let w = workers.entry(uid.clone()).or_insert(Worker { pod: None, busy: false, dirty: false, retry: SYNC_RETRY_INITIAL });
                    w.pod = Some(pod);
                    kick(&mut workers, &uid);
                }
                Some(PodUpdate::Gone(uid)) => {
                    if let Some(w) = workers.get_mut(&uid) {
                        w.pod = None;
                        kick(&mut workers, &uid);
                    }
                }
                Some(PodUpdate::ReportStatus) => {
                    report_node(&ctx.client, &mut setup, options.lease_renew_interval).await;
                }
            },
            Some((uid, result)) = done_rx.recv() => {
                let Some(w) = workers.get_mut(&uid) else { continue };
                let Some(result) = result else {
                    kick(&mut workers, &uid);
                    continue;
                };
                w.busy = false;
                let next = match result {
                    Ok(next) => {
                        w.retry = SYNC_RETRY_INITIAL;
                        next
                    }
                    Err(e) => {
                        tracing::warn!(node = %ctx.node_name, pod = %pod_name(w.pod.as_deref()), error = format!("{e:#}"), "pod sync failed; retrying");
                        let wait = w.retry;
                        w.retry = (w.retry * 2).min(SYNC_RETRY_MAX);
                        Next::After(wait)
                    }
                };
                if w.dirty {
                    w.dirty = false;
                    kick(&mut workers, &uid);
                    continue;
                }
                match next {
                    Next::Idle => {}
                    Next::Gone if w.pod.is_none() => {
                        workers.remove(&uid);
                        ctx.forget(&uid);
                    }
                    // Deleted for good; the watch's deletion comes next.
                    Next::Gone => {}
                    Next::After(wait) => {
                        let tx = done_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = tx.send((uid, None)).await;
                        });
                    }
                }
            },
            Some(event) = async { match events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match Box::pin(ctx.runtime.pod_sandbox_status(&event.pod_sandbox_id)).await {
                    Ok(s) => kick(&mut workers, &s.metadata.uid),
                    Err(e) => tracing::debug!(error = %e, "container event for a sandbox that is gone"),
                }
            },
            _ = resync.tick() => {
                let uids: Vec<String> = workers.keys().cloned().collect();
                for uid in &uids {
                    kick(&mut workers, uid);
                }
            },
            _ = relist.tick() => {
                let listed = Box::pin(async { anyhow::Ok((ctx.runtime.list_pod_sandbox().await?, ctx.runtime.list_containers(None).await?)) }).await;
                let (sandboxes, containers) = match listed {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(node = %ctx.node_name, error = format!("{e:#}"), "cannot relist the runtime");
                        continue;
                    }
                };
                let sandboxes: HashMap<String, (String, runtime::SandboxState)> = sandboxes.into_iter().map(|s| (s.id, (s.metadata.uid, s.state))).collect();
                let containers: HashMap<String, (String, runtime::ContainerState)> = containers.into_iter().map(|c| (c.id, (c.pod_sandbox_id, c.state))).collect();
                let changed = relist_changes(&seen_sandboxes, &sandboxes, &seen_containers, &containers);
                for uid in changed {
                    if !workers.contains_key(&uid) {
                        // A sandbox of a pod this node no longer has (the agent restarted meanwhile).
                        workers.insert(uid.clone(), Worker { pod: None, busy: false, dirty: false, retry: SYNC_RETRY_INITIAL });
                    }
                    kick(&mut workers, &uid);
                }
                seen_sandboxes = sandboxes;
                seen_containers = containers;
            },
            _ = renew.tick() => {
                // Boxed: a request's future is large, and thousands of idle node tasks would
                // each carry its space for nothing.
                let renewal = tokio::time::timeout(options.lease_renew_interval, Box::pin(lease.renew())).await;
                if let Err(e) = renewal.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", options.lease_renew_interval))) {
                    tracing::warn!(node = %ctx.node_name, error = format!("{e:#}"), "node lease not renewed");
                }
                // As kubelet checks its node at each status update: pressure or images that
                // changed are reported now, not at the next periodic report.
                if Box::pin(setup.measure(&*ctx.runtime)).await {
                    report_node(&ctx.client, &mut setup, options.lease_renew_interval).await;
                }
            },
            _ = report.tick() => {
                report_node(&ctx.client, &mut setup, options.lease_renew_interval).await;
            },
        }
    }
}

/// Reports the node's status, giving up after `limit` (the next report tries again).
async fn report_node(client: &kube::Client, setup: &mut NodeSetup, limit: Duration) {
    let report = tokio::time::timeout(limit, Box::pin(node::report_status(client, setup))).await;
    if let Err(e) = report.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {limit:?}"))) {
        tracing::warn!(node = %setup.name, error = format!("{e:#}"), "node status not reported");
    }
}

/// The pods whose sandboxes or containers appeared, went or changed state between two relists.
fn relist_changes(
    old_sandboxes: &HashMap<String, (String, runtime::SandboxState)>,
    sandboxes: &HashMap<String, (String, runtime::SandboxState)>,
    old_containers: &HashMap<String, (String, runtime::ContainerState)>,
    containers: &HashMap<String, (String, runtime::ContainerState)>,
) -> HashSet<String> {
    let mut uids = HashSet::new();
    for (id, s) in sandboxes {
        if old_sandboxes.get(id) != Some(s) {
            uids.insert(s.0.clone());
        }
    }
    for (id, s) in old_sandboxes {
        if !sandboxes.contains_key(id) {
            uids.insert(s.0.clone());
        }
    }
    let uid_of = |sandbox: &str| sandboxes.get(sandbox).or_else(|| old_sandboxes.get(sandbox)).map(|s| s.0.clone());
    for (id, c) in containers {
        if old_containers.get(id) != Some(c) {
            uids.extend(uid_of(&c.0));
        }
    }
    for (id, c) in old_containers {
        if !containers.contains_key(id) {
            uids.extend(uid_of(&c.0));
        }
    }
    uids
}

fn pod_name(pod: Option<&Pod>) -> String {
    pod.map(|p| {
        format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""))
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_syncs_the_pods_whose_sandboxes_or_containers_changed() {
        use runtime::{ContainerState as C, SandboxState as S};
        let m = |items: &[(&str, &str, S)]| {
            items.iter().map(|(id, uid, st)| (id.to_string(), (uid.to_string(), *st))).collect::<HashMap<_, _>>()
        };
        let c = |items: &[(&str, &str, C)]| {
            items.iter().map(|(id, sb, st)| (id.to_string(), (sb.to_string(), *st))).collect::<HashMap<_, _>>()
        };
        let old_s = m(&[("s1", "a", S::Ready), ("s2", "b", S::Ready), ("s3", "c", S::Ready)]);
        let new_s = m(&[("s1", "a", S::Ready), ("s2", "b", S::Ready), ("s4", "d", S::Ready)]);
        let old_c = c(&[("c1", "s1", C::Running), ("c2", "s2", C::Running), ("c3", "s3", C::Running)]);
        let new_c = c(&[("c1", "s1", C::Running), ("c2", "s2", C::Exited), ("c4", "s4", C::Running)]);
        let mut changed: Vec<String> = relist_changes(&old_s, &new_s, &old_c, &new_c).into_iter().collect();
        changed.sort();
        // a is unchanged; b's container exited; c's sandbox went; d's appeared.
        assert_eq!(changed, vec!["b", "c", "d"]);
        assert!(relist_changes(&new_s, &new_s, &new_c, &new_c).is_empty());
    }

    #[tokio::test]
    async fn a_node_task_is_small() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let nodes = hollow::HollowNodes {
            prefix: "n".into(),
            name: None,
            count: 1,
            zones: 1,
            cpu: "1".into(),
            memory: "1Gi".into(),
            pods: 10,
            ephemeral_storage: "1Gi".into(),
            labels: Default::default(),
            taints: vec![],
        }
        .build()
        .unwrap();
        let (setup, rt) = nodes.into_iter().next().unwrap();
        let ctx = Arc::new(NodeContext::new(&setup, rt, client.clone(), &AgentOptions::default()));
        let lease = NodeLease::new(&client, &setup.name, String::new(), Duration::from_secs(40));
        let (_tx, rx) = mpsc::channel(1);
        let task =
            node_loop(ctx, setup, lease, rx, Arc::new(Semaphore::new(1)), AgentOptions::default(), Duration::ZERO);
        let size = std::mem::size_of_val(&task);
        eprintln!("node task: {size} bytes");
        assert!(size < 4096, "a node's task takes {size} bytes before it runs");
    }
}
