//! The DaemonSet controller (Kubernetes' `daemonset`): one pod on every node that should run
//! it — the template's node selector and required node affinity match, and its taints are
//! tolerated, with the tolerations Kubernetes adds to daemon pods — bound there through a node
//! affinity on the node's name and placed by the scheduler. Templates are recorded as
//! ControllerRevisions (`controller-revision-hash`); RollingUpdate replaces pods within
//! maxUnavailable, or with maxSurge a new pod starts beside the old one; OnDelete waits for
//! the user. Status counts scheduled, misscheduled, ready, updated and available pods.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec,
    Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::deployment::rules::{scaled_value, template_hash};
use super::expectations::Expectations;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, controller_ref, is_available, is_ready};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::events::{reference, Recorder};
use crate::labels::Selector;

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// What a node means to a daemon set: whether a new pod should go there, and whether a pod
/// already there may stay (a NoSchedule taint keeps new pods off but leaves running ones).
pub fn node_should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let pod = Pod {
        metadata: Default::default(),
        spec: template.spec.clone().map(|mut s| {
            s.tolerations = Some(daemon_tolerations(template));
            s
        }),
        status: None,
    };
    if !crate::scheduler::plugins::node_affinity::pod_matches_node_selector_and_affinity(&pod, node) {
        return (false, false);
    }
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let tolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .all(|t| crate::scheduler::plugins::taint_toleration::tolerations_tolerate(&tolerations, t))
    };
    let keeps = tolerated("NoExecute");
    (keeps && tolerated("NoSchedule"), keeps)
}

/// The template's tolerations with those Kubernetes adds to every daemon pod: not-ready and
/// unreachable (for ever), the pressure and unschedulable taints, and network-unavailable for
/// pods on the host's network.
pub fn daemon_tolerations(template: &PodTemplateSpec) -> Vec<Toleration> {
    let spec = template.spec.as_ref();
    let mut out = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut add = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.and_then(|s| s.host_network) == Some(true) {
        add.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in add {
        if !out.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)) {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
    out
}

/// A daemon pod for `node`: the template with the daemon tolerations, and its required node
/// affinity replaced by one on the node's name (Kubernetes' ReplaceDaemonSetPodNodeNameNodeAffinity).
pub fn daemon_pod(ds: &DaemonSet, template: &PodTemplateSpec, node: &str) -> Pod {
    let ns = ds.metadata.namespace.as_deref().unwrap_or("");
    let mut pod = pods::pod_from_template(template, ns, ds.metadata.name.as_deref().unwrap_or(""), controller_ref(ds));
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.tolerations = Some(daemon_tolerations(template));
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector { node_selector_terms: vec![term] });
    pod
}

/// The node a daemon pod is for: its binding, or the node its affinity names.
pub fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pods::labels(&pod.metadata).get(REVISION_HASH_LABEL).map(String::as_str)
}

/// What one sync does on the nodes: the nodes that get a new pod, and the pods to delete.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<String>,
    pub delete: Vec<String>,
}

/// The rollout's moves over `per_node` (each node: whether it should run the daemon, and its
/// active pods as (name, is current, is available)), Kubernetes' manage and rollingUpdate
/// together: nodes that should run one get a pod, extra and misplaced ones go; then old pods
/// are replaced within maxUnavailable (deleting first) or maxSurge (starting the new one first).
pub fn plan(per_node: &BTreeMap<String, (bool, bool, Vec<(String, bool, bool)>)>, rolling: Option<(i32, i32)>) -> Plan {
    let mut plan = Plan::default();
    for (node, (should_run, keep, pods)) in per_node {
        if pods.is_empty() && *should_run {
            plan.create.push(node.clone());
        } else if !*keep {
            plan.delete.extend(pods.iter().map(|p| p.0.clone()));
        } else if pods.len() > 1 {
            // Extra pods: with a surge, an old one beside an available new one; else all but one.
            let current_available = pods.iter().any(|p| p.1 && p.2);
            if current_available {
                plan.delete.extend(pods.iter().filter(|p| !(p.1 && p.2)).map(|p| p.0.clone()));
            } else if rolling.is_none_or(|(_, surge)| surge == 0) {
                plan.delete.extend(pods.iter().skip(1).map(|p| p.0.clone()));
            }
        }
    }
    let Some((max_unavailable, max_surge)) = rolling else { return plan };
    let eligible: Vec<(&String, &Vec<(String, bool, bool)>)> = per_node
        .iter()
        .filter(|(_, (run, keep, pods))| *run && *keep && !pods.is_empty())
        .map(|(n, (_, _, p))| (n, p))
        .collect();
    if max_surge > 0 {
        // New pods beside old ones, up to the surge at once.
        // A node surges while its new pod is not yet available beside the old one.
        let surging =
            eligible.iter().filter(|(_, p)| p.iter().any(|x| x.1 && !x.2) && p.iter().any(|x| !x.1)).count() as i32;
        let mut budget = max_surge - surging;
        for (node, pods) in &eligible {
            if budget <= 0 {
                break;
            }
            if pods.iter().all(|p| !p.1) {
                plan.create.push((*node).clone());
                budget -= 1;
            }
        }
        return plan;
    }
    let unavailable = eligible.iter().filter(|(_, p)| !p.iter().any(|x| x.2)).count() as i32;
    let mut budget = max_unavailable - unavailable;
    for (_, pods) in &eligible {
        let old: Vec<&(String, bool, bool)> = pods.iter().filter(|p| !p.1).collect();
        if old.is_empty() || pods.iter().any(|p| p.1) {
            continue;
        }
        // An old pod that is not available anyway goes at no cost.
        if !old.iter().any(|p| p.2) {
            plan.delete.extend(old.iter().map(|p| p.0.clone()));
            continue;
        }
        if budget > 0 {
            plan.delete.extend(old.iter().map(|p| p.0.clone()));
            budget -= 1;
        }
    }
    plan
}

