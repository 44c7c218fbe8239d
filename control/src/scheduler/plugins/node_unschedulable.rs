//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that tolerate
//! `node.kubernetes.io/unschedulable:NoSchedule`.
use crate::scheduler::framework::{CycleState, NodeInfo, Plugin, PodInfo, Status};

pub const NAME: &str = "NodeUnschedulable";

/// Kubernetes' reason text.
pub const REASON: &str = "node(s) were unschedulable";

const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let tolerated = pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_ref()).is_some_and(|ts| {
            ts.iter().any(|t| {
                let key_ok = match t.key.as_deref() {
                    None | Some("") => t.operator.as_deref() == Some("Exists"),
                    Some(k) => k == TAINT_KEY,
                };
                let effect_ok = matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
                key_ok && effect_ok
            })
        });
        if tolerated {
            Status::success()
        } else {
            Status::unresolvable(REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(unschedulable: bool) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"unschedulable": unschedulable}}))
                .unwrap(),
        ))
    }
    fn pod(tolerations: serde_json::Value) -> PodInfo {
        PodInfo::new(Arc::new(serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()))
    }

    #[test]
    fn cordoned_nodes_take_only_pods_that_tolerate_it() {
        let cases = [
            (false, json!([]), true),
            (true, json!([]), false),
            (true, json!([{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]), true),
            (true, json!([{"operator": "Exists"}]), true),
            (true, json!([{"key": TAINT_KEY, "operator": "Exists", "effect": "NoExecute"}]), false),
            (true, json!([{"key": "other", "operator": "Exists"}]), false),
        ];
        for (cordoned, tolerations, fits) in cases {
            let s = NodeUnschedulable.filter(&CycleState::default(), &pod(tolerations.clone()), &node(cordoned));
            assert_eq!(s.is_success(), fits, "cordoned={cordoned} tolerations={tolerations}");
        }
    }
}
