//! The namespace controller (Kubernetes' `namespace`): a namespace being deleted is emptied —
//! every namespaced type discovery lists as deletable, its objects deleted — and, once nothing
//! is left, its `kubernetes` finalizer is removed through `namespaces/<name>/finalize`, which lets
//! the API remove it. Its status says how far it got (the NamespaceDeletion* and
//! NamespaceContentRemaining conditions). A replica that crashes midway leaves a Terminating
//! namespace that the next leader finishes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::discovery::{Discovery, Scope};
use serde_json::json;

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager};

pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace with content left (pods still stopping) is looked at again.
const CONTENT_RECHECK: Duration = Duration::from_secs(1);

pub struct NamespaceController {
    client: kube::Client,
    namespaces: Arc<Informer<Namespace>>,
    queue: WorkQueue,
}

fn condition(kind: &str, status: bool, reason: &str, message: String, now: Timestamp) -> NamespaceCondition {
    NamespaceCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
    }
}

impl NamespaceController {
    pub fn new(m: &Manager) -> Arc<NamespaceController> {
        let c = Arc::new(NamespaceController {
            client: m.client.clone(),
            namespaces: m.informers.namespaces(),
            queue: WorkQueue::new(),
        });
        let weak = Arc::downgrade(&c);
        c.namespaces.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            if let Change::Added(ns) | Change::Updated { new: ns, .. } = change {
                if ns.metadata.deletion_timestamp.is_some() {
                    c.queue.add(ns.metadata.name.as_deref().unwrap_or(""));
                }
            }
        });
        c
    }

    /// The namespaced types to empty: those that can be listed and deleted.
    async fn types(&self) -> anyhow::Result<Vec<(ApiResource, bool)>> {
        let d = Discovery::new(self.client.clone()).run().await?;
        let mut out = Vec::new();
        for group in d.groups() {
            for (ar, caps) in group.recommended_resources() {
                if matches!(caps.scope, Scope::Namespaced)
                    && caps.supports_operation("list")
                    && caps.supports_operation("delete")
                {
                    out.push((ar, caps.supports_operation("deletecollection")));
                }
            }
        }
        Ok(out)
    }

    async fn write_conditions(&self, ns: &Namespace, conditions: Vec<NamespaceCondition>) -> anyhow::Result<()> {
        let old = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let same = conditions
            .iter()
            .all(|c| old.iter().any(|o| o.type_ == c.type_ && o.status == c.status && o.message == c.message));
        if same {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        match api
            .patch_status(ns.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Controller for NamespaceController {
    const NAME: &'static str = "namespace";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let Some(ns) = self.namespaces.get("", name) else { return Ok(()) };
        let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
        if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let now = Timestamp::now();
        let types = match self.types().await {
            Ok(t) => t,
            Err(e) => {
                let c = condition(
                    "NamespaceDeletionDiscoveryFailure",
                    true,
                    "DiscoveryFailed",
                    format!("Discovery failed: {e}"),
                    now,
                );
                self.write_conditions(&ns, vec![c]).await?;
                return Err(e);
            }
        };
        // Delete everything, then count what is left (objects finishing a graceful deletion,
        // or held by finalizers).
        let mut failures = Vec::new();
        for (ar, collection) in &types {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), name, ar);
            let result = if *collection {
                api.delete_collection(&DeleteParams::background(), &ListParams::default()).await.map(|_| ())
            } else {
                match api.list_metadata(&ListParams::default()).await {
                    Ok(list) => {
                        let mut r = Ok(());
                        for o in list.items {
                            if let Err(e) =
                                api.delete(o.metadata.name.as_deref().unwrap_or(""), &DeleteParams::background()).await
                            {
                                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                                    r = Err(e);
                                }
                            }
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {}
                Err(e) => failures.push(format!("{}: {e}", ar.plural)),
            }
        }
        let mut remaining = Vec::new();
        let mut held = Vec::new();
        for (ar, _) in &types {
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::namespaced_with(self.client.clone(), name, ar);
            let Ok(list) = api.list(&ListParams::default()).await else { continue };
            if !list.items.is_empty() {
                let kind = if ar.group.is_empty() { ar.plural.clone() } else { format!("{}.{}", ar.plural, ar.group) };
                remaining.push(format!("{kind} has {} resource instances", list.items.len()));
            }
            for o in &list.items {
                for f in o.metadata.finalizers.iter().flatten() {
                    held.push(format!("{f} in {} resource instances", ar.plural));
                }
            }
        }
        let conditions = vec![
            condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
                now,
            ),
            condition(
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
                now,
            ),
            if failures.is_empty() {
                condition(
                    "NamespaceDeletionContentFailure",
                    false,
                    "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization".into(),
                    now,
                )
            } else {
                condition(
                    "NamespaceDeletionContentFailure",
                    true,
                    "ContentDeletionFailed",
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        failures.len(),
                        failures.join(", ")
                    ),
                    now,
                )
            },
            if remaining.is_empty() {
                condition(
                    "NamespaceContentRemaining",
                    false,
                    "ContentRemoved",
                    "All content successfully removed".into(),
                    now,
                )
            } else {
                condition(
                    "NamespaceContentRemaining",
                    true,
                    "SomeResourcesRemain",
                    format!("Some resources are remaining: {}", remaining.join(", ")),
                    now,
                )
            },
            if held.is_empty() {
                condition(
                    "NamespaceFinalizersRemaining",
                    false,
                    "ContentHasNoFinalizers",
                    "All content-preserving finalizers finished".into(),
                    now,
                )
            } else {
                condition(
                    "NamespaceFinalizersRemaining",
                    true,
                    "SomeFinalizersRemain",
                    format!("Some content in the namespace has finalizers remaining: {}", held.join(", ")),
                    now,
                )
            },
        ];
        self.write_conditions(&ns, conditions).await?;
        if !failures.is_empty() {
            anyhow::bail!("content of namespace {name} not deleted: {}", failures.join(", "));
        }
        if !remaining.is_empty() {
            self.queue.add_after(name, CONTENT_RECHECK);
            return Ok(());
        }
        // Empty: the finalizer goes, and with it the namespace.
        let kept: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "spec": {"finalizers": kept}});
        let req = axum::http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)?;
        match self.client.request::<serde_json::Value>(req).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
