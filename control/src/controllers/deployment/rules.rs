//! The Deployment controller's decisions as pure functions of the deployment and its
//! ReplicaSets (Kubernetes' deployment util): surge and unavailability budgets, the new
//! ReplicaSet's size, how far old ones may shrink, proportional scaling, revisions, the
//! pod-template hash, status and conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a deployment that its ReplicaSets do not copy.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet, f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>) -> i32 {
    rs.status.as_ref().and_then(f).unwrap_or(0)
}

pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.available_replicas)
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// An int-or-percent value against `total` (percentages rounded up or down).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: {s:?}"))?;
            let num = p * i64::from(total);
            Ok((if round_up { (num + 99).div_euclid(100) } else { num.div_euclid(100) }) as i32)
        }
    }
}

/// maxSurge and maxUnavailable as pod counts (Kubernetes' ResolveFenceposts): if both come to
/// zero, one pod may be unavailable, or the rollout could never start.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = ru.and_then(|r| r.max_surge.clone()).unwrap_or(IntOrString::String("25%".into()));
    let unavailable = ru.and_then(|r| r.max_unavailable.clone()).unwrap_or(IntOrString::String("25%".into()));
    let desired = replicas(d);
    let surge = scaled_value(&surge, desired, true).unwrap_or(0);
    let unavailable = scaled_value(&unavailable, desired, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

pub fn max_surge(d: &Deployment) -> i32 {
    if is_recreate(d) {
        0
    } else {
        fenceposts(d).0
    }
}

pub fn max_unavailable(d: &Deployment) -> i32 {
    if is_recreate(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

/// The size the new ReplicaSet may grow to now (Kubernetes' NewRSNewReplicas).
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
    if is_recreate(d) {
        return replicas(d);
    }
    let current: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let max_total = replicas(d) + max_surge(d);
    if current >= max_total {
        return rs_replicas(new);
    }
    let up = (max_total - current).min(replicas(d) - rs_replicas(new)).max(0);
    rs_replicas(new) + up
}

/// How many pods the old ReplicaSets may lose now without the deployment going below its
/// minimum availability (the first step of Kubernetes' reconcileOldReplicaSets).
pub fn max_scaled_down(d: &Deployment, all: &[&ReplicaSet], new: Option<&ReplicaSet>) -> i32 {
    let all_pods: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = new.map(|n| rs_replicas(n) - rs_available(n)).unwrap_or(0);
    all_pods - min_available - new_unavailable
}

/// Reductions of old sets' sizes that remove their unavailable pods first, oldest set first, up
/// to `budget` pods (Kubernetes' cleanupUnhealthyReplicas). Returns (index, new size).
pub fn cleanup_unhealthy(old: &[&ReplicaSet], budget: i32) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    let mut total = 0;
    for (i, rs) in old.iter().enumerate() {
        if total >= budget {
            break;
        }
        let size = rs_replicas(rs);
        if size == 0 {
            continue;
        }
        let unhealthy = size - rs_available(rs);
        if unhealthy <= 0 {
            continue;
        }
        let down = (budget - total).min(unhealthy);
        out.push((i, size - down));
        total += down;
    }
    out
}

/// Reductions of old sets (oldest first) that keep at least minimum availability counting
/// available pods across every set (Kubernetes' scaleDownOldReplicaSetsForRollingUpdate).
pub fn scale_down_old_for_rolling(d: &Deployment, all: &[&ReplicaSet], old: &[&ReplicaSet]) -> Vec<(usize, i32)> {
    let min_available = replicas(d) - max_unavailable(d);
    // A set just shrunk still reports the pods it is about to delete; they count for nothing.
    let available: i32 = all.iter().map(|rs| rs_available(rs).min(rs_replicas(rs))).sum();
    if available <= min_available {
        return Vec::new();
    }
    let total = available - min_available;
    let mut done = 0;
    let mut out = Vec::new();
    for (i, rs) in old.iter().enumerate() {
        if done >= total {
            break;
        }
        let size = rs_replicas(rs);
        if size == 0 {
            continue;
        }
        let down = size.min(total - done);
        out.push((i, size - down));
        done += down;
    }
    out
}

/// Sorted oldest first (creation, then name), as Kubernetes orders ReplicaSets.
pub fn sort_oldest_first(sets: &mut [&ReplicaSet]) {
    sets.sort_by(|a, b| {
        let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// A template without the pod-template-hash label (for comparing a set's with the deployment's).
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t.metadata.as_mut().map(|m| m.labels = None);
        }
    }
    t
}

pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The set whose template is the deployment's (the oldest such, should there be several).
pub fn find_new<'a>(d: &Deployment, sets: &[&'a ReplicaSet]) -> Option<&'a ReplicaSet> {
    let template = &d.spec.as_ref()?.template;
    let mut sorted = sets.to_vec();
    sort_oldest_first(&mut sorted);
    sorted
        .into_iter()
        .find(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignore_hash(t, template)))
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The pod-template hash: FNV-1a over the template's JSON and the collision count, its decimal
/// digits spelled in the alphabet Kubernetes uses for names (no vowels, no look-alikes).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&without_hash(template)).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// Copies the deployment's annotations to the new set and sets its revision (Kubernetes'
/// SetNewReplicaSetAnnotations); true if the set's annotations changed.
pub fn set_new_rs_annotations(d: &Deployment, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
    let mut changed = false;
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_n: i64 = old.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    if old_n < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = match annotations.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old,
            };
            annotations.insert(REVISION_HISTORY.into(), history);
        }
    }
    if !exists {
        changed |= set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d));
    }
    changed
}

