//! Keelson's replicated key-value store: an MVCC key space with etcd v3 semantics, replicated
//! by openraft, persisted in RocksDB, served over etcd's v3 gRPC API.

pub mod authority;
pub mod coalesce;
pub mod lease;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod server;
pub mod storage;
pub mod types;
pub mod wal;
pub mod watch;

pub use node::{ClusterState, StoreConfig, StoreNode};
