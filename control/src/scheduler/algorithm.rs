//! One scheduling attempt under a profile: PreFilter, Filter over the nodes (stopping once
//! `percentageOfNodesToScore` of them are feasible, starting where the previous attempt stopped,
//! as kube-scheduler does), PreScore and Score on the feasible ones, weighted sum, and the best
//! node (ties broken at random). A pod that fits nowhere gets a diagnosis: each node's reasons,
//! which FailedScheduling's message counts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::config::Profile;
use super::framework::{nodes_to_score, Code, CycleState, NodeInfo, PodInfo, Snapshot, Status};

/// Why a pod fits no node.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// Per node that failed: its status (node name → status).
    pub nodes: HashMap<String, Status>,
    /// A PreFilter that failed the pod on every node, with its reason.
    pub pre_filter: Option<Status>,
    pub total_nodes: usize,
}

impl Diagnosis {
    /// Kubernetes' message: "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had untolerated taint(s)." (parts sorted as strings)
    pub fn message(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        match &self.pre_filter {
            Some(s) => {
                for r in &s.reasons {
                    *counts.entry(r.as_str()).or_default() += self.total_nodes;
                }
            }
            None => {
                for s in self.nodes.values() {
                    for r in &s.reasons {
                        *counts.entry(r.as_str()).or_default() += 1;
                    }
                }
            }
        }
        // Sorted as whole "count reason" strings, as Kubernetes sorts them.
        let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if parts.is_empty() {
            return format!("0/{} nodes are available.", self.total_nodes);
        }
        format!("0/{} nodes are available: {}.", self.total_nodes, parts.join(", "))
    }

    /// Nodes where removing pods might help (failed with `Unschedulable`, not unresolvable).
    pub fn preemption_candidates(&self) -> Vec<&str> {
        if self.pre_filter.as_ref().is_some_and(|s| s.code != Code::Unschedulable) {
            return Vec::new();
        }
        self.nodes.iter().filter(|(_, s)| s.code == Code::Unschedulable).map(|(n, _)| n.as_str()).collect()
    }
}

/// Where a pod goes.
#[derive(Debug, Clone)]
pub struct Placement {
    pub node: String,
    pub evaluated: usize,
    pub feasible: usize,
}

pub enum Failure {
    Unschedulable(Diagnosis),
    Error(String),
}

/// Runs PreFilter; Err when a plugin failed the pod everywhere.
pub fn pre_filter(profile: &Profile, pod: &PodInfo, snapshot: &Snapshot) -> Result<(CycleState, Vec<bool>), Failure> {
    let mut state = CycleState::default();
    let mut skip = vec![false; profile.filters.len()];
    for (i, p) in profile.filters.iter().enumerate() {
        let s = p.pre_filter(&mut state, pod, snapshot);
        match s.code {
            Code::Success => {}
            Code::Skip => skip[i] = true,
            Code::Error => return Err(Failure::Error(format!("{}: {}", p.name(), s.reasons.join(", ")))),
            Code::Unschedulable | Code::UnschedulableAndUnresolvable => {
                return Err(Failure::Unschedulable(Diagnosis {
                    nodes: HashMap::new(),
                    pre_filter: Some(s),
                    total_nodes: snapshot.nodes.len(),
                }));
            }
        }
    }
    Ok((state, skip))
}

/// Runs every Filter on one node; the first failure is the node's status.
pub fn filter_node(profile: &Profile, state: &CycleState, skip: &[bool], pod: &PodInfo, node: &NodeInfo) -> Status {
    for (i, p) in profile.filters.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let s = p.filter(state, pod, node);
        if !s.is_success() {
            return s;
        }
    }
    Status::success()
}

