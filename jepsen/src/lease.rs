//! The lease workload: locks built on leases, as etcd's concurrency recipes build them. Each client
//! grants a short lease, takes a lock key with a Txn (`create_revision == 0` → put the key with the
//! lease), keeps the lease alive while it holds the lock — sometimes deliberately late, around the
//! lease's deadline, so that renewals race the store's expiry — and then releases it by a delete
//! guarded by its revision, or by revoking the lease. `checker::lease` judges the holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::etcdserverpb::request_op::Request as OpRequest;
use proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, RequestOp, TxnRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::client::{channel, classify, Recorder};
use crate::history::{Kind, Op};
use crate::nemesis::SplitMix64;

/// Prefix of the lock keys: `l/0`, `l/1`, ...
pub const LOCK_PREFIX: &str = "l/";
/// TTL asked for every lease, in seconds (the store may raise it to its minimum).
pub const LEASE_TTL_S: i64 = 2;
/// How long one keep-alive may take: well under the TTL, so that a lost answer leaves time to retry.
pub const KEEP_ALIVE_TIMEOUT_MS: u64 = 700;
/// How long a lock is held, at most (keep-alives are needed: it exceeds the TTL).
const HOLD_MS_MAX: u64 = 4_000;
/// Pause after finding a lock taken, at most.
const RETRY_MS_MAX: u64 = 200;
/// One renewal in this many is sent late: around the deadline, before or after it.
const LATE_ONE_IN: usize = 2;
/// A late renewal goes out at the client's deadline plus an offset in [-LATE_BEFORE_MS,
/// +LATE_AFTER_MS]: past it, the store's own deadline (a little later) passes and its expiry loop
/// (checking every few hundred milliseconds) proposes the revocation, which the renewal races.
const LATE_BEFORE_MS: u64 = 200;
const LATE_AFTER_MS: u64 = 400;

pub fn lock_key(i: u64) -> String {
    format!("{LOCK_PREFIX}{i}")
}

/// One client process of the lease workload.
pub struct LockClient {
    process: i64,
    endpoints: Vec<String>,
    member: usize,
    kv: KvClient<Channel>,
    leases: LeaseClient<Channel>,
    rng: SplitMix64,
    counter: u64,
}

/// The lease a round works with: its ID, TTL, and the send time of its last confirmed renewal.
struct Held {
    id: i64,
    ttl: Duration,
    renewed_at: Instant,
}

impl Held {
    /// The client's own deadline: the store counts the TTL from later than this.
    fn deadline(&self) -> Instant {
        self.renewed_at + self.ttl
    }
}

impl LockClient {
    pub fn new(process: i64, endpoints: Vec<String>, seed: u64) -> anyhow::Result<Self> {
        let member = process as usize % endpoints.len();
        let ch = channel(&endpoints[member])?;
        Ok(Self {
            process,
            member,
            kv: KvClient::new(ch.clone()),
            leases: LeaseClient::new(ch),
            endpoints,
            rng: SplitMix64::new(seed ^ 0x5eed_1ea5 ^ (process as u64).wrapping_mul(0x94d0_49bb_1331_11eb)),
            counter: 0,
        })
    }

    fn reconnect(&mut self) {
        self.member = (self.member + 1) % self.endpoints.len();
        match channel(&self.endpoints[self.member]) {
            Ok(ch) => {
                self.kv = KvClient::new(ch.clone());
                self.leases = LeaseClient::new(ch);
            }
            Err(e) => tracing::warn!(process = self.process, error = %e, "cannot open a channel"),
        }
    }

    fn record_error(&mut self, recorder: &Recorder, op: Op, status: &tonic::Status, is_write: bool) {
        let kind = classify(status, is_write);
        recorder.record(self.process, kind, op, None, Some(format!("{:?}: {}", status.code(), status.message())));
        self.reconnect();
    }

    /// Takes, holds and releases locks until `until`.
    pub async fn run(mut self, locks: u64, until: Instant, recorder: Arc<Recorder>) {
        while Instant::now() < until {
            self.round(locks.max(1), until, &recorder).await;
        }
    }

