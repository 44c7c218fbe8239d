//! Shared informers: one list+watch per resource type for the whole controller manager, a cache
//! of what it last saw, and handlers that every controller registers before the informers start.
//! Handlers run on the informer's task and must only look and enqueue keys.
//!
//! After a relist (a watch that broke and could not resume), objects the new list lacks are
//! reported deleted and changed ones updated, so handlers see every transition once.

use std::collections::{BTreeMap, HashMap};
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

pub struct Informer<K> {
    what: &'static str,
    objects: RwLock<Objects<K>>,
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
    if ns.is_empty() { name } else { format!("{ns}/{name}") }
}

/// A key split into namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

impl<K: Resource + Send + Sync + 'static> Informer<K> {
    pub fn new(what: &'static str) -> Arc<Informer<K>> {
        let (synced_tx, _) = watch::channel(false);
        Arc::new(Informer { what, objects: RwLock::new(HashMap::new()), handlers: Mutex::new(Vec::new()), synced_tx })
    }

    /// Adds a handler (before `run`, so that it sees the first list).
    pub fn on(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.handlers.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(handler));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects<K>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(namespace).and_then(|m| m.get(name)).cloned()
    }

    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        let (ns, name) = split_key(key);
        self.get(ns, name)
    }

    /// Every cached object of `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read().get(namespace).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().values().flat_map(|m| m.values().cloned()).collect()
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
        let old = {
            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
            objects.entry(ns).or_default().insert(name, new.clone())
        };
        match old {
            Some(old) => self.tell(Change::Updated { old: &old, new: &new }),
            None => self.tell(Change::Added(&new)),
        }
    }

    fn delete(&self, obj: K) {
        let (ns, name) = ns_name(&obj);
        let old = {
            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
            let old = objects.get_mut(&ns).and_then(|m| m.remove(&name));
            if objects.get(&ns).is_some_and(BTreeMap::is_empty) {
                objects.remove(&ns);
            }
            old
        };
        // The final state as the watch reported it.
        let last = Arc::new(obj);
        if old.is_some() {
            self.tell(Change::Deleted(&last));
        }
    }

    /// A complete list replaces the cache: what it lacks is deleted, the rest added or updated.
    fn replace(&self, listed: Vec<K>) {
        let mut fresh: Objects<K> = HashMap::new();
        for obj in listed {
            let (ns, name) = ns_name(&obj);
            fresh.entry(ns).or_default().insert(name, Arc::new(obj));
        }
        let old = std::mem::replace(&mut *self.objects.write().unwrap_or_else(|p| p.into_inner()), fresh.clone());
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
            metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), resource_version: Some(rv.into()), ..Default::default() },
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
                Change::Updated { old, new } => format!("update {} {}->{}", key_of(new.as_ref()), old.metadata.resource_version.as_deref().unwrap(), new.metadata.resource_version.as_deref().unwrap()),
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
                "add a/x", "add a/y", "update a/x 1->2", "add b/z", "delete a/y", "add b/w", "update b/z 3->5", "delete a/x",
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
}
