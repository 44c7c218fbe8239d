//! NodeAffinity: a pod fits only nodes that carry its `nodeSelector` labels and match one of its
//! required node affinity terms; its preferred terms score nodes by the weights they match. The
//! profile may add affinity of its own (`addedAffinity`) that every pod must satisfy.
//!
//! Terms are parsed once into matchers; as in Kubernetes, a pod's required term that does not
//! parse matches no node (it is not an error), while the profile's own terms must all parse.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm,
};
use serde::Deserialize;
use serde_json::Value;

use crate::labels::{is_label_value, is_qualified_name};
use crate::scheduler::framework::{default_normalize_score, CycleState, NodeInfo, Plugin, PodInfo, Snapshot, Status};

pub const NAME: &str = "NodeAffinity";

/// Kubernetes' reason when the pod's own selector or affinity does not match.
pub const REASON_POD: &str = "node(s) didn't match Pod's node affinity/selector";
/// Kubernetes' reason when the profile's `addedAffinity` does not match.
pub const REASON_ENFORCED: &str = "node(s) didn't match scheduler-enforced node affinity";
/// Kubernetes' reason when every required term names nodes by `metadata.name` and no name is left.
pub const REASON_CONFLICT: &str = "pod affinity terms conflict";

/// The plugin's weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 2;

/// The one node field a `matchFields` requirement can name.
const NAME_FIELD: &str = "metadata.name";

const PRE_FILTER_KEY: &str = "PreFilterNodeAffinity";
const PRE_SCORE_KEY: &str = "PreScoreNodeAffinity";

#[derive(Debug, Clone)]
enum LabelOp {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

impl LabelRequirement {
    /// Checks a requirement as `labels.NewRequirement` does; errors name fields under `path`.
    fn parse(r: &NodeSelectorRequirement, path: &str) -> Result<LabelRequirement, Vec<String>> {
        let values: &[String] = r.values.as_deref().unwrap_or(&[]);
        let mut errs = Vec::new();
        if !is_qualified_name(&r.key) {
            errs.push(format!("{path}.key: invalid value {:?}: must be a qualified name", r.key));
        }
        let op = match r.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(format!("{path}.values: must not be empty for operator {}", r.operator));
                }
                let set = values.iter().cloned().collect();
                if r.operator == "In" {
                    LabelOp::In(set)
                } else {
                    LabelOp::NotIn(set)
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(format!("{path}.values: must be empty for operator {}", r.operator));
                }
                if r.operator == "Exists" {
                    LabelOp::Exists
                } else {
                    LabelOp::DoesNotExist
                }
            }
            "Gt" | "Lt" => {
                if values.len() != 1 {
                    errs.push(format!(
                        "{path}.values: operator {} needs exactly one value, got {}",
                        r.operator,
                        values.len()
                    ));
                }
                let mut bound = 0;
                for (i, v) in values.iter().enumerate() {
                    match v.parse::<i64>() {
                        Ok(n) => bound = n,
                        Err(_) => errs.push(format!(
                            "{path}.values[{i}]: invalid value {v:?}: must be an integer for operator {}",
                            r.operator
                        )),
                    }
                }
                if r.operator == "Gt" {
                    LabelOp::Gt(bound)
                } else {
                    LabelOp::Lt(bound)
                }
            }
            other => {
                errs.push(format!(
                    "{path}.operator: unsupported value {other:?} (supported: In, NotIn, Exists, DoesNotExist, Gt, Lt)"
                ));
                return Err(errs);
            }
        };
        for (i, v) in values.iter().enumerate() {
            if !is_label_value(v) {
                errs.push(format!("{path}.values[{i}]: invalid value {v:?}: must be a valid label value"));
            }
        }
        if errs.is_empty() {
            Ok(LabelRequirement { key: r.key.clone(), op })
        } else {
            Err(errs)
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            LabelOp::In(set) => value.is_some_and(|v| set.contains(v)),
            LabelOp::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
            LabelOp::Gt(bound) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n > *bound),
            LabelOp::Lt(bound) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n < *bound),
        }
    }
}

