//! The scheduling framework: what a plugin sees (a pod, a node's info, the cluster's snapshot),
//! what it answers (a `Status`, a score), and the per-cycle state plugins share between their
//! extension points. Shaped after kube-scheduler's framework so that its plugin names and
//! semantics carry over one to one.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::resources::{pod_requests, Resources};

/// Kubernetes' score range: every plugin's normalized score lies in `0..=MAX_NODE_SCORE`.
pub const MAX_NODE_SCORE: i64 = 100;

/// A pod as the scheduler reasons about it: the object and what it derives from it once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub namespace: String,
    /// Requests as Kubernetes counts them (containers, init containers, overhead).
    pub requests: Resources,
    /// The same, with Kubernetes' defaults (100m cpu, 200Mi memory) for containers that request
    /// none; what the scoring plugins use so that request-less pods still spread.
    pub non_zero_requests: Resources,
    pub priority: i32,
    /// Host ports the pod's containers claim: (protocol, host IP, port).
    pub host_ports: Vec<HostPort>,
    /// Whether the pod has pod affinity or anti-affinity terms (kube-scheduler's
    /// PodsWithAffinity), and required anti-affinity ones (PodsWithRequiredAntiAffinity): the
    /// only existing pods InterPodAffinity has to look at for a pod without terms of its own.
    pub has_pod_affinity: bool,
    pub has_required_anti_affinity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    /// "0.0.0.0" when the container gives none.
    pub ip: String,
    pub port: i32,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let (requests, non_zero_requests) = pod_requests(&pod);
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let host_ports = host_ports(&pod);
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let has_pod_affinity = affinity.is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some());
        let has_required_anti_affinity = affinity
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .is_some_and(|terms| !terms.is_empty());
        PodInfo {
            has_pod_affinity,
            has_required_anti_affinity,
            key: format!("{namespace}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace,
            requests,
            non_zero_requests,
            priority,
            host_ports,
            pod,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
    }
}

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else { return out };
    // Init containers hold their ports only while they run, except sidecars, which keep running.
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    for c in spec.containers.iter().chain(sidecars) {
        for p in c.ports.iter().flatten() {
            if let Some(port) = p.host_port.filter(|p| *p > 0) {
                out.push(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ip: p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into()),
                    port,
                });
            }
        }
    }
    out
}

fn cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// A node and the pods that count against it (bound ones and assumed ones).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub pods: Vec<Arc<PodInfo>>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub used_ports: Vec<HostPort>,
    /// How many of `pods` have pod (anti-)affinity, and required anti-affinity.
    pub pods_with_affinity: u32,
    pub pods_with_required_anti_affinity: u32,
    /// `spec.unschedulable` (cordoned), kept here because the first filter reads it on every
    /// node examined, and reaching into the Node for it costs a cache miss per node.
    pub unschedulable: bool,
    /// Set by the cache on every change it makes, unique across nodes and changes; 0 for a node
    /// changed outside it (a what-if copy in preemption, nominated pods added). Snapshots copy
    /// only what changed by it, and memos of per-node work trust only a non-zero one.
    pub generation: u64,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let allocatable = Resources::allocatable(&node);
        NodeInfo {
            unschedulable: cordoned(&node),
            name: node.metadata.name.clone().unwrap_or_default(),
            node,
            pods: Vec::new(),
            allocatable,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            used_ports: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
            generation: 0,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = Resources::allocatable(&node);
        self.unschedulable = cordoned(&node);
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.node = node;
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.generation = 0;
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods_with_affinity += pod.has_pod_affinity as u32;
        self.pods_with_required_anti_affinity += pod.has_required_anti_affinity as u32;
        self.pods.push(pod);
    }

    /// Removes the pod with `uid`; false when it was not here.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.uid == uid) else { return false };
        self.generation = 0;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_requested.sub(&pod.non_zero_requests);
        self.pods_with_affinity -= pod.has_pod_affinity as u32;
        self.pods_with_required_anti_affinity -= pod.has_required_anti_affinity as u32;
        for port in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }
}

/// The cluster as one scheduling cycle sees it: every node with its pods, fixed for the cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<NodeInfo>>,
    /// Labels of each namespace by name, for pod (anti-)affinity terms' `namespaceSelector`.
    /// A namespace missing here has no labels (as kube-scheduler assumes when its lister misses).
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Pods that preemption nominated for a node, by node: they count there for pods of no
    /// higher priority, so that room freed for one pod is not taken by another.
    pub nominated: HashMap<String, Vec<Arc<PodInfo>>>,
}

impl NodeInfo {
    /// This node as `pod` must see it: with the pods nominated for it whose priority is at least
    /// `pod`'s (kube-scheduler's addNominatedPods). Borrowed when there are none.
    pub fn with_nominated<'a>(
        self: &'a Arc<Self>,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> std::borrow::Cow<'a, NodeInfo> {
        let Some(list) = snapshot.nominated.get(&self.name) else { return std::borrow::Cow::Borrowed(&**self) };
        let mut ahead = list.iter().filter(|p| p.uid != pod.uid && p.priority >= pod.priority).peekable();
        if ahead.peek().is_none() {
            return std::borrow::Cow::Borrowed(&**self);
        }
        let mut node = (**self).clone();
        for p in ahead {
            node.add_pod(p.clone());
        }
        std::borrow::Cow::Owned(node)
    }
}

