//! Shared informers: one list+watch per resource type for the whole controller manager, a cache
//! of what it last saw, and handlers that every controller registers before the informers start.
//! Handlers run on the informer's task and must only look and enqueue keys.
//!
//! After a relist (a watch that broke and could not resume), objects the new list lacks are
//! reported deleted and changed ones updated, so handlers see every transition once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Retry of a watch that failed.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// What a handler is told.
pub enum Change<'a, K> {
    Added(&'a Arc<K>),
    Updated { old: &'a Arc<K>, new: &'a Arc<K> },
    Deleted(&'a Arc<K>),
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;

/// Objects by namespace ("" for cluster-scoped ones) and name.
type Objects<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

/// The cache with its indexes: who controls what, so that a controller's sync looks at its own
/// objects and the orphans it might adopt rather than at every object of the namespace.
struct Cache<K> {
    objects: Objects<K>,
    /// (namespace, name) by the uid of the object's controller.
    controlled: HashMap<String, BTreeSet<(String, String)>>,
    /// Names of objects without a controller, by namespace.
    orphans: HashMap<String, BTreeSet<String>>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache { objects: HashMap::new(), controlled: HashMap::new(), orphans: HashMap::new() }
    }
}

fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| r.uid.as_str())
}

impl<K: Resource> Cache<K> {
    fn index(&mut self, ns: &str, name: &str, obj: &K) {
        match controller_uid(obj) {
            Some(uid) => self.controlled.entry(uid.to_string()).or_default().insert((ns.to_string(), name.to_string())),
            None => self.orphans.entry(ns.to_string()).or_default().insert(name.to_string()),
        };
    }

    fn unindex(&mut self, ns: &str, name: &str, obj: &K) {
        match controller_uid(obj) {
            Some(uid) => {
                if let Some(set) = self.controlled.get_mut(uid) {
                    set.remove(&(ns.to_string(), name.to_string()));
                    if set.is_empty() {
                        self.controlled.remove(uid);
                    }
                }
            }
            None => {
                if let Some(set) = self.orphans.get_mut(ns) {
                    set.remove(name);
                    if set.is_empty() {
                        self.orphans.remove(ns);
                    }
                }
            }
        }
    }

    fn insert(&mut self, ns: String, name: String, obj: Arc<K>) -> Option<Arc<K>> {
        if let Some(o) = self.objects.get(&ns).and_then(|m| m.get(&name)).cloned() {
            self.unindex(&ns, &name, &o);
        }
        self.index(&ns, &name, &obj);
        self.objects.entry(ns).or_default().insert(name, obj)
    }

    fn remove(&mut self, ns: &str, name: &str) -> Option<Arc<K>> {
        let old = self.objects.get_mut(ns).and_then(|m| m.remove(name));
        if self.objects.get(ns).is_some_and(BTreeMap::is_empty) {
            self.objects.remove(ns);
        }
        if let Some(o) = &old {
            self.unindex(ns, name, o);
        }
        old
    }
}

pub struct Informer<K> {
    what: &'static str,
    objects: RwLock<Cache<K>>,
    handlers: Mutex<Vec<Handler<K>>>,
    synced_tx: watch::Sender<bool>,
}

fn ns_name<K: Resource>(obj: &K) -> (String, String) {
    let m = obj.meta();
    (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
}

/// `namespace/name` (or `name`), the key controllers queue.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let (ns, name) = ns_name(obj);
    if ns.is_empty() {
        name
    } else {
        format!("{ns}/{name}")
    }
}

/// A key split into namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

