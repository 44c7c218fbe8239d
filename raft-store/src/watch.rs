//! etcd's Watch service, served by every member from what it has applied.
//!
//! Each gRPC stream's response body is itself the loop that owns its watchers (no task and no
//! queue between them: an event costs one hand-off less per watcher). It follows the applied
//! events on a bounded broadcast channel; a watcher that is behind (it started in the past, the stream fell behind
//! and the channel dropped revisions, or the client reads slowly) is caught up from the MVCC
//! history instead, so the apply path never waits for a watcher and no event is lost. Every
//! watcher remembers the next revision it must deliver: events leave in revision order, each
//! revision whole in one response, none twice.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use proto::etcdserverpb::watch_create_request::FilterType;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::etcdserverpb::watch_server::Watch;
use proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use proto::mvccpb::event::EventType;
use proto::mvccpb::Event;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

use crate::mvcc::MvccError;
use crate::node::StoreNode;
use crate::storage::AppliedEvents;

/// A response stops growing past this many bytes of events (whole revisions only).
pub const WATCH_RESPONSE_BYTES_SOFT_MAX: usize = 1024 * 1024;
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;

/// What etcd's client treats as "not associated with a watcher" (progress responses).
const NO_WATCH_ID: i64 = -1;

pub struct WatchService {
    node: Arc<StoreNode>,
}

impl WatchService {
    pub fn new(node: Arc<StoreNode>) -> Self {
        Self { node }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let requests = request.into_inner();
        // Subscribe before anything is read, so that no applied revision falls between.
        let events = self.node.state().subscribe();
        let stream =
            WatchStream { node: self.node.clone(), watchers: BTreeMap::new(), next_id: 0, out: VecDeque::new() };
        Ok(Response::new(Box::pin(stream.responses(requests, events))))
    }
}

/// Which events a watcher receives, and in what form.
#[derive(Clone, Debug)]
pub struct WatchFilter {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchFilter {
    pub fn wants(&self, event: &Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        let key = event.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
        crate::mvcc::index::in_bounds(&crate::mvcc::index::range_bounds(&self.key, &self.range_end), key)
    }

    /// The events of one revision this watcher receives, as it receives them.
    pub fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| self.wants(e))
            .map(|e| if self.prev_kv { e.clone() } else { Event { prev_kv: None, ..e.clone() } })
            .collect()
    }
}

struct Watcher {
    filter: WatchFilter,
    progress_notify: bool,
    /// The next revision this watcher must deliver; everything below has been delivered.
    next: i64,
}

struct WatchStream {
    node: Arc<StoreNode>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// The responses of the step under way; the client's stream takes them all before the loop
    /// reads another request or event, so a slow client holds its stream back (and its watchers
    /// catch up from history afterwards), never the apply path.
    out: VecDeque<WatchResponse>,
}

/// The client went away; the stream ends.
struct Gone;

