//! Watch and lease guarantees with real `keelson store` processes: concurrent writers on a shared
//! prefix and watchers of every kind spread over the members (slow, with prev_kv, filtered,
//! reconnecting, asking for progress), checked against the full history read back at the end for
//! etcd's watch guarantees — ordered, unique, atomic, reliable, resumable, bookmarkable, with
//! correct prev_kv and creation events; the same across a SIGKILL of the leader for watchers on
//! the survivors; and leases that survive a leader failover while kept alive, and expire (deleting
//! their keys in one revision) when not.
//!
//! Members run with `--heartbeat-interval 50 --election-timeout 500`; every watcher gets its own
//! connection so that one slow reader's flow control cannot hold back another.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::etcdserverpb::request_op::Request as Op;
use proto::etcdserverpb::response_op::Response as OpResponse;
use proto::etcdserverpb::watch_client::WatchClient;
use proto::etcdserverpb::watch_create_request::FilterType;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
    PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use proto::mvccpb::event::EventType;
use proto::mvccpb::{Event, KeyValue};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// How long a new leader may take after the old one dies: 10 election timeouts.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(10);
/// How long watchers may take, once the writers have stopped, to deliver the last revision.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);
/// A watch stream more revisions behind its client than this has overflowed the store's queue of
/// applied events (`raft_store::storage::APPLIED_EVENTS_QUEUE_MAX`, 4096) even after what the
/// stream's own buffers hold (64 responses queued, a 16 KiB HTTP/2 window, tonic's 32 KiB
/// encoding buffer): its watchers must have been caught up from history.
const SLOW_READER_MUST_LAG_BEYOND: i64 = 4096 + 600;
/// Server-side progress notifications for watchers that ask for them (a store flag).
const PROGRESS_NOTIFY_INTERVAL: &str = "300ms";

// ---------------------------------------------------------------------------------------------
// Events as the tests compare them

/// A key-value as carried by an event (the key is implied by the event).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kv {
    value: String,
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
}

impl Kv {
    fn of(kv: &KeyValue) -> Kv {
        Kv {
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            create: kv.create_revision,
            modified: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    rev: i64,
    put: bool,
    key: String,
    kv: Kv,
    /// (key, value) of prev_kv, when the server sent one.
    prev: Option<(String, Kv)>,
}

impl Ev {
    fn of(e: &Event) -> Ev {
        let kv = e.kv.clone().unwrap_or_default();
        Ev {
            rev: kv.mod_revision,
            put: e.r#type == EventType::Put as i32,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            kv: Kv::of(&kv),
            prev: e.prev_kv.as_ref().map(|p| (String::from_utf8_lossy(&p.key).into_owned(), Kv::of(p))),
        }
    }

    fn short(&self) -> String {
        let kind = if self.put { "PUT" } else { "DEL" };
        let value: String = self.kv.value.chars().take(16).collect();
        format!("@{} {kind} {}={value} (c{} v{})", self.rev, self.key, self.kv.create, self.kv.version)
    }
}

/// What one watch response was, for one watcher.
#[derive(Clone, Debug)]
enum Got {
    /// The watcher exists; the header's revision.
    Created(i64),
    /// Events, with the header's revision.
    Events(i64, Vec<Ev>),
    /// A progress notification (watch ID -1 for a progress request, or the watcher's own ID
    /// without events for a periodic one): nothing at or below this revision is still to come.
    Progress(i64),
    Canceled(String),
}

/// One response as a stream's reader recorded it.
#[derive(Clone, Debug)]
struct Entry {
    /// Which connection of a reconnecting watcher (0 for the others).
    session: usize,
    /// -1 for responses that concern every watcher of the stream (progress).
    watch_id: i64,
    at: Instant,
    got: Got,
}

fn classify(r: &WatchResponse) -> Got {
    let revision = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
    if r.canceled {
        Got::Canceled(format!("{} (compact revision {})", r.cancel_reason, r.compact_revision))
    } else if r.created {
        Got::Created(revision)
    } else if !r.events.is_empty() {
        Got::Events(revision, r.events.iter().map(Ev::of).collect())
    } else {
        Got::Progress(revision)
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

/// What one watcher asks for.
#[derive(Clone, Debug)]
struct WatchSpec {
    name: String,
    key: String,
    /// Empty: the single key.
    range_end: Vec<u8>,
    /// 0: from the revision after the one current at creation.
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

impl WatchSpec {
    fn prefix(name: &str, prefix: &str, start: i64) -> WatchSpec {
        WatchSpec {
            name: name.to_string(),
            key: prefix.to_string(),
            range_end: prefix_end(prefix.as_bytes()),
            start,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
        }
    }

    fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn covers(&self, e: &Ev) -> bool {
        if (e.put && self.no_put) || (!e.put && self.no_delete) {
            return false;
        }
        let key = e.key.as_bytes();
        if self.range_end.is_empty() {
            key == self.key.as_bytes()
        } else {
            key >= self.key.as_bytes() && (self.range_end == [0] || key < self.range_end.as_slice())
        }
    }

    fn create_request(&self, watch_id: i64, start: i64) -> WatchRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.key.as_bytes().to_vec(),
                range_end: self.range_end.clone(),
                start_revision: start,
                progress_notify: self.progress_notify,
                filters,
                prev_kv: self.prev_kv,
                watch_id,
                fragment: false,
            })),
        }
    }
}

/// Where a watch stream connects: a member's client URL, with HTTP/2 flow-control windows of
/// `window` bytes when given, so that a slow reader pushes back on the server quickly instead of
/// being buffered for in the client.
#[derive(Clone)]
struct Target {
    url: String,
    window: Option<u32>,
}

impl Target {
    /// A new connection of its own (no per-call timeout: watch streams are long).
    fn connect(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .expect("a valid client URL")
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .initial_stream_window_size(self.window)
            .initial_connection_window_size(self.window)
            .connect_lazy()
    }
}

fn target(c: &Cluster, i: usize, window: Option<u32>) -> Target {
    Target { url: c.members[i].client_url(), window }
}

/// A connection of its own to member `i`.
fn own_channel(c: &Cluster, i: usize) -> Channel {
    target(c, i, None).connect()
}

/// How a stream's reader behaves.
#[derive(Clone, Default)]
struct ReaderStyle {
    /// Pause after every response while the writers run (a slow consumer).
    slow: Option<Duration>,
    /// Send a progress request this often.
    progress_every: Option<Duration>,
    /// Drop the connection this often while the writers run and resume on the next channel from
    /// the last revision received + 1 (single-watcher streams only).
    reconnect_every: Option<Duration>,
}

