//! A node's registration and heartbeats: the Node object with its capacity, conditions and
//! addresses, and its Lease in `kube-node-lease`, renewed as kubelet renews it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Where node leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Kubelet's version string as nodes report it.
pub const KUBELET_VERSION: &str = concat!("v1.33.0-keelson.", env!("CARGO_PKG_VERSION"));

/// What a node registers as.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub pod_cidr: Option<String>,
    pub internal_ip: String,
    pub hostname: String,
    pub system: NodeSystemInfo,
    /// Why the node is not ready yet (its runtime is starting), reported as Ready=False.
    pub not_ready: Option<String>,
    /// The port of the agent's endpoint (logs, exec, attach, port-forward).
    pub kubelet_port: u16,
    /// The directory whose filesystem the node watches for disk pressure; a node without one
    /// (hollow) measures nothing and reports no pressure and no images.
    pub measure_dir: Option<std::path::PathBuf>,
    /// What the last measurement found.
    pub observed: Observed,
    /// Each condition's status and when it last changed, so that a report keeps a condition's
    /// lastTransitionTime until its status changes (as kubelet does).
    pub(crate) since: BTreeMap<String, (String, Time)>,
}

/// What a node measures of itself: eviction signals and the images its runtime holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub pressure: crate::machine::Pressure,
    pub images: Vec<ContainerImage>,
}

/// Images a node lists in its status, largest first (kubelet's `--node-status-max-images`).
const STATUS_IMAGES_MAX: usize = 50;

/// The runtime's images as a node's status lists them: every tag and digest as a name, largest
/// first, at most [`STATUS_IMAGES_MAX`].
pub fn status_images(mut images: Vec<crate::runtime::Image>) -> Vec<ContainerImage> {
    images.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then_with(|| a.id.cmp(&b.id)));
    images
        .into_iter()
        .map(|i| ContainerImage {
            names: Some(i.repo_tags.into_iter().chain(i.repo_digests).collect::<Vec<_>>()).filter(|n| !n.is_empty()),
            size_bytes: Some(i.size_bytes as i64),
        })
        .filter(|i| i.names.is_some())
        .take(STATUS_IMAGES_MAX)
        .collect()
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, at: &Time) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(at.clone()),
        last_transition_time: Some(at.clone()),
    }
}

impl NodeSetup {
    /// The node's conditions, each with its reason as kubelet words it.
    fn conditions(&self, at: &Time) -> Vec<NodeCondition> {
        let p = self.observed.pressure;
        let mut conditions = vec![
            if p.memory {
                condition(
                    "MemoryPressure",
                    "True",
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                    at,
                )
            } else {
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                    at,
                )
            },
            if p.disk {
                condition("DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure", at)
            } else {
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", at)
            },
            if p.pid {
                condition(
                    "PIDPressure",
                    "True",
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                    at,
                )
            } else {
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", at)
            },
            match &self.not_ready {
                None => condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", at),
                Some(why) => condition("Ready", "False", "KubeletNotReady", why, at),
            },
        ];
        for c in &mut conditions {
            if let Some((status, since)) = self.since.get(&c.type_) {
                if *status == c.status {
                    c.last_transition_time = Some(since.clone());
                }
            }
        }
        conditions
    }

    /// Measures the machine and the runtime's images again; true when something changed since
    /// the last measurement (and the node's status should be reported now).
    pub async fn measure<R: crate::runtime::ImageService>(&mut self, runtime: &R) -> bool {
        let Some(dir) = &self.measure_dir else { return false };
        let pressure = crate::machine::pressure(dir).unwrap_or_else(|e| {
            tracing::warn!(error = format!("{e:#}"), "cannot measure the node's resources");
            self.observed.pressure
        });
        let images = match runtime.list_images().await {
            Ok(images) => status_images(images),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the runtime's images");
                self.observed.images.clone()
            }
        };
        let observed = Observed { pressure, images };
        let changed = observed != self.observed;
        self.observed = observed;
        changed
    }

    /// Remembers the conditions as reported, so that the next report keeps their transition times.
    fn reported(&mut self, conditions: &[NodeCondition]) {
        for c in conditions {
            let at = c.last_transition_time.clone().unwrap_or_else(now_time);
            self.since.insert(c.type_.clone(), (c.status.clone(), at));
        }
    }

    /// The node's status as its agent reports it, with the time of this report.
    pub fn status(&self) -> NodeStatus {
        let at = now_time();
        NodeStatus {
            capacity: Some(self.capacity.clone()),
            allocatable: Some(self.allocatable.clone()),
            conditions: Some(self.conditions(&at)),
            images: self.measure_dir.is_some().then(|| self.observed.images.clone()),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: self.internal_ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: self.hostname.clone() },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: self.kubelet_port.into() }),
            }),
            node_info: Some(self.system.clone()),
            ..Default::default()
        }
    }

    fn object(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: self.pod_cidr.clone(),
                pod_cidrs: self.pod_cidr.clone().map(|c| vec![c]),
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..Default::default()
            }),
            status: Some(self.status()),
        }
    }
}

