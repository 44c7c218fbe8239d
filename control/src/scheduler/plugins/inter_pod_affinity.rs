//! InterPodAffinity: places a pod near, or away from, pods it names in its pod (anti-)affinity,
//! and keeps it out of topology domains whose pods' required anti-affinity names it (symmetry).
//! Preferred terms (its own and the existing pods') score. Semantics, arithmetic and reason
//! texts are kube-scheduler's.
//!
//! PreFilter/PreScore walk the snapshot's pods once per incoming pod and count matches per
//! (topology key, value); Filter and Score only look those counts up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use serde::Deserialize;
use serde_json::Value;

use crate::labels::Selector;
use crate::scheduler::framework::{CycleState, NodeInfo, Plugin, PodInfo, Snapshot, Status, MAX_NODE_SCORE};

pub const NAME: &str = "InterPodAffinity";

/// The plugin's score weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 2;

/// Kubernetes' reason texts.
pub const REASON_AFFINITY_RULES_NOT_MATCH: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY_RULES_NOT_MATCH: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

const PRE_FILTER_KEY: &str = "PreFilterInterPodAffinity";
const PRE_SCORE_KEY: &str = "PreScoreInterPodAffinity";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `InterPodAffinityArgs` as a KubeSchedulerConfiguration's pluginConfig carries it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    kind: Option<String>,
    hard_pod_affinity_weight: Option<i32>,
    ignore_preferred_terms_of_existing_pods: Option<bool>,
}

pub struct InterPodAffinity {
    /// What an existing pod's required affinity term matching the incoming pod adds to the score
    /// of its domain (0 turns that off).
    hard_pod_affinity_weight: i64,
    /// Skip scoring pods without preferred terms of their own, rather than scoring them by the
    /// existing pods' preferences.
    ignore_preferred_terms_of_existing_pods: bool,
}

impl InterPodAffinity {
    /// Builds the plugin from its args (None: Kubernetes' defaults, `hardPodAffinityWeight: 1`).
    pub fn new(args: Option<&Value>) -> Result<Self, String> {
        let args: Args = super::decode_args(args)?;
        if let Some(kind) = args.kind.as_deref().filter(|k| *k != "InterPodAffinityArgs") {
            return Err(format!("kind: Invalid value: {kind:?}: want InterPodAffinityArgs"));
        }
        let weight = args.hard_pod_affinity_weight.unwrap_or(1);
        if !(0..=100).contains(&weight) {
            return Err(format!("hardPodAffinityWeight: Invalid value: {weight}: not in valid range [0, 100]"));
        }
        Ok(InterPodAffinity {
            hard_pod_affinity_weight: i64::from(weight),
            ignore_preferred_terms_of_existing_pods: args.ignore_preferred_terms_of_existing_pods.unwrap_or(false),
        })
    }
}

/// A parsed `PodAffinityTerm` (kube-scheduler's AffinityTerm).
#[derive(Debug, Clone)]
struct Term {
    /// Namespaces the term names; its owner's own when it names none and has no selector.
    namespaces: Vec<String>,
    /// Nothing when absent; `{}` selects every namespace.
    namespace_selector: Selector,
    selector: Selector,
    topology_key: String,
}

impl Term {
    fn parse(owner_namespace: &str, t: &PodAffinityTerm) -> Result<Term, String> {
        let selector = Selector::parse_opt(t.label_selector.as_ref())?;
        let namespace_selector = Selector::parse_opt(t.namespace_selector.as_ref())?;
        let listed = t.namespaces.as_deref().unwrap_or_default();
        let namespaces = if listed.is_empty() && t.namespace_selector.is_none() {
            vec![owner_namespace.to_string()]
        } else {
            listed.to_vec()
        };
        Ok(Term { namespaces, namespace_selector, selector, topology_key: t.topology_key.clone() })
    }

