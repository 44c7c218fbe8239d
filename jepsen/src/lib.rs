//! Keelson's Jepsen-style harness: it runs `keelson store` processes in network namespaces,
//! drives them with concurrent clients while a nemesis kills, pauses and partitions them,
//! records the history, and checks it (linearizability of registers, watch guarantees, no lost
//! acknowledged writes).

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod watcher;