/// Registers the node: creates it, or, when it exists (the agent restarted), brings its labels
/// and status up to date while keeping what others set (cordoning, taints added by users).
/// Returns the node's uid, which its Lease names as owner.
pub async fn register(client: &kube::Client, setup: &NodeSetup) -> anyhow::Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let node = match api.create(&PostParams::default(), &setup.object()).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::json!({ "metadata": { "labels": setup.labels } });
            api.patch(&setup.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .context("updating the node's labels")?;
            let status = serde_json::json!({ "status": setup.status() });
            api.patch_status(&setup.name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .context("updating the node's status")?
        }
        Err(e) => return Err(e).context("registering the node"),
    };
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Records that the node's agent started and the node is ready (kubelet's events), without
/// waiting: an event that cannot be written is only logged.
pub fn announce(client: &kube::Client, setup: &NodeSetup) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = |reason: &str, message: String| Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}.{}", setup.name, now.as_nanosecond() as u64, reason.to_lowercase())),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Node".into()),
            name: Some(setup.name.clone()),
            // kubelet names its node by the node's name in the uid field, where kubectl
            // describe looks for a kubelet's events.
            uid: Some(setup.name.clone()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some("Normal".into()),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(setup.name.clone()) }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(setup.name.clone()),
        ..Default::default()
    };
    let events = [
        event("Starting", "Starting kubelet.".into()),
        event("NodeReady", format!("Node {} status is now: NodeReady", setup.name)),
    ];
    tokio::spawn(async move {
        for e in events {
            if let Err(err) = api.create(&PostParams::default(), &e).await {
                tracing::debug!(error = %err, "node event not written");
            }
        }
    });
}

/// Reports the node's status again: conditions with a fresh heartbeat time and, for a node that
/// measures itself, its images.
pub async fn report_status(client: &kube::Client, setup: &mut NodeSetup) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let status = setup.status();
    let conditions = status.conditions.unwrap_or_default();
    let mut patch = serde_json::json!({ "status": { "conditions": conditions } });
    if let Some(images) = status.images {
        patch["status"]["images"] = serde_json::to_value(images)?;
    }
    api.patch_status(&setup.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("reporting node status")?;
    setup.reported(&conditions);
    Ok(())
}

/// The node's Lease, held by the node itself, as kubelet keeps it: created on first renewal,
/// then updated with the last version seen (a conflict means someone else wrote it: read again).
pub struct NodeLease {
    api: Api<Lease>,
    name: String,
    owner_uid: String,
    duration: Duration,
    last: Option<Lease>,
}

impl NodeLease {
    pub fn new(client: &kube::Client, name: &str, owner_uid: String, duration: Duration) -> NodeLease {
        NodeLease {
            api: Api::namespaced(client.clone(), LEASE_NAMESPACE),
            name: name.into(),
            owner_uid,
            duration,
            last: None,
        }
    }

    pub async fn renew(&mut self) -> anyhow::Result<()> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        if let Some(mut lease) = self.last.take() {
            lease.spec.get_or_insert_with(Default::default).renew_time = Some(now.clone());
            match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(l) => {
                    self.last = Some(l);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => return Err(e).context("renewing the node lease"),
            }
        }
        let lease = match self.api.get_opt(&self.name).await.context("reading the node lease")? {
            Some(mut l) => {
                let spec = l.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.name.clone());
                spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
                spec.renew_time = Some(now);
                self.api.replace(&self.name, &PostParams::default(), &l).await.context("renewing the node lease")?
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: (!self.owner_uid.is_empty()).then(|| {
                            vec![OwnerReference {
                                api_version: "v1".into(),
                                kind: "Node".into(),
                                name: self.name.clone(),
                                uid: self.owner_uid.clone(),
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.name.clone()),
                        lease_duration_seconds: Some(self.duration.as_secs() as i32),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await.context("creating the node lease")?
            }
        };
        self.last = Some(lease);
        Ok(())
    }
}
