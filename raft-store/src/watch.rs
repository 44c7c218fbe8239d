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

use crate::mvcc::{history_scan, MvccError, Revision};
use crate::node::StoreNode;
use crate::storage::{AppliedEvents, KvState};

/// A response stops growing past this many bytes of events (whole revisions only).
pub const WATCH_RESPONSE_BYTES_SOFT_MAX: usize = 1024 * 1024;
/// Watchers one stream may hold.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;

/// Most bytes of events one catch-up step reads from history (a step runs on an async worker).
pub const CATCH_UP_STEP_BYTES_MAX: usize = WATCH_RESPONSE_BYTES_SOFT_MAX;
/// Most stored values one catch-up step looks at (a narrow watch over a busy history).
pub const CATCH_UP_STEP_SCANNED_MAX: usize = 2_048;

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
        let stream = WatchStream::new(self.node.clone());
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

/// One catch-up step's reading.
struct CatchUpStep {
    /// The revision the step read up to (its responses' header revision).
    upto: i64,
    events: Vec<Event>,
    /// The first revision the watcher still owes its client.
    next: i64,
    /// Nothing up to `upto` is left.
    done: bool,
}

/// Reads one step of history for a watcher owing revisions from `from` on: the index is asked
/// under the state lock, the history read from a snapshot after it is released (see
/// `KvState::plan_read`); a step is bounded (`CATCH_UP_STEP_*`).
fn read_history(
    state: &KvState,
    filter: &WatchFilter,
    from: i64,
    until: Option<i64>,
) -> Result<CatchUpStep, MvccError> {
    state.read_planned(
        |d| {
            // As for reads, the compaction revision itself is still watchable.
            if from < d.mvcc.compacted_revision() {
                return Err(MvccError::Compacted);
            }
            let applied = d.mvcc.current_revision();
            Ok(until.map_or(applied, |u| u.min(applied)))
        },
        |upto, store| {
            let upto = upto?;
            if from > upto {
                return Ok(CatchUpStep { upto, events: Vec::new(), next: from, done: true });
            }
            let batch = history_scan(
                store,
                &filter.key,
                &filter.range_end,
                from,
                upto,
                CATCH_UP_STEP_BYTES_MAX,
                CATCH_UP_STEP_SCANNED_MAX,
            )?;
            let mut events: Vec<Event> = batch.events.into_iter().filter(|e| filter.wants(e)).collect();
            if filter.prev_kv {
                let prevs = state.read(|d, _| d.mvcc.prev_revisions(&events));
                let revs: Vec<Revision> = prevs.iter().flatten().copied().collect();
                let mut values = store.get_many(&revs)?.into_iter();
                for (event, prev) in events.iter_mut().zip(&prevs) {
                    if prev.is_some() {
                        event.prev_kv = values.next().flatten().map(|v| v.kv);
                    }
                }
            }
            let (next, done) = match batch.resume {
                Some(resume) => (resume, false),
                None => (upto + 1, true),
            };
            Ok(CatchUpStep { upto, events, next, done })
        },
    )
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
    /// Watchers with more history to catch up on, taken a step at a time.
    lagging: std::collections::BTreeSet<i64>,
    /// The responses of the step under way; the client's stream takes them all before the loop
    /// reads another request or event, so a slow client holds its stream back (and its watchers
    /// catch up from history afterwards), never the apply path.
    out: VecDeque<WatchResponse>,
}

/// The client went away; the stream ends.
struct Gone;

impl WatchStream {
    fn new(node: Arc<StoreNode>) -> Self {
        Self { node, watchers: BTreeMap::new(), next_id: 0, lagging: Default::default(), out: VecDeque::new() }
    }

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
                // A lagging watcher's next step of history goes before anything new.
                if let Some(id) = self.lagging.pop_first() {
                    let step = self.catch_up(id, None).await;
                    while let Some(response) = self.out.pop_front() {
                        yield Ok(response);
                    }
                    if step.is_err() {
                        break;
                    }
                    continue;
                }
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
                self.lagging.remove(&cancel.watch_id);
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

    /// Delivers from history what watcher `id` has not received yet, up to revision `until` when
    /// given (wholly then), else one bounded step of it: a watcher still behind afterwards is
    /// `lagging`, and the stream takes its next step once the client has taken this one's
    /// responses, so that a long catch-up is never queued whole.
    async fn catch_up(&mut self, id: i64, until: Option<i64>) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                self.lagging.remove(&id);
                return Ok(());
            };
            let (filter, from) = (w.filter.clone(), w.next);
            if until.is_none() && from > self.current() {
                self.lagging.remove(&id);
                return Ok(());
            }
            // One bounded step; a catch-up to a progress notification's revision yields between
            // steps, the others between the stream's turns.
            let read = read_history(self.node.state(), &filter, from, until);
            let step = match read {
                Ok(step) => step,
                Err(e) => {
                    self.lagging.remove(&id);
                    self.watchers.remove(&id);
                    let response = match e {
                        MvccError::Compacted => WatchResponse {
                            // As etcd: no revision in the header, and the compact revision tells the reason.
                            header: self.header(0),
                            watch_id: id,
                            canceled: true,
                            compact_revision: self.node.state().read(|d, _| d.mvcc.compacted_revision()),
                            ..Default::default()
                        },
                        e => {
                            tracing::error!(error = %e, "watch history unreadable");
                            WatchResponse {
                                header: self.header(0),
                                watch_id: id,
                                canceled: true,
                                cancel_reason: format!("etcdserver: {e}"),
                                ..Default::default()
                            }
                        }
                    };
                    return self.send(response).await;
                }
            };
            let w = self.watchers.get_mut(&id).expect("looked up above");
            w.next = w.next.max(step.next);
            self.send_events(id, step.upto, step.events).await?;
            if step.done {
                self.lagging.remove(&id);
                return Ok(());
            }
            if until.is_none() {
                self.lagging.insert(id);
                return Ok(());
            }
            tokio::task::yield_now().await;
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
        let mut stream = WatchStream::new(node.clone());
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
        let mut stream = WatchStream::new(node.clone());
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

#[cfg(test)]
mod catch_up_tests {
    use super::*;
    use crate::node::{fill, testing::single_leader};
    use prost::Message;

    /// A watcher far behind is caught up a bounded step at a time: each step's responses are
    /// handed over before the next is read, and together they hold every event once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_catch_up_is_read_and_queued_in_bounded_steps() {
        let (_dir, node) = single_leader().await;
        let keys = 3_000;
        fill::keys(&node, "c/", keys, 4096).await;
        let mut stream = WatchStream::new(node.clone());
        let create = WatchCreateRequest {
            key: b"c/".to_vec(),
            range_end: b"c0".to_vec(),
            start_revision: 1,
            prev_kv: true,
            ..Default::default()
        };
        assert!(stream.create(create).await.is_ok());
        let mut revisions = Vec::new();
        let mut steps = 0;
        loop {
            let queued: usize = stream.out.iter().map(|r| r.encoded_len()).sum();
            assert!(queued <= CATCH_UP_STEP_BYTES_MAX + 2 * 4096 + 1024, "{queued} bytes queued by one step");
            for r in stream.out.drain(..) {
                revisions.extend(r.events.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision)));
            }
            steps += 1;
            let Some(id) = stream.lagging.pop_first() else { break };
            assert!(stream.catch_up(id, None).await.is_ok());
        }
        assert!(steps > 2, "12 MB of events came in {steps} steps");
        assert_eq!(revisions.len(), keys);
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "in revision order, none twice");
        node.shutdown().await;
    }
}
