//! PodTopologySpread (not yet implemented: fits every node, scores 0).
use serde_json::Value;

use crate::scheduler::framework::Plugin;

pub const NAME: &str = "PodTopologySpread";

pub struct PodTopologySpread;

impl PodTopologySpread {
    pub fn new(_args: Option<&Value>) -> Result<Self, String> {
        Ok(PodTopologySpread)
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
}
