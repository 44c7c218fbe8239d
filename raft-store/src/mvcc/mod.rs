//! The MVCC key space with etcd v3 semantics: every committed write bumps one global revision;
//! each key keeps create_revision, mod_revision, version and lease; history is kept until
//! compaction. Deterministic: the same requests applied in the same order give the same state on
//! every member, which is what lets Raft replicate it.
//!
//! Values live in a [`RevisionStore`] keyed by revision; the [`index::KeyIndex`] maps keys to
//! revisions. Writes made while applying are staged in memory ([`Mvcc::take_changes`]) so that
//! the caller persists them atomically with the Raft applied index.

pub mod index;

use std::collections::{BTreeMap, HashSet};

use proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use proto::mvccpb::{event::EventType, Event, KeyValue};

pub use index::{KeyIndex, Revision};

/// Errors a request can meet while applied; each maps to the etcd error its client expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("revision store: {0}")]
    Storage(String),
}

/// The durable home of values, keyed by revision.
pub trait RevisionStore: Send + Sync {
    fn get(&self, rev: Revision) -> Result<Option<StoredValue>, MvccError>;
    /// The values of many revisions, in the order asked (stores may fetch them together).
    fn get_many(&self, revs: &[Revision]) -> Result<Vec<Option<StoredValue>>, MvccError> {
        revs.iter().map(|r| self.get(*r)).collect()
    }
    /// Stored values in revision order from `from` on, while `f` returns true.
    fn scan_from(
        &self,
        from: Revision,
        f: &mut dyn FnMut(Revision, StoredValue) -> Result<bool, MvccError>,
    ) -> Result<(), MvccError>;
}

/// What one revision holds: a key's new value, or its deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredValue {
    pub tombstone: bool,
    pub kv: KeyValue,
}

impl StoredValue {
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        let mut out = Vec::with_capacity(1 + self.kv.encoded_len());
        out.push(u8::from(self.tombstone));
        self.kv.encode(&mut out).expect("a Vec grows as needed");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MvccError> {
        use prost::Message;
        let (flag, rest) = bytes.split_first().ok_or_else(|| MvccError::Storage("empty stored value".into()))?;
        let kv = KeyValue::decode(rest).map_err(|e| MvccError::Storage(format!("undecodable stored value: {e}")))?;
        Ok(Self { tombstone: *flag == 1, kv })
    }
}

/// A change the caller must persist: a value written at a revision, or a revision removed by
/// compaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Put(Revision, StoredValue),
    /// Revisions a compaction dropped from the index. No read asks for them any more, so the
    /// store may delete them at leisure (and a member that stops first finds them again when it
    /// reopens: see [`Mvcc::open`]).
    Compacted(Vec<Revision>),
    /// A lease granted with this TTL in seconds.
    LeasePut(i64, i64),
    LeaseRemove(i64),
}

/// An in-memory [`RevisionStore`], the test double of the RocksDB one.
#[derive(Default)]
pub struct MemoryRevisions {
    pub values: BTreeMap<Revision, StoredValue>,
    pub leases: BTreeMap<i64, i64>,
}

impl MemoryRevisions {
    pub fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Put(rev, value) => {
                    self.values.insert(rev, value);
                }
                Change::Compacted(revs) => {
                    for rev in revs {
                        self.values.remove(&rev);
                    }
                }
                Change::LeasePut(id, ttl) => {
                    self.leases.insert(id, ttl);
                }
                Change::LeaseRemove(id) => {
                    self.leases.remove(&id);
                }
            }
        }
    }
}

impl RevisionStore for MemoryRevisions {
    fn get(&self, rev: Revision) -> Result<Option<StoredValue>, MvccError> {
        Ok(self.values.get(&rev).cloned())
    }

    fn scan_from(
        &self,
        from: Revision,
        f: &mut dyn FnMut(Revision, StoredValue) -> Result<bool, MvccError>,
    ) -> Result<(), MvccError> {
        for (rev, value) in self.values.range(from..) {
            if !f(*rev, value.clone())? {
                break;
            }
        }
        Ok(())
    }
}

/// The result of applying one write: its response, and the events it produced (for watchers).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied<R> {
    pub response: R,
    pub events: Vec<Event>,
}

