//! The ReplicaSet controller (Kubernetes' `replicaset` controller): keeps `spec.replicas` active
//! pods matching a ReplicaSet's selector, adopting orphans that match and releasing owned pods
//! that no longer do; creates in slow-start batches and deletes the pods Kubernetes would rank
//! first (unscheduled, pending, not ready, crowded, recently ready, restarted, new); reports
//! replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (after `minReadySeconds`)
//! and the ReplicaFailure condition.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{json, Value};

use super::expectations::Expectations;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, controller_ref, is_active, is_available, is_ready};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::events::{reference, Recorder};
use crate::labels::Selector;

/// Pods created or deleted per sync at most (Kubernetes' BurstReplicas).
pub const BURST_REPLICAS: usize = 500;

/// What the controller keeps replicas of: ReplicaSets, and ReplicationControllers (core/v1,
/// whose selector is a plain map), read through a ReplicaSet view.
pub trait Replicated:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in `--controllers`, and its events' source.
    const CONTROLLER: &'static str;
    const COMPONENT: &'static str;
    fn informer(m: &Manager) -> Arc<Informer<Self>>;
    fn selector(&self) -> Selector;
    fn min_ready(&self) -> i32;
    /// The object as a ReplicaSet (the same fields, a map selector as matchLabels).
    fn view(&self) -> ReplicaSet;
}

impl Replicated for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset";
    const COMPONENT: &'static str = "replicaset-controller";
    fn informer(m: &Manager) -> Arc<Informer<Self>> {
        m.informers.replicasets()
    }
    fn selector(&self) -> Selector {
        selector(self)
    }
    fn min_ready(&self) -> i32 {
        min_ready_seconds(self)
    }
    fn view(&self) -> ReplicaSet {
        self.clone()
    }
}

impl Replicated for ReplicationController {
    const CONTROLLER: &'static str = "replicationcontroller";
    const COMPONENT: &'static str = "replication-controller";
    fn informer(m: &Manager) -> Arc<Informer<Self>> {
        m.informers.replicationcontrollers()
    }
    fn selector(&self) -> Selector {
        // An RC without a selector selects by its template's labels (defaulted so by the API).
        match self.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) {
            Some(m) => Selector::from_set(m),
            None => Selector::nothing(),
        }
    }
    fn min_ready(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn view(&self) -> ReplicaSet {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        let labels = v.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        if v["spec"].is_object() {
            v["spec"]["selector"] = json!({"matchLabels": labels});
        }
        v["apiVersion"] = json!("apps/v1");
        v["kind"] = json!("ReplicaSet");
        serde_json::from_value(v).unwrap_or_default()
    }
}

pub type ReplicaSetController = ReplicaController<ReplicaSet>;
pub type ReplicationControllerController = ReplicaController<ReplicationController>;

pub struct ReplicaController<K: Replicated> {
    client: kube::Client,
    sets: Arc<Informer<K>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    expectations: Expectations,
    recorder: Recorder,
}

