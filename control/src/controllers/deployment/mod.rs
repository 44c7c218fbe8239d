//! The Deployment controller (Kubernetes' `deployment` controller): a ReplicaSet per pod
//! template, named and labelled by the template's hash; rolling updates within maxSurge and
//! maxUnavailable, Recreate, resizing in proportion mid-rollout, pause and resume, revisions and
//! their history limit, and the Progressing and Available conditions. Its decisions are in
//! `rules`; this file reads the caches, acts, and writes.

pub mod rules;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{json, Value};

use self::rules::*;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, controller_ref};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::events::{reference, Recorder};
use crate::labels::Selector;

pub struct DeploymentController {
    client: kube::Client,
    deployments: Arc<Informer<Deployment>>,
    sets: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    recorder: Recorder,
}

fn selector(d: &Deployment) -> Selector {
    d.spec
        .as_ref()
        .map(|s| Selector::parse(&s.selector).unwrap_or_else(|_| Selector::nothing()))
        .unwrap_or_else(Selector::nothing)
}

/// One sync's view: the deployment as it is being changed, and what it was when read.
struct Work {
    d: Deployment,
    original_status: DeploymentStatus,
    revision_changed: bool,
    sets: Vec<ReplicaSet>,
}

impl Work {
    fn refs(&self) -> Vec<&ReplicaSet> {
        self.sets.iter().collect()
    }

    fn set_revision(&mut self, revision: &str) {
        let a = self.d.metadata.annotations.get_or_insert_with(Default::default);
        if a.get(REVISION).map(String::as_str) != Some(revision) {
            a.insert(REVISION.into(), revision.into());
            self.revision_changed = true;
        }
    }

    fn status_mut(&mut self) -> &mut DeploymentStatus {
        self.d.status.get_or_insert_with(Default::default)
    }
}