pub struct DaemonSetController {
    client: kube::Client,
    sets: Arc<Informer<DaemonSet>>,
    nodes: Arc<Informer<Node>>,
    pods: Arc<Informer<Pod>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: WorkQueue,
    expectations: Expectations,
    recorder: Recorder,
}

fn selector(ds: &DaemonSet) -> Selector {
    ds.spec
        .as_ref()
        .map(|s| Selector::parse(&s.selector).unwrap_or_else(|_| Selector::nothing()))
        .unwrap_or_else(Selector::nothing)
}

impl DaemonSetController {
    pub fn new(m: &Manager) -> Arc<DaemonSetController> {
        let c = Arc::new(DaemonSetController {
            client: m.client.clone(),
            sets: m.informers.daemonsets(),
            nodes: m.informers.nodes(),
            pods: m.informers.pods(),
            revisions: m.informers.controllerrevisions(),
            queue: WorkQueue::new(),
            expectations: Expectations::default(),
            recorder: Recorder::start(m.client.clone(), "daemonset-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.sets.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(ds) | Change::Updated { new: ds, .. } | Change::Deleted(ds)) = change;
            if let Change::Deleted(_) = change {
                c.expectations.delete(&key_of(ds.as_ref()));
            }
            c.queue.add(&key_of(ds.as_ref()));
        });
        let weak = Arc::downgrade(&c);
        c.nodes.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Updated { old, new } = change {
                let same = old.metadata.labels == new.metadata.labels
                    && old.spec.as_ref().map(|s| &s.taints) == new.spec.as_ref().map(|s| &s.taints);
                if same {
                    return;
                }
            }
            for ds in c.sets.list() {
                c.queue.add(&key_of(ds.as_ref()));
            }
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (pod, created, gone) = match change {
                Change::Added(p) => {
                    (p, p.metadata.deletion_timestamp.is_none(), p.metadata.deletion_timestamp.is_some())
                }
                Change::Updated { old, new } => {
                    if old.metadata.resource_version == new.metadata.resource_version {
                        return;
                    }
                    (new, false, new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none())
                }
                Change::Deleted(p) => (p, false, true),
            };
            let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "DaemonSet") else { return };
            let Some(ds) = c
                .sets
                .get(pod.metadata.namespace.as_deref().unwrap_or(""), &r.name)
                .filter(|d| d.metadata.uid.as_deref() == Some(r.uid.as_str()))
            else {
                return;
            };
            let key = key_of(ds.as_ref());
            if created {
                c.expectations.creation_observed(&key);
            }
            if gone {
                c.expectations.deletion_observed(&key, &key_of(pod.as_ref()));
            }
            c.queue.add(&key);
        });
        c
    }
}