/// A `matchFields` requirement: `In` or `NotIn` with exactly one value, against the node's fields
/// (only `metadata.name` exists; any other field reads as empty, as Kubernetes' field sets do).
#[derive(Debug, Clone)]
struct FieldRequirement {
    key: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn parse(r: &NodeSelectorRequirement, path: &str) -> Result<FieldRequirement, String> {
        let equal = match r.operator.as_str() {
            "In" => true,
            "NotIn" => false,
            other => return Err(format!("{path}.operator: unsupported value {other:?} (supported: In, NotIn)")),
        };
        match r.values.as_deref() {
            Some([value]) => Ok(FieldRequirement { key: r.key.clone(), value: value.clone(), equal }),
            other => Err(format!("{path}.values: must have one element, got {}", other.map_or(0, <[String]>::len))),
        }
    }

    fn matches(&self, node_name: &str) -> bool {
        let actual = if self.key == NAME_FIELD { node_name } else { "" };
        (actual == self.value) == self.equal
    }
}

/// A parsed `NodeSelectorTerm`: its requirements ANDed.
#[derive(Debug, Clone)]
pub struct SelectorTerm {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl SelectorTerm {
    /// Parses `term`; errors name fields under `path` (e.g. `...nodeSelectorTerms[0]`).
    pub fn parse(term: &NodeSelectorTerm, path: &str) -> Result<SelectorTerm, Vec<String>> {
        let mut errs = Vec::new();
        let mut labels = Vec::new();
        for (i, r) in term.match_expressions.iter().flatten().enumerate() {
            match LabelRequirement::parse(r, &format!("{path}.matchExpressions[{i}]")) {
                Ok(r) => labels.push(r),
                Err(e) => errs.extend(e),
            }
        }
        let mut fields = Vec::new();
        for (i, r) in term.match_fields.iter().flatten().enumerate() {
            match FieldRequirement::parse(r, &format!("{path}.matchFields[{i}]")) {
                Ok(r) => fields.push(r),
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            Ok(SelectorTerm { labels, fields })
        } else {
            Err(errs)
        }
    }

    /// Whether `node` meets every requirement. A node without a name has no fields to match, so
    /// field requirements are then not checked (as in Kubernetes).
    pub fn matches(&self, node: &Node) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&EMPTY);
        let name = node.metadata.name.as_deref().unwrap_or("");
        self.labels.iter().all(|r| r.matches(labels))
            && (name.is_empty() || self.fields.iter().all(|r| r.matches(name)))
    }
}

/// A term with neither expressions nor fields selects nothing, and is left out.
fn is_empty_term(term: &NodeSelectorTerm) -> bool {
    term.match_expressions.as_ref().is_none_or(Vec::is_empty) && term.match_fields.as_ref().is_none_or(Vec::is_empty)
}

/// A parsed `NodeSelector`: its terms ORed. A term that failed to parse matches nothing.
#[derive(Debug, Clone, Default)]
pub struct NodeSelectorMatcher {
    terms: Vec<Result<SelectorTerm, Vec<String>>>,
}

impl NodeSelectorMatcher {
    /// Parses every term, keeping the ones that fail as never-matching (a pod's own selector).
    pub fn lenient(selector: &NodeSelector) -> NodeSelectorMatcher {
        let terms = selector
            .node_selector_terms
            .iter()
            .enumerate()
            .filter(|(_, t)| !is_empty_term(t))
            .map(|(i, t)| SelectorTerm::parse(t, &format!("nodeSelectorTerms[{i}]")))
            .collect();
        NodeSelectorMatcher { terms }
    }

