//! The scheduler: puts pods on nodes, built as kube-scheduler is. It reaches the cluster only
//! through the Kubernetes API (kube-rs).

pub mod framework;
pub mod plugins;
pub mod resources;
