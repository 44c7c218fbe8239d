//! NodeResourcesFit (not yet implemented: fits every node, scores 0).
use serde_json::Value;

use crate::scheduler::framework::Plugin;

pub const NAME: &str = "NodeResourcesFit";

pub struct NodeResourcesFit;

impl NodeResourcesFit {
    pub fn new(_args: Option<&Value>) -> Result<Self, String> {
        Ok(NodeResourcesFit)
    }
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }
}
