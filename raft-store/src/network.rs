//! The peer transport: openraft's RPCs and forwarded client requests between members.
//!
//! One TCP connection per member pair and direction carries every request, each a frame:
//! a 4-byte big-endian length of what follows, a kind byte, an 8-byte big-endian request ID and
//! a bincode payload. Requests may be answered out of order; a reply carries its request's ID.
//! A connection opens with [`PREAMBLE`], so that anything else reaching the peer port is turned
//! away. A frame costs one write and no HTTP/2 stream, which matters on the write path: every
//! write is a handful of these messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

use crate::node::StoreNode;
use crate::types::*;

/// Largest peer frame, in bytes: a batch of log entries or a snapshot chunk.
pub const PEER_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Requests one connection carries at once, either way; past this, callers (or the reading of
/// further requests) wait.
pub const PEER_REQUESTS_IN_FLIGHT_MAX: usize = 4096;
/// How long an accepted connection may take to send its preamble.
const PREAMBLE_TIMEOUT_MS: u64 = 10_000;
/// Idle time before TCP keep-alive probes start, between probes, and probes before a peer
/// connection is given up: a peer that vanished behind a partition is noticed, on both ends.
const KEEPALIVE_IDLE_MS: u64 = 10_000;
const KEEPALIVE_INTERVAL_MS: u64 = 2_000;
const KEEPALIVE_PROBES: u32 = 3;
/// What a peer connection starts with.
pub const PREAMBLE: &[u8; 16] = b"KEELSON-PEER/1\r\n";

const KIND_VOTE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_FORWARD: u8 = 4;
/// A reply: the bincode of the handler's result.
const KIND_REPLY: u8 = 0x80;
/// The request could not be decoded: a UTF-8 message.
const KIND_FAILED: u8 = 0x81;
/// Kind byte and request ID.
const FRAME_PREFIX_BYTES: usize = 9;

/// Small frames must not wait for Nagle's algorithm; dead peers must be noticed.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_millis(KEEPALIVE_IDLE_MS))
        .with_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot enable TCP keep-alive on a peer connection");
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always serialize")
}

fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + FRAME_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&((FRAME_PREFIX_BYTES + payload.len()) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame: kind, ID, payload. None at a clean end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, u64, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(FRAME_PREFIX_BYTES..=PEER_MESSAGE_BYTES_MAX).contains(&len) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad peer frame length {len}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let id = u64::from_be_bytes(body[1..FRAME_PREFIX_BYTES].try_into().expect("8 bytes"));
    let kind = body[0];
    body.drain(..FRAME_PREFIX_BYTES);
    Ok(Some((kind, id, body)))
}

/// Why a peer call did not return the peer's answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No answer within the deadline; the peer may still act on the request.
    #[error("peer did not answer in time")]
    Timeout,
    /// The connection broke after the request was (perhaps) sent.
    #[error("peer connection broke: {0}")]
    Broken(String),
    /// The peer could not decode the request.
    #[error("peer refused the request: {0}")]
    Refused(String),
}

enum Reply {
    Answer(Vec<u8>),
    Refused(String),
}

