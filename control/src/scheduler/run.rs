//! The scheduler at work: informers on pods and nodes feed the cache and the queue; one loop
//! pops a pod, runs the profile's plugins over a snapshot, assumes the pod on the chosen node
//! and hands the binding to a task of its own (so the next pod is scheduled while the binding is
//! written); failures set the pod's PodScheduled condition and an event, and may preempt.
//! Every replica keeps its informers warm; only the leader pops pods, and a binding is sent only
//! while the leadership is still valid.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use agent::lean::LeanPod;

use super::algorithm::{self, Failure};
use super::cache::Cache;
use super::config::{Profile, SchedulerConfiguration, DEFAULT_SCHEDULER_NAME};
use super::framework::{PodInfo, Snapshot};
use super::preemption;
use super::queue::{QueuedPod, SchedulingQueue};
use crate::election::Leadership;
use crate::events::{pod_reference, Recorder};

/// Bindings being written at once; the loop waits for a slot beyond this.
pub const BINDINGS_IN_FLIGHT_MAX: usize = 256;
/// Status writes for pods that did not fit, at once; beyond it they wait their turn.
const FAILURE_WRITES_IN_FLIGHT_MAX: usize = 32;
/// A binding not answered within this is given up and the pod tried again (the API refuses a
/// second binding if the first one went through after all).
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Retry of a watch that failed.
const WATCH_RETRY: Duration = Duration::from_secs(1);

struct State {
    cache: Cache,
    queue: SchedulingQueue,
    pods_synced: bool,
    nodes_synced: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    profiles: Vec<Profile>,
    client: kube::Client,
    recorder: Recorder,
    leadership: Leadership,
    bindings: Arc<Semaphore>,
    failure_writes: Arc<Semaphore>,
    metrics: Metrics,
}

/// Counters a benchmark or a test reads from outside (through the log at exit).
#[derive(Default)]
pub struct Metrics {
    pub scheduled: std::sync::atomic::AtomicU64,
    pub unschedulable: std::sync::atomic::AtomicU64,
    pub bind_failures: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn profile(&self, pod: &Pod) -> Option<&Profile> {
        let name = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or(DEFAULT_SCHEDULER_NAME);
        self.profiles.iter().find(|p| p.scheduler_name == name)
    }
}

/// Runs a scheduler replica until `stop` resolves.
pub async fn run(
    client: kube::Client,
    config: SchedulerConfiguration,
    leadership: Leadership,
    identity: &str,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let profiles = config.profiles().map_err(anyhow::Error::msg)?;
    tracing::info!(identity, profiles = profiles.len(), "scheduler replica started");
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            cache: Cache::new(),
            queue: SchedulingQueue::new(),
            pods_synced: false,
            nodes_synced: false,
        }),
        wake: Notify::new(),
        profiles,
        recorder: Recorder::start(client.clone(), DEFAULT_SCHEDULER_NAME, identity),
        client: client.clone(),
        leadership,
        bindings: Arc::new(Semaphore::new(BINDINGS_IN_FLIGHT_MAX)),
        failure_writes: Arc::new(Semaphore::new(FAILURE_WRITES_IN_FLIGHT_MAX)),
        metrics: Metrics::default(),
    });
    let pods = tokio::spawn(watch_pods(shared.clone()));
    let nodes = tokio::spawn(watch_nodes(shared.clone()));
    tokio::pin!(stop);
    tokio::select! {
        _ = schedule_loop(shared.clone()) => {}
        _ = &mut stop => {}
    }
    pods.abort();
    nodes.abort();
    let m = &shared.metrics;
    tracing::info!(
        scheduled = m.scheduled.load(std::sync::atomic::Ordering::Relaxed),
        unschedulable = m.unschedulable.load(std::sync::atomic::Ordering::Relaxed),
        bind_failures = m.bind_failures.load(std::sync::atomic::Ordering::Relaxed),
        events_dropped = shared.recorder.dropped(),
        "scheduler stopped"
    );
    Ok(())
}

/// What an informer reports: an object added or changed, an object gone (by key), or that the
/// first list (or a relist after a broken watch) is complete.
enum Change<K> {
    Applied(K),
    Deleted(String),
    Synced,
}

