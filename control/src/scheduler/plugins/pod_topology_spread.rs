//! PodTopologySpread: keeps a pod's matching pods evenly spread over topology domains (zones,
//! hosts, ...) as its `topologySpreadConstraints` ask. `DoNotSchedule` constraints filter nodes,
//! `ScheduleAnyway` ones score them; semantics, arithmetic and reason texts are kube-scheduler's.
//!
//! Per pod, PreFilter/PreScore count the matching pods of every domain over the whole snapshot
//! once; Filter and Score then only look counts up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use serde::Deserialize;
use serde_json::Value;

use crate::labels::{is_qualified_name, Selector};
use crate::scheduler::framework::{CycleState, NodeInfo, Plugin, PodInfo, Snapshot, Status, MAX_NODE_SCORE};
use crate::scheduler::plugins::node_affinity::RequiredNodeAffinity;
use crate::scheduler::plugins::taint_toleration::{first_untolerated, is_do_not_schedule};

pub const NAME: &str = "PodTopologySpread";

/// The plugin's score weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 2;

/// Kubernetes' reason texts.
pub const REASON_CONSTRAINTS_NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_NODE_LABEL_NOT_MATCH: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const PRE_FILTER_KEY: &str = "PreFilterPodTopologySpread";
const PRE_SCORE_KEY: &str = "PreScorePodTopologySpread";

const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
const DO_NOT_SCHEDULE: &str = "DoNotSchedule";
const SCHEDULE_ANYWAY: &str = "ScheduleAnyway";
const HONOR: &str = "Honor";

/// Raw score of a node that lacks a topology key the pod's own constraints need: normalization
/// gives it 0 whatever the others score. No real raw score can be this low.
const IGNORED: i64 = i64::MIN;

/// Finds the selector of the Services, ReplicaSets, StatefulSets and ReplicationControllers that
/// own a pod (kube-scheduler's `DefaultSelector`), for default constraints.
pub type OwnerSelector = dyn Fn(&PodInfo) -> Option<Selector> + Send + Sync;

pub struct PodTopologySpread {
    /// Constraints for pods that declare none: Kubernetes' system defaults or the args' list.
    default_constraints: Vec<TopologySpreadConstraint>,
    /// Defaults are the system ones: nodes lacking a key are still scored on the keys they have.
    system_defaulted: bool,
    owner_selector: Option<Arc<OwnerSelector>>,
    /// Per-node counts from earlier cycles (see `CountMemo`).
    memos: std::sync::Mutex<Vec<CountMemo>>,
}

/// Memos kept at most: one per (namespace, selector, topology key) recently spread over.
const COUNT_MEMOS_MAX: usize = 4;
/// A memo's marker for a node without the topology key.
const NO_DOMAIN: u32 = u32::MAX;

/// What PreFilter found on each node for one (namespace, selector, topology key): the node's
/// domain and how many of its pods match. A node keeps its entry while its generation is the
/// same (the cache stamps every change with a new one), so a cycle counts again only the nodes
/// changed since the last: counting every node's pods each cycle was most of a spread pod's
/// scheduling. Entries are by position in the snapshot, checked by generation (unique to one
/// node's state; 0, a what-if copy's, is never trusted).
struct CountMemo {
    namespace: String,
    selector: Selector,
    topology_key: String,
    /// By node position: (generation, domain id or NO_DOMAIN, matching pods).
    nodes: Vec<(u64, u32, i64)>,
    domains: Vec<String>,
    domain_ids: HashMap<String, u32>,
}

impl CountMemo {
    fn new(namespace: &str, c: &Constraint) -> Self {
        CountMemo {
            namespace: namespace.to_string(),
            selector: c.selector.clone(),
            topology_key: c.topology_key.clone(),
            nodes: Vec::new(),
            domains: Vec::new(),
            domain_ids: HashMap::new(),
        }
    }

    fn is_for(&self, namespace: &str, c: &Constraint) -> bool {
        self.namespace == namespace && self.topology_key == c.topology_key && self.selector == c.selector
    }

    /// The domain and matching count of the node at `position`, counted now unless memoized.
    fn entry(&mut self, position: usize, node: &NodeInfo) -> (u32, i64) {
        if self.nodes.len() <= position {
            self.nodes.resize(position + 1, (0, NO_DOMAIN, 0));
        }
        let (generation, domain, count) = self.nodes[position];
        if generation != 0 && generation == node.generation {
            return (domain, count);
        }
        let domain = match node.labels().get(&self.topology_key) {
            Some(value) => match self.domain_ids.get(value) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(self.domains.len()).unwrap_or(NO_DOMAIN);
                    self.domains.push(value.clone());
                    self.domain_ids.insert(value.clone(), id);
                    id
                }
            },
            None => NO_DOMAIN,
        };
        let count = count_matching(&node.pods, &self.selector, &self.namespace);
        self.nodes[position] = (node.generation, domain, count);
        (domain, count)
    }
}

/// `PodTopologySpreadArgs` as a KubeSchedulerConfiguration's pluginConfig carries it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    kind: Option<String>,
    default_constraints: Option<Vec<TopologySpreadConstraint>>,
    defaulting_type: Option<String>,
}