impl Snapshot {
    pub fn node(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// How a plugin answered, as kube-scheduler's framework codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// Does not fit now; preempting pods on the node might make it fit.
    Unschedulable,
    /// Does not fit, and preemption cannot change that.
    UnschedulableAndUnresolvable,
    /// The plugin has nothing to do for this pod (from PreFilter/PreScore: skip its Filter/Score).
    Skip,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    /// Human reasons, in Kubernetes' words (they are counted into FailedScheduling's message).
    pub reasons: Vec<String>,
}

impl Status {
    pub fn success() -> Status {
        Status { code: Code::Success, reasons: Vec::new() }
    }
    pub fn skip() -> Status {
        Status { code: Code::Skip, reasons: Vec::new() }
    }
    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status { code: Code::Unschedulable, reasons: vec![reason.into()] }
    }
    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status { code: Code::UnschedulableAndUnresolvable, reasons: vec![reason.into()] }
    }
    pub fn error(reason: impl Into<String>) -> Status {
        Status { code: Code::Error, reasons: vec![reason.into()] }
    }
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// State one plugin computes in PreFilter/PreScore and reads back in Filter/Score, keyed by the
/// plugin's name. Cloned for preemption's what-if runs.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Arc<dyn Any + Send + Sync>>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Arc::new(value));
    }
    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|v| v.downcast_ref::<T>())
    }
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        CycleState { data: self.data.clone() }
    }
}

/// One scheduling plugin. A plugin implements the extension points it takes part in; which of
/// them are enabled comes from the profile (`config.rs`). Everything is synchronous and pure
/// over the snapshot: a plugin never calls the API.
pub trait Plugin: Send + Sync {
    /// Kubernetes' name for the plugin, e.g. "NodeResourcesFit".
    fn name(&self) -> &'static str;

    /// Computes per-pod state once per cycle. `Skip` disables this plugin's Filter for the pod;
    /// an unschedulable status fails the pod on every node.
    fn pre_filter(&self, _state: &mut CycleState, _pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        Status::success()
    }

    /// Whether `pod` may run on `node`.
    fn filter(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        Status::success()
    }

    /// Computes per-pod state for scoring over the nodes that passed the filters.
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        Status::success()
    }

    /// A raw score for `node`; `normalize_score` maps the raw scores to `0..=MAX_NODE_SCORE`.
    fn score(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> i64 {
        0
    }

    /// Normalizes the raw scores of every feasible node in place (same order as the nodes).
    fn normalize_score(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

/// kube-scheduler's minFeasibleNodesToFind: below this many nodes every node is filtered/scored.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// kube-scheduler's minFeasibleNodesPercentageToFind: the adaptive percentage's floor.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// How many feasible nodes the scheduler looks for before it stops filtering (kube-scheduler's
/// `numFeasibleNodesToFind`). `percentage` is `percentageOfNodesToScore`; `None` or 0 means
/// adaptive (50% minus 1% per 125 nodes, at least 5%), so big clusters score a sample rather than
/// every node. Never fewer than 100 nodes (or all of them, when there are fewer).
pub fn nodes_to_score(total_nodes: usize, percentage: Option<u32>) -> usize {
    if total_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return total_nodes;
    }
    let percentage = match percentage.unwrap_or(0) as usize {
        0 => 50usize.saturating_sub(total_nodes / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
        p if p >= 100 => return total_nodes,
        p => p,
    };
    (total_nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

#[cfg(test)]
mod nodes_to_score_tests {
    use super::nodes_to_score;

    #[test]
    fn nodes_to_score_follows_kube_scheduler() {
        let cases = [
            // (nodes, percentageOfNodesToScore, nodes to find)
            (0, None, 0),
            (10, None, 10),
            (99, Some(10), 99),
            (100, None, 100),   // 49% of 100 is below the 100-node floor
            (500, None, 230),   // 50 - 4 = 46%
            (1000, None, 420),  // 50 - 8 = 42%
            (5000, None, 500),  // 50 - 40 = 10%
            (6000, None, 300),  // 50 - 48 = 2%, floored at 5%
            (10000, None, 500), // adaptive would go negative: 5%
            (5000, Some(0), 500),
            (5000, Some(1), 100), // 50 nodes, floored at 100
            (5000, Some(30), 1500),
            (5000, Some(100), 5000),
            (5000, Some(150), 5000),
        ];
        for (nodes, pct, want) in cases {
            assert_eq!(nodes_to_score(nodes, pct), want, "nodes={nodes} percentage={pct:?}");
        }
    }
}

/// kube-scheduler's `DefaultNormalizeScore`: scales raw scores so that the highest becomes
/// `MAX_NODE_SCORE` (integer division, as Kubernetes rounds). With `reverse` the lowest raw score
/// wins instead, for plugins that count something bad. All-zero scores stay 0, or become
/// `MAX_NODE_SCORE` when reversed, so that no node is preferred.
pub fn default_normalize_score(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.fill(MAX_NODE_SCORE);
        }
        return;
    }
    for score in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * *score / max;
        *score = if reverse { MAX_NODE_SCORE - scaled } else { scaled };
    }
}

#[cfg(test)]
mod default_normalize_score_tests {
    use super::default_normalize_score;

    #[test]
    fn scales_to_the_maximum_and_reverses() {
        let cases: &[(&[i64], bool, &[i64])] = &[
            (&[], false, &[]),
            (&[0, 0], false, &[0, 0]),
            (&[0, 0], true, &[100, 100]),
            (&[1, 2, 3], false, &[33, 66, 100]),
            (&[1, 2, 3], true, &[67, 34, 0]),
            (&[0, 5], true, &[100, 0]),
        ];
        for (raw, reverse, want) in cases {
            let mut scores = raw.to_vec();
            default_normalize_score(&mut scores, *reverse);
            assert_eq!(&scores, want, "raw={raw:?} reverse={reverse}");
        }
    }
}
