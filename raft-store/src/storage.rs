//! Persistence for openraft: the Raft log in segment files of its own (see [`crate::wal`]), and
//! the vote and the replicated state machine ([`StateMachine`]) in one RocksDB database, whose
//! own write-ahead log is synced only where it must be (votes, before a log purge): the state
//! machine can always be rebuilt from the Raft log, so its writes need not be synced one by one.
//!
//! Column families:
//! - `raft_state`: `vote`, `last_purged` → bincode
//! - `kv`: MVCC revision (main, sub; 16 bytes big-endian) → flag byte + protobuf `KeyValue`
//! - `leases`: lease ID (i64 big-endian) → bincode TTL in seconds
//! - `sm_state`: `applied`, `membership`, `revision`, `compacted`, `cluster_id`, `members`
//!
//! The current snapshot is a file beside the database (`snapshot.bin`), replaced atomically.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::mvcc::{Change, Mvcc, MvccError, Revision, RevisionStore, StoredValue};
use crate::snapshot_file;
use crate::types::*;
use crate::wal::SegmentLog;

const CF_RAFT: &str = "raft_state";
const CF_KV: &str = "kv";
const CF_SM: &str = "sm_state";
const CF_LEASES: &str = "leases";

/// Capacity of the channel on which applied events are announced (watchers subscribe to it).
pub const APPLIED_EVENTS_QUEUE_MAX: usize = 4096;

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

/// Opens (creating if needed) the store's database under `dir`.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_RAFT, CF_KV, CF_SM, CF_LEASES]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column families are created when the database opens")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always serialize")
}

// ---------------------------------------------------------------------------------------------
// Raft log

/// Appends waiting for the log sync that makes them durable.
pub const WAL_SYNC_QUEUE_MAX: usize = 1024;
/// Most recent log entries kept in memory for replication to read back.
pub const LOG_CACHE_ENTRIES_MAX: usize = 1024;
/// Most bytes of commands in those entries.
pub const LOG_CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// An append waiting for its sync: the files it wrote, and whom to tell.
struct PendingSync {
    files: Vec<Arc<std::fs::File>>,
    callback: LogFlushed<TypeConfig>,
}

/// The Raft log (a [`SegmentLog`] beside the database) and the vote (in the database). Appends
/// are synced to disk before openraft is told they are durable.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    log: Arc<std::sync::Mutex<SegmentLog>>,
    wal_sync: std::sync::mpsc::SyncSender<PendingSync>,
    /// The newest entries, contiguous: the leader's replication reads them right after appending,
    /// and serving them from here spares a read and decode per message.
    recent: Arc<std::sync::Mutex<RecentEntries>>,
    /// The state machine's applied index: a purge waits until the state covers what it drops.
    applied: tokio::sync::watch::Receiver<u64>,
}

#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn entry_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(cmd) => cmd.size_bytes(),
        _ => 64,
    }
}

impl RecentEntries {
    fn push(&mut self, entry: Entry) {
        if self.entries.back().is_some_and(|last| last.log_id.index + 1 != entry.log_id.index) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(entry);
        while self.entries.len() > LOG_CACHE_ENTRIES_MAX || (self.bytes > LOG_CACHE_BYTES_MAX && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(dropped) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&dropped);
        }
    }

    /// Forgets entries from index `from` on.
    fn truncate(&mut self, from: u64) {
        while let Some(dropped) = self.entries.pop_back_if(|e| e.log_id.index >= from) {
            self.bytes -= entry_bytes(&dropped);
        }
    }

    /// Forgets entries up to and including index `upto`.
    fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto) {
            self.pop_front();
        }
    }

    /// Entries `start..end` if all are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 || start > end {
            return None;
        }
        Some(self.entries.range((start - first) as usize..(end - first) as usize).cloned().collect())
    }
}

impl LogStore {
    /// Opens the log in `dir` (the vote and purge marker live in `db`); `applied` follows the
    /// state machine's applied index.
    pub fn open(db: Arc<DB>, dir: &Path, applied: tokio::sync::watch::Receiver<u64>) -> Result<Self, StorageError> {
        let purged = read_meta::<Option<LogId>>(&db, "last_purged")?.flatten();
        let log = SegmentLog::open(dir, purged.map(|l| l.index)).map_err(read_logs_err)?;
        let (wal_sync, pending) = std::sync::mpsc::sync_channel(WAL_SYNC_QUEUE_MAX);
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || wal_sync_loop(pending))
            .map_err(write_logs_err)?;
        Ok(Self { db, log: Arc::new(std::sync::Mutex::new(log)), wal_sync, recent: Arc::default(), applied })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes entries to the log, readable at once; returns the files to sync for durability.
    fn write_entries(&self, entries: Vec<Entry>) -> Result<Vec<Arc<std::fs::File>>, StorageError> {
        let files = self.log().append(&entries).map_err(write_logs_err)?;
        let mut recent = self.recent();
        for entry in entries {
            recent.push(entry);
        }
        Ok(files)
    }

    /// Writes entries and syncs them before returning (what `append` does with its sync
    /// handed to the sync thread).
    pub fn append_durably(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        for file in self.write_entries(entries)? {
            file.sync_data().map_err(write_logs_err)?;
        }
        Ok(())
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(cf(&self.db, CF_RAFT), key, encode(value), &opts).map_err(write_logs_err)
    }

    /// True when this member has never taken part in a cluster.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote> = read_meta(&self.db, "vote")?;
        let purged: Option<Option<LogId>> = read_meta(&self.db, "last_purged")?;
        Ok(vote.is_none() && purged.flatten().is_none() && self.log().is_empty())
    }
}

