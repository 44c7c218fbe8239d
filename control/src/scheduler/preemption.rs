//! DefaultPreemption, kube-scheduler's PostFilter: when a pod fits nowhere, find a node where
//! removing pods of lower priority would make it fit, and the fewest, least important such pods.
//! Pure over the cycle's snapshot: the caller deletes the victims, sets the pod's
//! `status.nominatedNodeName` and puts the message into FailedScheduling.
//!
//! Where kube-scheduler updates the PreFilter state incrementally (AddPod/RemovePod extensions),
//! this re-runs PreFilter on a snapshot holding the reduced node, so that every plugin
//! (InterPodAffinity, PodTopologySpread) sees the node as it would be without the victims.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::algorithm::{self, Diagnosis, Failure};
use super::config::Profile;
use super::framework::{Code, PodInfo, Snapshot, Status};

/// Kubernetes' reason for a node with no pod of lower priority.
pub const REASON_NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Kubernetes' reason for the nodes preemption did not examine (or could not help).
pub const REASON_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// DefaultPreemptionArgs' defaults: how many candidate nodes a dry run looks for at least.
const MIN_CANDIDATE_NODES_PERCENTAGE: usize = 10;
const MIN_CANDIDATE_NODES_ABSOLUTE: usize = 100;

/// A node the pod would fit on once `victims` are gone; victims most important first.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

/// Kubernetes' PodEligibleToPreemptOthers. A pod with `preemptionPolicy: Never` never preempts.
/// A pod nominated to a node where a pod of lower priority is terminating waits: that is most
/// likely its own earlier preemption, and preempting again would evict pods needlessly.
pub fn eligible(pod: &PodInfo, snapshot: &Snapshot) -> bool {
    !never_preempts(pod) && !waits_for_victims(pod, snapshot)
}

/// The FailedScheduling part for a pod `eligible` refused (Kubernetes' wording).
pub fn not_eligible_message(pod: &PodInfo) -> String {
    if never_preempts(pod) {
        "preemption: not eligible due to preemptionPolicy=Never.".to_string()
    } else {
        "preemption: not eligible due to a terminating pod on the nominated node.".to_string()
    }
}

fn never_preempts(pod: &PodInfo) -> bool {
    pod.pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never")
}

fn waits_for_victims(pod: &PodInfo, snapshot: &Snapshot) -> bool {
    let nominated = pod.pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref()).filter(|n| !n.is_empty());
    let Some(node) = nominated.and_then(|n| snapshot.node(n)) else { return false };
    node.pods.iter().any(|p| p.priority < pod.priority && p.pod.metadata.deletion_timestamp.is_some())
}

/// Finds where `pod` goes by preemption and whom it evicts. `(Some, "")` on success; otherwise
/// `(None, message)`, the part FailedScheduling appends after the filters' message, e.g.
/// "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2
/// Preemption is not helpful for scheduling.". Empty when the profile has no DefaultPreemption.
/// The caller checks `eligible` first.
pub fn preempt(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    diagnosis: &Diagnosis,
) -> (Option<Candidate>, String) {
    let potential = potential_nodes(snapshot, diagnosis);
    // A random start spreads preemption over the cluster when only some nodes are examined.
    let offset = if potential.is_empty() { 0 } else { rand::thread_rng().gen_range(0..potential.len()) };
    preempt_from(profile, pod, snapshot, &potential, offset)
}

/// Snapshot indexes of the nodes where removing pods may help, in snapshot order.
fn potential_nodes(snapshot: &Snapshot, diagnosis: &Diagnosis) -> Vec<usize> {
    // A PreFilter failing the pod with plain Unschedulable fails it on every node alike.
    if diagnosis.pre_filter.as_ref().is_some_and(|s| s.code == Code::Unschedulable) {
        return (0..snapshot.nodes.len()).collect();
    }
    let names: HashSet<&str> = diagnosis.preemption_candidates().into_iter().collect();
    (0..snapshot.nodes.len()).filter(|&i| names.contains(snapshot.nodes[i].name.as_str())).collect()
}

