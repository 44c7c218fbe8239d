//! The etcd v3 gRPC services (KV, Cluster, Maintenance) and the member's listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use prost::Message;
use proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use proto::etcdserverpb::kv_server::{Kv, KvServer};
use proto::etcdserverpb::lease_server::LeaseServer;
use proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use proto::etcdserverpb::watch_server::WatchServer;
use proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::authority::ClientStream;
use crate::mvcc::{self, MvccError, RequestError, RevisionStore};
use crate::node::StoreNode;
use crate::types::*;

/// The version `Status` reports: the etcd API level served, with build metadata that tells
/// clients (Keelson's API server among them) that this is Keelson's store, whose progress
/// notifications never run ahead of a watcher's events.
pub const ETCD_API_VERSION: &str = "3.4.0+keelson";
/// gRPC framing allowance above the largest request, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The gRPC status an etcd client expects for each failure.
pub fn status(e: StoreError) -> Status {
    let msg = |m: &str| format!("etcdserver: {m}");
    match e {
        StoreError::Mvcc(MvccError::Compacted) => {
            Status::out_of_range(msg("mvcc: required revision has been compacted"))
        }
        StoreError::Mvcc(MvccError::FutureRevision) => {
            Status::out_of_range(msg("mvcc: required revision is a future revision"))
        }
        StoreError::Mvcc(MvccError::KeyNotFound) => Status::invalid_argument(msg("key not found")),
        StoreError::Mvcc(MvccError::LeaseNotFound) => Status::not_found(msg("requested lease not found")),
        StoreError::Mvcc(MvccError::LeaseExists) => Status::failed_precondition(msg("lease already exists")),
        StoreError::Mvcc(MvccError::Storage(m)) => Status::internal(msg(&format!("storage: {m}"))),
        StoreError::Request(r) => Status::invalid_argument(msg(&r.to_string())),
        StoreError::NoLeader => Status::unavailable(msg("no leader")),
        StoreError::Timeout | StoreError::QuorumUnavailable => Status::unavailable(msg("request timed out")),
        StoreError::NotLeader { .. } | StoreError::Unreachable(_) => Status::unavailable(msg("leader changed")),
        StoreError::Indeterminate(_) => Status::unavailable(msg("request timed out, possibly due to connection lost")),
        StoreError::MemberNotFound => Status::not_found(msg("member not found")),
        StoreError::PeerUrlExists => Status::failed_precondition(msg("Peer URLs already exists")),
        StoreError::MemberNotLearner => Status::failed_precondition(msg("can only promote a learner member")),
        StoreError::LearnerNotReady => {
            Status::failed_precondition(msg("can only promote a learner member which is in sync with leader"))
        }
        StoreError::MembershipBusy(_) | StoreError::Unhealthy(_) => Status::unavailable(msg("unhealthy cluster")),
        StoreError::Stopping => Status::unavailable(msg("server stopped")),
        StoreError::Internal(m) => Status::internal(msg(&m)),
    }
}

fn request_status(e: RequestError) -> Status {
    status(StoreError::Request(e))
}

pub struct KvService {
    node: Arc<StoreNode>,
}

impl KvService {
    fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.node.config().max_request_bytes {
            return Err(request_status(RequestError::TooLarge));
        }
        Ok(())
    }

    fn fill(&self, header: &mut Option<ResponseHeader>) {
        fill_header(&self.node, header);
    }
}

/// Completes a header that carries only the revision the state machine gave it.
fn fill_header(node: &StoreNode, header: &mut Option<ResponseHeader>) {
    let revision = header.as_ref().map(|h| h.revision).unwrap_or_default();
    *header = Some(node.header(revision));
}