    /// Parses every term and refuses the selector if any fails; errors name fields under `path`.
    pub fn strict(selector: &NodeSelector, path: &str) -> Result<NodeSelectorMatcher, String> {
        let mut terms = Vec::new();
        let mut errs = Vec::new();
        for (i, t) in selector.node_selector_terms.iter().enumerate() {
            if is_empty_term(t) {
                continue;
            }
            match SelectorTerm::parse(t, &format!("{path}.nodeSelectorTerms[{i}]")) {
                Ok(term) => terms.push(Ok(term)),
                Err(e) => errs.extend(e),
            }
        }
        if errs.is_empty() {
            Ok(NodeSelectorMatcher { terms })
        } else {
            Err(errs.join("; "))
        }
    }

    /// Whether any term matches `node`; no term (or only empty ones) matches nothing.
    pub fn matches(&self, node: &Node) -> bool {
        self.terms.iter().any(|t| t.as_ref().is_ok_and(|t| t.matches(node)))
    }
}

/// Preferred terms with their weights; terms of weight 0 or without requirements are left out.
#[derive(Debug, Clone, Default)]
pub struct PreferredTerms {
    terms: Vec<(i64, SelectorTerm)>,
}

impl PreferredTerms {
    /// Parses every term; any that fails refuses them all, with errors naming fields under `path`.
    pub fn parse(terms: &[PreferredSchedulingTerm], path: &str) -> Result<PreferredTerms, String> {
        let mut parsed = Vec::new();
        let mut errs = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            if t.weight == 0 || is_empty_term(&t.preference) {
                continue;
            }
            match SelectorTerm::parse(&t.preference, &format!("{path}[{i}].preference")) {
                Ok(term) => parsed.push((i64::from(t.weight), term)),
                Err(e) => errs.extend(e),
            }
        }
        if errs.is_empty() {
            Ok(PreferredTerms { terms: parsed })
        } else {
            Err(errs.join("; "))
        }
    }

    /// The sum of the weights of the terms `node` matches.
    pub fn score(&self, node: &Node) -> i64 {
        self.terms.iter().filter(|(_, t)| t.matches(node)).map(|(w, _)| w).sum()
    }
}

/// A pod's hard node constraints: `spec.nodeSelector` and the required node affinity, both of
/// which a node must satisfy (kube-scheduler's `RequiredNodeAffinity`). Also what PodTopologySpread
/// honours with `nodeAffinityPolicy: Honor`.
#[derive(Debug, Clone, Default)]
pub struct RequiredNodeAffinity {
    node_selector: BTreeMap<String, String>,
    affinity: Option<NodeSelectorMatcher>,
}

impl RequiredNodeAffinity {
    pub fn of_pod(pod: &Pod) -> RequiredNodeAffinity {
        let spec = pod.spec.as_ref();
        let node_selector = spec.and_then(|s| s.node_selector.clone()).unwrap_or_default();
        let affinity = required_terms(pod).map(NodeSelectorMatcher::lenient);
        RequiredNodeAffinity { node_selector, affinity }
    }

    pub fn matches(&self, node: &Node) -> bool {
        let labels = node.metadata.labels.as_ref();
        let selector_ok = self.node_selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        selector_ok && self.affinity.as_ref().is_none_or(|a| a.matches(node))
    }
}

/// Whether `node` matches `term` (a term without requirements, or one that does not parse, matches
/// nothing).
pub fn node_matches_selector_term(term: &NodeSelectorTerm, node: &Node) -> bool {
    !is_empty_term(term) && SelectorTerm::parse(term, "").is_ok_and(|t| t.matches(node))
}

/// Whether `node` matches any term of `selector`.
pub fn node_matches_node_selector(selector: &NodeSelector, node: &Node) -> bool {
    NodeSelectorMatcher::lenient(selector).matches(node)
}

/// Whether `node` satisfies `pod`'s node selector and required node affinity.
pub fn pod_matches_node_selector_and_affinity(pod: &Pod, node: &Node) -> bool {
    RequiredNodeAffinity::of_pod(pod).matches(node)
}

fn required_terms(pod: &Pod) -> Option<&NodeSelector> {
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
}