/// One open connection to a peer: requests go out under the writer lock, a reader task hands
/// each reply to its caller.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    opened: Instant,
    /// One more than the milliseconds after `opened` when a frame last arrived; 0 before any.
    last_received_ms: AtomicU64,
    slots: Semaphore,
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            reader.abort();
        }
        // Dropping the senders tells every waiting caller that the connection broke.
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn received_since(&self, t: Instant) -> bool {
        match self.last_received_ms.load(Ordering::Relaxed) {
            0 => false,
            ms => self.opened + Duration::from_millis(ms - 1) >= t,
        }
    }

    async fn read_replies(self: Arc<Self>, mut read: OwnedReadHalf) {
        loop {
            let (kind, id, payload) = match read_frame(&mut read).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "peer connection ended");
                    break;
                }
            };
            self.last_received_ms.store(self.opened.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
            let reply = match kind {
                KIND_REPLY => Reply::Answer(payload),
                KIND_FAILED => Reply::Refused(String::from_utf8_lossy(&payload).into_owned()),
                other => {
                    tracing::warn!(kind = other, "unexpected frame from a peer; closing the connection");
                    break;
                }
            };
            let waiter = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            // A caller that timed out no longer waits.
            if let Some(waiter) = waiter {
                let _ = waiter.send(reply);
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A peer's address and the connection to it, opened on first use and again after it breaks.
pub struct PeerClient {
    url: String,
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Bytes of entries one AppendEntries may carry to this peer: learned from how long sends
    /// take (see `PeerConnection::append_entries`).
    append_budget_bytes: AtomicUsize,
}

/// `http://host:port[/]` → `host:port`.
fn peer_addr(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("peer URL {url} must start with http:// (TLS is not supported yet)"))?;
    let addr = rest.split('/').next().unwrap_or(rest);
    if addr.is_empty() {
        return Err(format!("peer URL {url} has no host"));
    }
    Ok(addr.to_string())
}

impl PeerClient {
    /// A client of the member's first peer URL; connects on first use.
    pub fn new(node: &MemberNode) -> Result<Self, String> {
        let url = node.peer_urls.first().ok_or_else(|| "member has no peer URL".to_string())?;
        Ok(Self {
            url: url.clone(),
            addr: peer_addr(url)?,
            conn: tokio::sync::Mutex::new(None),
            append_budget_bytes: AtomicUsize::new(APPEND_BUDGET_BYTES_MAX),
        })
    }

    async fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.closed.load(Ordering::SeqCst) {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let connect =
            tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), TcpStream::connect(&self.addr));
        let mut stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(CallError::Unreachable("connection refused".into()))
            }
            Ok(Err(e)) => return Err(CallError::Unreachable(e.to_string())),
            Err(_) => return Err(CallError::Unreachable("connection attempt timed out".into())),
        };
        tune(&stream);
        stream.write_all(PREAMBLE).await.map_err(|e| CallError::Unreachable(e.to_string()))?;
        let (read, write) = stream.into_split();
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            opened: Instant::now(),
            last_received_ms: AtomicU64::new(0),
            slots: Semaphore::new(PEER_REQUESTS_IN_FLIGHT_MAX),
            reader: Mutex::new(None),
        });
        let reader = tokio::spawn(conn.clone().read_replies(read));
        *conn.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader.abort_handle());
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends a request and waits for its reply's payload until `timeout` has passed.
    async fn call(&self, kind: u8, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(c) => c?,
            Err(_) => return Err(CallError::Unreachable("connection attempt timed out".into())),
        };
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, conn.slots.acquire()).await else {
            return Err(CallError::Unreachable("too many requests under way to this peer".into()));
        };
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let bytes = frame(kind, id, payload);
        let sent = tokio::time::timeout_at(deadline, async {
            let mut w = conn.writer.lock().await;
            // Dropped part-way (openraft gives up on a call at its own deadline), this call
            // would leave half a frame on the connection, and the next frame would be read as
            // the rest of it: the connection closes instead.
            let half_written = OnDrop(Some(|| conn.close()));
            let written = w.write_all(&bytes).await;
            half_written.disarm();
            written
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            // A frame may be half written: the connection cannot carry another.
            Ok(Err(e)) => {
                conn.close();
                return Err(CallError::Broken(e.to_string()));
            }
            Err(_) => {
                conn.close();
                return Err(CallError::Timeout);
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Reply::Answer(payload))) => Ok(payload),
            Ok(Ok(Reply::Refused(m))) => Err(CallError::Refused(m)),
            Ok(Err(_)) => Err(CallError::Broken("connection closed".into())),
            Err(_) => {
                conn.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                // Nothing heard while waiting: the path may be gone (a partition drops packets
                // without a reset); the next call connects afresh.
                if !conn.received_since(started) {
                    conn.close();
                }
                Err(CallError::Timeout)
            }
        }
    }
}