    /// Whether `pod` (whose namespace has `ns_labels`) is one the term selects.
    fn matches(&self, pod: &PodInfo, ns_labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.contains(&pod.namespace) || self.namespace_selector.matches(ns_labels))
            && self.selector.matches(pod.labels())
    }

    /// For the incoming pod's terms: resolves a non-empty namespaceSelector to the namespaces it
    /// selects now, so that matching thousands of existing pods needs no namespace lookups
    /// (kube-scheduler's mergeAffinityTermNamespacesIfNotEmpty). `{}` stays "every namespace".
    fn resolve_namespaces(&mut self, namespace_labels: &HashMap<String, BTreeMap<String, String>>) {
        if self.namespace_selector.is_empty() || self.namespace_selector.is_nothing() {
            return;
        }
        for (ns, labels) in namespace_labels {
            if self.namespace_selector.matches(labels) && !self.namespaces.contains(ns) {
                self.namespaces.push(ns.clone());
            }
        }
        self.namespace_selector = Selector::nothing();
    }
}

/// Parses a list of terms; one bad term refuses the list (as kube-scheduler's PodInfo does).
fn parse_terms(owner_namespace: &str, terms: &[PodAffinityTerm]) -> Result<Vec<Term>, String> {
    terms.iter().map(|t| Term::parse(owner_namespace, t)).collect()
}

fn parse_weighted(owner_namespace: &str, terms: &[WeightedPodAffinityTerm]) -> Result<Vec<(i64, Term)>, String> {
    terms.iter().map(|t| Ok((i64::from(t.weight), Term::parse(owner_namespace, &t.pod_affinity_term)?))).collect()
}

fn required_affinity(pod: &Pod) -> &[PodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_affinity.as_ref());
    a.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref()).unwrap_or_default()
}

fn required_anti_affinity(pod: &Pod) -> &[PodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref());
    a.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref()).unwrap_or_default()
}

fn preferred_affinity(pod: &Pod) -> &[WeightedPodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_affinity.as_ref());
    a.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref()).unwrap_or_default()
}

fn preferred_anti_affinity(pod: &Pod) -> &[WeightedPodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref());
    a.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref()).unwrap_or_default()
}