/// Kubernetes' calculateNumCandidates: 10% of the potential nodes, at least 100, at most all.
fn candidates_wanted(potential: usize) -> usize {
    (potential * MIN_CANDIDATE_NODES_PERCENTAGE / 100).max(MIN_CANDIDATE_NODES_ABSOLUTE).min(potential)
}

fn preempt_from(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    potential: &[usize],
    offset: usize,
) -> (Option<Candidate>, String) {
    if !profile.preemption {
        return (None, String::new());
    }
    if snapshot.nodes.is_empty() {
        return (None, "preemption: no nodes available".to_string());
    }
    let now = now_nanos();
    let wanted = candidates_wanted(potential.len());
    let mut candidates = Vec::new();
    let mut statuses: Vec<Status> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // One copy of the snapshot whose examined node is swapped for its reduced version.
    let mut what_if = snapshot.clone();
    for k in 0..potential.len() {
        if candidates.len() >= wanted {
            break;
        }
        let i = potential[(offset + k) % potential.len()];
        match select_victims(profile, pod, &mut what_if, i, now) {
            Ok(victims) => candidates.push(Candidate { node: snapshot.nodes[i].name.clone(), victims }),
            Err(s) => {
                if s.code == Code::Error {
                    errors.extend(s.reasons.iter().cloned());
                }
                statuses.push(s);
            }
        }
        what_if.nodes[i] = snapshot.nodes[i].clone();
    }
    if candidates.is_empty() {
        if !errors.is_empty() {
            return (None, format!("preemption: {}", aggregate(errors)));
        }
        return (None, format!("preemption: {}", no_candidate_message(snapshot.nodes.len(), &statuses)));
    }
    let best = pick_one(&candidates, now);
    (Some(candidates.swap_remove(best)), String::new())
}

/// Kubernetes' selectVictimsOnNode: remove every pod of lower priority, check that the pod fits,
/// then add them back most important first, keeping each that still lets the pod fit. Leaves
/// the reduced node in `what_if.nodes[i]`; the caller restores it.
fn select_victims(
    profile: &Profile,
    pod: &PodInfo,
    what_if: &mut Snapshot,
    i: usize,
    now: i128,
) -> Result<Vec<Arc<PodInfo>>, Status> {
    let original = what_if.nodes[i].clone();
    let mut potential: Vec<Arc<PodInfo>> =
        original.pods.iter().filter(|p| p.priority < pod.priority).cloned().collect();
    if potential.is_empty() {
        return Err(Status::unresolvable(REASON_NO_VICTIMS));
    }
    let mut reduced = (*original).clone();
    for v in &potential {
        reduced.remove_pod(&v.uid);
    }
    what_if.nodes[i] = Arc::new(reduced);
    let status = fits(profile, pod, what_if, i);
    if !status.is_success() {
        return Err(status);
    }
    potential.sort_by(|a, b| more_important(a, b, now));
    let mut victims = Vec::new();
    for v in potential {
        Arc::make_mut(&mut what_if.nodes[i]).add_pod(v.clone());
        let status = fits(profile, pod, what_if, i);
        match status.code {
            Code::Success => {}
            Code::Error => return Err(status),
            _ => {
                Arc::make_mut(&mut what_if.nodes[i]).remove_pod(&v.uid);
                victims.push(v);
            }
        }
    }
    if victims.is_empty() {
        // The pod fits with every pod in place: the filters disagree with the scheduling cycle.
        return Err(Status::error(format!("expected at least one victim pod on node {:?}", original.name)));
    }
    Ok(victims)
}

/// PreFilter over the whole what-if snapshot, then the filters on node `i`.
fn fits(profile: &Profile, pod: &PodInfo, snapshot: &Snapshot, i: usize) -> Status {
    match algorithm::pre_filter(profile, pod, snapshot) {
        Ok((state, skip)) => algorithm::filter_node(profile, &state, &skip, pod, &snapshot.nodes[i]),
        Err(Failure::Unschedulable(d)) => d.pre_filter.unwrap_or_else(|| Status::unresolvable(REASON_NOT_HELPFUL)),
        Err(Failure::Error(e)) => Status::error(e),
    }
}

