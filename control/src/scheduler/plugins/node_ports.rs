//! NodePorts (not yet implemented: fits every node, scores 0).
use crate::scheduler::framework::Plugin;

pub const NAME: &str = "NodePorts";

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }
}
