//! The controller manager: controllers built as Kubernetes' sample-controller is, over shared
//! informers (one list+watch per resource type for the whole manager). Event handlers only
//! enqueue keys; workers take a key, re-read the cached object and reconcile. A replica starts
//! its informers only once it leads (as kube-controller-manager does), and a worker that takes a
//! key while its replica no longer leads holds it until the replica leads again. The manager
//! reaches the cluster only through the Kubernetes API (kube-rs).

pub mod clusterroleaggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod expectations;
pub mod garbagecollector;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod revisions;
pub mod serviceaccount;
pub mod statefulset;

use anyhow::Context;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, ReplicationController, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use kube::runtime::watcher;

use agent::lean::LeanPod;

use self::informer::Informer;
use self::queue::WorkQueue;
use crate::election::Leadership;

/// The controllers this manager runs, by Kubernetes' names, each with its default number of
/// workers (`--concurrent-<name>-syncs`).
pub const CONTROLLERS: &[&str] = &[
    "replicaset",
    "replicationcontroller",
    "deployment",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "garbagecollector",
    "namespace",
    "endpoint",
    "endpointslice",
    "serviceaccount",
    "root-ca-cert-publisher",
    "clusterrole-aggregation",
    "nodelifecycle",
    "nodeipam",
    "taint-eviction-controller",
    "podgc",
    "disruption",
];

/// A controller: a queue of keys and how one key is brought to its desired state.
pub trait Controller: Send + Sync + 'static {
    const NAME: &'static str;
    fn queue(&self) -> &WorkQueue;
    /// Reconciles the object `key` names; an error retries it after the key's back-off.
    fn sync(&self, key: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Starts what the controller follows beyond the shared informers; the future resolves
    /// once that has listed.
    fn start(self: Arc<Self>, _tasks: &mut tokio::task::JoinSet<()>) -> Option<Synced> {
        None
    }
}

/// A count as Kubernetes writes it in a status: left out (null, in a merge patch) when zero.
pub fn omit_zero(n: Option<i32>) -> serde_json::Value {
    n.filter(|n| *n != 0).map(serde_json::Value::from).unwrap_or(serde_json::Value::Null)
}

/// Whether the status fields in `new` say something other than `old` (zero and absent alike).
pub fn status_differs(new: &serde_json::Value, old: &serde_json::Value) -> bool {
    let zero_like = |x: &serde_json::Value| x.is_null() || x.as_i64() == Some(0);
    new.as_object().into_iter().flatten().any(|(k, v)| {
        let o = old.get(k).unwrap_or(&serde_json::Value::Null);
        !(o == v || (zero_like(o) && zero_like(v)))
    })
}

/// Resolves once a controller's own watches have listed.
pub type Synced = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Kubernetes' controller-manager flags that choose and size the controllers.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerFlags {
    /// Controllers to run: `*` for all, a name to add one, `-name` to leave one out
    /// (e.g. `*,-deployment`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// ReplicaSets synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_replicaset_syncs: usize,
    /// ReplicationControllers synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_rc_syncs: usize,
    /// Deployments synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_deployment_syncs: usize,
    /// DaemonSets synced at once.
    #[arg(long, default_value_t = 2)]
    pub concurrent_daemonset_syncs: usize,
    /// StatefulSets synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_statefulset_syncs: usize,
    /// Jobs synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_job_syncs: usize,
    /// CronJobs synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_cron_job_syncs: usize,
    /// Namespaces emptied at once.
    #[arg(long, default_value_t = 10)]
    pub concurrent_namespace_syncs: usize,
    /// Services whose Endpoints are synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_endpoint_syncs: usize,
    /// Services whose EndpointSlices are synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_service_endpoint_syncs: usize,
    /// How long a node may go without renewing its lease or reporting its status before it is
    /// marked Unknown and tainted unreachable (Kubernetes' default: 50s).
    #[arg(long, default_value = "20s", value_parser = crate::process::parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// The CA (PEM) published to every namespace as the ConfigMap `kube-root-ca.crt`, for pods
    /// to verify the API with; by default the one the kubeconfig trusts.
    #[arg(long)]
    pub root_ca_file: Option<std::path::PathBuf>,
    /// The CA itself, when the process knows it without a file.
    #[arg(skip)]
    pub root_ca: Option<String>,
    /// Finished pods kept at most; beyond, the oldest are deleted (0: none are).
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,
    /// Objects the garbage collector handles at once.
    #[arg(long, default_value_t = 20)]
    pub concurrent_gc_syncs: usize,
    /// Give every node a pod range from --cluster-cidr (the node IPAM controller).
    #[arg(long)]
    pub allocate_node_cidrs: bool,
    /// The range pods' addresses come from, cut into one block per node.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The prefix length of each node's block of --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
}