/// A Range settled against the index (see [`Mvcc::plan_range`]).
#[derive(Debug, Clone)]
pub struct RangePlan {
    header_revision: i64,
    count: i64,
    /// The revisions to read, in key order.
    revs: Vec<Revision>,
    count_only: bool,
    keys_only: bool,
    limit: i64,
    sort_order: i32,
    sort_target: i32,
    min_mod_revision: i64,
    max_mod_revision: i64,
    min_create_revision: i64,
    max_create_revision: i64,
}

impl RangePlan {
    /// Values to read: a plan with many is worth fetching off the async workers.
    pub fn values(&self) -> usize {
        self.revs.len()
    }

    /// The revisions to read, in the order their values are expected by [`RangePlan::answer`].
    pub fn revisions(&self) -> &[Revision] {
        &self.revs
    }

    /// Reads the planned values from `store` (which must still hold them) and shapes the answer.
    pub fn fetch(self, store: &dyn RevisionStore) -> Result<RangeResponse, MvccError> {
        // One batched read of every value.
        let values = store.get_many(&self.revs)?;
        self.answer(values)
    }

    /// Shapes the answer from the values of [`RangePlan::revisions`], read by the caller.
    pub fn answer(self, values: Vec<Option<StoredValue>>) -> Result<RangeResponse, MvccError> {
        let mut kvs = Vec::with_capacity(values.len());
        for (r, value) in self.revs.iter().zip(values) {
            let value = value.ok_or_else(|| MvccError::Storage(format!("revision {r:?} is indexed but not stored")))?;
            kvs.push(value.kv);
        }
        Ok(self.finish(kvs))
    }

    fn finish(self, mut kvs: Vec<KeyValue>) -> RangeResponse {
        let header = ResponseHeader { revision: self.header_revision, ..Default::default() };
        if self.count_only {
            return RangeResponse { header: Some(header), kvs: vec![], more: false, count: self.count };
        }
        if self.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= self.max_mod_revision);
        }
        if self.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= self.min_mod_revision);
        }
        if self.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= self.max_create_revision);
        }
        if self.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= self.min_create_revision);
        }
        let sort_order = range_request::SortOrder::try_from(self.sort_order).unwrap_or_default();
        let sort_target = range_request::SortTarget::try_from(self.sort_target).unwrap_or_default();
        // Keys come out in ascending key order; any other target defaults to ascending.
        let order = if sort_target != range_request::SortTarget::Key && sort_order == range_request::SortOrder::None {
            range_request::SortOrder::Ascend
        } else {
            sort_order
        };
        if order != range_request::SortOrder::None {
            use range_request::SortTarget as T;
            kvs.sort_by(|a, b| {
                let ord = match sort_target {
                    T::Key => a.key.cmp(&b.key),
                    T::Version => a.version.cmp(&b.version),
                    T::Create => a.create_revision.cmp(&b.create_revision),
                    T::Mod => a.mod_revision.cmp(&b.mod_revision),
                    T::Value => a.value.cmp(&b.value),
                };
                if order == range_request::SortOrder::Descend {
                    ord.reverse()
                } else {
                    ord
                }
            });
        }
        let mut more = false;
        if self.limit > 0 && kvs.len() > self.limit as usize {
            kvs.truncate(self.limit as usize);
            more = true;
        }
        if self.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResponse { header: Some(header), kvs, more, count: self.count }
    }
}

/// A granted lease: its TTL in seconds and the keys attached to it. When it lapses, the leader
/// revokes it through the log, which deletes those keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub ttl: i64,
    pub keys: std::collections::BTreeSet<Vec<u8>>,
}

pub struct Mvcc {
    index: KeyIndex,
    current: i64,
    compacted: i64,
    leases: BTreeMap<i64, Lease>,
    /// Values written since the last `take_changes`, visible to reads before they are persisted.
    staged: BTreeMap<Revision, StoredValue>,
    changes: Vec<Change>,
}

/// The state of one write transaction: all its changes share `rev`, ordered by `sub`.
struct WriteTxn {
    rev: i64,
    sub: i64,
    events: Vec<Event>,
    /// What to take back if the transaction fails part-way.
    undo: Vec<Undo>,
    changes_mark: usize,
}

enum Undo {
    Index { key: Vec<u8>, tombstone: bool },
    Attach { key: Vec<u8>, old: i64, new: i64 },
}