/// Kubernetes' MoreImportantPod as a sort order: higher priority first, then the longer running.
fn more_important(a: &PodInfo, b: &PodInfo, now: i128) -> Ordering {
    b.priority.cmp(&a.priority).then_with(|| start_time(a, now).cmp(&start_time(b, now)))
}

/// `status.startTime` in nanoseconds; a pod not started yet counts as starting now.
fn start_time(pod: &PodInfo, now: i128) -> i128 {
    pod.pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map_or(now, |t| t.0.as_nanosecond())
}

fn now_nanos() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Kubernetes' pickOneNodeForPreemption with no PodDisruptionBudgets: each criterion keeps the
/// best-scoring candidates, and the first left wins.
fn pick_one(candidates: &[Candidate], now: i128) -> usize {
    let criteria: [&dyn Fn(&Candidate) -> i128; 4] = [
        // The lowest highest-priority victim.
        &|c| -c.victims.first().map_or(0, |v| i128::from(v.priority)),
        // The smallest sum of priorities, each shifted to be positive so that more victims
        // never make a smaller sum.
        &|c| -c.victims.iter().map(|v| i128::from(v.priority) + (1i128 << 31)).sum::<i128>(),
        // The fewest victims.
        &|c| -(c.victims.len() as i128),
        // The latest start among the highest-priority victims: evict what has run the least.
        &|c| earliest_start_of_highest(&c.victims, now),
    ];
    let mut left: Vec<usize> = (0..candidates.len()).collect();
    for score in criteria {
        let Some(best) = left.iter().map(|&i| score(&candidates[i])).max() else { return 0 };
        left.retain(|&i| score(&candidates[i]) == best);
        if left.len() == 1 {
            break;
        }
    }
    left.first().copied().unwrap_or(0)
}

fn earliest_start_of_highest(victims: &[Arc<PodInfo>], now: i128) -> i128 {
    let Some(top) = victims.iter().map(|v| v.priority).max() else { return i128::MIN };
    victims.iter().filter(|v| v.priority == top).map(|v| start_time(v, now)).min().unwrap_or(i128::MIN)
}