/// A watch stream (or, when reconnecting, a sequence of them) read by a background task.
struct Watch {
    specs: Vec<WatchSpec>,
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Why the stream ended, if it did.
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts reading a stream with `specs` (watch IDs 1, 2, ... in order) on a connection to
    /// `targets[0]`; a reconnecting reader opens a new connection to the next target each time.
    /// `running` is true while the writers run.
    fn spawn(targets: Vec<Target>, specs: Vec<WatchSpec>, style: ReaderStyle, running: Arc<AtomicBool>) -> Watch {
        assert!(style.reconnect_every.is_none() || specs.len() == 1, "only single-watcher streams reconnect");
        let entries = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (e, x, s) = (entries.clone(), ended.clone(), specs.clone());
        let task = tokio::spawn(async move {
            let why = read_streams(targets, s, style, running, e).await;
            *x.lock().unwrap() = Some(why);
        });
        Watch { specs, entries, ended, task }
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    /// The entries that concern watcher `index` (its own and the stream-wide ones).
    fn entries_of(&self, index: usize) -> Vec<Entry> {
        let id = index as i64 + 1;
        self.entries().into_iter().filter(|e| e.watch_id == id || e.watch_id == -1).collect()
    }

    fn max_event_revision(&self, index: usize) -> i64 {
        self.entries_of(index)
            .iter()
            .filter_map(|e| match &e.got {
                Got::Events(_, evs) => evs.last().map(|e| e.rev),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn max_progress(&self) -> i64 {
        self.entries()
            .iter()
            .filter_map(|e| match e.got {
                Got::Progress(r) if e.watch_id == -1 => Some(r),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    async fn stop(self) -> (Vec<WatchSpec>, Vec<Entry>, Option<String>) {
        self.task.abort();
        let _ = self.task.await;
        let entries = std::mem::take(&mut *self.entries.lock().unwrap());
        let ended = self.ended.lock().unwrap().clone();
        (self.specs, entries, ended)
    }
}

/// Reads watch streams until the task is aborted; returns why it stopped otherwise.
async fn read_streams(
    targets: Vec<Target>,
    specs: Vec<WatchSpec>,
    style: ReaderStyle,
    running: Arc<AtomicBool>,
    entries: Arc<Mutex<Vec<Entry>>>,
) -> String {
    let mut session = 0;
    // Where the next session of a reconnecting watcher starts.
    let mut resume_from: Option<i64> = None;
    loop {
        let channel = targets[session % targets.len()].connect();
        let (tx, rx) = mpsc::channel::<WatchRequest>(16);
        let mut stream = match WatchClient::new(channel).watch(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return format!("session {session}: cannot open the watch stream: {}", fmt_status(&s)),
        };
        for (i, spec) in specs.iter().enumerate() {
            let start = resume_from.unwrap_or(spec.start);
            if tx.send(spec.create_request(i as i64 + 1, start)).await.is_err() {
                return format!("session {session}: the request stream closed");
            }
        }
        let session_start = resume_from.unwrap_or(specs[0].start);
        let reconnect_at = style.reconnect_every.map(|d| tokio::time::Instant::now() + d);
        let mut progress = style.progress_every.map(|d| tokio::time::interval(d));
        let mut last_event_rev = None;
        loop {
            let reconnect = async {
                match reconnect_at {
                    Some(t) if running.load(Ordering::SeqCst) => tokio::time::sleep_until(t).await,
                    _ => std::future::pending().await,
                }
            };
            let tick = async {
                match progress.as_mut() {
                    Some(p) => {
                        p.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = reconnect => break,
                _ = tick => {
                    let req = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
                    if tx.send(req).await.is_err() {
                        return format!("session {session}: the request stream closed");
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(r)) => {
                        let got = classify(&r);
                        if let Got::Events(_, evs) = &got {
                            last_event_rev = evs.last().map(|e| e.rev);
                        }
                        entries.lock().unwrap().push(Entry { session, watch_id: r.watch_id, at: Instant::now(), got });
                        if let Some(pause) = style.slow {
                            if running.load(Ordering::SeqCst) {
                                tokio::time::sleep(pause).await;
                            }
                        }
                    }
                    Ok(None) => return format!("session {session}: the server ended the stream"),
                    Err(s) => return format!("session {session}: the stream failed: {}", fmt_status(&s)),
                },
            }
        }
        // Reconnect: drop this stream and resume after the last revision received.
        drop(stream);
        drop(tx);
        // (The connection goes with the last clone of its channel.)
        resume_from = Some(last_event_rev.map(|r| r + 1).unwrap_or(session_start));
        session += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The reference history and the checks

/// Every event under a prefix from revision 1 to `end`, read back at the end of a run, validated
/// by replaying it, with each event's previous key-value as the replay knows it.
struct History {
    events: Vec<Ev>,
    end: i64,
}

/// Replays events from an empty key space: checks versions, creation revisions and prev_kv (when
/// present) against the replay, and returns the events with the replay's prev_kv set and the
/// final state.
fn replay(events: &[Ev]) -> Result<(Vec<Ev>, BTreeMap<String, Kv>), String> {
    let mut state: BTreeMap<String, Kv> = BTreeMap::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let old = state.get(&e.key).cloned();
        if let Some((k, p)) = &e.prev {
            if k != &e.key || Some(p) != old.as_ref() {
                return Err(format!("{}: prev_kv is {:?}, the key's previous value is {old:?}", e.short(), e.prev));
            }
        }
        if e.put {
            let (create, version) = match &old {
                Some(o) => (o.create, o.version + 1),
                None => (e.rev, 1),
            };
            if e.kv.create != create || e.kv.version != version || e.kv.modified != e.rev {
                return Err(format!(
                    "{}: expected create_revision {create}, version {version} after {old:?}",
                    e.short()
                ));
            }
            state.insert(e.key.clone(), e.kv.clone());
        } else {
            if old.is_none() {
                return Err(format!("{}: deletes a key that does not exist", e.short()));
            }
            let tomb = Kv { value: String::new(), create: 0, modified: e.rev, version: 0, lease: 0 };
            if e.kv != tomb {
                return Err(format!(
                    "{}: a deletion's key-value should carry only the key and mod_revision: {:?}",
                    e.short(),
                    e.kv
                ));
            }
            state.remove(&e.key);
        }
        out.push(Ev { prev: old.map(|o| (e.key.clone(), o)), ..e.clone() });
    }
    Ok((out, state))
}

/// Flattens a watcher's events.
fn events_of(entries: &[Entry]) -> Vec<Ev> {
    entries
        .iter()
        .flat_map(|e| match &e.got {
            Got::Events(_, evs) => evs.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// What one watcher received, summarised for the report.
#[derive(Debug, Default)]
struct Received {
    events: usize,
    responses: usize,
    /// Responses carrying more than one revision: only a catch-up from history sends those.
    multi_revision_responses: usize,
    progress: usize,
    sessions: usize,
}

/// Checks one watcher's responses against the history: ordered and unique, each revision whole
/// in one response, exactly the history's events for its range, filters and revisions (with or
/// without prev_kv as asked, prev_kv equal to the key's previous value), no event at or below a
/// progress notification after it, creation events exactly those with version 1. With `upto`,
/// only the history up to that revision is expected (a watcher whose member died).
fn check_watcher(
    spec: &WatchSpec,
    entries: &[Entry],
    history: &History,
    upto: Option<i64>,
) -> Result<Received, String> {
    let name = &spec.name;
    let mut received = Received::default();
    let mut start = spec.start;
    // Bookmarks and order.
    let mut floor = 0; // every later event must be above this revision
    let mut last_rev = 0;
    let mut seen: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut response_of_rev: BTreeMap<i64, usize> = BTreeMap::new();
    for (n, entry) in entries.iter().enumerate() {
        match &entry.got {
            Got::Created(rev) => {
                if spec.start == 0 && entry.session == 0 {
                    start = rev + 1;
                    floor = floor.max(*rev);
                }
            }
            Got::Canceled(reason) => return Err(format!("{name}: the watcher was canceled: {reason}")),
            Got::Progress(rev) => {
                received.progress += 1;
                floor = floor.max(*rev);
            }
            Got::Events(header_rev, evs) => {
                received.responses += 1;
                if let Some(e) = evs.iter().find(|e| e.rev > *header_rev) {
                    return Err(format!(
                        "{name}: {} arrived in a response whose header names revision {header_rev}",
                        e.short()
                    ));
                }
                let revs: BTreeSet<i64> = evs.iter().map(|e| e.rev).collect();
                if revs.len() > 1 {
                    received.multi_revision_responses += 1;
                }
                for e in evs {
                    received.events += 1;
                    if e.rev <= floor {
                        return Err(format!(
                            "{name}: {} arrived after a notification that everything up to {floor} had been sent (bookmark broken)",
                            e.short()
                        ));
                    }
                    if e.rev < last_rev {
                        return Err(format!("{name}: {} arrived after an event of revision {last_rev}", e.short()));
                    }
                    last_rev = e.rev;
                    if !seen.insert((e.rev, e.key.clone())) {
                        return Err(format!("{name}: {} arrived twice", e.short()));
                    }
                    if let Some(other) = response_of_rev.insert(e.rev, n) {
                        if other != n {
                            return Err(format!(
                                "{name}: the events of revision {} are split over two responses (not atomic)",
                                e.rev
                            ));
                        }
                    }
                    if e.put && (e.kv.version == 1) != (e.kv.create == e.rev) {
                        return Err(format!(
                            "{name}: {}: version 1 if and only if created at this revision",
                            e.short()
                        ));
                    }
                    if !spec.prev_kv && e.prev.is_some() {
                        return Err(format!("{name}: {} carries a prev_kv it did not ask for", e.short()));
                    }
                }
            }
        }
    }
    received.sessions = entries.iter().map(|e| e.session + 1).max().unwrap_or(0);
    let end = upto.unwrap_or(history.end);
    let expected: Vec<Ev> = history
        .events
        .iter()
        .filter(|e| e.rev >= start && e.rev <= end && spec.covers(e))
        .map(|e| if spec.prev_kv { e.clone() } else { Ev { prev: None, ..e.clone() } })
        .collect();
    let got = events_of(entries);
    if got != expected {
        let first = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        let got_revs: BTreeSet<i64> = got.iter().map(|e| e.rev).collect();
        let exp_revs: BTreeSet<i64> = expected.iter().map(|e| e.rev).collect();
        let missing: Vec<i64> = exp_revs.difference(&got_revs).copied().take(20).collect();
        let extra: Vec<i64> = got_revs.difference(&exp_revs).copied().take(20).collect();
        return Err(format!(
            "{name}: received {} events, the history has {} for it (revisions {start}..={end}); first difference at \
             event #{first}: received {:?}, history {:?}; revisions missing: {missing:?}; revisions not in the \
             history: {extra:?}",
            got.len(),
            expected.len(),
            got.get(first),
            expected.get(first),
        ));
    }
    Ok(received)
}

// ---------------------------------------------------------------------------------------------
// Writers

/// One write as the writers send it, and what it did.
#[derive(Clone, Debug)]
enum Write {
    Put {
        key: String,
        value: String,
    },
    /// Deletes `[key, end)` (or the key alone when `end` is empty).
    Delete {
        key: String,
        end: String,
    },
    /// A conditional transaction: if `if_exists` exists, `then`, else `otherwise`.
    Txn {
        if_exists: String,
        then: Vec<Write>,
        otherwise: Vec<Write>,
    },
}

/// An acknowledged write: the revision its response named and the operations that ran, each
/// with how many keys it changed.
#[derive(Clone, Debug)]
struct Acked {
    writer: usize,
    revision: i64,
    done: Vec<(Write, i64)>,
}

impl Acked {
    fn changed(&self) -> bool {
        self.done.iter().any(|(_, n)| *n > 0)
    }
}

struct WriterLog {
    acked: Vec<Acked>,
    /// Writes whose outcome is unknown (errors, timeouts): they may or may not have happened.
    failed: u64,
    last_error: String,
}

/// xorshift64*
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Keys the writers share.
const KEYS: u64 = 24;

fn key(prefix: &str, k: u64) -> String {
    format!("{prefix}/k{k:02}")
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            prev_kv: false,
        })),
    }
}

/// Draws the next write of writer `w`: puts (values of varying length), single and range
/// deletes, and multi-key conditional transactions mixing puts and deletes of distinct keys.
fn next_write(rng: &mut Rng, prefix: &str, w: usize, seq: u64) -> Write {
    let value = |rng: &mut Rng, tag: &str| {
        let pad = rng.below(400) as usize;
        format!("w{w}-{seq}{tag}-{}", "x".repeat(pad))
    };
    match rng.below(100) {
        0..=44 => Write::Put { key: key(prefix, rng.below(KEYS)), value: value(rng, "") },
        45..=56 => Write::Delete { key: key(prefix, rng.below(KEYS)), end: String::new() },
        57..=61 => {
            let k = rng.below(KEYS - 3);
            Write::Delete { key: key(prefix, k), end: key(prefix, k + 3) }
        }
        _ => {
            // Four distinct keys: the condition's, and three written by one branch or the other.
            let mut ks = BTreeSet::new();
            while ks.len() < 4 {
                ks.insert(rng.below(KEYS));
            }
            let ks: Vec<u64> = ks.into_iter().collect();
            let cond = key(prefix, ks[0]);
            let then = vec![
                Write::Put { key: key(prefix, ks[1]), value: value(rng, "t") },
                Write::Delete { key: key(prefix, ks[2]), end: String::new() },
                Write::Put { key: key(prefix, ks[3]), value: value(rng, "t") },
            ];
            let otherwise = vec![
                Write::Put { key: cond.clone(), value: value(rng, "e") },
                Write::Put { key: key(prefix, ks[2]), value: value(rng, "e") },
            ];
            Write::Txn { if_exists: cond, then, otherwise }
        }
    }
}

/// Sends one write; the revision it names and what each operation changed.
async fn send_write(kv: &mut KvClient<Channel>, write: &Write) -> Result<(i64, Vec<(Write, i64)>), tonic::Status> {
    match write {
        Write::Put { key, value } => {
            let r = kv
                .put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.header.map(|h| h.revision).unwrap_or(0), vec![(write.clone(), 1)]))
        }
        Write::Delete { key, end } => {
            let r = kv
                .delete_range(DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: end.as_bytes().to_vec(),
                    prev_kv: false,
                })
                .await?
                .into_inner();
            Ok((r.header.map(|h| h.revision).unwrap_or(0), vec![(write.clone(), r.deleted)]))
        }
        Write::Txn { if_exists, then, otherwise } => {
            let to_ops = |ws: &[Write]| -> Vec<RequestOp> {
                ws.iter()
                    .map(|w| match w {
                        Write::Put { key, value } => put_op(key, value),
                        Write::Delete { key, end } => delete_op(key, end),
                        Write::Txn { .. } => unreachable!("no nested transactions"),
                    })
                    .collect()
            };
            let req = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Version as i32,
                    key: if_exists.as_bytes().to_vec(),
                    target_union: Some(TargetUnion::Version(0)),
                    range_end: Vec::new(),
                }],
                success: to_ops(then),
                failure: to_ops(otherwise),
            };
            let r = kv.txn(req).await?.into_inner();
            let branch = if r.succeeded { then } else { otherwise };
            if r.responses.len() != branch.len() {
                return Err(tonic::Status::internal(format!(
                    "txn answered {} responses for {} operations",
                    r.responses.len(),
                    branch.len()
                )));
            }
            let done = branch
                .iter()
                .zip(&r.responses)
                .map(|(w, resp)| {
                    let n = match &resp.response {
                        Some(OpResponse::ResponseDeleteRange(d)) => d.deleted,
                        _ => 1,
                    };
                    (w.clone(), n)
                })
                .collect();
            Ok((r.header.map(|h| h.revision).unwrap_or(0), done))
        }
    }
}

/// A writer: keeps `inflight` random writes on the shared prefix outstanding through
/// `channels[0]` (moving to the next channel after a failure) until `stop` or `max_writes`, and
/// logs what was acknowledged.
fn spawn_writer(
    w: usize,
    channels: Vec<Channel>,
    prefix: &str,
    max_writes: u64,
    inflight: usize,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<WriterLog> {
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
        let mut log = WriterLog { acked: Vec::new(), failed: 0, last_error: String::new() };
        let mut target = 0;
        let mut seq = 0;
        let mut pending = tokio::task::JoinSet::new();
        loop {
            while pending.len() < inflight && seq < max_writes && !stop.load(Ordering::SeqCst) {
                let write = next_write(&mut rng, &prefix, w, seq);
                seq += 1;
                let mut kv = KvClient::new(channels[target % channels.len()].clone());
                pending.spawn(async move { tokio::time::timeout(RPC_TIMEOUT, send_write(&mut kv, &write)).await });
            }
            let Some(result) = pending.join_next().await else { break };
            match result.expect("a write task panicked") {
                Ok(Ok((revision, done))) => {
                    log.acked.push(Acked { writer: w, revision, done });
                    acked_total.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Err(s)) => {
                    log.failed += 1;
                    log.last_error = fmt_status(&s);
                    target += 1;
                    // Do not spin on an unavailable member.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    log.failed += 1;
                    log.last_error = format!("no answer within {RPC_TIMEOUT:?}");
                    target += 1;
                }
            }
        }
        log
    })
}

/// Checks every acknowledged write against the history: a write that changed something owns its
/// revision, whose events are exactly its operations in order (puts with their values, deletes
/// of keys in their ranges, as many as it reported); no two writes own one revision; and at most
/// `unknown` revisions (writes whose outcome the writers could not learn) belong to none.
fn check_writes(acked: &[Acked], history: &History, first: i64, unknown: u64) -> Result<(), String> {
    let mut by_rev: BTreeMap<i64, Vec<&Ev>> = BTreeMap::new();
    for e in &history.events {
        by_rev.entry(e.rev).or_default().push(e);
    }
    let mut owners: BTreeMap<i64, &Acked> = BTreeMap::new();
    for a in acked.iter().filter(|a| a.changed()) {
        if let Some(other) = owners.insert(a.revision, a) {
            return Err(format!("two acknowledged writes name revision {}: {other:?} and {a:?}", a.revision));
        }
        let events = by_rev.get(&a.revision).cloned().unwrap_or_default();
        let mut i = 0;
        for (op, n) in &a.done {
            match op {
                Write::Put { key, value } => {
                    let ok = events.get(i).is_some_and(|e| e.put && &e.key == key && &e.kv.value == value);
                    if !ok {
                        return Err(format!(
                            "acknowledged put of {key} (writer {}) at revision {}: the history has {:?} there",
                            a.writer,
                            a.revision,
                            events.iter().map(|e| e.short()).collect::<Vec<_>>()
                        ));
                    }
                    i += 1;
                }
                Write::Delete { key, end } => {
                    for _ in 0..*n {
                        let ok = events.get(i).is_some_and(|e| {
                            !e.put && (if end.is_empty() { &e.key == key } else { &e.key >= key && &e.key < end })
                        });
                        if !ok {
                            return Err(format!(
                                "acknowledged delete of [{key}, {end}) ({n} keys, writer {}) at revision {}: the history \
                                 has {:?} there",
                                a.writer,
                                a.revision,
                                events.iter().map(|e| e.short()).collect::<Vec<_>>()
                            ));
                        }
                        i += 1;
                    }
                }
                Write::Txn { .. } => unreachable!("done holds single operations"),
            }
        }
        if i != events.len() {
            return Err(format!(
                "revision {} has {} events, the acknowledged write that made it ({:?}) only {i}",
                a.revision,
                events.len(),
                a
            ));
        }
    }
    let unowned: Vec<i64> = (first..=history.end).filter(|r| !owners.contains_key(r)).collect();
    if unowned.len() as u64 > unknown {
        return Err(format!(
            "{} revisions in {first}..={} belong to no acknowledged write, but only {unknown} writes had an unknown \
             outcome; first: {:?}",
            unowned.len(),
            history.end,
            &unowned[..unowned.len().min(20)]
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the tests

/// The head revision and the keys under `prefix`, from a linearizable read through member `i`.
async fn linearizable_view(c: &Cluster, i: usize, prefix: &str) -> Result<(i64, Snapshot), String> {
    let resp = range(&mut c.kv(i), prefix_range(prefix, false))
        .await
        .map_err(|s| format!("{}: linearizable read: {}", c.members[i].name, fmt_status(&s)))?;
    Ok((resp.header.as_ref().map(|h| h.revision).unwrap_or(0), snapshot_of(&resp)))
}

/// Reads the whole history under `prefix` from member `i` with a watcher from revision 1, up to
/// `end`: complete once a progress notification at or above `end` arrived (everything up to it
/// has then been sent), and checked for order, atomicity and consistency by replaying it.
async fn read_history(c: &Cluster, i: usize, prefix: &str, end: i64) -> (History, BTreeMap<String, Kv>) {
    let spec = WatchSpec::prefix(&format!("history from {}", c.members[i].name), prefix, 1).with_prev_kv();
    let style = ReaderStyle { progress_every: Some(Duration::from_millis(100)), ..Default::default() };
    let w = Watch::spawn(vec![target(c, i, None)], vec![spec.clone()], style, Arc::new(AtomicBool::new(false)));
    let what = format!("a watcher from revision 1 on {} has everything up to {end}", c.members[i].name);
    let w = &w;
    wait_until(&what, within(DRAIN_WITHIN), move || async move {
        if let Some(why) = w.ended() {
            panic!("the history watcher stopped: {why}");
        }
        let p = w.max_progress();
        if p >= end {
            Ok(())
        } else {
            Err(format!("last progress notification at {p}, last event at {}", w.max_event_revision(0)))
        }
    })
    .await;
    let entries = w.entries_of(0);
    let events: Vec<Ev> = events_of(&entries).into_iter().filter(|e| e.rev <= end).collect();
    // Validate the order, atomicity and uniqueness of the history stream itself.
    let provisional = History { events: events.clone(), end };
    check_watcher(&spec, &entries, &provisional, None).unwrap_or_else(|e| panic!("history stream: {e}"));
    let (events, state) = replay(&events).unwrap_or_else(|e| panic!("history from {}: {e}", c.members[i].name));
    (History { events, end }, state)
}

/// Checks that the history's final state is what a linearizable read at the end returns.
fn check_final_state(state: &BTreeMap<String, Kv>, view: &Snapshot) -> Result<(), String> {
    let replayed: Snapshot =
        state.iter().map(|(k, v)| (k.clone(), (v.value.clone(), v.modified, v.create, v.version))).collect();
    if &replayed != view {
        let keys: BTreeSet<&String> = replayed.keys().chain(view.keys()).collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter(|k| replayed.get(*k) != view.get(*k))
            .take(5)
            .map(|k| format!("{k}: history {:?}, read {:?}", replayed.get(k), view.get(k)))
            .collect();
        return Err(format!("replaying the history does not give the final state: {diff:?}"));
    }
    Ok(())
}

/// Waits until watcher `i` of `w` has received the last event of the history it covers (or its
/// stream ended, or `DRAIN_WITHIN` passed: the comparison that follows then says what is missing).
async fn wait_drained(w: &Watch, i: usize, history: &History) {
    let spec = &w.specs[i];
    let last = history.events.iter().filter(|e| spec.covers(e)).map(|e| e.rev).max().unwrap_or(0);
    let deadline = within(DRAIN_WITHIN);
    while w.max_event_revision(i) < last && w.ended().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if w.max_event_revision(i) < last {
        eprintln!("{} has not received revision {last} (its last: {})", spec.name, w.max_event_revision(i));
    }
}

/// Waits until `members` agree on a leader other than member `old` (just killed: the survivors
/// name it until their election timeout passes); the new leader's index.
async fn new_leader(c: &Cluster, members: &[usize], old: usize) -> usize {
    let old_id = c.members[old].id;
    let id = wait_until("the survivors agree on a new leader", within(NEW_LEADER_WITHIN), || async {
        let l = c.agreed_leader(members).await?;
        if Some(l) == old_id {
            Err("they still name the killed leader".to_string())
        } else {
            Ok(l)
        }
    })
    .await;
    c.index_of(id)
}

fn summarise(name: &str, r: &Received) -> String {
    format!(
        "{name}: {} events in {} responses ({} of several revisions), {} progress, {} session(s)",
        r.events, r.responses, r.multi_revision_responses, r.progress, r.sessions
    )
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Goal: etcd's watch guarantees hold under concurrent writers. Four writers put, delete and run
/// multi-key transactions on a shared prefix through all three members; meanwhile watchers on
/// every member — a slow reader on a small flow-control window (the server must hold its stream
/// back and catch it up), two with prev_kv, one with NOPUT and one with NODELETE, a watcher that
/// drops its connection every ~1.5 s and resumes on another member from its last revision + 1, a
/// watcher that sends progress requests and receives periodic progress notifications, and a
/// single-key watcher sharing a stream — record everything. At the end the full history is read
/// back from two members (identical, consistent when replayed, equal to a final linearizable
/// read, and matching every acknowledged write) and each watcher must have received exactly its
/// part of it: in order, no duplicate, each revision in one response, no gap, prev_kv equal to
/// the previous value, nothing at or below a progress notification after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees_under_concurrent_writers() {
    let started = Instant::now();
    let c = Cluster::start_with_flags(
        3,
        Options::default(),
        &["--experimental-watch-progress-notify-interval", PROGRESS_NOTIFY_INTERVAL],
    )
    .await;
    let prefix = "wg";
    let (base, _) = linearizable_view(&c, 0, prefix).await.expect("initial read");
    let first = base + 1;
    let running = Arc::new(AtomicBool::new(true));

    let slow = ReaderStyle { slow: Some(Duration::from_millis(100)), ..Default::default() };
    let mut watches = Vec::new();
    watches.push(Watch::spawn(
        vec![target(&c, 0, Some(16 * 1024))],
        vec![WatchSpec::prefix("slow reader on n1", prefix, first)],
        slow,
        running.clone(),
    ));
    watches.push(Watch::spawn(
        vec![target(&c, 1, None)],
        vec![
            WatchSpec::prefix("prev_kv on n2", prefix, first).with_prev_kv(),
            WatchSpec {
                range_end: Vec::new(),
                ..WatchSpec::prefix("single key k07 on n2 (same stream)", &key(prefix, 7), first).with_prev_kv()
            },
        ],
        ReaderStyle::default(),
        running.clone(),
    ));
    watches.push(Watch::spawn(
        vec![target(&c, 2, None)],
        vec![WatchSpec {
            no_put: true,
            ..WatchSpec::prefix("NOPUT (deletes only) on n3", prefix, first).with_prev_kv()
        }],
        ReaderStyle::default(),
        running.clone(),
    ));
    watches.push(Watch::spawn(
        vec![target(&c, 0, None)],
        vec![WatchSpec {
            no_delete: true,
            range_end: key(prefix, 12).into_bytes(),
            ..WatchSpec::prefix("NODELETE on k00..k11 on n1", &key(prefix, 0), first)
        }],
        ReaderStyle::default(),
        running.clone(),
    ));
    watches.push(Watch::spawn(
        vec![target(&c, 1, None), target(&c, 2, None), target(&c, 0, None)],
        vec![WatchSpec::prefix("reconnecting n2→n3→n1→…", prefix, first).with_prev_kv()],
        ReaderStyle { reconnect_every: Some(Duration::from_millis(1500)), ..Default::default() },
        running.clone(),
    ));
    watches.push(Watch::spawn(
        vec![target(&c, 2, None)],
        vec![WatchSpec { progress_notify: true, ..WatchSpec::prefix("progress, from now, on n3", prefix, 0) }],
        ReaderStyle { progress_every: Some(Duration::from_millis(150)), ..Default::default() },
        running.clone(),
    ));
    // Every watcher exists before the first write.
    for w in &watches {
        let what = format!("{} is created", w.specs[0].name);
        wait_until(&what, within(Duration::from_secs(10)), || async {
            let created = w.entries().iter().filter(|e| matches!(e.got, Got::Created(_))).count();
            if let Some(why) = w.ended() {
                panic!("{what}: the stream ended: {why}");
            }
            if created >= w.specs.len() {
                Ok(())
            } else {
                Err(format!("{created} created"))
            }
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| spawn_writer(w, vec![c.channel(w % 3)], prefix, 1_600, 8, stop.clone(), acked_total.clone()))
        .collect();
    let writes_started = Instant::now();
    // Bounded in time as well as in count.
    let _ = tokio::time::timeout(Duration::from_secs(25), async {
        while !writers.iter().all(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut unknown = 0;
    for h in writers {
        let log = h.await.expect("a writer panicked");
        assert!(log.failed == 0, "a write failed on a healthy cluster: {} ({} failures)", log.last_error, log.failed);
        unknown += log.failed;
        acked.extend(log.acked);
    }
    let write_time = writes_started.elapsed();
    running.store(false, Ordering::SeqCst);
    let writes_ended = Instant::now();

    let (end, view) = linearizable_view(&c, 0, prefix).await.expect("final read");
    eprintln!(
        "{} acknowledged writes, revisions {first}..={end} ({:.0}/s) in {write_time:?}",
        acked.len(),
        (end - base) as f64 / write_time.as_secs_f64()
    );
    let (history, state) = read_history(&c, 0, prefix, end).await;
    let (other, _) = read_history(&c, 1, prefix, end).await;
    assert!(history.events == other.events, "n1 and n2 serve different histories");
    check_final_state(&state, &view).unwrap();
    check_writes(&acked, &history, first, unknown).unwrap();

    for w in &watches {
        for i in 0..w.specs.len() {
            wait_drained(w, i, &history).await;
        }
    }
    let mut problems = Vec::new();
    for w in watches {
        let (specs, entries, ended) = w.stop().await;
        if let Some(why) = ended {
            problems.push(format!("{}: the stream ended: {why}", specs[0].name));
        }
        for (i, spec) in specs.iter().enumerate() {
            let id = i as i64 + 1;
            let mine: Vec<Entry> = entries.iter().filter(|e| e.watch_id == id || e.watch_id == -1).cloned().collect();
            match check_watcher(spec, &mine, &history, None) {
                Ok(r) => {
                    eprintln!("{}", summarise(&spec.name, &r));
                    if spec.progress_notify && r.progress == 0 {
                        problems.push(format!("{}: no progress notification arrived", spec.name));
                    }
                    if spec.name.starts_with("slow") {
                        // How far behind the slow reader was when the writers stopped. Past the
                        // applied-events queue plus what the stream's buffers hold, its stream
                        // must have been caught up from history: responses of several revisions.
                        let read = mine
                            .iter()
                            .filter(|e| e.at <= writes_ended)
                            .filter_map(|e| match &e.got {
                                Got::Events(_, evs) => evs.last().map(|e| e.rev),
                                _ => None,
                            })
                            .max()
                            .unwrap_or(base);
                        let behind = end - read;
                        eprintln!("{}: {behind} revisions behind when the writers stopped", spec.name);
                        if behind > SLOW_READER_MUST_LAG_BEYOND && r.multi_revision_responses == 0 {
                            problems.push(format!(
                                "{}: {behind} revisions behind, yet never caught up from history (no response of \
                                 several revisions)",
                                spec.name
                            ));
                        }
                    }
                    if spec.name.starts_with("reconnecting") && r.sessions < 3 {
                        problems.push(format!("{}: only {} sessions", spec.name, r.sessions));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }
    assert!(problems.is_empty(), "watch guarantees violated:\n{}", problems.join("\n"));
    eprintln!("watch_guarantees_under_concurrent_writers took {:?}", started.elapsed());
}

/// Goal: a leader's death is invisible to watchers on the other members. Writers run through all
/// three members (moving to another member after a failure); watchers on both followers — one
/// with prev_kv, one NODELETE sending progress requests — and one on the leader. The leader is
/// SIGKILLed mid-run, writes continue through the survivors under the new leader, then stop. The
/// survivors' watch streams must not break and must hold exactly the history read back at the
/// end (no gap, no duplicate, in order, atomic); the history must contain every acknowledged
/// write (writes with an unknown outcome may or may not be there); the dead leader's watcher
/// must have received a gapless prefix of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_survivors_see_no_gap_when_the_leader_is_killed() {
    let started = Instant::now();
    let mut c = Cluster::start(3, Options::default()).await;
    let prefix = "wk";
    let all = [0, 1, 2];
    let leader = c.leader_index(&all, within(NEW_LEADER_WITHIN)).await;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let (base, _) = linearizable_view(&c, followers[0], prefix).await.expect("initial read");
    let first = base + 1;
    let running = Arc::new(AtomicBool::new(true));

    let on_f0 = Watch::spawn(
        vec![target(&c, followers[0], None)],
        vec![WatchSpec::prefix(&format!("prev_kv on follower {}", c.members[followers[0]].name), prefix, first)
            .with_prev_kv()],
        ReaderStyle::default(),
        running.clone(),
    );
    let on_f1 = Watch::spawn(
        vec![target(&c, followers[1], None)],
        vec![WatchSpec {
            no_delete: true,
            ..WatchSpec::prefix(
                &format!("NODELETE + progress on follower {}", c.members[followers[1]].name),
                prefix,
                first,
            )
        }],
        ReaderStyle { progress_every: Some(Duration::from_millis(150)), ..Default::default() },
        running.clone(),
    );
    let on_leader = Watch::spawn(
        vec![target(&c, leader, None)],
        vec![WatchSpec::prefix(&format!("on the leader {}", c.members[leader].name), prefix, first).with_prev_kv()],
        ReaderStyle::default(),
        running.clone(),
    );
    for w in [&on_f0, &on_f1, &on_leader] {
        wait_until("the watchers are created", within(Duration::from_secs(10)), || async {
            if w.entries().iter().any(|e| matches!(e.got, Got::Created(_))) {
                Ok(())
            } else {
                Err(format!("not yet; ended: {:?}", w.ended()))
            }
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let routes =
        [vec![followers[0], followers[1]], vec![followers[1], followers[0]], vec![leader, followers[0], followers[1]]];
    let writers: Vec<_> = routes
        .iter()
        .enumerate()
        .map(|(w, route)| {
            let channels = route.iter().map(|&i| c.channel(i)).collect();
            spawn_writer(w, channels, prefix, 100_000, 2, stop.clone(), acked_total.clone())
        })
        .collect();
    let progress = |n: u64, what: &'static str| {
        let acked_total = acked_total.clone();
        let target = acked_total.load(Ordering::SeqCst) + n;
        async move {
            wait_until(what, within(Duration::from_secs(20)), || async {
                let now = acked_total.load(Ordering::SeqCst);
                if now >= target {
                    Ok(())
                } else {
                    Err(format!("{now} of {target} acknowledged"))
                }
            })
            .await
        }
    };
    progress(200, "200 writes are acknowledged before the failure").await;
    let rev_before_kill = linearizable_view(&c, followers[0], prefix).await.expect("read").0;
    c.kill(leader);
    let killed = Instant::now();
    let new_leader = new_leader(&c, &followers, leader).await;
    eprintln!(
        "killed {} at revision ≥ {rev_before_kill}; {} leads after {:?}",
        c.members[leader].name,
        c.members[new_leader].name,
        killed.elapsed()
    );
    progress(200, "200 more writes are acknowledged after the failover").await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut unknown = 0;
    for h in writers {
        let log = h.await.expect("a writer panicked");
        if log.failed > 0 {
            eprintln!("a writer had {} writes with an unknown outcome; last: {}", log.failed, log.last_error);
        }
        unknown += log.failed;
        acked.extend(log.acked);
    }
    running.store(false, Ordering::SeqCst);

    let (end, view) = linearizable_view(&c, followers[0], prefix).await.expect("final read");
    let (history, state) = read_history(&c, followers[0], prefix, end).await;
    let (other, _) = read_history(&c, followers[1], prefix, end).await;
    assert!(history.events == other.events, "the survivors serve different histories");
    check_final_state(&state, &view).unwrap();
    check_writes(&acked, &history, first, unknown).unwrap();
    assert!(history.events.iter().any(|e| e.rev > rev_before_kill), "no write after the failover reached the history");

    let mut problems = Vec::new();
    for w in [on_f0, on_f1] {
        let spec = w.specs[0].clone();
        wait_drained(&w, 0, &history).await;
        let (specs, entries, ended) = w.stop().await;
        if let Some(why) = ended {
            problems.push(format!("{}: the stream on a survivor ended: {why}", specs[0].name));
        }
        match check_watcher(&spec, &entries, &history, None) {
            Ok(r) => eprintln!("{}", summarise(&spec.name, &r)),
            Err(e) => problems.push(e),
        }
    }
    let (specs, entries, ended) = on_leader.stop().await;
    let reached = events_of(&entries).last().map(|e| e.rev).unwrap_or(first - 1);
    match check_watcher(&specs[0], &entries, &history, Some(reached)) {
        Ok(r) => eprintln!("{} (up to revision {reached}; ended: {ended:?})", summarise(&specs[0].name, &r)),
        Err(e) => problems.push(e),
    }
    assert!(problems.is_empty(), "watch guarantees violated across the failover:\n{}", problems.join("\n"));
    eprintln!("watchers_on_survivors_see_no_gap_when_the_leader_is_killed took {:?}", started.elapsed());
}

/// What a keep-alive client observed.
#[derive(Default)]
struct KeepAlives {
    /// (when, TTL) of every answer.
    answers: Vec<(Instant, i64)>,
    errors: u64,
    last_error: String,
}

/// Keeps lease `id` alive through `channel` every `every`, re-opening the stream after an error.
fn spawn_keep_alive(
    channel: Channel,
    id: i64,
    every: Duration,
    log: Arc<Mutex<KeepAlives>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (tx, rx) = mpsc::channel(4);
            let opened = LeaseClient::new(channel.clone()).lease_keep_alive(ReceiverStream::new(rx)).await;
            let mut stream = match opened {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    {
                        let mut l = log.lock().unwrap();
                        l.errors += 1;
                        l.last_error = format!("open: {}", fmt_status(&s));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            loop {
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(Ok(Some(r))) => log.lock().unwrap().answers.push((Instant::now(), r.ttl)),
                    other => {
                        let mut l = log.lock().unwrap();
                        l.errors += 1;
                        l.last_error = match other {
                            Ok(Ok(None)) => "the server ended the stream".into(),
                            Ok(Err(s)) => fmt_status(&s),
                            _ => "no answer within 5 s".into(),
                        };
                        break;
                    }
                }
                tokio::time::sleep(every).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Goal: leases are kept by whichever member leads. Two leases of 10 s (20 election timeouts)
/// are granted with two keys each, plus a key without lease; lease A is kept alive every second
/// from a client connected to a follower (the keep-alive stream re-opened after any error), lease
/// B is not. The leader is SIGKILLed right after. B must expire under the new leader — its keys
/// deleted in one revision that a watcher on the other survivor sees — no sooner than its TTL
/// after the failover (a new leader starts every lease afresh) and within TTL + 3 s of the new
/// leader's election; A's keys must still be there well over one TTL after the failover, with
/// A still listed and its time-to-live positive, because the keep-alives reached the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_leader_failover() {
    const TTL: i64 = 10;
    let ttl = Duration::from_secs(TTL as u64);
    let started = Instant::now();
    let mut c = Cluster::start(3, Options::default()).await;
    let prefix = "ls";
    let all = [0, 1, 2];
    let leader = c.leader_index(&all, within(NEW_LEADER_WITHIN)).await;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let (client, watcher_member) = (followers[0], followers[1]);

    let (base, _) = linearizable_view(&c, client, prefix).await.expect("initial read");
    let watch = Watch::spawn(
        vec![target(&c, watcher_member, None)],
        vec![WatchSpec::prefix("lease watcher", prefix, base + 1).with_prev_kv()],
        ReaderStyle::default(),
        Arc::new(AtomicBool::new(false)),
    );

    let mut leases = LeaseClient::new(c.channel(client));
    let mut kv = c.kv(client);
    let grant = |leases: &mut LeaseClient<Channel>| {
        let mut leases = leases.clone();
        async move {
            let r = leases.lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 }).await.expect("LeaseGrant").into_inner();
            assert_eq!(r.ttl, TTL, "granted TTL");
            assert!(r.id > 0, "lease ID {}", r.id);
            r.id
        }
    };
    let a = grant(&mut leases).await;
    let b = grant(&mut leases).await;
    for (k, lease) in [("a1", a), ("a2", a), ("b1", b), ("b2", b), ("plain", 0)] {
        kv.put(PutRequest {
            key: format!("{prefix}/{k}").into_bytes(),
            value: format!("value of {k}").into_bytes(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("put {k}: {}", fmt_status(&s)));
    }
    let keep_alives = Arc::new(Mutex::new(KeepAlives::default()));
    let keeper = spawn_keep_alive(own_channel(&c, client), a, Duration::from_secs(1), keep_alives.clone());
    wait_until("the first keep-alive is answered", within(Duration::from_secs(5)), || async {
        let l = keep_alives.lock().unwrap();
        match l.answers.first() {
            Some((_, t)) if *t == TTL => Ok(()),
            Some((_, t)) => panic!("the first keep-alive answered TTL {t}"),
            None => Err(format!("{} errors; last: {}", l.errors, l.last_error)),
        }
    })
    .await;

    c.kill(leader);
    let killed = Instant::now();
    let new_leader = new_leader(&c, &followers, leader).await;
    let elected = Instant::now();
    eprintln!("killed {}; {} leads after {:?}", c.members[leader].name, c.members[new_leader].name, elected - killed);

    // B expires under the new leader: both keys in one revision.
    let (b1, b2) = (format!("{prefix}/b1"), format!("{prefix}/b2"));
    let watch = &watch;
    let deletion = wait_until(
        "the lease that is not kept alive expires and its keys' deletion is watched",
        elected + ttl + Duration::from_secs(3),
        || async move {
            for e in watch.entries_of(0) {
                if let Got::Events(_, evs) = &e.got {
                    let deleted: Vec<&Ev> = evs.iter().filter(|ev| !ev.put).collect();
                    if !deleted.is_empty() {
                        return Ok((e.at, deleted.into_iter().cloned().collect::<Vec<Ev>>()));
                    }
                }
            }
            Err(format!("no deletion yet; watcher ended: {:?}", watch.ended()))
        },
    )
    .await;
    let (deleted_at, deleted) = deletion;
    let keys: Vec<&str> = deleted.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [b1.as_str(), b2.as_str()], "the expiry must delete B's two keys, and only them, in one response");
    assert_eq!(deleted[0].rev, deleted[1].rev, "B's keys must go in one revision");
    for e in &deleted {
        let prev = e.prev.as_ref().map(|(_, kv)| (kv.value.clone(), kv.lease));
        let name = e.key.rsplit('/').next().unwrap();
        assert_eq!(prev, Some((format!("value of {name}"), b)), "prev_kv of the deletion of {}", e.key);
    }
    let since_kill = deleted_at - killed;
    eprintln!("B's keys deleted {since_kill:?} after the kill, {:?} after the election", deleted_at - elected);
    assert!(
        since_kill + Duration::from_millis(500) >= ttl,
        "lease B expired {since_kill:?} after the leader was killed: a new leader must give every lease its full TTL"
    );

    // A is still alive well over a TTL after the failover: the keep-alives reach the new leader.
    let check_at = (killed + ttl + Duration::from_millis(2_500)).max(deleted_at + Duration::from_secs(1));
    tokio::time::sleep_until(tokio::time::Instant::from_std(check_at)).await;
    let (_, view) = linearizable_view(&c, client, prefix).await.expect("read after the TTL");
    let present: Vec<&str> = view.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        present,
        [format!("{prefix}/a1"), format!("{prefix}/a2"), format!("{prefix}/plain")]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        "{:?} after the failover, A's keys (kept alive) and the plain key must remain, B's must be gone",
        killed.elapsed()
    );
    let ttl_a = leases
        .lease_time_to_live(LeaseTimeToLiveRequest { id: a, keys: true })
        .await
        .expect("TimeToLive A")
        .into_inner();
    assert!(ttl_a.ttl > 0 && ttl_a.ttl <= TTL, "A's remaining TTL is {}", ttl_a.ttl);
    assert_eq!(ttl_a.granted_ttl, TTL);
    let mut a_keys: Vec<String> = ttl_a.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    a_keys.sort();
    assert_eq!(a_keys, [format!("{prefix}/a1"), format!("{prefix}/a2")]);
    let ttl_b = leases
        .lease_time_to_live(LeaseTimeToLiveRequest { id: b, keys: false })
        .await
        .expect("TimeToLive B")
        .into_inner();
    assert_eq!(ttl_b.ttl, -1, "B has expired");
    let listed: BTreeSet<i64> = leases
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("LeaseLeases")
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(listed.contains(&a) && !listed.contains(&b), "leases listed: {listed:?}");
    {
        let l = keep_alives.lock().unwrap();
        let after: Vec<i64> = l.answers.iter().filter(|(t, _)| *t > elected).map(|(_, ttl)| *ttl).collect();
        assert!(!after.is_empty(), "no keep-alive answered after the election; last error: {}", l.last_error);
        assert!(after.iter().all(|t| *t == TTL), "keep-alive answers after the election: {after:?}");
        eprintln!("{} keep-alives answered, {} errors (last: {})", l.answers.len(), l.errors, l.last_error);
    }
    keeper.abort();
    // The watcher saw nothing but B's deletion after the puts.
    let events = events_of(&watch.entries_of(0));
    let deletions: Vec<String> = events.iter().filter(|e| !e.put).map(|e| e.short()).collect();
    assert_eq!(deletions.len(), 2, "deletions watched: {deletions:?}");
    eprintln!("leases_survive_leader_failover took {:?}", started.elapsed());
}
