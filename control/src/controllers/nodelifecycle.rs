//! Node lifecycle (Kubernetes' `nodelifecycle` and `taint-eviction-controller`): a node whose
//! agent has not renewed its Lease nor reported its status within `--node-monitor-grace-period`
//! (as this replica's own clock sees the renewals arrive, never comparing clocks) gets its
//! conditions set to Unknown and its pods marked not ready; nodes carry the taints their state
//! implies (`node.kubernetes.io/not-ready`, `unreachable` — NoSchedule and NoExecute — and
//! `unschedulable` for a cordoned node); and a pod on a node with a NoExecute taint it does not
//! tolerate is evicted at once, or when its `tolerationSeconds` run out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::time::Instant;

use super::informer::{key_of, Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager, Synced};
use crate::events::{reference, Recorder};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often every node's health is looked at.
pub const NODE_MONITOR_PERIOD: Duration = Duration::from_secs(1);

/// When this replica last saw a node's agent show signs of life.
struct Probe {
    renew_time: Option<String>,
    heartbeat: Option<String>,
    changed_at: Instant,
}

pub struct NodeLifecycleController {
    client: kube::Client,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<Lease>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    probes: Mutex<HashMap<String, Probe>>,
    grace: Duration,
    recorder: Recorder,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

fn heartbeat(node: &Node) -> Option<String> {
    ready_condition(node).and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0.to_string())
}

/// The taints a node's state implies: its Ready condition's, and a cordon's.
pub fn implied_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("False") => out.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
        Some("Unknown") | None => out.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
        _ => {}
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push((UNSCHEDULABLE, "NoSchedule"));
    }
    out
}

/// The node's taints with those it implies: others kept as they are, implied ones kept (with
/// their timeAdded) or added, managed ones no longer implied removed. None if nothing changes.
pub fn reconcile_taints(node: &Node, now: Timestamp) -> Option<Vec<Taint>> {
    let managed = [NOT_READY, UNREACHABLE, UNSCHEDULABLE];
    let want = implied_taints(node);
    let current: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !managed.contains(&t.key.as_str()) || want.iter().any(|(k, e)| *k == t.key && *e == t.effect))
        .cloned()
        .collect();
    for (k, e) in &want {
        if !out.iter().any(|t| t.key == *k && t.effect == *e) {
            out.push(Taint { key: k.to_string(), effect: e.to_string(), time_added: Some(Time(now)), value: None });
        }
    }
    (out != current).then_some(out)
}

/// When a pod on a node with `taints` is to be evicted: None if never (no NoExecute taint it
/// does not tolerate for ever), Some(zero) if now, or after how long.
pub fn eviction_after(taints: &[Taint], tolerations: &[Toleration], now: Timestamp) -> Option<Duration> {
    let mut soonest: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| crate::scheduler::plugins::taint_toleration::tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Tolerated for the shortest of the matching tolerations' times; for ever if one has none.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0);
        let added = taint.time_added.as_ref().map(|t| t.0.as_second()).unwrap_or(now.as_second());
        let left = (added + seconds - now.as_second()).max(0) as u64;
        let left = Duration::from_secs(left);
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    soonest
}