impl Mvcc {
    /// An empty key space: revision 1, as a fresh etcd.
    pub fn new() -> Self {
        Self {
            index: KeyIndex::default(),
            current: 1,
            compacted: 0,
            leases: BTreeMap::new(),
            staged: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// Rebuilds the index from a revision store whose history starts after `compacted`, and the
    /// leases (ID → TTL) with the keys attached to them. Stored revisions that compaction had
    /// already dropped come back as a staged [`Change::Compacted`].
    pub fn open(
        store: &dyn RevisionStore,
        current: i64,
        compacted: i64,
        leases: &BTreeMap<i64, i64>,
    ) -> Result<Self, MvccError> {
        let mut mvcc = Self::new();
        mvcc.current = current.max(1);
        mvcc.compacted = compacted;
        mvcc.leases = leases.iter().map(|(id, ttl)| (*id, Lease { ttl: *ttl, keys: Default::default() })).collect();
        store.scan_from(Revision::default(), &mut |rev, value| {
            if value.tombstone {
                mvcc.index.tombstone(&value.kv.key, rev);
            } else {
                mvcc.index.put(&value.kv.key, rev);
            }
            mvcc.current = mvcc.current.max(rev.main);
            Ok(true)
        })?;
        // Revisions a compaction dropped but the store had not deleted yet (they are deleted
        // after the compaction is applied): found again, and handed back for deletion.
        let leftover = mvcc.index.compact(compacted);
        if !leftover.is_empty() {
            mvcc.changes.push(Change::Compacted(leftover));
        }
        let live = mvcc.index.range(&[0], &[0], mvcc.current, 0);
        for (key, rev) in live {
            let lease = mvcc.value(store, rev)?.kv.lease;
            if lease != 0 {
                if let Some(l) = mvcc.leases.get_mut(&lease) {
                    l.keys.insert(key);
                }
            }
        }
        Ok(mvcc)
    }

    pub fn leases(&self) -> &BTreeMap<i64, Lease> {
        &self.leases
    }

    /// Grants lease `id`; the ID is chosen before the request enters the log.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.leases.insert(id, Lease { ttl, keys: Default::default() });
        self.changes.push(Change::LeasePut(id, ttl));
        Ok(())
    }

    /// Revokes lease `id`, deleting its keys in one revision.
    pub fn lease_revoke(&mut self, store: &dyn RevisionStore, id: i64) -> Result<Applied<i64>, MvccError> {
        let lease = self.leases.get(&id).ok_or(MvccError::LeaseNotFound)?.clone();
        let mut txn = self.begin();
        for key in &lease.keys {
            let req = DeleteRangeRequest { key: key.clone(), range_end: Vec::new(), prev_kv: false };
            if let Err(e) = self.txn_delete(store, &mut txn, &req) {
                self.rollback(txn);
                return Err(e);
            }
        }
        self.leases.remove(&id);
        self.changes.push(Change::LeaseRemove(id));
        if txn.sub > 0 {
            self.current = txn.rev;
        }
        Ok(Applied { response: self.current, events: txn.events })
    }

    fn attach(&mut self, key: &[u8], old: i64, new: i64) {
        if old == new {
            return;
        }
        if let Some(l) = self.leases.get_mut(&old) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&new) {
            l.keys.insert(key.to_vec());
        }
    }

    pub fn current_revision(&self) -> i64 {
        self.current
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Changes staged since the last call, in the order they must be persisted.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.staged.clear();
        std::mem::take(&mut self.changes)
    }

    fn value(&self, store: &dyn RevisionStore, rev: Revision) -> Result<StoredValue, MvccError> {
        if let Some(value) = self.staged.get(&rev) {
            return Ok(value.clone());
        }
        store.get(rev)?.ok_or_else(|| MvccError::Storage(format!("revision {rev:?} is indexed but not stored")))
    }

    /// The live value of `key` as of revision `at`.
    fn latest(&self, store: &dyn RevisionStore, key: &[u8], at: i64) -> Result<Option<KeyValue>, MvccError> {
        match self.index.range(key, b"", at, 1).into_iter().next() {
            Some((_, rev)) => Ok(Some(self.value(store, rev)?.kv)),
            None => Ok(None),
        }
    }

