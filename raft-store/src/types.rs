//! The types that travel through Raft: log commands, their results, member records, errors.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Cursor;

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
        SnapshotData = Cursor<Vec<u8>>,
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
    Compact { revision: i64 },
    /// Set once by the first leader: the cluster's ID, reported in every response header.
    SetClusterId(u64),
    /// A member's own description, published when it starts.
    SetMemberAttrs { id: NodeId, name: String, client_urls: Vec<String> },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put {:?}", String::from_utf8_lossy(&p.key)),
            Command::DeleteRange(d) => write!(f, "delete {:?}", String::from_utf8_lossy(&d.key)),
            Command::Txn(t) => write!(f, "txn ({} compares)", t.compare.len()),
            Command::Compact { revision } => write!(f, "compact {revision}"),
            Command::SetClusterId(id) => write!(f, "cluster id {id:x}"),
            Command::SetMemberAttrs { id, name, .. } => write!(f, "member {id:x} is {name}"),
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
    Done,
    Failed(MvccError),
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
    Write(Command),
    /// The leader confirms its leadership and answers the log index a linearizable read must
    /// wait for.
    ReadIndex,
    MemberAdd { peer_urls: Vec<String>, is_learner: bool },
    MemberRemove { id: NodeId },
    MemberPromote { id: NodeId },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardResponse {
    Write(CommandResponse),
    ReadIndex(u64),
    /// The ID of the member acted on.
    Member(NodeId),
}

/// A stable 64-bit FNV-1a hash: member and cluster IDs must be the same on every build.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A member's ID, derived from its peer URLs as etcd derives it, so that a member started with
/// `--initial-cluster-state existing` knows the ID `member add` gave it.
pub fn member_id(peer_urls: &[String]) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let parts: Vec<&[u8]> = urls.iter().map(|u| u.as_bytes()).collect();
    fnv64(&parts).max(1)
}

/// The cluster's ID, from its initial members and token.
pub fn cluster_id(members: &BTreeSet<NodeId>, token: &str) -> u64 {
    let ids: Vec<[u8; 8]> = members.iter().map(|id| id.to_be_bytes()).collect();
    let mut parts: Vec<&[u8]> = ids.iter().map(|b| &b[..]).collect();
    parts.push(token.as_bytes());
    fnv64(&parts).max(1)
}
