//! InterPodAffinity (not yet implemented: fits every node, scores 0).
use serde_json::Value;

use crate::scheduler::framework::Plugin;

pub const NAME: &str = "InterPodAffinity";

pub struct InterPodAffinity;

impl InterPodAffinity {
    pub fn new(_args: Option<&Value>) -> Result<Self, String> {
        Ok(InterPodAffinity)
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}
