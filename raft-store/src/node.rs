//! A store member: openraft wired to RocksDB and the peer network, and the operations the gRPC
//! services need — writes and membership changes routed to the leader, linearizable read
//! barriers, response headers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use proto::etcdserverpb::{Member, ResponseHeader};

use crate::coalesce::Coalescer;
use crate::network::{self, Network, PeerClient};
use crate::storage::{open_db, KvState, LogStore, StateMachine};
use crate::types::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Everything a member needs to start; the `keelson store` flags fill it.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Member name → peer URLs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between two snapshots.
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot so that a slow follower catches up from the log.
    pub snapshot_catchup_entries: u64,
    pub request_timeout_ms: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_notify_interval_ms: u64,
}

impl StoreConfig {
    /// A single member on the default etcd ports.
    pub fn single(name: &str, data_dir: PathBuf) -> Self {
        let peer = "http://localhost:2380".to_string();
        Self {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec!["http://localhost:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![(name.to_string(), vec![peer])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "keelson-cluster".into(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            request_timeout_ms: 3_000,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            watch_progress_notify_interval_ms: 600_000,
        }
    }
}

/// A configuration a member cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the data directory {path}: {source}")]
    Storage { path: PathBuf, source: rocksdb::Error },
    #[error("cannot load the state: {0}")]
    State(String),
    #[error("raft: {0}")]
    Raft(String),
}

pub struct StoreNode {
    id: NodeId,
    config: StoreConfig,
    raft: Raft,
    state: Arc<KvState>,
    log: LogStore,
    /// Peer connections by member, reused by forwarded requests.
    channels: Mutex<HashMap<NodeId, Arc<PeerClient>>>,
    /// Lease deadlines, kept only while this member leads (see `lease_loop`).
    lease_deadlines: Mutex<HashMap<i64, Instant>>,
    /// Writes waiting for the proposer (see `propose_loop`).
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    proposals_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Proposal>>>,
    /// Batches under way (PROPOSALS_IN_FLIGHT_MAX permits).
    proposals_in_flight: Arc<tokio::sync::Semaphore>,
    /// Concurrent linearizable reads share one read index from the leader.
    read_index: Coalescer<Result<u64, StoreError>>,
    /// Concurrent callers on the leader share one confirmation of leadership by a quorum.
    leadership: Coalescer<Result<u64, StoreError>>,
}

/// A write waiting to be proposed, and where its outcome goes.
struct Proposal {
    cmd: Command,
    done: tokio::sync::oneshot::Sender<Result<(CommandResponse, u64), StoreError>>,
}

/// Writes a member queues for its proposer; past this, writers wait for room.
pub const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Most commands proposed together as one log entry.
pub const PROPOSAL_BATCH_COMMANDS_MAX: usize = 512;
/// Most bytes of commands in one batch (a single larger command goes alone).
pub const PROPOSAL_BATCH_BYTES_MAX: usize = 512 * 1024;
/// Batches a member has under way at once; while all are, new writes gather into the next one.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;

/// How often the leader looks for lapsed leases.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 250;
/// Most leases the leader revokes in one check, so that a mass expiry does not flood the log.
pub const LEASE_REVOKES_PER_CHECK_MAX: usize = 500;