impl ControllerFlags {
    /// The controllers `--controllers` selects, or why it is invalid.
    pub fn enabled(&self) -> Result<Vec<&'static str>, String> {
        let mut all = false;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for item in self.controllers.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if item == "*" {
                all = true;
                continue;
            }
            let (list, name) = match item.strip_prefix('-') {
                Some(n) => (&mut off, n),
                None => (&mut on, item),
            };
            let Some(known) = CONTROLLERS.iter().find(|c| **c == name) else {
                return Err(format!("--controllers: unknown controller {name:?} (known: {})", CONTROLLERS.join(", ")));
            };
            list.push(*known);
        }
        Ok(CONTROLLERS.iter().copied().filter(|c| (all || on.contains(c)) && !off.contains(c)).collect())
    }
}

/// The informers controllers share, made when a controller first asks for one.
#[derive(Default)]
pub struct Informers {
    pods: OnceLock<Arc<Informer<Pod>>>,
    replicasets: OnceLock<Arc<Informer<ReplicaSet>>>,
    deployments: OnceLock<Arc<Informer<Deployment>>>,
    services: OnceLock<Arc<Informer<Service>>>,
    nodes: OnceLock<Arc<Informer<Node>>>,
    endpoints: OnceLock<Arc<Informer<Endpoints>>>,
    endpointslices: OnceLock<Arc<Informer<EndpointSlice>>>,
    namespaces: OnceLock<Arc<Informer<Namespace>>>,
    serviceaccounts: OnceLock<Arc<Informer<ServiceAccount>>>,
    leases: OnceLock<Arc<Informer<Lease>>>,
    daemonsets: OnceLock<Arc<Informer<DaemonSet>>>,
    controllerrevisions: OnceLock<Arc<Informer<ControllerRevision>>>,
    jobs: OnceLock<Arc<Informer<Job>>>,
    cronjobs: OnceLock<Arc<Informer<CronJob>>>,
    statefulsets: OnceLock<Arc<Informer<StatefulSet>>>,
    poddisruptionbudgets: OnceLock<Arc<Informer<PodDisruptionBudget>>>,
    replicationcontrollers: OnceLock<Arc<Informer<ReplicationController>>>,
    clusterroles: OnceLock<Arc<Informer<ClusterRole>>>,
}

/// Starts `cell`'s informer (if a controller asked for it) over every object of its type.
fn start_one<K, W>(
    cell: &OnceLock<Arc<Informer<K>>>,
    client: &kube::Client,
    into: fn(W) -> K,
    tasks: &mut tokio::task::JoinSet<()>,
    synced: &mut Vec<Synced>,
) where
    K: kube::Resource + Send + Sync + 'static,
    W: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    if let Some(i) = cell.get() {
        tasks.spawn(i.clone().run(Api::<W>::all(client.clone()), watcher::Config::default(), into));
        let i = i.clone();
        synced.push(Box::pin(async move { i.synced().await }));
    }
}

