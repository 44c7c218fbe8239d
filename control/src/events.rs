//! Writes Kubernetes Events for the control-plane loops, as client-go's recorder does: off the
//! caller's path (a bounded queue; when it is full, events are dropped and counted rather than
//! slowing scheduling down), and a repeat of the same event for the same object within
//! `AGGREGATION_WINDOW` updates the first one's count and lastTimestamp instead of adding one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

/// Events waiting to be written.
pub const EVENTS_QUEUED_MAX: usize = 4096;
/// Tasks writing events at once.
const WRITERS: usize = 4;
/// Repeats within this window are counted on one Event.
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);
/// Distinct events remembered for aggregation; beyond it the memory starts over.
const AGGREGATION_ENTRIES_MAX: usize = 4096;

struct Pending {
    regarding: ObjectReference,
    warning: bool,
    action: &'static str,
    reason: String,
    message: String,
}

type Key = (String, String, String, String);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
    dropped: Arc<AtomicU64>,
}

struct Seen {
    name: String,
    count: i32,
    first: Instant,
}

impl Recorder {
    /// Starts the writers; events name `component` (e.g. "default-scheduler") as their source.
    pub fn start(client: kube::Client, component: &str, instance: &str) -> Recorder {
        let (tx, rx) = mpsc::channel::<Pending>(EVENTS_QUEUED_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let seen: Arc<Mutex<HashMap<Key, Seen>>> = Arc::new(Mutex::new(HashMap::new()));
        for _ in 0..WRITERS {
            let (rx, seen, client) = (rx.clone(), seen.clone(), client.clone());
            let (component, instance) = (component.to_string(), instance.to_string());
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(p) = next else { return };
                    if let Err(e) = write(&client, &seen, &component, &instance, p).await {
                        tracing::debug!(error = %e, "event not written");
                    }
                }
            });
        }
        Recorder { tx, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Records an event about `regarding` (never waits).
    pub fn record(
        &self,
        regarding: ObjectReference,
        warning: bool,
        action: &'static str,
        reason: &str,
        message: String,
    ) {
        let p = Pending { regarding, warning, action, reason: reason.to_string(), message };
        if self.tx.try_send(p).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "event queue full; events dropped");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A reference to a pod, as events name it.
pub fn pod_reference(pod: &k8s_openapi::api::core::v1::Pod) -> ObjectReference {
    reference(pod)
}

/// A reference to any object, for the event's `involvedObject`.
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

async fn write(
    client: &kube::Client,
    seen: &Mutex<HashMap<Key, Seen>>,
    component: &str,
    instance: &str,
    p: Pending,
) -> Result<(), kube::Error> {
    let namespace = p.regarding.namespace.clone().unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let now = k8s_openapi::jiff::Timestamp::now();
    let key: Key =
        (namespace.clone(), p.regarding.uid.clone().unwrap_or_default(), p.reason.clone(), p.message.clone());
    let repeat = {
        let mut seen = seen.lock().await;
        match seen.get_mut(&key) {
            Some(s) if s.first.elapsed() < AGGREGATION_WINDOW => {
                s.count += 1;
                Some((s.name.clone(), s.count))
            }
            _ => None,
        }
    };
    if let Some((name, count)) = repeat {
        let patch = serde_json::json!({ "count": count, "lastTimestamp": Time(now), "series": null });
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            // Expired or deleted: write it anew.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let name = format!(
        "{}.{:x}",
        p.regarding.name.as_deref().unwrap_or("object"),
        now.as_nanosecond() as u64 ^ rand::random::<u32>() as u64
    );
    let event = Event {
        metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace), ..Default::default() },
        involved_object: p.regarding,
        reason: Some(p.reason),
        message: Some(p.message),
        type_: Some(if p.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource { component: Some(component.into()), host: None }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(p.action.into()),
        reporting_component: Some(component.into()),
        reporting_instance: Some(instance.into()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &event).await?;
    let mut seen = seen.lock().await;
    if seen.len() >= AGGREGATION_ENTRIES_MAX {
        seen.clear();
    }
    seen.insert(key, Seen { name, count: 1, first: Instant::now() });
    Ok(())
}