    fn range_at(&self, store: &dyn RevisionStore, req: &RangeRequest, at: i64) -> Result<RangeResponse, MvccError> {
        let plan = self.plan_range_at(req, at)?;
        if self.staged.is_empty() {
            return plan.fetch(store);
        }
        // Inside a transaction: its own writes are staged, not yet stored.
        let kvs = plan.revs.iter().map(|r| self.value(store, *r).map(|v| v.kv)).collect::<Result<_, _>>()?;
        Ok(plan.finish(kvs))
    }

    /// A read of the committed state, settled against the index: which revisions to read and
    /// how to shape the answer. The values are fetched afterwards ([`RangePlan::fetch`]), from a
    /// store that still holds them (a snapshot taken with the plan), without holding up apply.
    pub fn plan_range(&self, req: &RangeRequest) -> Result<RangePlan, MvccError> {
        debug_assert!(self.staged.is_empty(), "readers never see a transaction under way");
        self.plan_range_at(req, self.current)
    }

    fn plan_range_at(&self, req: &RangeRequest, at: i64) -> Result<RangePlan, MvccError> {
        let rev = if req.revision <= 0 { at } else { req.revision };
        if rev > at {
            return Err(MvccError::FutureRevision);
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let sort_order = range_request::SortOrder::try_from(req.sort_order).unwrap_or_default();
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Sorting and filtering need every key first; otherwise one extra tells `more`.
        let fetch_limit = if sort_order != range_request::SortOrder::None || filtered || req.limit <= 0 {
            0
        } else {
            (req.limit as usize).saturating_add(1)
        };
        let count = self.index.count(&req.key, &req.range_end, rev) as i64;
        let revs = if req.count_only {
            Vec::new()
        } else {
            self.index.range(&req.key, &req.range_end, rev, fetch_limit).into_iter().map(|(_, r)| r).collect()
        };
        Ok(RangePlan {
            header_revision: at,
            count,
            revs,
            count_only: req.count_only,
            keys_only: req.keys_only,
            limit: req.limit,
            sort_order: req.sort_order,
            sort_target: req.sort_target,
            min_mod_revision: req.min_mod_revision,
            max_mod_revision: req.max_mod_revision,
            min_create_revision: req.min_create_revision,
            max_create_revision: req.max_create_revision,
        })
    }

    /// The events of revisions `from..=to` on keys in `[key, range_end)`, in revision order, as
    /// watchers receive them; with each event's previous value when `prev_kv` is set.
    pub fn history(
        &self,
        store: &dyn RevisionStore,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        // As for reads, the compaction revision itself is still watchable.
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut events = history_scan(store, key, range_end, from, to, usize::MAX, usize::MAX)?.events;
        if prev_kv {
            let prevs = self.prev_revisions(&events);
            self.fill_prev(store, &mut events, &prevs)?;
        }
        Ok(events)
    }

    /// For each event, the revision holding its key's previous value, when the index still
    /// knows it (the revision before the event is not compacted away) and there is one.
    pub fn prev_revisions(&self, events: &[Event]) -> Vec<Option<Revision>> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref()?;
                let before = kv.mod_revision - 1;
                if before < self.compacted {
                    return None;
                }
                self.index.range(&kv.key, b"", before, 1).into_iter().next().map(|(_, rev)| rev)
            })
            .collect()
    }

    fn fill_prev(
        &self,
        store: &dyn RevisionStore,
        events: &mut [Event],
        prevs: &[Option<Revision>],
    ) -> Result<(), MvccError> {
        for (event, prev) in events.iter_mut().zip(prevs) {
            if let Some(rev) = prev {
                event.prev_kv = Some(self.value(store, *rev)?.kv);
            }
        }
        Ok(())
    }

    /// A read of the committed state (the revision in the request, or the current one).
    pub fn range(&self, store: &dyn RevisionStore, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(store, req, self.current)
    }

    pub fn put(&mut self, store: &dyn RevisionStore, req: &PutRequest) -> Result<Applied<PutResponse>, MvccError> {
        let mut txn = self.begin();
        match self.txn_put(store, &mut txn, req) {
            Ok(response) => Ok(self.commit(txn, response)),
            Err(e) => {
                self.rollback(txn);
                Err(e)
            }
        }
    }

    pub fn delete_range(
        &mut self,
        store: &dyn RevisionStore,
        req: &DeleteRangeRequest,
    ) -> Result<Applied<DeleteRangeResponse>, MvccError> {
        let mut txn = self.begin();
        match self.txn_delete(store, &mut txn, req) {
            Ok(response) => Ok(self.commit(txn, response)),
            Err(e) => {
                self.rollback(txn);
                Err(e)
            }
        }
    }

    pub fn txn(&mut self, store: &dyn RevisionStore, req: &TxnRequest) -> Result<Applied<TxnResponse>, MvccError> {
        let mut txn = self.begin();
        let result = self.evaluate(store, &req.compare).and_then(|succeeded| {
            let ops = if succeeded { &req.success } else { &req.failure };
            self.txn_ops(store, &mut txn, ops).map(|responses| (succeeded, responses))
        });
        match result {
            Ok((succeeded, responses)) => Ok(self.commit(txn, TxnResponse { header: None, succeeded, responses })),
            Err(e) => {
                self.rollback(txn);
                Err(e)
            }
        }
    }

    fn evaluate(&self, store: &dyn RevisionStore, compares: &[Compare]) -> Result<bool, MvccError> {
        for c in compares {
            let kvs: Vec<KeyValue> = self
                .index
                .range(&c.key, &c.range_end, self.current, 0)
                .into_iter()
                .map(|(_, rev)| self.value(store, rev).map(|v| v.kv))
                .collect::<Result<_, _>>()?;
            let ok = if kvs.is_empty() {
                // A missing key compares as a zero KeyValue, except that no value equals it.
                c.target != compare::CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default())
            } else {
                kvs.iter().all(|kv| compare_kv(c, kv))
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn txn_ops(
        &mut self,
        store: &dyn RevisionStore,
        txn: &mut WriteTxn,
        ops: &[RequestOp],
    ) -> Result<Vec<ResponseOp>, MvccError> {
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    // Reads inside a txn see its earlier writes.
                    let at = if txn.sub > 0 { txn.rev } else { self.current };
                    let mut resp = self.range_at(store, r, at)?;
                    resp.header = Some(ResponseHeader { revision: at, ..Default::default() });
                    response_op::Response::ResponseRange(resp)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut resp = self.txn_put(store, txn, p)?;
                    resp.header = Some(ResponseHeader { revision: txn.rev, ..Default::default() });
                    response_op::Response::ResponsePut(resp)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut resp = self.txn_delete(store, txn, d)?;
                    resp.header = Some(ResponseHeader { revision: txn.rev, ..Default::default() });
                    response_op::Response::ResponseDeleteRange(resp)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let succeeded = self.evaluate(store, &t.compare)?;
                    let ops = if succeeded { &t.success } else { &t.failure };
                    let inner = self.txn_ops(store, txn, ops)?;
                    let revision = if txn.sub > 0 { txn.rev } else { self.current };
                    response_op::Response::ResponseTxn(TxnResponse {
                        header: Some(ResponseHeader { revision, ..Default::default() }),
                        succeeded,
                        responses: inner,
                    })
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(responses)
    }

    fn begin(&self) -> WriteTxn {
        WriteTxn {
            rev: self.current + 1,
            sub: 0,
            events: Vec::new(),
            undo: Vec::new(),
            changes_mark: self.changes.len(),
        }
    }

    /// Takes back everything a failed write did: a request is applied whole or not at all.
    fn rollback(&mut self, txn: WriteTxn) {
        for undo in txn.undo.into_iter().rev() {
            match undo {
                Undo::Index { key, tombstone } => self.index.undo(&key, tombstone),
                Undo::Attach { key, old, new } => self.attach(&key, new, old),
            }
        }
        for change in self.changes.drain(txn.changes_mark..) {
            if let Change::Put(rev, _) = change {
                self.staged.remove(&rev);
            }
        }
    }

    /// Ends a write: the revision moves only if something changed.
    fn commit<R: HasHeader>(&mut self, txn: WriteTxn, mut response: R) -> Applied<R> {
        if txn.sub > 0 {
            self.current = txn.rev;
        }
        response.set_revision(self.current);
        Applied { response, events: txn.events }
    }

    fn stage(&mut self, rev: Revision, value: StoredValue) {
        self.staged.insert(rev, value.clone());
        self.changes.push(Change::Put(rev, value));
    }

    fn txn_put(
        &mut self,
        store: &dyn RevisionStore,
        txn: &mut WriteTxn,
        req: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        let at = if txn.sub > 0 { txn.rev } else { self.current };
        let prev = self.latest(store, &req.key, at)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let rev = Revision::new(txn.rev, txn.sub);
        txn.sub += 1;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (txn.rev, 1),
        };
        let value = if req.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease { prev.as_ref().map(|p| p.lease).unwrap_or_default() } else { req.lease };
        let kv = KeyValue { key: req.key.clone(), create_revision, mod_revision: txn.rev, version, value, lease };
        self.index.put(&req.key, rev);
        txn.undo.push(Undo::Index { key: req.key.clone(), tombstone: false });
        let old_lease = prev.as_ref().map(|p| p.lease).unwrap_or(0);
        self.attach(&req.key, old_lease, lease);
        txn.undo.push(Undo::Attach { key: req.key.clone(), old: old_lease, new: lease });
        self.stage(rev, StoredValue { tombstone: false, kv: kv.clone() });
        txn.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        Ok(PutResponse { header: None, prev_kv: if req.prev_kv { prev } else { None } })
    }

    fn txn_delete(
        &mut self,
        store: &dyn RevisionStore,
        txn: &mut WriteTxn,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let at = if txn.sub > 0 { txn.rev } else { self.current };
        let found = self.index.range(&req.key, &req.range_end, at, 0);
        let mut prev_kvs = Vec::with_capacity(found.len());
        for (key, old) in &found {
            let prev = self.value(store, *old)?.kv;
            let rev = Revision::new(txn.rev, txn.sub);
            txn.sub += 1;
            self.index.tombstone(key, rev);
            txn.undo.push(Undo::Index { key: key.clone(), tombstone: true });
            self.attach(key, prev.lease, 0);
            txn.undo.push(Undo::Attach { key: key.clone(), old: prev.lease, new: 0 });
            let tomb = KeyValue { key: key.clone(), mod_revision: txn.rev, ..Default::default() };
            self.stage(rev, StoredValue { tombstone: true, kv: tomb.clone() });
            txn.events.push(Event { r#type: EventType::Delete as i32, kv: Some(tomb), prev_kv: Some(prev.clone()) });
            prev_kvs.push(prev);
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: found.len() as i64,
            prev_kvs: if req.prev_kv { prev_kvs } else { Vec::new() },
        })
    }

    /// Discards history below `rev`: reads at revisions under it fail from now on.
    pub fn compact(&mut self, rev: i64) -> Result<CompactionResponse, MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRevision);
        }
        let removed = self.index.compact(rev);
        for r in &removed {
            self.staged.remove(r);
        }
        if !removed.is_empty() {
            self.changes.push(Change::Compacted(removed));
        }
        self.compacted = rev;
        Ok(CompactionResponse { header: Some(ResponseHeader { revision: self.current, ..Default::default() }) })
    }
}