fn read_meta<T: for<'de> Deserialize<'de>>(db: &DB, key: &str) -> Result<Option<T>, StorageError> {
    let bytes = db.get_cf(cf(db, CF_RAFT), key).map_err(read_logs_err)?;
    bytes.map(|b| bincode::deserialize(&b).map_err(read_logs_err)).transpose()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => *x + 1,
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(cached) = self.recent().get(start, end) {
            return Ok(cached);
        }
        self.log().read(start, end).map_err(read_logs_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        // Stored as an Option (see `purge`): decode it as one.
        let last_purged: Option<LogId> = read_meta::<Option<LogId>>(&self.db, "last_purged")?.flatten();
        let last = self.log().last().or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta("vote", vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, AnyError::new(&e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(&self.db, "vote")
    }

    async fn save_committed(&mut self, _committed: Option<LogId>) -> Result<(), StorageError> {
        // Not kept: the state machine records what it applied, and commitment beyond that is
        // learned again from the quorum. Saves a write per commit on the write path.
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(None)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Written now (readable at once), durable once the sync thread has synced the files:
        // openraft's core goes on replicating meanwhile, and concurrent appends share a sync.
        let files = match self.write_entries(entries.into_iter().collect()) {
            Ok(files) => files,
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(e);
            }
        };
        if let Err(std::sync::mpsc::SendError(p)) = self.wal_sync.send(PendingSync { files, callback }) {
            p.callback.log_io_completed(Err(std::io::Error::other("the log sync thread has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncate(log_id.index);
        self.log().truncate(log_id.index).map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft asks a follower to purge up to a snapshot while the state machine is still
        // installing it. Dropping those entries first would leave a member killed in between
        // with neither the entries nor the snapshot to restart from: wait for the state to cover
        // them (the install writes the snapshot file, synced, before it moves the applied index).
        let mut applied = self.applied.clone();
        applied.wait_for(|a| *a >= log_id.index).await.map_err(write_logs_err)?;
        // Syncing what the state machine wrote since the last purge can take a while: off the
        // async workers, which serve clients meanwhile.
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // The state machine's writes are not synced one by one: sync them before dropping
            // the log that could rebuild them.
            store.db.flush_wal(true).map_err(write_logs_err)?;
            store.put_meta("last_purged", &Some(log_id))?;
            store.recent().purge(log_id.index);
            store.log().purge(log_id.index).map_err(write_logs_err)
        })
        .await
        .map_err(|e| write_logs_err(std::io::Error::other(e.to_string())))?
    }
}

/// Syncs the files of every queued append: one sync per file covers all appends written before
/// it (group commit). Ends when every `LogStore` clone is gone.
fn wal_sync_loop(pending: std::sync::mpsc::Receiver<PendingSync>) {
    while let Ok(first) = pending.recv() {
        let mut covered = vec![first];
        covered.extend(pending.try_iter());
        let mut files: Vec<&Arc<std::fs::File>> = Vec::new();
        for p in &covered {
            for f in &p.files {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f);
                }
            }
        }
        let result = files.iter().try_for_each(|f| f.sync_data()).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot sync the Raft log");
        }
        drop(files);
        for p in covered {
            p.callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State machine

/// Bytes of recently written values kept in memory (see [`ValueCache`]).
pub const VALUE_CACHE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The values of the most recent revisions: reads of fresh data (the common case) skip RocksDB.
/// A revision's value never changes, so entries need no invalidation, only removal when
/// compaction deletes the revision and clearing when a snapshot replaces the state.
#[derive(Default)]
pub struct ValueCache {
    values: HashMap<Revision, StoredValue>,
    /// Revisions in the order they were cached, oldest first.
    order: VecDeque<Revision>,
    bytes: usize,
}

fn cached_bytes(value: &StoredValue) -> usize {
    const OVERHEAD_BYTES: usize = 96;
    value.kv.key.len() + value.kv.value.len() + OVERHEAD_BYTES
}

impl ValueCache {
    fn insert(&mut self, rev: Revision, value: &StoredValue) {
        if let Some(old) = self.values.insert(rev, value.clone()) {
            self.bytes -= cached_bytes(&old);
        } else {
            self.order.push_back(rev);
        }
        self.bytes += cached_bytes(value);
        while self.bytes > VALUE_CACHE_BYTES_MAX {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(v) = self.values.remove(&oldest) {
                self.bytes -= cached_bytes(&v);
            }
        }
    }

    fn remove(&mut self, rev: Revision) {
        // Its place in `order` goes when eviction reaches it.
        if let Some(v) = self.values.remove(&rev) {
            self.bytes -= cached_bytes(&v);
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Values of the `kv` column family, as the MVCC layer sees them, through the value cache.
pub struct RocksRevisions<'a> {
    db: &'a DB,
    cache: Option<&'a RwLock<ValueCache>>,
    /// Reads see this snapshot of the database rather than its latest state.
    snapshot: Option<&'a rocksdb::Snapshot<'a>>,
}

impl<'a> RocksRevisions<'a> {
    /// Reads straight from the database.
    pub fn new(db: &'a DB) -> Self {
        Self { db, cache: None, snapshot: None }
    }

    fn read_options(&self) -> rocksdb::ReadOptions {
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(snapshot) = self.snapshot {
            opts.set_snapshot(snapshot);
        }
        opts
    }

    fn cached(&self) -> Option<std::sync::RwLockReadGuard<'a, ValueCache>> {
        self.cache.map(|c| c.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn storage(e: impl std::fmt::Display) -> MvccError {
    MvccError::Storage(e.to_string())
}

impl RevisionStore for RocksRevisions<'_> {
    fn get(&self, rev: Revision) -> Result<Option<StoredValue>, MvccError> {
        if let Some(v) = self.cached().and_then(|c| c.values.get(&rev).cloned()) {
            return Ok(Some(v));
        }
        let bytes =
            self.db.get_pinned_cf_opt(cf(self.db, CF_KV), rev.encode(), &self.read_options()).map_err(storage)?;
        bytes.map(|b| StoredValue::decode(&b)).transpose()
    }

    fn get_many(&self, revs: &[Revision]) -> Result<Vec<Option<StoredValue>>, MvccError> {
        let mut out: Vec<Option<StoredValue>> = vec![None; revs.len()];
        let mut missing = Vec::new();
        match self.cached() {
            Some(cache) => {
                for (i, r) in revs.iter().enumerate() {
                    match cache.values.get(r) {
                        Some(v) => out[i] = Some(v.clone()),
                        None => missing.push(i),
                    }
                }
            }
            None => missing.extend(0..revs.len()),
        }
        if missing.is_empty() {
            return Ok(out);
        }
        // RocksDB reads sorted keys together; answers go back in the order asked.
        let mut order: Vec<(usize, [u8; Revision::ENCODED_LEN])> =
            missing.into_iter().map(|i| (i, revs[i].encode())).collect();
        order.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let found = self.db.batched_multi_get_cf_opt(
            cf(self.db, CF_KV),
            order.iter().map(|(_, k)| k),
            true,
            &self.read_options(),
        );
        for ((i, _), value) in order.iter().zip(found) {
            out[*i] = value.map_err(storage)?.map(|b| StoredValue::decode(&b)).transpose()?;
        }
        Ok(out)
    }

    fn scan_from(
        &self,
        from: Revision,
        f: &mut dyn FnMut(Revision, StoredValue) -> Result<bool, MvccError>,
    ) -> Result<(), MvccError> {
        let start = from.encode();
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf_opt(cf(self.db, CF_KV), self.read_options(), mode) {
            let (key, value) = item.map_err(storage)?;
            let rev = Revision::decode(&key).ok_or_else(|| storage("bad revision key"))?;
            if !f(rev, StoredValue::decode(&value)?)? {
                break;
            }
        }
        Ok(())
    }
}

/// Everything the state machine holds besides the values themselves.
pub struct StateData {
    pub mvcc: Mvcc,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub cluster_id: u64,
    pub members: BTreeMap<NodeId, MemberAttrs>,
}

/// One applied revision's events, announced to watchers.
#[derive(Clone, Debug)]
pub struct AppliedEvents {
    pub revision: i64,
    pub events: Arc<Vec<proto::mvccpb::Event>>,
    /// The whole state was replaced by a snapshot, up to `revision` (no events listed): every
    /// watcher behind it reads what it missed from the restored history.
    pub restored: bool,
}

/// The replicated state: MVCC key space plus cluster metadata, readable while Raft applies.
pub struct KvState {
    db: Arc<DB>,
    data: RwLock<StateData>,
    events: broadcast::Sender<AppliedEvents>,
    /// The last applied log index, for callers waiting to read their own writes.
    applied_index: tokio::sync::watch::Sender<u64>,
    values: Arc<RwLock<ValueCache>>,
    /// Hands compacted revisions to the thread that deletes them (see `compactor_loop`); taken
    /// on drop, which then waits for the thread, so that the database closes with the state.
    compactor: Option<std::sync::mpsc::SyncSender<Vec<Revision>>>,
    compactor_thread: Option<std::thread::JoinHandle<()>>,
    /// `StateData::cluster_id`, readable without the state lock: every response header has it.
    cluster_id: std::sync::atomic::AtomicU64,
}

impl KvState {
    fn load(db: Arc<DB>) -> Result<Self, StorageError> {
        let sm = cf(&db, CF_SM);
        let get = |key: &str| db.get_cf(sm, key).map_err(|e| sm_err(ErrorVerb::Read, e));
        fn de<T: for<'de> Deserialize<'de> + Default>(bytes: Option<Vec<u8>>) -> Result<T, StorageError> {
            match bytes {
                Some(b) => bincode::deserialize(&b).map_err(|e| sm_err(ErrorVerb::Read, e)),
                None => Ok(T::default()),
            }
        }
        let applied: Option<LogId> = de(get("applied")?)?;
        let membership: StoredMembership = de(get("membership")?)?;
        let revision: i64 = de(get("revision")?)?;
        let compacted: i64 = de(get("compacted")?)?;
        let cluster_id: u64 = de(get("cluster_id")?)?;
        let members: BTreeMap<NodeId, MemberAttrs> = de(get("members")?)?;
        let leases = read_leases(&db)?;
        let mvcc = Mvcc::open(&RocksRevisions::new(&db), revision, compacted, &leases)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (events, _) = broadcast::channel(APPLIED_EVENTS_QUEUE_MAX);
        let applied_index = tokio::sync::watch::Sender::new(applied.map(|l| l.index).unwrap_or(0));
        let values: Arc<RwLock<ValueCache>> = Arc::default();
        let (compactor, compacted_revs) = std::sync::mpsc::sync_channel(COMPACTIONS_QUEUED_MAX);
        let (db_, values_) = (db.clone(), values.clone());
        let compactor_thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || compactor_loop(db_, values_, compacted_revs))
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let state = Self {
            db,
            data: RwLock::new(StateData { mvcc, applied, membership, cluster_id, members }),
            events,
            applied_index,
            values,
            compactor: Some(compactor),
            compactor_thread: Some(compactor_thread),
            cluster_id: std::sync::atomic::AtomicU64::new(cluster_id),
        };
        state.delete_leftovers(&mut state.data.write().unwrap_or_else(|p| p.into_inner()).mvcc);
        Ok(state)
    }

    /// Queues revisions for deletion; if the compactor is behind, they wait for the next start.
    fn hand_to_compactor(&self, revs: Vec<Revision>) {
        if let Some(Err(e)) = self.compactor.as_ref().map(|c| c.try_send(revs)) {
            tracing::warn!(error = %e, "compacted revisions left for the next start");
        }
    }

    /// Hands what `Mvcc::open` found left over from a compaction to the compactor.
    fn delete_leftovers(&self, mvcc: &mut Mvcc) {
        for change in mvcc.take_changes() {
            if let Change::Compacted(revs) = change {
                tracing::info!(revisions = revs.len(), "deleting revisions left over from a compaction");
                self.hand_to_compactor(revs);
            }
        }
    }

    /// Runs `f` against a consistent view of the state and the stored values.
    pub fn read<T>(&self, f: impl FnOnce(&StateData, &dyn RevisionStore) -> T) -> T {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        f(&data, &self.revisions())
    }

    /// The first half of a read that must not hold up apply: `plan` runs under the state lock
    /// (against the in-memory index, quickly), and the values are read afterwards, without the
    /// lock, through [`KvState::snapshot_store`] on the snapshot returned — taken under the lock,
    /// so that the values are those of the state `plan` saw, whatever is applied or compacted
    /// meanwhile. Long reads fetch in chunks and yield between them, so that no async worker is
    /// held for long either.
    pub fn plan_read<P>(&self, plan: impl FnOnce(&StateData) -> P) -> (P, rocksdb::Snapshot<'_>) {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        (plan(&data), self.db.snapshot())
    }

    /// The stored values as of `snapshot` (from [`KvState::plan_read`]), through the value cache.
    pub fn snapshot_store<'a>(&'a self, snapshot: &'a rocksdb::Snapshot<'a>) -> RocksRevisions<'a> {
        RocksRevisions { db: &self.db, cache: Some(self.values.as_ref()), snapshot: Some(snapshot) }
    }

    /// [`KvState::plan_read`] and the fetch after it in one call.
    pub fn read_planned<P, T>(
        &self,
        plan: impl FnOnce(&StateData) -> P,
        fetch: impl FnOnce(P, &dyn RevisionStore) -> T,
    ) -> T {
        let (planned, snapshot) = self.plan_read(plan);
        fetch(planned, &self.snapshot_store(&snapshot))
    }

    /// The cluster's ID (0 until the first leader sets it).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn revisions(&self) -> RocksRevisions<'_> {
        RocksRevisions { db: &self.db, cache: Some(self.values.as_ref()), snapshot: None }
    }

    /// Waits until the log index `index` is applied; false if `timeout` passed first.
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        if *self.applied_index.borrow() >= index {
            return true;
        }
        let mut applied = self.applied_index.subscribe();
        let reached = matches!(tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index)).await, Ok(Ok(_)));
        reached
    }

    /// Follows the applied log index.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// Subscribes to the events of every revision applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
        self.events.subscribe()
    }

    /// Approximate bytes on disk, for Status.
    pub fn db_size(&self) -> i64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        (prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")) as i64
    }

    fn persist(&self, data: &mut StateData, batch: &mut WriteBatch) {
        let kv = cf(&self.db, CF_KV);
        let mut cache = self.values.write().unwrap_or_else(|p| p.into_inner());
        for change in data.mvcc.take_changes() {
            match change {
                Change::Put(rev, value) => {
                    batch.put_cf(kv, rev.encode(), value.encode());
                    cache.insert(rev, &value);
                }
                // Deleted off the apply path: a compaction drops up to every revision but the
                // newest of each key, too much for one batch under the state lock.
                Change::Compacted(revs) => {
                    let Some(compactor) = self.compactor.as_ref() else { continue };
                    if let Err(e) = compactor.try_send(revs) {
                        let revs = match e {
                            std::sync::mpsc::TrySendError::Full(r) | std::sync::mpsc::TrySendError::Disconnected(r) => {
                                r
                            }
                        };
                        tracing::warn!(revisions = revs.len(), "compactions queued; deleting this one now");
                        for rev in revs {
                            batch.delete_cf(kv, rev.encode());
                            cache.remove(rev);
                        }
                    }
                }
                Change::LeasePut(id, ttl) => batch.put_cf(cf(&self.db, CF_LEASES), id.to_be_bytes(), encode(&ttl)),
                Change::LeaseRemove(id) => batch.delete_cf(cf(&self.db, CF_LEASES), id.to_be_bytes()),
            }
        }
        self.cluster_id.store(data.cluster_id, std::sync::atomic::Ordering::Relaxed);
        let sm = cf(&self.db, CF_SM);
        batch.put_cf(sm, "applied", encode(&data.applied));
        batch.put_cf(sm, "membership", encode(&data.membership));
        batch.put_cf(sm, "revision", encode(&data.mvcc.current_revision()));
        batch.put_cf(sm, "compacted", encode(&data.mvcc.compacted_revision()));
        batch.put_cf(sm, "cluster_id", encode(&data.cluster_id));
        batch.put_cf(sm, "members", encode(&data.members));
    }
}

