//! MVCC semantics against etcd's rules, on the in-memory revision store.

use super::*;
use proto::etcdserverpb::{compare::CompareResult, compare::CompareTarget, compare::TargetUnion};

struct Fixture {
    mvcc: Mvcc,
    store: MemoryRevisions,
}

impl Fixture {
    fn new() -> Self {
        Self { mvcc: Mvcc::new(), store: MemoryRevisions::default() }
    }

    fn flush(&mut self) {
        let changes = self.mvcc.take_changes();
        self.store.apply(changes);
    }

    fn put(&mut self, key: &str, value: &str) -> PutResponse {
        let req = PutRequest { key: key.into(), value: value.into(), prev_kv: true, ..Default::default() };
        let out = self.mvcc.put(&self.store, &req).unwrap().response;
        self.flush();
        out
    }

    fn del(&mut self, key: &str, end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest { key: key.into(), range_end: end.into(), prev_kv: true };
        let out = self.mvcc.delete_range(&self.store, &req).unwrap().response;
        self.flush();
        out
    }

    fn get(&self, key: &str, end: &str, rev: i64) -> Result<RangeResponse, MvccError> {
        let req = RangeRequest { key: key.into(), range_end: end.into(), revision: rev, ..Default::default() };
        self.mvcc.range(&self.store, &req)
    }

    fn txn(&mut self, req: TxnRequest) -> TxnResponse {
        let out = self.mvcc.txn(&self.store, &req).unwrap().response;
        self.flush();
        out
    }
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget, union: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        result: result as i32,
        target: target as i32,
        target_union: Some(union),
        range_end: vec![],
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest { key: key.into(), ..Default::default() })),
    }
}

#[test]
fn every_write_bumps_one_global_revision_and_key_metadata() {
    let mut f = Fixture::new();
    assert_eq!(f.mvcc.current_revision(), 1, "a fresh store is at revision 1, like etcd");
    assert_eq!(f.put("a", "1").header.unwrap().revision, 2);
    f.put("b", "1");
    let prev = f.put("a", "2").prev_kv.expect("prev_kv asked for");
    assert_eq!((prev.value.as_slice(), prev.mod_revision, prev.version), (&b"1"[..], 2, 1));
    let a = f.get("a", "", 0).unwrap().kvs[0].clone();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 4, 2));
    assert_eq!(f.mvcc.current_revision(), 4);
}

#[test]
fn history_is_readable_until_compacted() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.del("a", ""); // 4
    f.put("a", "3"); // 5
    let at = |f: &Fixture, rev| f.get("a", "", rev).unwrap().kvs.first().map(|kv| kv.value.clone());
    assert_eq!(at(&f, 2), Some(b"1".to_vec()));
    assert_eq!(at(&f, 3), Some(b"2".to_vec()));
    assert_eq!(at(&f, 4), None, "deleted");
    let recreated = f.get("a", "", 5).unwrap().kvs[0].clone();
    assert_eq!((recreated.create_revision, recreated.version), (5, 1), "a new generation restarts");
    assert_eq!(f.get("a", "", 6), Err(MvccError::FutureRevision));

    f.mvcc.compact(3).unwrap();
    f.flush();
    assert_eq!(f.get("a", "", 2), Err(MvccError::Compacted));
    assert_eq!(at(&f, 3), Some(b"2".to_vec()), "the compaction revision itself stays readable");
    assert_eq!(at(&f, 5), Some(b"3".to_vec()));
    assert_eq!(f.mvcc.compact(3), Err(MvccError::Compacted), "compacting again");
    assert_eq!(f.mvcc.compact(9), Err(MvccError::FutureRevision));
    f.mvcc.compact(5).unwrap();
    f.flush();
    assert_eq!(f.store.values.len(), 1, "only the live value remains after compacting to the head");
}

