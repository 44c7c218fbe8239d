//! Keelson's Jepsen-style harness: it runs `keelson store` processes (or etcd's, as a reference) in
//! network namespaces, drives them with concurrent clients while a nemesis kills, pauses and
//! partitions them, records the history, and checks it (linearizability of registers, watch
//! guarantees, no lost acknowledged writes, mutual exclusion of locks built on leases).

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod lease;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod watcher;
