//! NodeResourcesFit: a pod fits a node only if the node's allocatable resources, less what its
//! pods request, cover what the pod requests, and the node takes one more pod. Scoring prefers
//! nodes by how much of them would be requested once the pod is there, after a strategy:
//! `LeastAllocated` (spread, the default), `MostAllocated` (pack) or `RequestedToCapacityRatio`
//! (a piecewise-linear shape over utilization).
//!
//! The scoring helpers here are kube-scheduler's `resourceAllocationScorer`, shared with
//! NodeResourcesBalancedAllocation.
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use crate::labels::is_qualified_name;
use crate::scheduler::framework::{Code, CycleState, NodeInfo, Plugin, PodInfo, Status, MAX_NODE_SCORE};
use crate::scheduler::resources::Resources;

pub const NAME: &str = "NodeResourcesFit";

/// The plugin's weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 1;

/// Kubernetes' reason when the node takes no more pods.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// The highest score a `RequestedToCapacityRatio` shape point may give (scaled to
/// `MAX_NODE_SCORE` when scoring).
pub const MAX_CUSTOM_PRIORITY_SCORE: i64 = 10;

const STRATEGIES: &str = "LeastAllocated, MostAllocated, RequestedToCapacityRatio";

/// A resource a scorer weighs (the scheduler config's `ResourceSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub name: String,
    #[serde(default)]
    pub weight: i64,
}

/// cpu and memory, weight 1 each: what the scorers weigh unless configured otherwise.
pub fn default_resources() -> Vec<ResourceSpec> {
    vec![ResourceSpec { name: "cpu".into(), weight: 1 }, ResourceSpec { name: "memory".into(), weight: 1 }]
}

/// A point of a `RequestedToCapacityRatio` shape: utilization in percent, score already scaled
/// to `0..=MAX_NODE_SCORE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapePoint {
    pub utilization: i64,
    pub score: i64,
}

/// How NodeResourcesFit scores a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoringStrategy {
    LeastAllocated,
    MostAllocated,
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

/// A resource the node lacks for the pod, as kube-scheduler's `InsufficientResource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsufficientResource {
    pub name: String,
    pub reason: String,
    pub requested: i64,
    pub used: i64,
    pub capacity: i64,
    /// The pod asks more than the whole node has: evicting pods cannot make room.
    pub unresolvable: bool,
}

/// Extended resources (kube-scheduler's `IsExtendedResourceName`): domain-qualified names outside
/// the `kubernetes.io` namespaces, the only ones `ignoredResources`/`ignoredResourceGroups` apply to.
pub fn is_extended_resource_name(name: &str) -> bool {
    name.contains('/')
        && !name.contains("kubernetes.io/")
        && !name.starts_with("requests.")
        && is_qualified_name(&format!("requests.{name}"))
}

/// What `node` lacks to take a pod requesting `req` (kube-scheduler's `fitsRequest`). Resources
/// the pod does not request are not checked, nor ignored extended resources: by name, or by the
/// part of the name before `/` in `ignored_groups`.
pub fn insufficient_resources(
    req: &Resources,
    node: &NodeInfo,
    ignored: &BTreeSet<String>,
    ignored_groups: &BTreeSet<String>,
) -> Vec<InsufficientResource> {
    let mut out = Vec::new();
    let alloc = &node.allocatable;
    let used = &node.requested;
    let pods = i64::try_from(node.pods.len()).unwrap_or(i64::MAX);
    if pods.saturating_add(1) > alloc.allowed_pod_number {
        out.push(InsufficientResource {
            name: "pods".into(),
            reason: REASON_TOO_MANY_PODS.into(),
            requested: 1,
            used: pods,
            capacity: alloc.allowed_pod_number,
            unresolvable: false,
        });
    }
    let mut check = |name: &str, want: i64, used: i64, capacity: i64| {
        if want > 0 && want > capacity.saturating_sub(used) {
            out.push(InsufficientResource {
                name: name.into(),
                reason: format!("Insufficient {name}"),
                requested: want,
                used,
                capacity,
                unresolvable: want > capacity,
            });
        }
    };
    check("cpu", req.milli_cpu, used.milli_cpu, alloc.milli_cpu);
    check("memory", req.memory, used.memory, alloc.memory);
    check("ephemeral-storage", req.ephemeral_storage, used.ephemeral_storage, alloc.ephemeral_storage);
    for (name, &want) in &req.scalar {
        if is_extended_resource_name(name) {
            let group = name.split('/').next().unwrap_or("");
            if ignored.contains(name) || ignored_groups.contains(group) {
                continue;
            }
        }
        check(name, want, used.scalar.get(name).copied().unwrap_or(0), alloc.scalar.get(name).copied().unwrap_or(0));
    }
    out
}