/// Records the deployment's size and ceiling on a set; true if they changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let (d, m) = (desired.to_string(), max.to_string());
    let changed = annotations.get(DESIRED_REPLICAS) != Some(&d) || annotations.get(MAX_REPLICAS) != Some(&m);
    annotations.insert(DESIRED_REPLICAS.into(), d);
    annotations.insert(MAX_REPLICAS.into(), m);
    changed
}

/// Whether the deployment's size changed since its active sets were sized (Kubernetes'
/// isScalingEvent): then the sets are resized in proportion rather than rolled.
pub fn is_scaling_event(d: &Deployment, sets: &[&ReplicaSet]) -> bool {
    sets.iter().filter(|rs| rs_replicas(rs) > 0).any(|rs| {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESIRED_REPLICAS))
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|n| n != replicas(d))
    })
}

/// New sizes for the sets when the deployment is resized mid-rollout (Kubernetes' scale): each
/// set gets its share of the change in proportion to its size, leftovers to the largest
/// (newest on growth, oldest on shrinking). `new` is the index of the new set, if any.
pub fn proportional_sizes(d: &Deployment, sets: &[&ReplicaSet], new: Option<usize>) -> Vec<i32> {
    let mut sizes: Vec<i32> = sets.iter().map(|rs| rs_replicas(rs)).collect();
    let active: Vec<usize> = (0..sets.len()).filter(|&i| sizes[i] > 0).collect();
    // One active set (or none, then the newest): it takes the whole size.
    if active.len() <= 1 {
        let target = active.first().copied().or(new).or_else(|| {
            let mut all: Vec<usize> = (0..sets.len()).collect();
            all.sort_by_key(|&i| std::cmp::Reverse(sets[i].metadata.creation_timestamp.as_ref().map(|t| t.0)));
            all.first().copied()
        });
        if let Some(t) = target {
            sizes[t] = replicas(d);
        }
        return sizes;
    }
    // Saturated: the new set has it all and is available; the old ones go.
    if let Some(n) = new {
        if rs_replicas(sets[n]) == replicas(d) && rs_available(sets[n]) == replicas(d) {
            for (i, s) in sizes.iter_mut().enumerate() {
                if i != n {
                    *s = 0;
                }
            }
            return sizes;
        }
    }
    if is_recreate(d) {
        return sizes;
    }
    let all_replicas: i32 = sizes.iter().sum();
    let allowed = if replicas(d) > 0 { replicas(d) + max_surge(d) } else { 0 };
    let to_add = allowed - all_replicas;
    if to_add == 0 {
        return sizes;
    }
    let mut order: Vec<usize> = active.clone();
    let created = |i: usize| sets[i].metadata.creation_timestamp.as_ref().map(|t| t.0);
    if to_add > 0 {
        order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then_with(|| created(b).cmp(&created(a))));
    } else {
        order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then_with(|| created(a).cmp(&created(b))));
    }
    let deployment_max = replicas(d) + max_surge(d);
    let mut added = 0;
    let mut changes = vec![0i32; sets.len()];
    for &i in &order {
        if to_add == added {
            break;
        }
        let annotated = sets[i]
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MAX_REPLICAS))
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(1));
        let fraction =
            ((f64::from(sizes[i]) * f64::from(deployment_max) / f64::from(annotated)).round() as i32) - sizes[i];
        let allowed_left = to_add - added;
        let change = if to_add > 0 { fraction.min(allowed_left) } else { fraction.max(allowed_left) };
        changes[i] = change;
        added += change;
    }
    if let Some(&first) = order.first() {
        changes[first] += to_add - added;
    }
    for i in 0..sizes.len() {
        sizes[i] = (sizes[i] + changes[i]).max(0);
    }
    sizes
}

