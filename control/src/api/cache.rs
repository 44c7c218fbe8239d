//! The watch cache: per resource type and API replica, one store watch keeps every object
//! (decoded once) and a window of recent events; watches and resourceVersion="0" lists are served
//! from it, so that N watchers cost one store watch and one decoding per change instead of N.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

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

/// An object as the cache keeps it: decoded, and encoded once for lists.
pub struct CachedObject {
    pub value: Value,
    pub json: Bytes,
}

impl CachedObject {
    fn new(value: Value) -> Arc<Self> {
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value encodes"));
        Arc::new(CachedObject { value, json })
    }
}

impl std::ops::Deref for CachedObject {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
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
fn event_line(kind: &str, object: &[u8]) -> Bytes {
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
                match from_kv(kv) {
                    Ok(obj) => {
                        objects.insert(String::from_utf8_lossy(&kv.key).into_owned(), CachedObject::new(obj));
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
                _ = tick.tick() => progress.request().await?,
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
                let mut gone = old.value.clone();
                gone["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                let line = event_line("DELETED", &serde_json::to_vec(&gone).expect("a JSON value encodes"));
                (None, line)
            } else {
                let obj = match from_kv(&kv) {
                    Ok(o) => CachedObject::new(o),
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
            if p.request().await.is_err() {
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