#[test]
fn range_options_limit_sort_count_and_keys_only() {
    let mut f = Fixture::new();
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("x", "z")] {
        f.put(k, v);
    }
    f.put("k2", "d");
    let mut req = RangeRequest { key: "k".into(), range_end: "l".into(), limit: 2, ..Default::default() };
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!((keys(&resp), resp.more, resp.count), (vec!["k1".into(), "k2".into()], true, 3));

    req.limit = 0;
    req.sort_target = range_request::SortTarget::Value as i32;
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!(keys(&resp), vec!["k3", "k1", "k2"], "a non-key target sorts ascending by default");

    req.sort_target = range_request::SortTarget::Mod as i32;
    req.sort_order = range_request::SortOrder::Descend as i32;
    req.limit = 1;
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!((keys(&resp), resp.more), (vec!["k2".to_string()], true), "limit applies after sorting");

    let req = RangeRequest { key: "k".into(), range_end: "l".into(), count_only: true, ..Default::default() };
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!((resp.kvs.len(), resp.count), (0, 3));

    let req = RangeRequest { key: "k".into(), range_end: vec![0], keys_only: true, ..Default::default() };
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!(keys(&resp), vec!["k1", "k2", "k3", "x"], "range_end \\0 means every key from key on");
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));

    let req = RangeRequest { key: "k".into(), range_end: "l".into(), min_mod_revision: 4, ..Default::default() };
    let resp = f.mvcc.range(&f.store, &req).unwrap();
    assert_eq!(keys(&resp), vec!["k2", "k3"]);
}

#[test]
fn put_with_ignore_value_needs_an_existing_key() {
    let mut f = Fixture::new();
    let req = PutRequest { key: "a".into(), ignore_value: true, ..Default::default() };
    assert_eq!(f.mvcc.put(&f.store, &req).unwrap_err(), MvccError::KeyNotFound);
    assert!(f.mvcc.take_changes().is_empty(), "a failed put stages nothing");
    f.put("a", "v");
    f.mvcc.put(&f.store, &req).unwrap();
    f.flush();
    let kv = f.get("a", "", 0).unwrap().kvs[0].clone();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v"[..], 2));
}

#[test]
fn delete_range_deletes_in_one_revision_and_reports_prev_kvs() {
    let mut f = Fixture::new();
    f.put("a1", "1");
    f.put("a2", "2");
    f.put("b", "3");
    let resp = f.del("a", "b");
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.prev_kvs.len(), 2);
    assert_eq!(resp.header.unwrap().revision, 5, "both deletions share revision 5");
    let resp = f.del("nothing", "");
    assert_eq!((resp.deleted, resp.header.unwrap().revision), (0, 5), "a no-op delete keeps the revision");
    assert_eq!(keys(&f.get("a", "\0", 0).unwrap()), vec!["b"]);
}

#[test]
fn txn_compares_each_target_and_picks_a_branch() {
    let mut f = Fixture::new();
    f.put("k", "v"); // 2
    f.put("k", "w"); // 3
    use CompareResult::*;
    use CompareTarget as T;
    let cases = [
        (cmp("k", Equal, T::Value, TargetUnion::Value("w".into())), true),
        (cmp("k", Greater, T::Version, TargetUnion::Version(1)), true),
        (cmp("k", Equal, T::Create, TargetUnion::CreateRevision(2)), true),
        (cmp("k", Less, T::Mod, TargetUnion::ModRevision(3)), false),
        (cmp("k", NotEqual, T::Mod, TargetUnion::ModRevision(2)), true),
        (cmp("k", Equal, T::Lease, TargetUnion::Lease(0)), true),
        (cmp("missing", Equal, T::Version, TargetUnion::Version(0)), true),
        (cmp("missing", Equal, T::Value, TargetUnion::Value(vec![])), false),
    ];
    for (c, expected) in cases {
        let resp = f.txn(TxnRequest { compare: vec![c.clone()], success: vec![], failure: vec![] });
        assert_eq!(resp.succeeded, expected, "{c:?}");
    }
    assert_eq!(f.mvcc.current_revision(), 3, "read-only txns do not bump the revision");

    let resp = f.txn(TxnRequest {
        compare: vec![cmp("k", Equal, T::Value, TargetUnion::Value("nope".into()))],
        success: vec![put_op("s", "1")],
        failure: vec![put_op("f1", "1"), put_op("f2", "2"), get_op("f1")],
    });
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4, "a txn is one revision");
    let Some(response_op::Response::ResponseRange(r)) = &resp.responses[2].response else { panic!() };
    assert_eq!(r.kvs.len(), 1, "a read in a txn sees the txn's earlier writes");
    let f1 = f.get("f1", "", 0).unwrap().kvs[0].clone();
    let f2 = f.get("f2", "", 0).unwrap().kvs[0].clone();
    assert_eq!((f1.mod_revision, f2.mod_revision), (4, 4));
    assert!(f.get("s", "", 0).unwrap().kvs.is_empty());
}