impl Drop for KvState {
    fn drop(&mut self) {
        self.compactor.take();
        if let Some(thread) = self.compactor_thread.take() {
            if thread.join().is_err() {
                tracing::error!("the compactor panicked");
            }
        }
    }
}

/// Bytes of a snapshot's records loaded per database write.
pub const SNAPSHOT_LOAD_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Compactions waiting for their revisions to be deleted; past this, apply deletes them itself.
pub const COMPACTIONS_QUEUED_MAX: usize = 16;
/// Revisions deleted per write by the compactor.
pub const COMPACTION_BATCH_REVISIONS: usize = 10_000;

/// Deletes compacted revisions in batches, off the apply path. A revision is deleted only once
/// the index no longer has it, so no read that starts afterwards asks for it, and reads under
/// way read a database snapshot. Ends when the state is gone.
fn compactor_loop(db: Arc<DB>, values: Arc<RwLock<ValueCache>>, compacted: std::sync::mpsc::Receiver<Vec<Revision>>) {
    for revs in compacted {
        for chunk in revs.chunks(COMPACTION_BATCH_REVISIONS) {
            let mut batch = WriteBatch::default();
            let kv = cf(&db, CF_KV);
            for rev in chunk {
                batch.delete_cf(kv, rev.encode());
            }
            if let Err(e) = db.write(batch) {
                // Left in place they waste space only: the next start finds and deletes them.
                tracing::error!(error = %e, "deleting compacted revisions failed");
                break;
            }
            let mut cache = values.write().unwrap_or_else(|p| p.into_inner());
            for rev in chunk {
                cache.remove(*rev);
            }
        }
    }
}