impl Default for Mvcc {
    fn default() -> Self {
        Self::new()
    }
}

/// One stretch of history (see [`history_scan`]).
pub struct HistoryBatch {
    pub events: Vec<Event>,
    /// The first revision not read yet, when the scan stopped before `to`.
    pub resume: Option<i64>,
}

/// The events of revisions `from..=to` on keys in `[key, range_end)`, in revision order, without
/// previous values; the scan stops at a revision boundary once it has gathered `bytes_max` of
/// events or looked at `scanned_max` stored values, so that one call is a bounded piece of work.
/// The caller checks `from` against the compaction revision.
pub fn history_scan(
    store: &dyn RevisionStore,
    key: &[u8],
    range_end: &[u8],
    from: i64,
    to: i64,
    bytes_max: usize,
    scanned_max: usize,
) -> Result<HistoryBatch, MvccError> {
    use prost::Message;
    let bounds = index::range_bounds(key, range_end);
    let (mut events, mut resume) = (Vec::new(), None);
    let (mut bytes, mut scanned, mut last) = (0usize, 0usize, None);
    store.scan_from(Revision::new(from, 0), &mut |rev, value| {
        if rev.main > to {
            return Ok(false);
        }
        if last != Some(rev.main) && (bytes >= bytes_max || scanned >= scanned_max) {
            resume = Some(rev.main);
            return Ok(false);
        }
        last = Some(rev.main);
        scanned += 1;
        if index::in_bounds(&bounds, &value.kv.key) {
            let kind = if value.tombstone { EventType::Delete } else { EventType::Put };
            let event = Event { r#type: kind as i32, kv: Some(value.kv), prev_kv: None };
            bytes += event.encoded_len();
            events.push(event);
        }
        Ok(true)
    })?;
    Ok(HistoryBatch { events, resume })
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target_union {
        Some(compare::TargetUnion::Version(v)) => kv.version.cmp(v),
        Some(compare::TargetUnion::CreateRevision(v)) => kv.create_revision.cmp(v),
        Some(compare::TargetUnion::ModRevision(v)) => kv.mod_revision.cmp(v),
        Some(compare::TargetUnion::Value(v)) => kv.value.as_slice().cmp(v.as_slice()),
        Some(compare::TargetUnion::Lease(v)) => kv.lease.cmp(v),
        // An absent union is a zero of the target's type.
        None => match compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version) {
            compare::CompareTarget::Version => kv.version.cmp(&0),
            compare::CompareTarget::Create => kv.create_revision.cmp(&0),
            compare::CompareTarget::Mod => kv.mod_revision.cmp(&0),
            compare::CompareTarget::Value => kv.value.as_slice().cmp(&[][..]),
            compare::CompareTarget::Lease => kv.lease.cmp(&0),
        },
    };
    match compare::CompareResult::try_from(c.result).unwrap_or(compare::CompareResult::Equal) {
        compare::CompareResult::Equal => ord == Ordering::Equal,
        compare::CompareResult::NotEqual => ord != Ordering::Equal,
        compare::CompareResult::Greater => ord == Ordering::Greater,
        compare::CompareResult::Less => ord == Ordering::Less,
    }
}