impl PodTopologySpread {
    /// Builds the plugin from its args (None: Kubernetes' defaults, `defaultingType: System`).
    ///
    /// Default constraints (System or List) apply, as in Kubernetes, only to pods without
    /// constraints of their own that some Service/ReplicaSet/StatefulSet/ReplicationController
    /// selects, with that owner's selector. The scheduler keeps no informer for those, so until
    /// [`PodTopologySpread::with_owner_selector`] provides one no pod has an owner selector and
    /// defaults never apply (Kubernetes' behavior for an unowned pod).
    pub fn new(args: Option<&Value>) -> Result<Self, String> {
        let args: Args = super::decode_args(args)?;
        if let Some(kind) = args.kind.as_deref().filter(|k| *k != "PodTopologySpreadArgs") {
            return Err(format!("kind: Invalid value: {kind:?}: want PodTopologySpreadArgs"));
        }
        let defaulting_type = args.defaulting_type.as_deref().filter(|t| !t.is_empty()).unwrap_or("System");
        let constraints = args.default_constraints.unwrap_or_default();
        let mut errs = Vec::new();
        match defaulting_type {
            "System" if !constraints.is_empty() => errs
                .push("defaultingType: Invalid value: \"System\": when .defaultConstraints are not empty".to_string()),
            "System" | "List" => {}
            other => errs
                .push(format!("defaultingType: Unsupported value: {other:?}: supported values: \"System\", \"List\"")),
        }
        for (i, c) in constraints.iter().enumerate() {
            let p = format!("defaultConstraints[{i}]");
            if c.max_skew <= 0 {
                errs.push(format!("{p}.maxSkew: Invalid value: {}: not in valid range (0, inf)", c.max_skew));
            }
            if c.topology_key.is_empty() {
                errs.push(format!("{p}.topologyKey: Required value: can not be empty"));
            } else if !is_qualified_name(&c.topology_key) {
                errs.push(format!("{p}.topologyKey: Invalid value: {:?}: must be a qualified name", c.topology_key));
            }
            match c.when_unsatisfiable.as_str() {
                "" => errs.push(format!("{p}.whenUnsatisfiable: Required value: can not be empty")),
                DO_NOT_SCHEDULE | SCHEDULE_ANYWAY => {}
                other => errs.push(format!(
                    "{p}.whenUnsatisfiable: Unsupported value: {other:?}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
                )),
            }
            if c.label_selector.is_some() {
                errs.push(format!(
                    "{p}.labelSelector: Forbidden: constraint must not define a selector, as they deduced for each pod"
                ));
            }
            let repeated = constraints[..i]
                .iter()
                .any(|o| o.topology_key == c.topology_key && o.when_unsatisfiable == c.when_unsatisfiable);
            if repeated {
                errs.push(format!("{p}: Duplicate value: \"{{{}, {}}}\"", c.topology_key, c.when_unsatisfiable));
            }
        }
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        let system_defaulted = defaulting_type == "System";
        let default_constraints = if system_defaulted { system_default_constraints() } else { constraints };
        Ok(PodTopologySpread { default_constraints, system_defaulted, owner_selector: None, memos: Default::default() })
    }

    /// Lets default constraints apply: `f` answers the selector of a pod's owners.
    pub fn with_owner_selector(mut self, f: Arc<OwnerSelector>) -> Self {
        self.owner_selector = Some(f);
        self
    }

    /// The pod's constraints for `action` (its own, else the defaults), parsed.
    fn constraints(&self, pod: &PodInfo, action: &str) -> Result<Vec<Constraint>, String> {
        let own = own_constraints(&pod.pod);
        if !own.is_empty() {
            return parse_constraints(own, pod.labels(), action);
        }
        let mut defaults = parse_constraints(&self.default_constraints, pod.labels(), action)?;
        if defaults.is_empty() {
            return Ok(defaults);
        }
        let selector = self.owner_selector.as_ref().and_then(|f| f(pod)).filter(|s| !s.is_empty());
        let Some(selector) = selector else { return Ok(Vec::new()) };
        for c in &mut defaults {
            c.selector = selector.clone();
        }
        Ok(defaults)
    }
}

fn system_default_constraints() -> Vec<TopologySpreadConstraint> {
    [(LABEL_HOSTNAME, 3), (LABEL_ZONE, 5)]
        .into_iter()
        .map(|(key, max_skew)| TopologySpreadConstraint {
            topology_key: key.to_string(),
            when_unsatisfiable: SCHEDULE_ANYWAY.to_string(),
            max_skew,
            ..Default::default()
        })
        .collect()
}

fn own_constraints(pod: &Pod) -> &[TopologySpreadConstraint] {
    pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default()
}

/// One constraint as the plugin evaluates it.
#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    topology_key: String,
    selector: Selector,
    min_domains: i64,
    honor_node_affinity: bool,
    honor_node_taints: bool,
}