/// Every granted lease: ID → TTL in seconds.
fn read_leases(db: &DB) -> Result<BTreeMap<i64, i64>, StorageError> {
    let mut leases = BTreeMap::new();
    for item in db.iterator_cf(cf(db, CF_LEASES), IteratorMode::Start) {
        let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let id = i64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
            sm_err(ErrorVerb::Read, std::io::Error::new(std::io::ErrorKind::InvalidData, "bad lease key"))
        })?);
        leases.insert(id, bincode::deserialize(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?);
    }
    Ok(leases)
}

/// Applies one command and queues its events for watchers.
fn apply_announced(
    data: &mut StateData,
    store: &dyn RevisionStore,
    cmd: &Command,
    announced: &mut Vec<AppliedEvents>,
) -> Result<CommandResponse, StorageError> {
    let (response, events) = apply_command(data, store, cmd);
    // A local storage failure is not a result other members share: stop rather than diverge.
    if let CommandResponse::Failed(MvccError::Storage(m)) = &response {
        return Err(sm_err(ErrorVerb::Read, std::io::Error::other(m.clone())));
    }
    if !events.is_empty() {
        announced.push(AppliedEvents {
            revision: data.mvcc.current_revision(),
            events: Arc::new(events),
            restored: false,
        });
    }
    Ok(response)
}

