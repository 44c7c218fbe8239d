//! The scheduler's view of the cluster: every node with the pods that count against it. A pod
//! counts from the moment the scheduler chooses its node (*assumed*), before its binding is
//! written; the watch then confirms it, or a failed binding forgets it. Pods bound to a node the
//! cache does not know yet are kept aside until the node arrives.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::framework::{NodeInfo, PodInfo, Snapshot};

struct PodState {
    node: String,
    info: Arc<PodInfo>,
    /// Counted because the scheduler chose the node; not yet seen bound in the watch.
    assumed: bool,
}

#[derive(Default)]
pub struct Cache {
    nodes: Vec<Arc<NodeInfo>>,
    index: HashMap<String, usize>,
    pods: HashMap<String, PodState>,
    /// Pods on nodes not (or no longer) in `nodes`, by node name.
    homeless: HashMap<String, Vec<String>>,
    /// Pods nominated for a node by preemption and not yet bound: by node, and each pod's node.
    nominated: HashMap<String, Vec<Arc<PodInfo>>>,
    nominated_on: HashMap<String, String>,
    generation: u64,
    /// Nodes changed since the scheduling loop's snapshot was last brought up to date, by
    /// index; `reshaped` when nodes came or went (the snapshot is then copied whole).
    dirty: Vec<usize>,
    reshaped: bool,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let generation = self.bump();
        if let Some(&i) = self.index.get(&name) {
            self.mark(i);
            let info = Arc::make_mut(&mut self.nodes[i]);
            info.set_node(node);
            info.generation = generation;
            return;
        }
        let mut info = NodeInfo::new(node);
        for uid in self.homeless.remove(&name).unwrap_or_default() {
            if let Some(state) = self.pods.get(&uid) {
                info.add_pod(state.info.clone());
            }
        }
        info.generation = generation;
        self.index.insert(name, self.nodes.len());
        self.nodes.push(Arc::new(info));
        self.reshaped = true;
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        let info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        let uids: Vec<String> = info.pods.iter().map(|p| p.uid.clone()).collect();
        if !uids.is_empty() {
            self.homeless.insert(name.to_string(), uids);
        }
        self.bump();
        self.reshaped = true;
    }

    /// Node `i` changed. Past as many marks as there are nodes (no snapshot brought up to date
    /// for a while), the next update copies everything instead.
    fn mark(&mut self, i: usize) {
        if self.dirty.len() < self.nodes.len() {
            self.dirty.push(i);
        } else {
            self.reshaped = true;
        }
    }

    /// Applies `change` to the node and stamps it with a new generation; false when the node is
    /// not known.
    fn change_node(&mut self, name: &str, change: impl FnOnce(&mut NodeInfo)) -> bool {
        let Some(&i) = self.index.get(name) else { return false };
        let generation = self.bump();
        self.mark(i);
        let info = Arc::make_mut(&mut self.nodes[i]);
        change(info);
        info.generation = generation;
        true
    }

    fn place(&mut self, node: &str, info: Arc<PodInfo>) {
        if self.index.contains_key(node) {
            self.change_node(node, |n| n.add_pod(info));
        } else {
            self.homeless.entry(node.to_string()).or_default().push(info.uid.clone());
        }
    }

    fn unplace(&mut self, node: &str, uid: &str) {
        let on_node = self.change_node(node, |n| {
            n.remove_pod(uid);
        });
        if on_node {
            return;
        }
        if let Some(list) = self.homeless.get_mut(node) {
            list.retain(|u| u != uid);
            if list.is_empty() {
                self.homeless.remove(node);
            }
        }
    }

    /// Preemption freed room on `node` for the pod: it counts there for pods of no higher
    /// priority until it is bound or gone.
    pub fn nominate(&mut self, info: Arc<PodInfo>, node: &str) {
        self.unnominate(&info.uid);
        self.nominated_on.insert(info.uid.clone(), node.to_string());
        self.nominated.entry(node.to_string()).or_default().push(info);
    }

    pub fn unnominate(&mut self, uid: &str) {
        let Some(node) = self.nominated_on.remove(uid) else { return };
        if let Some(list) = self.nominated.get_mut(&node) {
            list.retain(|p| p.uid != uid);
            if list.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    /// The pods nominated for `node`.
    pub fn nominated_for(&self, node: &str) -> Vec<String> {
        self.nominated.get(node).map(|l| l.iter().map(|p| p.uid.clone()).collect()).unwrap_or_default()
    }

    /// The node a pod counts on (bound or assumed).
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).map(|s| s.node.as_str())
    }

    pub fn nominated_node(&self, uid: &str) -> Option<&str> {
        self.nominated_on.get(uid).map(String::as_str)
    }

    /// The scheduler chose `node` for the pod: it counts there from now on.
    pub fn assume(&mut self, info: Arc<PodInfo>, node: &str) {
        let uid = info.uid.clone();
        // Placed now: it counts on its node as assumed, no longer as nominated.
        self.unnominate(&uid);
        if let Some(old) = self.pods.remove(&uid) {
            self.unplace(&old.node, &uid);
        }
        self.place(node, info.clone());
        self.pods.insert(uid, PodState { node: node.to_string(), info, assumed: true });
    }

    /// The binding failed: the assumed pod no longer counts.
    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|s| s.assumed) {
            if let Some(old) = self.pods.remove(uid) {
                self.unplace(&old.node, uid);
            }
        }
    }

    /// A bound pod as the watch shows it (added or updated); confirms an assumed one.
    pub fn upsert_pod(&mut self, info: Arc<PodInfo>) {
        let Some(node) = info.node_name().map(str::to_string) else { return };
        let uid = info.uid.clone();
        self.unnominate(&uid);
        if let Some(old) = self.pods.remove(&uid) {
            self.unplace(&old.node, &uid);
        }
        self.place(&node, info.clone());
        self.pods.insert(uid, PodState { node, info, assumed: false });
    }

    /// A pod was deleted or finished.
    pub fn remove_pod(&mut self, uid: &str) {
        self.unnominate(uid);
        if let Some(old) = self.pods.remove(uid) {
            self.unplace(&old.node, uid);
        }
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|s| s.assumed)
    }

    /// The cluster as of now (nodes shared, copied on the next write).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { nodes: self.nodes.clone(), nominated: self.nominated.clone(), ..Default::default() }
    }

    /// Brings the scheduling loop's own snapshot up to date, copying only the nodes changed
    /// since its last update (as kube-scheduler's UpdateSnapshot does): a cycle then costs
    /// nothing per node that did not change. `snapshot` must be updated by this cache alone.
    pub fn update_snapshot(&mut self, snapshot: &mut Snapshot) {
        if self.reshaped || snapshot.nodes.len() != self.nodes.len() {
            snapshot.nodes.clone_from(&self.nodes);
        } else {
            for &i in &self.dirty {
                snapshot.nodes[i] = self.nodes[i].clone();
            }
        }
        self.dirty.clear();
        self.reshaped = false;
        if !(snapshot.nominated.is_empty() && self.nominated.is_empty()) {
            snapshot.nominated.clone_from(&self.nominated);
        }
    }

    pub fn node(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "4", "pods": "10"}}}),
            )
            .unwrap(),
        )
    }

    fn pod(uid: &str, node: Option<&str>, cpu: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "d", "uid": uid},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .unwrap(),
        )))
    }

    fn cpu(c: &Cache, n: &str) -> i64 {
        c.node(n).unwrap().requested.milli_cpu
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut c = Cache::new();
        c.upsert_node(node("n1"));
        c.upsert_node(node("n2"));
        c.assume(pod("a", None, "1"), "n1");
        assert_eq!(cpu(&c, "n1"), 1000);
        assert!(c.is_assumed("a"));
        // The watch shows it bound: confirmed, counted once.
        c.upsert_pod(pod("a", Some("n1"), "1"));
        assert!(!c.is_assumed("a"));
        assert_eq!(cpu(&c, "n1"), 1000);
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        // A failed binding forgets; a confirmed pod is not forgotten.
        c.assume(pod("b", None, "500m"), "n2");
        c.forget("b");
        c.forget("a");
        assert_eq!((cpu(&c, "n1"), cpu(&c, "n2")), (1000, 0));
        c.remove_pod("a");
        assert_eq!(cpu(&c, "n1"), 0);
    }

    #[test]
    fn snapshots_do_not_change_under_later_writes() {
        let mut c = Cache::new();
        c.upsert_node(node("n1"));
        let before = c.snapshot();
        c.assume(pod("a", None, "1"), "n1");
        assert_eq!(before.nodes[0].requested.milli_cpu, 0);
        assert_eq!(c.snapshot().nodes[0].requested.milli_cpu, 1000);
        assert!(c.snapshot().nodes[0].generation > before.nodes[0].generation);
    }

    /// The loop's snapshot, updated incrementally, always equals a fresh copy, and shares the
    /// nodes that did not change.
    #[test]
    fn updated_snapshots_equal_fresh_ones_and_copy_only_what_changed() {
        let same = |a: &Snapshot, b: &Snapshot| {
            a.nodes.len() == b.nodes.len()
                && a.nodes.iter().zip(&b.nodes).all(|(x, y)| {
                    x.name == y.name && x.generation == y.generation && x.requested.milli_cpu == y.requested.milli_cpu
                })
        };
        let mut c = Cache::new();
        let mut snap = Snapshot::default();
        for n in ["n1", "n2", "n3"] {
            c.upsert_node(node(n));
        }
        c.update_snapshot(&mut snap);
        assert!(same(&snap, &c.snapshot()));
        let before = snap.nodes.clone();
        c.assume(pod("a", None, "1"), "n2");
        c.update_snapshot(&mut snap);
        assert!(same(&snap, &c.snapshot()));
        assert_eq!(cpu(&c, "n2"), 1000);
        assert!(
            Arc::ptr_eq(&before[0], &snap.nodes[0]) && Arc::ptr_eq(&before[2], &snap.nodes[2]),
            "unchanged nodes are shared"
        );
        assert_eq!(before[1].requested.milli_cpu, 0, "an earlier snapshot does not change");
        c.upsert_pod(pod("b", Some("n3"), "2"));
        c.remove_node("n1");
        c.update_snapshot(&mut snap);
        assert!(same(&snap, &c.snapshot()));
        c.nominate(pod("p", None, "1"), "n3");
        c.update_snapshot(&mut snap);
        assert_eq!(snap.nominated.get("n3").map(Vec::len), Some(1));
        c.unnominate("p");
        c.update_snapshot(&mut snap);
        assert!(snap.nominated.is_empty());
        // Many changes with no update in between: the next update copies everything.
        for i in 0..10 {
            c.assume(pod(&format!("x{i}"), None, "1"), "n2");
        }
        c.update_snapshot(&mut snap);
        assert!(same(&snap, &c.snapshot()));
    }

    #[test]
    fn nominated_pods_count_for_pods_of_no_higher_priority_until_bound() {
        let mut c = Cache::new();
        c.upsert_node(node("n1"));
        let high = |uid: &str, priority: i32| {
            let mut p = (*pod(uid, None, "3")).clone();
            p.priority = priority;
            Arc::new(p)
        };
        c.nominate(high("h", 100), "n1");
        assert_eq!(c.nominated_node("h"), Some("n1"));
        let snap = c.snapshot();
        let n1 = &snap.nodes[0];
        // A lower-priority pod sees the nominated pod's 3 cpu; an equal one too; a higher one not.
        assert_eq!(n1.with_nominated(&high("low", 0), &snap).requested.milli_cpu, 3000);
        assert_eq!(n1.with_nominated(&high("peer", 100), &snap).requested.milli_cpu, 3000);
        assert_eq!(n1.with_nominated(&high("top", 1000), &snap).requested.milli_cpu, 0);
        // The nominated pod itself does not see itself twice.
        assert_eq!(n1.with_nominated(&high("h", 100), &snap).requested.milli_cpu, 0);
        // Bound: the nomination is over, and the pod counts once, as bound.
        c.upsert_pod(pod("h", Some("n1"), "3"));
        assert_eq!(c.nominated_node("h"), None);
        assert!(c.snapshot().nominated.is_empty());
        c.nominate(high("g", 5), "n1");
        c.remove_pod("g");
        assert!(c.snapshot().nominated.is_empty(), "a deleted pod's nomination goes with it");
    }

    #[test]
    fn pods_of_unknown_nodes_wait_for_their_node() {
        let mut c = Cache::new();
        c.upsert_pod(pod("a", Some("n9"), "2"));
        assert_eq!(c.node_count(), 0);
        c.upsert_node(node("n9"));
        assert_eq!(cpu(&c, "n9"), 2000);
        c.upsert_node(node("n8"));
        c.remove_node("n9");
        assert_eq!(c.snapshot().nodes.len(), 1);
        assert_eq!(c.node("n8").unwrap().name, "n8");
        c.upsert_node(node("n9"));
        assert_eq!(cpu(&c, "n9"), 2000, "a node that comes back finds its pods");
        // A pod moving between nodes (re-created with the same uid is not possible, but a
        // confirmed binding may differ from the assumption).
        c.assume(pod("b", None, "1"), "n8");
        c.upsert_pod(pod("b", Some("n9"), "1"));
        assert_eq!((cpu(&c, "n8"), cpu(&c, "n9")), (0, 3000));
    }
}