    async fn round(&mut self, locks: u64, until: Instant, recorder: &Recorder) {
        let Some(mut lease) = self.grant(recorder).await else { return };
        let lock = lock_key(self.rng.below(locks as usize) as u64);
        self.counter += 1;
        let token = format!("p{}-{}", self.process, self.counter);
        let acquire = Op::Acquire { lock: lock.clone(), token: token.clone(), lease: lease.id };
        recorder.record(self.process, Kind::Invoke, acquire.clone(), None, None);
        let txn = TxnRequest {
            compare: vec![Compare {
                key: lock.clone().into_bytes(),
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(OpRequest::RequestPut(PutRequest {
                    key: lock.clone().into_bytes(),
                    value: token.clone().into_bytes(),
                    lease: lease.id,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let revision = match self.kv.txn(txn).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let revision = resp.header.map(|h| h.revision);
                if !resp.succeeded {
                    recorder.record(self.process, Kind::Fail, acquire, revision, Some("held".into()));
                    self.revoke_quietly(lease.id).await;
                    let pause = Duration::from_millis(1 + self.rng.below(RETRY_MS_MAX as usize) as u64);
                    tokio::time::sleep_until((Instant::now() + pause).min(until).into()).await;
                    return;
                }
                recorder.record(self.process, Kind::Ok, acquire, revision, None);
                revision.unwrap_or_default()
            }
            Err(status) => {
                self.record_error(recorder, acquire, &status, true);
                // Taken or not, the lease goes: its key, if any, with it.
                self.revoke_quietly(lease.id).await;
                return;
            }
        };
        let release_at =
            (Instant::now() + Duration::from_millis(1 + self.rng.below(HOLD_MS_MAX as usize) as u64)).min(until);
        loop {
            let late = self.rng.below(LATE_ONE_IN) == 0;
            let next = if late {
                let offset = self.rng.below((LATE_BEFORE_MS + LATE_AFTER_MS) as usize) as u64;
                lease.deadline() + Duration::from_millis(offset) - Duration::from_millis(LATE_BEFORE_MS)
            } else {
                lease.renewed_at + lease.ttl / 3
            };
            if next >= release_at {
                tokio::time::sleep_until(release_at.into()).await;
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            match self.keep_alive(recorder, &mut lease).await {
                Renewal::Alive => {}
                Renewal::Gone => return,
                Renewal::Unknown if Instant::now() > lease.deadline() + lease.ttl => {
                    // Nothing heard for a whole TTL past the deadline: give the lock up.
                    break;
                }
                Renewal::Unknown => {}
            }
        }
        self.release(recorder, &lock, &token, lease.id, revision).await;
    }

    async fn grant(&mut self, recorder: &Recorder) -> Option<Held> {
        recorder.record(self.process, Kind::Invoke, Op::Grant { lease: None, ttl: None }, None, None);
        let sent = Instant::now();
        match self.leases.lease_grant(LeaseGrantRequest { ttl: LEASE_TTL_S, id: 0 }).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                if !resp.error.is_empty() || resp.ttl <= 0 {
                    let error = format!("grant refused: {:?} (TTL {})", resp.error, resp.ttl);
                    recorder.record(self.process, Kind::Fail, Op::Grant { lease: None, ttl: None }, None, Some(error));
                    return None;
                }
                let op = Op::Grant { lease: Some(resp.id), ttl: Some(resp.ttl) };
                recorder.record(self.process, Kind::Ok, op, None, None);
                Some(Held { id: resp.id, ttl: Duration::from_secs(resp.ttl as u64), renewed_at: sent })
            }
            Err(status) => {
                self.record_error(recorder, Op::Grant { lease: None, ttl: None }, &status, true);
                None
            }
        }
    }

    async fn keep_alive(&mut self, recorder: &Recorder, lease: &mut Held) -> Renewal {
        let op = Op::KeepAlive { lease: lease.id, ttl: None };
        recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
        let sent = Instant::now();
        let timeout = Duration::from_millis(KEEP_ALIVE_TIMEOUT_MS);
        match tokio::time::timeout(timeout, keep_alive_once(&mut self.leases, lease.id)).await {
            Ok(Ok(resp)) if resp.ttl > 0 => {
                recorder.record(
                    self.process,
                    Kind::Ok,
                    Op::KeepAlive { lease: lease.id, ttl: Some(resp.ttl) },
                    None,
                    None,
                );
                lease.renewed_at = sent;
                lease.ttl = Duration::from_secs(resp.ttl as u64);
                Renewal::Alive
            }
            Ok(Ok(resp)) => {
                let op = Op::KeepAlive { lease: lease.id, ttl: Some(resp.ttl) };
                recorder.record(self.process, Kind::Fail, op, None, Some("lease gone".into()));
                Renewal::Gone
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                let error = format!("{:?}: {}", status.code(), status.message());
                recorder.record(
                    self.process,
                    Kind::Fail,
                    Op::KeepAlive { lease: lease.id, ttl: Some(0) },
                    None,
                    Some(error),
                );
                Renewal::Gone
            }
            Ok(Err(status)) => {
                // Unknown: the renewal may have reached the leader.
                recorder.record(
                    self.process,
                    Kind::Info,
                    op,
                    None,
                    Some(format!("{:?}: {}", status.code(), status.message())),
                );
                self.reconnect();
                Renewal::Unknown
            }
            Err(_) => {
                recorder.record(self.process, Kind::Info, op, None, Some(format!("no answer within {timeout:?}")));
                self.reconnect();
                Renewal::Unknown
            }
        }
    }

    /// Gives a lock up; recorded whatever the outcome, since belief ends when it is sent.
    async fn release(&mut self, recorder: &Recorder, lock: &str, token: &str, lease: i64, revision: i64) {
        let how = if self.rng.below(2) == 0 { "delete" } else { "revoke" };
        let op = Op::Release { lock: lock.to_string(), token: token.to_string(), lease, how: how.to_string() };
        recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
        let result = if how == "delete" {
            let txn = TxnRequest {
                compare: vec![Compare {
                    key: lock.as_bytes().to_vec(),
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    target_union: Some(TargetUnion::ModRevision(revision)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(OpRequest::RequestDeleteRange(DeleteRangeRequest {
                        key: lock.as_bytes().to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            self.kv.txn(txn).await.map(|r| {
                let r = r.into_inner();
                (r.header.map(|h| h.revision), r.succeeded)
            })
        } else {
            self.leases.lease_revoke(LeaseRevokeRequest { id: lease }).await.map(|_| (None, true))
        };
        match result {
            Ok((revision, true)) => recorder.record(self.process, Kind::Ok, op, revision, None),
            // The key was no longer ours (the lease expired): nothing deleted.
            Ok((revision, false)) => recorder.record(self.process, Kind::Fail, op, revision, Some("not held".into())),
            Err(status) if how == "revoke" && status.code() == tonic::Code::NotFound => {
                recorder.record(self.process, Kind::Fail, op, None, Some("lease gone".into()))
            }
            Err(status) => self.record_error(recorder, op, &status, true),
        }
        if how == "delete" {
            self.revoke_quietly(lease).await;
        }
    }

    /// Revokes a lease whose fate does not matter to the check (no lock believed held on it).
    async fn revoke_quietly(&mut self, lease: i64) {
        if let Err(status) = self.leases.lease_revoke(LeaseRevokeRequest { id: lease }).await {
            tracing::debug!(process = self.process, lease, error = %status, "revoke failed; the lease will expire");
        }
    }
}

enum Renewal {
    Alive,
    Gone,
    Unknown,
}

/// One renewal on its own keep-alive stream; the request side stays open until the answer.
async fn keep_alive_once(leases: &mut LeaseClient<Channel>, id: i64) -> Result<LeaseKeepAliveResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(LeaseKeepAliveRequest { id }).map_err(|e| tonic::Status::internal(format!("cannot queue: {e}")))?;
    let mut answers = leases.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let answer = answers.message().await?;
    drop(tx);
    answer.ok_or_else(|| tonic::Status::unavailable("the keep-alive stream ended without an answer"))
}