/// Applies one command; the same input gives the same output on every member.
fn apply_command(
    data: &mut StateData,
    store: &dyn RevisionStore,
    cmd: &Command,
) -> (CommandResponse, Vec<proto::mvccpb::Event>) {
    fn done<R>(
        r: Result<crate::mvcc::Applied<R>, MvccError>,
        wrap: fn(R) -> CommandResponse,
    ) -> (CommandResponse, Vec<proto::mvccpb::Event>) {
        match r {
            Ok(applied) => (wrap(applied.response), applied.events),
            Err(e) => (CommandResponse::Failed(e), Vec::new()),
        }
    }
    match cmd {
        Command::Put(req) => done(data.mvcc.put(store, req), CommandResponse::Put),
        Command::DeleteRange(req) => done(data.mvcc.delete_range(store, req), CommandResponse::DeleteRange),
        Command::Txn(req) => done(data.mvcc.txn(store, req), CommandResponse::Txn),
        Command::Compact { revision } => match data.mvcc.compact(*revision) {
            Ok(resp) => (CommandResponse::Compact(resp), Vec::new()),
            Err(e) => (CommandResponse::Failed(e), Vec::new()),
        },
        Command::LeaseGrant { id, ttl } => match data.mvcc.lease_grant(*id, *ttl) {
            Ok(()) => (
                CommandResponse::LeaseGrant(proto::etcdserverpb::LeaseGrantResponse {
                    header: Some(proto::etcdserverpb::ResponseHeader {
                        revision: data.mvcc.current_revision(),
                        ..Default::default()
                    }),
                    id: *id,
                    ttl: *ttl,
                    error: String::new(),
                }),
                Vec::new(),
            ),
            Err(e) => (CommandResponse::Failed(e), Vec::new()),
        },
        Command::LeaseRevoke { id } => match data.mvcc.lease_revoke(store, *id) {
            Ok(applied) => (
                CommandResponse::LeaseRevoke(proto::etcdserverpb::LeaseRevokeResponse {
                    header: Some(proto::etcdserverpb::ResponseHeader {
                        revision: applied.response,
                        ..Default::default()
                    }),
                }),
                applied.events,
            ),
            Err(e) => (CommandResponse::Failed(e), Vec::new()),
        },
        Command::SetClusterId(id) => {
            if data.cluster_id == 0 {
                data.cluster_id = *id;
            }
            (CommandResponse::Done, Vec::new())
        }
        Command::SetMemberAttrs { id, name, client_urls } => {
            data.members.insert(*id, MemberAttrs { name: name.clone(), client_urls: client_urls.clone() });
            (CommandResponse::Done, Vec::new())
        }
        // Batches are made only by a member's proposer and never nested.
        Command::Batch(_) => (CommandResponse::Failed(MvccError::Storage("nested command batch".into())), Vec::new()),
    }
}