impl NodeLifecycleController {
    pub fn new(m: &Manager, grace: Duration) -> Arc<NodeLifecycleController> {
        let c = Arc::new(NodeLifecycleController {
            client: m.client.clone(),
            nodes: m.informers.nodes(),
            leases: m.informers.leases(),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            probes: Mutex::default(),
            grace,
            recorder: Recorder::start(m.client.clone(), "node-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.nodes.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            match change {
                Change::Added(n) | Change::Updated { new: n, .. } => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    c.saw(&name, None, Some(heartbeat(n)));
                    c.queue.add(&name);
                }
                Change::Deleted(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    c.lock().remove(&name);
                }
            }
        });
        let weak = Arc::downgrade(&c);
        c.leases.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(l) | Change::Updated { new: l, .. } = change {
                if l.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE) {
                    let renew = l.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string());
                    c.saw(l.metadata.name.as_deref().unwrap_or(""), Some(renew), None);
                }
            }
        });
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Probe>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a renewal or a heartbeat if it differs from the last one seen.
    fn saw(&self, node: &str, renew: Option<Option<String>>, beat: Option<Option<String>>) {
        let now = Instant::now();
        let mut probes = self.lock();
        let p = probes.entry(node.to_string()).or_insert_with(|| Probe {
            renew_time: None,
            heartbeat: None,
            changed_at: now,
        });
        if let Some(r) = renew {
            if r != p.renew_time {
                p.renew_time = r;
                p.changed_at = now;
            }
        }
        if let Some(b) = beat {
            if b != p.heartbeat {
                p.heartbeat = b;
                p.changed_at = now;
            }
        }
    }

    /// Sets every condition of a silent node to Unknown, and marks its pods not ready.
    async fn mark_unknown(&self, node: &Node, now: Timestamp) -> anyhow::Result<()> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut conditions: Vec<NodeCondition> =
            node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        if conditions.iter().all(|c| c.type_ != "Ready") {
            conditions.push(NodeCondition { type_: "Ready".into(), ..Default::default() });
        }
        for c in &mut conditions {
            if c.status != "Unknown" {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
            }
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"conditions": conditions}})))
            .await?;
        self.recorder.record(
            reference(node),
            false,
            "NodeNotReady",
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        for pod in self.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str()) {
                continue;
            }
            let mut conds = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            let Some(ready) = conds.iter_mut().find(|c| c.type_ == "Ready" && c.status == "True") else { continue };
            ready.status = "False".into();
            ready.last_transition_time = Some(Time(now));
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or(""));
            let patch = json!({"status": {"conditions": conds}});
            match pods
                .patch_status(
                    pod.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Controller for NodeLifecycleController {
    const NAME: &'static str = "nodelifecycle";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    /// Looks at every node once per monitor period.
    fn start(self: Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) -> Option<Synced> {
        let weak = Arc::downgrade(&self);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(NODE_MONITOR_PERIOD);
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { return };
                for n in c.nodes.list() {
                    c.queue.add(n.metadata.name.as_deref().unwrap_or(""));
                }
            }
        });
        None
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get("", name) else { return Ok(()) };
        let now = Timestamp::now();
        let silent = {
            let mut probes = self.lock();
            let p = probes.entry(name.to_string()).or_insert_with(|| Probe {
                renew_time: None,
                heartbeat: heartbeat(&node),
                changed_at: Instant::now(),
            });
            p.changed_at.elapsed() > self.grace
        };
        if silent && ready_condition(&node).is_none_or(|c| c.status != "Unknown") {
            tracing::info!(node = name, grace = ?self.grace, "node stopped renewing its lease; marking it unknown");
            // The taints follow once the watch brings the node as written.
            return self.mark_unknown(&node, now).await;
        }
        if let Some(taints) = reconcile_taints(&node, now) {
            let api: Api<Node> = Api::all(self.client.clone());
            let patch =
                json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Evicts pods from nodes with NoExecute taints they do not tolerate (or no longer do).
pub struct TaintEvictionController {
    client: kube::Client,
    nodes: Arc<Informer<Node>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    recorder: Recorder,
}

fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect()
}

impl TaintEvictionController {
    pub fn new(m: &Manager) -> Arc<TaintEvictionController> {
        let c = Arc::new(TaintEvictionController {
            client: m.client.clone(),
            nodes: m.informers.nodes(),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            recorder: Recorder::start(m.client.clone(), "taint-eviction-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.nodes.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(n) | Change::Updated { new: n, .. } = change {
                if let Change::Updated { old, .. } = change {
                    if no_execute(old) == no_execute(n) {
                        return;
                    }
                }
                if no_execute(n).is_empty() {
                    return;
                }
                let name = n.metadata.name.as_deref().unwrap_or("");
                for p in c.pods.list() {
                    if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name) {
                        c.queue.add(&key_of(p.as_ref()));
                    }
                }
            }
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(p) | Change::Updated { new: p, .. } = change {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    && p.metadata.deletion_timestamp.is_none()
                {
                    c.queue.add(&key_of(p.as_ref()));
                }
            }
        });
        c
    }
}

