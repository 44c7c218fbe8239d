//! Shared parts of the benchmarks: starting three-member clusters, the etcd-API workloads, and
//! their reports.

pub mod cluster;
pub mod report;
pub mod workloads;