/// Responses of replicated commands, whose header the serving member completes.
pub(crate) trait Headed {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! headed {
    ($($t:ty),*) => {$(
        impl Headed for $t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}
headed!(PutResponse, DeleteRangeResponse, TxnResponse, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse);

/// Replicates `cmd` and returns its response, as `pick` finds it in the apply result, with a
/// full header; an apply-time error becomes the etcd status a client expects.
pub(crate) async fn replicate<R: Headed>(
    node: &StoreNode,
    cmd: Command,
    pick: fn(CommandResponse) -> Result<R, CommandResponse>,
) -> Result<Response<R>, Status> {
    match pick(node.write(cmd).await.map_err(status)?) {
        Ok(mut r) => {
            fill_header(node, r.header_mut());
            Ok(Response::new(r))
        }
        Err(CommandResponse::Failed(e)) => Err(status(StoreError::Mvcc(e))),
        Err(other) => Err(Status::internal(format!("etcdserver: unexpected apply result {other:?}"))),
    }
}

/// Values a Range reads at a time; between two chunks it lets other tasks run.
pub const RANGE_FETCH_CHUNK_VALUES: usize = 256;

/// A Range over the applied state. The index is read under the state lock; the values after it
/// is released, from a database snapshot, so that a long read never holds up apply (nor, through
/// a writer waiting on the lock, every other reader), in chunks, so that it never holds an async
/// worker for long (heartbeats run on the same workers).
pub async fn range(node: &Arc<StoreNode>, req: RangeRequest) -> Result<RangeResponse, MvccError> {
    let state = node.state().clone();
    let (plan, snapshot) = state.plan_read(|d| d.mvcc.plan_range(&req));
    let plan = plan?;
    let store = state.snapshot_store(&snapshot);
    let mut values = Vec::with_capacity(plan.values());
    for (i, chunk) in plan.revisions().chunks(RANGE_FETCH_CHUNK_VALUES).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        values.extend(store.get_many(chunk)?);
    }
    plan.answer(values)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        mvcc::validate_range(&req).map_err(request_status)?;
        if !req.serializable {
            self.node.read_barrier().await.map_err(status)?;
        }
        let mut resp = range(&self.node, req).await.map_err(|e| status(StoreError::Mvcc(e)))?;
        self.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        mvcc::validate_put(&req).map_err(request_status)?;
        replicate(&self.node, Command::Put(req), |r| match r {
            CommandResponse::Put(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        mvcc::validate_delete(&req).map_err(request_status)?;
        replicate(&self.node, Command::DeleteRange(req), |r| match r {
            CommandResponse::DeleteRange(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        mvcc::validate_txn(&req, self.node.config().max_txn_ops).map_err(request_status)?;
        replicate(&self.node, Command::Txn(req), |r| match r {
            CommandResponse::Txn(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        // Compaction is applied synchronously, so `physical` always holds when this returns.
        replicate(&self.node, Command::Compact { revision: req.revision }, |r| match r {
            CommandResponse::Compact(r) => Ok(r),
            other => Err(other),
        })
        .await
    }
}

pub struct ClusterService {
    node: Arc<StoreNode>,
}

impl ClusterService {
    /// As etcd: cluster responses carry no revision.
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(0))
    }
}

fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument("etcdserver: member must have at least one peer URL"));
    }
    for u in urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.parse::<tonic::transport::Uri>().is_err() {
            return Err(Status::invalid_argument(format!("etcdserver: invalid peer URL {u:?}")));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        check_peer_urls(&req.peer_ur_ls)?;
        let id = self.node.member_add(req.peer_ur_ls.clone(), req.is_learner).await.map_err(status)?;
        let members = self.node.members();
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls,
            client_ur_ls: vec![],
            is_learner: req.is_learner,
        };
        Ok(Response::new(MemberAddResponse { header: self.header(), member: Some(member), members }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.node.member_remove(request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(MemberRemoveResponse { header: self.header(), members: self.node.members() }))
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: member update is not supported by keelson; remove and re-add the member",
        ))
    }

    async fn member_list(&self, _request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse { header: self.header(), members: self.node.members() }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.node.member_promote(request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(MemberPromoteResponse { header: self.header(), members: self.node.members() }))
    }
}

pub struct MaintenanceService {
    node: Arc<StoreNode>,
}

impl MaintenanceService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(self.node.state().read(|d, _| d.mvcc.current_revision())))
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // Keelson raises no alarms: space is not quota-limited.
        Ok(Response::new(AlarmResponse { header: self.header(), alarms: vec![] }))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.raft().metrics().borrow().clone();
        let db_size = self.node.state().db_size();
        let is_learner = !m.membership_config.membership().voter_ids().any(|v| v == self.node.id());
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors: if m.current_leader.is_none() { vec!["etcdserver: no leader".into()] } else { vec![] },
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        // RocksDB compacts in the background; there is nothing to defragment.
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("etcdserver: Hash is not supported by keelson"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(Status::unimplemented("etcdserver: HashKV is not supported by keelson"))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("etcdserver: MoveLeader is not supported by keelson"))
    }
}

/// Accepted client connections not yet taken by the gRPC server.
const ACCEPT_QUEUE_MAX: usize = 64;

/// Client connections, each able to go behind the authority relay (see [`crate::authority`]).
fn relayed_incoming(
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<ClientStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE_MAX);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let socket = match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            if tx.send(Ok(ClientStream::new(socket))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Resolves `http://host:port` URLs to socket addresses to listen on.
pub async fn listen_addrs(urls: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for url in urls {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(format!("{url}: TLS is not supported yet; use http://"));
        } else {
            return Err(format!("{url}: expected a URL such as http://127.0.0.1:2379"));
        };
        let hostport = rest.trim_end_matches('/');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
            .await
            .map_err(|e| format!("{url}: cannot resolve {hostport}: {e}"))?
            .collect();
        // One address per URL: localhost resolves to both families, the first suffices.
        let first = addrs.into_iter().next().ok_or_else(|| format!("{url}: resolves to no address"))?;
        out.push(first);
    }
    Ok(out)
}

/// The member's client services (KV, Watch, Lease, Cluster, Maintenance) as one service: what
/// the client listeners serve, and what a process holding the member calls directly instead of
/// dialing its own client port (the same requests and answers, without sockets or HTTP/2).
pub fn client_routes(node: Arc<StoreNode>) -> tonic::service::Routes {
    let max_msg = node.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    tonic::service::Routes::new(KvServer::new(KvService { node: node.clone() }).max_decoding_message_size(max_msg))
        .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
        .add_service(MaintenanceServer::new(MaintenanceService { node: node.clone() }))
        .add_service(WatchServer::new(crate::watch::WatchService::new(node.clone())))
        .add_service(LeaseServer::new(crate::lease::LeaseService::new(node)))
}

/// Serves the client and peer APIs until `shutdown` completes.
pub async fn serve(
    node: Arc<StoreNode>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let client_addrs = listen_addrs(&node.config().listen_client_urls).await?;
    let peer_addrs = listen_addrs(&node.config().listen_peer_urls).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let mut listeners = Vec::new();
    for addr in client_addrs.iter().chain(peer_addrs.iter()) {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        listeners.push(l);
    }
    let peer_listeners = listeners.split_off(client_addrs.len());

    for listener in listeners {
        let n = node.clone();
        let mut stop = stop_rx.clone();
        let router = tonic::transport::Server::builder().add_routes(client_routes(n));
        let incoming = relayed_incoming(listener, stop_rx.clone());
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    for listener in peer_listeners {
        let (node, stop) = (node.clone(), stop_rx.clone());
        tasks.spawn(async move {
            crate::network::serve_peers(listener, node, stop).await;
            Ok(())
        });
    }
    tracing::info!(
        name = node.name(),
        id = %format!("{:x}", node.id()),
        client = ?client_addrs,
        peer = ?peer_addrs,
        "serving"
    );
    node.bootstrap().await.map_err(|e| e.to_string())?;

    tokio::select! {
        _ = shutdown => {}
        Some(result) = tasks.join_next() => {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "a listener failed");
            }
        }
    }
    let _ = stop_tx.send(true);
    // Requests under way get a grace period to finish; watch and keep-alive streams never end on
    // their own, so whatever is still open after it is closed.
    let drained = tokio::time::timeout(std::time::Duration::from_millis(SHUTDOWN_GRACE_MS), async {
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "listener stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!(grace_ms = SHUTDOWN_GRACE_MS, "closing the client streams still open");
        tasks.abort_all();
    }
    node.shutdown().await;
    Ok(())
}

/// How long requests under way may take to finish once the member is asked to stop, in
/// milliseconds.
const SHUTDOWN_GRACE_MS: u64 = 3_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{fill, testing::single_leader};
    use std::time::Duration;