/// Kubernetes' FitError text over the dry run: each examined node's reasons, and "Preemption is
/// not helpful for scheduling" for the rest, as "count reason" sorted as strings.
fn no_candidate_message(total: usize, statuses: &[Status]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in statuses {
        for r in &s.reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    let absent = total.saturating_sub(statuses.len());
    if absent > 0 {
        *counts.entry(REASON_NOT_HELPFUL).or_default() += absent;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available:");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// Kubernetes' error aggregate: one error as itself, several (deduplicated) in brackets.
fn aggregate(mut errors: Vec<String>) -> String {
    let mut seen = HashSet::new();
    errors.retain(|e| seen.insert(e.clone()));
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        format!("[{}]", errors.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::config::SchedulerConfiguration;
    use crate::scheduler::framework::NodeInfo;
    use serde_json::{json, Value};

    type Nodes = Vec<Arc<NodeInfo>>;
    type Pods = Vec<Arc<PodInfo>>;
    /// (case, incoming pod, nodes, chosen node, victims).
    type VictimCase<'a> = (&'a str, Arc<PodInfo>, Nodes, &'a str, &'a [&'a str]);

    fn profile() -> Profile {
        SchedulerConfiguration::parse("{}").unwrap().profiles().unwrap().remove(0)
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    /// A pod named `name` (also its uid) with `priority` and a cpu request; `extra` is merged in.
    fn pod(name: &str, priority: i32, cpu: &str, extra: Value) -> Arc<PodInfo> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "d", "uid": name},
            "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
        });
        merge(&mut v, extra);
        Arc::new(PodInfo::new(Arc::new(serde_json::from_value(v).unwrap())))
    }

    fn node(name: &str, cpu: &str, extra: Value, pods: &[&Arc<PodInfo>]) -> Arc<NodeInfo> {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}
        });
        merge(&mut v, extra);
        let mut n = NodeInfo::new(Arc::new(serde_json::from_value(v).unwrap()));
        for p in pods {
            n.add_pod((*p).clone());
        }
        Arc::new(n)
    }

    fn started(at: &str) -> Value {
        json!({"status": {"startTime": at}})
    }

    /// Schedules `pod` (which must fit nowhere) and runs preemption from the first node on.
    fn run(pod: &PodInfo, nodes: Vec<Arc<NodeInfo>>) -> (Option<Candidate>, String) {
        let snapshot = Snapshot { nodes, ..Default::default() };
        let p = profile();
        let mut start = 0;
        let Err(Failure::Unschedulable(d)) = algorithm::schedule(&p, pod, &snapshot, &mut start) else {
            panic!("{} should fit nowhere", pod.key)
        };
        preempt_from(&p, pod, &snapshot, &potential_nodes(&snapshot, &d), 0)
    }

    fn names(c: &Candidate) -> (String, Vec<String>) {
        (c.node.clone(), c.victims.iter().map(|v| v.uid.clone()).collect())
    }

    #[test]
    fn victims_are_the_fewest_lowest_priority_pods_that_free_enough() {
        let low = pod("low", 1, "2", json!({}));
        let mid = pod("mid", 5, "2", json!({}));
        let a = pod("a", 1, "1", started("2024-01-01T00:00:00Z"));
        let b = pod("b", 2, "1", json!({}));
        let c = pod("c", 3, "2", json!({}));
        let same = pod("same", 10, "2", json!({}));
        let high = pod("high", 20, "1", json!({}));
        let a2 = pod("a2", 1, "1", started("2024-01-02T00:00:00Z"));
        let cases: Vec<VictimCase> = vec![
            (
                "the lowest priority pod goes",
                pod("in", 10, "2", json!({})),
                vec![node("n", "4", json!({}), &[&low, &mid])],
                "n",
                &["low"],
            ),
            (
                "equal and higher priority pods stay",
                pod("in", 10, "1", json!({})),
                vec![node("n", "4", json!({}), &[&same, &high, &low])],
                "n",
                &["low"],
            ),
            // Most important first: c comes back, then b no longer fits, nor a.
            (
                "reprieve goes from the highest priority down",
                pod("in", 10, "2", json!({})),
                vec![node("n", "4", json!({}), &[&a, &b, &c])],
                "n",
                &["b", "a"],
            ),
            (
                "pods that need not go are reprieved",
                pod("in", 10, "1", json!({})),
                vec![node("n", "4", json!({}), &[&a, &b, &c])],
                "n",
                &["a"],
            ),
            // Equal priority: the longer running pod is the more important one.
            (
                "the newer of equals goes",
                pod("in", 10, "1", json!({})),
                vec![node("n", "4", json!({}), &[&a2, &a, &c])],
                "n",
                &["a2"],
            ),
        ];
        for (name, incoming, nodes, want_node, want_victims) in cases {
            let (c, msg) = run(&incoming, nodes);
            let c = c.unwrap_or_else(|| panic!("{name}: no candidate: {msg}"));
            assert_eq!(
                names(&c),
                (want_node.to_string(), want_victims.iter().map(|s| s.to_string()).collect()),
                "{name}"
            );
            assert_eq!(msg, "", "{name}");
        }
    }

    #[test]
    fn the_node_is_picked_as_kubernetes_picks_it() {
        let v = |name: &str, priority: i32, start: &str| pod(name, priority, "1", started(start));
        let c = |node: &str, victims: Vec<Arc<PodInfo>>| Candidate { node: node.into(), victims };
        let t0 = "2024-01-01T00:00:00Z";
        let t1 = "2024-01-02T00:00:00Z";
        let cases: Vec<(&str, Vec<Candidate>, &str)> = vec![
            (
                "lowest highest-victim priority",
                vec![c("a", vec![v("x", 5, t0)]), c("b", vec![v("y", 3, t0), v("z", 3, t0)])],
                "b",
            ),
            (
                "then smallest sum",
                vec![c("a", vec![v("x", 3, t0), v("y", 2, t0)]), c("b", vec![v("z", 3, t0), v("w", 1, t0)])],
                "b",
            ),
            (
                "negative priorities don't favour more victims",
                vec![c("a", vec![v("x", -5, t0), v("y", -5, t0)]), c("b", vec![v("z", -5, t0)])],
                "b",
            ),
            // Equal sums only with i32::MIN, which the shift makes 0.
            (
                "then fewest victims",
                vec![c("a", vec![v("x", 0, t0), v("y", i32::MIN, t0)]), c("b", vec![v("z", 0, t0)])],
                "b",
            ),
            (
                "then latest start of the highest-priority victims",
                vec![c("a", vec![v("x", 3, t0)]), c("b", vec![v("y", 3, t1)])],
                "b",
            ),
            (
                "earliest of them counts",
                vec![c("a", vec![v("x", 3, t1), v("w", 3, t0)]), c("b", vec![v("y", 3, t1), v("z", 3, t1)])],
                "b",
            ),
            ("then the first", vec![c("a", vec![v("x", 3, t0)]), c("b", vec![v("y", 3, t0)])], "a"),
        ];
        for (name, candidates, want) in cases {
            assert_eq!(candidates[pick_one(&candidates, 0)].node, want, "{name}");
        }
        // End to end: the node whose victim matters least.
        let (low, lower) = (pod("low", 5, "2", json!({})), pod("lower", 1, "2", json!({})));
        let nodes = vec![node("n1", "2", json!({}), &[&low]), node("n2", "2", json!({}), &[&lower])];
        let (c, _) = run(&pod("in", 10, "2", json!({})), nodes);
        assert_eq!(names(&c.unwrap()), ("n2".into(), vec!["lower".into()]));
    }

    #[test]
    fn messages_say_why_preemption_did_not_help() {
        let high = pod("high", 20, "2", json!({}));
        let low = pod("low", 1, "1", json!({}));
        let taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}});
        let cases: Vec<(&str, Arc<PodInfo>, Nodes, &str)> = vec![
            (
                "no lower priority pods; unresolvable nodes are not examined",
                pod("in", 10, "2", json!({})),
                vec![node("full", "2", json!({}), &[&high]), node("t1", "8", taint.clone(), &[&low]), node("t2", "8", taint.clone(), &[])],
                "preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.",
            ),
            (
                "removing every victim is not enough",
                pod("in", 10, "2", json!({})),
                vec![node("n", "2", json!({}), &[&pod("eq", 10, "1", json!({})), &low])],
                "preemption: 0/1 nodes are available: 1 Insufficient cpu.",
            ),
            (
                "a node selector is never preempted away",
                pod("in", 10, "1", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                vec![node("n", "8", json!({}), &[&low])],
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
            ),
        ];
        for (name, incoming, nodes, want) in cases {
            let (c, msg) = run(&incoming, nodes);
            assert!(c.is_none(), "{name}");
            assert_eq!(msg, want, "{name}");
        }
        let mut no_preemption = profile();
        no_preemption.preemption = false;
        let (c, msg) =
            preempt(&no_preemption, &pod("in", 10, "1", json!({})), &Snapshot::default(), &Diagnosis::default());
        assert!(c.is_none() && msg.is_empty());
        let (_, msg) = preempt(&profile(), &pod("in", 10, "1", json!({})), &Snapshot::default(), &Diagnosis::default());
        assert_eq!(msg, "preemption: no nodes available");
    }

    #[test]
    fn eligibility_follows_preemption_policy_and_pending_victims() {
        let nominated = json!({"status": {"nominatedNodeName": "n"}});
        let terminating = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}});
        let never = json!({"spec": {"preemptionPolicy": "Never"}});
        let cases: Vec<(&str, Arc<PodInfo>, Pods, bool, &str)> = vec![
            ("plain pod", pod("in", 10, "1", json!({})), vec![], true, ""),
            (
                "preemptionPolicy Never",
                pod("in", 10, "1", never),
                vec![],
                false,
                "preemption: not eligible due to preemptionPolicy=Never.",
            ),
            (
                "victim still terminating on the nominated node",
                pod("in", 10, "1", nominated.clone()),
                vec![pod("v", 1, "1", terminating.clone())],
                false,
                "preemption: not eligible due to a terminating pod on the nominated node.",
            ),
            (
                "terminating pod of higher priority",
                pod("in", 10, "1", nominated.clone()),
                vec![pod("v", 20, "1", terminating.clone())],
                true,
                "",
            ),
            (
                "lower priority pod not terminating",
                pod("in", 10, "1", nominated.clone()),
                vec![pod("v", 1, "1", json!({}))],
                true,
                "",
            ),
            ("not nominated", pod("in", 10, "1", json!({})), vec![pod("v", 1, "1", terminating.clone())], true, ""),
        ];
        for (name, incoming, pods, want, want_msg) in cases {
            let refs: Vec<&Arc<PodInfo>> = pods.iter().collect();
            let snapshot = Snapshot { nodes: vec![node("n", "4", json!({}), &refs)], ..Default::default() };
            assert_eq!(eligible(&incoming, &snapshot), want, "{name}");
            if !want {
                assert_eq!(not_eligible_message(&incoming), want_msg, "{name}");
            }
        }
    }

    #[test]
    fn pre_filter_state_is_recomputed_without_the_victims() {
        // Anti-affinity to a lower priority pod: gone with it. The higher priority one stays.
        let web =
            |name: &str, priority: i32| pod(name, priority, "100m", json!({"metadata": {"labels": {"app": "web"}}}));
        let (low_web, high_web) = (web("low-web", 1), web("high-web", 100));
        let anti = json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
        ]}}}});
        let nodes = vec![node("n1", "4", json!({}), &[&high_web]), node("n2", "4", json!({}), &[&low_web])];
        let (c, msg) = run(&pod("in", 10, "1", anti), nodes);
        assert_eq!(names(&c.unwrap_or_else(|| panic!("{msg}"))), ("n2".into(), vec!["low-web".into()]));

        // Topology spread (maxSkew 2, n2 is full with a pod that cannot go): of n1's two
        // matching pods, one must go — and only one, as the counts follow the removals.
        let spread_pod = |name: &str, start: &str| {
            let mut extra = started(start);
            merge(&mut extra, json!({"metadata": {"labels": {"app": "db"}}}));
            pod(name, 1, "100m", extra)
        };
        let (a, b) = (spread_pod("a", "2024-01-01T00:00:00Z"), spread_pod("b", "2024-01-02T00:00:00Z"));
        let blocker = pod("blocker", 100, "4", json!({}));
        let spread = json!({"metadata": {"labels": {"app": "db"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "db"}}}
        ]}});
        let nodes = vec![node("n1", "4", json!({}), &[&a, &b]), node("n2", "4", json!({}), &[&blocker])];
        let (c, msg) = run(&pod("in", 10, "1", spread), nodes);
        assert_eq!(names(&c.unwrap_or_else(|| panic!("{msg}"))), ("n1".into(), vec!["b".into()]));
    }

    #[test]
    fn a_bounded_number_of_nodes_is_examined() {
        let cases = [(0, 0), (1, 1), (100, 100), (999, 100), (1000, 100), (2500, 250)];
        for (potential, want) in cases {
            assert_eq!(candidates_wanted(potential), want, "{potential} potential nodes");
        }
        // With 150 potential nodes, 100 candidates are found from the offset on, and the best
        // of those wins: the node with the cheapest victim past them is never seen.
        let pods: Vec<Arc<PodInfo>> =
            (0..150).map(|i| pod(&format!("v{i}"), if i == 120 { 1 } else { 5 }, "1", json!({}))).collect();
        let nodes: Vec<Arc<NodeInfo>> = (0..150).map(|i| node(&format!("n{i}"), "1", json!({}), &[&pods[i]])).collect();
        let snapshot = Snapshot { nodes, ..Default::default() };
        let incoming = pod("in", 10, "1", json!({}));
        let p = profile();
        let all: Vec<usize> = (0..150).collect();
        let (c, _) = preempt_from(&p, &incoming, &snapshot, &all, 0);
        assert_eq!(c.unwrap().node, "n0");
        let (c, _) = preempt_from(&p, &incoming, &snapshot, &all, 30);
        assert_eq!(c.unwrap().node, "n120");
    }
}