fn preferred_terms(pod: &Pod) -> Option<&[PreferredSchedulingTerm]> {
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
}

/// The pod's preferred terms, None when it has none (Kubernetes skips scoring then).
fn pod_preferred(pod: &Pod) -> Result<Option<PreferredTerms>, String> {
    preferred_terms(pod)
        .map(|terms| {
            PreferredTerms::parse(terms, "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution")
        })
        .transpose()
}

/// Whether every required term names nodes by `metadata.name` (`In`) and, across the terms, no
/// name is left: then no node can match, whatever its labels.
fn terms_name_no_node(selector: &NodeSelector) -> bool {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for term in &selector.node_selector_terms {
        let mut term_names: Option<BTreeSet<&str>> = None;
        for r in term.match_fields.iter().flatten() {
            if r.key == NAME_FIELD && r.operator == "In" {
                let these: BTreeSet<&str> = r.values.iter().flatten().map(String::as_str).collect();
                term_names = Some(match term_names {
                    None => these,
                    Some(prev) => prev.intersection(&these).copied().collect(),
                });
            }
        }
        match term_names {
            // A term that names no node leaves every node possible.
            None => return false,
            Some(t) => names.extend(t),
        }
    }
    !selector.node_selector_terms.is_empty() && names.is_empty()
}

/// `NodeAffinityArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: Option<String>,
    added_affinity: Option<k8s_openapi::api::core::v1::NodeAffinity>,
}

pub struct NodeAffinity {
    added_required: Option<NodeSelectorMatcher>,
    added_preferred: Option<PreferredTerms>,
}

struct PreFilterState(RequiredNodeAffinity);
struct PreScoreState(Option<PreferredTerms>);

impl NodeAffinity {
    /// Builds the plugin from `NodeAffinityArgs`; `addedAffinity`'s terms must all parse.
    pub fn new(args: Option<&Value>) -> Result<Self, String> {
        let args: Args = super::decode_args(args)?;
        let mut plugin = NodeAffinity { added_required: None, added_preferred: None };
        if let Some(added) = &args.added_affinity {
            if let Some(required) = &added.required_during_scheduling_ignored_during_execution {
                plugin.added_required = Some(NodeSelectorMatcher::strict(
                    required,
                    "addedAffinity.requiredDuringSchedulingIgnoredDuringExecution",
                )?);
            }
            if let Some(preferred) =
                added.preferred_during_scheduling_ignored_during_execution.as_deref().filter(|p| !p.is_empty())
            {
                plugin.added_preferred = Some(PreferredTerms::parse(
                    preferred,
                    "addedAffinity.preferredDuringSchedulingIgnoredDuringExecution",
                )?);
            }
        }
        Ok(plugin)
    }
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        let required = required_terms(&pod.pod);
        let has_selector = pod.pod.spec.as_ref().is_some_and(|s| s.node_selector.is_some());
        if required.is_none() && self.added_required.is_none() && !has_selector {
            return Status::skip();
        }
        state.write(PRE_FILTER_KEY, PreFilterState(RequiredNodeAffinity::of_pod(&pod.pod)));
        if required.is_some_and(terms_name_no_node) {
            return Status::unresolvable(REASON_CONFLICT);
        }
        Status::success()
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if self.added_required.as_ref().is_some_and(|m| !m.matches(&node.node)) {
            return Status::unresolvable(REASON_ENFORCED);
        }
        let matches = match state.read::<PreFilterState>(PRE_FILTER_KEY) {
            Some(s) => s.0.matches(&node.node),
            None => pod_matches_node_selector_and_affinity(&pod.pod, &node.node),
        };
        if matches {
            Status::success()
        } else {
            Status::unresolvable(REASON_POD)
        }
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[std::sync::Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        let preferred = match pod_preferred(&pod.pod) {
            Ok(p) => p,
            Err(e) => return Status::error(e),
        };
        if preferred.is_none() && self.added_preferred.is_none() {
            return Status::skip();
        }
        state.write(PRE_SCORE_KEY, PreScoreState(preferred));
        Status::success()
    }