    /// A Range reads its values after releasing the state lock, from a snapshot taken under it:
    /// a write goes through between the two (with the lock held throughout, as a Range once
    /// read, it would wait), and the values read are those of the planned state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_reading_values_does_not_hold_up_writes() {
        let (_dir, node) = single_leader().await;
        fill::keys(&node, "big/", 2_000, 512).await;
        let req = RangeRequest { key: b"big/".to_vec(), range_end: b"big0".to_vec(), ..Default::default() };
        let state = node.state().clone();
        let (plan, snapshot) = state.plan_read(|d| d.mvcc.plan_range(&req));
        // Also a write that compacts everything the range is about to read.
        let put = PutRequest { key: b"big/00000001".to_vec(), value: b"new".to_vec(), ..Default::default() };
        let write = tokio::time::timeout(Duration::from_secs(10), node.write(Command::Put(put))).await;
        assert!(matches!(write, Ok(Ok(_))), "the write waited for the range: {write:?}");
        let head = state.read(|d, _| d.mvcc.current_revision());
        let compact =
            tokio::time::timeout(Duration::from_secs(10), node.write(Command::Compact { revision: head })).await;
        assert!(matches!(compact, Ok(Ok(_))), "the compaction waited for the range: {compact:?}");
        let resp = plan.expect("planned").fetch(&state.snapshot_store(&snapshot)).expect("the range succeeds");
        assert_eq!((resp.kvs.len(), resp.count), (2_000, 2_000));
        assert_eq!(resp.kvs[1].value, vec![b'v'; 512], "the value as planned, not the later write's");
        drop(snapshot);
        // And through the service's path, the new state.
        let req = RangeRequest { key: b"big/".to_vec(), range_end: b"big0".to_vec(), ..Default::default() };
        let resp = range(&node, req).await.expect("the range succeeds");
        assert_eq!(resp.kvs.len(), 2_000);
        assert_eq!(resp.kvs[1].value, b"new".to_vec());
        node.shutdown().await;
    }

    /// The client services called in process answer as over the network: a put is read back and
    /// a watch opened before it sees it.
    #[tokio::test]
    async fn client_routes_serve_reads_writes_and_watches_in_process() {
        let (_dir, node) = single_leader().await;
        let routes = client_routes(node.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchCreateRequest { key: b"k".to_vec(), ..Default::default() };
        tx.send(WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) })
            .await
            .unwrap();
        let mut watch = proto::etcdserverpb::watch_client::WatchClient::new(routes.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the watch opens")
            .into_inner();
        let created = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("answered in time")
            .unwrap()
            .unwrap();
        assert!(created.created);
        let mut kv = proto::etcdserverpb::kv_client::KvClient::new(routes);
        kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
            .await
            .expect("the put is served");
        let got = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs[0].value, b"v");
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the event comes in time")
            .unwrap()
            .unwrap();
        assert_eq!(event.events.len(), 1);
        assert_eq!(event.events[0].kv.as_ref().unwrap().value, b"v");
    }
}
