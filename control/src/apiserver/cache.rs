//! The watch cache: per resource type and API replica, one store watch keeps every object
//! (decoded once) and a window of recent events; watches and resourceVersion="0" lists are served
//! from it, so that N watchers cost one store watch and one decoding per change instead of N.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::errors::ApiError;
use super::resources::Resource;
use super::store::{prefix_end, Progress, Store, StoreError};
use super::verbs::from_kv;

/// Recent events kept per resource type for watches that resume from a past version.
pub const WATCH_CACHE_EVENTS_MAX: usize = 10_000;
/// Events queued for the watches of one resource type; a watch that falls further behind ends
/// (its client resumes from its last version, from the window above).
const WATCH_CACHE_FANOUT_QUEUE_MAX: usize = 4_096;
/// How often the cache asks the store how far it has been told (bookmarks), in milliseconds.
const PROGRESS_INTERVAL_MS: u64 = 5_000;
/// Pause before the cache rebuilds itself after losing its store watch, in milliseconds.
const REBUILD_PAUSE_MS: u64 = 500;
/// Items read per store call while (re)building.
const BUILD_PAGE_ITEMS_MAX: i64 = 1_000;

/// An object as the cache keeps it: its JSON as clients get it, and what label and field
/// selectors read of it (see `decode_selectable`), which is what it dereferences to.
pub struct CachedObject {
    selectable: Value,
    pub json: Bytes,
    /// Where the resourceVersion's digits are in `json`, when it was put there by splicing.
    rv_span: Option<std::ops::Range<usize>>,
}

impl CachedObject {
    /// From a stored value: the resourceVersion is spliced into the stored bytes rather than the
    /// object decoded and encoded again.
    fn from_kv(kv: &proto::mvccpb::KeyValue) -> Result<Arc<Self>, ApiError> {
        let revision = kv.mod_revision.to_string();
        // One pass over the stored bytes finds what selectors read and where metadata opens.
        let decoded = decode_selectable(&kv.value)?;
        if let Some(open) = decoded.metadata_open.filter(|_| !decoded.has_resource_version) {
            let (json, rv_span) = splice_resource_version(&kv.value, open, &revision);
            return Ok(Arc::new(CachedObject {
                selectable: decoded.selectable,
                json: Bytes::from(json),
                rv_span: Some(rv_span),
            }));
        }
        // Not the shape the API server stores (a resourceVersion kept, say): the long way.
        let full = from_kv(kv)?;
        let json = serde_json::to_vec(&full).expect("a JSON value encodes");
        let selectable = decode_selectable(&json)?.selectable;
        Ok(Arc::new(CachedObject { selectable, json: Bytes::from(json), rv_span: None }))
    }

    /// The whole object, managed fields included.
    pub fn full(&self) -> Value {
        serde_json::from_slice(&self.json).expect("the cache encoded this JSON itself")
    }

    /// The object's JSON with another resourceVersion (a deletion's).
    fn json_at(&self, revision: i64) -> Vec<u8> {
        match &self.rv_span {
            Some(span) => {
                let rv = revision.to_string();
                let mut out = Vec::with_capacity(self.json.len() + rv.len());
                out.extend_from_slice(&self.json[..span.start]);
                out.extend_from_slice(rv.as_bytes());
                out.extend_from_slice(&self.json[span.end..]);
                out
            }
            None => {
                let mut full = self.full();
                full["metadata"]["resourceVersion"] = json!(revision.to_string());
                serde_json::to_vec(&full).expect("a JSON value encodes")
            }
        }
    }
}

impl std::ops::Deref for CachedObject {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.selectable
    }
}