#[test]
fn txn_with_a_range_compare_needs_every_key_to_match() {
    let mut f = Fixture::new();
    f.put("p/a", "1");
    f.put("p/b", "2");
    let mut c = cmp("p/", CompareResult::Greater, CompareTarget::Value, TargetUnion::Value("0".into()));
    c.range_end = "p0".into();
    assert!(f.txn(TxnRequest { compare: vec![c.clone()], ..Default::default() }).succeeded);
    c.target_union = Some(TargetUnion::Value("1".into()));
    assert!(!f.txn(TxnRequest { compare: vec![c], ..Default::default() }).succeeded);
}

#[test]
fn nested_txn_and_failed_txn_leave_no_partial_state() {
    let mut f = Fixture::new();
    f.put("a", "1");
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![],
            success: vec![put_op("inner", "x")],
            failure: vec![],
        })),
    };
    let resp = f.txn(TxnRequest { compare: vec![], success: vec![put_op("outer", "y"), nested], failure: vec![] });
    assert!(resp.succeeded);
    assert_eq!(f.get("inner", "", 0).unwrap().kvs[0].mod_revision, 3);
    assert_eq!(f.get("outer", "", 0).unwrap().kvs[0].mod_revision, 3);

    // A range below the compaction inside a txn fails the whole txn before any write.
    f.put("a", "2");
    f.mvcc.compact(4).unwrap();
    f.flush();
    let bad = RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: "a".into(),
            revision: 2,
            ..Default::default()
        })),
    };
    let req = TxnRequest { compare: vec![], success: vec![put_op("z", "1"), bad], failure: vec![] };
    assert_eq!(f.mvcc.txn(&f.store, &req).unwrap_err(), MvccError::Compacted);
    assert!(f.mvcc.take_changes().is_empty());
    assert_eq!(f.mvcc.current_revision(), 4);
}

#[test]
fn request_validation_matches_etcd() {
    let dup = TxnRequest { compare: vec![], success: vec![put_op("a", "1"), put_op("a", "2")], failure: vec![] };
    assert_eq!(validate_txn(&dup, 128), Err(RequestError::DuplicateKey));
    let del = RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            prev_kv: false,
        })),
    };
    let overlap = TxnRequest { compare: vec![], success: vec![put_op("a1", "1"), del], failure: vec![] };
    assert_eq!(validate_txn(&overlap, 128), Err(RequestError::DuplicateKey));
    let many =
        TxnRequest { compare: vec![], success: (0..129).map(|i| get_op(&i.to_string())).collect(), failure: vec![] };
    assert_eq!(validate_txn(&many, 128), Err(RequestError::TooManyOps));
    assert_eq!(validate_put(&PutRequest::default()), Err(RequestError::EmptyKey));
    let bad_sort = RangeRequest { key: "a".into(), sort_order: 7, ..Default::default() };
    assert_eq!(validate_range(&bad_sort), Err(RequestError::InvalidSortOption));
}