/// Schedules `pod` against `snapshot`. `next_start` rotates the first node examined.
pub fn schedule(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    next_start: &mut usize,
) -> Result<Placement, Failure> {
    let total = snapshot.nodes.len();
    if total == 0 {
        return Err(Failure::Unschedulable(Diagnosis { total_nodes: 0, ..Default::default() }));
    }
    let (mut state, skip) = pre_filter(profile, pod, snapshot)?;
    let wanted = nodes_to_score(total, profile.percentage_of_nodes_to_score).max(1);
    let mut feasible: Vec<Arc<NodeInfo>> = Vec::with_capacity(wanted.min(total));
    let mut diagnosis = Diagnosis { total_nodes: total, ..Default::default() };
    let start = *next_start % total;
    let mut examined = 0;
    for k in 0..total {
        let node = &snapshot.nodes[(start + k) % total];
        examined += 1;
        let s = filter_node(profile, &state, &skip, pod, &node.with_nominated(pod, snapshot));
        match s.code {
            Code::Success => {
                feasible.push(node.clone());
                if feasible.len() >= wanted {
                    break;
                }
            }
            Code::Error => return Err(Failure::Error(s.reasons.join(", "))),
            _ => {
                diagnosis.nodes.insert(node.name.clone(), s);
            }
        }
    }
    *next_start = (start + examined) % total;
    if feasible.is_empty() {
        return Err(Failure::Unschedulable(diagnosis));
    }
    let placement =
        |node: &NodeInfo| Placement { node: node.name.clone(), evaluated: examined, feasible: feasible.len() };
    if feasible.len() == 1 {
        return Ok(placement(&feasible[0]));
    }
    let mut totals = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for (plugin, weight) in &profile.scores {
        let s = plugin.pre_score(&mut state, pod, &feasible, snapshot);
        match s.code {
            Code::Skip => continue,
            Code::Success => {}
            _ => return Err(Failure::Error(format!("{}: {}", plugin.name(), s.reasons.join(", ")))),
        }
        for (i, node) in feasible.iter().enumerate() {
            scores[i] = plugin.score(&state, pod, node);
        }
        plugin.normalize_score(&state, pod, &mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += s * weight;
        }
    }
    // The best score; among equals, each is equally likely (reservoir sampling).
    let mut best = 0;
    let mut ties = 1u32;
    for i in 1..totals.len() {
        if totals[i] > totals[best] {
            best = i;
            ties = 1;
        } else if totals[i] == totals[best] {
            ties += 1;
            if rand::random::<u32>().is_multiple_of(ties) {
                best = i;
            }
        }
    }
    Ok(placement(&feasible[best]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::config::SchedulerConfiguration;
    use serde_json::json;

    fn node(name: &str, cpu: &str, labels: serde_json::Value, taints: serde_json::Value) -> Arc<NodeInfo> {
        Arc::new(NodeInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}
            }))
            .unwrap(),
        )))
    }

    fn pod(cpu: &str) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "d", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .unwrap(),
        ))
    }

    fn profile(text: &str) -> Profile {
        SchedulerConfiguration::parse(text).unwrap().profiles().unwrap().remove(0)
    }

    #[test]
    fn a_pod_goes_to_the_node_the_scores_prefer() {
        let mut busy = (*node("busy", "4", json!({}), json!([]))).clone();
        busy.add_pod(Arc::new(pod("3")));
        let snapshot =
            Snapshot { nodes: vec![Arc::new(busy), node("idle", "4", json!({}), json!([]))], ..Default::default() };
        let mut start = 0;
        let spread = schedule(&profile("{}"), &pod("500m"), &snapshot, &mut start).ok().unwrap();
        assert_eq!(spread.node, "idle", "LeastAllocated spreads");
        let pack = profile(
            "profiles: [{pluginConfig: [{name: NodeResourcesFit, args: {scoringStrategy: {type: MostAllocated}}}],
              plugins: {score: {disabled: [{name: NodeResourcesBalancedAllocation}]}}}]",
        );
        let packed = schedule(&pack, &pod("500m"), &snapshot, &mut start).ok().unwrap();
        assert_eq!(packed.node, "busy", "MostAllocated packs");
    }

    #[test]
    fn a_pod_that_fits_nowhere_gets_kubernetes_message() {
        let busy = |name: &str| {
            let mut n = (*node(name, "2", json!({}), json!([]))).clone();
            n.add_pod(Arc::new(pod("1")));
            Arc::new(n)
        };
        let snapshot = Snapshot {
            nodes: vec![
                busy("small-1"),
                busy("small-2"),
                node("tainted", "8", json!({}), json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])),
            ],
            ..Default::default()
        };
        let mut start = 0;
        let Err(Failure::Unschedulable(d)) = schedule(&profile("{}"), &pod("2"), &snapshot, &mut start) else {
            panic!("should not fit")
        };
        assert_eq!(d.message(), "0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 Insufficient cpu.");
        let mut candidates = d.preemption_candidates();
        candidates.sort();
        assert_eq!(candidates, ["small-1", "small-2"], "taints cannot be preempted away");
        let empty = Snapshot::default();
        let Err(Failure::Unschedulable(d)) = schedule(&profile("{}"), &pod("2"), &empty, &mut start) else { panic!() };
        assert_eq!(d.message(), "0/0 nodes are available.");
    }

    #[test]
    fn the_search_starts_where_the_last_one_stopped() {
        let nodes: Vec<_> = (0..200).map(|i| node(&format!("n{i}"), "4", json!({}), json!([]))).collect();
        let snapshot = Snapshot { nodes, ..Default::default() };
        let p = profile("percentageOfNodesToScore: 10");
        let mut start = 0;
        let first = schedule(&p, &pod("1"), &snapshot, &mut start).ok().unwrap();
        // At least 100 nodes are examined (Kubernetes' minimum) before the search stops.
        assert_eq!((first.evaluated, first.feasible), (100, 100));
        assert_eq!(start, 100);
        schedule(&p, &pod("1"), &snapshot, &mut start).ok().unwrap();
        assert_eq!(start, 0);
    }
}