impl Informers {
    pub fn pods(&self) -> Arc<Informer<Pod>> {
        self.pods.get_or_init(|| Informer::new("pods")).clone()
    }
    pub fn replicasets(&self) -> Arc<Informer<ReplicaSet>> {
        self.replicasets.get_or_init(|| Informer::new("replicasets")).clone()
    }
    pub fn deployments(&self) -> Arc<Informer<Deployment>> {
        self.deployments.get_or_init(|| Informer::new("deployments")).clone()
    }
    pub fn services(&self) -> Arc<Informer<Service>> {
        self.services.get_or_init(|| Informer::new("services")).clone()
    }
    pub fn nodes(&self) -> Arc<Informer<Node>> {
        self.nodes.get_or_init(|| Informer::new("nodes")).clone()
    }
    pub fn endpoints(&self) -> Arc<Informer<Endpoints>> {
        self.endpoints.get_or_init(|| Informer::new("endpoints")).clone()
    }
    pub fn endpointslices(&self) -> Arc<Informer<EndpointSlice>> {
        self.endpointslices.get_or_init(|| Informer::new("endpointslices")).clone()
    }
    pub fn namespaces(&self) -> Arc<Informer<Namespace>> {
        self.namespaces.get_or_init(|| Informer::new("namespaces")).clone()
    }
    pub fn serviceaccounts(&self) -> Arc<Informer<ServiceAccount>> {
        self.serviceaccounts.get_or_init(|| Informer::new("serviceaccounts")).clone()
    }
    pub fn leases(&self) -> Arc<Informer<Lease>> {
        self.leases.get_or_init(|| Informer::new("leases")).clone()
    }
    pub fn daemonsets(&self) -> Arc<Informer<DaemonSet>> {
        self.daemonsets.get_or_init(|| Informer::new("daemonsets")).clone()
    }
    pub fn controllerrevisions(&self) -> Arc<Informer<ControllerRevision>> {
        self.controllerrevisions.get_or_init(|| Informer::new("controllerrevisions")).clone()
    }
    pub fn jobs(&self) -> Arc<Informer<Job>> {
        self.jobs.get_or_init(|| Informer::new("jobs")).clone()
    }
    pub fn cronjobs(&self) -> Arc<Informer<CronJob>> {
        self.cronjobs.get_or_init(|| Informer::new("cronjobs")).clone()
    }
    pub fn statefulsets(&self) -> Arc<Informer<StatefulSet>> {
        self.statefulsets.get_or_init(|| Informer::new("statefulsets")).clone()
    }
    pub fn poddisruptionbudgets(&self) -> Arc<Informer<PodDisruptionBudget>> {
        self.poddisruptionbudgets.get_or_init(|| Informer::new("poddisruptionbudgets")).clone()
    }
    pub fn clusterroles(&self) -> Arc<Informer<ClusterRole>> {
        self.clusterroles.get_or_init(|| Informer::new("clusterroles")).clone()
    }
    pub fn replicationcontrollers(&self) -> Arc<Informer<ReplicationController>> {
        self.replicationcontrollers.get_or_init(|| Informer::new("replicationcontrollers")).clone()
    }

    /// Starts every informer a controller asked for; resolves once all have listed.
    fn start(
        &self,
        client: &kube::Client,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut synced: Vec<Synced> = Vec::new();
        // Pods are read without managed fields, which no controller looks at.
        start_one(&self.pods, client, |p: LeanPod| p.0, tasks, &mut synced);
        start_one(&self.replicasets, client, |x: ReplicaSet| x, tasks, &mut synced);
        start_one(&self.deployments, client, |x: Deployment| x, tasks, &mut synced);
        start_one(&self.services, client, |x: Service| x, tasks, &mut synced);
        start_one(&self.nodes, client, |x: Node| x, tasks, &mut synced);
        start_one(&self.endpoints, client, |x: Endpoints| x, tasks, &mut synced);
        start_one(&self.endpointslices, client, |x: EndpointSlice| x, tasks, &mut synced);
        start_one(&self.namespaces, client, |x: Namespace| x, tasks, &mut synced);
        start_one(&self.serviceaccounts, client, |x: ServiceAccount| x, tasks, &mut synced);
        start_one(&self.leases, client, |x: Lease| x, tasks, &mut synced);
        start_one(&self.daemonsets, client, |x: DaemonSet| x, tasks, &mut synced);
        start_one(&self.controllerrevisions, client, |x: ControllerRevision| x, tasks, &mut synced);
        start_one(&self.jobs, client, |x: Job| x, tasks, &mut synced);
        start_one(&self.cronjobs, client, |x: CronJob| x, tasks, &mut synced);
        start_one(&self.statefulsets, client, |x: StatefulSet| x, tasks, &mut synced);
        start_one(&self.poddisruptionbudgets, client, |x: PodDisruptionBudget| x, tasks, &mut synced);
        start_one(&self.replicationcontrollers, client, |x: ReplicationController| x, tasks, &mut synced);
        start_one(&self.clusterroles, client, |x: ClusterRole| x, tasks, &mut synced);
        async move {
            futures::future::join_all(synced).await;
        }
    }
}

/// What every controller is built from.
pub struct Manager {
    pub client: kube::Client,
    pub identity: String,
    pub informers: Informers,
}

