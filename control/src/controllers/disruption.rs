//! The disruption controller (Kubernetes' `disruption`): a PodDisruptionBudget's status — the
//! pods it expects (its selected pods' controllers' sizes, or the pods themselves), how many are
//! healthy (ready and not being deleted, evictions still under way left out), how many must be,
//! and so how many disruptions are allowed now, which the eviction subresource spends.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::deployment::rules::scaled_value;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, is_ready};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::labels::Selector;

/// An eviction not yet seen through (its pod still there, not being deleted) stops counting
/// against the budget after this (Kubernetes' DeletionTimeout).
pub const DISRUPTED_POD_TIMEOUT: Duration = Duration::from_secs(120);

/// (expected, desired healthy) for a budget (Kubernetes' getExpectedPodCount): an integer
/// minAvailable needs no scale; a percentage, or maxUnavailable, counts from `expected`.
pub fn desired(min_available: Option<&IntOrString>, max_unavailable: Option<&IntOrString>, expected: i32) -> i32 {
    match (max_unavailable, min_available) {
        (Some(max), _) => (expected - scaled_value(max, expected, true).unwrap_or(0)).max(0),
        (None, Some(IntOrString::Int(n))) => *n,
        (None, Some(p)) => scaled_value(p, expected, true).unwrap_or(0),
        (None, None) => expected,
    }
}

pub struct DisruptionController {
    client: kube::Client,
    budgets: Arc<Informer<PodDisruptionBudget>>,
    pods: Arc<Informer<Pod>>,
    replicasets: Arc<Informer<ReplicaSet>>,
    statefulsets: Arc<Informer<StatefulSet>>,
    queue: WorkQueue,
}

fn selector(b: &PodDisruptionBudget) -> Selector {
    b.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| Selector::parse(s).unwrap_or_else(|_| Selector::nothing()))
        .unwrap_or_else(Selector::nothing)
}

impl DisruptionController {
    pub fn new(m: &Manager) -> Arc<DisruptionController> {
        let c = Arc::new(DisruptionController {
            client: m.client.clone(),
            budgets: m.informers.poddisruptionbudgets(),
            pods: m.informers.pods(),
            replicasets: m.informers.replicasets(),
            statefulsets: m.informers.statefulsets(),
            queue: WorkQueue::new(),
        });
        let weak = Arc::downgrade(&c);
        c.budgets.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(b) | Change::Updated { new: b, .. } | Change::Deleted(b)) = change;
            c.queue.add(&key_of(b.as_ref()));
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(p) | Change::Updated { new: p, .. } | Change::Deleted(p)) = change;
            for b in c.budgets.list_namespace(p.metadata.namespace.as_deref().unwrap_or("")) {
                if selector(&b).matches(pods::labels(&p.metadata)) {
                    c.queue.add(&key_of(b.as_ref()));
                }
            }
        });
        c
    }

    /// The pods' controllers' sizes, each controller once; pods without a known one count alone.
    fn expected(&self, ns: &str, selected: &[Arc<Pod>]) -> i32 {
        let mut seen = HashSet::new();
        let mut total = 0;
        for p in selected {
            let Some(r) = controller_of(&p.metadata) else {
                total += 1;
                continue;
            };
            if !seen.insert(r.uid.clone()) {
                continue;
            }
            let size = match r.kind.as_str() {
                "ReplicaSet" => {
                    self.replicasets.get(ns, &r.name).and_then(|x| x.spec.as_ref().and_then(|s| s.replicas))
                }
                "StatefulSet" => {
                    self.statefulsets.get(ns, &r.name).and_then(|x| x.spec.as_ref().and_then(|s| s.replicas))
                }
                _ => None,
            };
            total += size.unwrap_or(1);
        }
        total
    }
}

impl Controller for DisruptionController {
    const NAME: &'static str = "disruption";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(budget) = self.budgets.get_key(key) else { return Ok(()) };
        let ns = budget.metadata.namespace.clone().unwrap_or_default();
        let sel = selector(&budget);
        let selected: Vec<Arc<Pod>> =
            self.pods.list_namespace(&ns).into_iter().filter(|p| sel.matches(pods::labels(&p.metadata))).collect();
        let now = Timestamp::now();
        // Evictions under way: their pods are not healthy any more, until the timeout.
        let status = budget.status.clone().unwrap_or_default();
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        for (name, at) in status.disrupted_pods.clone().unwrap_or_default() {
            let pending = selected
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && p.metadata.deletion_timestamp.is_none());
            if pending && at.0.as_second() + DISRUPTED_POD_TIMEOUT.as_secs() as i64 > now.as_second() {
                disrupted.insert(name, at);
            }
        }
        let healthy = selected
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && is_ready(p)
                    && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or(""))
            })
            .count() as i32;
        let spec = budget.spec.clone().unwrap_or_default();
        let expected = self.expected(&ns, &selected);
        let desired_healthy = desired(spec.min_available.as_ref(), spec.max_unavailable.as_ref(), expected);
        let allowed = (healthy - desired_healthy).max(0);
        let (cond_status, reason, message) =
            if allowed > 0 { ("True", "SufficientPods", "") } else { ("False", "InsufficientPods", "") };
        let old_cond =
            status.conditions.clone().unwrap_or_default().into_iter().find(|c| c.type_ == "DisruptionAllowed");
        let condition = Condition {
            type_: "DisruptionAllowed".into(),
            status: cond_status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: budget.metadata.generation,
            last_transition_time: old_cond
                .filter(|c| c.status == cond_status)
                .map(|c| c.last_transition_time)
                .unwrap_or(Time(now)),
        };
        let new = json!({
            "observedGeneration": budget.metadata.generation,
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired_healthy,
            "expectedPods": expected,
            "disruptedPods": if disrupted.is_empty() { serde_json::Value::Null } else { json!(disrupted) },
            "conditions": [condition],
        });
        let same = status.observed_generation == budget.metadata.generation
            && status.disruptions_allowed == allowed
            && status.current_healthy == healthy
            && status.desired_healthy == desired_healthy
            && status.expected_pods == expected
            && status.disrupted_pods.clone().unwrap_or_default() == disrupted
            && status.conditions.as_ref().and_then(|c| c.first()).map(|c| (&c.status, &c.reason))
                == Some((&condition.status, &condition.reason));
        if !same {
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &ns);
            // Conditioned on the version read: an eviction spending the budget meanwhile wins.
            let patch = json!({"metadata": {"resourceVersion": budget.metadata.resource_version}, "status": new});
            match api
                .patch_status(
                    budget.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !disrupted.is_empty() {
            self.queue.add_after(key, DISRUPTED_POD_TIMEOUT);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_healthy_follows_min_available_or_max_unavailable() {
        let int = |n| IntOrString::Int(n);
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(desired(Some(&int(2)), None, 5), 2);
        assert_eq!(desired(Some(&pct("50%")), None, 5), 3, "rounded up");
        assert_eq!(desired(None, Some(&int(1)), 5), 4);
        assert_eq!(desired(None, Some(&pct("30%")), 5), 3, "2 may be unavailable (rounded up)");
        assert_eq!(desired(None, Some(&int(9)), 5), 0);
    }
}