/// openraft's view of the state machine.
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<KvState>,
    /// The latest snapshot (see [`crate::snapshot_file`]), replaced by rename.
    snapshot_path: PathBuf,
    /// The log id of the snapshot file on disk; guards its replacement (builds run beside
    /// applies and installs, and an older snapshot must never replace a newer one).
    snapshot_file: Arc<std::sync::Mutex<Option<LogId>>>,
}

/// A path beside `path` for a file on its way to replacing it.
fn scratch_path(path: &Path, what: &str) -> PathBuf {
    path.with_extension(format!("{what}.tmp"))
}

fn snapshot_io(verb: ErrorVerb) -> impl Fn(std::io::Error) -> StorageError {
    move |e| snapshot_err(verb, e)
}

/// Runs blocking snapshot work off the async workers.
async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
}

impl StateMachine {
    /// Opens the state; if the snapshot file is newer than the applied state (a crash between
    /// writing the file and loading it, or while loading it), loads the snapshot first.
    pub fn open(db: Arc<DB>, dir: &Path) -> Result<Self, StorageError> {
        let sm = Self {
            state: Arc::new(KvState::load(db)?),
            snapshot_path: dir.join("snapshot.bin"),
            snapshot_file: Arc::new(std::sync::Mutex::new(None)),
        };
        let header = match snapshot_file::header(&sm.snapshot_path) {
            Ok(h) => h,
            // Not one this member can read (an older format, or damage): the state it would
            // restore was loaded when it was written; a new snapshot replaces it in time.
            Err(e) => {
                tracing::warn!(path = %sm.snapshot_path.display(), error = %e, "ignoring an unreadable snapshot file");
                None
            }
        };
        if let Some(header) = header {
            *sm.snapshot_file.lock().unwrap_or_else(|p| p.into_inner()) = header.meta.last_log_id;
            let applied = sm.state.data.read().unwrap_or_else(|p| p.into_inner()).applied;
            if header.meta.last_log_id > applied {
                tracing::info!(snapshot = %header.meta.snapshot_id, "loading a snapshot newer than the applied state");
                snapshot_file::verify(&sm.snapshot_path).map_err(snapshot_io(ErrorVerb::Read))?;
                sm.load_snapshot(&sm.snapshot_path)?;
            }
        }
        Ok(sm)
    }

    pub fn state(&self) -> Arc<KvState> {
        self.state.clone()
    }

