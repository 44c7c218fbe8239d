//! The StatefulSet controller (Kubernetes' `statefulset`): pods named by ordinal
//! (`<set>-0` … `<set>-N-1`) with a stable hostname under the set's service, each with its own
//! PersistentVolumeClaims from `volumeClaimTemplates`; OrderedReady creates them one at a time in
//! order, each once the ones before run and are ready, and removes them from the highest
//! ordinal down; Parallel does both at once. A new template is recorded as a ControllerRevision;
//! RollingUpdate replaces pods from the highest ordinal down to `partition`, one at a time,
//! each once the previous one is ready again; OnDelete replaces only pods the user deletes.
//! `persistentVolumeClaimRetentionPolicy` decides whether claims go with the set or with
//! scaled-down pods (as their dependents, through the garbage collector).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::daemonset::REVISION_HASH_LABEL;
use super::deployment::rules::template_hash;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, controller_ref, is_available, is_ready};
use super::queue::WorkQueue;
use super::revisions;
use super::{Controller, Manager};
use crate::events::{reference, Recorder};
use crate::labels::Selector;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// One ordinal's pod as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub updated: bool,
    pub running_and_ready: bool,
    pub terminating: bool,
    pub failed: bool,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    /// Create the pod of this ordinal, at the update revision (else the current one).
    Create(i32, bool),
    Delete(String),
}

/// One sync's moves (Kubernetes' UpdateStatefulSet): failed pods go; missing ones are made
/// (in order, each after the ones before are ready, when `ordered`); ordinals beyond `replicas`
/// go from the highest down; then, with a rolling update, the highest pod not yet updated at or
/// above `partition` is replaced, one at a time.
pub fn plan(replicas: i32, slots: &BTreeMap<i32, Slot>, ordered: bool, rolling_partition: Option<i32>) -> Vec<Action> {
    let mut out = Vec::new();
    for i in 0..replicas {
        match slots.get(&i) {
            None => {
                out.push(Action::Create(i, rolling_partition.is_none_or(|p| i >= p)));
                if ordered {
                    return out;
                }
            }
            Some(s) if s.failed && !s.terminating => {
                out.push(Action::Delete(s.name.clone()));
                if ordered {
                    return out;
                }
            }
            Some(s) if ordered && (s.terminating || !s.running_and_ready) => return out,
            Some(_) => {}
        }
    }
    let mut condemned: Vec<(&i32, &Slot)> = slots.iter().filter(|(i, _)| **i >= replicas).collect();
    condemned.sort_by(|a, b| b.0.cmp(a.0));
    for (_, s) in &condemned {
        if s.terminating {
            if ordered {
                return out;
            }
            continue;
        }
        out.push(Action::Delete(s.name.clone()));
        if ordered {
            return out;
        }
    }
    if let Some(partition) = rolling_partition {
        for i in (partition.max(0)..replicas).rev() {
            let Some(s) = slots.get(&i) else { return out };
            if !s.updated && !s.terminating {
                out.push(Action::Delete(s.name.clone()));
                return out;
            }
            if !s.running_and_ready || s.terminating {
                return out;
            }
        }
    }
    out
}

/// The ordinal a pod of `set` has, from its name.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok().filter(|i: &i32| *i >= 0)
}

pub struct StatefulSetController {
    client: kube::Client,
    sets: Arc<Informer<StatefulSet>>,
    pods: Arc<Informer<Pod>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: WorkQueue,
    recorder: Recorder,
}

fn claim_name(template: &PersistentVolumeClaim, set: &str, ordinal: i32) -> String {
    format!("{}-{set}-{ordinal}", template.metadata.name.as_deref().unwrap_or(""))
}

