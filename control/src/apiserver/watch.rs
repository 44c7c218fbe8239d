//! `?watch=true`: a stream of `{"type": ..., "object": ...}` lines fed by one store watch per
//! request, with initial events, selectors (an object leaving the selection is DELETED for this
//! watch), bookmarks, and the in-stream 410 Kubernetes clients expect for a compacted version.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::cache::{event_line, Backlog, CacheItem, CachedEvent, CachedObject, Subscription};
use super::errors::ApiError;
use super::form::Form;
use super::resources::Resource;
use super::store::{prefix_end, StoreError, WatchStream};
use super::verbs::{from_kv, Selectors};
use super::{Api, Params};

/// Events buffered for a slow client before the watch waits for it.
const WATCH_EVENTS_QUEUE_MAX: usize = 1024;
/// Most bytes of events handed to the response body as one chunk.
const WATCH_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Most queued cache items a watch takes at once before writing them out.
const WATCH_BATCH_ITEMS_MAX: usize = 256;
/// How often a watch that allows bookmarks gets one, in milliseconds.
const BOOKMARK_INTERVAL_MS: u64 = 60_000;
/// How long a watch waits for its resource's cache to be built before reading the store itself.
const CACHE_READY_WAIT_MS: u64 = 2_000;
/// Items read per store call while sending initial events.
const INITIAL_PAGE_ITEMS_MAX: i64 = 500;

type Tx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

struct Watch {
    api: Arc<Api>,
    res: &'static Resource,
    prefix: String,
    selectors: Selectors,
    bookmarks: bool,
    /// Lines not yet handed to the response body.
    pending: std::sync::Mutex<Pending>,
    /// The form events carry their objects in.
    form: Form,
    tx: Tx,
}

/// The client went away.
struct Gone;

/// Lines waiting for the next chunk. They are kept as the shared lines they are (a cached event's
/// line is one buffer for every watch) and copied only when several leave as one chunk.
#[derive(Default)]
struct Pending {
    lines: Vec<Bytes>,
    bytes: usize,
}

impl Pending {
    fn take_chunk(&mut self) -> Option<Bytes> {
        let lines = std::mem::take(&mut self.lines);
        let bytes = std::mem::take(&mut self.bytes);
        match lines.len() {
            0 => None,
            1 => lines.into_iter().next(),
            _ => {
                let mut chunk = Vec::with_capacity(bytes);
                for line in &lines {
                    chunk.extend_from_slice(line);
                }
                Some(Bytes::from(chunk))
            }
        }
    }
}

/// What a put is for a watch with selectors: an object entering the selection is ADDED, one
/// leaving it DELETED, one staying in it MODIFIED; None when the watch does not see it.
fn event_type(created: bool, old_matched: bool, new_matches: bool) -> Option<&'static str> {
    match (created, old_matched, new_matches) {
        (true, _, true) | (false, false, true) => Some("ADDED"),
        (false, true, true) => Some("MODIFIED"),
        (false, true, false) => Some("DELETED"),
        _ => None,
    }
}

/// One batch of queued items: the one already received, then what is queued behind it, at most
/// `max` in all. An item is taken from the queue only when the batch will hand it out, so the
/// items left after a full batch wait in the queue for the next one.
struct Batch<'a, T> {
    first: Option<Result<T, broadcast::error::TryRecvError>>,
    items: &'a mut broadcast::Receiver<T>,
    left: usize,
}

impl<'a, T: Clone> Batch<'a, T> {
    fn new(
        first: Result<T, broadcast::error::TryRecvError>,
        items: &'a mut broadcast::Receiver<T>,
        max: usize,
    ) -> Self {
        Batch { first: Some(first), items, left: max }
    }
}

impl<T: Clone> Iterator for Batch<'_, T> {
    type Item = Result<T, broadcast::error::TryRecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match self.first.take() {
            Some(first) => Some(first),
            None => match self.items.try_recv() {
                Err(broadcast::error::TryRecvError::Empty) => None,
                item => Some(item),
            },
        }
    }
}