impl Controller for DaemonSetController {
    const NAME: &'static str = "daemonset";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(ds) = self.sets.get_key(key) else {
            self.expectations.delete(key);
            return Ok(());
        };
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let sel = selector(&ds);
        let owned = pods::claim(&self.client, ds.as_ref(), &sel, &self.pods, pods::is_active).await?;
        let spec = ds.spec.clone().unwrap_or_default();
        let hash = template_hash(&spec.template, ds.status.as_ref().and_then(|s| s.collision_count));
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let limit = spec.revision_history_limit.unwrap_or(10);
        super::revisions::sync(&self.client, &self.revisions, &self.pods, ds.as_ref(), &spec.template, &hash, limit)
            .await?;
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        // Per node: should it run the daemon, may a pod stay, and the active pods there.
        let mut per_node: BTreeMap<String, (bool, bool, Vec<(String, bool, bool)>)> = BTreeMap::new();
        let nodes = self.nodes.list();
        for n in &nodes {
            let (run, keep) = node_should_run(&spec.template, n);
            per_node.insert(n.metadata.name.clone().unwrap_or_default(), (run, keep, Vec::new()));
        }
        let mut failed: Vec<Arc<Pod>> = Vec::new();
        let mut by_name: HashMap<String, Arc<Pod>> = HashMap::new();
        for p in &owned {
            if pods::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none() {
                failed.push(p.clone());
                continue;
            }
            if !pods::is_active(p) {
                continue;
            }
            let Some(node) = pod_node(p) else { continue };
            let entry = per_node.entry(node).or_insert((false, false, Vec::new()));
            entry.2.push((
                p.metadata.name.clone().unwrap_or_default(),
                hash_of(p) == Some(hash.as_str()),
                is_available(p, min_ready, now),
            ));
            by_name.insert(p.metadata.name.clone().unwrap_or_default(), p.clone());
        }
        let strategy = spec.update_strategy.as_ref();
        let rolling = if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
            None
        } else {
            let ru = strategy.and_then(|s| s.rolling_update.as_ref());
            let desired = per_node.values().filter(|v| v.0).count() as i32;
            let unavailable = ru
                .and_then(|r| r.max_unavailable.as_ref())
                .map(|v| scaled_value(v, desired, true).unwrap_or(1))
                .unwrap_or(1);
            let surge =
                ru.and_then(|r| r.max_surge.as_ref()).map(|v| scaled_value(v, desired, true).unwrap_or(0)).unwrap_or(0);
            Some((if surge == 0 { unavailable.max(1) } else { unavailable }, surge))
        };
        if self.expectations.satisfied(key) {
            let plan = plan(&per_node, rolling);
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let mut victims: Vec<Arc<Pod>> = plan.delete.iter().filter_map(|n| by_name.get(n).cloned()).collect();
            // A failed daemon pod is deleted, and made again on the next sync.
            victims.extend(failed.iter().cloned());
            if !plan.create.is_empty() || !victims.is_empty() {
                self.expectations.expect(key, plan.create.len(), victims.iter().map(|p| key_of(p.as_ref())));
            }
            let mut template = spec.template.clone();
            template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default)
                .insert(REVISION_HASH_LABEL.into(), hash.clone());
            let mut failure = None;
            for node in &plan.create {
                match api.create(&PostParams::default(), &daemon_pod(&ds, &template, node)).await {
                    Ok(p) => self.recorder.record(
                        reference(ds.as_ref()),
                        false,
                        "Create",
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.metadata.name.as_deref().unwrap_or("")),
                    ),
                    Err(e) => {
                        self.expectations.creation_observed(key);
                        failure.get_or_insert(e);
                    }
                }
            }
            for pod in victims {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => self.recorder.record(
                        reference(ds.as_ref()),
                        false,
                        "Delete",
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        self.expectations.deletion_observed(key, &key_of(pod.as_ref()))
                    }
                    Err(e) => {
                        self.expectations.deletion_observed(key, &key_of(pod.as_ref()));
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
        // Status.
        let desired = per_node.values().filter(|v| v.0).count() as i32;
        let current = per_node.values().filter(|v| v.0 && !v.2.is_empty()).count() as i32;
        let misscheduled = per_node.values().filter(|v| !v.0 && !v.2.is_empty()).count() as i32;
        let ready = per_node
            .values()
            .filter(|v| v.0 && v.2.iter().any(|p| by_name.get(&p.0).is_some_and(|x| is_ready(x))))
            .count() as i32;
        let available = per_node.values().filter(|v| v.0 && v.2.iter().any(|p| p.2)).count() as i32;
        let updated = per_node.values().filter(|v| v.0 && v.2.iter().any(|p| p.1)).count() as i32;
        let count = |n: i32| super::omit_zero(Some(n));
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "observedGeneration": ds.metadata.generation,
            "updatedNumberScheduled": count(updated),
            "numberAvailable": count(available),
            "numberUnavailable": count(desired - available),
        });
        if super::status_differs(&status, &serde_json::to_value(ds.status.clone().unwrap_or_default())?) {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
            match api
                .patch_status(
                    ds.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if min_ready > 0 && ready != available {
            self.queue.add_after(key, Duration::from_secs(min_ready as u64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}))
            .unwrap()
    }

    fn template(extra: Value) -> PodTemplateSpec {
        let mut spec = json!({"containers": [{"name": "c", "image": "agent"}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"labels": {"app": "d"}}, "spec": spec})).unwrap()
    }

    #[test]
    fn nodes_run_the_daemon_by_selector_affinity_and_taints() {
        let plain = template(json!({}));
        let cases = [
            ("any node", node("n", json!({}), json!([])), plain.clone(), (true, true)),
            (
                "selector misses",
                node("n", json!({"disk": "hdd"}), json!([])),
                template(json!({"nodeSelector": {"disk": "ssd"}})),
                (false, false),
            ),
            (
                "selector hits",
                node("n", json!({"disk": "ssd"}), json!([])),
                template(json!({"nodeSelector": {"disk": "ssd"}})),
                (true, true),
            ),
            (
                "NoSchedule keeps new pods off only",
                node("n", json!({}), json!([{"key": "dedicated", "effect": "NoSchedule"}])),
                plain.clone(),
                (false, true),
            ),
            (
                "NoExecute keeps every pod off",
                node("n", json!({}), json!([{"key": "dedicated", "effect": "NoExecute"}])),
                plain.clone(),
                (false, false),
            ),
            (
                "cordoned and unreachable are tolerated",
                node(
                    "n",
                    json!({}),
                    json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
                ),
                plain.clone(),
                (true, true),
            ),
            (
                "an own toleration",
                node("n", json!({}), json!([{"key": "dedicated", "effect": "NoSchedule"}])),
                template(json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]})),
                (true, true),
            ),
        ];
        for (what, n, t, want) in cases {
            assert_eq!(node_should_run(&t, &n), want, "{what}");
        }
    }

    #[test]
    fn daemon_pods_are_bound_by_node_name_affinity() {
        let ds: DaemonSet = serde_json::from_value(
            json!({"metadata": {"name": "d", "namespace": "ns", "uid": "u"}, "spec": {"selector": {}, "template": {}}}),
        )
        .unwrap();
        let p = daemon_pod(&ds, &template(json!({})), "node-7");
        assert_eq!(pod_node(&p).as_deref(), Some("node-7"));
        assert!(p.spec.as_ref().unwrap().node_name.is_none(), "the scheduler binds it");
        assert!(p
            .spec
            .as_ref()
            .unwrap()
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")));
        assert_eq!(controller_of(&p.metadata).unwrap().uid, "u");
    }

    fn table(
        rows: &[(&str, bool, bool, &[(&str, bool, bool)])],
    ) -> BTreeMap<String, (bool, bool, Vec<(String, bool, bool)>)> {
        rows.iter()
            .map(|(n, run, keep, pods)| {
                (n.to_string(), (*run, *keep, pods.iter().map(|(p, c, a)| (p.to_string(), *c, *a)).collect()))
            })
            .collect()
    }

    #[test]
    fn plans_cover_nodes_and_roll_within_budgets() {
        // A node without a pod gets one; a node that should not run it loses its pod.
        let p = plan(
            &table(&[
                ("a", true, true, &[]),
                ("b", false, false, &[("pb", true, true)]),
                ("c", true, true, &[("pc", true, true)]),
            ]),
            Some((1, 0)),
        );
        assert_eq!(p, Plan { create: vec!["a".into()], delete: vec!["pb".into()] });
        // Rolling with maxUnavailable 1: one old available pod goes per step; an unavailable old
        // one goes regardless.
        let nodes = table(&[
            ("a", true, true, &[("pa", false, true)]),
            ("b", true, true, &[("pb", false, true)]),
            ("c", true, true, &[("pc", false, false)]),
        ]);
        assert_eq!(
            plan(&nodes, Some((1, 0))).delete,
            vec!["pc".to_string()],
            "c is unavailable already: the budget is spent"
        );
        let nodes = table(&[("a", true, true, &[("pa", false, true)]), ("b", true, true, &[("pb", false, true)])]);
        assert_eq!(plan(&nodes, Some((1, 0))).delete, vec!["pa".to_string()]);
        assert_eq!(plan(&nodes, Some((2, 0))).delete, vec!["pa".to_string(), "pb".to_string()]);
        // OnDelete: old pods stay.
        assert!(plan(&nodes, None).delete.is_empty());
        // maxSurge 1: a new pod starts beside an old one; once it is available, the old one goes.
        assert_eq!(plan(&nodes, Some((0, 1))).create, vec!["a".to_string()]);
        let surged = table(&[
            ("a", true, true, &[("pa", false, true), ("pa2", true, false)]),
            ("b", true, true, &[("pb", false, true)]),
        ]);
        assert!(plan(&surged, Some((0, 1))).create.is_empty(), "the surge is in use");
        let done = table(&[
            ("a", true, true, &[("pa", false, true), ("pa2", true, true)]),
            ("b", true, true, &[("pb", false, true)]),
        ]);
        let p = plan(&done, Some((0, 1)));
        assert_eq!((p.delete, p.create), (vec!["pa".to_string()], vec!["b".to_string()]));
    }
}