/// What the pod asks of `name` for scoring: its requests as Kubernetes counts them and, unless
/// `use_requested`, with the default cpu and memory for containers that request none.
pub fn pod_request_for_scoring(pod: &PodInfo, name: &str, use_requested: bool) -> i64 {
    if use_requested {
        pod.requests.get(name)
    } else {
        pod.non_zero_requests.get(name)
    }
}

/// The node's allocatable amount of `name` and what would be requested of it with the pod there
/// (kube-scheduler's `calculateResourceAllocatableRequest`). cpu and memory count the node's
/// non-zero requests unless `use_requested`; other resources its plain requests. A resource the
/// pod does not request beyond cpu, memory and ephemeral storage, or the node does not offer,
/// gives (0, 0) and is left out of the score.
pub fn allocatable_and_requested(node: &NodeInfo, name: &str, pod_request: i64, use_requested: bool) -> (i64, i64) {
    let counted = if use_requested { &node.requested } else { &node.non_zero_requested };
    match name {
        "cpu" => (node.allocatable.milli_cpu, counted.milli_cpu.saturating_add(pod_request)),
        "memory" => (node.allocatable.memory, counted.memory.saturating_add(pod_request)),
        "ephemeral-storage" => {
            (node.allocatable.ephemeral_storage, node.requested.ephemeral_storage.saturating_add(pod_request))
        }
        _ if pod_request == 0 => (0, 0),
        other => match node.allocatable.scalar.get(other) {
            Some(&alloc) => (alloc, node.requested.scalar.get(other).copied().unwrap_or(0).saturating_add(pod_request)),
            None => (0, 0),
        },
    }
}

/// Per resource of `resources`: (requested with the pod, allocatable), both 0 where the node has
/// none of it, so that scorers skip it.
pub fn requested_and_allocatable(
    pod: &PodInfo,
    node: &NodeInfo,
    resources: &[ResourceSpec],
    use_requested: bool,
) -> (Vec<i64>, Vec<i64>) {
    resources
        .iter()
        .map(|r| {
            let (alloc, req) = allocatable_and_requested(
                node,
                &r.name,
                pod_request_for_scoring(pod, &r.name, use_requested),
                use_requested,
            );
            if alloc == 0 {
                (0, 0)
            } else {
                (req, alloc)
            }
        })
        .unzip()
}

/// `requested * MAX_NODE_SCORE / capacity`, truncated, without overflow (0 for no capacity).
fn scaled(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        return 0;
    }
    let v = i128::from(requested) * i128::from(MAX_NODE_SCORE) / i128::from(capacity);
    i64::try_from(v).unwrap_or(MAX_NODE_SCORE)
}

/// Weighted mean of per-resource scores over resources the node has, truncated.
fn weighted(
    requested: &[i64],
    allocatable: &[i64],
    resources: &[ResourceSpec],
    per_resource: impl Fn(i64, i64) -> i64,
) -> i64 {
    let (mut total, mut weights) = (0i64, 0i64);
    for ((&req, &alloc), spec) in requested.iter().zip(allocatable).zip(resources) {
        if alloc == 0 {
            continue;
        }
        total = total.saturating_add(per_resource(req, alloc).saturating_mul(spec.weight));
        weights = weights.saturating_add(spec.weight);
    }
    if weights == 0 {
        0
    } else {
        total / weights
    }
}

