//! The types that travel through Raft: log commands, their results, member records, errors.

use std::collections::BTreeSet;
use std::fmt;

use proto::etcdserverpb::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use serde::{Deserialize, Serialize};

use crate::mvcc::{MvccError, RequestError};

pub type NodeId = u64;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;

/// What Raft knows of a member: where its peers reach it. Its name and client URLs are published
/// by the member itself through the log (see [`Command::SetMemberAttrs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_urls.join(","))
    }
}

/// A replicated change of the state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact {
        revision: i64,
    },
    /// Grants a lease; the ID and TTL (seconds) are settled before the command enters the log.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease, deleting its keys (a client's request, or the leader seeing it lapse).
    LeaseRevoke {
        id: i64,
    },
    /// Set once by the first leader: the cluster's ID, reported in every response header.
    SetClusterId(u64),
    /// A member's own description, published when it starts.
    SetMemberAttrs {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
    /// Commands proposed together as one log entry, applied in order, each at its own revision
    /// (never nested).
    Batch(Vec<Command>),
}

impl Command {
    /// About how many bytes the command takes in the log, to bound a batch.
    pub fn size_bytes(&self) -> usize {
        use prost::Message;
        const SMALL_COMMAND_BYTES: usize = 64;
        match self {
            Command::Put(p) => p.encoded_len(),
            Command::DeleteRange(d) => d.encoded_len(),
            Command::Txn(t) => t.encoded_len(),
            Command::Batch(cmds) => cmds.iter().map(Command::size_bytes).sum(),
            _ => SMALL_COMMAND_BYTES,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put {:?}", String::from_utf8_lossy(&p.key)),
            Command::DeleteRange(d) => write!(f, "delete {:?}", String::from_utf8_lossy(&d.key)),
            Command::Txn(t) => write!(f, "txn ({} compares)", t.compare.len()),
            Command::Compact { revision } => write!(f, "compact {revision}"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease grant {id:x} ttl {ttl}s"),
            Command::LeaseRevoke { id } => write!(f, "lease revoke {id:x}"),
            Command::SetClusterId(id) => write!(f, "cluster id {id:x}"),
            Command::SetMemberAttrs { id, name, .. } => write!(f, "member {id:x} is {name}"),
            Command::Batch(cmds) => write!(f, "batch of {} commands", cmds.len()),
        }
    }
}

/// The result of applying a [`Command`]; errors are results too, the same on every member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(proto::etcdserverpb::LeaseGrantResponse),
    LeaseRevoke(proto::etcdserverpb::LeaseRevokeResponse),
    Done,
    Failed(MvccError),
    /// The results of a [`Command::Batch`], in its order.
    Batch(Vec<CommandResponse>),
}

/// A member's published attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// Why a store request failed, in terms of what the caller should do; crosses the peer
/// service when a request is forwarded, and maps to the etcd gRPC error a client expects.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("member not found")]
    MemberNotFound,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The leader cannot reach a quorum right now; worth retrying until the deadline.
    #[error("leader cannot reach a quorum")]
    QuorumUnavailable,
    #[error("membership change in progress: {0}")]
    MembershipBusy(String),
    #[error("unhealthy cluster: {0}")]
    Unhealthy(String),
    /// The leader could not be reached: the request was not delivered and may be retried.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request may or may not have been applied (the connection broke after sending).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    #[error("server is stopping")]
    Stopping,
    #[error("internal error: {0}")]
    Internal(String),
}

/// A request that a member hands to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Commands to replicate, as one log entry when there are several.
    Write(Vec<Command>),
    /// The leader confirms its leadership and answers the log index a linearizable read must
    /// wait for.
    ReadIndex,
    MemberAdd {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    MemberRemove {
        id: NodeId,
    },
    MemberPromote {
        id: NodeId,
    },
    /// Renews a lease on the leader, which alone keeps lease deadlines.
    LeaseKeepAlive {
        id: i64,
    },
    /// A lease's remaining TTL, as the leader counts it.
    LeaseTimeToLive {
        id: i64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The results, in the order of the commands, and the log index they were applied at.
    Write(Vec<CommandResponse>, u64),
    ReadIndex(u64),
    /// The ID of the member acted on.
    Member(NodeId),
    /// Seconds left of a lease; -1 when the lease does not exist.
    LeaseTtl(i64),
}

fn sha1_prefix(bytes: &[u8]) -> u64 {
    use sha1::{Digest, Sha1};
    let hash = Sha1::digest(bytes);
    u64::from_be_bytes(hash[..8].try_into().expect("a SHA-1 digest has 20 bytes"))
}

/// A member's ID, derived from its peer URLs and the cluster token as etcd derives it: a member
/// started with `--initial-cluster-state existing` knows the ID `member add` gave it, and
/// members list in the same order as etcd's.
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(token.as_bytes());
    sha1_prefix(&bytes).max(1)
}

/// The cluster's ID, from its initial members' IDs, as etcd derives it.
pub fn cluster_id(members: &BTreeSet<NodeId>) -> u64 {
    let bytes: Vec<u8> = members.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix(&bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_as_etcd_derives_them() {
        // A default single-member etcd: member 8e9e05c52164694d of cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(id, 0x8e9e_05c5_2164_694d);
        assert_eq!(cluster_id(&BTreeSet::from([id])), 0xcdf8_1819_4e3a_8c32);
        assert_ne!(id, member_id(&["http://localhost:2380".to_string()], "other-token"));
        let urls = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        let mut sorted = urls.clone();
        sorted.sort();
        assert_eq!(member_id(&urls, "t"), member_id(&sorted, "t"), "URL order does not matter");
    }
}
