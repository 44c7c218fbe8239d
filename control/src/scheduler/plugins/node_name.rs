//! NodeName: a pod that names its node (`spec.nodeName`) fits only there.
use crate::scheduler::framework::{CycleState, NodeInfo, Plugin, PodInfo, Status};

pub const NAME: &str = "NodeName";

/// Kubernetes' reason text.
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.node_name() {
            Some(wanted) if wanted != node.name => Status::unresolvable(REASON),
            _ => Status::success(),
        }
    }
}