/// LeastAllocated: the share of each resource left free, weighted (more free: higher).
pub fn least_allocated_score(requested: &[i64], allocatable: &[i64], resources: &[ResourceSpec]) -> i64 {
    weighted(requested, allocatable, resources, |req, cap| if req > cap { 0 } else { scaled(cap - req, cap) })
}

/// MostAllocated: the share of each resource requested, weighted (fuller: higher). Requests
/// beyond capacity (possible through the non-zero defaults) count as full.
pub fn most_allocated_score(requested: &[i64], allocatable: &[i64], resources: &[ResourceSpec]) -> i64 {
    weighted(requested, allocatable, resources, |req, cap| scaled(req.min(cap), cap))
}

/// The shape's piecewise-linear function at utilization `p` (kube-scheduler's
/// `BuildBrokenLinearFunction`): flat before the first point and after the last.
pub fn broken_linear(shape: &[ShapePoint], p: i64) -> i64 {
    for (i, point) in shape.iter().enumerate() {
        if p <= point.utilization {
            let Some(prev) = i.checked_sub(1).and_then(|j| shape.get(j)) else { return point.score };
            let span = point.utilization - prev.utilization;
            if span == 0 {
                return point.score;
            }
            return prev.score + (point.score - prev.score) * (p - prev.utilization) / span;
        }
    }
    shape.last().map_or(0, |p| p.score)
}

/// RequestedToCapacityRatio: the shape at each resource's utilization, weighted over the
/// resources that score above 0, rounded to the nearest integer.
pub fn requested_to_capacity_ratio_score(
    requested: &[i64],
    allocatable: &[i64],
    resources: &[ResourceSpec],
    shape: &[ShapePoint],
) -> i64 {
    let (mut total, mut weights) = (0i64, 0i64);
    for ((&req, &alloc), spec) in requested.iter().zip(allocatable).zip(resources) {
        if alloc == 0 {
            continue;
        }
        let utilization = if req > alloc { MAX_NODE_SCORE } else { scaled(req.max(0), alloc) };
        let score = broken_linear(shape, utilization);
        if score > 0 {
            total = total.saturating_add(score.saturating_mul(spec.weight));
            weights = weights.saturating_add(spec.weight);
        }
    }
    if weights == 0 {
        0
    } else {
        (total as f64 / weights as f64).round() as i64
    }
}