impl Watch {
    /// Queues a line; lines leave together at the next `flush` (or once a chunk is full), so a
    /// watch that is behind catches up in few writes.
    async fn send_line(&self, line: Bytes) -> Result<(), Gone> {
        let full = {
            let mut pending = self.pending.lock().expect("not poisoned");
            pending.bytes += line.len();
            pending.lines.push(line);
            pending.bytes >= WATCH_CHUNK_BYTES_MAX
        };
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), Gone> {
        let Some(chunk) = self.pending.lock().expect("not poisoned").take_chunk() else { return Ok(()) };
        self.tx.send(Ok(chunk)).await.map_err(|_| Gone)
    }

    async fn send(&self, kind: &str, object: Value) -> Result<(), Gone> {
        let object = match kind {
            "ERROR" => object,
            "BOOKMARK" if self.form == Form::Metadata => super::form::metadata_of(&object),
            "BOOKMARK" => object,
            _ => super::form::object(self.form, self.res, object),
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("a JSON value encodes");
        line.push(b'\n');
        self.send_line(Bytes::from(line)).await
    }

    /// A cached object's event: its bytes as they are, unless the watch asks for another form.
    async fn send_cached(&self, kind: &str, object: &CachedObject) -> Result<(), Gone> {
        if self.form == Form::Object {
            return self.send_line(event_line(kind, &object.json)).await;
        }
        self.send(kind, object.full()).await
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta})
    }

    async fn error(&self, e: ApiError) -> Result<(), Gone> {
        self.send("ERROR", e.status()).await?;
        self.flush().await
    }

    /// ADDED for every object in scope now; returns the revision they were read at.
    async fn initial_events(&self) -> Result<i64, Gone> {
        let end = prefix_end(self.prefix.as_bytes());
        let (mut from, mut revision) = (self.prefix.as_bytes().to_vec(), 0);
        loop {
            let page = match self.api.store.range(&from, &end, revision, INITIAL_PAGE_ITEMS_MAX, false).await {
                Ok(p) => p,
                Err(e) => {
                    self.error(e.into()).await?;
                    return Err(Gone);
                }
            };
            if revision == 0 {
                revision = page.revision;
            }
            for kv in &page.kvs {
                match from_kv(kv) {
                    Ok(obj) if self.selectors.matches(&obj) => self.send("ADDED", obj).await?,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e.message, "skipping an undecodable object"),
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(revision),
            }
        }
    }

    async fn forward(&self, resp: proto::etcdserverpb::WatchResponse) -> Result<(), Gone> {
        if resp.events.is_empty() {
            if self.bookmarks && !resp.created {
                let revision = resp.header.map(|h| h.revision).unwrap_or_default();
                self.send("BOOKMARK", self.bookmark(revision, false)).await?;
            }
            return Ok(());
        }
        for ev in resp.events {
            let Some(kv) = ev.kv else { continue };
            let old = ev.prev_kv.as_ref().and_then(|p| from_kv(p).ok());
            let old_match = old.as_ref().is_some_and(|o| self.selectors.matches(o));
            if ev.r#type == proto::mvccpb::event::EventType::Delete as i32 {
                if let (Some(mut old), true) = (old, old_match) {
                    old["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                    self.send("DELETED", old).await?;
                }
                continue;
            }
            let new = match from_kv(&kv) {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e.message, "skipping an undecodable object");
                    continue;
                }
            };
            let new_match = self.selectors.matches(&new);
            let created = kv.create_revision == kv.mod_revision || old.is_none();
            let Some(kind) = event_type(created, old_match, new_match) else { continue };
            self.send(kind, new).await?;
        }
        Ok(())
    }

    /// One cached change, as this watch's selectors see it.
    async fn forward_cached(&self, e: &CachedEvent) -> Result<(), Gone> {
        if self.selectors.is_empty() && self.form == Form::Object {
            return self.send_line(e.plain.clone()).await;
        }
        let old_match = e.old.as_ref().is_some_and(|o| self.selectors.matches(o));
        match &e.new {
            None if old_match && self.form == Form::Object => self.send_line(e.plain.clone()).await,
            None if old_match => {
                let mut gone = e.old.as_ref().expect("matched").full();
                gone["metadata"]["resourceVersion"] = json!(e.revision.to_string());
                self.send("DELETED", gone).await
            }
            None => Ok(()),
            Some(new) => {
                let Some(kind) = event_type(e.old.is_none(), old_match, self.selectors.matches(new)) else {
                    return Ok(());
                };
                self.send_cached(kind, new).await
            }
        }
    }

    /// Serves the watch from the resource's cache: its backlog, then its changes as they come.
    async fn run_cached(
        self,
        sub: Subscription,
        start: Option<i64>,
        send_initial: bool,
        timeout: Option<Duration>,
    ) -> Result<(), Gone> {
        let Subscription { backlog, revision, mut items } = sub;
        // A watch from a version newer than the cache's sends only what comes after that version,
        // however far the cache still has to go to reach it.
        let mut last = if send_initial { revision } else { revision.max(start.unwrap_or(0)) };
        match backlog {
            Backlog::Objects(objects) => {
                for o in objects.iter().filter(|o| self.selectors.matches(o)) {
                    self.send_cached("ADDED", o).await?;
                }
                if send_initial && self.bookmarks {
                    self.send("BOOKMARK", self.bookmark(revision, true)).await?;
                }
            }
            Backlog::Events(events) => {
                for e in &events {
                    self.forward_cached(e).await?;
                }
            }
        }
        self.flush().await?;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                _ = expired => return self.flush().await,
                _ = self.tx.closed() => return Err(Gone),
                item = items.recv() => item,
            };
            // Take whatever else is already queued, then write it all at once.
            let first = first.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => broadcast::error::TryRecvError::Lagged(n),
                broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
            });
            for item in Batch::new(first, &mut items, WATCH_BATCH_ITEMS_MAX) {
                match item {
                    Ok(CacheItem::Event(e)) if e.revision > last => {
                        last = e.revision;
                        self.forward_cached(&e).await?;
                    }
                    Ok(CacheItem::Event(_)) => {}
                    Ok(CacheItem::Progress(rev)) => {
                        let due = last_bookmark.elapsed() >= Duration::from_millis(BOOKMARK_INTERVAL_MS);
                        if self.bookmarks && due && rev > last {
                            last = rev;
                            last_bookmark = tokio::time::Instant::now();
                            self.send("BOOKMARK", self.bookmark(rev, false)).await?;
                        }
                    }
                    // The cache was rebuilt, or this watch fell too far behind: end it, and the
                    // client resumes from the last version it saw.
                    Ok(CacheItem::Reset) | Err(broadcast::error::TryRecvError::Lagged(_)) => return self.flush().await,
                    Err(broadcast::error::TryRecvError::Closed) => return self.flush().await,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                }
            }
            self.flush().await?;
        }
    }

    async fn run(self, start: Option<i64>, send_initial: bool, timeout: Option<Duration>) -> Result<(), Gone> {
        let after = match (start, send_initial) {
            (Some(rv), false) => rv,
            _ => {
                let revision = self.initial_events().await?;
                if send_initial && self.bookmarks {
                    self.send("BOOKMARK", self.bookmark(revision, true)).await?;
                }
                self.flush().await?;
                revision
            }
        };
        let end = prefix_end(self.prefix.as_bytes());
        let mut stream: WatchStream =
            match self.api.store.watch(self.prefix.as_bytes(), &end, after + 1, false, true).await {
                Ok(s) => s,
                Err(e) => return self.error(e.into()).await,
            };
        let progress = stream.progress();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut bookmarks = tokio::time::interval(Duration::from_millis(BOOKMARK_INTERVAL_MS));
        bookmarks.tick().await;
        loop {
            let expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = expired => return self.flush().await,
                _ = self.tx.closed() => return Err(Gone),
                _ = bookmarks.tick(), if self.bookmarks => {
                    if progress.request().is_err() {
                        return Ok(());
                    }
                }
                next = stream.next() => match next {
                    Ok(Some(resp)) => {
                        self.forward(resp).await?;
                        self.flush().await?;
                    }
                    Ok(None) => return Ok(()),
                    Err(StoreError::Compacted) => {
                        return self
                            .error(ApiError::gone(format!("too old resource version: {after}")))
                            .await
                    }
                    Err(e) => return self.error(e.into()).await,
                },
            }
        }
    }
}

