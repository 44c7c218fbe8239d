//! TaintToleration (not yet implemented: fits every node, scores 0).
use crate::scheduler::framework::Plugin;

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }
}
