//! Watcher clients: follow a prefix from a start revision and record every response; when the
//! stream breaks, reconnect to another member from the last revision seen + 1 (a new session).

use std::time::{Duration, Instant};

use proto::etcdserverpb::watch_client::WatchClient;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use crate::checker::watch::{EventKind, WatchDelivery, WatchedEvent, WatcherSpec};
use crate::client::channel;

/// Requests queued on one watch stream (a create, then progress requests).
const WATCH_REQUESTS_QUEUE_MAX: usize = 16;
/// How often a watcher asks for a progress notification.
pub const PROGRESS_REQUEST_INTERVAL_MS: u64 = 1_000;
/// A stream that answered nothing (no event, no progress) for this long is given up.
const STALL_MS: u64 = 5 * PROGRESS_REQUEST_INTERVAL_MS;
/// Pause before reconnecting after a broken stream.
const RECONNECT_PAUSE_MS: u64 = 100;

/// The end of a key prefix's range; the empty prefix ranges over every key.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn convert(e: &proto::mvccpb::Event) -> WatchedEvent {
    let kv = e.kv.clone().unwrap_or_default();
    let kind = if e.r#type == EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put };
    WatchedEvent {
        kind,
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: if kind == EventKind::Put { Some(String::from_utf8_lossy(&kv.value).into_owned()) } else { None },
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
        version: kv.version,
        prev_value: e.prev_kv.as_ref().map(|p| String::from_utf8_lossy(&p.value).into_owned()),
    }
}

/// How a watcher follows its keys.
#[derive(Clone, Copy, Debug)]
pub struct FollowOpts {
    /// Stop once an event at or past this revision has arrived (the reference watch).
    pub until_event_revision: Option<i64>,
    /// Whether a progress notification proves that everything below it was delivered, so that a
    /// new session may resume after it. Not so for etcd before the fix of its issue 15220.
    pub trust_progress: bool,
}

/// Follows `spec` until `until` (or, with `until_event_revision`, until an event at or past it),
/// reconnecting across `endpoints`; returns every delivery.
pub async fn follow(
    spec: WatcherSpec,
    endpoints: Vec<String>,
    start: Instant,
    until: Instant,
    opts: FollowOpts,
) -> Vec<WatchDelivery> {
    let mut deliveries: Vec<WatchDelivery> = Vec::new();
    let mut next = spec.start_revision;
    let mut session = 0u32;
    let mut member = spec.watcher as usize % endpoints.len().max(1);
    'sessions: while Instant::now() < until {
        session += 1;
        let Ok(ch) = channel(&endpoints[member]) else { break };
        member = (member + 1) % endpoints.len();
        let mut client = WatchClient::new(ch);
        let (tx, rx) = mpsc::channel(WATCH_REQUESTS_QUEUE_MAX);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                // The empty prefix is every key: etcd's range from "\0" to "\0".
                key: if spec.prefix.is_empty() { vec![0] } else { spec.prefix.clone().into_bytes() },
                range_end: prefix_end(&spec.prefix),
                start_revision: next,
                prev_kv: spec.prev_kv,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            break;
        }
        let mut stream = match client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(watcher = spec.watcher, error = %e, "watch did not open; trying another member");
                tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                continue;
            }
        };
        let mut progress = tokio::time::interval(Duration::from_millis(PROGRESS_REQUEST_INTERVAL_MS));
        // A member that is paused (or cut off from the client) answers nothing, not even progress
        // requests: after that long without a response the watcher moves to another member.
        let mut heard = Instant::now();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = progress.tick() => {
                    if heard.elapsed() >= Duration::from_millis(STALL_MS) {
                        tracing::debug!(watcher = spec.watcher, "watch stream silent; trying another member");
                        continue 'sessions;
                    }
                    let req = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
                    // Full: earlier requests are still unanswered, and the stall check handles that.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(req) {
                        continue 'sessions;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(until.into()) => break 'sessions,
            };
            heard = Instant::now();
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(RECONNECT_PAUSE_MS)).await;
                    continue 'sessions;
                }
            };
            if resp.created && resp.events.is_empty() && !resp.canceled {
                continue;
            }
            let header_revision = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
            let progress_only = resp.events.is_empty() && !resp.canceled;
            let events: Vec<WatchedEvent> = resp.events.iter().map(convert).collect();
            if let Some(last) = events.last() {
                next = last.mod_revision + 1;
            }
            if progress_only && opts.trust_progress {
                // Nothing at or below a progress notification is still to come.
                next = next.max(header_revision + 1);
            }
            deliveries.push(WatchDelivery {
                watcher: spec.watcher,
                session,
                time_ns: start.elapsed().as_nanos() as u64,
                header_revision,
                progress: progress_only,
                events,
            });
            if resp.canceled {
                tracing::warn!(watcher = spec.watcher, reason = %resp.cancel_reason, "watch canceled by the server");
                break 'sessions;
            }
            if opts.until_event_revision.is_some_and(|r| next > r) {
                break 'sessions;
            }
        }
    }
    deliveries
}
