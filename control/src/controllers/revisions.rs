//! ControllerRevisions, the template history of DaemonSets and StatefulSets: one per template
//! (named `<owner>-<hash>`, labelled with the hash, its data a patch that puts the template back,
//! as `kubectl rollout undo` reads it), numbered in the order templates were last used, and the
//! oldest beyond the history limit deleted unless a pod still runs them.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::json;

use super::daemonset::REVISION_HASH_LABEL;
use super::informer::Informer;
use super::pods::{controller_of, controller_ref};

/// Brings `owner`'s revisions in line with its current `template` (hash `hash`); the current
/// template's revision number.
pub async fn sync<O>(
    client: &kube::Client,
    revisions: &Informer<ControllerRevision>,
    pods: &Informer<Pod>,
    owner: &O,
    template: &PodTemplateSpec,
    hash: &str,
    history_limit: i32,
) -> anyhow::Result<i64>
where
    O: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    let meta = owner.meta();
    let ns = meta.namespace.as_deref().unwrap_or("");
    let uid = meta.uid.as_deref().unwrap_or("");
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let mut owned: Vec<Arc<ControllerRevision>> = revisions
        .list_namespace(ns)
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    owned.sort_by_key(|r| r.revision);
    let max = owned.last().map(|r| r.revision).unwrap_or(0);
    let name = format!("{}-{hash}", meta.name.as_deref().unwrap_or(""));
    let current = match owned.iter().find(|r| r.metadata.name.as_deref() == Some(name.as_str())) {
        Some(r) if r.revision == max => r.revision,
        Some(r) => {
            let patch = json!({"metadata": {"resourceVersion": r.metadata.resource_version}, "revision": max + 1});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            max + 1
        }
        None => {
            let mut labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            labels.insert(REVISION_HASH_LABEL.into(), hash.into());
            let mut t = serde_json::to_value(template)?;
            t["$patch"] = json!("replace");
            let annotations = meta.annotations.clone().map(|a| {
                a.into_iter()
                    .filter(|(k, _)| {
                        k != "kubectl.kubernetes.io/last-applied-configuration"
                            && k != "deprecated.daemonset.template.generation"
                    })
                    .collect()
            });
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.into()),
                    labels: Some(labels),
                    annotations,
                    owner_references: Some(vec![controller_ref(owner)]),
                    ..Default::default()
                },
                data: Some(RawExtension(json!({"spec": {"template": t}}))),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            max + 1
        }
    };
    // Pods label their revision by its hash (daemon sets) or its name (stateful sets).
    let in_use: Vec<String> = pods
        .list_namespace(ns)
        .iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_HASH_LABEL).cloned())
        .collect();
    let used = |r: &ControllerRevision| {
        let n = r.metadata.name.as_deref().unwrap_or("");
        in_use.iter().any(|h| n == h || n.ends_with(&format!("-{h}")))
    };
    let cleanable: Vec<&Arc<ControllerRevision>> =
        owned.iter().filter(|r| r.metadata.name.as_deref() != Some(name.as_str()) && !used(r)).collect();
    let limit = history_limit.max(0) as usize;
    if cleanable.len() > limit {
        for r in &cleanable[..cleanable.len() - limit] {
            match api.delete(r.metadata.name.as_deref().unwrap_or(""), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(current)
}
