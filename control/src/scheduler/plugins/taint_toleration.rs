//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints keep out every pod that does not
//! tolerate them; its `PreferNoSchedule` taints only make the node less attractive, counted per
//! taint the pod does not tolerate.
use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use crate::scheduler::framework::{default_normalize_score, CycleState, NodeInfo, Plugin, PodInfo, Status};

pub const NAME: &str = "TaintToleration";

/// Kubernetes' reason text. It names no taint: kube-scheduler stopped putting taint keys and
/// values into pod statuses (kubernetes#134740), as they may say more than a tenant should see.
pub const REASON: &str = "node(s) had untolerated taint(s)";

/// The plugin's weight in kube-scheduler's default profile.
pub const DEFAULT_WEIGHT: i64 = 3;

const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";
const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";

/// Whether `toleration` tolerates `taint`, as `k8s.io/api`'s `Toleration.ToleratesTaint`: an empty
/// effect matches every effect, an empty key every key, `Exists` every value, and `Equal` (or no
/// operator) the same value. Any other operator (the alpha `Gt`/`Lt`, behind a gate that is off by
/// default) tolerates nothing.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerations_tolerate(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first of `taints` selected by `applies` that no toleration tolerates.
pub fn first_untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    applies: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints.iter().find(|taint| applies(taint) && !tolerations_tolerate(tolerations, taint))
}

/// Taints that keep pods off a node (kube-scheduler's `DoNotScheduleTaintsFilterFunc`).
pub fn is_do_not_schedule(taint: &Taint) -> bool {
    taint.effect == NO_SCHEDULE || taint.effect == NO_EXECUTE
}

fn node_taints(node: &Node) -> &[Taint] {
    node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[])
}

fn pod_tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
}

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match first_untolerated(node_taints(&node.node), pod_tolerations(pod), is_do_not_schedule) {
            Some(_) => Status::unresolvable(REASON),
            None => Status::success(),
        }
    }

    /// How many `PreferNoSchedule` taints the pod does not tolerate; normalized in reverse.
    fn score(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let tolerations = pod_tolerations(pod);
        let count = node_taints(&node.node)
            .iter()
            .filter(|t| t.effect == PREFER_NO_SCHEDULE && !tolerations_tolerate(tolerations, t))
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    fn normalize_score(&self, _state: &CycleState, _pod: &PodInfo, scores: &mut [i64]) {
        default_normalize_score(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn node(taints: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"taints": taints}})).unwrap(),
        ))
    }
    fn pod(tolerations: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap(),
        ))
    }
    fn taint(v: Value) -> Taint {
        serde_json::from_value(v).unwrap()
    }
    fn toleration(v: Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn toleration_matching_follows_tolerates_taint() {
        let t = json!({"key": "k", "value": "v", "effect": "NoSchedule"});
        let cases = [
            // Equal, spelled out or implied.
            (json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), true),
            (json!({"key": "k", "value": "v", "effect": "NoSchedule"}), true),
            (json!({"key": "k", "operator": "Equal", "value": "w", "effect": "NoSchedule"}), false),
            (json!({"key": "k", "operator": "Equal", "effect": "NoSchedule"}), false),
            // Exists ignores the value.
            (json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}), true),
            (json!({"key": "other", "operator": "Exists"}), false),
            // An empty key with Exists tolerates every taint; an empty effect every effect.
            (json!({"operator": "Exists"}), true),
            (json!({"key": "", "operator": "Exists", "effect": "NoSchedule"}), true),
            (json!({"key": "k", "operator": "Exists"}), true),
            (json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}), false),
            (json!({"key": "k", "operator": "Exists", "effect": ""}), true),
            // Unknown operators, and the gated numeric ones, tolerate nothing.
            (json!({"key": "k", "operator": "Gt", "value": "1"}), false),
            (json!({"key": "k", "operator": "Bogus", "value": "v"}), false),
        ];
        for (tol, want) in cases {
            assert_eq!(tolerates(&toleration(tol.clone()), &taint(t.clone())), want, "toleration {tol}");
        }
        // A taint without a value matches an Equal toleration without one.
        assert!(tolerates(
            &toleration(json!({"key": "k", "effect": "NoSchedule"})),
            &taint(json!({"key": "k", "effect": "NoSchedule"}))
        ));
    }

    #[test]
    fn filter_rejects_untolerated_no_schedule_and_no_execute_taints() {
        let cases = [
            (json!([]), json!([]), true),
            (json!([{"key": "a", "value": "1", "effect": "NoSchedule"}]), json!([]), false),
            (json!([{"key": "a", "value": "1", "effect": "NoExecute"}]), json!([]), false),
            // PreferNoSchedule only scores.
            (json!([{"key": "a", "value": "1", "effect": "PreferNoSchedule"}]), json!([]), true),
            (json!([{"key": "a", "value": "1", "effect": "NoSchedule"}]), json!([{"key": "a", "value": "1"}]), true),
            // Every filtering taint must be tolerated.
            (
                json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}]),
                json!([{"key": "a", "operator": "Exists"}]),
                false,
            ),
            (
                json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoExecute"}]),
                json!([{"operator": "Exists"}]),
                true,
            ),
        ];
        for (taints, tolerations, fits) in cases {
            let s = TaintToleration.filter(&CycleState::default(), &pod(tolerations.clone()), &node(taints.clone()));
            assert_eq!(s.is_success(), fits, "taints={taints} tolerations={tolerations}");
            if !fits {
                assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
                assert_eq!(s.reasons, vec![REASON.to_string()]);
            }
        }
    }

    #[test]
    fn score_counts_untolerated_prefer_no_schedule_taints_and_reverses() {
        let nodes = [
            node(json!([])),
            node(json!([{"key": "a", "effect": "PreferNoSchedule"}])),
            node(
                json!([{"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "PreferNoSchedule"}, {"key": "c", "effect": "NoSchedule"}]),
            ),
            node(json!([{"key": "t", "value": "x", "effect": "PreferNoSchedule"}])),
        ];
        let p = pod(
            json!([{"key": "t", "operator": "Equal", "value": "x", "effect": "PreferNoSchedule"}, {"key": "c", "operator": "Exists", "effect": "NoSchedule"}]),
        );
        let state = CycleState::default();
        let mut scores: Vec<i64> = nodes.iter().map(|n| TaintToleration.score(&state, &p, n)).collect();
        assert_eq!(scores, vec![0, 1, 2, 0]);
        TaintToleration.normalize_score(&state, &p, &mut scores);
        assert_eq!(scores, vec![100, 50, 0, 100]);
    }
}