impl DeploymentController {
    pub fn new(m: &Manager) -> Arc<DeploymentController> {
        let c = Arc::new(DeploymentController {
            client: m.client.clone(),
            deployments: m.informers.deployments(),
            sets: m.informers.replicasets(),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            recorder: Recorder::start(m.client.clone(), "deployment-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.deployments.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            match change {
                Change::Added(d) | Change::Deleted(d) => c.queue.add(&key_of(d.as_ref())),
                Change::Updated { new, .. } => c.queue.add(&key_of(new.as_ref())),
            }
        });
        let weak = Arc::downgrade(&c);
        c.sets.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            match change {
                Change::Added(rs) | Change::Deleted(rs) => c.enqueue_for_set(rs, true),
                Change::Updated { old, new } => {
                    if old.metadata.resource_version == new.metadata.resource_version {
                        return;
                    }
                    if controller_of(&old.metadata).map(|r| &r.uid) != controller_of(&new.metadata).map(|r| &r.uid) {
                        c.enqueue_for_set(old, false);
                    }
                    c.enqueue_for_set(new, old.metadata.labels != new.metadata.labels);
                }
            }
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            // A Recreate rollout waits for the old pods to be gone.
            if let Change::Deleted(pod) = change {
                if let Some(d) = c.owner_of_pod(pod) {
                    if is_recreate(&d) {
                        c.queue.add(&key_of(d.as_ref()));
                    }
                }
            }
        });
        c
    }

    fn owner_of_set(&self, rs: &ReplicaSet) -> Option<Arc<Deployment>> {
        let r = controller_of(&rs.metadata)?;
        if r.kind != "Deployment" {
            return None;
        }
        let d = self.deployments.get(rs.metadata.namespace.as_deref().unwrap_or(""), &r.name)?;
        (d.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(d)
    }

    fn owner_of_pod(&self, pod: &Pod) -> Option<Arc<Deployment>> {
        let r = controller_of(&pod.metadata)?;
        if r.kind != "ReplicaSet" {
            return None;
        }
        let rs = self.sets.get(pod.metadata.namespace.as_deref().unwrap_or(""), &r.name)?;
        self.owner_of_set(&rs)
    }

    /// Queues the set's deployment, or, for an orphan (when `orphans` says to look), every
    /// deployment whose selector matches it.
    fn enqueue_for_set(&self, rs: &ReplicaSet, orphans: bool) {
        if let Some(d) = self.owner_of_set(rs) {
            return self.queue.add(&key_of(d.as_ref()));
        }
        if controller_of(&rs.metadata).is_some() || !orphans {
            return;
        }
        for d in self.deployments.list_namespace(rs.metadata.namespace.as_deref().unwrap_or("")) {
            if selector(&d).matches(pods::labels(&rs.metadata)) {
                self.queue.add(&key_of(d.as_ref()));
            }
        }
    }

    fn sets_api(&self, d: &Deployment) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), d.metadata.namespace.as_deref().unwrap_or(""))
    }

    /// Resizes `w.sets[i]` (and records the deployment's size on it); true if its size changed.
    async fn scale(&self, w: &mut Work, i: usize, size: i32) -> anyhow::Result<bool> {
        let mut rs = w.sets[i].clone();
        let from = rs_replicas(&rs);
        let annotations = set_replicas_annotations(&mut rs, replicas(&w.d), replicas(&w.d) + max_surge(&w.d));
        if from == size && !annotations {
            return Ok(false);
        }
        rs.spec.get_or_insert_with(Default::default).replicas = Some(size);
        let name = rs.metadata.name.clone().unwrap_or_default();
        w.sets[i] = self.sets_api(&w.d).replace(&name, &PostParams::default(), &rs).await?;
        if from != size {
            let way = if size > from { "up" } else { "down" };
            self.recorder.record(
                reference(&w.d),
                false,
                "Scale",
                "ScalingReplicaSet",
                format!("Scaled {way} replica set {name} from {from} to {size}"),
            );
        }
        Ok(from != size)
    }

    /// Finds the set of the current template (bringing its annotations up to date) and, with
    /// `create`, makes it if there is none (Kubernetes' getAllReplicaSetsAndSyncRevision).
    async fn new_set(&self, w: &mut Work, create: bool) -> anyhow::Result<Option<usize>> {
        let refs = w.refs();
        let found = find_new(&w.d, &refs).and_then(|n| w.sets.iter().position(|s| s.metadata.uid == n.metadata.uid));
        let max_old =
            w.sets.iter().enumerate().filter(|(i, _)| Some(*i) != found).map(|(_, s)| revision(s)).max().unwrap_or(0);
        let new_revision = max_old + 1;
        let min_ready = w.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(i) = found {
            let mut rs = w.sets[i].clone();
            let changed = set_new_rs_annotations(&w.d, &mut rs, new_revision, true);
            let spec = rs.spec.get_or_insert_with(Default::default);
            if changed || spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0) {
                spec.min_ready_seconds = min_ready;
                let name = rs.metadata.name.clone().unwrap_or_default();
                w.sets[i] = self.sets_api(&w.d).replace(&name, &PostParams::default(), &rs).await?;
            }
            let rev =
                w.sets[i].metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned().unwrap_or_default();
            w.set_revision(&rev);
            if progress_deadline(&w.d).is_some() && progressing(w.status_mut()).is_none() {
                let name = w.sets[i].metadata.name.clone().unwrap_or_default();
                set_condition(
                    w.status_mut(),
                    new_condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        format!("Found new replica set {name:?}"),
                        Timestamp::now(),
                    ),
                );
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let spec = w.d.spec.clone().unwrap_or_default();
        let collisions = w.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let mut template: PodTemplateSpec = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", w.d.metadata.name.as_deref().unwrap_or(""));
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: w.d.metadata.namespace.clone(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![controller_ref(&w.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let size = {
            let mut all = w.refs();
            all.push(&rs);
            new_rs_new_replicas(&w.d, &all, &rs)
        };
        rs.spec.as_mut().map(|s| s.replicas = Some(size));
        set_new_rs_annotations(&w.d, &mut rs, new_revision, false);
        let api = self.sets_api(&w.d);
        let created = match api.create(&PostParams::default(), &rs).await {
            Ok(c) => {
                self.recorder.record(
                    reference(&w.d),
                    false,
                    "Scale",
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {size}"),
                );
                c
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Made by an earlier sync whose watch event has not come yet, or a collision.
                let existing = api.get(&name).await?;
                let ours = controller_of(&existing.metadata).is_some_and(|r| Some(&r.uid) == w.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if !(ours && same) {
                    let next = collisions.unwrap_or(0).saturating_add(1);
                    w.status_mut().collision_count = Some(next);
                    self.write_status(w).await?;
                    anyhow::bail!("hash collision for replica set {name}; collisionCount is now {next}");
                }
                existing
            }
            Err(e) => {
                if progress_deadline(&w.d).is_some() {
                    set_condition(
                        w.status_mut(),
                        new_condition(
                            "Progressing",
                            "False",
                            "ReplicaSetCreateError",
                            format!("Failed to create new replica set {name:?}: {e}"),
                            Timestamp::now(),
                        ),
                    );
                    self.write_status(w).await?;
                }
                return Err(e.into());
            }
        };
        w.set_revision(&new_revision.to_string());
        if progress_deadline(&w.d).is_some() {
            set_condition(
                w.status_mut(),
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set {name:?}"),
                    Timestamp::now(),
                ),
            );
        }
        w.sets.push(created);
        Ok(Some(w.sets.len() - 1))
    }

    /// Old sets (all but `new`) with pods, oldest first.
    fn old_active(w: &Work, new: Option<usize>) -> Vec<usize> {
        let mut idx: Vec<usize> =
            (0..w.sets.len()).filter(|&i| Some(i) != new && rs_replicas(&w.sets[i]) > 0).collect();
        idx.sort_by(|&a, &b| {
            let t = |i: usize| w.sets[i].metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b)).then_with(|| w.sets[a].metadata.name.cmp(&w.sets[b].metadata.name))
        });
        idx
    }

    async fn rolling(&self, key: &str, w: &mut Work) -> anyhow::Result<()> {
        let new = self.new_set(w, true).await?;
        if let Some(n) = new {
            let (cur, want) = (rs_replicas(&w.sets[n]), replicas(&w.d));
            if cur != want {
                let target = if cur > want { want } else { new_rs_new_replicas(&w.d, &w.refs(), &w.sets[n]) };
                if self.scale(w, n, target).await? {
                    return self.rollout_status(key, w, new).await;
                }
            }
        }
        let old = Self::old_active(w, new);
        if !old.is_empty() {
            let budget = max_scaled_down(&w.d, &w.refs(), new.map(|n| &w.sets[n]));
            if budget > 0 {
                let mut scaled = false;
                let plan = cleanup_unhealthy(&old.iter().map(|&i| &w.sets[i]).collect::<Vec<_>>(), budget);
                for (j, size) in plan {
                    scaled |= self.scale(w, old[j], size).await?;
                }
                let plan =
                    scale_down_old_for_rolling(&w.d, &w.refs(), &old.iter().map(|&i| &w.sets[i]).collect::<Vec<_>>());
                for (j, size) in plan {
                    scaled |= self.scale(w, old[j], size).await?;
                }
                if scaled {
                    return self.rollout_status(key, w, new).await;
                }
            }
        }
        if is_complete(&w.d, &w.original_status) {
            self.clean_history(w, new).await?;
        }
        self.rollout_status(key, w, new).await
    }

    async fn recreate(&self, key: &str, w: &mut Work) -> anyhow::Result<()> {
        let mut new = self.new_set(w, false).await?;
        let mut scaled = false;
        for i in Self::old_active(w, new) {
            scaled |= self.scale(w, i, 0).await?;
        }
        if scaled || self.old_pods_running(w, new) {
            return self.rollout_status(key, w, new).await;
        }
        if new.is_none() {
            new = self.new_set(w, true).await?;
        }
        if let Some(n) = new {
            let want = replicas(&w.d);
            self.scale(w, n, want).await?;
        }
        if is_complete(&w.d, &w.original_status) {
            self.clean_history(w, new).await?;
        }
        self.rollout_status(key, w, new).await
    }

    /// Whether pods of the old sets are still there (a Recreate rollout waits for them).
    fn old_pods_running(&self, w: &Work, new: Option<usize>) -> bool {
        let old: Vec<&ReplicaSet> =
            w.sets.iter().enumerate().filter(|(i, _)| Some(*i) != new).map(|(_, s)| s).collect();
        if old.iter().any(|s| s.status.as_ref().is_some_and(|st| st.replicas > 0)) {
            return true;
        }
        let uids: Vec<&str> = old.iter().filter_map(|s| s.metadata.uid.as_deref()).collect();
        self.pods.list_namespace(w.d.metadata.namespace.as_deref().unwrap_or("")).iter().any(|p| {
            controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid.as_str()))
                && !matches!(pods::phase(p), "Succeeded" | "Failed")
        })
    }

    /// Resizes the sets for the deployment's size (a scaling event, or a paused deployment).
    async fn scale_only(&self, w: &mut Work) -> anyhow::Result<()> {
        let new = self.new_set(w, false).await?;
        let sizes = proportional_sizes(&w.d, &w.refs(), new);
        for (i, size) in sizes.into_iter().enumerate() {
            if rs_replicas(&w.sets[i]) != size {
                self.scale(w, i, size).await?;
            }
        }
        if w.d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            self.clean_history(w, new).await?;
        }
        let now = Timestamp::now();
        let status = calculate_status(&w.d, &w.refs(), new.map(|n| &w.sets[n]), now);
        w.d.status = Some(status);
        self.write_status(w).await
    }

    async fn clean_history(&self, w: &Work, new: Option<usize>) -> anyhow::Result<()> {
        let old: Vec<&ReplicaSet> =
            w.sets.iter().enumerate().filter(|(i, _)| Some(*i) != new).map(|(_, s)| s).collect();
        let api = self.sets_api(&w.d);
        for rs in history_to_clean(&w.d, &old) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: rs.metadata.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            match api.delete(rs.metadata.name.as_deref().unwrap_or(""), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Computes the rollout's status, writes it if it changed, and looks again when the
    /// progress deadline would pass.
    async fn rollout_status(&self, key: &str, w: &mut Work, new: Option<usize>) -> anyhow::Result<()> {
        let now = Timestamp::now();
        let new_rs = new.map(|n| &w.sets[n]);
        let status = rollout_status(&w.d, calculate_status(&w.d, &w.refs(), new_rs, now), new_rs, now);
        if let Some(after) = recheck_after(&w.d, &status, now) {
            self.queue.add_after(key, after);
        }
        w.d.status = Some(status);
        self.write_status(w).await
    }

    /// Writes the deployment's status (and its revision annotation) if either changed.
    async fn write_status(&self, w: &Work) -> anyhow::Result<()> {
        let status = w.d.status.clone().unwrap_or_default();
        let body = status_patch(&status);
        if body == status_patch(&w.original_status) && !w.revision_changed {
            return Ok(());
        }
        let mut patch = json!({"metadata": {"resourceVersion": w.d.metadata.resource_version}, "status": body});
        if w.revision_changed {
            let rev = w.d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
            patch["metadata"]["annotations"] = json!({ REVISION: rev });
        }
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), w.d.metadata.namespace.as_deref().unwrap_or(""));
        match api
            .patch_status(w.d.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The Progressing condition of a paused or resumed deployment (Kubernetes'
    /// checkPausedConditions).
    fn paused_condition(w: &mut Work) {
        if progress_deadline(&w.d).is_none() {
            return;
        }
        let paused = w.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let reason = w.d.status.as_ref().and_then(progressing).and_then(|c| c.reason.clone());
        let now = Timestamp::now();
        if paused && reason.as_deref() != Some("DeploymentPaused") {
            set_condition(
                w.status_mut(),
                new_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), now),
            );
        } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
            set_condition(
                w.status_mut(),
                new_condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into(), now),
            );
        }
    }
}

