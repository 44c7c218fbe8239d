//! The garbage collector (Kubernetes' `garbagecollector` controller): a graph of every object of
//! every served type that can be listed, watched and deleted (found through discovery, read as
//! metadata only, or from the manager's shared informers for the busiest types), linked by
//! ownerReferences. An object whose owners are all gone is deleted;
//! one with some owners gone loses those references. An owner deleted with
//! `propagationPolicy: Foreground` (the `foregroundDeletion` finalizer) has its dependents
//! deleted first and goes once none that blocks it (`blockOwnerDeletion`) is left; one deleted
//! with `Orphan` (the `orphan` finalizer) has its references removed from its dependents, which
//! stay. With `Background` the API removes the owner at once and the dependents follow here.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{Future, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher::{self, watcher};
use serde_json::json;

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager};

/// Retry of a watch or of discovery that failed.
const RETRY: Duration = Duration::from_secs(1);
/// Types never collected (as Kubernetes ignores them): events come and go on their own.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];
/// Types the graph learns from the manager's shared informers (see `new`), not its own watches.
const SHARED: &[(&str, &str)] = &[("", "pods"), ("apps", "replicasets"), ("apps", "deployments")];

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Clone, Debug, Default)]
struct Node {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    dependents: HashSet<String>,
    /// False for an owner known only from a dependent's reference (a *virtual* node).
    observed: bool,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
}

pub struct GarbageCollector {
    client: kube::Client,
    queue: WorkQueue,
    graph: Mutex<Graph>,
    /// Served types by (apiVersion, kind): how to reach them, and whether they are namespaced.
    kinds: RwLock<HashMap<(String, String), (ApiResource, bool)>>,
}

/// How an owner reference stands, as `attempt` finds it.
enum Owner {
    Solid,
    /// Being deleted in the foreground: waits for its dependents.
    Waiting,
    Dangling,
}

impl GarbageCollector {
    pub fn new(m: &Manager) -> Arc<GarbageCollector> {
        let gc = Arc::new(GarbageCollector {
            client: m.client.clone(),
            queue: WorkQueue::new(),
            graph: Mutex::default(),
            kinds: RwLock::default(),
        });
        // The busiest types come from the manager's informers rather than watches of their own,
        // so each of their changes crosses the API once for the whole manager.
        gc.share(&m.informers.pods());
        gc.share(&m.informers.replicasets());
        gc.share(&m.informers.deployments());
        gc
    }

    /// Feeds the graph from a shared informer of `K`.
    fn share<K: kube::Resource<DynamicType = ()> + Send + Sync + 'static>(self: &Arc<Self>, informer: &Informer<K>) {
        let ar = ApiResource::erase::<K>(&());
        let weak = Arc::downgrade(self);
        informer.on(move |change| {
            let Some(gc) = weak.upgrade() else { return };
            match change {
                Change::Added(o) | Change::Updated { new: o, .. } => gc.observe(&ar, o.meta()),
                Change::Deleted(o) => {
                    if let Some(uid) = o.meta().uid.as_deref() {
                        gc.forget(uid);
                    }
                }
            }
        });
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resource(&self, api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
        self.kinds.read().unwrap_or_else(|p| p.into_inner()).get(&(api_version.to_string(), kind.to_string())).cloned()
    }

    /// An object seen (added or changed).
    fn observe(&self, ar: &ApiResource, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.clone() else { return };
        let owners = meta.owner_references.clone().unwrap_or_default();
        let deleting = meta.deletion_timestamp.is_some();
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let mut g = self.graph();
        let old = g.nodes.get(&uid).cloned();
        let old_owners: Vec<OwnerReference> = old.as_ref().map(|n| n.owners.clone()).unwrap_or_default();
        let node = g.nodes.entry(uid.clone()).or_default();
        let newly_deleting = deleting && !node.deleting;
        *node = Node {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            owners: owners.clone(),
            dependents: std::mem::take(&mut node.dependents),
            observed: true,
            deleting,
            finalizers,
        };
        let namespace = node.namespace.clone();
        let gc_finalizer = node.deleting && (node.has_finalizer(FOREGROUND) || node.has_finalizer(ORPHAN));
        let mut wake: Vec<String> = Vec::new();
        for r in old_owners.iter().filter(|o| !owners.iter().any(|n| n.uid == o.uid)) {
            if let Some(owner) = g.nodes.get_mut(&r.uid) {
                owner.dependents.remove(&uid);
                if owner.deleting {
                    wake.push(r.uid.clone());
                }
            }
        }
        let mut changed_owners = old.is_none() && !owners.is_empty();
        for r in owners.iter().filter(|n| !old_owners.iter().any(|o| o.uid == n.uid)) {
            changed_owners = true;
            let owner = g.nodes.entry(r.uid.clone()).or_insert_with(|| Node {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                namespace: namespace.clone(),
                name: r.name.clone(),
                ..Default::default()
            });
            owner.dependents.insert(uid.clone());
            if !owner.observed {
                wake.push(r.uid.clone());
            }
        }
        // A dependent that changed may unblock an owner deleted in the foreground.
        for r in &owners {
            if g.nodes.get(&r.uid).is_some_and(|o| o.deleting && o.has_finalizer(FOREGROUND)) {
                wake.push(r.uid.clone());
            }
        }
        drop(g);
        if changed_owners || gc_finalizer || newly_deleting {
            self.queue.add(&uid);
        }
        for w in wake {
            self.queue.add(&w);
        }
    }