/// `NodeResourcesFitArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FitArgs {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: Option<String>,
    ignored_resources: Option<Vec<String>>,
    ignored_resource_groups: Option<Vec<String>>,
    scoring_strategy: Option<StrategyArgs>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StrategyArgs {
    #[serde(rename = "type", default)]
    kind: String,
    resources: Option<Vec<ResourceSpec>>,
    requested_to_capacity_ratio: Option<RatioArgs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioArgs {
    shape: Option<Vec<ShapeArgs>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeArgs {
    #[serde(default)]
    utilization: i32,
    #[serde(default)]
    score: i32,
}

/// Applies Kubernetes' defaults to scorer resources (none: cpu and memory; weight 0: 1) and
/// checks their weights lie in (0, 100].
fn defaulted_resources(resources: Option<Vec<ResourceSpec>>, path: &str, errs: &mut Vec<String>) -> Vec<ResourceSpec> {
    let mut resources = resources.filter(|r| !r.is_empty()).unwrap_or_else(default_resources);
    for (i, r) in resources.iter_mut().enumerate() {
        if r.weight == 0 {
            r.weight = 1;
        }
        if !(1..=100).contains(&r.weight) {
            errs.push(format!(
                "{path}[{i}].weight: invalid value {}: resource weight of {} not in valid range (0, 100]",
                r.weight, r.name
            ));
        }
    }
    resources
}

fn validated_shape(shape: &[ShapeArgs], path: &str, errs: &mut Vec<String>) -> Vec<ShapePoint> {
    if shape.is_empty() {
        errs.push(format!("{path}: required value: at least one point must be specified"));
        return Vec::new();
    }
    if let Some(i) = (1..shape.len()).find(|&i| shape[i - 1].utilization >= shape[i].utilization) {
        errs.push(format!(
            "{path}[{i}].utilization: invalid value {}: values must be sorted in increasing order",
            shape[i].utilization
        ));
    }
    for (i, p) in shape.iter().enumerate() {
        if !(0..=100).contains(&p.utilization) {
            errs.push(format!("{path}[{i}].utilization: invalid value {}: not in valid range [0, 100]", p.utilization));
        }
        if !(0..=MAX_CUSTOM_PRIORITY_SCORE).contains(&i64::from(p.score)) {
            errs.push(format!(
                "{path}[{i}].score: invalid value {}: not in valid range [0, {MAX_CUSTOM_PRIORITY_SCORE}]",
                p.score
            ));
        }
    }
    shape
        .iter()
        .map(|p| ShapePoint {
            utilization: i64::from(p.utilization),
            score: i64::from(p.score) * (MAX_NODE_SCORE / MAX_CUSTOM_PRIORITY_SCORE),
        })
        .collect()
}

pub struct NodeResourcesFit {
    ignored_resources: BTreeSet<String>,
    ignored_resource_groups: BTreeSet<String>,
    strategy: ScoringStrategy,
    resources: Vec<ResourceSpec>,
}

impl NodeResourcesFit {
    /// Builds the plugin from `NodeResourcesFitArgs`, defaulted and validated as kube-scheduler
    /// does; every invalid field is named in the error.
    pub fn new(args: Option<&Value>) -> Result<Self, String> {
        let args: FitArgs = super::decode_args(args)?;
        let mut errs = Vec::new();
        let ignored_resources = args.ignored_resources.unwrap_or_default();
        for (i, r) in ignored_resources.iter().enumerate() {
            if !is_qualified_name(r) {
                errs.push(format!("ignoredResources[{i}]: invalid value {r:?}: must be a qualified name"));
            }
        }
        let groups = args.ignored_resource_groups.unwrap_or_default();
        for (i, g) in groups.iter().enumerate() {
            if g.contains('/') {
                errs.push(format!(
                    "ignoredResourceGroups[{i}]: invalid value {g:?}: resource group name can't contain '/'"
                ));
            } else if !is_qualified_name(g) {
                errs.push(format!("ignoredResourceGroups[{i}]: invalid value {g:?}: must be a qualified name"));
            }
        }
        let (strategy, resources) = match args.scoring_strategy {
            None => (ScoringStrategy::LeastAllocated, default_resources()),
            Some(s) => {
                let resources = defaulted_resources(s.resources, "scoringStrategy.resources", &mut errs);
                let strategy = match s.kind.as_str() {
                    "LeastAllocated" | "MostAllocated" if s.requested_to_capacity_ratio.is_some() => {
                        errs.push("scoringStrategy.requestedToCapacityRatio: forbidden: must be nil when type is not RequestedToCapacityRatio".into());
                        ScoringStrategy::LeastAllocated
                    }
                    "LeastAllocated" => ScoringStrategy::LeastAllocated,
                    "MostAllocated" => ScoringStrategy::MostAllocated,
                    "RequestedToCapacityRatio" => match s.requested_to_capacity_ratio {
                        None => {
                            errs.push("scoringStrategy.requestedToCapacityRatio: required value: must be specified when type is RequestedToCapacityRatio".into());
                            ScoringStrategy::RequestedToCapacityRatio(Vec::new())
                        }
                        Some(r) => {
                            let shape = r.shape.unwrap_or_default();
                            ScoringStrategy::RequestedToCapacityRatio(validated_shape(
                                &shape,
                                "scoringStrategy.requestedToCapacityRatio.shape",
                                &mut errs,
                            ))
                        }
                    },
                    other => {
                        errs.push(format!(
                            "scoringStrategy.type: unsupported value {other:?} (supported: {STRATEGIES})"
                        ));
                        ScoringStrategy::LeastAllocated
                    }
                };
                (strategy, resources)
            }
        };
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        Ok(NodeResourcesFit {
            ignored_resources: ignored_resources.into_iter().collect(),
            ignored_resource_groups: groups.into_iter().collect(),
            strategy,
            resources,
        })
    }

    pub fn strategy(&self) -> &ScoringStrategy {
        &self.strategy
    }

    pub fn resources(&self) -> &[ResourceSpec] {
        &self.resources
    }
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Unschedulable with every lacking resource's reason; unresolvable when the pod asks more of
    /// something than the node has at all, since no preemption can free that.
    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let lacking =
            insufficient_resources(&pod.requests, node, &self.ignored_resources, &self.ignored_resource_groups);
        if lacking.is_empty() {
            return Status::success();
        }
        let code = if lacking.iter().any(|r| r.unresolvable) {
            Code::UnschedulableAndUnresolvable
        } else {
            Code::Unschedulable
        };
        Status { code, reasons: lacking.into_iter().map(|r| r.reason).collect() }
    }

    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (requested, allocatable) = requested_and_allocatable(pod, node, &self.resources, false);
        match &self.strategy {
            ScoringStrategy::LeastAllocated => least_allocated_score(&requested, &allocatable, &self.resources),
            ScoringStrategy::MostAllocated => most_allocated_score(&requested, &allocatable, &self.resources),
            ScoringStrategy::RequestedToCapacityRatio(shape) => {
                requested_to_capacity_ratio_score(&requested, &allocatable, &self.resources, shape)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(allocatable: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"allocatable": allocatable}})).unwrap(),
        ))
    }
    fn pod(name: &str, requests: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}
            }))
            .unwrap(),
        ))
    }
    fn with_pods(mut n: NodeInfo, pods: &[Value]) -> NodeInfo {
        for (i, requests) in pods.iter().enumerate() {
            n.add_pod(Arc::new(pod(&format!("old{i}"), requests.clone())));
        }
        n
    }
    fn fit(args: Value) -> NodeResourcesFit {
        NodeResourcesFit::new(Some(&args)).unwrap()
    }

    #[test]
    fn filter_reports_every_lacking_resource_in_kubernetes_words() {
        let alloc = json!({"cpu": "2", "memory": "1000", "ephemeral-storage": "100", "pods": "3", "example.com/gpu": "1", "hugepages-2Mi": "4"});
        let busy = || vec![json!({"cpu": "1500m", "memory": "800"})];
        let plugin = NodeResourcesFit::new(None).unwrap();
        let cases: Vec<(Value, Vec<Value>, Code, Vec<&str>)> = vec![
            (json!({"cpu": "500m", "memory": "200"}), busy(), Code::Success, vec![]),
            (json!({"cpu": "501m"}), busy(), Code::Unschedulable, vec!["Insufficient cpu"]),
            (json!({"memory": "201"}), busy(), Code::Unschedulable, vec!["Insufficient memory"]),
            (
                json!({"ephemeral-storage": "101"}),
                vec![],
                Code::UnschedulableAndUnresolvable,
                vec!["Insufficient ephemeral-storage"],
            ),
            (
                json!({"example.com/gpu": "2"}),
                vec![],
                Code::UnschedulableAndUnresolvable,
                vec!["Insufficient example.com/gpu"],
            ),
            (
                json!({"example.com/fpga": "1"}),
                vec![],
                Code::UnschedulableAndUnresolvable,
                vec!["Insufficient example.com/fpga"],
            ),
            (
                json!({"hugepages-2Mi": "5"}),
                vec![],
                Code::UnschedulableAndUnresolvable,
                vec!["Insufficient hugepages-2Mi"],
            ),
            // More than the whole node has: preemption cannot help.
            (json!({"cpu": "3"}), busy(), Code::UnschedulableAndUnresolvable, vec!["Insufficient cpu"]),
            (
                json!({"cpu": "1", "memory": "300"}),
                busy(),
                Code::Unschedulable,
                vec!["Insufficient cpu", "Insufficient memory"],
            ),
            // A pod requesting nothing fits a full node, if the node takes another pod.
            (json!({}), vec![json!({"cpu": "2", "memory": "1000"})], Code::Success, vec![]),
            (json!({}), vec![json!({}), json!({}), json!({})], Code::Unschedulable, vec!["Too many pods"]),
            (
                json!({"cpu": "1"}),
                vec![json!({"cpu": "2"}), json!({}), json!({})],
                Code::Unschedulable,
                vec!["Too many pods", "Insufficient cpu"],
            ),
        ];
        for (requests, pods, code, reasons) in cases {
            let s = plugin.filter(
                &CycleState::default(),
                &pod("p", requests.clone()),
                &with_pods(node(alloc.clone()), &pods),
            );
            assert_eq!(s.code, code, "requests {requests}");
            assert_eq!(s.reasons, reasons, "requests {requests}");
        }
        // A node without `pods` allocatable takes none.
        let s = plugin.filter(&CycleState::default(), &pod("p", json!({})), &node(json!({"cpu": "1"})));
        assert_eq!(s.reasons, vec![REASON_TOO_MANY_PODS]);
    }

    #[test]
    fn ignored_resources_skip_only_extended_resources() {
        let n = node(json!({"pods": "10"}));
        let p = pod("p", json!({"example.com/gpu": "1", "vendor.io/nic": "1", "hugepages-2Mi": "1"}));
        let cases = [
            (
                json!({}),
                vec!["Insufficient example.com/gpu", "Insufficient hugepages-2Mi", "Insufficient vendor.io/nic"],
            ),
            (
                json!({"ignoredResources": ["example.com/gpu"]}),
                vec!["Insufficient hugepages-2Mi", "Insufficient vendor.io/nic"],
            ),
            (json!({"ignoredResourceGroups": ["vendor.io", "example.com"]}), vec!["Insufficient hugepages-2Mi"]),
            // hugepages are not extended resources: ignoring them has no effect.
            (
                json!({"ignoredResources": ["hugepages-2Mi"]}),
                vec!["Insufficient example.com/gpu", "Insufficient hugepages-2Mi", "Insufficient vendor.io/nic"],
            ),
        ];
        for (args, want) in cases {
            let s = fit(args.clone()).filter(&CycleState::default(), &p, &n);
            assert_eq!(s.reasons, want, "args {args}");
        }
        assert!(is_extended_resource_name("example.com/gpu"));
        for not in [
            "cpu",
            "hugepages-2Mi",
            "kubernetes.io/x",
            "foo.kubernetes.io/x",
            "requests.example.com/gpu",
            "example.com/a b",
        ] {
            assert!(!is_extended_resource_name(not), "{not}");
        }
    }

    /// kube-scheduler's own worked case: a 3000m/5000 pod on an empty 4000m/10000 node and an
    /// empty 6000m/10000 node.
    fn two_nodes() -> (PodInfo, [NodeInfo; 2]) {
        let p = pod("p", json!({"cpu": "3", "memory": "5000"}));
        (
            p,
            [
                node(json!({"cpu": "4", "memory": "10000", "pods": "10"})),
                node(json!({"cpu": "6", "memory": "10000", "pods": "10"})),
            ],
        )
    }

    fn scores(plugin: &NodeResourcesFit, p: &PodInfo, nodes: &[NodeInfo]) -> Vec<i64> {
        nodes.iter().map(|n| plugin.score(&CycleState::default(), p, n)).collect()
    }

    #[test]
    fn least_and_most_allocated_score_worked_cases() {
        let (p, nodes) = two_nodes();
        // LeastAllocated: cpu (4000-3000)*100/4000 = 25, memory 50: (25+50)/2 = 37; then 50, 50.
        assert_eq!(scores(&NodeResourcesFit::new(None).unwrap(), &p, &nodes), vec![37, 50]);
        // MostAllocated: cpu 75, memory 50: 62; then 50, 50.
        let most = fit(json!({"scoringStrategy": {"type": "MostAllocated"}}));
        assert_eq!(scores(&most, &p, &nodes), vec![62, 50]);
        // Weights: cpu 3, memory 1: (75*3+50)/4 = 68.
        let weighted = fit(
            json!({"scoringStrategy": {"type": "MostAllocated", "resources": [{"name": "cpu", "weight": 3}, {"name": "memory", "weight": 1}]}}),
        );
        assert_eq!(scores(&weighted, &p, &nodes), vec![68, 50]);
    }

    #[test]
    fn scoring_counts_defaults_for_pods_without_requests() {
        // 100m of 1000m leaves 90; 200Mi of 1Gi leaves 80 (80.47 truncated): 85.
        let n = node(json!({"cpu": "1", "memory": "1Gi", "pods": "10"}));
        assert_eq!(NodeResourcesFit::new(None).unwrap().score(&CycleState::default(), &pod("p", json!({})), &n), 85);
        // The node's request-less pods count with the defaults too: 200m and 400Mi used: 80, 60.
        let busy = with_pods(n, &[json!({})]);
        assert_eq!(NodeResourcesFit::new(None).unwrap().score(&CycleState::default(), &pod("p", json!({})), &busy), 70);
        // Requests beyond capacity (through the defaults) count as full for MostAllocated.
        let tiny = node(json!({"cpu": "50m", "memory": "100Mi", "pods": "10"}));
        let most = fit(json!({"scoringStrategy": {"type": "MostAllocated"}}));
        assert_eq!(most.score(&CycleState::default(), &pod("p", json!({})), &tiny), 100);
        assert_eq!(NodeResourcesFit::new(None).unwrap().score(&CycleState::default(), &pod("p", json!({})), &tiny), 0);
    }

    #[test]
    fn extended_resources_score_only_when_requested_and_offered() {
        let resources = json!([{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}, {"name": "example.com/gpu", "weight": 3}]);
        let most = fit(json!({"scoringStrategy": {"type": "MostAllocated", "resources": resources}}));
        let gpu_node = || node(json!({"cpu": "4", "memory": "10000", "pods": "10", "example.com/gpu": "4"}));
        let gpu_pod = pod("p", json!({"cpu": "3", "memory": "5000", "example.com/gpu": "1"}));
        // cpu 75, memory 50, gpu 1 of 4 = 25 weighted 3: (75+50+75)/5 = 40.
        assert_eq!(most.score(&CycleState::default(), &gpu_pod, &gpu_node()), 40);
        // Other pods' gpus count; their cpu and memory with the defaults (100m, 200Mi).
        let busy = with_pods(gpu_node(), &[json!({"example.com/gpu": "1"})]);
        let (req, alloc) = requested_and_allocatable(&gpu_pod, &busy, most.resources(), false);
        assert_eq!((req, alloc), (vec![3100, 5000 + 200 * 1024 * 1024, 2], vec![4000, 10000, 4]));
        // A pod that does not request the gpu is scored on cpu and memory only, as on a node
        // without the gpu.
        let (p, nodes) = two_nodes();
        assert_eq!(most.score(&CycleState::default(), &p, &gpu_node()), 62);
        assert_eq!(most.score(&CycleState::default(), &gpu_pod, &nodes[0]), 62);
    }

    #[test]
    fn requested_to_capacity_ratio_interpolates_the_shape() {
        let shape = |points: Value| {
            fit(
                json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": points}}}),
            )
        };
        let (p, nodes) = two_nodes();
        // Bin packing: score = utilization. cpu 75, memory 50: 62.5 rounds to 63.
        let packing = shape(json!([{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]));
        assert_eq!(scores(&packing, &p, &nodes), vec![63, 50]);
        // Three points scaled by 10: (0,100) (50,60) (100,0); cpu at 75 gives 30, memory at 50 gives 60.
        let bent = shape(
            json!([{"utilization": 0, "score": 10}, {"utilization": 50, "score": 6}, {"utilization": 100, "score": 0}]),
        );
        assert_eq!(scores(&bent, &p, &nodes), vec![45, 60]);
        // A resource scoring 0 is left out of the mean: cpu full (0), memory 50 alone.
        let spreading = shape(json!([{"utilization": 0, "score": 10}, {"utilization": 100, "score": 0}]));
        let full_cpu = node(json!({"cpu": "3", "memory": "10000", "pods": "10"}));
        assert_eq!(spreading.score(&CycleState::default(), &p, &full_cpu), 50);

        let pts = [ShapePoint { utilization: 10, score: 20 }, ShapePoint { utilization: 90, score: 80 }];
        for (at, want) in [(0, 20), (10, 20), (50, 50), (51, 50), (90, 80), (100, 80)] {
            assert_eq!(broken_linear(&pts, at), want, "utilization {at}");
        }
    }

    #[test]
    fn args_are_defaulted_and_validated_naming_the_field() {
        let plugin = NodeResourcesFit::new(None).unwrap();
        assert_eq!(
            (plugin.strategy(), plugin.resources()),
            (&ScoringStrategy::LeastAllocated, default_resources().as_slice())
        );
        let p = fit(json!({"scoringStrategy": {"type": "MostAllocated", "resources": [{"name": "cpu"}]}}));
        assert_eq!(p.resources(), [ResourceSpec { name: "cpu".into(), weight: 1 }]);
        let p = fit(
            json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]}}}),
        );
        assert_eq!(
            p.strategy(),
            &ScoringStrategy::RequestedToCapacityRatio(vec![
                ShapePoint { utilization: 0, score: 0 },
                ShapePoint { utilization: 100, score: 100 }
            ])
        );

        let cases = [
            (json!({"scoringStrategy": {"type": "X"}}), "scoringStrategy.type: unsupported value \"X\""),
            (json!({"scoringStrategy": {}}), "scoringStrategy.type: unsupported value \"\""),
            (json!({"scoringStrategy": {"type": "LeastAllocated", "resources": [{"name": "cpu", "weight": 101}]}}), "scoringStrategy.resources[0].weight: invalid value 101"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio"}}), "scoringStrategy.requestedToCapacityRatio: required value"),
            (json!({"scoringStrategy": {"type": "MostAllocated", "requestedToCapacityRatio": {"shape": []}}}), "scoringStrategy.requestedToCapacityRatio: forbidden"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": []}}}), "scoringStrategy.requestedToCapacityRatio.shape: required value"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": [{"utilization": 50, "score": 1}, {"utilization": 50, "score": 2}]}}}),
             "scoringStrategy.requestedToCapacityRatio.shape[1].utilization: invalid value 50: values must be sorted"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": [{"utilization": 101, "score": 1}]}}}),
             "scoringStrategy.requestedToCapacityRatio.shape[0].utilization: invalid value 101"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": [{"utilization": 1, "score": 11}]}}}),
             "scoringStrategy.requestedToCapacityRatio.shape[0].score: invalid value 11"),
            (json!({"scoringStrategy": {"type": "RequestedToCapacityRatio", "requestedToCapacityRatio": {"shape": [{"utilization": "x"}]}}}),
             "scoringStrategy.requestedToCapacityRatio.shape[0].utilization"),
            (json!({"ignoredResources": ["bad name"]}), "ignoredResources[0]: invalid value \"bad name\""),
            (json!({"ignoredResourceGroups": ["example.com/gpu"]}), "ignoredResourceGroups[0]: invalid value \"example.com/gpu\": resource group name can't contain '/'"),
            (json!({"ignoredResource": []}), "ignoredResource"),
        ];
        for (args, want) in cases {
            let err = NodeResourcesFit::new(Some(&args)).err().unwrap_or_default();
            assert!(err.contains(want), "args {args}: {err:?}");
        }
    }
}