/// Responses whose header carries the revision of the write that produced them.
pub trait HasHeader {
    fn set_revision(&mut self, rev: i64);
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn set_revision(&mut self, rev: i64) {
                self.header.get_or_insert_with(Default::default).revision = rev;
            }
        }
    )*};
}
has_header!(PutResponse, DeleteRangeResponse, TxnResponse);

/// Checks that need no state, done before a request enters the log: etcd's request validation.
pub fn validate_txn(req: &TxnRequest, max_ops: usize) -> Result<(), RequestError> {
    check_txn_shape(req, max_ops)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_shape(req: &TxnRequest, max_ops: usize) -> Result<(), RequestError> {
    if req.success.len() > max_ops || req.failure.len() > max_ops || req.compare.len() > max_ops {
        return Err(RequestError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => validate_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => validate_delete(d)?,
            Some(request_op::Request::RequestRange(r)) => validate_range(r)?,
            Some(request_op::Request::RequestTxn(t)) => check_txn_shape(t, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// A deleted key range: `[start, end)`, `[start, ∞)` for an end of `\0`, or one key.
type KeyInterval = (Vec<u8>, Vec<u8>);

fn interval_holds(interval: &KeyInterval, key: &[u8]) -> bool {
    index::in_bounds(&index::range_bounds(&interval.0, &interval.1), key)
}

/// etcd's rule: within the writes a transaction can make together (one branch, with the branches
/// of the transactions nested in it), a key is put at most once and never both put and deleted.
/// Returns the keys put and the ranges deleted by `ops`.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<KeyInterval>), RequestError> {
    let mut dels: Vec<KeyInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        // Either branch may run, never both: each is checked against this level alone.
        let mut added = HashSet::new();
        for key in puts_then.iter().chain(puts_else.iter()) {
            if puts.contains(key) || dels.iter().any(|d| interval_holds(d, key)) {
                return Err(RequestError::DuplicateKey);
            }
            added.insert(key.clone());
        }
        puts.extend(added);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || dels.iter().any(|d| interval_holds(d, &p.key)) {
            return Err(RequestError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

pub fn validate_put(req: &PutRequest) -> Result<(), RequestError> {
    if req.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

pub fn validate_range(req: &RangeRequest) -> Result<(), RequestError> {
    if req.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if range_request::SortOrder::try_from(req.sort_order).is_err()
        || range_request::SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

pub fn validate_delete(req: &DeleteRangeRequest) -> Result<(), RequestError> {
    if req.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// A request rejected before it reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum RequestError {
    #[error("key is not provided")]
    EmptyKey,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("request is too large")]
    TooLarge,
}

#[cfg(test)]
mod tests;