impl StoreNode {
    /// Opens the member's storage and starts Raft (not yet serving: see `crate::server`).
    pub async fn open(config: StoreConfig) -> Result<Arc<Self>, StartError> {
        let id = member_id(&config.initial_advertise_peer_urls, &config.initial_cluster_token);
        validate(&config)?;
        let dir = config.data_dir.join("member");
        std::fs::create_dir_all(&dir)
            .map_err(|e| StartError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let db_path = dir.join("db");
        let db = open_db(&db_path).map_err(|source| StartError::Storage { path: db_path.clone(), source })?;
        let sm = StateMachine::open(db.clone(), &dir).map_err(|e| StartError::State(e.to_string()))?;
        let state = sm.state();
        let log = LogStore::open(db, &dir.join("log"), state.applied_watch())
            .map_err(|e| StartError::State(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
            // Entries carry batches of up to PROPOSAL_BATCH_BYTES_MAX (plus one command): keep an
            // AppendEntries message well under the peer message limit.
            max_payload_entries: 32,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(raft_config), Network::default(), log.clone(), sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (proposals, proposals_rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE_MAX);
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let read_index = coalesced(me, |node| async move { node.read_index_now().await });
            let leadership = coalesced(me, |node| async move { node.confirm_leader_now().await });
            Self {
                id,
                config,
                raft,
                state,
                log,
                channels: Mutex::new(HashMap::new()),
                lease_deadlines: Mutex::new(HashMap::new()),
                proposals,
                proposals_rx: Mutex::new(Some(proposals_rx)),
                proposals_in_flight: Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT_MAX)),
                read_index,
                leadership,
            }
        }))
    }

    /// Forms the cluster on first start, then keeps this member's record published. Call once
    /// the peer service is listening.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), StartError> {
        let pristine = self.log.is_pristine().map_err(|e| StartError::State(e.to_string()))?;
        if pristine && self.config.initial_cluster_state == ClusterState::New {
            let members: BTreeMap<NodeId, MemberNode> = self
                .config
                .initial_cluster
                .iter()
                .map(|(_, urls)| {
                    (member_id(urls, &self.config.initial_cluster_token), MemberNode { peer_urls: urls.clone() })
                })
                .collect();
            tracing::info!(members = members.len(), "forming a new cluster");
            // Every initial member initializes with the same membership; that is safe.
            if let Err(e) = self.raft.initialize(members).await {
                tracing::info!(error = %e, "cluster already initialized");
            }
        }
        let queue = self.proposals_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(queue) = queue {
            tokio::spawn(propose_loop(Arc::downgrade(self), queue, self.proposals_in_flight.clone()));
        }
        let node = self.clone();
        tokio::spawn(async move { node.publish_loop().await });
        let node = self.clone();
        tokio::spawn(async move { node.watch_raft().await });
        let node = self.clone();
        tokio::spawn(async move { node.lease_loop().await });
        Ok(())
    }

    /// Publishes this member's name and client URLs, and sets the cluster ID when this member
    /// is the first leader.
    async fn publish_loop(self: Arc<Self>) {
        let attrs =
            MemberAttrs { name: self.config.name.clone(), client_urls: self.config.advertise_client_urls.clone() };
        let token = &self.config.initial_cluster_token;
        let initial_ids: BTreeSet<NodeId> =
            self.config.initial_cluster.iter().map(|(_, urls)| member_id(urls, token)).collect();
        let cluster = cluster_id(&initial_ids);
        let mut metrics = self.raft.metrics();
        loop {
            let (published, has_cluster_id) =
                self.state.read(|d, _| (d.members.get(&self.id) == Some(&attrs), d.cluster_id != 0));
            if published && has_cluster_id {
                return;
            }
            let leader = metrics.borrow().current_leader;
            if leader.is_some() {
                if !has_cluster_id && leader == Some(self.id) && self.config.initial_cluster_state == ClusterState::New
                {
                    if let Err(e) = self.write(Command::SetClusterId(cluster)).await {
                        tracing::warn!(error = %e, "cannot record the cluster ID yet");
                    }
                }
                if !published {
                    let cmd = Command::SetMemberAttrs {
                        id: self.id,
                        name: attrs.name.clone(),
                        client_urls: attrs.client_urls.clone(),
                    };
                    match self.write(cmd).await {
                        Ok(_) => {
                            tracing::info!(name = %attrs.name, id = %format!("{:x}", self.id), "published member attributes")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot publish member attributes yet"),
                    }
                }
            }
            // Wake on any Raft change (a leader appears, an entry applies), or retry shortly.
            let _ =
                tokio::time::timeout(Duration::from_millis(self.config.election_timeout_ms), metrics.changed()).await;
        }
    }

    /// Logs leader changes, and why Raft stopped if it stops by itself (a storage failure).
    async fn watch_raft(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut seen = (None, 0);
        loop {
            {
                let m = metrics.borrow();
                if let Err(fatal) = &m.running_state {
                    if !matches!(fatal, openraft::error::Fatal::Stopped) {
                        tracing::error!(error = %fatal, "raft stopped; this member no longer serves writes");
                    }
                    return;
                }
                if self.leadership_seen(&mut seen, m.current_leader, m.current_term) {
                    match m.current_leader {
                        Some(l) => tracing::info!(leader = %format!("{l:x}"), term = m.current_term, "leader elected"),
                        None => tracing::info!(term = m.current_term, "no leader"),
                    }
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Notes the leader and term now in force; true if they differ from `seen`. A new term
    /// starts every lease afresh: deadlines are re-armed with the full TTL when first looked at,
    /// never carried over. By term, not by leader: metrics show only the latest state, so a change
    /// A → B → A can pass unseen while B renewed leases that A's old deadlines know nothing of.
    fn leadership_seen(&self, seen: &mut (Option<NodeId>, u64), leader: Option<NodeId>, term: u64) -> bool {
        if *seen == (leader, term) {
            return false;
        }
        *seen = (leader, term);
        self.lease_deadlines.lock().unwrap_or_else(|p| p.into_inner()).clear();
        true
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// On the leader: revokes, through the log, every lease whose deadline has passed.
    async fn lease_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(LEASE_CHECK_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            if !self.is_leader() {
                continue;
            }
            let expired = self.expired_leases();
            for id in expired {
                // Only as the leader, never forwarded: another leader keeps its own deadlines.
                match self.handle_forwarded(ForwardRequest::Write(vec![Command::LeaseRevoke { id }])).await {
                    Ok(_) => tracing::info!(lease = %format!("{id:x}"), "lease expired; revoked"),
                    Err(e) => {
                        tracing::debug!(lease = %format!("{id:x}"), error = %e, "lease revocation not done");
                        break;
                    }
                }
            }
        }
    }

    /// Leases past their deadline; leases first seen get a deadline of a full TTL from now.
    fn expired_leases(&self) -> Vec<i64> {
        let leases: Vec<(i64, i64)> =
            self.state.read(|d, _| d.mvcc.leases().iter().map(|(id, l)| (*id, l.ttl)).collect());
        let now = Instant::now();
        let mut deadlines = self.lease_deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        deadlines.retain(|id, _| live.contains(id));
        let mut expired = Vec::new();
        for (id, ttl) in leases {
            let deadline = *deadlines.entry(id).or_insert_with(|| now + Duration::from_secs(ttl.max(0) as u64));
            if deadline <= now && expired.len() < LEASE_REVOKES_PER_CHECK_MAX {
                expired.push(id);
            }
        }
        expired
    }

    /// Renews lease `id` (leader only); its TTL in seconds, or -1 if there is no such lease or
    /// its deadline has passed. A lapsed lease is as good as revoked (the expiry loop is on its
    /// way to revoke it, and its keys go with it): renewing it would tell a client it still holds
    /// what is about to be deleted, as etcd's Renew refuses to.
    fn renew_lease(&self, id: i64) -> i64 {
        let ttl = self.state.read(|d, _| d.mvcc.leases().get(&id).map(|l| l.ttl));
        let Some(ttl) = ttl else { return -1 };
        let now = Instant::now();
        let mut deadlines = self.lease_deadlines.lock().unwrap_or_else(|p| p.into_inner());
        if deadlines.get(&id).is_some_and(|d| *d <= now) {
            return -1;
        }
        deadlines.insert(id, now + Duration::from_secs(ttl.max(0) as u64));
        ttl
    }

    /// Seconds left of lease `id` (leader only), or -1 if there is no such lease.
    fn lease_remaining(&self, id: i64) -> i64 {
        let ttl = self.state.read(|d, _| d.mvcc.leases().get(&id).map(|l| l.ttl));
        let Some(ttl) = ttl else { return -1 };
        let now = Instant::now();
        let mut deadlines = self.lease_deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = *deadlines.entry(id).or_insert_with(|| now + Duration::from_secs(ttl.max(0) as u64));
        let left = deadline.saturating_duration_since(now);
        // Whole seconds, rounded up as etcd reports them.
        left.as_millis().div_ceil(1000) as i64
    }

    /// Renews a lease wherever the leader is; its TTL, or -1 if there is no such lease.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            match self.leader_call(ForwardRequest::LeaseKeepAlive { id }).await {
                Ok(ForwardResponse::LeaseTtl(t)) => return Ok(t),
                Ok(other) => return Err(StoreError::Internal(format!("unexpected reply to a keep-alive: {other:?}"))),
                // A renewal is idempotent: when the leader went away mid-request, ask the next one.
                Err(StoreError::Indeterminate(_)) if Instant::now() < deadline => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A lease's remaining seconds as the leader counts them, or -1 if there is no such lease.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<i64, StoreError> {
        match self.leader_call(ForwardRequest::LeaseTimeToLive { id }).await? {
            ForwardResponse::LeaseTtl(t) => Ok(t),
            other => Err(StoreError::Internal(format!("unexpected reply to a time-to-live: {other:?}"))),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn state(&self) -> &Arc<KvState> {
        &self.state
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// The header every response carries.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let cluster_id = self.state.cluster_id();
        ResponseHeader {
            cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// Replicates a command and returns its result, wherever the leader is. Concurrent writes
    /// are proposed together (see `propose_loop`).
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, StoreError> {
        // Nothing waiting and room for another batch: propose it from here, sparing a lone
        // writer the hand-offs to and from the proposer.
        if self.proposals.capacity() == self.proposals.max_capacity() {
            if let Ok(_permit) = self.proposals_in_flight.clone().try_acquire_owned() {
                let (mut responses, index) = self.write_batch(vec![cmd]).await?;
                self.wait_applied(index).await?;
                return responses.pop().ok_or_else(|| StoreError::Internal("a write without a result".into()));
            }
        }
        let (done, outcome) = tokio::sync::oneshot::channel();
        let timeout = self.request_timeout();
        let queued = tokio::time::timeout(timeout, self.proposals.send(Proposal { cmd, done }));
        match queued.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Stopping),
            Err(_) => return Err(StoreError::Timeout),
        }
        // The proposer's own call is bounded by the request timeout; this wait bounds the queueing.
        let (response, index) = match tokio::time::timeout(2 * timeout, outcome).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(StoreError::Stopping),
            Err(_) => return Err(StoreError::Timeout),
        };
        // Read-your-writes on this member: answer once it has applied the write itself.
        self.wait_applied(index).await?;
        Ok(response)
    }

    /// Replicates a batch of commands through the leader; their results and log index.
    async fn write_batch(&self, cmds: Vec<Command>) -> Result<(Vec<CommandResponse>, u64), StoreError> {
        let count = cmds.len();
        match self.leader_call(ForwardRequest::Write(cmds)).await? {
            ForwardResponse::Write(r, index) if r.len() == count => Ok((r, index)),
            other => Err(StoreError::Internal(format!("unexpected reply to a write of {count} commands: {other:?}"))),
        }
    }

    /// Returns once this member has applied everything committed before the call: reads after
    /// it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        // A deliberately broken build for the fault-injection harness to catch: "linearizable"
        // reads served from local state with no read index.
        if cfg!(feature = "test-fault-stale-reads") {
            return Ok(());
        }
        let index = self.read_index.join().await.unwrap_or(Err(StoreError::Stopping))?;
        self.wait_applied(index).await
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        // The state machine's own record is current the moment an apply ends (metrics lag it).
        if self.state.wait_applied(index, self.request_timeout()).await {
            Ok(())
        } else {
            Err(StoreError::Timeout)
        }
    }

    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<NodeId, StoreError> {
        self.member_call(ForwardRequest::MemberAdd { peer_urls, is_learner }).await
    }

    pub async fn member_remove(&self, id: NodeId) -> Result<NodeId, StoreError> {
        self.member_call(ForwardRequest::MemberRemove { id }).await
    }

    pub async fn member_promote(&self, id: NodeId) -> Result<NodeId, StoreError> {
        self.member_call(ForwardRequest::MemberPromote { id }).await
    }

    async fn member_call(&self, req: ForwardRequest) -> Result<NodeId, StoreError> {
        let id = match self.leader_call(req).await? {
            ForwardResponse::Member(id) => id,
            other => return Err(StoreError::Internal(format!("unexpected reply to a member change: {other:?}"))),
        };
        // Let this member's own view include the change before answering with it.
        let _ = self.read_barrier().await;
        Ok(id)
    }

    /// The members as etcd lists them, by ID.
    pub fn members(&self) -> Vec<Member> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let attrs = self.state.read(|d, _| d.members.clone());
        let mut out: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id).cloned().unwrap_or_default();
                Member {
                    id: *id,
                    name: a.name,
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: a.client_urls,
                    is_learner: !voters.contains(id),
                }
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// Runs a request on the leader: here if this member leads, else through the peer service.
    async fn leader_call(&self, req: ForwardRequest) -> Result<ForwardResponse, StoreError> {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (leader, leader_node) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let node = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
                (m.current_leader, node)
            };
            if remaining.is_zero() {
                return Err(if leader.is_some() { StoreError::Timeout } else { StoreError::NoLeader });
            }
            let result = match (leader, leader_node) {
                (Some(l), _) if l == self.id => tokio::time::timeout(remaining, self.handle_forwarded(req.clone()))
                    .await
                    .unwrap_or(Err(StoreError::Timeout)),
                (Some(l), Some(node)) => match self.channel(l, &node) {
                    Ok(client) => network::forward(&client, &req, remaining).await,
                    Err(e) => Err(StoreError::Unreachable(e)),
                },
                _ => Err(StoreError::NotLeader { leader: None }),
            };
            match result {
                Err(StoreError::NotLeader { .. })
                | Err(StoreError::Unreachable(_))
                | Err(StoreError::QuorumUnavailable) => {
                    if let Some(l) = leader {
                        self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(&l);
                    }
                    // Wait for the view of the leader to change, then retry.
                    let wait = remaining.min(Duration::from_millis(self.config.election_timeout_ms));
                    let _ = self
                        .raft
                        .wait(Some(wait))
                        .metrics(|m| m.current_leader.is_some() && m.current_leader != leader, "leader change")
                        .await;
                }
                other => return other,
            }
        }
    }

    fn channel(&self, id: NodeId, node: &MemberNode) -> Result<Arc<PeerClient>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(PeerClient::new(node)?);
        channels.insert(id, c.clone());
        Ok(c)
    }

    /// Serves a request as the leader; answers `NotLeader` when this member is not.
    pub async fn handle_forwarded(&self, req: ForwardRequest) -> Result<ForwardResponse, StoreError> {
        match req {
            ForwardRequest::Write(mut cmds) => {
                if cmds.is_empty() || cmds.iter().any(|c| matches!(c, Command::Batch(_))) {
                    return Err(StoreError::Internal("a write must hold commands, none of them a batch".into()));
                }
                let entry = if cmds.len() == 1 { cmds.pop().expect("one command") } else { Command::Batch(cmds) };
                let resp = self.raft.client_write(entry).await.map_err(client_write_error)?;
                let index = resp.log_id.index;
                let responses = match resp.data {
                    CommandResponse::Batch(responses) => responses,
                    single => vec![single],
                };
                for r in &responses {
                    if let CommandResponse::LeaseGrant(grant) = r {
                        self.renew_lease(grant.id);
                    }
                }
                Ok(ForwardResponse::Write(responses, index))
            }
            // A leader cut off from the others must not keep leases alive that the real leader
            // is about to revoke: leadership is confirmed with a quorum first.
            // A new leader also applies everything committed before answering, so that a lease
            // granted just before a failover is known.
            ForwardRequest::LeaseKeepAlive { id } => {
                let index = self.confirm_leader().await?;
                self.wait_applied(index).await?;
                Ok(ForwardResponse::LeaseTtl(self.renew_lease(id)))
            }
            ForwardRequest::LeaseTimeToLive { id } => {
                let index = self.confirm_leader().await?;
                self.wait_applied(index).await?;
                Ok(ForwardResponse::LeaseTtl(self.lease_remaining(id)))
            }
            ForwardRequest::ReadIndex => Ok(ForwardResponse::ReadIndex(self.confirm_leader().await?)),
            ForwardRequest::MemberAdd { peer_urls, is_learner } => self.leader_member_add(peer_urls, is_learner).await,
            ForwardRequest::MemberRemove { id } => {
                let membership = self.raft.metrics().borrow().membership_config.clone();
                if membership.membership().get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                let is_voter = membership.membership().voter_ids().any(|v| v == id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.change_membership(change).await?;
                Ok(ForwardResponse::Member(id))
            }
            ForwardRequest::MemberPromote { id } => {
                let m = self.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                if membership.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if membership.voter_ids().any(|v| v == id) {
                    return Err(StoreError::MemberNotLearner);
                }
                // As etcd: a learner is ready once it has 90% of the leader's log.
                let last = m.last_log_index.unwrap_or(0);
                let matched =
                    m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index).unwrap_or(0);
                if (matched as f64) < 0.9 * last as f64 {
                    return Err(StoreError::LearnerNotReady);
                }
                self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
                Ok(ForwardResponse::Member(id))
            }
        }
    }

    /// Confirms with a quorum that this member leads; returns the log index a linearizable read
    /// must wait for. Concurrent callers share one confirmation.
    async fn confirm_leader(&self) -> Result<u64, StoreError> {
        self.leadership.join().await.unwrap_or(Err(StoreError::Stopping))
    }

    /// The leader's read index, asked of it here or through the peer transport.
    async fn read_index_now(&self) -> Result<u64, StoreError> {
        match self.leader_call(ForwardRequest::ReadIndex).await? {
            ForwardResponse::ReadIndex(i) => Ok(i),
            other => Err(StoreError::Internal(format!("unexpected reply to a read index: {other:?}"))),
        }
    }

    async fn confirm_leader_now(&self) -> Result<u64, StoreError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(StoreError::NotLeader { leader: f.leader_id })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => Err(StoreError::QuorumUnavailable),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    async fn leader_member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<ForwardResponse, StoreError> {
        if !self.raft.metrics().borrow().current_leader.is_some_and(|l| l == self.id) {
            return Err(StoreError::NotLeader { leader: self.raft.metrics().borrow().current_leader });
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let taken = membership.nodes().any(|(_, n)| n.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if taken {
            return Err(StoreError::PeerUrlExists);
        }
        let id = member_id(&peer_urls, &self.config.initial_cluster_token);
        match self.raft.add_learner(id, MemberNode { peer_urls }, false).await {
            Ok(_) => {}
            Err(e) => return Err(client_write_error(e)),
        }
        if !is_learner {
            // As etcd: a voting member counts toward quorum at once, even before it starts. The
            // change completes only once the joint configuration commits, which in a one-member
            // cluster needs the new member itself: answer once it is under way.
            let raft = self.raft.clone();
            let change = tokio::spawn(async move {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
            });
            let wait = Duration::from_millis(2 * self.config.election_timeout_ms);
            match tokio::time::timeout(wait, change).await {
                Ok(Ok(result)) => {
                    result.map_err(client_write_error)?;
                }
                Ok(Err(join)) => return Err(StoreError::Internal(format!("membership change failed: {join}"))),
                Err(_) => {
                    tracing::info!(member = %format!("{id:x}"), "voter added; the change completes when it joins")
                }
            }
        }
        Ok(ForwardResponse::Member(id))
    }

    async fn change_membership(&self, change: ChangeMembers<NodeId, MemberNode>) -> Result<(), StoreError> {
        self.raft.change_membership(change, false).await.map(|_| ()).map_err(client_write_error)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

/// A coalescer whose runs call `run` on the member while it exists (a run holds it only while it
/// lasts, so the member can be dropped).
fn coalesced<F, Fut>(me: &std::sync::Weak<StoreNode>, run: F) -> Coalescer<Result<u64, StoreError>>
where
    F: Fn(Arc<StoreNode>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, StoreError>> + Send + 'static,
{
    let me = me.clone();
    Coalescer::spawn(move || {
        let running = me.upgrade().map(&run);
        async move {
            match running {
                Some(run) => run.await,
                None => Err(StoreError::Stopping),
            }
        }
    })
}

/// Proposes queued writes in batches: takes every write waiting (up to a batch's limits), sends
/// them to the leader as one request and one log entry, and hands each writer its own result. Up
/// to PROPOSALS_IN_FLIGHT_MAX batches are under way at once (a lone write proposed by its own
/// writer counts as one). Ends when the member is gone.
async fn propose_loop(
    node: std::sync::Weak<StoreNode>,
    mut queue: tokio::sync::mpsc::Receiver<Proposal>,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut bytes = first.cmd.size_bytes();
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_BATCH_COMMANDS_MAX && bytes < PROPOSAL_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.size_bytes();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
            match node.write_batch(cmds).await {
                Ok((responses, index)) => {
                    for (done, response) in waiters.into_iter().zip(responses) {
                        let _ = done.send(Ok((response, index)));
                    }
                }
                Err(e) => {
                    for done in waiters {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

fn fatal(e: openraft::error::Fatal<NodeId>) -> StoreError {
    match e {
        openraft::error::Fatal::Stopped => StoreError::Stopping,
        other => StoreError::Internal(other.to_string()),
    }
}

fn client_write_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader { leader: f.leader_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => StoreError::MembershipBusy(p.to_string()),
            other => StoreError::Unhealthy(other.to_string()),
        },
        RaftError::Fatal(f) => fatal(f),
    }
}

fn validate(config: &StoreConfig) -> Result<(), StartError> {
    let err = |m: String| Err(StartError::Config(m));
    if config.name.is_empty() {
        return err("--name must not be empty".into());
    }
    if config.initial_advertise_peer_urls.is_empty() {
        return err("--initial-advertise-peer-urls must name at least one URL".into());
    }
    let mut names = BTreeSet::new();
    for (name, urls) in &config.initial_cluster {
        if !names.insert(name) {
            return err(format!("--initial-cluster names member {name:?} twice"));
        }
        if urls.is_empty() {
            return err(format!("--initial-cluster gives member {name:?} no peer URL"));
        }
    }
    if config.initial_cluster_state == ClusterState::New {
        match config.initial_cluster.iter().find(|(n, _)| *n == config.name) {
            None => {
                return err(format!(
                    "--initial-cluster has no entry for this member's --name {:?} (e.g. {}={})",
                    config.name,
                    config.name,
                    config.initial_advertise_peer_urls.join(",")
                ))
            }
            Some((_, urls)) => {
                let mut a = urls.clone();
                let mut b = config.initial_advertise_peer_urls.clone();
                a.sort();
                b.sort();
                if a != b {
                    return err(format!(
                        "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                        config.name,
                        urls.join(","),
                        config.initial_advertise_peer_urls.join(",")
                    ));
                }
            }
        }
    }
    if config.election_timeout_ms < 5 * config.heartbeat_interval_ms {
        return err(format!(
            "--election-timeout ({} ms) must be at least 5 times --heartbeat-interval ({} ms)",
            config.election_timeout_ms, config.heartbeat_interval_ms
        ));
    }
    Ok(())
}

/// A single member in a temporary directory, for tests inside the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub async fn single_leader() -> (tempfile::TempDir, Arc<StoreNode>) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = StoreNode::open(StoreConfig::single("t", dir.path().join("data"))).await.expect("the member opens");
        node.bootstrap().await.expect("the member bootstraps");
        let id = node.id();
        node.raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(id) && m.last_applied.is_some(), "leads")
            .await
            .expect("a single member elects itself");
        (dir, node)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::single_leader;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lapsed_lease_is_not_renewed_while_its_revocation_is_under_way() {
        let (_dir, node) = single_leader().await;
        let grant = node.write(Command::LeaseGrant { id: 7, ttl: 60 }).await.expect("granted");
        assert!(matches!(grant, CommandResponse::LeaseGrant(_)));
        assert_eq!(node.lease_keep_alive(7).await.expect("renewed"), 60, "a live lease renews");
        // The deadline passes; the expiry loop has not revoked the lease yet (it does so within
        // a check interval): as etcd, a keep-alive now finds no lease.
        node.lease_deadlines.lock().unwrap().insert(7, Instant::now() - Duration::from_millis(1));
        assert_eq!(node.lease_keep_alive(7).await.expect("answered"), -1);
        // And the lease does go, keys and all.
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.state().read(|d, _| d.mvcc.leases().contains_key(&7)) {
            assert!(Instant::now() < deadline, "the lapsed lease was never revoked");
            tokio::time::sleep(Duration::from_millis(LEASE_CHECK_INTERVAL_MS / 5)).await;
        }
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_deadlines_start_afresh_in_every_term_even_under_the_same_leader() {
        let (_dir, node) = single_leader().await;
        let mut seen = (None, 0);
        assert!(node.leadership_seen(&mut seen, Some(1), 2));
        node.lease_deadlines.lock().unwrap().insert(9, Instant::now());
        // The same leader in the same term: deadlines stand.
        assert!(!node.leadership_seen(&mut seen, Some(1), 2));
        assert_eq!(node.lease_deadlines.lock().unwrap().len(), 1);
        // The same leader in a later term (another led in between, unseen): they are re-armed.
        assert!(node.leadership_seen(&mut seen, Some(1), 4));
        assert!(node.lease_deadlines.lock().unwrap().is_empty());
        node.shutdown().await;
    }
}

#[cfg(test)]
pub(crate) mod fill {
    use super::*;
    use proto::etcdserverpb::PutRequest;

    /// Writes `n` keys `{prefix}{i:08}` with `value_bytes`-byte values, many writers at once (the
    /// proposer batches them).
    pub async fn keys(node: &Arc<StoreNode>, prefix: &str, n: usize, value_bytes: usize) {
        const WRITERS: usize = 64;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (node, prefix) = (node.clone(), prefix.to_string());
                tokio::spawn(async move {
                    for i in (w..n).step_by(WRITERS) {
                        let put = PutRequest {
                            key: format!("{prefix}{i:08}").into_bytes(),
                            value: vec![b'v'; value_bytes],
                            ..Default::default()
                        };
                        node.write(Command::Put(put)).await.expect("a put succeeds");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a writer ends");
        }
    }
}
