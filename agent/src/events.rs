//! Events about pods, as kubelet writes them (`source.component: kubelet`, the node as host):
//! written in the background, a few at a time; one that cannot be written is only logged.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

/// Events being written at once; beyond this, events are dropped (and counted in the log).
const EVENTS_IN_FLIGHT_MAX: usize = 32;

fn slots() -> &'static Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(EVENTS_IN_FLIGHT_MAX)))
}

/// Records `reason` about `pod` (`Normal` or `Warning`), from the agent of `node`.
pub fn pod_event(client: &kube::Client, node: &str, pod: &Pod, kind: &str, reason: &str, message: String) {
    let Ok(permit) = slots().clone().try_acquire_owned() else {
        tracing::debug!(reason, "too many events being written; one dropped");
        return;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let now = k8s_openapi::jiff::Timestamp::now();
    let name = format!("{}.{:x}", pod.metadata.name.as_deref().unwrap_or(""), now.as_nanosecond() as u64);
    let event = Event {
        metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(kind.into()),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(node.into()) }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(reason.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %e, "an event could not be written");
        }
        drop(permit);
    });
}
