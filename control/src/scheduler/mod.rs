//! The scheduler: puts pods on nodes, built as kube-scheduler is. It reaches the cluster only
//! through the Kubernetes API (kube-rs).

pub mod algorithm;
pub mod cache;
pub mod config;
pub mod framework;
pub mod plugins;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod run;
