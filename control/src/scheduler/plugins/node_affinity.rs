//! NodeAffinity (not yet implemented: fits every node, scores 0).
use serde_json::Value;

use crate::scheduler::framework::Plugin;

pub const NAME: &str = "NodeAffinity";

pub struct NodeAffinity;

impl NodeAffinity {
    pub fn new(_args: Option<&Value>) -> Result<Self, String> {
        Ok(NodeAffinity)
    }
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}