fn parse_constraints(
    list: &[TopologySpreadConstraint],
    pod_labels: &BTreeMap<String, String>,
    action: &str,
) -> Result<Vec<Constraint>, String> {
    let mut out = Vec::new();
    for c in list.iter().filter(|c| c.when_unsatisfiable == action) {
        let mut selector = Selector::parse_opt(c.label_selector.as_ref())?;
        // matchLabelKeys narrow the selector to pods sharing the incoming pod's values (a
        // Deployment's pod-template-hash, say); keys the pod lacks are ignored.
        for key in c.match_label_keys.iter().flatten() {
            if let Some(value) = pod_labels.get(key) {
                selector.add_equals(key, value);
            }
        }
        out.push(Constraint {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_node_affinity: c.node_affinity_policy.as_deref().is_none_or(|p| p == HONOR),
            honor_node_taints: c.node_taints_policy.as_deref() == Some(HONOR),
        });
    }
    Ok(out)
}

fn has_all_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    let labels = node.labels();
    constraints.iter().all(|c| labels.contains_key(&c.topology_key))
}

/// Pods on the node that count for a constraint: same namespace as the incoming pod, matching
/// the selector, not terminating (Kubernetes skips those, kubernetes#87621). An empty selector
/// counts nothing, as in kube-scheduler.
fn count_matching(pods: &[Arc<PodInfo>], selector: &Selector, namespace: &str) -> i64 {
    if selector.is_empty() {
        return 0;
    }
    let n = pods
        .iter()
        .filter(|p| {
            p.namespace == namespace && p.pod.metadata.deletion_timestamp.is_none() && selector.matches(p.labels())
        })
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Which nodes' pods count, per the constraints' nodeAffinityPolicy / nodeTaintsPolicy: a node
/// the pod could never land on (by its nodeSelector/required node affinity, or an untolerated
/// NoSchedule/NoExecute taint) is left out of the domains when the policy is Honor.
struct Inclusion<'a> {
    pod: &'a Pod,
    /// Parsed once per cycle, when some constraint honors it.
    affinity: Option<RequiredNodeAffinity>,
    need_taints: bool,
}

impl<'a> Inclusion<'a> {
    fn new(pod: &'a Pod, constraints: &[Constraint]) -> Self {
        Inclusion {
            pod,
            affinity: constraints.iter().any(|c| c.honor_node_affinity).then(|| RequiredNodeAffinity::of_pod(pod)),
            need_taints: constraints.iter().any(|c| c.honor_node_taints),
        }
    }

    /// Evaluates the node once; `includes` then answers per constraint.
    fn check(&self, node: &NodeInfo) -> NodeInclusion {
        let taints_ok = || {
            let taints = node.node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
            let tolerations = self.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
            first_untolerated(taints, tolerations, is_do_not_schedule).is_none()
        };
        NodeInclusion {
            affinity: self.affinity.as_ref().is_none_or(|a| a.matches(&node.node)),
            taints: !self.need_taints || taints_ok(),
        }
    }
}

struct NodeInclusion {
    affinity: bool,
    taints: bool,
}

impl NodeInclusion {
    fn includes(&self, c: &Constraint) -> bool {
        (!c.honor_node_affinity || self.affinity) && (!c.honor_node_taints || self.taints)
    }
}

/// What Filter needs of one DoNotSchedule constraint.
struct FilterConstraint {
    topology_key: String,
    max_skew: i64,
    /// 1 when the incoming pod matches its own selector (it will count once placed).
    self_match: i64,
    /// The global minimum: the least-loaded eligible domain's count, or 0 while fewer than
    /// minDomains domains exist.
    min_match: i64,
    /// Matching pods per domain (topology value), over the eligible nodes.
    counts: HashMap<String, i64>,
}

struct PreFilterState {
    constraints: Vec<FilterConstraint>,
}

struct PreScoreState {
    /// Raw score by node name (IGNORED for nodes lacking a key).
    raw: HashMap<String, i64>,
}

