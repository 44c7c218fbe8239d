//! Shared parts of the benchmarks: starting three-member clusters, the etcd-API workloads, and
//! their reports.

pub mod cluster;
pub mod http;
pub mod procstat;
pub mod report;
pub mod up;
pub mod workloads;