fn owner_key<K: Replicated>(pod: &Pod, sets: &Informer<K>) -> Option<String> {
    let r = controller_of(&pod.metadata)?;
    if r.kind != K::kind(&()) {
        return None;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let rs = sets.get(ns, &r.name)?;
    (rs.meta().uid.as_deref() == Some(r.uid.as_str())).then(|| key_of(rs.as_ref()))
}

fn selector(rs: &ReplicaSet) -> Selector {
    rs.spec
        .as_ref()
        .map(|s| Selector::parse(&s.selector).unwrap_or_else(|_| Selector::nothing()))
        .unwrap_or_else(Selector::nothing)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
}

impl<K: Replicated> ReplicaController<K> {
    pub fn new(m: &Manager) -> Arc<ReplicaController<K>> {
        let c = Arc::new(ReplicaController {
            client: m.client.clone(),
            sets: K::informer(m),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            expectations: Expectations::default(),
            recorder: Recorder::start(m.client.clone(), K::COMPONENT, &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.sets.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            match change {
                Change::Added(rs) => c.queue.add(&key_of(rs.as_ref())),
                Change::Updated { old, new } => {
                    if old.meta().resource_version != new.meta().resource_version {
                        c.queue.add(&key_of(new.as_ref()));
                    }
                }
                Change::Deleted(rs) => {
                    let key = key_of(rs.as_ref());
                    c.expectations.delete(&key);
                    c.queue.add(&key);
                }
            }
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            if let Some(c) = weak.upgrade() {
                c.pod_changed(change);
            }
        });
        c
    }

    /// The sets whose selector matches an orphan pod's labels.
    fn matching_sets(&self, pod: &Pod) -> Vec<String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        self.sets
            .list_namespace(ns)
            .iter()
            .filter(|rs| rs.selector().matches(pods::labels(&pod.metadata)))
            .map(|rs| key_of(rs.as_ref()))
            .collect()
    }

    fn pod_changed(&self, change: &Change<'_, Pod>) {
        match change {
            Change::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return self.pod_gone(pod);
                }
                match owner_key(pod, &self.sets) {
                    Some(key) => {
                        self.expectations.creation_observed(&key);
                        self.queue.add(&key);
                    }
                    None if controller_of(&pod.metadata).is_none() => {
                        for key in self.matching_sets(pod) {
                            self.queue.add(&key);
                        }
                    }
                    None => {}
                }
            }
            Change::Updated { old, new } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                if new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none() {
                    // Being deleted counts as gone; its removal later is the same pod.
                    self.pod_gone(new);
                    if old.metadata.labels != new.metadata.labels {
                        if let Some(key) = owner_key(old, &self.sets) {
                            self.queue.add(&key);
                        }
                    }
                    return;
                }
                let (old_owner, new_owner) = (owner_key(old, &self.sets), owner_key(new, &self.sets));
                if old_owner != new_owner {
                    if let Some(key) = &old_owner {
                        self.queue.add(key);
                    }
                }
                match new_owner {
                    Some(key) => {
                        self.queue.add(&key);
                        // Ready now: available after minReadySeconds, which no event will say.
                        if !is_ready(old) && is_ready(new) {
                            if let Some(rs) = self.sets.get_key(&key) {
                                let min = rs.min_ready();
                                if min > 0 {
                                    self.queue.add_after(&key, Duration::from_secs(min as u64 + 1));
                                }
                            }
                        }
                    }
                    None if controller_of(&new.metadata).is_none()
                        && (old.metadata.labels != new.metadata.labels || controller_of(&old.metadata).is_some()) =>
                    {
                        for key in self.matching_sets(new) {
                            self.queue.add(&key);
                        }
                    }
                    None => {}
                }
            }
            Change::Deleted(pod) => self.pod_gone(pod),
        }
    }

    fn pod_gone(&self, pod: &Pod) {
        if let Some(key) = owner_key(pod, &self.sets) {
            self.expectations.deletion_observed(&key, &key_of(pod));
            self.queue.add(&key);
        }
    }

    async fn manage(&self, owner: &K, rs: &ReplicaSet, key: &str, active: &[Arc<Pod>]) -> anyhow::Result<()> {
        let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
        let ns = rs.metadata.namespace.as_deref().unwrap_or("");
        let name = rs.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        if active.len() < want {
            let n = (want - active.len()).min(BURST_REPLICAS);
            self.expectations.expect_creations(key, n);
            let Some(template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
                anyhow::bail!("the ReplicaSet has no pod template");
            };
            let pod = pods::pod_from_template(&template, ns, name, controller_ref(owner));
            let created = slow_start(n, |_| {
                let (api, pod) = (api.clone(), pod.clone());
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .await;
            let mut failure = None;
            for r in &created.results {
                match r {
                    Ok(p) => self.recorder.record(
                        reference(owner),
                        false,
                        "Create",
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.metadata.name.as_deref().unwrap_or("")),
                    ),
                    Err(e) => {
                        // A failed creation will never be observed.
                        self.expectations.creation_observed(key);
                        self.recorder.record(
                            reference(owner),
                            true,
                            "Create",
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            for _ in 0..created.skipped {
                self.expectations.creation_observed(key);
            }
            if let Some(e) = failure {
                anyhow::bail!(ManageError::Create(e));
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST_REPLICAS);
            let victims = pods_to_delete(active, n);
            self.expectations.expect_deletions(key, victims.iter().map(|p| key_of(p.as_ref())));
            let mut failure = None;
            for pod in victims {
                let pname = pod.metadata.name.clone().unwrap_or_default();
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                match api.delete(&pname, &dp).await {
                    Ok(_) => self.recorder.record(
                        reference(owner),
                        false,
                        "Delete",
                        "SuccessfulDelete",
                        format!("Deleted pod: {pname}"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        self.expectations.deletion_observed(key, &key_of(pod.as_ref()))
                    }
                    Err(e) => {
                        self.expectations.deletion_observed(key, &key_of(pod.as_ref()));
                        self.recorder.record(
                            reference(owner),
                            true,
                            "Delete",
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                        failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            if let Some(e) = failure {
                anyhow::bail!(ManageError::Delete(e));
            }
        }
        Ok(())
    }
}

/// Why managing replicas failed, for the ReplicaFailure condition.
#[derive(Debug)]
pub enum ManageError {
    Create(String),
    Delete(String),
}

impl std::fmt::Display for ManageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManageError::Create(m) => write!(f, "creating pods: {m}"),
            ManageError::Delete(m) => write!(f, "deleting pods: {m}"),
        }
    }
}

impl std::error::Error for ManageError {}

pub struct Batches<T> {
    pub results: Vec<Result<T, kube::Error>>,
    pub skipped: usize,
}

/// Runs `n` calls in batches of 1, 2, 4, … at once, stopping after a batch with a failure
/// (Kubernetes' slowStartBatch: a quota or a bad template fails one call, not hundreds).
pub async fn slow_start<T, F, Fut>(n: usize, call: F) -> Batches<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut results = Vec::with_capacity(n);
    let mut batch = 1usize;
    let mut done = 0usize;
    while done < n {
        let size = batch.min(n - done);
        let out = futures::future::join_all((done..done + size).map(&call)).await;
        let failed = out.iter().any(Result::is_err);
        results.extend(out);
        done += size;
        if failed {
            break;
        }
        batch *= 2;
    }
    Batches { results, skipped: n - done }
}

/// The `n` pods to delete first, as Kubernetes ranks them (ActivePodsWithRanks, its default
/// order): unassigned before assigned; Pending before Unknown before Running; not ready before
/// ready; a lower `controller.kubernetes.io/pod-deletion-cost` first; pods on nodes crowded with
/// this set's pods first; more recently ready first; more restarts first; newer first.
pub fn pods_to_delete(active: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in active {
        let n = node(p);
        if !n.is_empty() {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let phase_rank = |p: &Pod| match pods::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let cost = |p: &Pod| -> i64 {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let ready_at = |p: &Pod| pods::ready_since(p).flatten();
    let mut ranked: Vec<Arc<Pod>> = active.to_vec();
    ranked.sort_by(|a, b| {
        let (na, nb) = (node(a), node(b));
        if na.is_empty() != nb.is_empty() {
            return if na.is_empty() { Ordering::Less } else { Ordering::Greater };
        }
        phase_rank(a)
            .cmp(&phase_rank(b))
            .then_with(|| is_ready(a).cmp(&is_ready(b)))
            .then_with(|| cost(a).cmp(&cost(b)))
            .then_with(|| {
                let rank = |n: &str| per_node.get(n).copied().unwrap_or(0);
                rank(&nb).cmp(&rank(&na))
            })
            .then_with(|| if is_ready(a) && is_ready(b) { ready_at(b).cmp(&ready_at(a)) } else { Ordering::Equal })
            .then_with(|| restarts(b).cmp(&restarts(a)))
            .then_with(|| created(b).cmp(&created(a)))
    });
    ranked.truncate(n);
    ranked
}

/// The status the set has with `owned` pods (active or not) at `now` (Kubernetes'
/// calculateStatus): the ReplicaFailure condition is set by a failure to manage and cleared once
/// managing succeeds.
pub fn calculate_status(
    rs: &ReplicaSet,
    owned: &[Arc<Pod>],
    manage_error: Option<&ManageError>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = min_ready_seconds(rs);
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
    let fully_labeled = active
        .iter()
        .filter(|p| template_labels.iter().all(|(k, v)| pods::labels(&p.metadata).get(k) == Some(v)))
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active.iter().filter(|p| is_available(p, min_ready, now)).count();
    let mut conditions: Vec<ReplicaSetCondition> =
        rs.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    match manage_error {
        Some(e) => {
            let (reason, message) = match e {
                ManageError::Create(m) => ("FailedCreate", m),
                ManageError::Delete(m) => ("FailedDelete", m),
            };
            if !conditions.iter().any(|c| c.type_ == "ReplicaFailure") {
                conditions.push(ReplicaSetCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some(message.clone()),
                    last_transition_time: Some(Time(now)),
                });
            }
        }
        None => conditions.retain(|c| c.type_ != "ReplicaFailure"),
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

/// The status as a merge patch: zero counts and absent conditions removed, as Kubernetes leaves
/// them out.
pub fn status_patch(s: &ReplicaSetStatus) -> Value {
    let count = super::omit_zero;
    json!({"status": {
        "replicas": s.replicas,
        "fullyLabeledReplicas": count(s.fully_labeled_replicas),
        "readyReplicas": count(s.ready_replicas),
        "availableReplicas": count(s.available_replicas),
        "observedGeneration": s.observed_generation.filter(|g| *g != 0),
        "conditions": s.conditions,
    }})
}

/// Whether two statuses say the same (zero and absent counts alike).
pub fn same_status(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    status_patch(a) == status_patch(b)
}

impl<K: Replicated> Controller for ReplicaController<K> {
    const NAME: &'static str = K::CONTROLLER;

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(obj) = self.sets.get_key(key) else {
            self.expectations.delete(key);
            return Ok(());
        };
        let rs = obj.view();
        let needs_sync = self.expectations.satisfied(key) && rs.metadata.deletion_timestamp.is_none();
        let sel = obj.selector();
        let owned = pods::claim(&self.client, obj.as_ref(), &sel, &self.pods, is_active).await?;
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        let mut manage_error = None;
        if needs_sync {
            if let Err(e) = self.manage(&obj, &rs, key, &active).await {
                match e.downcast::<ManageError>() {
                    Ok(m) => manage_error = Some(m),
                    Err(e) => return Err(e),
                }
            }
        }
        let now = Timestamp::now();
        let status = calculate_status(&rs, &owned, manage_error.as_ref(), now);
        if !same_status(&status, &rs.status.clone().unwrap_or_default()) {
            let api: Api<K> = Api::namespaced(self.client.clone(), rs.metadata.namespace.as_deref().unwrap_or(""));
            match api
                .patch_status(
                    rs.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(&status_patch(&status)),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let min = obj.min_ready();
        if manage_error.is_none() && min > 0 && status.ready_replicas != status.available_replicas {
            self.queue.add_after(key, Duration::from_secs(min as u64));
        }
        match manage_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<i64>, restarts: i32, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: (!node.is_empty()).then(|| node.into()), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                container_statuses: Some(vec![ContainerStatus { restart_count: restarts, ..Default::default() }]),
                ..Default::default()
            }),
        })
    }

    fn names(p: &[Arc<Pod>]) -> Vec<&str> {
        p.iter().map(|p| p.metadata.name.as_deref().unwrap()).collect()
    }

    #[test]
    fn deletion_order_is_kubernetes_ranking() {
        let cases: Vec<(&str, Vec<Arc<Pod>>, Vec<&str>)> = vec![
            (
                "unassigned, then pending, then not ready, then ready",
                vec![
                    pod("ready", "n1", "Running", Some(10), 0, 1),
                    pod("running-unready", "n2", "Running", None, 0, 1),
                    pod("pending", "n3", "Pending", None, 0, 1),
                    pod("unassigned", "", "Pending", None, 0, 1),
                ],
                vec!["unassigned", "pending", "running-unready", "ready"],
            ),
            (
                "crowded nodes first",
                vec![
                    pod("alone", "n1", "Running", Some(10), 0, 1),
                    pod("crowd-a", "n2", "Running", Some(10), 0, 1),
                    pod("crowd-b", "n2", "Running", Some(10), 0, 2),
                ],
                vec!["crowd-b", "crowd-a", "alone"],
            ),
            (
                "recently ready, then restarts, then newer",
                vec![
                    pod("old-ready", "n1", "Running", Some(5), 0, 1),
                    pod("new-ready", "n2", "Running", Some(50), 0, 1),
                    pod("restarted", "n3", "Running", Some(5), 3, 1),
                    pod("newer", "n4", "Running", Some(5), 0, 9),
                ],
                vec!["new-ready", "restarted", "newer", "old-ready"],
            ),
        ];
        for (what, pods, want) in cases {
            assert_eq!(names(&pods_to_delete(&pods, pods.len())), want, "{what}");
            assert_eq!(names(&pods_to_delete(&pods, 1)), want[..1].to_vec(), "{what}: one");
        }
    }

    fn rs(min_ready: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 3},
            "spec": {"replicas": 3, "minReadySeconds": min_ready, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "front"}}, "spec": {"containers": []}}}
        }))
        .unwrap()
    }

    #[test]
    fn status_counts_ready_available_and_fully_labeled() {
        let now = Timestamp::from_second(100).unwrap();
        let mut labeled = (*pod("c", "n1", "Running", Some(95), 0, 1)).clone();
        labeled.metadata.labels.as_mut().unwrap().insert("tier".into(), "front".into());
        let mut gone = (*pod("d", "n1", "Running", Some(10), 0, 1)).clone();
        gone.metadata.deletion_timestamp = Some(Time(now));
        let owned = vec![
            pod("a", "n1", "Running", Some(10), 0, 1),
            pod("b", "n1", "Pending", None, 0, 1),
            Arc::new(labeled),
            Arc::new(gone),
        ];
        let cases = [(0, 2, 2), (10, 2, 1)];
        for (min_ready, ready, available) in cases {
            let s = calculate_status(&rs(min_ready), &owned, None, now);
            assert_eq!(s.replicas, 3, "terminating pods do not count");
            assert_eq!(s.fully_labeled_replicas, Some(1));
            assert_eq!(s.ready_replicas, Some(ready));
            assert_eq!(s.available_replicas, Some(available), "minReadySeconds {min_ready}");
            assert_eq!(s.observed_generation, Some(3));
            assert!(s.conditions.is_none());
        }
        let failed = calculate_status(&rs(0), &owned, Some(&ManageError::Create("quota".into())), now);
        let c = &failed.conditions.as_ref().unwrap()[0];
        assert_eq!((c.type_.as_str(), c.reason.as_deref()), ("ReplicaFailure", Some("FailedCreate")));
        let mut with_failure = rs(0);
        with_failure.status = Some(failed);
        assert!(
            calculate_status(&with_failure, &owned, None, now).conditions.is_none(),
            "cleared once managing succeeds"
        );
        // Zero counts read as absent ones.
        let zero = ReplicaSetStatus { replicas: 0, ready_replicas: Some(0), ..Default::default() };
        assert!(same_status(&zero, &ReplicaSetStatus::default()));
        assert_eq!(status_patch(&zero)["status"]["readyReplicas"], Value::Null);
    }

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_after_a_failing_one() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let out = slow_start(10, |i| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if i == 4 {
                    Err(kube::Error::Api(kube::core::Status::failure("quota", "Forbidden").with_code(403).boxed()))
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        // Batches 1, 2, 4 (the third holds call 4, which fails): 7 calls, 3 skipped.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
        assert_eq!(out.results.len(), 7);
        assert_eq!(out.skipped, 3);
        assert_eq!(out.results.iter().filter(|r| r.is_err()).count(), 1);
        let all = slow_start(5, |i| async move { Ok::<_, kube::Error>(i) }).await;
        assert_eq!((all.results.len(), all.skipped), (5, 0));
    }
}