/// Adds `n` to a domain's count, allocating the key only for a new domain.
fn add_count(counts: &mut HashMap<String, i64>, value: &str, n: i64) {
    match counts.get_mut(value) {
        Some(c) => *c += n,
        None => {
            counts.insert(value.to_string(), n);
        }
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let constraints = match self.constraints(pod, DO_NOT_SCHEDULE) {
            Ok(c) => c,
            Err(e) => return Status::error(format!("get constraints from pod: {e}")),
        };
        if constraints.is_empty() {
            return Status::skip();
        }
        let inclusion = Inclusion::new(&pod.pod, &constraints);
        let mut memos = self.memos.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each constraint's memo, at the front of the list (the least recent fall off the end).
        let mut picked = Vec::with_capacity(constraints.len());
        for c in &constraints {
            let memo = match memos.iter().position(|m| m.is_for(&pod.namespace, c)) {
                // Domains seen come and go with nodes; a memo holding far more than there are
                // nodes starts over rather than grow.
                Some(i) if memos[i].domains.len() <= 2 * snapshot.nodes.len() + 16 => memos.remove(i),
                Some(i) => {
                    memos.remove(i);
                    CountMemo::new(&pod.namespace, c)
                }
                None => CountMemo::new(&pod.namespace, c),
            };
            picked.push(memo);
        }
        // Matching pods per domain id, per constraint; None: a domain no eligible node is in.
        let mut by_id: Vec<Vec<Option<i64>>> = vec![Vec::new(); constraints.len()];
        let mut entries = Vec::with_capacity(constraints.len());
        for (position, node) in snapshot.nodes.iter().enumerate() {
            entries.clear();
            entries.extend(picked.iter_mut().map(|m| m.entry(position, node)));
            // Only nodes holding every constraint's key form domains.
            if entries.iter().any(|&(domain, _)| domain == NO_DOMAIN) {
                continue;
            }
            let included = inclusion.check(node);
            for ((c, &(domain, n)), counts) in constraints.iter().zip(&entries).zip(&mut by_id) {
                if !included.includes(c) {
                    continue;
                }
                let d = domain as usize;
                if counts.len() <= d {
                    counts.resize(d + 1, None);
                }
                counts[d] = Some(counts[d].unwrap_or(0) + n);
            }
        }
        let counts: Vec<HashMap<String, i64>> = picked
            .iter()
            .zip(&by_id)
            .map(|(m, ids)| ids.iter().enumerate().filter_map(|(d, n)| n.map(|n| (m.domains[d].clone(), n))).collect())
            .collect();
        for memo in picked.into_iter().rev() {
            memos.insert(0, memo);
        }
        memos.truncate(COUNT_MEMOS_MAX.max(constraints.len()));
        drop(memos);
        let constraints = constraints
            .into_iter()
            .zip(counts)
            .map(|(c, counts)| {
                let domains = i64::try_from(counts.len()).unwrap_or(i64::MAX);
                let min_match = if domains < c.min_domains {
                    0
                } else {
                    // No domain at all (with minDomains <= 0): nothing to be skewed against.
                    counts.values().copied().min().unwrap_or(i64::from(i32::MAX))
                };
                FilterConstraint {
                    self_match: i64::from(c.selector.matches(pod.labels())),
                    topology_key: c.topology_key,
                    max_skew: c.max_skew,
                    min_match,
                    counts,
                }
            })
            .collect();
        state.write(PRE_FILTER_KEY, PreFilterState { constraints });
        Status::success()
    }

    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_KEY) else {
            return Status::error(format!("reading {PRE_FILTER_KEY:?} from cycleState: not found"));
        };
        let labels = node.labels();
        for c in &s.constraints {
            let Some(value) = labels.get(&c.topology_key) else {
                return Status::unresolvable(REASON_NODE_LABEL_NOT_MATCH);
            };
            let count = c.counts.get(value).copied().unwrap_or(0);
            if count + c.self_match - c.min_match > c.max_skew {
                return Status::unschedulable(REASON_CONSTRAINTS_NOT_MATCH);
            }
        }
        Status::success()
    }

    fn pre_score(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[Arc<NodeInfo>], snapshot: &Snapshot) -> Status {
        if snapshot.nodes.is_empty() {
            return Status::skip();
        }
        let constraints = match self.constraints(pod, SCHEDULE_ANYWAY) {
            Ok(c) => c,
            Err(e) => return Status::error(format!("calculating preScoreState: {e}")),
        };
        if constraints.is_empty() {
            return Status::skip();
        }
        // With system defaults, a node without a zone label is still spread over by hostname.
        let require_all = !own_constraints(&pod.pod).is_empty() || !self.system_defaulted;

        // Domains are those of the feasible nodes; hostname domains are counted per node below.
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
        let ignored: Vec<bool> = nodes.iter().map(|n| require_all && !has_all_keys(n, &constraints)).collect();
        for (node, _) in nodes.iter().zip(&ignored).filter(|(_, ign)| !**ign) {
            let labels = node.labels();
            for (c, counts) in constraints.iter().zip(&mut counts) {
                if c.topology_key != LABEL_HOSTNAME {
                    let value = labels.get(&c.topology_key).map_or("", String::as_str);
                    add_count(counts, value, 0);
                }
            }
        }
        let scored = ignored.iter().filter(|i| !**i).count();
        // log(domains + 2) so that counts in a few big domains weigh as much as in many small.
        let weights: Vec<f64> = constraints
            .iter()
            .zip(&counts)
            .map(|(c, counts)| {
                let size = if c.topology_key == LABEL_HOSTNAME { scored } else { counts.len() };
                ((size + 2) as f64).ln()
            })
            .collect();

        let inclusion = Inclusion::new(&pod.pod, &constraints);
        for node in &snapshot.nodes {
            if require_all && !has_all_keys(node, &constraints) {
                continue;
            }
            let included = inclusion.check(node);
            let labels = node.labels();
            for (c, counts) in constraints.iter().zip(&mut counts) {
                if !included.includes(c) {
                    continue;
                }
                let value = labels.get(&c.topology_key).map_or("", String::as_str);
                if let Some(count) = counts.get_mut(value) {
                    *count += count_matching(&node.pods, &c.selector, &pod.namespace);
                }
            }
        }

        let mut raw = HashMap::with_capacity(nodes.len());
        for (node, ignored) in nodes.iter().zip(ignored) {
            let score = if ignored {
                IGNORED
            } else {
                let labels = node.labels();
                let mut score = 0.0;
                for ((c, counts), weight) in constraints.iter().zip(&counts).zip(&weights) {
                    let Some(value) = labels.get(&c.topology_key) else { continue };
                    let count = if c.topology_key == LABEL_HOSTNAME {
                        count_matching(&node.pods, &c.selector, &pod.namespace)
                    } else {
                        counts.get(value).copied().unwrap_or(0)
                    };
                    // maxSkew - 1 waters down differences the constraint tolerates anyway.
                    score += count as f64 * weight + (c.max_skew - 1) as f64;
                }
                score.round() as i64
            };
            raw.insert(node.name.clone(), score);
        }
        state.write(PRE_SCORE_KEY, PreScoreState { raw });
        Status::success()
    }

    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        state.read::<PreScoreState>(PRE_SCORE_KEY).and_then(|s| s.raw.get(&node.name).copied()).unwrap_or(0)
    }

    /// Fewest matching pods scores 100: `100 * (max + min - raw) / max`; ignored nodes score 0.
    fn normalize_score(&self, state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        if state.read::<PreScoreState>(PRE_SCORE_KEY).is_none() {
            return;
        }
        let valid = scores.iter().copied().filter(|s| *s != IGNORED);
        let min = valid.clone().min().unwrap_or(0);
        let max = valid.max().unwrap_or(0).max(0);
        for s in scores.iter_mut() {
            *s = if *s == IGNORED {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::json;

    fn node(name: &str, labels: Value, pods: Vec<PodInfo>) -> Arc<NodeInfo> {
        let mut n = NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        ));
        for p in pods {
            n.add_pod(Arc::new(p));
        }
        Arc::new(n)
    }

    fn node_with_taint(name: &str, labels: Value, effect: &str) -> Arc<NodeInfo> {
        Arc::new(NodeInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": effect}]}
            }))
            .unwrap(),
        )))
    }

    fn pod(ns: &str, labels: Value, spec: Value) -> PodInfo {
        let mut spec = spec;
        spec["containers"] = json!([]);
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels}, "spec": spec}))
                .unwrap(),
        ))
    }

    fn foo(n: usize) -> Vec<PodInfo> {
        (0..n).map(|_| pod("default", json!({"foo": ""}), json!({}))).collect()
    }

    fn spread(key: &str, max_skew: i32, action: &str) -> Value {
        json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": action,
               "labelSelector": {"matchExpressions": [{"key": "foo", "operator": "Exists"}]}})
    }

    fn snapshot(nodes: Vec<Arc<NodeInfo>>) -> Snapshot {
        Snapshot { nodes, ..Default::default() }
    }

    /// Runs PreFilter and Filter on every node; names of the nodes that fit (or the PreFilter code).
    fn fits(pl: &PodTopologySpread, p: &PodInfo, snap: &Snapshot) -> Result<Vec<String>, Code> {
        let mut state = CycleState::default();
        let s = pl.pre_filter(&mut state, p, snap);
        if !s.is_success() {
            return Err(s.code);
        }
        Ok(snap.nodes.iter().filter(|n| pl.filter(&state, p, n).is_success()).map(|n| n.name.clone()).collect())
    }

    /// Counts remembered across cycles answer as fresh counts do while the cache changes nodes
    /// (pods placed and removed, a node relabelled, nodes added and removed) and while what-if
    /// copies (generation 0) pass through.
    #[test]
    fn remembered_counts_answer_as_fresh_ones() {
        use crate::scheduler::cache::Cache;
        let kube_node = |name: &str, zone: &str| -> Arc<k8s_openapi::api::core::v1::Node> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": {"zone": zone}}})).unwrap())
        };
        let placed = |uid: &str, node: Option<&str>| -> Arc<PodInfo> {
            Arc::new(PodInfo::new(Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": uid, "uid": uid, "namespace": "default", "labels": {"foo": ""}},
                    "spec": {"nodeName": node, "containers": []}}),
                )
                .unwrap(),
            )))
        };
        let incoming = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        let remembering = PodTopologySpread::new(None).unwrap();
        let mut cache = Cache::new();
        let mut snap = Snapshot::default();
        for (i, zone) in ["z1", "z1", "z2", "z2", "z3"].iter().enumerate() {
            cache.upsert_node(kube_node(&format!("n{i}"), zone));
        }
        let check = |snap: &Snapshot, step: &str| {
            let fresh = PodTopologySpread::new(None).unwrap();
            assert_eq!(fits(&remembering, &incoming, snap), fits(&fresh, &incoming, snap), "{step}");
        };
        let step = |cache: &mut Cache, snap: &mut Snapshot, what: &str| {
            cache.update_snapshot(snap);
            check(snap, what);
        };
        step(&mut cache, &mut snap, "empty nodes");
        cache.assume(placed("a", None), "n0");
        cache.upsert_pod(placed("b", Some("n2")));
        step(&mut cache, &mut snap, "pods placed");
        cache.upsert_pod(placed("c", Some("n4")));
        cache.assume(placed("d", None), "n4");
        step(&mut cache, &mut snap, "a zone filled");
        cache.remove_pod("a");
        cache.upsert_node(kube_node("n1", "z3"));
        step(&mut cache, &mut snap, "a pod gone, a node moved to another zone");
        cache.remove_node("n0");
        cache.upsert_node(kube_node("n5", "z1"));
        step(&mut cache, &mut snap, "nodes removed and added");
        // A what-if copy (preemption's) with a pod removed: counted afresh, and the memo not
        // trusted for it afterwards.
        let mut what_if = snap.clone();
        let i = what_if.nodes.iter().position(|n| n.name == "n4").unwrap();
        Arc::make_mut(&mut what_if.nodes[i]).remove_pod("c");
        check(&what_if, "a what-if copy");
        check(&snap, "the real snapshot after the copy");
    }

    fn zones(a: usize, b: usize) -> Vec<Arc<NodeInfo>> {
        vec![
            node("node-a", json!({"zone": "zone1", "node": "node-a"}), foo(a)),
            node("node-b", json!({"zone": "zone1", "node": "node-b"}), vec![]),
            node("node-x", json!({"zone": "zone2", "node": "node-x"}), foo(b)),
            node("node-y", json!({"zone": "zone2", "node": "node-y"}), vec![]),
        ]
    }

    #[test]
    fn filter_keeps_skew_within_max_skew() {
        let pl = PodTopologySpread::new(None).unwrap();
        let zone = |max_skew| json!({"topologySpreadConstraints": [spread("zone", max_skew, DO_NOT_SCHEDULE)]});
        type Case = (&'static str, PodInfo, Vec<Arc<NodeInfo>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "no pods anywhere: every zone fits",
                pod("default", json!({"foo": ""}), zone(1)),
                zones(0, 0),
                vec!["node-a", "node-b", "node-x", "node-y"],
            ),
            // zone1 has 3, zone2 has 2: adding to zone1 makes skew 2.
            (
                "self-match: only the emptier zone",
                pod("default", json!({"foo": ""}), zone(1)),
                zones(3, 2),
                vec!["node-x", "node-y"],
            ),
            // The pod does not match its own selector: zone1 = 3 - 2 = 1 is fine.
            (
                "no self-match: skew of existing pods only",
                pod("default", json!({}), zone(1)),
                zones(3, 2),
                vec!["node-a", "node-b", "node-x", "node-y"],
            ),
            (
                "maxSkew 2 allows a gap of one more",
                pod("default", json!({"foo": ""}), zone(2)),
                zones(3, 2),
                vec!["node-a", "node-b", "node-x", "node-y"],
            ),
            (
                "pods of other namespaces don't count",
                pod("other", json!({"foo": ""}), zone(1)),
                zones(3, 0),
                vec!["node-a", "node-b", "node-x", "node-y"],
            ),
        ];
        for (name, p, nodes, want) in cases {
            assert_eq!(fits(&pl, &p, &snapshot(nodes)).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn missing_topology_label_is_unresolvable() {
        let pl = PodTopologySpread::new(None).unwrap();
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        let snap = snapshot(vec![node("bare", json!({}), foo(5)), node("z", json!({"zone": "z1"}), vec![])]);
        let mut state = CycleState::default();
        assert!(pl.pre_filter(&mut state, &p, &snap).is_success());
        let s = pl.filter(&state, &p, &snap.nodes[0]);
        assert_eq!(
            (s.code, s.reasons),
            (Code::UnschedulableAndUnresolvable, vec![REASON_NODE_LABEL_NOT_MATCH.to_string()])
        );
        // The unlabeled node's pods form no domain: z1 (empty) holds the global minimum.
        assert!(pl.filter(&state, &p, &snap.nodes[1]).is_success());
    }

    #[test]
    fn min_domains_treats_the_global_minimum_as_zero() {
        let pl = PodTopologySpread::new(None).unwrap();
        let nodes = || vec![node("a", json!({"zone": "z1"}), foo(2)), node("b", json!({"zone": "z2"}), foo(2))];
        let with_min = |min_domains: i32| {
            let mut c = spread("zone", 1, DO_NOT_SCHEDULE);
            c["minDomains"] = json!(min_domains);
            pod("default", json!({"foo": ""}), json!({"topologySpreadConstraints": [c]}))
        };
        // Two domains at 2 each: global minimum 2, skew 1 everywhere.
        assert_eq!(fits(&pl, &with_min(2), &snapshot(nodes())).unwrap(), vec!["a", "b"]);
        // Fewer domains than minDomains: global minimum 0, skew 3 > 1.
        assert_eq!(fits(&pl, &with_min(3), &snapshot(nodes())).unwrap(), Vec::<String>::new());
        let s = {
            let mut state = CycleState::default();
            let p = with_min(3);
            let snap = snapshot(nodes());
            pl.pre_filter(&mut state, &p, &snap);
            pl.filter(&state, &p, &snap.nodes[0])
        };
        assert_eq!((s.code, s.reasons), (Code::Unschedulable, vec![REASON_CONSTRAINTS_NOT_MATCH.to_string()]));
    }

    #[test]
    fn node_inclusion_policies_and_match_label_keys() {
        let pl = PodTopologySpread::new(None).unwrap();
        // z2's only node is excluded by the pod's nodeSelector (Honor by default), so z2 is no
        // domain and z1 alone holds the minimum: any node of z1 fits.
        let nodes = vec![
            node("a", json!({"zone": "z1", "pool": "x"}), foo(3)),
            node("b", json!({"zone": "z2", "pool": "y"}), vec![]),
        ];
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"nodeSelector": {"pool": "x"},
            "topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        assert_eq!(fits(&pl, &p, &snapshot(nodes.clone())).unwrap(), vec!["a", "b"]);
        // nodeAffinityPolicy: Ignore counts z2 (0 pods), so z1 is 3 over.
        let mut c = spread("zone", 1, DO_NOT_SCHEDULE);
        c["nodeAffinityPolicy"] = json!("Ignore");
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"nodeSelector": {"pool": "x"}, "topologySpreadConstraints": [c]}),
        );
        assert_eq!(fits(&pl, &p, &snapshot(nodes)).unwrap(), vec!["b"]);

        // Taints are ignored by default; nodeTaintsPolicy: Honor drops the tainted node's domain.
        let nodes =
            vec![node("a", json!({"zone": "z1"}), foo(2)), node_with_taint("t", json!({"zone": "z2"}), "NoSchedule")];
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        assert_eq!(fits(&pl, &p, &snapshot(nodes.clone())).unwrap(), vec!["t"]);
        let mut c = spread("zone", 1, DO_NOT_SCHEDULE);
        c["nodeTaintsPolicy"] = json!("Honor");
        let p = pod("default", json!({"foo": ""}), json!({"topologySpreadConstraints": [c.clone()]}));
        assert_eq!(fits(&pl, &p, &snapshot(nodes.clone())).unwrap(), vec!["a", "t"]);
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [c],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
        );
        assert_eq!(fits(&pl, &p, &snapshot(nodes)).unwrap(), vec!["t"]);

        // matchLabelKeys: only pods of the same revision count.
        let rev = |r: &str, n: usize| -> Vec<PodInfo> {
            (0..n).map(|_| pod("default", json!({"foo": "", "rev": r}), json!({}))).collect()
        };
        let nodes =
            vec![node("a", json!({"zone": "z1"}), rev("old", 5)), node("b", json!({"zone": "z2"}), rev("new", 1))];
        let mut c = spread("zone", 1, DO_NOT_SCHEDULE);
        c["matchLabelKeys"] = json!(["rev"]);
        let p = pod("default", json!({"foo": "", "rev": "new"}), json!({"topologySpreadConstraints": [c]}));
        assert_eq!(fits(&pl, &p, &snapshot(nodes)).unwrap(), vec!["a"]);
    }

    #[test]
    fn terminating_pods_and_skip() {
        let pl = PodTopologySpread::new(None).unwrap();
        let terminating: Vec<PodInfo> = (0..3)
            .map(|_| {
                PodInfo::new(Arc::new(
                    serde_json::from_value(
                        json!({"metadata": {"name": "t", "namespace": "default", "labels": {"foo": ""},
                        "deletionTimestamp": "2024-01-01T00:00:00Z"}, "spec": {"containers": []}}),
                    )
                    .unwrap(),
                ))
            })
            .collect();
        let nodes = vec![node("a", json!({"zone": "z1"}), terminating), node("b", json!({"zone": "z2"}), vec![])];
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        assert_eq!(fits(&pl, &p, &snapshot(nodes.clone())).unwrap(), vec!["a", "b"]);
        // No constraints (and no owner selector for defaults): Skip.
        assert_eq!(fits(&pl, &pod("default", json!({}), json!({})), &snapshot(nodes)), Err(Code::Skip));
    }

    fn scores(pl: &PodTopologySpread, p: &PodInfo, snap: &Snapshot, feasible: &[usize]) -> Result<Vec<i64>, Code> {
        let nodes: Vec<_> = feasible.iter().map(|i| snap.nodes[*i].clone()).collect();
        let mut state = CycleState::default();
        let s = pl.pre_score(&mut state, p, &nodes, snap);
        if !s.is_success() {
            return Err(s.code);
        }
        let mut scores: Vec<i64> = nodes.iter().map(|n| pl.score(&state, p, n)).collect();
        pl.normalize_score(&state, p, &mut scores);
        Ok(scores)
    }

    #[test]
    fn score_prefers_domains_with_fewer_matching_pods() {
        let pl = PodTopologySpread::new(None).unwrap();
        let snap = snapshot(vec![
            node("node-a", json!({"zone": "zone1", "node": "node-a"}), foo(2)),
            node("node-b", json!({"zone": "zone1", "node": "node-b"}), foo(1)),
            node("node-x", json!({"zone": "zone2", "node": "node-x"}), foo(0)),
            node("node-y", json!({"zone": "zone2", "node": "node-y"}), foo(4)),
            node("no-zone", json!({"node": "no-zone"}), foo(1)),
        ]);
        // One ScheduleAnyway zone constraint, maxSkew 1. Domains among feasible nodes: 2, so the
        // weight is ln(4). zone1 = 3 pods, zone2 = 4 pods: raw 3*1.386 = 4.16 → 4, 4*1.386 = 5.55
        // → 6. Normalized: 100*(6+4-4)/6 = 100, 100*(6+4-6)/6 = 66; no-zone lacks the key: 0.
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, SCHEDULE_ANYWAY)]}),
        );
        assert_eq!(scores(&pl, &p, &snap, &[0, 1, 2, 3, 4]).unwrap(), vec![100, 100, 66, 66, 0]);

        // Per-host constraint with maxSkew 2: counts 2,1,0,4 weighted by ln(4+2) = 1.79, plus 1:
        // raw 5, 3, 1, 8 → 100*(8+1-raw)/8.
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("node", 2, SCHEDULE_ANYWAY)]}),
        );
        assert_eq!(scores(&pl, &p, &snap, &[0, 1, 2, 3]).unwrap(), vec![50, 75, 100, 12]);

        // Only DoNotSchedule constraints: nothing to score.
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, DO_NOT_SCHEDULE)]}),
        );
        assert_eq!(scores(&pl, &p, &snap, &[0, 1]), Err(Code::Skip));

        // All raw scores zero: every node scores 100.
        let empty = snapshot(vec![node("a", json!({"zone": "z1"}), vec![]), node("b", json!({"zone": "z2"}), vec![])]);
        let p = pod(
            "default",
            json!({"foo": ""}),
            json!({"topologySpreadConstraints": [spread("zone", 1, SCHEDULE_ANYWAY)]}),
        );
        assert_eq!(scores(&pl, &p, &empty, &[0, 1]).unwrap(), vec![100, 100]);
    }

    #[test]
    fn system_defaults_apply_only_with_an_owner_selector() {
        let snap = snapshot(vec![
            node("a", json!({LABEL_HOSTNAME: "a", LABEL_ZONE: "z1"}), foo(3)),
            node("b", json!({LABEL_HOSTNAME: "b", LABEL_ZONE: "z1"}), vec![]),
            node("c", json!({LABEL_HOSTNAME: "c"}), vec![]),
        ]);
        let p = pod("default", json!({"foo": ""}), json!({}));
        let pl = PodTopologySpread::new(None).unwrap();
        assert_eq!(scores(&pl, &p, &snap, &[0, 1, 2]), Err(Code::Skip));

        let owner: Arc<OwnerSelector> = Arc::new(|p: &PodInfo| {
            p.labels()
                .contains_key("foo")
                .then(|| Selector::from_set(&BTreeMap::from([("foo".to_string(), String::new())])))
        });
        let pl = PodTopologySpread::new(None).unwrap().with_owner_selector(owner);
        // System defaults don't ignore node c for lacking a zone: it is scored by hostname.
        // hostname: weight ln(3+2), maxSkew 3 → a: 3*1.609+2 = 6.83, b and c: 2. zone: domains
        // z1 and "" → weight ln(4), maxSkew 5 → a, b: 3*1.386+4 = 8.16; c has no zone.
        // Raw: a = round(14.99) = 15, b = round(2+8.16) = 10, c = 2 → 100*(15+2-raw)/15.
        assert_eq!(scores(&pl, &p, &snap, &[0, 1, 2]).unwrap(), vec![13, 46, 100]);
        // Defaults are ScheduleAnyway only: Filter is skipped.
        assert_eq!(fits(&pl, &p, &snap), Err(Code::Skip));
    }

    #[test]
    fn args_are_validated_naming_the_field() {
        let ok = [
            json!({}),
            json!({"defaultingType": "System"}),
            json!({"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "PodTopologySpreadArgs"}),
            json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}),
        ];
        for a in ok {
            assert!(PodTopologySpread::new(Some(&a)).is_ok(), "{a}");
        }
        let bad = [
            (json!({"defaultingType": "Sometimes"}), "defaultingType"),
            (
                json!({"defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}),
                "defaultingType",
            ),
            (
                json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}),
                "defaultConstraints[0].maxSkew",
            ),
            (
                json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]}),
                "defaultConstraints[0].topologyKey",
            ),
            (
                json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Maybe"}]}),
                "defaultConstraints[0].whenUnsatisfiable",
            ),
            (
                json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {}}]}),
                "defaultConstraints[0].labelSelector",
            ),
            (
                json!({"defaultingType": "List", "defaultConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"},
                {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}),
                "defaultConstraints[1]",
            ),
            (json!({"defaultConstraints": [{"maxSkew": "one"}]}), "defaultConstraints[0].maxSkew"),
            (json!({"defaultConstraint": []}), "defaultConstraint"),
            (json!({"kind": "InterPodAffinityArgs"}), "kind"),
        ];
        for (a, field) in bad {
            let err = PodTopologySpread::new(Some(&a)).err().unwrap_or_else(|| panic!("{a} accepted"));
            assert!(err.contains(field), "{a}: {err:?} should name {field}");
        }
    }

    #[test]
    fn list_defaults_filter_with_the_owner_selector() {
        let args = json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]});
        let owner: Arc<OwnerSelector> =
            Arc::new(|_: &PodInfo| Some(Selector::from_set(&BTreeMap::from([("foo".to_string(), String::new())]))));
        let pl = PodTopologySpread::new(Some(&args)).unwrap().with_owner_selector(owner);
        let nodes = vec![node("a", json!({"zone": "z1"}), foo(1)), node("b", json!({"zone": "z2"}), vec![])];
        assert_eq!(fits(&pl, &pod("default", json!({"foo": ""}), json!({})), &snapshot(nodes)).unwrap(), vec!["b"]);
    }
}