/// Least and most bytes of entries in one AppendEntries (see `PeerConnection::append_entries`).
pub const APPEND_BUDGET_BYTES_MIN: usize = 64 * 1024;
pub const APPEND_BUDGET_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Runs its action when dropped, unless disarmed first: what a call must undo if it is
/// abandoned part-way (openraft drops a call at its own deadline).
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}

impl Drop for PeerClient {
    /// Closes the connection: the peer sees it end, and nothing lingers on either side.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.get_mut().take() {
            conn.close();
        }
    }
}

/// Least time between two warnings about the same unreachable peer.
const PEER_WARNING_INTERVAL_MS: u64 = 10_000;

#[derive(Clone, Default)]
pub struct Network {
    /// When each peer was last reported unreachable, shared by its successive connections.
    warned: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// Two clients per peer, shared by every handle openraft asks for (it asks anew for each
    /// election's votes and each replication stream): one for entries and snapshot chunks, one
    /// for what must not wait behind them (votes, heartbeats).
    clients: Arc<Mutex<HashMap<NodeId, PeerClients>>>,
}

#[derive(Clone)]
struct PeerClients {
    bulk: Arc<PeerClient>,
    urgent: Arc<PeerClient>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        let clients = {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let url = node.peer_urls.first();
            match clients.get(&target) {
                Some(c) if Some(&c.bulk.url) == url => Ok(c.clone()),
                _ => PeerClient::new(node).and_then(|bulk| {
                    let urgent = PeerClient::new(node)?;
                    let c = PeerClients { bulk: Arc::new(bulk), urgent: Arc::new(urgent) };
                    clients.insert(target, c.clone());
                    Ok(c)
                }),
            }
        };
        PeerConnection {
            target,
            client: clients.as_ref().map(|c| c.bulk.clone()).map_err(Clone::clone),
            urgent: clients.map(|c| c.urgent),
            warned: self.warned.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct PeerConnection {
    target: NodeId,
    client: Result<Arc<PeerClient>, String>,
    /// The connection for votes and heartbeats: a frame of entries megabytes long ahead of them
    /// on the same connection would hold them up.
    urgent: Result<Arc<PeerClient>, String>,
    warned: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.call_on(false, kind, req, option).await
    }

    async fn call_on<Req, Resp, E>(
        &mut self,
        urgent: bool,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match if urgent { &self.urgent } else { &self.client } {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let reply = match client.call(kind, &encode(req), option.hard_ttl()).await {
            Ok(reply) => {
                self.warned.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.target);
                reply
            }
            Err(CallError::Unreachable(cause)) => {
                self.warn_unreachable(&client.url, &cause);
                return Err(RPCError::Unreachable(Unreachable::new(&Message(cause))));
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Says once in a while, in a sentence, that a peer cannot be reached.
    fn warn_unreachable(&self, url: &str, cause: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = warned
            .get(&self.target)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_millis(PEER_WARNING_INTERVAL_MS));
        if due {
            warned.insert(self.target, now);
            tracing::warn!(peer = %format!("{:x}", self.target), %url, %cause, "peer unreachable; retrying");
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    /// openraft gives every AppendEntries the heartbeat interval, however many entries it
    /// carries; on a link slower than that allows, the same range would time out forever. So
    /// entries are sent up to a byte budget per peer — halved towards what fits in half the
    /// deadline when a send is slow, cut to a quarter when one times out (or is abandoned), and
    /// doubled while sends are quick — and a trimmed request answers `PartialSuccess`.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        if rpc.entries.is_empty() {
            return self.call_on(true, KIND_APPEND, &rpc, &option).await;
        }
        let Ok(client) = self.client.clone() else { return self.call(KIND_APPEND, &rpc, &option).await };
        let budget = client.append_budget_bytes.load(Ordering::Relaxed);
        let (mut bytes, mut keep) = (0usize, 0usize);
        for entry in &rpc.entries {
            let n = bincode::serialized_size(entry).map_or(usize::MAX, |n| n as usize);
            // At least one entry goes, whatever its size: nothing else would move.
            if keep > 0 && bytes.saturating_add(n) > budget {
                break;
            }
            bytes = bytes.saturating_add(n);
            keep += 1;
        }
        let trimmed_to = if keep < rpc.entries.len() {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|e| e.log_id)
        } else {
            None
        };
        let started = Instant::now();
        // Armed until the send is known not to have been slow: a timeout, a failure on the way
        // or being abandoned cuts the budget to a quarter.
        let slow = OnDrop(Some(|| {
            let budget = client.append_budget_bytes.load(Ordering::Relaxed);
            client.append_budget_bytes.store((budget / 4).max(APPEND_BUDGET_BYTES_MIN), Ordering::Relaxed);
        }));
        let result = self.call(KIND_APPEND, &rpc, &option).await;
        let took = started.elapsed();
        let target = option.hard_ttl() / 2;
        match &result {
            Ok(_) if bytes > 0 => {
                slow.disarm();
                let next = if took > target {
                    (bytes as f64 * target.as_secs_f64() / took.as_secs_f64()) as usize
                } else if took < target / 2 && bytes * 2 > budget {
                    budget.saturating_mul(2)
                } else {
                    budget
                };
                client
                    .append_budget_bytes
                    .store(next.clamp(APPEND_BUDGET_BYTES_MIN, APPEND_BUDGET_BYTES_MAX), Ordering::Relaxed);
            }
            Ok(_) => slow.disarm(),
            Err(RPCError::Network(_)) => {}
            Err(_) => slow.disarm(),
        }
        match result {
            Ok(AppendEntriesResponse::Success) if trimmed_to.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(trimmed_to))
            }
            other => other,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(KIND_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call_on(true, KIND_VOTE, &rpc, &option).await
    }
}

/// Sends a request to the leader's peer service.
pub async fn forward(
    client: &PeerClient,
    req: &ForwardRequest,
    timeout: Duration,
) -> Result<ForwardResponse, StoreError> {
    match client.call(KIND_FORWARD, &encode(req), timeout).await {
        Ok(reply) => {
            let decoded: Result<ForwardResponse, StoreError> = bincode::deserialize(&reply)
                .map_err(|e| StoreError::Internal(format!("undecodable forwarded reply: {e}")))?;
            decoded
        }
        // A failed connection attempt means the request never left this member.
        Err(CallError::Unreachable(m)) => Err(StoreError::Unreachable(m)),
        // The deadline passed: the leader may still apply it, as after etcd's timeout.
        Err(CallError::Timeout) => Err(StoreError::Timeout),
        Err(CallError::Refused(m)) => Err(StoreError::Internal(format!("the leader refused a forwarded request: {m}"))),
        Err(CallError::Broken(m)) => Err(StoreError::Indeterminate(m)),
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// Serves peers connecting to `listener` until `stop` turns true.
pub async fn serve_peers(
    listener: tokio::net::TcpListener,
    node: Arc<StoreNode>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((socket, _)) => {
                let (node, mut stop) = (node.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_connection(socket, node) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving.
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(socket: TcpStream, node: Arc<StoreNode>) {
    tune(&socket);
    let (mut read, write) = socket.into_split();
    let mut preamble = [0u8; PREAMBLE.len()];
    let opened = tokio::time::timeout(Duration::from_millis(PREAMBLE_TIMEOUT_MS), read.read_exact(&mut preamble));
    if !matches!(opened.await, Ok(Ok(_))) || &preamble != PREAMBLE {
        tracing::debug!("a connection to the peer port did not speak the peer protocol; closed");
        return;
    }
    let writer = Arc::new(tokio::sync::Mutex::new(write));
    let slots = Arc::new(Semaphore::new(PEER_REQUESTS_IN_FLIGHT_MAX));
    loop {
        let (kind, id, payload) = match read_frame(&mut read).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "peer connection ended");
                return;
            }
        };
        if kind == KIND_APPEND {
            // A leader sends one append at a time to a member: answering it here spares a task
            // hand-off on every replicated write.
            answer(&node, &writer, kind, id, payload).await;
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (node, writer) = (node.clone(), writer.clone());
        // Other requests on their own task: a forwarded write waiting for its commit must not
        // hold up the appends that commit it.
        tokio::spawn(async move {
            answer(&node, &writer, kind, id, payload).await;
            drop(slot);
        });
    }
}

async fn answer(node: &StoreNode, writer: &tokio::sync::Mutex<OwnedWriteHalf>, kind: u8, id: u64, payload: Vec<u8>) {
    let (reply_kind, reply) = match handle(node, kind, &payload).await {
        Ok(bytes) => (KIND_REPLY, bytes),
        Err(message) => (KIND_FAILED, message.into_bytes()),
    };
    drop(payload);
    if let Err(e) = writer.lock().await.write_all(&frame(reply_kind, id, &reply)).await {
        tracing::debug!(error = %e, "cannot answer a peer");
    }
}

/// Runs one request; the bincode of its result, or why it could not be decoded.
async fn handle(node: &StoreNode, kind: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
    fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
        bincode::deserialize(payload).map_err(|e| format!("undecodable peer message: {e}"))
    }
    Ok(match kind {
        KIND_VOTE => encode(&node.raft().vote(decode::<VoteRequest<NodeId>>(payload)?).await),
        KIND_APPEND => encode(&node.raft().append_entries(decode::<AppendEntriesRequest<TypeConfig>>(payload)?).await),
        KIND_SNAPSHOT => {
            encode(&node.raft().install_snapshot(decode::<InstallSnapshotRequest<TypeConfig>>(payload)?).await)
        }
        KIND_FORWARD => {
            // Bounded as the caller's wait is: a leader cut off from the others must not collect
            // writes that wait forever.
            let result: Result<ForwardResponse, StoreError> =
                tokio::time::timeout(node.request_timeout(), node.handle_forwarded(decode(payload)?))
                    .await
                    .unwrap_or(Err(StoreError::Timeout));
            encode(&result)
        }
        other => return Err(format!("unknown peer request kind {other}")),
    })
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
        let client = PeerClient::new(&MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] }).unwrap();
        let result = forward(&client, &ForwardRequest::ReadIndex, Duration::from_secs(5)).await;
        assert!(matches!(result, Err(StoreError::Unreachable(_))), "{result:?}");
    }

    /// A peer that takes requests but never answers: the caller times out, and since nothing at
    /// all came back, the next call opens a new connection.
    #[tokio::test]
    async fn a_silent_peer_times_out_and_the_connection_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                let _ = accepted_tx.send(()).await;
            }
        });
        let client = PeerClient::new(&MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}/")] }).unwrap();
        let first = client.call(KIND_FORWARD, b"x", Duration::from_millis(200)).await;
        assert_eq!(first, Err(CallError::Timeout));
        let second = client.call(KIND_FORWARD, b"x", Duration::from_millis(200)).await;
        assert_eq!(second, Err(CallError::Timeout));
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.expect("two connections").unwrap();
        }
    }

    /// A call abandoned while its frame is half written closes the connection: the next frame
    /// must not be read as the rest of the half one.
    #[tokio::test]
    async fn a_call_dropped_mid_frame_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A peer that takes the connection and reads nothing: the frame cannot be written whole.
        let held = tokio::spawn(async move { listener.accept().await.map(|(socket, _)| socket) });
        let client = PeerClient::new(&MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] }).unwrap();
        let payload = vec![7u8; 64 * 1024 * 1024];
        let call = client.call(KIND_APPEND, &payload, Duration::from_secs(30));
        assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err(), "the write cannot finish");
        let conn = client.conn.lock().await.clone().expect("a connection was opened");
        assert!(conn.closed.load(Ordering::SeqCst), "the half-written connection is closed");
        drop(held);
    }

    /// A peer behind a slow link (a reader taking 8 MB/s): openraft gives each AppendEntries its
    /// heartbeat interval, and 4 MB of entries would time out forever. Trimmed to a budget
    /// learned from the sends, every entry gets through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_get_through_a_link_too_slow_for_one_whole_request() {
        use openraft::{CommittedLeaderId, EntryPayload, Vote};
        const LINK_BYTES_PER_TICK: usize = 80 * 1024;
        const TICK: Duration = Duration::from_millis(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut chunk = vec![0u8; LINK_BYTES_PER_TICK];
                    loop {
                        // The link's pace: the test's slow network, not a wait for a race.
                        tokio::time::sleep(TICK).await;
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                        if pending.starts_with(PREAMBLE) {
                            pending.drain(..PREAMBLE.len());
                        }
                        while pending.len() >= 4 {
                            let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                            if pending.len() < 4 + len {
                                break;
                            }
                            let id = u64::from_be_bytes(pending[5..13].try_into().unwrap());
                            pending.drain(..4 + len);
                            let ok: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                                Ok(AppendEntriesResponse::Success);
                            if socket.write_all(&frame(KIND_REPLY, id, &encode(&ok))).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let entry = |i: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(Command::SetMemberAttrs {
                id: 1,
                name: "x".repeat(256 * 1024),
                client_urls: vec![],
            }),
        };
        let mut network = Network::default();
        let mut peer = network.new_client(2, &MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] }).await;
        let heartbeat = Duration::from_millis(100);
        let mut matched = 0u64;
        let mut attempts = 0;
        while matched < 16 {
            attempts += 1;
            assert!(attempts <= 200, "{matched} of 16 entries through after {attempts} attempts");
            let rpc = AppendEntriesRequest {
                vote: Vote::new_committed(1, 1),
                prev_log_id: (matched > 0).then(|| LogId::new(CommittedLeaderId::new(1, 1), matched)),
                leader_commit: None,
                entries: (matched + 1..=16).map(entry).collect(),
            };
            // As openraft sends it: its own deadline around the call.
            let sent = tokio::time::timeout(heartbeat, peer.append_entries(rpc, RPCOption::new(heartbeat))).await;
            match sent {
                Ok(Ok(AppendEntriesResponse::Success)) => matched = 16,
                Ok(Ok(AppendEntriesResponse::PartialSuccess(Some(id)))) => {
                    assert!(id.index > matched);
                    matched = id.index;
                }
                Ok(Ok(other)) => panic!("unexpected answer {other:?}"),
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// A vote is not held up behind a frame of entries megabytes long on its way over a slow
    /// link: votes and heartbeats have a connection of their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_does_not_wait_behind_a_long_append() {
        use openraft::{CommittedLeaderId, EntryPayload, Vote};
        const LINK_BYTES_PER_TICK: usize = 10 * 1024;
        const TICK: Duration = Duration::from_millis(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A peer at 1 MB/s that answers an append with Success and a vote with a granted vote,
        // and says when a connection has brought it a megabyte.
        let (megabyte_tx, mut megabyte) = tokio::sync::mpsc::channel::<()>(4);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let megabyte_tx = megabyte_tx.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut chunk = vec![0u8; LINK_BYTES_PER_TICK];
                    let mut received = 0;
                    loop {
                        tokio::time::sleep(TICK).await;
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                pending.extend_from_slice(&chunk[..n]);
                                received += n;
                                if received >= 1024 * 1024 && received - n < 1024 * 1024 {
                                    let _ = megabyte_tx.send(()).await;
                                }
                            }
                        }
                        if pending.starts_with(PREAMBLE) {
                            pending.drain(..PREAMBLE.len());
                        }
                        while pending.len() >= 4 {
                            let len = u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                            if pending.len() < 4 + len {
                                break;
                            }
                            let (kind, id) = (pending[4], u64::from_be_bytes(pending[5..13].try_into().unwrap()));
                            pending.drain(..4 + len);
                            let reply = if kind == KIND_VOTE {
                                let granted: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                                    Ok(VoteResponse { vote: Vote::new(2, 1), vote_granted: true, last_log_id: None });
                                encode(&granted)
                            } else {
                                let ok: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
                                    Ok(AppendEntriesResponse::Success);
                                encode(&ok)
                            };
                            if socket.write_all(&frame(KIND_REPLY, id, &reply)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let mut network = Network::default();
        let node = MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] };
        let mut replication = network.new_client(2, &node).await;
        let mut election = network.new_client(2, &node).await;
        let append = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(Command::SetMemberAttrs {
                    id: 1,
                    name: "x".repeat(8 * 1024 * 1024),
                    client_urls: vec![],
                }),
            }],
        };
        let long = tokio::spawn(async move {
            let _ = replication.append_entries(append, RPCOption::new(Duration::from_secs(30))).await;
        });
        // The append's frame is on its way (a megabyte of it arrived; the rest takes seconds)
        // before the vote is sent.
        tokio::time::timeout(Duration::from_secs(10), megabyte.recv()).await.expect("the append is on its way");
        let vote = VoteRequest { vote: Vote::new(2, 1), last_log_id: None };
        let answered =
            tokio::time::timeout(Duration::from_secs(2), election.vote(vote, RPCOption::new(Duration::from_secs(2))))
                .await;
        assert!(matches!(answered, Ok(Ok(VoteResponse { vote_granted: true, .. }))), "the vote waited: {answered:?}");
        long.abort();
    }

    /// Dropping a client closes its connection: the peer reads the end of it.
    #[tokio::test]
    async fn a_dropped_client_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = PeerClient::new(&MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] }).unwrap();
        client.connection().await.unwrap();
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut preamble = [0u8; PREAMBLE.len()];
        socket.read_exact(&mut preamble).await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
        assert!(matches!(n, Ok(Ok(0))), "the connection ends: {n:?}");
    }

    #[tokio::test]
    async fn replies_reach_their_callers_out_of_order_and_bad_requests_are_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A peer that answers the second request first, echoing payloads, and refuses "bad".
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (mut read, mut write) = socket.into_split();
            let mut preamble = [0u8; PREAMBLE.len()];
            read.read_exact(&mut preamble).await.unwrap();
            assert_eq!(&preamble, PREAMBLE);
            let a = read_frame(&mut read).await.unwrap().unwrap();
            let b = read_frame(&mut read).await.unwrap().unwrap();
            for (_, id, payload) in [b, a] {
                let reply =
                    if payload == b"bad" { frame(KIND_FAILED, id, b"no") } else { frame(KIND_REPLY, id, &payload) };
                write.write_all(&reply).await.unwrap();
            }
            let c = read_frame(&mut read).await.unwrap().unwrap();
            write.write_all(&frame(KIND_REPLY, c.1, &c.2)).await.unwrap();
        });
        let client =
            Arc::new(PeerClient::new(&MemberNode { peer_urls: vec![format!("http://127.0.0.1:{port}")] }).unwrap());
        let first = tokio::spawn({
            let client = client.clone();
            async move { client.call(KIND_FORWARD, b"one", Duration::from_secs(5)).await }
        });
        // The first request must be on the wire before the second.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sent = client.conn.lock().await.as_ref().is_some_and(|c| c.next_id.load(Ordering::SeqCst) > 1);
            if sent {
                break;
            }
            assert!(Instant::now() < deadline, "first request never sent");
            tokio::task::yield_now().await;
        }
        let second = client.call(KIND_FORWARD, b"bad", Duration::from_secs(5)).await;
        assert_eq!(second, Err(CallError::Refused("no".into())));
        assert_eq!(first.await.unwrap(), Ok(b"one".to_vec()));
        assert_eq!(client.call(KIND_FORWARD, b"three", Duration::from_secs(5)).await, Ok(b"three".to_vec()));
    }
}