impl Controller for TaintEvictionController {
    const NAME: &'static str = "taint-eviction-controller";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(pod) = self.pods.get_key(key) else { return Ok(()) };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| self.nodes.get("", n))
        else {
            return Ok(());
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        match eviction_after(&no_execute(&node), &tolerations, Timestamp::now()) {
            None => Ok(()),
            Some(wait) if !wait.is_zero() => {
                self.queue.add_after(key, wait);
                Ok(())
            }
            Some(_) => {
                let (ns, name) =
                    (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
                self.recorder.record(
                    reference(pod.as_ref()),
                    false,
                    "TaintManagerEviction",
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{name}"),
                );
                let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                match api.delete(name, &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: Option<&str>, unschedulable: bool, taints: serde_json::Value) -> Node {
        let conditions = ready.map(|s| json!([{"type": "Ready", "status": s}])).unwrap_or(json!([]));
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"unschedulable": unschedulable, "taints": taints}, "status": {"conditions": conditions}})).unwrap()
    }

    fn keys(t: &[Taint]) -> Vec<String> {
        t.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect()
    }

    #[test]
    fn taints_follow_readiness_and_cordons() {
        let now = Timestamp::from_second(1000).unwrap();
        let cases = [
            (Some("True"), false, json!([]), None),
            (
                Some("Unknown"),
                false,
                json!([]),
                Some(vec!["node.kubernetes.io/unreachable:NoSchedule", "node.kubernetes.io/unreachable:NoExecute"]),
            ),
            (
                Some("False"),
                true,
                json!([]),
                Some(vec![
                    "node.kubernetes.io/not-ready:NoSchedule",
                    "node.kubernetes.io/not-ready:NoExecute",
                    "node.kubernetes.io/unschedulable:NoSchedule",
                ]),
            ),
            // Ready again: the managed taints go, a user's stays.
            (
                Some("True"),
                false,
                json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}, {"key": UNREACHABLE, "effect": "NoExecute"}]),
                Some(vec!["dedicated:NoSchedule"]),
            ),
        ];
        for (ready, cordoned, taints, want) in cases {
            let got = reconcile_taints(&node(ready, cordoned, taints.clone()), now);
            assert_eq!(
                got.as_deref().map(keys),
                want.map(|w| w.into_iter().map(String::from).collect()),
                "{ready:?} {cordoned} {taints}"
            );
        }
        // Kept taints keep the time they were added.
        let kept = node(
            Some("Unknown"),
            false,
            json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}]),
        );
        let t = reconcile_taints(&kept, now).unwrap();
        assert_eq!(
            t.iter().find(|t| t.effect == "NoExecute").unwrap().time_added.as_ref().unwrap().0.to_string(),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn eviction_waits_for_the_shortest_matching_toleration() {
        let now = Timestamp::from_second(1000).unwrap();
        let taint = |added: i64| Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(Timestamp::from_second(added).unwrap())),
        };
        let tol = |secs: Option<i64>| Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        };
        assert_eq!(eviction_after(&[taint(990)], &[], now), Some(Duration::ZERO), "untolerated: at once");
        assert_eq!(eviction_after(&[taint(990)], &[tol(Some(300))], now), Some(Duration::from_secs(290)));
        assert_eq!(
            eviction_after(&[taint(990)], &[tol(Some(300)), tol(Some(5))], now),
            Some(Duration::ZERO),
            "5 s after 990 is past"
        );
        assert_eq!(eviction_after(&[taint(990)], &[tol(None)], now), None, "tolerated for ever");
        let no_schedule = Taint { effect: "NoSchedule".into(), ..taint(990) };
        assert_eq!(eviction_after(&[no_schedule], &[], now), None, "NoSchedule evicts nothing");
    }
}
