//! NodeResourcesBalancedAllocation: prefers nodes whose resources would be used evenly with the
//! pod there, so that no node runs out of one resource while another lies idle. The score is
//! `(1 - σ) * 100`, σ the standard deviation of the requested fractions of each resource.
//!
//! As in Kubernetes it counts plain requests (no defaults for request-less containers) and skips
//! pods that request nothing, which would otherwise all pile onto one node.
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::node_resources_fit::{default_resources, pod_request_for_scoring, requested_and_allocatable, ResourceSpec};
use crate::scheduler::framework::{CycleState, NodeInfo, Plugin, PodInfo, Snapshot, Status, MAX_NODE_SCORE};

pub const NAME: &str = "NodeResourcesBalancedAllocation";

/// The plugin's weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 1;

/// `(1 - σ) * MAX_NODE_SCORE` over the fractions `requested / allocatable` (each capped at 1) of
/// the resources the node has, truncated. One resource or none: σ is 0.
pub fn balanced_score(requested: &[i64], allocatable: &[i64]) -> i64 {
    let fractions: Vec<f64> = requested
        .iter()
        .zip(allocatable)
        .filter(|(_, &alloc)| alloc != 0)
        .map(|(&req, &alloc)| (req as f64 / alloc as f64).min(1.0))
        .collect();
    let std = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        f if f.len() > 2 => {
            let mean = f.iter().sum::<f64>() / f.len() as f64;
            (f.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / f.len() as f64).sqrt()
        }
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// `NodeResourcesBalancedAllocationArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Args {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: Option<String>,
    resources: Option<Vec<ResourceSpec>>,
}

pub struct BalancedAllocation {
    resources: Vec<ResourceSpec>,
}

impl BalancedAllocation {
    /// Builds the plugin from `NodeResourcesBalancedAllocationArgs`: `resources` defaults to cpu
    /// and memory; each resource once, with weight 1 (0 or unset means 1).
    pub fn new(args: Option<&Value>) -> Result<Self, String> {
        let args: Args = super::decode_args(args)?;
        let mut resources = args.resources.filter(|r| !r.is_empty()).unwrap_or_else(default_resources);
        let mut seen = BTreeSet::new();
        let mut errs = Vec::new();
        for (i, r) in resources.iter_mut().enumerate() {
            if !seen.insert(r.name.clone()) {
                errs.push(format!("resources[{i}].name: duplicate value {:?}", r.name));
            }
            if r.weight == 0 {
                r.weight = 1;
            }
            if r.weight != 1 {
                errs.push(format!("resources[{i}].weight: invalid value {}: must be 1", r.weight));
            }
        }
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        Ok(BalancedAllocation { resources })
    }

    pub fn resources(&self) -> &[ResourceSpec] {
        &self.resources
    }

    fn requests_nothing(&self, pod: &PodInfo) -> bool {
        self.resources.iter().all(|r| pod_request_for_scoring(pod, &r.name, true) == 0)
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Skips best-effort pods (no request for any of the resources).
    fn pre_score(
        &self,
        _state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[std::sync::Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        if self.requests_nothing(pod) {
            Status::skip()
        } else {
            Status::success()
        }
    }

    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        if self.requests_nothing(pod) {
            return 0;
        }
        let (requested, allocatable) = requested_and_allocatable(pod, node, &self.resources, true);
        balanced_score(&requested, &allocatable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::json;
    use std::sync::Arc;

    fn node(allocatable: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"allocatable": allocatable}})).unwrap(),
        ))
    }
    fn pod(name: &str, requests: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}]}
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn standard_deviation_scores() {
        let cases: &[(&[i64], &[i64], i64)] = &[
            // 0.75 and 0.5: σ = 0.125.
            (&[3000, 5000], &[4000, 10000], 87),
            (&[3000, 5000], &[6000, 10000], 100),
            // Fractions cap at 1: 1 and 0.5.
            (&[8000, 5000], &[4000, 10000], 75),
            // 0.75, 0.5, 0.25: σ = √(0.125/3) = 0.204.
            (&[3, 2, 1], &[4, 4, 4], 79),
            // Resources the node lacks are left out; one fraction alone is balanced.
            (&[3, 0], &[4, 0], 100),
            (&[], &[], 100),
        ];
        for (req, alloc, want) in cases {
            assert_eq!(balanced_score(req, alloc), *want, "requested {req:?} allocatable {alloc:?}");
        }
    }

    #[test]
    fn scores_plain_requests_and_skips_best_effort_pods() {
        let plugin = BalancedAllocation::new(None).unwrap();
        let state = CycleState::default();
        let p = pod("p", json!({"cpu": "3", "memory": "5000"}));
        let mut n = node(json!({"cpu": "4", "memory": "10000", "pods": "10"}));
        assert_eq!(plugin.score(&state, &p, &n), 87);
        // A request-less pod on the node counts nothing here (no 100m/200Mi defaults).
        n.add_pod(Arc::new(pod("old", json!({}))));
        assert_eq!(plugin.score(&state, &p, &n), 87);
        // Its requests do count: cpu 4000/4000 and memory 7000/10000.
        n.add_pod(Arc::new(pod("older", json!({"cpu": "1", "memory": "2000"}))));
        assert_eq!(plugin.score(&state, &p, &n), 85);

        let best_effort = pod("be", json!({}));
        assert_eq!(
            plugin.pre_score(&mut CycleState::default(), &best_effort, &[], &Snapshot::default()).code,
            Code::Skip
        );
        assert_eq!(plugin.score(&state, &best_effort, &n), 0);
        assert_eq!(plugin.pre_score(&mut CycleState::default(), &p, &[], &Snapshot::default()).code, Code::Success);
    }

    #[test]
    fn extended_resources_join_the_deviation_when_configured() {
        let args =
            json!({"resources": [{"name": "cpu"}, {"name": "memory", "weight": 1}, {"name": "example.com/gpu"}]});
        let plugin = BalancedAllocation::new(Some(&args)).unwrap();
        let n = node(json!({"cpu": "4", "memory": "4000", "example.com/gpu": "4", "pods": "10"}));
        let state = CycleState::default();
        // 0.75, 0.5, 0.25.
        assert_eq!(
            plugin.score(&state, &pod("p", json!({"cpu": "3", "memory": "2000", "example.com/gpu": "1"})), &n),
            79
        );
        // Without a gpu request the gpu is left out: 0.75 and 0.5.
        assert_eq!(plugin.score(&state, &pod("p", json!({"cpu": "3", "memory": "2000"})), &n), 87);
    }

    #[test]
    fn args_are_defaulted_and_validated_naming_the_field() {
        assert_eq!(BalancedAllocation::new(None).unwrap().resources(), default_resources().as_slice());
        assert_eq!(
            BalancedAllocation::new(Some(&json!({"resources": []}))).unwrap().resources(),
            default_resources().as_slice()
        );
        let cases = [
            (json!({"resources": [{"name": "cpu", "weight": 2}]}), "resources[0].weight: invalid value 2: must be 1"),
            (json!({"resources": [{"name": "cpu"}, {"name": "cpu"}]}), "resources[1].name: duplicate value \"cpu\""),
            (json!({"resources": [{"name": "cpu", "weight": "heavy"}]}), "resources[0].weight"),
            (json!({"resource": []}), "resource"),
        ];
        for (args, want) in cases {
            let err = BalancedAllocation::new(Some(&args)).err().unwrap_or_default();
            assert!(err.contains(want), "args {args}: {err:?}");
        }
    }
}
