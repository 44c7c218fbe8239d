//! NodeResourcesBalancedAllocation (not yet implemented: fits every node, scores 0).
use serde_json::Value;

use crate::scheduler::framework::Plugin;

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation;

impl BalancedAllocation {
    pub fn new(_args: Option<&Value>) -> Result<Self, String> {
        Ok(BalancedAllocation)
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }
}