impl WatchStream {
    /// The stream of responses: each step handles one request, revision or tick, then hands
    /// over what it produced. Ends when the client stops sending or the stream is dropped.
    fn responses(
        mut self,
        mut requests: Streaming<WatchRequest>,
        mut events: broadcast::Receiver<AppliedEvents>,
    ) -> impl Stream<Item = Result<WatchResponse, Status>> + Send {
        async_stream::stream! {
            let interval = self.node.config().watch_progress_notify_interval_ms;
            let mut progress = tokio::time::interval(Duration::from_millis(interval.max(1)));
            progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            progress.tick().await;
            loop {
                let step = tokio::select! {
                    request = requests.message() => match request {
                        Ok(Some(req)) => self.handle(req).await,
                        Ok(None) => Err(Gone),
                        Err(status) => {
                            tracing::debug!(error = %status, "watch stream ended");
                            Err(Gone)
                        }
                    },
                    applied = events.recv() => match applied {
                        Ok(applied) => self.dispatch(&applied).await,
                        // Revisions were dropped for this stream: its watchers read them from
                        // history when the next revision arrives.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(revisions = n, "watch stream fell behind; catching up from history");
                            Ok(())
                        }
                        Err(broadcast::error::RecvError::Closed) => Err(Gone),
                    },
                    _ = progress.tick() => self.notify_progress(true).await,
                };
                while let Some(response) = self.out.pop_front() {
                    yield Ok(response);
                }
                if step.is_err() {
                    break;
                }
            }
        }
    }

    fn header(&self, revision: i64) -> Option<proto::etcdserverpb::ResponseHeader> {
        Some(self.node.header(revision))
    }

    async fn send(&mut self, response: WatchResponse) -> Result<(), Gone> {
        self.out.push_back(response);
        Ok(())
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let revision = self.current();
                    self.send(WatchResponse {
                        header: self.header(revision),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => self.notify_progress(false).await,
            None => Ok(()),
        }
    }

    fn current(&self) -> i64 {
        self.node.state().read(|d, _| d.mvcc.current_revision())
    }

    async fn create(&mut self, req: WatchCreateRequest) -> Result<(), Gone> {
        let id = if req.watch_id != 0 {
            req.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.contains_key(&id) || self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let reason = if self.watchers.contains_key(&id) {
                "etcdserver: duplicate watch ID"
            } else {
                "etcdserver: too many watchers on this stream"
            };
            let revision = self.current();
            return self
                .send(WatchResponse {
                    header: self.header(revision),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                })
                .await;
        }
        let current = self.current();
        let next = if req.start_revision > 0 { req.start_revision } else { current + 1 };
        let filters: Vec<i32> = req.filters.clone();
        let watcher = Watcher {
            filter: WatchFilter {
                key: req.key,
                range_end: req.range_end,
                prev_kv: req.prev_kv,
                no_put: filters.contains(&(FilterType::Noput as i32)),
                no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            },
            progress_notify: req.progress_notify,
            next,
        };
        self.watchers.insert(id, watcher);
        self.next_id = self.next_id.max(id + 1);
        self.send(WatchResponse { header: self.header(current), watch_id: id, created: true, ..Default::default() })
            .await?;
        self.catch_up(id, None).await
    }

    /// Delivers from history everything applied that watcher `id` has not received yet, up to
    /// revision `until` when given.
    async fn catch_up(&mut self, id: i64, until: Option<i64>) -> Result<(), Gone> {
        let Some(w) = self.watchers.get(&id) else { return Ok(()) };
        let (key, range_end, from, prev_kv) =
            (w.filter.key.clone(), w.filter.range_end.clone(), w.next, w.filter.prev_kv);
        let read = self.node.state().read(|d, store| {
            let applied = d.mvcc.current_revision();
            let current = until.map_or(applied, |u| u.min(applied));
            if from > current {
                return Ok((current, Vec::new()));
            }
            d.mvcc.history(store, &key, &range_end, from, current, prev_kv).map(|events| (current, events))
        });
        match read {
            Ok((current, events)) => {
                let w = self.watchers.get_mut(&id).expect("looked up above");
                w.next = w.next.max(current + 1);
                let events: Vec<Event> = events.into_iter().filter(|e| w.filter.wants(e)).collect();
                self.send_events(id, current, events).await
            }
            Err(MvccError::Compacted) => {
                self.watchers.remove(&id);
                let compacted = self.node.state().read(|d, _| d.mvcc.compacted_revision());
                // As etcd: no revision in the header, and the compact revision tells the reason.
                self.send(WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compacted,
                    ..Default::default()
                })
                .await
            }
            Err(e) => {
                tracing::error!(error = %e, "watch history unreadable");
                self.watchers.remove(&id);
                self.send(WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: format!("etcdserver: {e}"),
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// Sends events in responses of whole revisions, each under the size limit when it can be.
    async fn send_events(&mut self, id: i64, revision: i64, events: Vec<Event>) -> Result<(), Gone> {
        use prost::Message;
        let mut batch: Vec<Event> = Vec::new();
        let mut bytes = 0;
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default();
            let mut j = i;
            let mut rev_bytes = 0;
            while j < events.len() && events[j].kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default() == rev {
                rev_bytes += events[j].encoded_len();
                j += 1;
            }
            if !batch.is_empty() && bytes + rev_bytes > WATCH_RESPONSE_BYTES_SOFT_MAX {
                let out = std::mem::take(&mut batch);
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id: id,
                    events: out,
                    ..Default::default()
                })
                .await?;
                bytes = 0;
            }
            batch.extend_from_slice(&events[i..j]);
            bytes += rev_bytes;
            i = j;
        }
        if !batch.is_empty() {
            self.send(WatchResponse {
                header: self.header(revision),
                watch_id: id,
                events: batch,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn dispatch(&mut self, applied: &AppliedEvents) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else { continue };
            if applied.revision < w.next {
                continue;
            }
            if applied.revision > w.next || applied.restored {
                // Revisions in between never reached this stream (or came with a snapshot): read
                // them, and this one.
                self.catch_up(id, None).await?;
                continue;
            }
            w.next = applied.revision + 1;
            let events = w.filter.select(&applied.events);
            if !events.is_empty() {
                self.send(WatchResponse {
                    header: self.header(applied.revision),
                    watch_id: id,
                    events,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Tells watchers the revision they have seen everything up to. Each one is caught up first,
    /// so that no event at or below the notified revision can follow the notification, and only
    /// up to that revision, so that no event above it precedes the notification (a Kubernetes
    /// watch cache would otherwise move its resourceVersion backwards).
    async fn notify_progress(&mut self, periodic: bool) -> Result<(), Gone> {
        let current = self.current();
        let ids: Vec<i64> =
            self.watchers.iter().filter(|(_, w)| !periodic || w.progress_notify).map(|(id, _)| *id).collect();
        if periodic && ids.is_empty() {
            return Ok(());
        }
        for id in &ids {
            if self.watchers.get(id).is_some_and(|w| w.next <= current) {
                self.catch_up(*id, Some(current)).await?;
            }
        }
        if periodic {
            for id in ids {
                if self.watchers.contains_key(&id) {
                    self.send(WatchResponse { header: self.header(current), watch_id: id, ..Default::default() })
                        .await?;
                }
            }
            Ok(())
        } else {
            self.send(WatchResponse { header: self.header(current), watch_id: NO_WATCH_ID, ..Default::default() }).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::testing::single_leader;
    use crate::types::Command;
    use proto::etcdserverpb::PutRequest;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Progress notifications race writes: whatever a watcher was sent before a notification
    /// must be at or below the notified revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_progress_notification_never_reports_less_than_events_already_sent() {
        let (_dir, node) = single_leader().await;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (node, stop) = (node.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let put = PutRequest {
                            key: format!("k/{w}/{i}").into_bytes(),
                            value: b"v".to_vec(),
                            ..Default::default()
                        };
                        node.write(Command::Put(put)).await.expect("a put succeeds");
                        i += 1;
                    }
                })
            })
            .collect();
        // The stream never reads the applied events: every notification catches its watcher up
        // from history while the writers go on.
        let mut stream =
            WatchStream { node: node.clone(), watchers: BTreeMap::new(), next_id: 0, out: VecDeque::new() };
        let create = WatchCreateRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            start_revision: 1,
            ..Default::default()
        };
        assert!(stream.create(create).await.is_ok());
        let started = std::time::Instant::now();
        let (mut notifications, mut sent_max) = (0, 0i64);
        while started.elapsed() < Duration::from_secs(3) {
            assert!(stream.notify_progress(false).await.is_ok());
            while let Some(r) = stream.out.pop_front() {
                if let Some(last) = r.events.last().and_then(|e| e.kv.as_ref()) {
                    sent_max = sent_max.max(last.mod_revision);
                } else if r.watch_id == NO_WATCH_ID {
                    let notified = r.header.map(|h| h.revision).unwrap_or_default();
                    assert!(notified >= sent_max, "progress at {notified} after an event at {sent_max}");
                    notifications += 1;
                }
            }
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.expect("a writer ends");
        }
        assert!(notifications > 100 && sent_max > 100, "{notifications} notifications, events up to {sent_max}");
        node.shutdown().await;
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::node::testing::single_leader;
    use crate::types::Command;
    use proto::etcdserverpb::PutRequest;

    /// After a snapshot replaces the state, the announcement carries no events: a watcher behind
    /// it reads them from the restored history rather than waiting for the next write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_state_reaches_the_watchers_behind_it() {
        let (_dir, node) = single_leader().await;
        let mut stream =
            WatchStream { node: node.clone(), watchers: BTreeMap::new(), next_id: 0, out: VecDeque::new() };
        let create = WatchCreateRequest { key: b"r/".to_vec(), range_end: b"r0".to_vec(), ..Default::default() };
        assert!(stream.create(create).await.is_ok());
        stream.out.clear();
        // One revision, the very one the watcher waits for: announced without its events, it
        // must still be read, not taken as delivered.
        let put = PutRequest { key: b"r/0".to_vec(), value: b"v".to_vec(), ..Default::default() };
        node.write(Command::Put(put)).await.expect("a put succeeds");
        let revision = node.state().read(|d, _| d.mvcc.current_revision());
        let restored = AppliedEvents { revision, events: Arc::default(), restored: true };
        assert!(stream.dispatch(&restored).await.is_ok());
        let keys: Vec<Vec<u8>> = stream
            .out
            .iter()
            .flat_map(|r| r.events.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.key.clone())))
            .collect();
        assert_eq!(keys, vec![b"r/0".to_vec()]);
        node.shutdown().await;
    }
}