    /// The sum of the weights of the preferred terms (the pod's and the profile's) the node matches.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let added = self.added_preferred.as_ref().map_or(0, |t| t.score(&node.node));
        let own = match state.read::<PreScoreState>(PRE_SCORE_KEY) {
            Some(s) => s.0.as_ref().map_or(0, |t| t.score(&node.node)),
            // Without PreScore the terms are parsed here; ones that do not parse score nothing.
            None => pod_preferred(&pod.pod).ok().flatten().map_or(0, |t| t.score(&node.node)),
        };
        added + own
    }

    fn normalize_score(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        default_normalize_score(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }
    fn node_info(name: &str, labels: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(node(name, labels)))
    }
    fn pod(spec: Value) -> PodInfo {
        let mut spec = spec;
        spec["containers"] = json!([]);
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec})).unwrap(),
        ))
    }
    fn term(v: Value) -> NodeSelectorTerm {
        serde_json::from_value(v).unwrap()
    }
    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }
    fn required(terms: Value) -> Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
    }

    /// Runs PreFilter then Filter, as the framework does (a skipped Filter passes).
    fn run_filter(plugin: &NodeAffinity, p: &PodInfo, n: &NodeInfo) -> Status {
        let mut state = CycleState::default();
        let pre = plugin.pre_filter(&mut state, p, &Snapshot::default());
        match pre.code {
            Code::Skip => Status::success(),
            Code::Success => plugin.filter(&state, p, n),
            _ => pre,
        }
    }

    #[test]
    fn every_operator_matches_as_kubernetes_labels_do() {
        let n = node("n1", json!({"zone": "a", "gpu": "4", "bad": "x4"}));
        let cases = [
            (expr("zone", "In", &["a", "b"]), true),
            (expr("zone", "In", &["b"]), false),
            (expr("missing", "In", &["a"]), false),
            (expr("zone", "NotIn", &["b"]), true),
            (expr("zone", "NotIn", &["a"]), false),
            (expr("missing", "NotIn", &["a"]), true),
            (expr("zone", "Exists", &[]), true),
            (expr("missing", "Exists", &[]), false),
            (expr("zone", "DoesNotExist", &[]), false),
            (expr("missing", "DoesNotExist", &[]), true),
            (expr("gpu", "Gt", &["3"]), true),
            (expr("gpu", "Gt", &["4"]), false),
            (expr("gpu", "Lt", &["5"]), true),
            (expr("gpu", "Lt", &["4"]), false),
            (expr("missing", "Gt", &["1"]), false),
            // A label that is not an integer never compares.
            (expr("bad", "Gt", &["1"]), false),
            (expr("bad", "Lt", &["1"]), false),
            // Requirements within a term are ANDed.
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gpu", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gpu", "operator": "DoesNotExist"}]}),
                false,
            ),
            // matchFields: metadata.name only; other fields read as empty.
            (json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}), true),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}), true),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["n1"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.uid", "operator": "NotIn", "values": ["n1"]}]}), true),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}], "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}),
                false,
            ),
            // An empty term selects nothing.
            (json!({}), false),
            (json!({"matchExpressions": [], "matchFields": []}), false),
            // Terms that do not parse match nothing.
            (expr("zone", "In", &[]), false),
            (expr("zone", "Exists", &["a"]), false),
            (expr("gpu", "Gt", &["3", "4"]), false),
            (expr("gpu", "Gt", &["three"]), false),
            (expr("zone", "Near", &["a"]), false),
            (expr("bad key!", "Exists", &[]), false),
            (expr("zone", "In", &["not a value"]), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]}), false),
            (json!({"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}), false),
        ];
        for (t, want) in cases {
            assert_eq!(node_matches_selector_term(&term(t.clone()), &n), want, "term {t}");
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (expr("k", "Near", &[]), "p.matchExpressions[0].operator: unsupported value \"Near\""),
            (expr("k", "In", &[]), "p.matchExpressions[0].values: must not be empty"),
            (expr("k", "DoesNotExist", &["x"]), "p.matchExpressions[0].values: must be empty"),
            (expr("k", "Lt", &[]), "p.matchExpressions[0].values: operator Lt needs exactly one value"),
            (expr("k", "Gt", &["1.5"]), "p.matchExpressions[0].values[0]: invalid value \"1.5\""),
            (expr("a/b/c", "Exists", &[]), "p.matchExpressions[0].key: invalid value \"a/b/c\""),
            (expr("k", "In", &["-x"]), "p.matchExpressions[0].values[0]: invalid value \"-x\""),
            (
                json!({"matchFields": [{"key": "metadata.name", "operator": "Gt", "values": ["1"]}]}),
                "p.matchFields[0].operator: unsupported value \"Gt\"",
            ),
            (
                json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": []}]}),
                "p.matchFields[0].values: must have one element",
            ),
        ];
        for (t, want) in cases {
            let errs = SelectorTerm::parse(&term(t.clone()), "p").unwrap_err();
            assert!(errs.iter().any(|e| e.starts_with(want)), "term {t}: {errs:?}");
        }
    }

    #[test]
    fn filter_applies_node_selector_and_required_terms_ored() {
        let plugin = NodeAffinity::new(None).unwrap();
        let n = node_info("n1", json!({"zone": "a", "disk": "ssd"}));
        let cases = [
            (json!({}), true),
            (json!({"nodeSelector": {"zone": "a"}}), true),
            (json!({"nodeSelector": {"zone": "a", "disk": "hdd"}}), false),
            (json!({"nodeSelector": {"missing": ""}}), false),
            (required(json!([expr("zone", "In", &["b"]), expr("disk", "In", &["ssd"])])), true),
            (required(json!([expr("zone", "In", &["b"]), expr("disk", "In", &["hdd"])])), false),
            // An invalid term is ignored; a valid one can still match.
            (required(json!([expr("zone", "Near", &["a"]), expr("zone", "In", &["a"])])), true),
            (required(json!([])), false),
            (required(json!([{}])), false),
            // Both the selector and the affinity must hold.
            (
                {
                    let mut s = required(json!([expr("zone", "In", &["a"])]));
                    s["nodeSelector"] = json!({"disk": "hdd"});
                    s
                },
                false,
            ),
        ];
        for (spec, fits) in cases {
            let s = run_filter(&plugin, &pod(spec.clone()), &n);
            assert_eq!(s.is_success(), fits, "spec {spec}");
            if !fits {
                assert_eq!(
                    (s.code, s.reasons),
                    (Code::UnschedulableAndUnresolvable, vec![REASON_POD.to_string()]),
                    "spec {spec}"
                );
            }
        }
    }

    #[test]
    fn pre_filter_skips_pods_without_constraints_and_spots_conflicting_names() {
        let plugin = NodeAffinity::new(None).unwrap();
        let snapshot = Snapshot::default();
        let pre = |spec: Value| plugin.pre_filter(&mut CycleState::default(), &pod(spec), &snapshot);
        assert_eq!(pre(json!({})).code, Code::Skip);
        assert_eq!(pre(json!({"nodeSelector": {}})).code, Code::Success);
        let name_in = |names: &[&str]| json!({"key": "metadata.name", "operator": "In", "values": names});
        let conflict = pre(required(json!([{"matchFields": [name_in(&["a"]), name_in(&["b"])]}])));
        assert_eq!(
            (conflict.code, conflict.reasons),
            (Code::UnschedulableAndUnresolvable, vec![REASON_CONFLICT.to_string()])
        );
        assert_eq!(
            pre(required(json!([{"matchFields": [name_in(&["a", "b"]), name_in(&["b"])]}]))).code,
            Code::Success
        );
        // A term without a name leaves every node possible.
        assert_eq!(
            pre(required(json!([{"matchFields": [name_in(&["a"]), name_in(&["b"])]}, expr("zone", "Exists", &[])])))
                .code,
            Code::Success
        );
    }

    #[test]
    fn added_affinity_is_enforced_and_scored() {
        let args = json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "NodeAffinityArgs",
            "addedAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [expr("pool", "In", &["general"])]},
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": expr("zone", "In", &["a"])}]
            }
        });
        let plugin = NodeAffinity::new(Some(&args)).unwrap();
        let p = pod(json!({}));
        let s = run_filter(&plugin, &p, &node_info("n", json!({"pool": "gpu"})));
        assert_eq!((s.code, s.reasons), (Code::UnschedulableAndUnresolvable, vec![REASON_ENFORCED.to_string()]));
        assert!(run_filter(&plugin, &p, &node_info("n", json!({"pool": "general"}))).is_success());

        let mut state = CycleState::default();
        assert_eq!(plugin.pre_score(&mut state, &p, &[], &Snapshot::default()).code, Code::Success);
        assert_eq!(plugin.score(&state, &p, &node_info("n", json!({"zone": "a"}))), 5);
        assert_eq!(plugin.score(&state, &p, &node_info("n", json!({"zone": "b"}))), 0);
    }

    #[test]
    fn malformed_args_are_refused_naming_the_field() {
        let cases = [
            (json!({"addedAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [expr("k", "Near", &[])]}}}),
             "addedAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator"),
            (json!({"addedAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": expr("k", "In", &[])}]}}),
             "addedAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].values"),
            (json!({"addedAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}}}),
             "addedAffinity.requiredDuringSchedulingIgnoredDuringExecution"),
            (json!({"addedAfinity": {}}), "addedAfinity"),
        ];
        for (args, field) in cases {
            let err = NodeAffinity::new(Some(&args)).err().unwrap_or_default();
            assert!(err.contains(field), "args {args}: {err:?}");
        }
        assert!(NodeAffinity::new(Some(&Value::Null)).is_ok());
        assert!(NodeAffinity::new(Some(&json!({}))).is_ok());
    }

    #[test]
    fn score_sums_matching_preferred_weights_and_normalizes_to_the_best() {
        let plugin = NodeAffinity::new(None).unwrap();
        let p = pod(json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 2, "preference": expr("zone", "In", &["a"])},
            {"weight": 6, "preference": expr("disk", "In", &["ssd"])},
            {"weight": 0, "preference": expr("zone", "Exists", &[])},
            {"weight": 9, "preference": {}}
        ]}}}));
        let nodes = [
            node_info("n1", json!({"zone": "a"})),
            node_info("n2", json!({"disk": "ssd"})),
            node_info("n3", json!({"zone": "a", "disk": "ssd"})),
            node_info("n4", json!({})),
        ];
        let mut state = CycleState::default();
        assert_eq!(plugin.pre_score(&mut state, &p, &[], &Snapshot::default()).code, Code::Success);
        let mut scores: Vec<i64> = nodes.iter().map(|n| plugin.score(&state, &p, n)).collect();
        assert_eq!(scores, vec![2, 6, 8, 0]);
        plugin.normalize_score(&state, &p, &mut scores);
        assert_eq!(scores, vec![25, 75, 100, 0]);

        // Nothing preferred: skipped. Preferred terms that do not parse: an error.
        assert_eq!(
            plugin.pre_score(&mut CycleState::default(), &pod(json!({})), &[], &Snapshot::default()).code,
            Code::Skip
        );
        let bad = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": expr("k", "Gt", &["x"])}]}}}),
        );
        let s = plugin.pre_score(&mut CycleState::default(), &bad, &[], &Snapshot::default());
        assert_eq!(s.code, Code::Error);
        assert!(
            s.reasons[0].contains(
                "preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].values[0]"
            ),
            "{s:?}"
        );
    }
}