impl StatefulSetController {
    pub fn new(m: &Manager) -> Arc<StatefulSetController> {
        let c = Arc::new(StatefulSetController {
            client: m.client.clone(),
            sets: m.informers.statefulsets(),
            pods: m.informers.pods(),
            revisions: m.informers.controllerrevisions(),
            queue: WorkQueue::new(),
            recorder: Recorder::start(m.client.clone(), "statefulset-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.sets.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(x) | Change::Updated { new: x, .. } | Change::Deleted(x)) = change;
            c.queue.add(&key_of(x.as_ref()));
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(p) | Change::Updated { new: p, .. } | Change::Deleted(p)) = change;
            if let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "StatefulSet") {
                c.queue.add(&format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), r.name));
            }
        });
        c
    }

    /// The claims of `ordinal`, made if missing (owned by the set when they go with it).
    async fn ensure_claims(&self, set: &StatefulSet, ordinal: i32) -> anyhow::Result<()> {
        let ns = set.metadata.namespace.as_deref().unwrap_or("");
        let name = set.metadata.name.as_deref().unwrap_or("");
        let spec = set.spec.clone().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let with_set = spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_deleted.as_deref())
            == Some("Delete");
        for t in spec.volume_claim_templates.iter().flatten() {
            let claim_name = claim_name(t, name, ordinal);
            if api.get_opt(&claim_name).await?.is_some() {
                continue;
            }
            let mut claim = t.clone();
            claim.metadata = ObjectMeta {
                name: Some(claim_name.clone()),
                namespace: Some(ns.into()),
                labels: Some(
                    spec.selector
                        .match_labels
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .chain(t.metadata.labels.clone().unwrap_or_default())
                        .collect(),
                ),
                annotations: t.metadata.annotations.clone(),
                owner_references: with_set.then(|| vec![OwnerReference { controller: None, ..controller_ref(set) }]),
                ..Default::default()
            };
            claim.status = None;
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => self.recorder.record(
                    reference(set),
                    false,
                    "Create",
                    "SuccessfulCreate",
                    format!("create Claim {claim_name} Pod {name}-{ordinal} in StatefulSet {name} success"),
                ),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A scaled-down pod's claims become its dependents, to go with it.
    async fn claims_follow_pod(&self, set: &StatefulSet, pod: &Pod, ordinal: i32) -> anyhow::Result<()> {
        let spec = set.spec.clone().unwrap_or_default();
        if spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_scaled.as_deref())
            != Some("Delete")
        {
            return Ok(());
        }
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), set.metadata.namespace.as_deref().unwrap_or(""));
        for t in spec.volume_claim_templates.iter().flatten() {
            let name = claim_name(t, set.metadata.name.as_deref().unwrap_or(""), ordinal);
            let Some(claim) = api.get_opt(&name).await? else { continue };
            let mut refs = claim.metadata.owner_references.clone().unwrap_or_default();
            if refs.iter().any(|r| Some(&r.uid) == pod.metadata.uid.as_ref()) {
                continue;
            }
            refs.push(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: None,
                block_owner_deletion: None,
            });
            let patch =
                json!({"metadata": {"ownerReferences": refs, "resourceVersion": claim.metadata.resource_version}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(())
    }

    fn pod_for(&self, set: &StatefulSet, template: &PodTemplateSpec, hash: &str, ordinal: i32) -> Pod {
        let name = set.metadata.name.clone().unwrap_or_default();
        let ns = set.metadata.namespace.as_deref().unwrap_or("");
        let pod_name = format!("{name}-{ordinal}");
        let mut pod = pods::pod_from_template(template, ns, &name, controller_ref(set));
        pod.metadata.generate_name = None;
        pod.metadata.name = Some(pod_name.clone());
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_HASH_LABEL.into(), format!("{name}-{hash}"));
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.hostname = Some(pod_name);
        if let Some(svc) = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty()) {
            spec.subdomain = Some(svc);
        }
        for t in set.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).into_iter().flatten() {
            let vname = t.metadata.name.clone().unwrap_or_default();
            let volumes = spec.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != vname);
            volumes.push(Volume {
                name: vname,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&t, &name, ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        pod
    }
}

