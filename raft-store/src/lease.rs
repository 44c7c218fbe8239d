//! etcd's Lease service. Grants and revocations go through the log; deadlines are kept by the
//! leader alone (`StoreNode::lease_loop`), so keep-alives and time-to-live questions are answered
//! by the leader, forwarded there from any member.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use proto::etcdserverpb::lease_server::Lease;
use proto::etcdserverpb::*;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::node::StoreNode;
use crate::server::{replicate, status};
use crate::types::*;

/// The longest lease etcd grants, in seconds.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;
/// Keep-alive answers queued for one stream's client.
pub const KEEPALIVE_RESPONSES_QUEUE_MAX: usize = 64;

pub struct LeaseService {
    node: Arc<StoreNode>,
}

impl LeaseService {
    pub fn new(node: Arc<StoreNode>) -> Self {
        Self { node }
    }

    /// etcd's floor on TTLs: a lease must outlive a leader election (1.5 election timeouts).
    fn min_ttl_seconds(&self) -> i64 {
        let ms = 3 * self.node.config().election_timeout_ms / 2;
        (ms.div_ceil(1000) as i64).max(1)
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(self.node.state().read(|d, _| d.mvcc.current_revision())))
    }
}

/// A fresh lease ID: positive, unlikely to collide; the log rejects a collision anyway.
fn new_lease_id(member: NodeId, counter: u64) -> i64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    let mut x = nanos ^ member.rotate_left(17) ^ counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 1) as i64).max(1)
}

static LEASE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        if req.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let ttl = req.ttl.max(self.min_ttl_seconds());
        let id = if req.id != 0 {
            req.id
        } else {
            new_lease_id(self.node.id(), LEASE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        };
        replicate(&self.node, Command::LeaseGrant { id, ttl }, |r| match r {
            CommandResponse::LeaseGrant(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        replicate(&self.node, Command::LeaseRevoke { id }, |r| match r {
            CommandResponse::LeaseRevoke(r) => Ok(r),
            other => Err(other),
        })
        .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES_QUEUE_MAX);
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let req = match requests.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream ended");
                        return;
                    }
                };
                let reply = match node.lease_keep_alive(req.id).await {
                    // An unknown or expired lease is answered with TTL 0, as etcd does.
                    Ok(ttl) => {
                        let revision = node.state().read(|d, _| d.mvcc.current_revision());
                        Ok(LeaseKeepAliveResponse { header: Some(node.header(revision)), id: req.id, ttl: ttl.max(0) })
                    }
                    Err(e) => Err(status(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let ttl = self.node.lease_time_to_live(req.id).await.map_err(status)?;
        let (granted, keys) = self.node.state().read(|d, _| match d.mvcc.leases().get(&req.id) {
            Some(l) => (l.ttl, if req.keys { l.keys.iter().cloned().collect() } else { Vec::new() }),
            None => (0, Vec::new()),
        });
        let ttl = if granted == 0 && ttl >= 0 { -1 } else { ttl };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(),
            id: req.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.read_barrier().await.map_err(status)?;
        let leases = self.node.state().read(|d, _| d.mvcc.leases().keys().map(|id| LeaseStatus { id: *id }).collect());
        Ok(Response::new(LeaseLeasesResponse { header: self.header(), leases }))
    }
}