/// The stored bytes with `"resourceVersion":"<revision>"` put first in `metadata` (whose `{` is
/// just before `open`), and where the revision's digits are.
fn splice_resource_version(stored: &[u8], open: usize, revision: &str) -> (Vec<u8>, std::ops::Range<usize>) {
    let empty = stored[open..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(stored.len() + revision.len() + 24);
    out.extend_from_slice(&stored[..open]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    let start = out.len();
    out.extend_from_slice(revision.as_bytes());
    let end = out.len();
    out.push(b'"');
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&stored[open..]);
    (out, start..end)
}

/// What one pass over a stored object finds.
struct Selectable {
    /// What selectors read (see `decode_selectable`).
    selectable: Value,
    /// Just past the `{` that opens `metadata`, when it is an object.
    metadata_open: Option<usize>,
    has_resource_version: bool,
}

/// What selectors read of an object, decoded without building the rest: `metadata`'s name,
/// namespace and labels, and the scalars at most two levels down (where every kind's selectable
/// fields are: `spec.nodeName`, `status.phase`, `involvedObject.kind`, `type`, …). Building the
/// whole object for each change cost as much as the rest of a write on a replica.
fn decode_selectable(json: &[u8]) -> Result<Selectable, ApiError> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::value::RawValue;

    /// Scalars kept; maps kept `levels` deep (their scalars only at the last level); lists and
    /// deeper maps passed over.
    struct Scalars {
        levels: u8,
    }
    /// The top level: as `Scalars`, with `metadata` taken whole (read next by `Meta`).
    struct Top;
    /// `metadata`'s selectable entries, and whether it holds a resourceVersion.
    struct Meta;
    impl<'de> DeserializeSeed<'de> for Scalars {
        type Value = Option<Value>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Scalars {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Option<Value>, E> {
            Ok(Some(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Option<Value>, E> {
            Ok(Some(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Option<Value>, E> {
            Ok(Some(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Option<Value>, E> {
            Ok(Some(Value::from(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Option<Value>, E> {
            Ok(Some(Value::String(v.to_owned())))
        }
        fn visit_unit<E>(self) -> Result<Option<Value>, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
            if self.levels == 0 {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if let Some(v) = map.next_value_seed(Scalars { levels: self.levels - 1 })? {
                    out.insert(key, v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
    }
    impl<'de> Visitor<'de> for Top {
        type Value = (serde_json::Map<String, Value>, Option<&'de RawValue>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut out, mut metadata) = (serde_json::Map::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                if key == "metadata" {
                    metadata = Some(map.next_value::<&'de RawValue>()?);
                } else if let Some(v) = map.next_value_seed(Scalars { levels: 1 })? {
                    out.insert(key, v);
                }
            }
            Ok((out, metadata))
        }
    }
    impl<'de> Visitor<'de> for Meta {
        type Value = (Value, bool);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("object metadata")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut out, mut has_rv) = (serde_json::Map::new(), false);
            while let Some(key) = map.next_key::<String>()? {
                if matches!(key.as_str(), "name" | "namespace" | "labels") {
                    let v = map.next_value::<Value>()?;
                    out.insert(key, v);
                } else {
                    has_rv |= key == "resourceVersion";
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok((Value::Object(out), has_rv))
        }
    }
    let not_json = |e: serde_json::Error| ApiError::internal(format!("a stored object is not JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(json);
    let (mut top, metadata) = serde::Deserializer::deserialize_map(&mut de, Top).map_err(not_json)?;
    de.end().map_err(not_json)?;
    let (mut metadata_open, mut has_resource_version) = (None, false);
    if let Some(raw) = metadata.filter(|r| r.get().starts_with('{')) {
        let (meta, has_rv) =
            serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(raw.get()), Meta)
                .map_err(not_json)?;
        top.insert("metadata".into(), meta);
        metadata_open = Some(raw.get().as_ptr() as usize - json.as_ptr() as usize + 1);
        has_resource_version = has_rv;
    }
    Ok(Selectable { selectable: Value::Object(top), metadata_open, has_resource_version })
}

/// One change as watches send it.
pub struct CachedEvent {
    pub revision: i64,
    pub key: String,
    /// The object after the change (with its resourceVersion); None for a deletion.
    pub new: Option<Arc<CachedObject>>,
    /// The object before it; None for a creation.
    pub old: Option<Arc<CachedObject>>,
    /// The event's line for a watch without selectors.
    pub plain: Bytes,
}

#[derive(Clone)]
pub enum CacheItem {
    Event(Arc<CachedEvent>),
    /// Everything up to this revision has been sent.
    Progress(i64),
    /// The cache lost its store watch and rebuilt: watches must start over.
    Reset,
}

struct State {
    ready: bool,
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<CachedEvent>>,
    /// Every event after this revision is in `events`.
    complete_after: i64,
    revision: i64,
}

pub struct WatchCache {
    prefix: String,
    state: RwLock<State>,
    fanout: broadcast::Sender<CacheItem>,
    ready: tokio::sync::watch::Sender<bool>,
    /// The revision the cache is current at, for readers waiting until it is fresh enough.
    revision: tokio::sync::watch::Sender<i64>,
    /// Asks the store watch for a progress notification (present while it runs).
    progress: std::sync::Mutex<Option<Progress>>,
}

/// What a new watch gets: the objects or events before it, and the changes after.
pub struct Subscription {
    pub backlog: Backlog,
    pub revision: i64,
    pub items: broadcast::Receiver<CacheItem>,
}

pub enum Backlog {
    /// Every object in the scope, as of `revision`.
    Objects(Vec<Arc<CachedObject>>),
    /// Every event after the requested version, up to `revision`.
    Events(Vec<Arc<CachedEvent>>),
}

/// The requested version is older than the cache's window.
pub struct TooOld;

/// A watch event's line around an object already encoded (so it is not encoded again).
pub fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

impl WatchCache {
    /// A cache of `res`'s objects, fed from `store` by a task that runs as long as the API does.
    pub fn start(store: Store, res: &'static Resource) -> Arc<Self> {
        let (fanout, _) = broadcast::channel(WATCH_CACHE_FANOUT_QUEUE_MAX);
        let (ready, _) = tokio::sync::watch::channel(false);
        let (revision, _) = tokio::sync::watch::channel(0);
        let cache = Arc::new(WatchCache {
            prefix: res.prefix(),
            state: RwLock::new(State {
                ready: false,
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                complete_after: 0,
                revision: 0,
            }),
            fanout,
            ready,
            revision,
            progress: std::sync::Mutex::new(None),
        });
        let feeder = cache.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = feeder.feed(&store).await {
                    tracing::warn!(prefix = %feeder.prefix, error = %e, "watch cache lost its store watch; rebuilding");
                }
                feeder.reset();
                tokio::time::sleep(Duration::from_millis(REBUILD_PAUSE_MS)).await;
            }
        });
        cache
    }

    fn reset(&self) {
        let mut s = self.state.write().expect("not poisoned");
        s.ready = false;
        *self.progress.lock().expect("not poisoned") = None;
        s.objects.clear();
        s.events.clear();
        let _ = self.fanout.send(CacheItem::Reset);
        self.ready.send_replace(false);
    }

    /// Lists everything, then follows the store's watch from there until it fails.
    async fn feed(&self, store: &Store) -> Result<(), StoreError> {
        let end = prefix_end(self.prefix.as_bytes());
        let mut objects = BTreeMap::new();
        let (mut from, mut revision) = (self.prefix.as_bytes().to_vec(), 0);
        loop {
            let page = store.range(&from, &end, revision, BUILD_PAGE_ITEMS_MAX, false).await?;
            if revision == 0 {
                revision = page.revision;
            }
            for kv in &page.kvs {
                match CachedObject::from_kv(kv) {
                    Ok(obj) => {
                        objects.insert(String::from_utf8_lossy(&kv.key).into_owned(), obj);
                    }
                    Err(e) => tracing::warn!(error = %e.message, "watch cache skips an undecodable object"),
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        // No previous values: the cache holds every object's last state itself, and asking the
        // store for them would double what every event carries.
        let mut watch = store.watch(self.prefix.as_bytes(), &end, revision + 1, false, false).await?;
        {
            let mut s = self.state.write().expect("not poisoned");
            *s = State { ready: true, objects, events: VecDeque::new(), complete_after: revision, revision };
        }
        self.revision.send_replace(revision);
        self.ready.send_replace(true);
        let progress = watch.progress();
        *self.progress.lock().expect("not poisoned") = Some(progress.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = tick.tick() => progress.request()?,
                next = watch.next() => match next? {
                    Some(resp) => self.apply(resp),
                    None => return Err(StoreError::Unavailable("the store ended the watch".into())),
                },
            }
        }
    }

    fn apply(&self, resp: proto::etcdserverpb::WatchResponse) {
        let mut s = self.state.write().expect("not poisoned");
        let header_revision = resp.header.map(|h| h.revision).unwrap_or_default();
        if resp.events.is_empty() {
            if !resp.created && header_revision > s.revision {
                s.revision = header_revision;
                let _ = self.fanout.send(CacheItem::Progress(header_revision));
                self.revision.send_replace(header_revision);
            }
            return;
        }
        for ev in resp.events {
            let Some(kv) = ev.kv else { continue };
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let old = s.objects.get(&key).cloned();
            let is_delete = ev.r#type == proto::mvccpb::event::EventType::Delete as i32;
            let (new, plain) = if is_delete {
                s.objects.remove(&key);
                let Some(old) = &old else { continue };
                (None, event_line("DELETED", &old.json_at(kv.mod_revision)))
            } else {
                let obj = match CachedObject::from_kv(&kv) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "watch cache skips an undecodable object");
                        continue;
                    }
                };
                s.objects.insert(key.clone(), obj.clone());
                let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
                let line = event_line(kind, &obj.json);
                (Some(obj), line)
            };
            let event = Arc::new(CachedEvent { revision: kv.mod_revision, key, new, old, plain });
            s.revision = s.revision.max(kv.mod_revision);
            if s.events.len() == WATCH_CACHE_EVENTS_MAX {
                if let Some(evicted) = s.events.pop_front() {
                    s.complete_after = evicted.revision;
                }
            }
            s.events.push_back(event.clone());
            // Sent under the lock: a watch subscribing under the lock sees each event once.
            let _ = self.fanout.send(CacheItem::Event(event));
        }
        // The whole response is applied: everything up to its revision is here.
        s.revision = s.revision.max(header_revision);
        self.revision.send_replace(s.revision);
    }

    /// Waits until the cache is current at `revision` or later, asking the store for progress
    /// (the cache's own resources may not have changed since). False if `within` passes first.
    pub async fn wait_fresh(&self, revision: i64, within: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        if *rx.borrow_and_update() >= revision && self.state.read().expect("not poisoned").ready {
            return true;
        }
        let progress = self.progress.lock().expect("not poisoned").clone();
        if let Some(p) = progress {
            if p.request().is_err() {
                return false;
            }
        }
        let fresh = tokio::time::timeout(within, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok());
        fresh && self.state.read().expect("not poisoned").ready
    }

    /// Waits until the cache has been built (or `within` passes).
    pub async fn ready(&self, within: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(within, rx.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    /// The revision the cache is current at, if it is built.
    pub fn current_revision(&self) -> Option<i64> {
        let s = self.state.read().expect("not poisoned");
        s.ready.then_some(s.revision)
    }

    /// A watch of `scope` (a key prefix) from `after` (None: every object first).
    pub fn subscribe(&self, scope: &str, after: Option<i64>) -> Result<Subscription, TooOld> {
        let s = self.state.read().expect("not poisoned");
        if !s.ready {
            return Err(TooOld);
        }
        let items = self.fanout.subscribe();
        let backlog = match after {
            None => Backlog::Objects(
                s.objects
                    .range(scope.to_string()..)
                    .take_while(|(k, _)| k.starts_with(scope))
                    .map(|(_, v)| v.clone())
                    .collect(),
            ),
            Some(rv) if rv < s.complete_after => return Err(TooOld),
            Some(rv) => Backlog::Events(
                s.events.iter().filter(|e| e.revision > rv && e.key.starts_with(scope)).cloned().collect(),
            ),
        };
        Ok(Subscription { backlog, revision: s.revision, items })
    }

    /// Whether the cache holds `key` now; None while the cache is not built.
    pub fn contains(&self, key: &str) -> Option<bool> {
        let s = self.state.read().expect("not poisoned");
        s.ready.then(|| s.objects.contains_key(key))
    }

    /// The object under `key`, if the cache is built: None when it holds none.
    pub fn get(&self, key: &str) -> Option<Option<Arc<CachedObject>>> {
        let s = self.state.read().expect("not poisoned");
        s.ready.then(|| s.objects.get(key).cloned())
    }

    /// Every object in `scope` and the revision they are current at, if the cache is built.
    pub fn list(&self, scope: &str) -> Option<(Vec<Arc<CachedObject>>, i64)> {
        let s = self.state.read().expect("not poisoned");
        if !s.ready {
            return None;
        }
        let items = s
            .objects
            .range(scope.to_string()..)
            .take_while(|(k, _)| k.starts_with(scope))
            .map(|(_, v)| v.clone())
            .collect();
        Some((items, s.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &Value, revision: i64) -> proto::mvccpb::KeyValue {
        proto::mvccpb::KeyValue {
            key: b"/registry/pods/default/a".to_vec(),
            value: serde_json::to_vec(value).unwrap(),
            mod_revision: revision,
            ..Default::default()
        }
    }

    #[test]
    fn cached_objects_read_as_the_stored_object_with_its_version() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "default", "labels": {"app": "x"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let obj = CachedObject::from_kv(&kv(&pod, 42)).unwrap();
        assert!(obj.rv_span.is_some(), "the stored shape is spliced, not re-encoded");
        let mut expected = pod.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(obj.full(), expected);
        // Selectors read the name, namespace, labels and shallow scalars, nothing else.
        assert_eq!(
            obj.selectable,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default", "labels": {"app": "x"}}, "spec": {}})
        );
        // A deletion's line carries the deletion's version.
        let mut gone = expected;
        gone["metadata"]["resourceVersion"] = json!("1000");
        assert_eq!(serde_json::from_slice::<Value>(&obj.json_at(1000)).unwrap(), gone);
    }

    /// Every kind's selectable fields lie where `decode_selectable` keeps values, and read there
    /// as in the whole object.
    #[test]
    fn selectable_fields_are_kept_by_the_shallow_decode() {
        for res in crate::apiserver::resources::RESOURCES {
            for f in crate::apiserver::kinds::META_FIELDS.iter().chain(res.strategy.selectable_fields()) {
                let depth = f.pointer.matches('/').count();
                assert!(depth <= 2, "{}'s field {} is {depth} levels deep", res.kind, f.name);
            }
        }
        let event = json!({"kind": "Event", "metadata": {"name": "e", "namespace": "d", "annotations": {"a": "b"}},
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
            "reason": "Started", "type": "Normal", "count": 3, "series": {"count": 2, "lastObservedTime": "t"},
            "related": null, "source": {"component": "kubelet"}, "spec": {"list": [1, 2], "deep": {"x": {"y": 1}}}});
        let selectable = decode_selectable(&serde_json::to_vec(&event).unwrap()).unwrap().selectable;
        assert_eq!(
            selectable,
            json!({"kind": "Event", "metadata": {"name": "e", "namespace": "d"},
                "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
                "reason": "Started", "type": "Normal", "count": 3, "series": {"count": 2, "lastObservedTime": "t"},
                "source": {"component": "kubelet"}, "spec": {}})
        );
    }

    #[test]
    fn odd_stored_shapes_take_the_long_way() {
        // Empty metadata: spliced without a stray comma.
        let bare = json!({"kind": "ConfigMap", "metadata": {}});
        let obj = CachedObject::from_kv(&kv(&bare, 7)).unwrap();
        assert_eq!(obj.full(), json!({"kind": "ConfigMap", "metadata": {"resourceVersion": "7"}}));
        // A resourceVersion written into the store by another client is replaced, not doubled.
        let kept = json!({"kind": "ConfigMap", "metadata": {"name": "b", "resourceVersion": "3"}});
        let obj = CachedObject::from_kv(&kv(&kept, 9)).unwrap();
        assert!(obj.rv_span.is_none());
        assert_eq!(obj.full(), json!({"kind": "ConfigMap", "metadata": {"name": "b", "resourceVersion": "9"}}));
        assert_eq!(serde_json::from_slice::<Value>(&obj.json_at(11)).unwrap()["metadata"]["resourceVersion"], "11");
        // Not JSON: an error, not a panic.
        let mut broken = kv(&bare, 1);
        broken.value = b"{\"metadata\":".to_vec();
        assert!(CachedObject::from_kv(&broken).is_err());
    }
}