/// A number per (topology key, value), nested so that lookups borrow the node's labels.
#[derive(Debug, Default)]
struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    /// Adds `n` to the node's domain for `key`; nothing when the node lacks the key. The entry
    /// exists afterwards even when `n` is 0 (kube-scheduler tells "no match" by an empty map).
    fn add(&mut self, key: &str, node_labels: &BTreeMap<String, String>, n: i64) {
        let Some(value) = node_labels.get(key) else { return };
        let values = match self.0.get_mut(key) {
            Some(v) => v,
            None => self.0.entry(key.to_string()).or_default(),
        };
        match values.get_mut(value) {
            Some(c) => *c += n,
            None => {
                values.insert(value.clone(), n);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0.get(key).and_then(|v| v.get(value)).copied().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct PreFilterState {
    /// Topology keys of the incoming pod's required affinity and anti-affinity terms.
    affinity_keys: Vec<String>,
    anti_affinity_keys: Vec<String>,
    /// Existing pods matching all the incoming pod's affinity terms, per domain of each term.
    affinity_counts: TopologyCounts,
    /// Existing pods matching each of the incoming pod's anti-affinity terms, per domain.
    anti_affinity_counts: TopologyCounts,
    /// Existing pods whose required anti-affinity terms match the incoming pod, per domain.
    existing_anti_affinity_counts: TopologyCounts,
    /// The incoming pod matches all its own affinity terms: it may be the first of its kind.
    matches_own_affinity: bool,
}

struct PreScoreState {
    scores: TopologyCounts,
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let parsed = parse_terms(&pod.namespace, required_affinity(&pod.pod))
            .and_then(|a| Ok((a, parse_terms(&pod.namespace, required_anti_affinity(&pod.pod))?)));
        let (mut affinity, mut anti_affinity) = match parsed {
            Ok(terms) => terms,
            Err(e) => return Status::unresolvable(format!("parsing pod: {e}")),
        };
        for t in affinity.iter_mut().chain(anti_affinity.iter_mut()) {
            t.resolve_namespaces(&snapshot.namespace_labels);
        }
        let pod_ns_labels = snapshot.namespace_labels.get(&pod.namespace).unwrap_or(&NO_LABELS);

        let mut affinity_counts = TopologyCounts::default();
        let mut anti_affinity_counts = TopologyCounts::default();
        let mut existing_anti_affinity_counts = TopologyCounts::default();
        let has_terms = !affinity.is_empty() || !anti_affinity.is_empty();
        for node in &snapshot.nodes {
            // Without terms of its own, only existing pods' required anti-affinity matters.
            if !has_terms && node.pods_with_required_anti_affinity == 0 {
                continue;
            }
            let node_labels = node.labels();
            for existing in &node.pods {
                if !has_terms && !existing.has_required_anti_affinity {
                    continue;
                }
                let theirs = required_anti_affinity(&existing.pod);
                // A pod whose terms don't parse has none, as in kube-scheduler's PodInfo.
                if !theirs.is_empty() {
                    let theirs = parse_terms(&existing.namespace, theirs).unwrap_or_default();
                    for t in theirs.iter().filter(|t| t.matches(pod, pod_ns_labels)) {
                        existing_anti_affinity_counts.add(&t.topology_key, node_labels, 1);
                    }
                }
                // The incoming terms' namespaces are resolved: no namespace labels needed.
                if !affinity.is_empty() && affinity.iter().all(|t| t.matches(existing, &NO_LABELS)) {
                    for t in &affinity {
                        affinity_counts.add(&t.topology_key, node_labels, 1);
                    }
                }
                for t in anti_affinity.iter().filter(|t| t.matches(existing, &NO_LABELS)) {
                    anti_affinity_counts.add(&t.topology_key, node_labels, 1);
                }
            }
        }
        if existing_anti_affinity_counts.is_empty() && affinity.is_empty() && anti_affinity.is_empty() {
            return Status::skip();
        }
        let matches_own_affinity = !affinity.is_empty() && affinity.iter().all(|t| t.matches(pod, &NO_LABELS));
        state.write(
            PRE_FILTER_KEY,
            PreFilterState {
                affinity_keys: affinity.into_iter().map(|t| t.topology_key).collect(),
                anti_affinity_keys: anti_affinity.into_iter().map(|t| t.topology_key).collect(),
                affinity_counts,
                anti_affinity_counts,
                existing_anti_affinity_counts,
                matches_own_affinity,
            },
        );
        Status::success()
    }

    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_KEY) else {
            return Status::error(format!("reading {PRE_FILTER_KEY:?} from cycleState: not found"));
        };
        let labels = node.labels();

        // Every affinity term needs its key on the node and a matching pod in that domain.
        let mut pods_exist = true;
        for key in &s.affinity_keys {
            let Some(value) = labels.get(key) else {
                return Status::unresolvable(REASON_AFFINITY_RULES_NOT_MATCH);
            };
            pods_exist &= s.affinity_counts.get(key, value) > 0;
        }
        // No pod anywhere matches, but the pod matches its own terms: it may be the first of a
        // group with affinity to itself, which would otherwise stay pending forever.
        let first_of_its_kind = s.affinity_counts.is_empty() && s.matches_own_affinity;
        if !(pods_exist || first_of_its_kind) {
            return Status::unresolvable(REASON_AFFINITY_RULES_NOT_MATCH);
        }

        if !s.anti_affinity_counts.is_empty() {
            let hit = s
                .anti_affinity_keys
                .iter()
                .any(|k| labels.get(k).is_some_and(|v| s.anti_affinity_counts.get(k, v) > 0));
            if hit {
                return Status::unschedulable(REASON_ANTI_AFFINITY_RULES_NOT_MATCH);
            }
        }

        let hit = s
            .existing_anti_affinity_counts
            .0
            .iter()
            .any(|(key, values)| labels.get(key).and_then(|v| values.get(v)).is_some_and(|n| *n > 0));
        if hit {
            return Status::unschedulable(REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH);
        }
        Status::success()
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status {
        let (preferred, preferred_anti) = (preferred_affinity(&pod.pod), preferred_anti_affinity(&pod.pod));
        let has_preferred = !preferred.is_empty() || !preferred_anti.is_empty();
        if self.ignore_preferred_terms_of_existing_pods && !has_preferred {
            return Status::skip();
        }
        let parsed = parse_weighted(&pod.namespace, preferred)
            .and_then(|a| Ok((a, parse_weighted(&pod.namespace, preferred_anti)?)));
        let (mut preferred, mut preferred_anti) = match parsed {
            Ok(terms) => terms,
            Err(e) => return Status::error(format!("failed to parse pod: {e}")),
        };
        for (_, t) in preferred.iter_mut().chain(preferred_anti.iter_mut()) {
            t.resolve_namespaces(&snapshot.namespace_labels);
        }
        let pod_ns_labels = snapshot.namespace_labels.get(&pod.namespace).unwrap_or(&NO_LABELS);

        let mut scores = TopologyCounts::default();
        for node in &snapshot.nodes {
            // Without preferences of its own, only pods with pod (anti-)affinity matter.
            if !has_preferred && node.pods_with_affinity == 0 {
                continue;
            }
            let node_labels = node.labels();
            if node_labels.is_empty() {
                continue;
            }
            for existing in &node.pods {
                if !has_preferred && !existing.has_pod_affinity {
                    continue;
                }
                for (weight, t) in &preferred {
                    if t.matches(existing, &NO_LABELS) {
                        scores.add(&t.topology_key, node_labels, *weight);
                    }
                }
                for (weight, t) in &preferred_anti {
                    if t.matches(existing, &NO_LABELS) {
                        scores.add(&t.topology_key, node_labels, -*weight);
                    }
                }
                if !existing.has_pod_affinity {
                    continue;
                }
                // The existing pod's own terms, matched against the incoming pod (symmetry).
                if self.hard_pod_affinity_weight > 0 {
                    let theirs = parse_terms(&existing.namespace, required_affinity(&existing.pod)).unwrap_or_default();
                    for t in theirs.iter().filter(|t| t.matches(pod, pod_ns_labels)) {
                        scores.add(&t.topology_key, node_labels, self.hard_pod_affinity_weight);
                    }
                }
                let theirs = parse_weighted(&existing.namespace, preferred_affinity(&existing.pod)).unwrap_or_default();
                for (weight, t) in theirs.iter().filter(|(_, t)| t.matches(pod, pod_ns_labels)) {
                    scores.add(&t.topology_key, node_labels, *weight);
                }
                let theirs =
                    parse_weighted(&existing.namespace, preferred_anti_affinity(&existing.pod)).unwrap_or_default();
                for (weight, t) in theirs.iter().filter(|(_, t)| t.matches(pod, pod_ns_labels)) {
                    scores.add(&t.topology_key, node_labels, -*weight);
                }
            }
        }
        if scores.is_empty() {
            return Status::skip();
        }
        state.write(PRE_SCORE_KEY, PreScoreState { scores });
        Status::success()
    }

    /// The summed weights of the node's domains: positive for affinity, negative for anti.
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_KEY) else { return 0 };
        let labels = node.labels();
        s.scores.0.iter().filter_map(|(key, values)| labels.get(key).and_then(|v| values.get(v))).sum()
    }

    /// Min–max to 0..=100: the lowest raw score gets 0, the highest 100; all equal: all 0.
    fn normalize_score(&self, state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        if state.read::<PreScoreState>(PRE_SCORE_KEY).is_none_or(|s| s.scores.is_empty()) {
            return;
        }
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        let diff = max.saturating_sub(min);
        for s in scores.iter_mut() {
            *s = if diff > 0 { (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64 } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::json;

    fn pod(ns: &str, labels: Value, affinity: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels},
                "spec": {"containers": [], "affinity": affinity}}))
            .unwrap(),
        ))
    }

    fn node(name: &str, labels: Value, pods: Vec<PodInfo>) -> Arc<NodeInfo> {
        let mut n = NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        ));
        for p in pods {
            n.add_pod(Arc::new(p));
        }
        Arc::new(n)
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    fn snapshot(nodes: Vec<Arc<NodeInfo>>) -> Snapshot {
        Snapshot { nodes, ..Default::default() }
    }

    /// Runs PreFilter, then Filter on every node: (node, code, reason) per node, or PreFilter's code.
    fn filter_all(p: &PodInfo, snap: &Snapshot) -> Result<Vec<(String, Code, String)>, Code> {
        let pl = InterPodAffinity::new(None).unwrap();
        let mut state = CycleState::default();
        let s = pl.pre_filter(&mut state, p, snap);
        if !s.is_success() {
            return Err(s.code);
        }
        Ok(snap
            .nodes
            .iter()
            .map(|n| {
                let s = pl.filter(&state, p, n);
                (n.name.clone(), s.code, s.reasons.first().cloned().unwrap_or_default())
            })
            .collect())
    }

    fn fitting(p: &PodInfo, snap: &Snapshot) -> Vec<String> {
        filter_all(p, snap).unwrap().into_iter().filter(|(_, c, _)| *c == Code::Success).map(|(n, _, _)| n).collect()
    }

    fn cluster() -> Snapshot {
        snapshot(vec![
            node("a", json!({"zone": "z1", "host": "a"}), vec![pod("default", json!({"app": "db"}), json!(null))]),
            node("b", json!({"zone": "z1", "host": "b"}), vec![]),
            node("c", json!({"zone": "z2", "host": "c"}), vec![pod("default", json!({"app": "web"}), json!(null))]),
            node("bare", json!({}), vec![]),
        ])
    }

    #[test]
    fn required_affinity_and_anti_affinity_of_the_incoming_pod() {
        let aff = |t: Value| json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});
        let anti = |t: Value| json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});
        let cases: Vec<(&str, PodInfo, Vec<&str>)> = vec![
            ("affinity to db by zone: z1", pod("default", json!({}), aff(term("db", "zone"))), vec!["a", "b"]),
            ("affinity to db by host: a", pod("default", json!({}), aff(term("db", "host"))), vec!["a"]),
            ("affinity to db in another namespace: none", pod("other", json!({}), aff(term("db", "zone"))), vec![]),
            (
                "affinity naming the namespace",
                pod(
                    "other",
                    json!({}),
                    aff(
                        json!({"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaces": ["default"]}),
                    ),
                ),
                vec!["a", "b"],
            ),
            (
                "namespaceSelector {} is every namespace",
                pod(
                    "other",
                    json!({}),
                    aff(
                        json!({"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}}),
                    ),
                ),
                vec!["a", "b"],
            ),
            (
                "anti-affinity to web by zone: not z2",
                pod("default", json!({}), anti(term("web", "zone"))),
                vec!["a", "b", "bare"],
            ),
            (
                "anti-affinity to nothing present",
                pod("default", json!({}), anti(term("cache", "zone"))),
                vec!["a", "b", "c", "bare"],
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(fitting(&p, &cluster()), want, "{name}");
        }
        let rows = filter_all(&pod("default", json!({}), aff(term("db", "zone"))), &cluster()).unwrap();
        assert_eq!(rows[2], ("c".into(), Code::UnschedulableAndUnresolvable, REASON_AFFINITY_RULES_NOT_MATCH.into()));
        assert_eq!(
            rows[3],
            ("bare".into(), Code::UnschedulableAndUnresolvable, REASON_AFFINITY_RULES_NOT_MATCH.into())
        );
        let rows = filter_all(&pod("default", json!({}), anti(term("web", "zone"))), &cluster()).unwrap();
        assert_eq!(rows[2], ("c".into(), Code::Unschedulable, REASON_ANTI_AFFINITY_RULES_NOT_MATCH.into()));
        // No pod (anti-)affinity anywhere: nothing to filter.
        assert_eq!(filter_all(&pod("default", json!({}), json!(null)), &cluster()), Err(Code::Skip));
    }

    #[test]
    fn the_first_pod_of_a_self_affine_group_may_go_anywhere_with_the_key() {
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}});
        // No cache pod anywhere and the pod is one: any node with a zone label.
        assert_eq!(fitting(&pod("default", json!({"app": "cache"}), aff.clone()), &cluster()), vec!["a", "b", "c"]);
        // Not a cache pod itself: nowhere.
        assert_eq!(fitting(&pod("default", json!({"app": "web"}), aff.clone()), &cluster()), Vec::<String>::new());
        // Once a cache pod runs, the exception ends: only its zone.
        let mut snap = cluster();
        snap.nodes[2] =
            node("c", json!({"zone": "z2", "host": "c"}), vec![pod("default", json!({"app": "cache"}), json!(null))]);
        assert_eq!(fitting(&pod("default", json!({"app": "cache"}), aff), &snap), vec!["c"]);
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let guard = |ns: &str, t: Value| {
            pod(
                ns,
                json!({"app": "guard"}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}),
            )
        };
        let with_guard = |g: PodInfo| {
            snapshot(vec![
                node("a", json!({"zone": "z1"}), vec![g]),
                node("b", json!({"zone": "z1"}), vec![]),
                node("c", json!({"zone": "z2"}), vec![]),
            ])
        };
        let web = |ns: &str| pod(ns, json!({"app": "web"}), json!(null));

        let snap = with_guard(guard("default", term("web", "zone")));
        let rows = filter_all(&web("default"), &snap).unwrap();
        assert_eq!(rows[1], ("b".into(), Code::Unschedulable, REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH.into()));
        assert_eq!(fitting(&web("default"), &snap), vec!["c"]);
        // The guard's term covers its own namespace only.
        assert_eq!(filter_all(&web("other"), &snap), Err(Code::Skip));
        // A namespaceSelector is matched against the incoming pod's namespace labels.
        let t = json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone",
                       "namespaceSelector": {"matchLabels": {"team": "a"}}});
        let mut snap = with_guard(guard("default", t));
        assert_eq!(filter_all(&web("other"), &snap), Err(Code::Skip));
        snap.namespace_labels.insert("other".into(), BTreeMap::from([("team".into(), "a".into())]));
        assert_eq!(fitting(&web("other"), &snap), vec!["c"]);
        // Terminating pods still count, as in kube-scheduler.
        let mut g: Pod = (*guard("default", term("web", "zone")).pod).clone();
        g.metadata.deletion_timestamp = serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap();
        assert_eq!(fitting(&web("default"), &with_guard(PodInfo::new(Arc::new(g)))), vec!["c"]);
    }

    #[test]
    fn incoming_namespace_selector_resolves_through_the_snapshot() {
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {"matchLabels": {"team": "a"}}}]}});
        let p = pod("other", json!({}), aff);
        let mut snap = cluster();
        // Without namespace labels the selector picks no namespace.
        assert_eq!(fitting(&p, &snap), Vec::<String>::new());
        snap.namespace_labels.insert("default".into(), BTreeMap::from([("team".into(), "a".into())]));
        assert_eq!(fitting(&p, &snap), vec!["a", "b"]);
    }

    #[test]
    fn unparsable_terms_are_unresolvable() {
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Near", "values": ["db"]}]}, "topologyKey": "zone"}]}});
        assert_eq!(filter_all(&pod("default", json!({}), aff), &cluster()), Err(Code::UnschedulableAndUnresolvable));
    }

    fn scores(pl: &InterPodAffinity, p: &PodInfo, snap: &Snapshot) -> Result<(Vec<i64>, Vec<i64>), Code> {
        let mut state = CycleState::default();
        let s = pl.pre_score(&mut state, p, &snap.nodes, snap);
        if !s.is_success() {
            return Err(s.code);
        }
        let raw: Vec<i64> = snap.nodes.iter().map(|n| pl.score(&state, p, n)).collect();
        let mut normalized = raw.clone();
        pl.normalize_score(&state, p, &mut normalized);
        Ok((raw, normalized))
    }

    #[test]
    fn score_sums_preferred_weights_both_ways() {
        let pl = InterPodAffinity::new(None).unwrap();
        // Prefer db's zone (10), avoid web's host (5).
        let p = pod(
            "default",
            json!({"app": "api"}),
            json!({
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term("db", "zone")}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": term("web", "host")}]}
            }),
        );
        // a, b: +10 (z1 has db); c: -5 (web on host c); bare: 0. Min -5, max 10: (s+5)*100/15.
        assert_eq!(scores(&pl, &p, &cluster()).unwrap(), (vec![10, 10, -5, 0], vec![100, 100, 0, 33]));

        // Existing pods' terms about the incoming pod: a required affinity (hardPodAffinityWeight
        // 1) and a preferred anti-affinity (weight 4) both naming app=api.
        let lover = pod(
            "default",
            json!({}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("api", "zone")]}}),
        );
        let hater = pod(
            "default",
            json!({}),
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 4, "podAffinityTerm": term("api", "host")}]}}),
        );
        let snap = snapshot(vec![
            node("a", json!({"zone": "z1", "host": "a"}), vec![lover]),
            node("b", json!({"zone": "z1", "host": "b"}), vec![hater]),
            node("c", json!({"zone": "z2", "host": "c"}), vec![]),
        ]);
        let api = pod("default", json!({"app": "api"}), json!(null));
        // a: +1; b: +1 - 4 = -3; c: 0. Min -3, max 1: (s+3)*100/4.
        assert_eq!(scores(&pl, &api, &snap).unwrap(), (vec![1, -3, 0], vec![100, 0, 75]));
        let heavy = InterPodAffinity::new(Some(&json!({"hardPodAffinityWeight": 10}))).unwrap();
        assert_eq!(scores(&heavy, &api, &snap).unwrap().0, vec![10, 6, 0]);
        let ignoring = InterPodAffinity::new(Some(&json!({"ignorePreferredTermsOfExistingPods": true}))).unwrap();
        assert_eq!(scores(&ignoring, &api, &snap), Err(Code::Skip));
        // Nothing matches anywhere: Skip.
        assert_eq!(scores(&pl, &pod("default", json!({"app": "other"}), json!(null)), &snap), Err(Code::Skip));
    }

    #[test]
    fn args_are_validated_naming_the_field() {
        for ok in [
            json!({}),
            json!({"hardPodAffinityWeight": 0}),
            json!({"hardPodAffinityWeight": 100, "kind": "InterPodAffinityArgs"}),
        ] {
            assert!(InterPodAffinity::new(Some(&ok)).is_ok(), "{ok}");
        }
        let bad = [
            (json!({"hardPodAffinityWeight": 101}), "hardPodAffinityWeight"),
            (json!({"hardPodAffinityWeight": -1}), "hardPodAffinityWeight"),
            (json!({"hardPodAffinityWeight": "x"}), "hardPodAffinityWeight"),
            (json!({"hardPodAffinityWeigth": 1}), "hardPodAffinityWeigth"),
            (json!({"kind": "PodTopologySpreadArgs"}), "kind"),
        ];
        for (a, field) in bad {
            let err = InterPodAffinity::new(Some(&a)).err().unwrap_or_else(|| panic!("{a} accepted"));
            assert!(err.contains(field), "{a}: {err:?} should name {field}");
        }
    }
}