/// Takes keys and syncs them while this replica leads.
async fn worker<C: Controller>(c: Arc<C>, mut leadership: Leadership) {
    while let Some(key) = c.queue().get().await {
        if !leadership.is_leading() {
            // Held (not dropped) until this replica leads; the leader's own queue has it too.
            leadership.acquired().await;
        }
        match c.sync(&key).await {
            Ok(()) => c.queue().forget(&key),
            Err(e) => {
                // A conflict only means the cache was behind a write: the next sync sees it.
                let conflict =
                    e.downcast_ref::<kube::Error>().is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 409));
                if conflict {
                    tracing::debug!(controller = C::NAME, key, "sync met a newer version; retrying");
                    c.queue().add_backoff(&key);
                } else {
                    tracing::info!(
                        controller = C::NAME,
                        key,
                        error = format!("{e:#}"),
                        failures = c.queue().failures(&key),
                        "sync failed; retrying"
                    );
                    c.queue().add_rate_limited(&key);
                }
            }
        }
        c.queue().done(&key);
    }
}

/// Runs the controllers `flags` select over `client` until `stop` resolves.
pub async fn run(
    client: kube::Client,
    flags: &ControllerFlags,
    leadership: Leadership,
    identity: &str,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let enabled = flags.enabled().map_err(anyhow::Error::msg)?;
    tracing::info!(identity, controllers = ?enabled, "controller manager started");
    let m = Manager { client: client.clone(), identity: identity.to_string(), informers: Informers::default() };
    let mut queues: Vec<Box<dyn Fn() + Send>> = Vec::new();
    let mut starts: Vec<Box<dyn FnOnce(&mut tokio::task::JoinSet<()>) + Send>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut synced: Vec<Synced> = Vec::new();
    type Begin = Box<dyn FnOnce(&mut tokio::task::JoinSet<()>) -> Option<Synced> + Send>;
    let mut begins: Vec<Begin> = Vec::new();
    struct Wiring<'a> {
        queues: &'a mut Vec<Box<dyn Fn() + Send>>,
        starts: &'a mut Vec<Box<dyn FnOnce(&mut tokio::task::JoinSet<()>) + Send>>,
        begins: &'a mut Vec<Begin>,
        leadership: &'a Leadership,
    }
    fn add<C: Controller>(c: Arc<C>, workers: usize, w: &mut Wiring<'_>) {
        let q = c.clone();
        w.queues.push(Box::new(move || q.queue().shut_down()));
        let own = c.clone();
        w.begins.push(Box::new(move |tasks| own.start(tasks)));
        let leadership = w.leadership.clone();
        w.starts.push(Box::new(move |tasks| {
            for _ in 0..workers.max(1) {
                tasks.spawn(worker(c.clone(), leadership.clone()));
            }
        }));
    }
    {
        let mut w = Wiring { queues: &mut queues, starts: &mut starts, begins: &mut begins, leadership: &leadership };
        for name in &enabled {
            match *name {
                "replicaset" => {
                    add(replicaset::ReplicaSetController::new(&m), flags.concurrent_replicaset_syncs, &mut w)
                }
                "replicationcontroller" => {
                    add(replicaset::ReplicationControllerController::new(&m), flags.concurrent_rc_syncs, &mut w)
                }
                "deployment" => {
                    add(deployment::DeploymentController::new(&m), flags.concurrent_deployment_syncs, &mut w)
                }
                "daemonset" => add(daemonset::DaemonSetController::new(&m), flags.concurrent_daemonset_syncs, &mut w),
                "statefulset" => {
                    add(statefulset::StatefulSetController::new(&m), flags.concurrent_statefulset_syncs, &mut w)
                }
                "job" => add(job::JobController::new(&m), flags.concurrent_job_syncs, &mut w),
                "cronjob" => add(cronjob::CronJobController::new(&m), flags.concurrent_cron_job_syncs, &mut w),
                "garbagecollector" => {
                    add(garbagecollector::GarbageCollector::new(&m), flags.concurrent_gc_syncs, &mut w)
                }
                "namespace" => add(namespace::NamespaceController::new(&m), flags.concurrent_namespace_syncs, &mut w),
                "endpoint" => add(endpoints::EndpointsController::new(&m), flags.concurrent_endpoint_syncs, &mut w),
                "endpointslice" => {
                    add(endpoints::EndpointSliceController::new(&m), flags.concurrent_service_endpoint_syncs, &mut w)
                }
                "serviceaccount" => add(serviceaccount::ServiceAccountController::new(&m), 1, &mut w),
                "clusterrole-aggregation" => add(clusterroleaggregation::AggregationController::new(&m), 1, &mut w),
                "root-ca-cert-publisher" => {
                    let ca = match (&flags.root_ca_file, &flags.root_ca) {
                        (Some(path), _) => Some(
                            std::fs::read_to_string(path)
                                .with_context(|| format!("--root-ca-file {}", path.display()))?,
                        ),
                        (None, ca) => ca.clone(),
                    };
                    match ca {
                        Some(ca) => add(serviceaccount::RootCaPublisher::new(&m, ca), 1, &mut w),
                        None => tracing::warn!(
                            "no --root-ca-file and no CA in the kubeconfig: kube-root-ca.crt is not published"
                        ),
                    }
                }
                "nodeipam" if flags.allocate_node_cidrs => {
                    let cidr = flags.cluster_cidr.as_deref().context("--allocate-node-cidrs needs --cluster-cidr")?;
                    let ranges =
                        nodeipam::RangeAllocator::new(cidr, flags.node_cidr_mask_size).map_err(anyhow::Error::msg)?;
                    add(nodeipam::NodeIpamController::new(&m, ranges), 1, &mut w)
                }
                // Kubernetes' controller too does nothing without --allocate-node-cidrs.
                "nodeipam" => {}
                "nodelifecycle" => {
                    add(nodelifecycle::NodeLifecycleController::new(&m, flags.node_monitor_grace_period), 1, &mut w)
                }
                "taint-eviction-controller" => add(nodelifecycle::TaintEvictionController::new(&m), 5, &mut w),
                "disruption" => add(disruption::DisruptionController::new(&m), 5, &mut w),
                "podgc" => add(podgc::PodGcController::new(&m, flags.terminated_pod_gc_threshold), 1, &mut w),
                other => anyhow::bail!("controller {other} is not built"),
            }
        }
    }
    // As kube-controller-manager does, a replica lists and watches nothing until it leads: a
    // standby costs the API no watch streams and holds no caches; a new leader lists first.
    tokio::pin!(stop);
    let mut waiting = leadership.clone();
    let leads = tokio::select! {
        _ = waiting.acquired() => true,
        _ = &mut stop => false,
    };
    let started = leads && {
        for begin in begins {
            if let Some(s) = begin(&mut tasks) {
                synced.push(s);
            }
        }
        synced.push(Box::pin(m.informers.start(&client, &mut tasks)));
        let synced = futures::future::join_all(synced);
        tokio::select! {
            _ = synced => true,
            _ = &mut stop => false,
        }
    };
    if started {
        tracing::info!("informers synced; controllers starting");
        for s in starts {
            s(&mut tasks);
        }
        stop.await;
    }
    for q in &queues {
        q();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    tracing::info!("controller manager stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[&str]) -> ControllerFlags {
        ControllerFlags {
            controllers: list.iter().map(|s| s.to_string()).collect(),
            concurrent_replicaset_syncs: 1,
            concurrent_rc_syncs: 1,
            concurrent_deployment_syncs: 1,
            concurrent_gc_syncs: 1,
            concurrent_endpoint_syncs: 1,
            concurrent_service_endpoint_syncs: 1,
            concurrent_daemonset_syncs: 1,
            concurrent_job_syncs: 1,
            concurrent_statefulset_syncs: 1,
            concurrent_cron_job_syncs: 1,
            concurrent_namespace_syncs: 1,
            node_monitor_grace_period: std::time::Duration::from_secs(20),
            terminated_pod_gc_threshold: 1,
            root_ca_file: None,
            root_ca: None,
            allocate_node_cidrs: false,
            cluster_cidr: None,
            node_cidr_mask_size: 24,
        }
    }

    #[test]
    fn the_controllers_flag_reads_as_kubernetes_reads_it() {
        assert_eq!(flags(&["*"]).enabled().unwrap(), CONTROLLERS.to_vec());
        assert_eq!(
            flags(&["*", "-deployment", "-endpoint"]).enabled().unwrap(),
            vec![
                "replicaset",
                "replicationcontroller",
                "daemonset",
                "statefulset",
                "job",
                "cronjob",
                "garbagecollector",
                "namespace",
                "endpointslice",
                "serviceaccount",
                "root-ca-cert-publisher",
                "clusterrole-aggregation",
                "nodelifecycle",
                "nodeipam",
                "taint-eviction-controller",
                "podgc",
                "disruption"
            ]
        );
        assert_eq!(flags(&["deployment"]).enabled().unwrap(), vec!["deployment"]);
        assert!(flags(&[]).enabled().unwrap().is_empty());
        let e = flags(&["*", "-nope"]).enabled().unwrap_err();
        assert!(e.contains("unknown controller \"nope\""), "{e}");
    }
}
