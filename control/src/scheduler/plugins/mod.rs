//! Kubernetes' scheduling plugins, by their Kubernetes names. `build` makes one from its name and
//! its `pluginConfig` args (a KubeSchedulerConfiguration's JSON); a plugin refuses args it cannot
//! use with a message naming the field.

use std::sync::Arc;

use serde_json::Value;

use super::framework::Plugin;

pub mod balanced_allocation;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

/// Every plugin Keelson knows, in the order kube-scheduler's default profile runs its filters.
pub const KNOWN: &[&str] = &[
    node_unschedulable::NAME,
    node_name::NAME,
    taint_toleration::NAME,
    node_affinity::NAME,
    node_ports::NAME,
    node_resources_fit::NAME,
    pod_topology_spread::NAME,
    inter_pod_affinity::NAME,
    balanced_allocation::NAME,
];

/// Builds the plugin called `name` with its `pluginConfig` args (None: Kubernetes' defaults).
pub fn build(name: &str, args: Option<&Value>) -> Result<Arc<dyn Plugin>, String> {
    Ok(match name {
        node_unschedulable::NAME => Arc::new(node_unschedulable::NodeUnschedulable),
        node_name::NAME => Arc::new(node_name::NodeName),
        taint_toleration::NAME => Arc::new(taint_toleration::TaintToleration),
        node_affinity::NAME => Arc::new(node_affinity::NodeAffinity::new(args)?),
        node_ports::NAME => Arc::new(node_ports::NodePorts),
        node_resources_fit::NAME => Arc::new(node_resources_fit::NodeResourcesFit::new(args)?),
        pod_topology_spread::NAME => Arc::new(pod_topology_spread::PodTopologySpread::new(args)?),
        inter_pod_affinity::NAME => Arc::new(inter_pod_affinity::InterPodAffinity::new(args)?),
        balanced_allocation::NAME => Arc::new(balanced_allocation::BalancedAllocation::new(args)?),
        other => return Err(format!("unknown plugin {other:?} (known: {})", KNOWN.join(", "))),
    })
}

/// Decodes a plugin's `pluginConfig` args (None or null: the type's defaults). A wrong type or
/// an unknown field is refused with its path, e.g. `scoringStrategy.resources[0].weight: ...`.
pub(crate) fn decode_args<T: serde::de::DeserializeOwned + Default>(args: Option<&Value>) -> Result<T, String> {
    match args {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => crate::decode::with_path(v),
    }
}