    /// Makes the file at `written` (complete and synced) the snapshot file, unless that already
    /// holds this snapshot or a newer one; true if it did.
    fn replace_snapshot_file(&self, written: &Path, last_log_id: Option<LogId>) -> Result<bool, StorageError> {
        let mut current = self.snapshot_file.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some() && *current >= last_log_id {
            let _ = std::fs::remove_file(written);
            return Ok(false);
        }
        let replace = || -> std::io::Result<()> {
            std::fs::rename(written, &self.snapshot_path)?;
            if let Some(dir) = self.snapshot_path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        replace().map_err(snapshot_io(ErrorVerb::Write))?;
        *current = last_log_id;
        Ok(true)
    }

    /// Replaces the whole state with the snapshot in the file at `path` (already verified),
    /// streaming its records into the database in bounded batches. The applied index moves
    /// only with the last batch: a member stopped part-way loads the snapshot again when it
    /// reopens.
    fn load_snapshot(&self, path: &Path) -> Result<(), StorageError> {
        let mut reader = snapshot_file::Reader::open(path).map_err(snapshot_io(ErrorVerb::Read))?;
        let header = reader.header.clone();
        let mut data = self.state.data.write().unwrap_or_else(|p| p.into_inner());
        let db = &self.state.db;
        let kv = cf(db, CF_KV);
        let write = |batch: WriteBatch| db.write(batch).map_err(|e| sm_err(ErrorVerb::Write, e));
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(kv, &[][..], &[0xffu8; Revision::ENCODED_LEN + 1][..]);
        let leases = cf(db, CF_LEASES);
        batch.delete_range_cf(leases, &[][..], &[0xffu8; 9][..]);
        for (id, ttl) in &header.leases {
            batch.put_cf(leases, id.to_be_bytes(), encode(ttl));
        }
        while let Some((k, v)) = reader.next_record().map_err(snapshot_io(ErrorVerb::Read))? {
            batch.put_cf(kv, k, v);
            if batch.size_in_bytes() >= SNAPSHOT_LOAD_BATCH_BYTES {
                write(std::mem::take(&mut batch))?;
            }
        }
        let mut fresh = StateData {
            mvcc: Mvcc::new(),
            applied: header.meta.last_log_id,
            membership: header.meta.last_membership.clone(),
            cluster_id: header.cluster_id,
            members: header.members.clone(),
        };
        // Persist everything but the (still empty) MVCC changes, then rebuild the index.
        self.state.persist(&mut fresh, &mut batch);
        let sm = cf(db, CF_SM);
        batch.put_cf(sm, "revision", encode(&header.revision));
        batch.put_cf(sm, "compacted", encode(&header.compacted));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        fresh.mvcc = Mvcc::open(&RocksRevisions::new(db), header.revision, header.compacted, &header.leases)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let index = fresh.applied.map(|l| l.index).unwrap_or(0);
        self.state.values.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.state.delete_leftovers(&mut fresh.mvcc);
        *data = fresh;
        self.state.applied_index.send_replace(index);
        // Watchers learn of applied revisions only through announcements: without one, those
        // on this member would wait for the next write to see what the snapshot brought.
        let restored = AppliedEvents { revision: header.revision, events: Arc::default(), restored: true };
        let _ = self.state.events.send(restored);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sm = self.clone();
        // Reading every value is long: off the async workers, and outside the lock. Between two
        // applies every change is in RocksDB, so a RocksDB snapshot taken under the lock matches
        // the metadata read with it. The values go straight to the file, a record at a time.
        let (meta, file) = off_workers(move || {
            let state = &sm.state;
            let (header, snap) = state.plan_read(|data| {
                let revision = data.mvcc.current_revision();
                let snapshot_id = match data.applied {
                    Some(id) => format!("{}-{}-{}", id.leader_id, id.index, revision),
                    None => format!("empty-{revision}"),
                };
                snapshot_file::SnapshotHeader {
                    meta: SnapshotMeta {
                        last_log_id: data.applied,
                        last_membership: data.membership.clone(),
                        snapshot_id,
                    },
                    revision,
                    compacted: data.mvcc.compacted_revision(),
                    cluster_id: data.cluster_id,
                    members: data.members.clone(),
                    leases: data.mvcc.leases().iter().map(|(id, l)| (*id, l.ttl)).collect(),
                }
            });
            let index = header.meta.last_log_id.map(|l| l.index).unwrap_or(0);
            let path = scratch_path(&sm.snapshot_path, &format!("build-{index}"));
            // Read back when sent to a follower.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(snapshot_io(ErrorVerb::Write))?;
            let records = snap
                .iterator_cf(cf(&state.db, CF_KV), IteratorMode::Start)
                .map(|item| item.map_err(|e| std::io::Error::other(e.to_string())));
            let file = snapshot_file::write(file, &header, records).map_err(snapshot_io(ErrorVerb::Write))?;
            drop(snap);
            // The handle stays good whether the file becomes the snapshot file or is dropped
            // for a newer one.
            sm.replace_snapshot_file(&path, header.meta.last_log_id)?;
            Ok((header.meta, file))
        })
        .await?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "built snapshot");
        let mut file = file;
        std::io::Seek::rewind(&mut file).map_err(snapshot_io(ErrorVerb::Read))?;
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.state.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((data.applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut announced = Vec::new();
        {
            let mut data = self.state.data.write().unwrap_or_else(|p| p.into_inner());
            let store = self.state.revisions();
            for entry in entries {
                data.applied = Some(entry.log_id);
                let response = match &entry.payload {
                    EntryPayload::Blank => CommandResponse::Done,
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResponse::Done
                    }
                    EntryPayload::Normal(Command::Batch(cmds)) => CommandResponse::Batch(
                        cmds.iter()
                            .map(|cmd| apply_announced(&mut data, &store, cmd, &mut announced))
                            .collect::<Result<_, _>>()?,
                    ),
                    EntryPayload::Normal(cmd) => apply_announced(&mut data, &store, cmd, &mut announced)?,
                };
                responses.push(response);
            }
            let mut batch = WriteBatch::default();
            self.state.persist(&mut data, &mut batch);
            self.state.db.write(batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.state.applied_index.send_replace(data.applied.map(|l| l.index).unwrap_or(0));
        }
        for events in announced {
            // No subscriber is fine: watchers catch up from history.
            let _ = self.state.events.send(events);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // One snapshot is received at a time: a new stream starts the file afresh.
        let path = scratch_path(&self.snapshot_path, "receive");
        let file = tokio::fs::File::create(&path).await.map_err(snapshot_io(ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let sm = self.clone();
        let meta = meta.clone();
        off_workers(move || {
            use std::os::unix::fs::MetadataExt;
            let received = scratch_path(&sm.snapshot_path, "receive");
            let mut file = file;
            let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
            let streamed_here = match (file.metadata(), std::fs::metadata(&received)) {
                (Ok(a), Ok(b)) => same(&a, &b),
                _ => false,
            };
            if streamed_here {
                file.sync_all().map_err(snapshot_io(ErrorVerb::Write))?;
            } else {
                // Handed over whole rather than streamed into `begin_receiving_snapshot`'s file.
                std::io::Seek::rewind(&mut file).map_err(snapshot_io(ErrorVerb::Read))?;
                let mut copy = std::fs::File::create(&received).map_err(snapshot_io(ErrorVerb::Write))?;
                std::io::copy(&mut file, &mut copy).map_err(snapshot_io(ErrorVerb::Write))?;
                copy.sync_all().map_err(snapshot_io(ErrorVerb::Write))?;
            }
            drop(file);
            // Checked whole before anything is replaced; then the file first: if the process
            // dies before the state is replaced (or while it is), `open` loads it.
            let header = snapshot_file::verify(&received).map_err(snapshot_io(ErrorVerb::Read))?;
            if header.meta.last_log_id != meta.last_log_id {
                return Err(snapshot_err(
                    ErrorVerb::Read,
                    std::io::Error::other(format!(
                        "received snapshot {} for {}",
                        header.meta.snapshot_id, meta.snapshot_id
                    )),
                ));
            }
            sm.replace_snapshot_file(&received, meta.last_log_id)?;
            sm.load_snapshot(&sm.snapshot_path)?;
            tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let _guard = self.snapshot_file.lock().unwrap_or_else(|p| p.into_inner());
        let file = match std::fs::File::open(&self.snapshot_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snapshot_err(ErrorVerb::Read, e)),
        };
        let reader_file = file.try_clone().map_err(snapshot_io(ErrorVerb::Read))?;
        let header = match snapshot_file::Reader::new(reader_file) {
            Ok(r) => r.header,
            Err(e) => {
                tracing::warn!(error = %e, "the snapshot file is unreadable; none to offer");
                return Ok(None);
            }
        };
        let mut file = file;
        std::io::Seek::rewind(&mut file).map_err(snapshot_io(ErrorVerb::Read))?;
        Ok(Some(Snapshot { meta: header.meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Compact { revision: 0 }),
        }
    }

    fn put(index: u64, key: &str) -> Entry {
        let put = proto::etcdserverpb::PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put(put)),
        }
    }

    /// Installing a snapshot announces the restored revision to the member's watchers.
    #[tokio::test]
    async fn installing_a_snapshot_announces_it_to_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(open_db(&dir.path().join("a")).unwrap(), &dir.path().join("a")).unwrap();
        leader.apply((1..=3).map(|i| put(i, &format!("k{i}")))).await.unwrap();
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut follower = StateMachine::open(open_db(&dir.path().join("b")).unwrap(), &dir.path().join("b")).unwrap();
        let mut announced = follower.state().subscribe();
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        let got = announced.try_recv().expect("the install was announced");
        assert!(got.restored && got.events.is_empty());
        assert_eq!(got.revision, 4, "three puts after revision 1");
        assert_eq!(follower.state().read(|d, _| d.mvcc.current_revision()), 4);
    }

    /// A compaction's dropped revisions are deleted by the compactor after the apply, and a
    /// reopened state finds none left.
    #[tokio::test]
    async fn compacted_revisions_are_deleted_off_the_apply_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut sm = StateMachine::open(open_db(&path).unwrap(), dir.path()).unwrap();
        sm.apply((1..=50).map(|i| put(i, "same"))).await.unwrap();
        let compact = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 51),
            payload: EntryPayload::Normal(Command::Compact { revision: 51 }),
        };
        sm.apply([compact]).await.unwrap();
        let db = sm.state().db.clone();
        let old = (2..=50).map(|main| Revision::new(main, 0)).collect::<Vec<_>>();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while RocksRevisions::new(&db).get_many(&old).unwrap().iter().any(Option::is_some) {
            assert!(std::time::Instant::now() < deadline, "the compacted revisions were never deleted");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(RocksRevisions::new(&db).get(Revision::new(51, 0)).unwrap().is_some(), "the live value stays");
    }

    /// Building and installing a snapshot stream the values: neither holds the database in
    /// memory (it was held three to four times over).
    #[tokio::test]
    async fn snapshots_are_built_and_installed_without_holding_the_database() {
        const VALUES: u64 = 16_384;
        const VALUE_BYTES: usize = 4096;
        let dir = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(open_db(&dir.path().join("a")).unwrap(), &dir.path().join("a")).unwrap();
        let big = |index: u64| {
            let put = proto::etcdserverpb::PutRequest {
                key: format!("k{index:06}").into_bytes(),
                value: vec![b'v'; VALUE_BYTES],
                ..Default::default()
            };
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Put(put)),
            }
        };
        for first in (1..=VALUES).step_by(256) {
            leader.apply((first..first + 256).map(big)).await.unwrap();
        }
        let database = VALUES as usize * VALUE_BYTES;
        let limit = database / 4;
        let before = crate::heap::reset_peak();
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let built = crate::heap::peak() - before;
        assert!(built < limit, "building held {built} bytes for a {database}-byte database");
        let mut follower = StateMachine::open(open_db(&dir.path().join("b")).unwrap(), &dir.path().join("b")).unwrap();
        let before = crate::heap::reset_peak();
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        let installed = crate::heap::peak() - before;
        assert!(installed < limit, "installing held {installed} bytes for a {database}-byte database");
        let req = proto::etcdserverpb::RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            count_only: true,
            ..Default::default()
        };
        assert_eq!(follower.state().read(|d, store| d.mvcc.range(store, &req)).unwrap().count, VALUES as i64);
    }

    /// A follower told to purge up to a snapshot it is still installing keeps its log until the
    /// state covers the purged entries: killed in between, it restarts from the log.
    #[tokio::test]
    async fn a_purge_waits_for_the_state_to_cover_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("db")).unwrap();
        let (applied, watch) = tokio::sync::watch::channel(5u64);
        let mut log = LogStore::open(db.clone(), &dir.path().join("log"), watch).unwrap();
        log.append_durably((1..=10).map(entry).collect()).unwrap();
        let mut purging = log.clone();
        let purge = tokio::spawn(async move { purging.purge(LogId::new(CommittedLeaderId::new(1, 1), 10)).await });
        // While the snapshot is being installed (applied still 5), nothing is dropped.
        for _ in 0..20 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!purge.is_finished(), "the purge ran ahead of the state machine");
        }
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
        assert_eq!(log.try_get_log_entries(6..=10).await.unwrap().len(), 5);
        // The install lands: the purge goes through.
        applied.send_replace(10);
        tokio::time::timeout(std::time::Duration::from_secs(10), purge).await.unwrap().unwrap().unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index), Some(10));
    }
}