pub async fn serve(
    api: Arc<Api>,
    res: &'static Resource,
    ns: Option<&str>,
    params: &Params,
    form: Form,
) -> Result<Response, ApiError> {
    let selectors = Selectors::from_params(res, params)?;
    let start = match params.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("resourceVersion {rv:?} is not a valid version")))?,
        ),
    };
    let send_initial = match params.get("sendInitialEvents") {
        Some("true") => {
            if !params.flag("allowWatchBookmarks") {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    vec![super::errors::Cause::invalid(
                        "allowWatchBookmarks",
                        "false",
                        "allowWatchBookmarks must be true if sendInitialEvents = true",
                    )],
                ));
            }
            true
        }
        _ => start.is_none(),
    };
    let timeout = match params.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(
            t.parse().map_err(|_| ApiError::bad_request(format!("timeoutSeconds {t:?} is not a number")))?,
        )),
        None => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_EVENTS_QUEUE_MAX);
    let prefix = res.scope_prefix(ns);
    let cache = api.cache(res);
    // From the cache when it is built, still holds the version asked for, and — for a watch that
    // starts with the current state — has caught up with the store (as Kubernetes' consistent
    // reads from its cache wait for); else from the store.
    let consistent_from = match params.get("resourceVersion") {
        None if send_initial => Some(None),
        Some(rv) if send_initial && rv != "0" => start.map(Some),
        _ => None,
    };
    let subscription = if cache.ready(Duration::from_millis(CACHE_READY_WAIT_MS)).await
        && match consistent_from {
            Some(at_least) => super::verbs::cache_current(&api, &cache, at_least).await?,
            None => true,
        } {
        cache.subscribe(&prefix, if send_initial { None } else { start }).ok()
    } else {
        None
    };
    let counter = if subscription.is_some() { &api.watches_from_cache } else { &api.watches_from_store };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let watch = Watch {
        api,
        res,
        prefix,
        selectors,
        bookmarks: params.flag("allowWatchBookmarks"),
        pending: std::sync::Mutex::new(Pending::default()),
        form,
        tx,
    };
    tokio::spawn(async move {
        let _ = match subscription {
            Some(sub) => watch.run_cached(sub, start, send_initial, timeout).await,
            None => watch.run(start, send_initial, timeout).await,
        };
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| ApiError::internal(format!("building the watch response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches taken one after another hand out every queued item once, in order: none is taken
    /// from the queue by a batch that is already full.
    #[test]
    fn batches_lose_no_queued_item() {
        let (tx, mut rx) = broadcast::channel(2_048);
        for i in 0..1_000u32 {
            tx.send(i).unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(first) = rx.try_recv() {
            let batch: Vec<u32> = Batch::new(Ok(first), &mut rx, 256).map(|i| i.unwrap()).collect();
            assert!(batch.len() <= 256, "a batch of {}", batch.len());
            seen.extend(batch);
        }
        assert_eq!(seen, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_ends_where_the_queue_does() {
        let (tx, mut rx) = broadcast::channel(16);
        tx.send(1u8).unwrap();
        tx.send(2).unwrap();
        let first = rx.try_recv();
        let batch: Vec<_> = Batch::new(first, &mut rx, 256).collect();
        assert_eq!(batch, vec![Ok(1), Ok(2)]);
    }
}