/// Follows every object of `api` that `config` selects, as an informer does: after a relist,
/// the objects it no longer lists are reported deleted.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    key: fn(&K) -> String,
    mut on: impl FnMut(Change<K>),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher(api, config);
    let mut stream = std::pin::pin!(stream);
    let mut known: HashSet<String> = HashSet::new();
    let mut listing: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => {
                tracing::warn!(error = %e, "{what} watch failed; retrying");
                tokio::time::sleep(WATCH_RETRY).await;
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(obj)) => {
                listing.insert(key(&obj));
                known.insert(key(&obj));
                on(Change::Applied(obj));
            }
            Ok(watcher::Event::Apply(obj)) => {
                known.insert(key(&obj));
                on(Change::Applied(obj));
            }
            Ok(watcher::Event::Delete(obj)) => {
                let k = key(&obj);
                known.remove(&k);
                on(Change::Deleted(k));
            }
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<String> = known.difference(&listing).cloned().collect();
                for k in gone {
                    known.remove(&k);
                    on(Change::Deleted(k));
                }
                on(Change::Synced);
            }
        }
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    // Finished pods free their node's resources, as kube-scheduler's informer filter has it.
    let config = watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    // Read without managed fields, which the scheduler never reads and which are most of the
    // cost of decoding a running pod.
    let uid = |p: &LeanPod| p.0.metadata.uid.clone().unwrap_or_default();
    follow(Api::<LeanPod>::all(shared.client.clone()), config, "pod", uid, |change| match change {
        Change::Applied(LeanPod(pod)) => pod_applied(&shared, pod),
        Change::Deleted(uid) => pod_deleted(&shared, &uid),
        Change::Synced => {
            shared.lock().pods_synced = true;
            shared.wake.notify_one();
        }
    })
    .await;
}

fn pod_applied(shared: &Shared, pod: Pod) {
    let now = Instant::now();
    let responsible = shared.profile(&pod).is_some();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let info = Arc::new(PodInfo::new(Arc::new(pod)));
    let mut st = shared.lock();
    if info.node_name().is_some() {
        st.queue.delete(&info.uid);
        st.cache.upsert_pod(info);
        return;
    }
    if !responsible || terminating {
        st.queue.delete(&info.uid);
        st.cache.unnominate(&info.uid);
        return;
    }
    // A nomination made by another replica (before a change of leader) counts here too.
    let nominated = info.pod.status.as_ref().and_then(|s| s.nominated_node_name.clone()).filter(|n| !n.is_empty());
    if let Some(node) = nominated {
        if st.cache.nominated_node(&info.uid) != Some(node.as_str()) {
            st.cache.nominate(info.clone(), &node);
        }
    }
    // Being bound right now: the binding's outcome decides.
    if st.cache.is_assumed(&info.uid) {
        return;
    }
    st.queue.add(info, now);
    drop(st);
    shared.wake.notify_one();
}

fn pod_deleted(shared: &Shared, uid: &str) {
    let mut st = shared.lock();
    st.queue.delete(uid);
    st.cache.unnominate(uid);
    if let Some(node) = st.cache.node_of(uid).map(str::to_string) {
        st.cache.remove_pod(uid);
        // Resources were freed: pods waiting for room may fit now, and those that preempted
        // for this node are tried at once.
        let now = Instant::now();
        st.queue.move_all_unschedulable(now);
        for preemptor in st.cache.nominated_for(&node) {
            st.queue.activate(&preemptor, now);
        }
        drop(st);
        shared.wake.notify_one();
    }
}

/// Whether a node changed in a way that can make a pending pod fit.
fn node_changed_for_scheduling(old: &Node, new: &Node) -> bool {
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable));
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.metadata.labels != new.metadata.labels || spec(old) != spec(new) || alloc(old) != alloc(new)
}

