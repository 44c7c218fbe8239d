//! Micro-benchmarks of the store's hot paths, on RocksDB in a temporary directory:
//! `cargo bench -p benches --bench hot_paths`.
//!
//! - `mvcc_apply`: the state machine applying 256 puts, as one batched log entry and as 256 entries.
//! - `range_scan`: a range of 1,000 keys (values and keys only) out of 10,000.
//! - `watch_dispatch`: one revision's events matched against 1,000 watchers' filters.
//! - `raft_log_append`: log entries written and synced to disk, one and 64 at a time.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proto::etcdserverpb::{PutRequest, RangeRequest};
use proto::mvccpb::{Event, KeyValue};
use raft_store::storage::{open_db, LogStore, StateMachine};
use raft_store::types::{Command, Entry, LogId};
use raft_store::watch::WatchFilter;

const VALUE_BYTES: usize = 256;

fn put(key: String) -> Command {
    Command::Put(PutRequest { key: key.into_bytes(), value: vec![b'v'; VALUE_BYTES], ..Default::default() })
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
}

/// A state machine on a fresh database, and the directory that holds it.
fn state_machine() -> (StateMachine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = open_db(&dir.path().join("db")).expect("the database opens");
    (StateMachine::open(db, dir.path()).expect("the state machine opens"), dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

fn mvcc_apply(c: &mut Criterion) {
    const PUTS: u64 = 256;
    let rt = runtime();
    let mut group = c.benchmark_group("mvcc_apply");
    group.throughput(Throughput::Elements(PUTS));
    for batched in [true, false] {
        let (mut sm, _dir) = state_machine();
        let mut index = 0u64;
        let name = if batched { "256_puts_one_entry" } else { "256_puts_256_entries" };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let cmds: Vec<Command> =
                        (0..PUTS).map(|i| put(format!("bench/{}", (index + i) % 10_000))).collect();
                    let entries: Vec<Entry> = if batched {
                        index += 1;
                        vec![entry(index, Command::Batch(cmds))]
                    } else {
                        cmds.into_iter()
                            .map(|cmd| {
                                index += 1;
                                entry(index, cmd)
                            })
                            .collect()
                    };
                    entries
                },
                |entries| rt.block_on(sm.apply(entries)).expect("apply succeeds"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn range_scan(c: &mut Criterion) {
    const KEYS: u64 = 10_000;
    const RANGE: u64 = 1_000;
    let rt = runtime();
    let (mut sm, _dir) = state_machine();
    let cmds: Vec<Command> = (0..KEYS).map(|i| put(format!("key/{i:05}"))).collect();
    for (n, chunk) in cmds.chunks(500).enumerate() {
        rt.block_on(sm.apply(vec![entry(n as u64 + 1, Command::Batch(chunk.to_vec()))])).expect("preload");
    }
    let state = sm.state();
    let mut group = c.benchmark_group("range_scan");
    group.throughput(Throughput::Elements(RANGE));
    for keys_only in [false, true] {
        let req = RangeRequest {
            key: b"key/02000".to_vec(),
            range_end: b"key/03000".to_vec(),
            keys_only,
            ..Default::default()
        };
        let name = if keys_only { "1000_of_10000_keys_only" } else { "1000_of_10000" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let resp = state.read(|d, store| d.mvcc.range(store, &req)).expect("range succeeds");
                assert_eq!(resp.kvs.len() as u64, RANGE);
                resp
            })
        });
    }
    group.finish();
}

fn watch_dispatch(c: &mut Criterion) {
    const WATCHERS: usize = 1_000;
    const SHARED: usize = 200;
    let filters: Vec<WatchFilter> = (0..WATCHERS)
        .map(|i| {
            let prefix = if i < SHARED { "watched/".to_string() } else { format!("other/{i}/") };
            let mut end = prefix.clone().into_bytes();
            *end.last_mut().expect("not empty") += 1;
            WatchFilter {
                key: prefix.into_bytes(),
                range_end: end,
                prev_kv: i % 2 == 0,
                no_put: false,
                no_delete: false,
            }
        })
        .collect();
    let mut group = c.benchmark_group("watch_dispatch");
    for events in [1usize, 64] {
        let revision: Vec<Event> = (0..events)
            .map(|i| Event {
                r#type: 0,
                kv: Some(KeyValue {
                    key: format!("watched/{i}").into_bytes(),
                    value: vec![b'v'; VALUE_BYTES],
                    mod_revision: 7,
                    create_revision: 7,
                    version: 1,
                    lease: 0,
                }),
                prev_kv: None,
            })
            .collect();
        group.throughput(Throughput::Elements((events * WATCHERS) as u64));
        group.bench_function(format!("{events}_events_to_1000_watchers"), |b| {
            b.iter(|| {
                let delivered: usize = filters.iter().map(|f| f.select(&revision).len()).sum();
                assert_eq!(delivered, events * SHARED);
                delivered
            })
        });
    }
    group.finish();
}

fn raft_log_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_log_append");
    for per_append in [1u64, 64] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = open_db(&dir.path().join("db")).expect("the database opens");
        // Appends only: no purge waits for a state machine here.
        let (_applied, applied_watch) = tokio::sync::watch::channel(u64::MAX);
        let log = LogStore::open(db, &dir.path().join("log"), applied_watch).expect("the log opens");
        let mut index = 0u64;
        group.throughput(Throughput::Elements(per_append));
        group.bench_function(format!("{per_append}_entries_synced"), |b| {
            b.iter_batched(
                || {
                    (0..per_append)
                        .map(|i| {
                            index += 1;
                            entry(index, put(format!("bench/{i}")))
                        })
                        .collect::<Vec<_>>()
                },
                |entries| log.append_durably(entries).expect("append succeeds"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(hot_paths, mvcc_apply, range_scan, watch_dispatch, raft_log_append);
criterion_main!(hot_paths);
