//! The peer transport: openraft's RPCs and forwarded client requests over Keelson's own gRPC
//! peer service, bincode inside a protobuf envelope.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use proto::raftpeer::raft_peer_client::RaftPeerClient;
use proto::raftpeer::raft_peer_server::RaftPeer;
use proto::raftpeer::RaftMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::node::StoreNode;
use crate::types::*;

/// Largest peer message, in bytes: a batch of log entries or a snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;

fn to_message<T: Serialize>(value: &T) -> RaftMessage {
    RaftMessage { data: bincode::serialize(value).expect("in-memory values always serialize") }
}

fn from_message<T: DeserializeOwned>(msg: &RaftMessage) -> Result<T, bincode::Error> {
    bincode::deserialize(&msg.data)
}

/// A lazily connected gRPC channel to a peer's first peer URL.
pub fn peer_channel(node: &MemberNode) -> Result<Channel, String> {
    let url = node.peer_urls.first().ok_or_else(|| "member has no peer URL".to_string())?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad peer URL {url}: {e}"))?
        .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

pub fn peer_client(channel: Channel) -> RaftPeerClient<Channel> {
    RaftPeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Least time between two warnings about the same unreachable peer.
const PEER_WARNING_INTERVAL_MS: u64 = 10_000;

#[derive(Clone, Default)]
pub struct Network {
    /// When each peer was last reported unreachable, shared by its successive connections.
    warned: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerConnection {
            target,
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            client: peer_channel(node).map(peer_client),
            warned: self.warned.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    url: String,
    client: Result<RaftPeerClient<Channel>, String>,
    warned: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let mut request = Request::new(to_message(req));
        request.set_timeout(option.hard_ttl());
        let result = match kind {
            "vote" => client.vote(request).await,
            "append" => client.append_entries(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match result {
            Ok(r) => {
                self.warned.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.target);
                r.into_inner()
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                self.warn_unreachable(&status);
                return Err(RPCError::Unreachable(Unreachable::new(&Message(status.message().to_string()))));
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&Message(status.to_string())))),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            from_message(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl PeerConnection {
    /// Says once in a while, in a sentence, that a peer cannot be reached.
    fn warn_unreachable(&self, status: &Status) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let due = warned
            .get(&self.target)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_millis(PEER_WARNING_INTERVAL_MS));
        if due {
            warned.insert(self.target, now);
            let cause = format!("{status:?}");
            let cause = if cause.contains("Connection refused") {
                "connection refused".to_string()
            } else {
                status.message().to_string()
            };
            tracing::warn!(peer = %format!("{:x}", self.target), url = %self.url, %cause, "peer unreachable; retrying");
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The server side of the peer service.
pub struct PeerService {
    pub node: Arc<StoreNode>,
}

fn bad_message(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<NodeId> = from_message(request.get_ref()).map_err(bad_message)?;
        let result = self.node.raft().vote(req).await;
        Ok(Response::new(to_message(&result)))
    }

    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = from_message(request.get_ref()).map_err(bad_message)?;
        let result = self.node.raft().append_entries(req).await;
        Ok(Response::new(to_message(&result)))
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = from_message(request.get_ref()).map_err(bad_message)?;
        let result = self.node.raft().install_snapshot(req).await;
        Ok(Response::new(to_message(&result)))
    }

    async fn forward(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: ForwardRequest = from_message(request.get_ref()).map_err(bad_message)?;
        let result: Result<ForwardResponse, StoreError> = self.node.handle_forwarded(req).await;
        Ok(Response::new(to_message(&result)))
    }
}

/// Sends a request to the leader's peer service.
pub async fn forward(channel: Channel, req: &ForwardRequest, timeout: Duration) -> Result<ForwardResponse, StoreError> {
    let mut client = peer_client(channel);
    let mut request = Request::new(to_message(req));
    request.set_timeout(timeout);
    match client.forward(request).await {
        Ok(reply) => {
            let decoded: Result<ForwardResponse, StoreError> = from_message(reply.get_ref())
                .map_err(|e| StoreError::Internal(format!("undecodable forwarded reply: {e}")))?;
            decoded
        }
        // The client-side deadline passed: the leader may still apply it, as after etcd's timeout.
        Err(status) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            Err(StoreError::Timeout)
        }
        // A failed connection attempt means the request never left this member.
        Err(status) if failed_to_connect(&status) => Err(StoreError::Unreachable(status.message().to_string())),
        Err(status) => Err(StoreError::Indeterminate(status.message().to_string())),
    }
}

/// True when the transport never established a connection (tonic's connector error is in the
/// chain of causes), so the request cannot have been delivered.
fn failed_to_connect(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if format!("{e:?}").starts_with("ConnectError(") {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward to a port nobody listens on never left: it is safe to retry.
    #[tokio::test]
    async fn a_refused_connection_is_unreachable_not_indeterminate() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let node = MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] };
        let channel = peer_channel(&node).unwrap();
        let result = forward(channel, &ForwardRequest::ReadIndex, Duration::from_secs(5)).await;
        assert!(matches!(result, Err(StoreError::Unreachable(_))), "{result:?}");
    }
}