#[test]
fn reopening_rebuilds_the_same_view() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("b", "1");
    f.del("a", "");
    f.put("a", "2");
    f.put("c", "3");
    f.mvcc.compact(3).unwrap();
    f.flush();
    let reopened =
        Mvcc::open(&f.store, f.mvcc.current_revision(), f.mvcc.compacted_revision(), &f.store.leases).unwrap();
    for rev in 3..=6 {
        let req = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        assert_eq!(reopened.range(&f.store, &req), f.mvcc.range(&f.store, &req), "at revision {rev}");
    }
}

#[test]
fn events_describe_each_change_with_prev_kv() {
    let mut f = Fixture::new();
    f.put("a", "1");
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("a", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: "b".into(),
                    ..Default::default()
                })),
            },
            put_op("c", "1"),
        ],
        failure: vec![],
    };
    let applied = f.mvcc.txn(&f.store, &req).unwrap();
    f.flush();
    let types: Vec<i32> = applied.events.iter().map(|e| e.r#type).collect();
    assert_eq!(types, vec![EventType::Put as i32, EventType::Put as i32], "deleting a missing key is no event");
    assert_eq!(applied.events[0].prev_kv.as_ref().unwrap().value, b"1");
    assert!(applied.events.iter().all(|e| e.kv.as_ref().unwrap().mod_revision == 3));
}

#[test]
fn leases_attach_keys_and_revoke_deletes_them_in_one_revision() {
    let mut f = Fixture::new();
    let with_lease =
        |key: &str, lease: i64| PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() };
    assert_eq!(f.mvcc.put(&f.store, &with_lease("a", 7)).unwrap_err(), MvccError::LeaseNotFound);
    f.mvcc.lease_grant(7, 10).unwrap();
    assert_eq!(f.mvcc.lease_grant(7, 10), Err(MvccError::LeaseExists));
    f.mvcc.put(&f.store, &with_lease("a", 7)).unwrap();
    f.mvcc.put(&f.store, &with_lease("b", 7)).unwrap();
    f.mvcc.put(&f.store, &with_lease("c", 7)).unwrap();
    f.flush();
    f.put("c", "detached"); // a put without lease detaches the key
    f.del("b", "");
    assert_eq!(f.mvcc.leases()[&7].keys, std::collections::BTreeSet::from([b"a".to_vec()]));

    let reopened =
        Mvcc::open(&f.store, f.mvcc.current_revision(), f.mvcc.compacted_revision(), &f.store.leases).unwrap();
    assert_eq!(reopened.leases(), f.mvcc.leases(), "attachments are rebuilt from the stored values");

    let before = f.mvcc.current_revision();
    let applied = f.mvcc.lease_revoke(&f.store, 7).unwrap();
    f.flush();
    assert_eq!(applied.response, before + 1);
    assert_eq!(applied.events.len(), 1);
    assert!(f.get("a", "", 0).unwrap().kvs.is_empty());
    assert_eq!(f.get("c", "", 0).unwrap().kvs.len(), 1);
    assert!(f.mvcc.leases().is_empty());
    assert!(f.store.leases.is_empty());
    assert_eq!(f.mvcc.lease_revoke(&f.store, 7).unwrap_err(), MvccError::LeaseNotFound);
}

#[test]
fn history_replays_events_with_prev_kv() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("b", "1"); // 3
    f.put("a", "2"); // 4
    f.del("a", ""); // 5
    let events = f.mvcc.history(&f.store, b"a", b"", 3, 5, true).unwrap();
    let kinds: Vec<(i32, i64)> = events.iter().map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision)).collect();
    assert_eq!(kinds, vec![(EventType::Put as i32, 4), (EventType::Delete as i32, 5)]);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, b"2");
    f.mvcc.compact(4).unwrap();
    f.flush();
    assert_eq!(f.mvcc.history(&f.store, b"a", b"", 3, 5, false).unwrap_err(), MvccError::Compacted);
    assert_eq!(
        f.mvcc.history(&f.store, b"a", b"", 4, 5, false).unwrap().len(),
        2,
        "the compaction revision stays watchable"
    );
}