async fn watch_nodes(shared: Arc<Shared>) {
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    follow(Api::<Node>::all(shared.client.clone()), watcher::Config::default(), "node", name, |change| {
        let mut st = shared.lock();
        let wake = match change {
            Change::Applied(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                let moved = st.cache.node(&name).is_none_or(|old| node_changed_for_scheduling(&old.node, &node));
                st.cache.upsert_node(Arc::new(node));
                if moved {
                    st.queue.move_all_unschedulable(Instant::now());
                }
                moved
            }
            Change::Deleted(name) => {
                st.cache.remove_node(&name);
                false
            }
            Change::Synced => {
                st.nodes_synced = true;
                true
            }
        };
        drop(st);
        if wake {
            shared.wake.notify_one();
        }
    })
    .await;
}

async fn schedule_loop(shared: Arc<Shared>) {
    let mut next_start = 0usize;
    // The loop's own copy of the cache, brought up to date before each cycle.
    let mut snapshot = Snapshot::default();
    let mut leadership = shared.leadership.clone();
    let mut was_leading = false;
    loop {
        if !leadership.is_leading() {
            if was_leading {
                tracing::warn!("not leading: scheduling paused");
                was_leading = false;
            }
            leadership.acquired().await;
            // `acquired` also returns for a leadership that has just lapsed; check again.
            if !leadership.is_leading() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        if !was_leading {
            tracing::info!("leading: scheduling");
            was_leading = true;
        }
        let (popped, due) = {
            let mut st = shared.lock();
            if !(st.pods_synced && st.nodes_synced) {
                (None, None)
            } else {
                let now = Instant::now();
                (st.queue.pop(now), st.queue.next_due())
            }
        };
        let Some(pod) = popped else {
            let wait = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep_until(wait) => {}
                _ = leadership.lost() => {}
            }
            continue;
        };
        schedule_one(&shared, pod, &mut snapshot, &mut next_start).await;
    }
}

async fn schedule_one(shared: &Arc<Shared>, queued: QueuedPod, snapshot: &mut Snapshot, next_start: &mut usize) {
    let Some(profile) = shared.profile(&queued.info.pod) else {
        shared.lock().queue.done(&queued.info.uid);
        return;
    };
    shared.lock().cache.update_snapshot(snapshot);
    let snapshot = &*snapshot;
    match algorithm::schedule(profile, &queued.info, snapshot, next_start) {
        Ok(placement) => {
            shared.lock().cache.assume(queued.info.clone(), &placement.node);
            let Ok(permit) = shared.bindings.clone().acquire_owned().await else { return };
            let shared = shared.clone();
            tokio::spawn(async move {
                bind(&shared, queued, &placement.node).await;
                drop(permit);
            });
        }
        Err(Failure::Unschedulable(diagnosis)) => {
            shared.metrics.unschedulable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut message = diagnosis.message();
            let mut nominated = None;
            let mut victims = Vec::new();
            if profile.preemption {
                if preemption::eligible(&queued.info, snapshot) {
                    let (candidate, why) = preemption::preempt(profile, &queued.info, snapshot, &diagnosis);
                    match candidate {
                        Some(c) => {
                            shared.lock().cache.nominate(queued.info.clone(), &c.node);
                            nominated = Some(c.node);
                            victims = c.victims;
                        }
                        None => message = format!("{message} {why}"),
                    }
                } else {
                    message = format!("{message} {}", preemption::not_eligible_message(&queued.info));
                }
            }
            let pod = queued.info.pod.clone();
            shared.lock().queue.failed(queued, true, Instant::now());
            if !shared.leadership.is_leading() {
                return;
            }
            let Ok(permit) = shared.failure_writes.clone().acquire_owned().await else { return };
            let shared = shared.clone();
            tokio::spawn(async move {
                for v in &victims {
                    delete_victim(&shared, &pod, v, nominated.as_deref().unwrap_or("")).await;
                }
                record_failure(&shared, &pod, "Unschedulable", &message, nominated.as_deref()).await;
                drop(permit);
            });
        }
        Err(Failure::Error(e)) => {
            tracing::warn!(pod = %queued.info.key, error = %e, "scheduling error");
            let pod = queued.info.pod.clone();
            shared.lock().queue.failed(queued, false, Instant::now());
            let shared = shared.clone();
            tokio::spawn(async move { record_failure(&shared, &pod, "SchedulerError", &e, None).await });
        }
    }
}