    /// An object gone.
    fn forget(&self, uid: &str) {
        let mut g = self.graph();
        let Some(node) = g.nodes.remove(uid) else { return };
        let mut wake: Vec<String> = node.dependents.iter().cloned().collect();
        for r in &node.owners {
            if let Some(owner) = g.nodes.get_mut(&r.uid) {
                owner.dependents.remove(uid);
                if !owner.observed && owner.dependents.is_empty() {
                    g.nodes.remove(&r.uid);
                } else if owner.deleting || !owner.observed {
                    wake.push(r.uid.clone());
                }
            }
        }
        // Dependents keep their (now dangling) references; a virtual node stands in for what
        // they name until they are dealt with.
        if !node.dependents.is_empty() {
            g.nodes.insert(uid.to_string(), Node { observed: false, owners: Vec::new(), ..node });
        }
        drop(g);
        for w in wake {
            self.queue.add(&w);
        }
    }

    /// Lists and watches one type's metadata, feeding the graph; `synced` once it has listed.
    async fn follow(self: Arc<Self>, ar: ApiResource, synced: tokio::sync::mpsc::Sender<()>) {
        // Metadata only: the graph needs nothing else.
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &ar);
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        let mut known: HashSet<String> = HashSet::new();
        let mut listing: HashSet<String> = HashSet::new();
        let mut told = false;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    tracing::warn!(error = %e, kind = %ar.kind, "garbage collector watch failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(o)) => {
                    if let Some(uid) = o.metadata.uid.clone() {
                        listing.insert(uid.clone());
                        known.insert(uid);
                    }
                    self.observe(&ar, &o.metadata);
                }
                Ok(watcher::Event::InitDone) => {
                    for gone in known.difference(&listing).cloned().collect::<Vec<_>>() {
                        known.remove(&gone);
                        self.forget(&gone);
                    }
                    if !told {
                        told = true;
                        let _ = synced.send(()).await;
                    }
                }
                Ok(watcher::Event::Apply(o)) => {
                    if let Some(uid) = o.metadata.uid.clone() {
                        known.insert(uid);
                    }
                    self.observe(&ar, &o.metadata);
                }
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(uid) = o.metadata.uid.as_deref() {
                        known.remove(uid);
                        self.forget(uid);
                    }
                }
            }
        }
    }

    /// The served types the collector follows (listable, watchable, deletable; not events).
    async fn discover(&self) -> Vec<ApiResource> {
        loop {
            match Discovery::new(self.client.clone()).run().await {
                Ok(d) => {
                    let mut kinds = HashMap::new();
                    let mut out = Vec::new();
                    for group in d.groups() {
                        for (ar, caps) in group.recommended_resources() {
                            let namespaced = matches!(caps.scope, Scope::Namespaced);
                            kinds.insert((ar.api_version.clone(), ar.kind.clone()), (ar.clone(), namespaced));
                            let ops = ["list", "watch", "delete"].iter().all(|v| caps.supports_operation(v));
                            let gp = (ar.group.as_str(), ar.plural.as_str());
                            if ops && !IGNORED.contains(&gp) && !SHARED.contains(&gp) {
                                out.push(ar);
                            }
                        }
                    }
                    *self.kinds.write().unwrap_or_else(|p| p.into_inner()) = kinds;
                    return out;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector discovery failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    fn api_for(&self, node: &Node) -> Option<Api<DynamicObject>> {
        let (ar, namespaced) = self.resource(&node.api_version, &node.kind)?;
        Some(if namespaced {
            Api::namespaced_with(self.client.clone(), &node.namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        })
    }

    /// Whether the object `node` names exists with `uid` (None: its type is not served, so it
    /// cannot be told).
    async fn exists(&self, node: &Node, uid: &str) -> anyhow::Result<Option<bool>> {
        let Some(api) = self.api_for(node) else { return Ok(None) };
        match api.get_metadata_opt(&node.name).await? {
            Some(o) => Ok(Some(o.metadata.uid.as_deref() == Some(uid))),
            None => Ok(Some(false)),
        }
    }

    async fn delete(&self, node: &Node, uid: &str, policy: PropagationPolicy) -> anyhow::Result<()> {
        let Some(api) = self.api_for(node) else { return Ok(()) };
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&node.name, &dp).await {
            Ok(_) => {
                tracing::debug!(kind = %node.kind, namespace = %node.namespace, name = %node.name, "garbage collected");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `node`'s metadata field `field` (conditioned on the version the graph has).
    async fn patch_meta(&self, node: &Node, field: &str, value: serde_json::Value) -> anyhow::Result<()> {
        let Some(api) = self.api_for(node) else { return Ok(()) };
        let patch = json!({"metadata": {field: value, "resourceVersion": node.resource_version}});
        match api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_owners(&self, node: &Node, gone: &HashSet<String>) -> anyhow::Result<()> {
        let kept: Vec<&OwnerReference> = node.owners.iter().filter(|r| !gone.contains(&r.uid)).collect();
        self.patch_meta(node, "ownerReferences", if kept.is_empty() { serde_json::Value::Null } else { json!(kept) })
            .await
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> anyhow::Result<()> {
        let kept: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        self.patch_meta(node, "finalizers", if kept.is_empty() { serde_json::Value::Null } else { json!(kept) }).await
    }

    /// An owner being deleted in the foreground: its dependents go first (in the foreground
    /// too); once none that blocks it is left, its finalizer goes.
    async fn foreground(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let dependents: Vec<(String, Node)> = {
            let g = self.graph();
            node.dependents.iter().filter_map(|d| g.nodes.get(d).map(|n| (d.clone(), n.clone()))).collect()
        };
        let mut blocking = 0;
        for (duid, dep) in &dependents {
            if !dep.observed {
                continue;
            }
            if dep.owners.iter().any(|r| r.uid == uid && r.block_owner_deletion == Some(true)) {
                blocking += 1;
            }
            if !dep.deleting {
                self.delete(dep, duid, PropagationPolicy::Foreground).await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(node, FOREGROUND).await?;
        }
        Ok(())
    }

    /// An owner deleted with the Orphan policy: its dependents lose their reference to it, then
    /// its finalizer goes.
    async fn orphan(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let dependents: Vec<Node> = {
            let g = self.graph();
            node.dependents.iter().filter_map(|d| g.nodes.get(d).cloned()).filter(|n| n.observed).collect()
        };
        let gone: HashSet<String> = [uid.to_string()].into();
        for dep in &dependents {
            self.remove_owners(dep, &gone).await?;
        }
        self.remove_finalizer(node, ORPHAN).await
    }

    /// Deletes an object whose owners are all gone, or removes the references to those gone
    /// (Kubernetes' attemptToDeleteItem).
    async fn attempt(&self, uid: &str, node: &Node) -> anyhow::Result<()> {
        let mut solid = 0;
        let (mut dangling, mut waiting) = (HashSet::new(), HashSet::new());
        for r in &node.owners {
            let seen = self.graph().nodes.get(&r.uid).cloned();
            let state = match seen {
                Some(o) if o.observed => {
                    if o.deleting && o.has_finalizer(FOREGROUND) {
                        Owner::Waiting
                    } else {
                        Owner::Solid
                    }
                }
                _ => {
                    let owner = Node {
                        api_version: r.api_version.clone(),
                        kind: r.kind.clone(),
                        namespace: node.namespace.clone(),
                        name: r.name.clone(),
                        ..Default::default()
                    };
                    match self.exists(&owner, &r.uid).await? {
                        Some(false) => Owner::Dangling,
                        // Not yet seen by the watch, or of a type this server does not serve.
                        _ => Owner::Solid,
                    }
                }
            };
            match state {
                Owner::Solid => solid += 1,
                Owner::Waiting => {
                    waiting.insert(r.uid.clone());
                }
                Owner::Dangling => {
                    dangling.insert(r.uid.clone());
                }
            }
        }
        if solid > 0 {
            if !dangling.is_empty() {
                self.remove_owners(node, &dangling).await?;
            }
            return Ok(());
        }
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let policy = if !waiting.is_empty() && !node.dependents.is_empty() || node.has_finalizer(FOREGROUND) {
            PropagationPolicy::Foreground
        } else if node.has_finalizer(ORPHAN) {
            PropagationPolicy::Orphan
        } else {
            PropagationPolicy::Background
        };
        self.delete(node, uid, policy).await
    }
}

impl Controller for GarbageCollector {
    const NAME: &'static str = "garbagecollector";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn start(
        self: Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let resources = self.discover().await;
            let count = resources.len();
            tracing::info!(types = count, "garbage collector follows every deletable type");
            let watches =
                futures::future::join_all(resources.into_iter().map(|ar| self.clone().follow(ar, tx.clone())));
            let counting = async move {
                for _ in 0..count {
                    if rx.recv().await.is_none() {
                        return;
                    }
                }
                let _ = done_tx.send(());
            };
            futures::future::join(watches, counting).await;
        });
        Some(Box::pin(async move {
            let _ = done_rx.await;
        }))
    }

    async fn sync(&self, uid: &str) -> anyhow::Result<()> {
        let Some(node) = self.graph().nodes.get(uid).cloned() else { return Ok(()) };
        if !node.observed {
            // Known only from references: if it does not exist, its dependents are orphans.
            if let Some(false) = self.exists(&node, uid).await? {
                let dependents: Vec<String> = node.dependents.iter().cloned().collect();
                self.graph().nodes.remove(uid);
                for d in dependents {
                    self.queue.add(&d);
                }
            }
            return Ok(());
        }
        if node.deleting {
            if node.has_finalizer(ORPHAN) {
                return self.orphan(uid, &node).await;
            }
            if node.has_finalizer(FOREGROUND) {
                return self.foreground(uid, &node).await;
            }
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        self.attempt(uid, &node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, uid: &str, owners: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            owner_references: (!owners.is_empty()).then(|| {
                owners
                    .iter()
                    .map(|o| OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: format!("d-{o}"),
                        uid: o.to_string(),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }
    }

    async fn drain(q: &WorkQueue) -> Vec<String> {
        let mut out = Vec::new();
        while !q.is_empty() {
            let k = q.get().await.unwrap();
            q.done(&k);
            out.push(k);
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn the_graph_links_dependents_to_owners_seen_or_not() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let m = Manager { client, identity: "test".into(), informers: super::super::Informers::default() };
        let gc = GarbageCollector::new(&m);
        let rs = ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&());
        let deploy = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
        // A dependent first: its owner is known only by reference, and both are looked at.
        gc.observe(&rs, &meta("r", "R", &["D"]));
        assert!(!gc.graph().nodes["D"].observed);
        assert_eq!(drain(&gc.queue).await, vec!["D", "R"]);
        gc.observe(&deploy, &meta("d-D", "D", &[]));
        assert!(gc.graph().nodes["D"].observed);
        assert!(gc.graph().nodes["D"].dependents.contains("R"));
        // Unchanged owners: nothing to look at.
        gc.observe(&rs, &meta("r", "R", &["D"]));
        assert!(drain(&gc.queue).await.is_empty());
        // The owner goes: its dependent is looked at, and a virtual node stands for the owner.
        gc.forget("D");
        assert_eq!(drain(&gc.queue).await, vec!["R"]);
        assert!(!gc.graph().nodes["D"].observed);
        // The dependent goes too: nothing is left.
        gc.forget("R");
        assert!(gc.graph().nodes.is_empty(), "{:?}", gc.graph().nodes.keys().collect::<Vec<_>>());
        // Foreground deletion: the owner is looked at whenever a dependent changes.
        gc.observe(
            &deploy,
            &ObjectMeta {
                finalizers: Some(vec![FOREGROUND.into()]),
                deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )),
                ..meta("d-E", "E", &[])
            },
        );
        gc.observe(&rs, &meta("r2", "R2", &["E"]));
        assert_eq!(drain(&gc.queue).await, vec!["E", "R2"]);
    }
}