#[test]
fn a_txn_that_fails_part_way_changes_nothing() {
    let mut f = Fixture::new();
    f.put("a", "1");
    let missing = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: "b".into(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let req =
        TxnRequest { compare: vec![], success: vec![put_op("a", "2"), put_op("c", "1"), missing], failure: vec![] };
    assert_eq!(f.mvcc.txn(&f.store, &req).unwrap_err(), MvccError::KeyNotFound);
    assert!(f.mvcc.take_changes().is_empty(), "nothing staged");
    assert_eq!(f.mvcc.current_revision(), 2);
    assert_eq!(f.get("a", "", 0).unwrap().kvs[0].value, b"1");
    assert!(f.get("c", "", 0).unwrap().kvs.is_empty(), "the index forgot c");
    // The next write takes the revision the failed one would have had, cleanly.
    f.put("d", "1");
    assert_eq!(f.get("d", "", 0).unwrap().kvs[0].mod_revision, 3);
    assert_eq!(f.get("a", "", 0).unwrap().kvs[0].mod_revision, 2);
    let reopened =
        Mvcc::open(&f.store, f.mvcc.current_revision(), f.mvcc.compacted_revision(), &f.store.leases).unwrap();
    assert_eq!(reopened.current_revision(), 3);
}

#[test]
fn duplicate_keys_are_refused_across_nested_txns() {
    let nested = |ops: Vec<RequestOp>| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest { compare: vec![], success: ops, failure: vec![] })),
    };
    let del = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    };
    let txn = |ops: Vec<RequestOp>| TxnRequest { compare: vec![], success: ops, failure: vec![] };
    assert_eq!(
        validate_txn(&txn(vec![put_op("a", "1"), nested(vec![put_op("a", "2")])]), 128),
        Err(RequestError::DuplicateKey)
    );
    assert_eq!(
        validate_txn(&txn(vec![put_op("a", "1"), nested(vec![del("a")])]), 128),
        Err(RequestError::DuplicateKey)
    );
    assert_eq!(validate_txn(&txn(vec![put_op("a", "1"), nested(vec![put_op("b", "2")])]), 128), Ok(()));
    // The two branches of a nested txn never both run.
    let both = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![],
            success: vec![put_op("x", "1")],
            failure: vec![put_op("x", "2")],
        })),
    };
    assert_eq!(validate_txn(&txn(vec![both]), 128), Ok(()));
}

#[test]
fn reopening_finds_revisions_a_compaction_left_undeleted() {
    let mut f = Fixture::new();
    for v in ["1", "2", "3"] {
        f.put("a", v);
    }
    f.put("b", "1");
    f.del("b", "");
    f.mvcc.compact(6).unwrap();
    // The member stops before the store deleted what the compaction dropped.
    let changes = f.mvcc.take_changes();
    let Some(Change::Compacted(dropped)) = changes.first().cloned() else {
        panic!("a compaction stages its drop: {changes:?}")
    };
    assert_eq!(dropped.len(), 4, "a@2, a@3, b@5 and its tombstone b@6: {dropped:?}");
    let mut reopened =
        Mvcc::open(&f.store, f.mvcc.current_revision(), f.mvcc.compacted_revision(), &f.store.leases).unwrap();
    let mut leftover = match reopened.take_changes().as_slice() {
        [Change::Compacted(revs)] => revs.clone(),
        other => panic!("the leftovers are handed back: {other:?}"),
    };
    leftover.sort();
    let mut expected = dropped.clone();
    expected.sort();
    assert_eq!(leftover, expected);
    // Once deleted, a further reopening finds nothing left.
    f.store.apply(vec![Change::Compacted(dropped)]);
    let mut again =
        Mvcc::open(&f.store, f.mvcc.current_revision(), f.mvcc.compacted_revision(), &f.store.leases).unwrap();
    assert!(again.take_changes().is_empty());
    let req = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    assert_eq!(again.range(&f.store, &req).unwrap().kvs.len(), 1, "only a@4 is live");
}