/// A deployment's status as a merge patch: zero counts and absent fields removed, as Kubernetes
/// leaves them out.
pub fn status_patch(s: &DeploymentStatus) -> Value {
    let count = super::omit_zero;
    json!({
        "observedGeneration": s.observed_generation.filter(|g| *g != 0),
        "replicas": count(s.replicas),
        "updatedReplicas": count(s.updated_replicas),
        "readyReplicas": count(s.ready_replicas),
        "availableReplicas": count(s.available_replicas),
        "unavailableReplicas": count(s.unavailable_replicas),
        "collisionCount": s.collision_count,
        "conditions": s.conditions,
    })
}

impl Controller for DeploymentController {
    const NAME: &'static str = "deployment";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(cached) = self.deployments.get_key(key) else { return Ok(()) };
        let d = (*cached).clone();
        let sel = selector(&d);
        let mut w = Work {
            original_status: d.status.clone().unwrap_or_default(),
            d,
            revision_changed: false,
            sets: Vec::new(),
        };
        if sel.is_empty() {
            self.recorder.record(
                reference(&w.d),
                true,
                "Sync",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let generation = w.d.metadata.generation;
            if w.original_status.observed_generation < generation {
                w.status_mut().observed_generation = generation;
                self.write_status(&w).await?;
            }
            return Ok(());
        }
        let sets = pods::claim(&self.client, &w.d, &sel, &self.sets, |_| true).await?;
        w.sets = sets.iter().map(|s| (**s).clone()).collect();
        if w.d.metadata.deletion_timestamp.is_some() {
            let new = self.new_set(&mut w, false).await?;
            let status = calculate_status(&w.d, &w.refs(), new.map(|n| &w.sets[n]), Timestamp::now());
            w.d.status = Some(status);
            return self.write_status(&w).await;
        }
        Self::paused_condition(&mut w);
        let paused = w.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        if paused || is_scaling_event(&w.d, &w.refs()) {
            return self.scale_only(&mut w).await;
        }
        if is_recreate(&w.d) {
            self.recreate(key, &mut w).await
        } else {
            self.rolling(key, &mut w).await
        }
    }
}