fn condition<'a>(s: &'a DeploymentStatus, kind: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == kind)
}

pub fn progressing(s: &DeploymentStatus) -> Option<&DeploymentCondition> {
    condition(s, "Progressing")
}

pub fn new_condition(kind: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition unless one of the same status and reason is there (Kubernetes'
/// SetDeploymentCondition): a change of reason alone keeps the transition time.
pub fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    let conditions = s.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(c);
}

pub fn remove_condition(s: &mut DeploymentStatus, kind: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != kind);
        if cs.is_empty() {
            s.conditions = None;
        }
    }
}

/// The status the sets give the deployment (Kubernetes' calculateStatus), with the Available
/// condition.
pub fn calculate_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let sum = |f: fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let available = sum(rs_available);
    let total_spec = sum(rs_replicas);
    let old = d.status.clone().unwrap_or_default();
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))),
        updated_replicas: Some(new.map(|n| n.status.as_ref().map(|s| s.replicas).unwrap_or(0)).unwrap_or(0)),
        ready_replicas: Some(sum(|rs| rs_status(rs, |s| s.ready_replicas))),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: None,
    };
    if available >= replicas(d) - max_unavailable(d) {
        set_condition(
            &mut s,
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut s,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    s
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Every replica updated and available, and the latest spec observed.
pub fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = replicas(d);
    n(s.updated_replicas) == want
        && n(s.replicas) == want
        && n(s.available_replicas) == want
        && s.observed_generation >= d.metadata.generation
}

/// Whether the rollout moved since the deployment's recorded status (Kubernetes'
/// DeploymentProgressing).
pub fn is_progressing(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(s.replicas) - n(s.updated_replicas);
    n(s.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(s.ready_replicas) > n(old.ready_replicas)
        || n(s.available_replicas) > n(old.available_replicas)
}

pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).filter(|s| *s != i32::MAX)
}

/// Whether the rollout has made no progress for `progressDeadlineSeconds`.
pub fn timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else { return false };
    let Some(c) = progressing(s) else { return false };
    if c.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return false;
    }
    if c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
        return true;
    }
    let from = c.last_update_time.as_ref().map(|t| t.0.as_second()).unwrap_or(now.as_second());
    from + i64::from(deadline) < now.as_second()
}