async fn bind(shared: &Arc<Shared>, queued: QueuedPod, node: &str) {
    let uid = queued.info.uid.clone();
    let pod = queued.info.pod.clone();
    if !shared.leadership.is_leading() {
        let mut st = shared.lock();
        st.cache.forget(&uid);
        st.queue.failed(queued, false, Instant::now());
        return;
    }
    let (namespace, name) =
        (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": namespace, "uid": uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": node },
    });
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let result = tokio::time::timeout(
        BIND_TIMEOUT,
        api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &body),
    )
    .await
    .unwrap_or_else(|_| Err(kube::Error::Service(format!("no answer within {BIND_TIMEOUT:?}").into())));
    match result {
        Ok(_) => {
            shared.metrics.scheduled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.lock().queue.done(&uid);
            shared.recorder.record(
                pod_reference(&pod),
                false,
                "Binding",
                "Scheduled",
                format!("Successfully assigned {namespace}/{name} to {node}"),
            );
        }
        // Any refusal (bound already, by another replica or by this one before it lost the
        // lease; a conflict; the pod gone; the node gone) puts the pod back in the queue, as
        // kube-scheduler does: the watch then removes it if it is bound or deleted, and a pod
        // dropped here on a guess would never be scheduled.
        Err(e) => {
            // Bound already is the usual 409 after a change of leader: not worth a warning.
            let already_bound =
                matches!(&e, kube::Error::Api(s) if s.code == 409 && s.message.contains("already assigned"));
            if already_bound {
                tracing::debug!(pod = %queued.info.key, node, error = %e, "binding refused: bound already");
            } else {
                shared.metrics.bind_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(pod = %queued.info.key, node, error = %e, "binding failed; retrying");
            }
            {
                let mut st = shared.lock();
                st.cache.forget(&uid);
                st.queue.failed(queued, false, Instant::now());
            }
            shared.wake.notify_one();
            if !already_bound {
                let message = format!("Binding rejected: {e}");
                shared.recorder.record(pod_reference(&pod), true, "Scheduling", "FailedScheduling", message);
            }
        }
    }
}

/// Sets `PodScheduled=False` with the reason and message (unless the pod already says so) and
/// `nominatedNodeName`, and records FailedScheduling.
async fn record_failure(shared: &Shared, pod: &Pod, reason: &str, message: &str, nominated: Option<&str>) {
    shared.recorder.record(pod_reference(pod), true, "Scheduling", "FailedScheduling", message.to_string());
    let status = pod.status.as_ref();
    let same = status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        })
    });
    let same_nomination = nominated.is_none() || status.and_then(|s| s.nominated_node_name.as_deref()) == nominated;
    if same && same_nomination {
        return;
    }
    let mut patch = serde_json::json!({
        "status": { "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        }]}
    });
    if let Some(node) = nominated {
        patch["status"]["nominatedNodeName"] = node.into();
    }
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    if let Err(e) = api
        .patch_status(pod.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::debug!(error = %e, "cannot write the pod's scheduling condition");
    }
}

/// Deletes a preemption victim gracefully, after marking why (the DisruptionTarget condition).
async fn delete_victim(shared: &Shared, preemptor: &Pod, victim: &PodInfo, node: &str) {
    let pod = &victim.pod;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), namespace);
    let preemptor_key = format!(
        "{}/{}",
        preemptor.metadata.namespace.as_deref().unwrap_or(""),
        preemptor.metadata.name.as_deref().unwrap_or("")
    );
    let condition = serde_json::json!({ "status": { "conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": format!("{DEFAULT_SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    }]}});
    let _ = api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition)).await;
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => shared.recorder.record(
            pod_reference(pod),
            false,
            "Preempting",
            "Preempted",
            format!("Preempted by pod {} on node {node}", preemptor.metadata.uid.as_deref().unwrap_or(&preemptor_key)),
        ),
        Err(e) => tracing::warn!(victim = %victim.key, error = %e, "cannot preempt"),
    }
}