impl<K: Resource + Send + Sync + 'static> Informer<K> {
    pub fn new(what: &'static str) -> Arc<Informer<K>> {
        let (synced_tx, _) = watch::channel(false);
        Arc::new(Informer { what, objects: RwLock::new(Cache::default()), handlers: Mutex::new(Vec::new()), synced_tx })
    }

    /// Adds a handler (before `run`, so that it sees the first list).
    pub fn on(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.handlers.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(handler));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<K>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache<K>> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().objects.get(namespace).and_then(|m| m.get(name)).cloned()
    }

    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        let (ns, name) = split_key(key);
        self.get(ns, name)
    }

    /// Every cached object of `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read().objects.get(namespace).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// What `pods::claim` must look at for an owner: the objects of `namespace` it controls
    /// (`uid`) and those no one controls. Objects other owners control are never its business.
    pub fn claimable(&self, namespace: &str, uid: &str) -> Vec<Arc<K>> {
        let cache = self.read();
        let Some(objects) = cache.objects.get(namespace) else { return Vec::new() };
        let controlled =
            cache.controlled.get(uid).into_iter().flatten().filter(|(ns, _)| ns == namespace).map(|(_, name)| name);
        let orphans = cache.orphans.get(namespace).into_iter().flatten();
        controlled.chain(orphans).filter_map(|name| objects.get(name).cloned()).collect()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().flat_map(|m| m.values().cloned()).collect()
    }

    /// Whether the first list has been seen.
    pub fn has_synced(&self) -> bool {
        *self.synced_tx.borrow()
    }

    /// Resolves once the first list has been seen.
    pub async fn synced(&self) {
        let mut rx = self.synced_tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn tell(&self, change: Change<'_, K>) {
        for h in self.handlers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h(&change);
        }
    }

    fn apply(&self, obj: K) {
        let (ns, name) = ns_name(&obj);
        let new = Arc::new(obj);
        let old = self.write().insert(ns, name, new.clone());
        match old {
            Some(old) => self.tell(Change::Updated { old: &old, new: &new }),
            None => self.tell(Change::Added(&new)),
        }
    }

    fn delete(&self, obj: K) {
        let (ns, name) = ns_name(&obj);
        let old = self.write().remove(&ns, &name);
        // The final state as the watch reported it.
        let last = Arc::new(obj);
        if old.is_some() {
            self.tell(Change::Deleted(&last));
        }
    }

    /// A complete list replaces the cache: what it lacks is deleted, the rest added or updated.
    fn replace(&self, listed: Vec<K>) {
        let mut cache = Cache::default();
        for obj in listed {
            let (ns, name) = ns_name(&obj);
            cache.insert(ns, name, Arc::new(obj));
        }
        let fresh = cache.objects.clone();
        let old = std::mem::replace(&mut *self.write(), cache).objects;
        for (ns, objs) in &old {
            for (name, o) in objs {
                if fresh.get(ns).and_then(|m| m.get(name)).is_none() {
                    self.tell(Change::Deleted(o));
                }
            }
        }
        for (ns, objs) in &fresh {
            for (name, n) in objs {
                match old.get(ns).and_then(|m| m.get(name)) {
                    Some(o) if o.meta().resource_version == n.meta().resource_version => {}
                    Some(o) => self.tell(Change::Updated { old: o, new: n }),
                    None => self.tell(Change::Added(n)),
                }
            }
        }
        self.synced_tx.send_replace(true);
    }

    /// Lists and watches `api` (decoded as `W`, kept as `K`) until the task is dropped.
    pub async fn run<W>(self: Arc<Self>, api: Api<W>, config: watcher::Config, into: fn(W) -> K)
    where
        W: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let stream = watcher(api, config);
        let mut stream = std::pin::pin!(stream);
        let mut listing: Vec<K> = Vec::new();
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    tracing::warn!(error = %e, what = self.what, "watch failed; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(obj)) => listing.push(into(obj)),
                Ok(watcher::Event::InitDone) => self.replace(std::mem::take(&mut listing)),
                Ok(watcher::Event::Apply(obj)) => self.apply(into(obj)),
                Ok(watcher::Event::Delete(obj)) => self.delete(into(obj)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(ns: &str, name: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn handlers_see_each_transition_once_also_across_a_relist() {
        let inf = Informer::<ConfigMap>::new("configmaps");
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        inf.on(move |c| {
            let line = match c {
                Change::Added(o) => format!("add {}", key_of(o.as_ref())),
                Change::Updated { old, new } => format!(
                    "update {} {}->{}",
                    key_of(new.as_ref()),
                    old.metadata.resource_version.as_deref().unwrap(),
                    new.metadata.resource_version.as_deref().unwrap()
                ),
                Change::Deleted(o) => format!("delete {}", key_of(o.as_ref())),
            };
            s.lock().unwrap().push(line);
        });
        assert!(!inf.has_synced());
        inf.replace(vec![cm("a", "x", "1"), cm("a", "y", "1")]);
        assert!(inf.has_synced());
        inf.apply(cm("a", "x", "2"));
        inf.apply(cm("b", "z", "3"));
        inf.delete(cm("a", "y", "4"));
        // Deleting what is not cached tells no one.
        inf.delete(cm("a", "nope", "4"));
        // A relist: x unchanged, z changed, w new, and nothing else.
        inf.replace(vec![cm("a", "x", "2"), cm("b", "z", "5"), cm("b", "w", "5")]);
        inf.replace(vec![cm("b", "w", "5")]);
        let mut got = seen.lock().unwrap().clone();
        // Within one list, namespaces come in no set order.
        got[..2].sort();
        got[7..].sort();
        assert_eq!(
            got,
            vec![
                "add a/x",
                "add a/y",
                "update a/x 1->2",
                "add b/z",
                "delete a/y",
                "add b/w",
                "update b/z 3->5",
                "delete a/x",
                "delete b/z"
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
        );
        assert_eq!(inf.list().len(), 1);
        assert!(inf.get("b", "w").is_some());
        assert!(inf.list_namespace("a").is_empty());
        assert_eq!(split_key("b/w"), ("b", "w"));
        assert_eq!(split_key("node-1"), ("", "node-1"));
    }

    fn owned(ns: &str, name: &str, rv: &str, owner: Option<&str>) -> ConfigMap {
        let mut c = cm(ns, name, rv);
        c.metadata.owner_references = owner.map(|uid| {
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]
        });
        c
    }

    #[test]
    fn claimable_objects_are_the_owners_own_and_the_orphans() {
        let inf = Informer::<ConfigMap>::new("configmaps");
        let names = |v: Vec<Arc<ConfigMap>>| {
            let mut n: Vec<String> = v.iter().map(|o| o.metadata.name.clone().unwrap()).collect();
            n.sort();
            n
        };
        inf.replace(vec![
            owned("a", "p1", "1", Some("u1")),
            owned("a", "p2", "1", Some("u2")),
            owned("a", "o1", "1", None),
            owned("b", "o2", "1", None),
        ]);
        assert_eq!(names(inf.claimable("a", "u1")), ["o1", "p1"]);
        assert_eq!(names(inf.claimable("a", "u3")), ["o1"]);
        // Adopted, released, moved and deleted: the index follows.
        inf.apply(owned("a", "o1", "2", Some("u1")));
        inf.apply(owned("a", "p2", "2", None));
        assert_eq!(names(inf.claimable("a", "u1")), ["o1", "p1", "p2"]);
        assert_eq!(names(inf.claimable("a", "u2")), ["p2"]);
        inf.delete(owned("a", "p1", "3", Some("u1")));
        assert_eq!(names(inf.claimable("a", "u1")), ["o1", "p2"]);
        // An owner's uid in another namespace finds nothing there.
        assert_eq!(names(inf.claimable("b", "u1")), ["o2"]);
        inf.replace(vec![owned("a", "o1", "2", Some("u1"))]);
        assert_eq!(names(inf.claimable("a", "u1")), ["o1"]);
        assert!(inf.claimable("b", "u1").is_empty());
    }
}