impl Controller for StatefulSetController {
    const NAME: &'static str = "statefulset";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(set) = self.sets.get_key(key) else { return Ok(()) };
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let sel = Selector::parse(&spec.selector).unwrap_or_else(|_| Selector::nothing());
        let owned = pods::claim(&self.client, set.as_ref(), &sel, &self.pods, |p| {
            ordinal_of(&name, p.metadata.name.as_deref().unwrap_or("")).is_some()
        })
        .await?;
        let hash = template_hash(&spec.template, set.status.as_ref().and_then(|s| s.collision_count));
        let limit = spec.revision_history_limit.unwrap_or(10);
        revisions::sync(&self.client, &self.revisions, &self.pods, set.as_ref(), &spec.template, &hash, limit).await?;
        let update_revision = format!("{name}-{hash}");
        let current_revision = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| update_revision.clone());
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        let mut slots: BTreeMap<i32, Slot> = BTreeMap::new();
        let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        for p in &owned {
            let Some(i) = ordinal_of(&name, p.metadata.name.as_deref().unwrap_or("")) else { continue };
            let revision = pods::labels(&p.metadata).get(REVISION_HASH_LABEL).cloned().unwrap_or_default();
            slots.insert(
                i,
                Slot {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    updated: revision == update_revision,
                    running_and_ready: pods::phase(p) == "Running" && is_ready(p),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    failed: pods::phase(p) == "Failed",
                },
            );
            by_ordinal.insert(i, p.clone());
        }
        let replicas = spec.replicas.unwrap_or(1);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = match strategy.type_.as_deref() {
            Some("OnDelete") => None,
            _ => Some(strategy.rolling_update.as_ref().and_then(|r| r.partition).unwrap_or(0)),
        };
        // Pods made again get the update revision, but below a partition the current one.
        let actions = plan(replicas, &slots, ordered, rolling);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for action in actions {
            match action {
                Action::Create(i, at_update) => {
                    self.ensure_claims(&set, i).await?;
                    let (template, h) = if at_update || current_revision == update_revision {
                        (spec.template.clone(), hash.clone())
                    } else {
                        let rev = self.revisions.get(&ns, &current_revision);
                        let template = rev
                            .as_ref()
                            .and_then(|r| r.data.as_ref())
                            .and_then(|d| d.0.pointer("/spec/template").cloned())
                            .map(|mut t| {
                                t.as_object_mut().map(|m| m.remove("$patch"));
                                t
                            })
                            .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t).ok())
                            .unwrap_or_else(|| spec.template.clone());
                        let h = current_revision.strip_prefix(&format!("{name}-")).unwrap_or(&hash).to_string();
                        (template, h)
                    };
                    match pods_api.create(&PostParams::default(), &self.pod_for(&set, &template, &h, i)).await {
                        Ok(_) => self.recorder.record(
                            reference(set.as_ref()),
                            false,
                            "Create",
                            "SuccessfulCreate",
                            format!("create Pod {name}-{i} in StatefulSet {name} successful"),
                        ),
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Action::Delete(pod_name) => {
                    let Some(i) = ordinal_of(&name, &pod_name) else { continue };
                    let Some(pod) = by_ordinal.get(&i) else { continue };
                    if i >= replicas {
                        self.claims_follow_pod(&set, pod, i).await?;
                    }
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                        ..Default::default()
                    };
                    match pods_api.delete(&pod_name, &dp).await {
                        Ok(_) => self.recorder.record(
                            reference(set.as_ref()),
                            false,
                            "Delete",
                            "SuccessfulDelete",
                            format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                        ),
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        // Status.
        let active: Vec<&Arc<Pod>> = by_ordinal.values().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
        let rev_of = |p: &Pod| pods::labels(&p.metadata).get(REVISION_HASH_LABEL).cloned().unwrap_or_default();
        let updated = count(&|p| rev_of(p) == update_revision);
        let total = active.len() as i32;
        let (current_revision, current) = if updated == total && total == replicas {
            (update_revision.clone(), updated)
        } else {
            (current_revision.clone(), count(&|p| rev_of(p) == current_revision))
        };
        let zero_null = |n: i32| super::omit_zero(Some(n));
        let status = json!({
            "observedGeneration": set.metadata.generation,
            "replicas": total,
            "readyReplicas": zero_null(count(&|p| is_ready(p))),
            "availableReplicas": count(&|p| is_available(p, min_ready, now)),
            "currentReplicas": zero_null(current),
            "updatedReplicas": zero_null(updated),
            "currentRevision": current_revision,
            "updateRevision": update_revision,
        });
        if super::status_differs(&status, &serde_json::to_value(set.status.clone().unwrap_or_default())?) {
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &ns);
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if min_ready > 0 {
            self.queue.add_after(key, std::time::Duration::from_secs(min_ready as u64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, updated: bool, ready: bool) -> Slot {
        Slot { name: name.into(), updated, running_and_ready: ready, terminating: false, failed: false }
    }

    fn slots(list: &[(i32, Slot)]) -> BTreeMap<i32, Slot> {
        list.iter().cloned().collect()
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time_in_order() {
        assert_eq!(plan(3, &slots(&[]), true, Some(0)), vec![Action::Create(0, true)]);
        // web-0 exists but is not ready: wait.
        assert!(plan(3, &slots(&[(0, slot("web-0", true, false))]), true, Some(0)).is_empty());
        assert_eq!(plan(3, &slots(&[(0, slot("web-0", true, true))]), true, Some(0)), vec![Action::Create(1, true)]);
        // Parallel: all at once.
        assert_eq!(
            plan(3, &slots(&[]), false, Some(0)),
            vec![Action::Create(0, true), Action::Create(1, true), Action::Create(2, true)]
        );
    }

    #[test]
    fn scaling_down_goes_from_the_highest_ordinal() {
        let all =
            slots(&[(0, slot("web-0", true, true)), (1, slot("web-1", true, true)), (2, slot("web-2", true, true))]);
        assert_eq!(plan(1, &all, true, Some(0)), vec![Action::Delete("web-2".into())]);
        assert_eq!(plan(1, &all, false, Some(0)), vec![Action::Delete("web-2".into()), Action::Delete("web-1".into())]);
    }

    #[test]
    fn rolling_updates_go_down_to_the_partition_one_ready_pod_at_a_time() {
        let old =
            slots(&[(0, slot("web-0", false, true)), (1, slot("web-1", false, true)), (2, slot("web-2", false, true))]);
        assert_eq!(plan(3, &old, true, Some(0)), vec![Action::Delete("web-2".into())]);
        // web-2 was replaced but is not ready yet: wait.
        let mid =
            slots(&[(0, slot("web-0", false, true)), (1, slot("web-1", false, true)), (2, slot("web-2", true, false))]);
        assert!(plan(3, &mid, false, Some(0)).is_empty());
        let next =
            slots(&[(0, slot("web-0", false, true)), (1, slot("web-1", false, true)), (2, slot("web-2", true, true))]);
        assert_eq!(plan(3, &next, true, Some(0)), vec![Action::Delete("web-1".into())]);
        // A partition of 2 stops there.
        assert!(plan(3, &next, true, Some(2)).is_empty());
        // Below the partition, a missing pod is made at the current revision.
        assert_eq!(plan(3, &slots(&[]), true, Some(2)), vec![Action::Create(0, false)]);
    }

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webs-1"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
    }
}