/// The rollout's Progressing condition for `s` (Kubernetes' syncRolloutStatus).
pub fn rollout_status(
    d: &Deployment,
    mut s: DeploymentStatus,
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    if progress_deadline(d).is_none() {
        remove_condition(&mut s, "Progressing");
        return s;
    }
    let current = progressing(&s).cloned();
    let complete_before = n(s.replicas) == n(s.updated_replicas)
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
    if complete_before {
        return s;
    }
    let name = new.and_then(|n| n.metadata.name.clone()).unwrap_or_default();
    if is_complete(d, &s) {
        let c = new_condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {name:?} has successfully progressed."),
            now,
        );
        set_condition(&mut s, c);
    } else if is_progressing(d, &s) {
        let mut c = new_condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {name:?} is progressing."),
            now,
        );
        if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        // Progress refreshes lastUpdateTime, from which the deadline counts.
        remove_condition(&mut s, "Progressing");
        set_condition(&mut s, c);
    } else if timed_out(d, &s, now) {
        let c = new_condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet {name:?} has timed out progressing."),
            now,
        );
        set_condition(&mut s, c);
    }
    s
}

/// When to look at a rollout again that has not progressed, to mark its deadline (None: no need).
pub fn recheck_after(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> Option<std::time::Duration> {
    let deadline = progress_deadline(d)?;
    let c = progressing(s)?;
    if is_complete(d, s)
        || matches!(c.reason.as_deref(), Some("NewReplicaSetAvailable") | Some("ProgressDeadlineExceeded"))
    {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0.as_second();
    let left = from + i64::from(deadline) - now.as_second();
    Some(std::time::Duration::from_secs(left.max(0) as u64 + 1))
}

/// The sets to delete beyond `revisionHistoryLimit`: inactive old ones, lowest revision first
/// (Kubernetes' cleanupDeployment).
pub fn history_to_clean<'a>(d: &Deployment, old: &[&'a ReplicaSet]) -> Vec<&'a ReplicaSet> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else { return Vec::new() };
    let mut cleanable: Vec<&ReplicaSet> =
        old.iter().copied().filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
    let diff = cleanable.len() as i64 - i64::from(limit);
    if diff <= 0 {
        return Vec::new();
    }
    cleanable.sort_by(|a, b| {
        revision(a).cmp(&revision(b)).then_with(|| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
        })
    });
    cleanable
        .into_iter()
        .filter(|rs| {
            rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation <= rs.status.as_ref().and_then(|s| s.observed_generation)
        })
        .take(diff as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, surge: serde_json::Value, unavailable: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "progressDeadlineSeconds": 600, "revisionHistoryLimit": 2,
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}
        }))
        .unwrap()
    }

    fn rs(name: &str, created: i64, spec: i32, status: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": Timestamp::from_second(created).unwrap().to_string(), "generation": 1},
            "spec": {"replicas": spec, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": status, "availableReplicas": available, "readyReplicas": available, "observedGeneration": 1}
        }))
        .unwrap()
    }

    #[test]
    fn fenceposts_resolve_percentages_as_kubernetes_does() {
        let cases = [
            (10, json!("25%"), json!("25%"), (3, 2)),
            (3, json!("25%"), json!("25%"), (1, 0)),
            (10, json!(2), json!("10%"), (2, 1)),
            // Both zero: one pod may be unavailable, or nothing could move.
            (4, json!(0), json!(0), (0, 1)),
            (1, json!("0%"), json!("50%"), (0, 1)),
        ];
        for (replicas, surge, unavailable, want) in cases {
            let d = deployment(replicas, surge.clone(), unavailable.clone());
            assert_eq!(fenceposts(&d), want, "{replicas} {surge} {unavailable}");
        }
        assert!(scaled_value(&IntOrString::String("x%".into()), 10, true).is_err());
        assert_eq!(max_unavailable(&deployment(0, json!(1), json!(1))), 0);
    }

    #[test]
    fn a_rolling_update_stays_within_its_budgets() {
        // 10 replicas, surge 3, unavailable 2: at most 13 pods, at least 8 available.
        let d = deployment(10, json!(3), json!(2));
        // (old size, old available, new size, new available) → the new set's size after
        // scaling up, and how many old pods may then go.
        let cases = [
            ((10, 10, 0, 0), 3, 2),
            ((10, 10, 3, 0), 3, 2),
            ((10, 10, 3, 3), 3, 5),
            ((5, 5, 8, 8), 8, 5),
            ((0, 0, 10, 10), 10, 0),
        ];
        for ((os, oa, ns, na), want_new, want_down) in cases {
            let (old, new) = (rs("old", 1, os, os, oa), rs("new", 2, ns, ns, na));
            assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), want_new, "{os} {oa} {ns} {na}");
            let grown = rs("new", 2, want_new, ns, na);
            let down = max_scaled_down(&d, &[&old, &grown], Some(&grown)).clamp(0, os);
            assert_eq!(down, want_down, "{os} {oa} {ns} {na}");
        }
    }

    #[test]
    fn old_sets_shrink_unhealthy_first_and_keep_availability() {
        let d = deployment(10, json!(3), json!(2));
        let (a, b) = (rs("a", 1, 4, 4, 1), rs("b", 2, 6, 6, 6));
        assert_eq!(cleanup_unhealthy(&[&a, &b], 5), vec![(0, 1)]);
        assert_eq!(cleanup_unhealthy(&[&a, &b], 2), vec![(0, 2)]);
        // 7 available, 8 must stay: nothing may go.
        let new = rs("new", 3, 3, 3, 0);
        assert!(scale_down_old_for_rolling(&d, &[&a, &b, &new], &[&a, &b]).is_empty());
        let new = rs("new", 3, 3, 3, 3);
        // 10 available, 8 must stay: two go, from the oldest.
        assert_eq!(scale_down_old_for_rolling(&d, &[&a, &b, &new], &[&a, &b]), vec![(0, 2)]);
        // b was shrunk from 6 to 4 and its status still counts 6: 1 + 4 + 3 = 8 available, none go.
        let b = rs("b", 2, 4, 6, 6);
        assert!(scale_down_old_for_rolling(&d, &[&a, &b, &new], &[&a, &b]).is_empty());
    }

    #[test]
    fn resizing_mid_rollout_is_proportional() {
        // 10 replicas (surge 3) rolled halfway: old 8, new 5 (max-replicas 13); resized to 20.
        let mut d = deployment(20, json!(3), json!(2));
        let mut old = rs("old", 1, 8, 8, 8);
        let mut new = rs("new", 2, 5, 5, 5);
        set_replicas_annotations(&mut old, 10, 13);
        set_replicas_annotations(&mut new, 10, 13);
        assert!(is_scaling_event(&d, &[&old, &new]));
        // Allowed 20 + 3 surge = 23; 10 to add: old 8*23/13 ≈ 14 (+6), new 5*23/13 ≈ 9 (+4).
        assert_eq!(proportional_sizes(&d, &[&old, &new], Some(1)), vec![14, 9]);
        d.spec.as_mut().unwrap().replicas = Some(10);
        assert!(!is_scaling_event(&d, &[&old, &new]));
        // A single active set takes the whole size.
        let idle = rs("idle", 0, 0, 0, 0);
        assert_eq!(proportional_sizes(&d, &[&idle, &new], Some(1)), vec![0, 10]);
    }

    #[test]
    fn the_hash_ignores_its_own_label_and_counts_collisions() {
        let d = deployment(1, json!(1), json!(1));
        let t = d.spec.as_ref().unwrap().template.clone();
        let h = template_hash(&t, None);
        assert!(!h.is_empty() && h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        let mut labeled = t.clone();
        labeled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), h.clone());
        assert_eq!(template_hash(&labeled, None), h);
        assert!(equal_ignore_hash(&labeled, &t));
        assert_ne!(template_hash(&t, Some(1)), h);
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into());
        assert_ne!(template_hash(&other, None), h);
        assert!(!equal_ignore_hash(&other, &t));
    }

    #[test]
    fn revisions_move_forward_and_keep_history() {
        let mut d = deployment(3, json!(1), json!(1));
        d.metadata.annotations = Some(
            [
                ("kubernetes.io/change-cause".to_string(), "set image".to_string()),
                (REVISION.to_string(), "9".to_string()),
            ]
            .into(),
        );
        let mut set = rs("a", 1, 3, 3, 3);
        assert!(set_new_rs_annotations(&d, &mut set, 1, false));
        let a = set.metadata.annotations.clone().unwrap();
        assert_eq!(a.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(a.get("kubernetes.io/change-cause").map(String::as_str), Some("set image"));
        assert_eq!(a.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(a.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert!(!set_new_rs_annotations(&d, &mut set, 1, true), "nothing to change");
        // Rolled back to: it becomes revision 3 and remembers 1.
        assert!(set_new_rs_annotations(&d, &mut set, 3, true));
        let a = set.metadata.annotations.clone().unwrap();
        assert_eq!(
            (a.get(REVISION).map(String::as_str), a.get(REVISION_HISTORY).map(String::as_str)),
            (Some("3"), Some("1"))
        );
    }

    #[test]
    fn conditions_follow_the_rollout() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut d = deployment(3, json!(1), json!(1));
        let (old, new) = (rs("old", 1, 2, 2, 2), rs("new", 2, 2, 2, 1));
        let s = calculate_status(&d, &[&old, &new], Some(&new), now);
        assert_eq!(
            (s.replicas, s.updated_replicas, s.available_replicas, s.unavailable_replicas),
            (Some(4), Some(2), Some(3), Some(1))
        );
        let avail = s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Available").unwrap();
        assert_eq!(avail.status, "True", "3 available of 3 with 1 unavailable allowed");
        let s = rollout_status(&d, s, Some(&new), now);
        assert_eq!(progressing(&s).unwrap().reason.as_deref(), Some("ReplicaSetUpdated"));
        // Recorded; no progress since, and the deadline passes.
        d.status = Some(s.clone());
        let later = Timestamp::from_second(10_000 + 601).unwrap();
        assert_eq!(recheck_after(&d, &s, now), Some(std::time::Duration::from_secs(601)));
        let stuck = rollout_status(&d, calculate_status(&d, &[&old, &new], Some(&new), later), Some(&new), later);
        assert_eq!(progressing(&stuck).unwrap().reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(progressing(&stuck).unwrap().status, "False");
        // Complete.
        let done = rs("new", 2, 3, 3, 3);
        let s = rollout_status(&d, calculate_status(&d, &[&done], Some(&done), later), Some(&done), later);
        assert_eq!(progressing(&s).unwrap().reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert!(is_complete(&d, &s));
    }

    #[test]
    fn history_beyond_the_limit_goes_lowest_revision_first() {
        let d = deployment(3, json!(1), json!(1));
        let mut sets: Vec<ReplicaSet> = (1..=4).map(|i| rs(&format!("r{i}"), i, 0, 0, 0)).collect();
        for (i, s) in sets.iter_mut().enumerate() {
            s.metadata.annotations = Some([(REVISION.to_string(), (i + 1).to_string())].into());
        }
        sets[1].spec.as_mut().unwrap().replicas = Some(1);
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        let gone: Vec<&str> = history_to_clean(&d, &refs).iter().map(|r| r.metadata.name.as_deref().unwrap()).collect();
        // Limit 2 of 4: two should go, but r2 still has a replica.
        assert_eq!(gone, vec!["r1", "r3"]);
    }
}
