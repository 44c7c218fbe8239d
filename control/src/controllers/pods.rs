//! What controllers share about pods and owners: controller references, whether a pod is active,
//! ready or available, a pod made from a template, and adoption and release of dependents.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde_json::json;

/// The object's controller: the owner reference with `controller: true`.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// A controller reference to `owner`, as controllers put on what they make.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Neither finished nor being deleted (Kubernetes' FilterActivePods).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed")) && pod.metadata.deletion_timestamp.is_none()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// Since when the pod has been Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' IsPodAvailable).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// A new pod from `template`, named after `prefix` and controlled by `owner` (Kubernetes'
/// GetPodFromTemplate).
pub fn pod_from_template(template: &PodTemplateSpec, namespace: &str, prefix: &str, owner: OwnerReference) -> Pod {
    let t = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: Some(namespace.to_string()),
            labels: t.labels,
            annotations: t.annotations,
            finalizers: t.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Kubernetes' ClaimObjects: of the objects `informer` holds in the owner's namespace, those
/// `owner` controls afterwards. Orphans its selector matches are adopted (when `adoptable` says they may
/// be, and after a live read shows the owner still exists and is not being deleted); objects it
/// controls that its selector no longer matches are released. An owner being deleted adopts
/// nothing and keeps what it has.
pub async fn claim<O, D>(
    client: &kube::Client,
    owner: &O,
    sel: &crate::labels::Selector,
    informer: &super::informer::Informer<D>,
    adoptable: impl Fn(&D) -> bool,
) -> anyhow::Result<Vec<std::sync::Arc<D>>>
where
    O: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    D: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let ns = owner.meta().namespace.as_deref().unwrap_or("");
    let uid = owner.meta().uid.as_deref().unwrap_or("");
    let candidates = informer.claimable(ns, uid);
    let api: Api<D> = Api::namespaced(client.clone(), ns);
    let deleting = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    let mut rechecked = false;
    for obj in candidates {
        let matches = sel.matches(labels(obj.meta()));
        match controller_of(obj.meta()) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(obj);
                } else {
                    release(&api, uid, obj.as_ref()).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches || deleting || obj.meta().deletion_timestamp.is_some() || !adoptable(&obj) {
                    continue;
                }
                if !rechecked {
                    let owners: Api<O> = Api::namespaced(client.clone(), ns);
                    let live = owners.get(owner.meta().name.as_deref().unwrap_or("")).await?;
                    if live.meta().uid != owner.meta().uid || live.meta().deletion_timestamp.is_some() {
                        anyhow::bail!("the owner changed since it was read; not adopting");
                    }
                    rechecked = true;
                }
                match adopt(&api, owner, obj.as_ref()).await {
                    Ok(()) => owned.push(obj),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(owned)
}

/// Makes `owner` the controller of `dependent` (which has none), by a patch that fails if the
/// dependent changed since it was read.
pub async fn adopt<K, D>(api: &Api<D>, owner: &K, dependent: &D) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
    D: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut refs = dependent.meta().owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    set_owners(api, dependent, refs).await
}

/// Removes `owner_uid`'s reference from `dependent` (it no longer matches the selector).
pub async fn release<D>(api: &Api<D>, owner_uid: &str, dependent: &D) -> Result<(), kube::Error>
where
    D: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<OwnerReference> =
        dependent.meta().owner_references.iter().flatten().filter(|r| r.uid != owner_uid).cloned().collect();
    match set_owners(api, dependent, refs).await {
        // Gone already: nothing to release.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        r => r,
    }
}

async fn set_owners<D>(api: &Api<D>, dependent: &D, refs: Vec<OwnerReference>) -> Result<(), kube::Error>
where
    D: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let m = dependent.meta();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "uid": m.uid,
        "resourceVersion": m.resource_version,
    }});
    api.patch(m.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready_pod(since: i64) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(Timestamp::from_second(since).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn availability_counts_min_ready_seconds() {
        let now = Timestamp::from_second(1_000).unwrap();
        let p = ready_pod(990);
        assert!(is_ready(&p));
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 10, now));
        assert!(!is_available(&p, 11, now));
        let mut not_ready = p.clone();
        not_ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(!is_ready(&not_ready));
        assert!(!is_available(&not_ready, 0, now));
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!is_active(&done));
        assert!(is_active(&p));
    }
}
