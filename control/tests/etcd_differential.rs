//! Differential test of the Keelson store against real etcd 3.4, driven through `etcdctl`.
//!
//! One fixed `etcdctl` script runs against a fresh three-member etcd cluster, then against a fresh
//! three-member `keelson store` cluster started with the same flags on the same ports. Every
//! command's stdout, the meaningful part of its stderr and its exit code must be byte-equal, after
//! normalising only what legitimately differs between two runs of the same system: member and
//! cluster IDs (mapped to placeholders in order of first appearance, so "the same ID twice" is still
//! checked), which member leads, raft term and indexes, db size, server version, and timings;
//! lease IDs likewise (`<lease-N>`), the remaining TTL of a lease, and the order of what etcd
//! itself lists in no fixed order (leases, a lease's keys).
//!
//! Watches never end by themselves, so they run as child processes: the test waits (bounded)
//! until a watch has printed the lines it should, then kills it (or, for `watch -i`, ends its
//! input) and compares all it printed. A watch of live events starts at the next revision, so
//! whether it is created before or after the writes cannot change what it prints; the JSON one
//! is interactive and known to be created once its `progress` request is answered.
//!
//! Environment:
//! - `KEELSON_DIFF_REFERENCE_ONLY=1` runs etcd twice (etcd vs etcd) instead of etcd vs Keelson: it
//!   proves that the normalisation below is sufficient and deterministic.
//! - `KEELSON_DIFF_DUMP=PATH` writes the raw outputs of the etcd run to PATH, for implementers who
//!   want to see exactly what etcd prints.
//!
//! Needs Debian's `etcd-server` and `etcd-client` (3.4) on PATH; the test fails, never skips,
//! without them.

mod common;

/// What a machine without etcd needs.
const ETCD_HINT: &str = "this differential test needs etcd 3.4 (Debian: `apt-get install etcd-server etcd-client`)";

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const CLUSTER_TOKEN: &str = "keelson-differential";
const MEMBER_NAMES: [&str; 3] = ["n1", "n2", "n3"];
/// Generous because Keelson runs as an unoptimised test build on a 2-core machine.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// etcd's default --max-request-bytes is 1572864 (1.5 MiB); one value on each side of it.
const VALUE_UNDER_LIMIT_BYTES: usize = 1_000_000;
const VALUE_OVER_LIMIT_BYTES: usize = 1_600_000;
/// etcd's default --max-txn-ops is 128.
const TXN_OPS_OVER_LIMIT: usize = 129;

/// Goal: against a three-member Keelson store, every command of the `etcdctl` script prints the
/// same thing and exits with the same code as against a three-member etcd 3.4 (modulo IDs,
/// leadership, raft indexes, db size, version and timings).
#[test]
fn etcdctl_script_matches_etcd() {
    let tools = Tools::find();
    let work = WorkDir::new();
    let ports = Ports::pick();
    let script = script();
    let reference_only = std::env::var_os("KEELSON_DIFF_REFERENCE_ONLY").is_some_and(|v| v == "1");

    let reference = run_cluster(&tools, &Server::Etcd, "etcd", &ports, &work, &script);
    if let Some(path) = std::env::var_os("KEELSON_DIFF_DUMP") {
        fs::write(&path, raw_report(&reference, &script, &ports))
            .unwrap_or_else(|e| panic!("cannot write KEELSON_DIFF_DUMP file {path:?}: {e}"));
    }
    let candidate = if reference_only {
        run_cluster(&tools, &Server::Etcd, "etcd-again", &ports, &work, &script)
    } else {
        let keelson = PathBuf::from(env!("CARGO_BIN_EXE_keelson"));
        run_cluster(&tools, &Server::Keelson(keelson), "keelson", &ports, &work, &script)
    };
    compare(&reference, &candidate, &script, &ports, &work);
}

// ---------------------------------------------------------------------------------------------
// The script
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// One member, by index into MEMBER_NAMES.
    Member(usize),
    /// All three client URLs in one `--endpoints`.
    All,
}

struct Step {
    target: Target,
    /// May contain `{lease:NAME}`, replaced when the step runs by the lease ID (hex) that the
    /// step capturing NAME printed.
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    action: Action,
    /// Remembers the lease ID this step prints (`lease grant`) under this name.
    capture: Option<&'static str>,
}

/// How a step's command runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    /// To completion: etcdctl bounds every command itself.
    Run,
    /// A watch, which runs until it is ended: started, then ended as `Until` says.
    Watch(Until),
    /// A watch left running while the next steps run (their writes are its live events). With
    /// `ready_lines`, the step waits until the watch has printed that many lines (an interactive
    /// watch's `progress notify`: the server has created the watch). Its output is compared at
    /// the `Collect` step of the same name.
    Start { name: &'static str, ready_lines: usize },
    /// Ends the watch started as `name` (this step repeats its command, for the report) as
    /// `Until` says; the outcome is all that watch printed.
    Collect { name: &'static str, until: Until },
    /// Repeats the command (a `get`) until it succeeds and prints nothing, within
    /// LEASE_EXPIRY_WITHIN: how long a lease takes to expire is up to the store's timers.
    PollUntilEmpty,
}

/// When a watch's output is complete. Every wait is bounded by WATCH_OUTPUT_WITHIN; a watch that
/// has not printed its lines by then is killed, and its outcome says so.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Until {
    /// This many lines on stdout; then the test kills it (etcdctl watches until interrupted).
    LinesThenKill(usize),
    /// This many lines on stdout; then stdin is closed, at which an interactive watch exits.
    LinesThenEof(usize),
    /// It exits by itself (a watch the server cancels).
    Exit,
}

#[derive(Default)]
struct Script {
    steps: Vec<Step>,
}

impl Script {
    fn push(&mut self, target: Target, args: &[&str], stdin: Option<Vec<u8>>) {
        self.push_action(target, args, stdin, Action::Run);
    }

    fn push_action(&mut self, target: Target, args: &[&str], stdin: Option<Vec<u8>>, action: Action) {
        let args = args.iter().map(|a| a.to_string()).collect();
        self.steps.push(Step { target, args, stdin, action, capture: None });
    }

    /// A watch that ends as `until` says (history catch-up, or one the server cancels).
    fn watch(&mut self, target: Target, args: &[&str], until: Until) {
        self.push_action(target, args, None, Action::Watch(until));
    }

    /// An interactive watch (`watch -i`) fed `stdin` line by line; stdin stays open until the
    /// expected lines are out.
    fn watch_interactive(&mut self, target: Target, args: &[&str], stdin: &str, until: Until) {
        self.push_action(target, args, Some(stdin.as_bytes().to_vec()), Action::Watch(until));
    }

    /// Starts a watch that keeps running while the next steps write; see `Action::Start`.
    fn start_watch(
        &mut self,
        name: &'static str,
        target: Target,
        args: &[&str],
        stdin: Option<&str>,
        ready_lines: usize,
    ) {
        assert!(
            !self.steps.iter().any(|s| matches!(s.action, Action::Start { name: n, .. } if n == name)),
            "watch {name} started twice"
        );
        let stdin = stdin.map(|s| s.as_bytes().to_vec());
        self.push_action(target, args, stdin, Action::Start { name, ready_lines });
    }

    /// Ends the watch started as `name`; its whole output is this step's outcome.
    fn collect(&mut self, name: &'static str, until: Until) {
        let start = self
            .steps
            .iter()
            .find(|s| matches!(s.action, Action::Start { name: n, .. } if n == name))
            .unwrap_or_else(|| panic!("watch {name} collected before it is started"));
        let (target, args, stdin) = (start.target, start.args.clone(), start.stdin.clone());
        self.steps.push(Step { target, args, stdin, action: Action::Collect { name, until }, capture: None });
    }

    /// `lease grant`, remembering the granted ID as `name` for later `{lease:name}` arguments.
    fn grant(&mut self, name: &'static str, args: &[&str]) {
        self.cmd(args);
        self.steps.last_mut().expect("just pushed").capture = Some(name);
    }

    /// Polls `etcdctl get KEY` until the key is gone; see `Action::PollUntilEmpty`.
    fn await_gone(&mut self, key: &str) {
        self.push_action(Target::Member(0), &["get", key], None, Action::PollUntilEmpty);
    }

    /// One command through member n1.
    fn cmd(&mut self, args: &[&str]) {
        self.push(Target::Member(0), args, None);
    }

    fn cmd_at(&mut self, target: Target, args: &[&str]) {
        self.push(target, args, None);
    }

    /// A read, in the default output format and again with `-w json` (which exposes the header,
    /// every revision field, `count` and `more`).
    fn read(&mut self, args: &[&str]) {
        self.read_at(Target::Member(0), args);
    }

    fn read_at(&mut self, target: Target, args: &[&str]) {
        self.push(target, args, None);
        let json: Vec<&str> = args.iter().copied().chain(["-w", "json"]).collect();
        self.push(target, &json, None);
    }

    /// The three output formats of a cluster-introspection command.
    fn all_formats(&mut self, target: Target, args: &[&str]) {
        for format in [None, Some("json"), Some("table")] {
            let mut full: Vec<&str> = args.to_vec();
            if let Some(format) = format {
                full.extend(["-w", format]);
            }
            self.push(target, &full, None);
        }
    }

    /// `etcdctl txn` in non-interactive mode: compares, blank line, success ops, blank line,
    /// failure ops, blank line (each section ends at a blank line; a missing one is an EOF error).
    fn txn(&mut self, flags: &[&str], compares: &[&str], success: &[&str], failure: &[&str]) {
        let mut input = String::new();
        for section in [compares, success, failure] {
            for line in section {
                input.push_str(line);
                input.push('\n');
            }
            input.push('\n');
        }
        let args: Vec<&str> = ["txn"].iter().copied().chain(flags.iter().copied()).collect();
        self.push(Target::Member(0), &args, Some(input.into_bytes()));
    }

    /// `etcdctl put KEY` reads the value from stdin when it is not an argument.
    fn put_from_stdin(&mut self, key: &str, value: Vec<u8>) {
        self.push(Target::Member(0), &["put", key], Some(value));
    }
}

/// The script. Revisions are commented: both stores start at revision 1, and every step must
/// leave them at the same revision.
fn script() -> Vec<Step> {
    let n2 = Target::Member(1);
    let n3 = Target::Member(2);
    let mut s = Script::default();

    // Keys are created out of key order and rewritten so that KEY, CREATE, MODIFY, VERSION and
    // VALUE each sort the `foo` prefix differently and without ties.
    s.cmd(&["put", "foo2", "two-a"]); // rev 2
    s.cmd(&["put", "foo", "three-a"]); // rev 3
    s.cmd(&["put", "foo1", "one"]); // rev 4
    s.cmd(&["put", "fop", "fop-value"]); // rev 5
    s.cmd(&["put", "a", "value-a"]); // rev 6
    s.cmd(&["put", "b", "value-b"]); // rev 7
    s.cmd(&["put", "zoo", "zoo-value"]); // rev 8
    s.cmd(&["put", "foo", "three-b", "--prev-kv"]); // rev 9
    s.cmd(&["put", "foo2", "two", "--prev-kv", "-w", "json"]); // rev 10
    s.cmd(&["put", "foo", "three"]); // rev 11

    // Now foo: create 3, mod 11, version 3, "three"; foo1: create 4, mod 4, version 1, "one";
    // foo2: create 2, mod 10, version 2, "two".

    // Any member accepts writes, and a linearizable read on another member sees them.
    s.cmd_at(n3, &["put", "via-n3", "written-through-n3"]); // rev 12
    s.read_at(n2, &["get", "via-n3"]);

    s.read(&["get", "foo"]);
    s.read(&["get", "foo", "--rev=3"]);
    s.read(&["get", "foo", "--rev=2"]); // before foo existed: empty
    s.read(&["get", "--prefix", "foo", "--rev=4"]);
    s.read(&["get", "--prefix", "foo"]);
    s.read(&["get", "--prefix", "--keys-only", "foo"]);
    s.read(&["get", "--prefix", "--limit=2", "foo"]); // json shows count 3 and more
    for (target, order) in [
        ("MODIFY", "DESCEND"),
        ("MODIFY", "ASCEND"),
        ("CREATE", "ASCEND"),
        ("CREATE", "DESCEND"),
        ("VERSION", "ASCEND"),
        ("VALUE", "ASCEND"),
        ("VALUE", "DESCEND"),
        ("KEY", "ASCEND"),
        ("KEY", "DESCEND"),
    ] {
        let sort = format!("--sort-by={target}");
        let order = format!("--order={order}");
        s.read(&["get", "--prefix", "foo", &sort, &order]);
    }
    // The limit applies after sorting.
    s.read(&["get", "--prefix", "foo", "--sort-by=MODIFY", "--order=DESCEND", "--limit=2"]);
    s.read(&["get", "--consistency=s", "foo"]);
    s.read(&["get", "--from-key", "fop"]);
    s.read(&["get", "--from-key", ""]); // the whole key space
    s.read(&["get", "a", "c"]); // the range [a, c)
    s.read(&["get", "z", "a"]); // range_end before key: empty, not an error
    s.read(&["get", "nothere"]);
    s.cmd(&["get", "foo", "--print-value-only"]);
    s.cmd(&["get", "--prefix", "foo", "--hex"]);
    s.read(&["get", "foo", "--rev=100"]); // a future revision: error
    s.read(&["get", ""]); // an empty key: error

    s.cmd(&["del", "foo1"]); // rev 13
    s.cmd(&["del", "nothere"]); // nothing deleted, no new revision
    s.cmd(&["del", "--prefix", "fo", "--prev-kv"]); // rev 14: foo, foo2, fop
    s.cmd(&["del", "--prefix", "fo", "-w", "json"]); // nothing left to delete
    s.cmd(&["put", "foo", "reborn"]); // rev 15: a new incarnation, create 15, version 1
    s.read(&["get", "foo"]);
    s.cmd(&["del", "a", "c", "--prev-kv", "-w", "json"]); // rev 16: a and b
    s.cmd(&["del", ""]); // an empty key: error

    s.cmd(&["put", "k", "v"]); // rev 17
    s.cmd(&["put", "k", "v"]); // rev 18: k create 17, mod 18, version 2

    // rev 19
    s.txn(&[], &[r#"value("k") = "v""#], &["put t1 one", "get k", "del nothere"], &["put t2 two"]);

    // rev 20. Ranges inside a txn report the revision as of their place in the txn.
    s.txn(&["-w", "json"], &[r#"version("k") > "1""#], &["get t1", "put t2 two", "get --prefix t"], &["put never x"]);
    // rev 21
    s.txn(&[], &[r#"create("k") = "17""#], &["del t1 --prev-kv"], &["put never x"]);
    // rev 22
    s.txn(&["-w", "json"], &[r#"mod("k") < "19""#], &["put k v2 --prev-kv"], &[]);
    // rev 23: failure branch
    s.txn(&[], &[r#"value("k") = "v""#], &["put never x"], &["get --prefix t", "put t3 three"]);
    // rev 24: failure branch
    s.txn(&["-w", "json"], &[r#"create("k") = "999""#], &["put never x"], &["del --prefix t --prev-kv"]);

    // Several compares (all must hold), `!=`, and the version of a missing key is 0; read-only.
    s.txn(
        &[],
        &[r#"value("k") != "x""#, r#"version("missing") = "0""#, r#"mod("k") > "21""#],
        &["get k"],
        &["put never x"],
    );
    s.txn(&[], &[], &["put t4 four"], &[]); // rev 25: no compare always succeeds

    // The failure branch with no ops.
    s.txn(&["-w", "json"], &[r#"value("k") = "nope""#], &["put never x"], &[]);
    s.txn(&[], &[], &["put t5 a", "put t5 b"], &[]); // error: duplicate key
    let too_many: Vec<String> = (0..TXN_OPS_OVER_LIMIT).map(|i| format!("put many{i} x")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    s.txn(&[], &[], &too_many, &[]); // error: too many operations
    s.txn(&[], &["bogus"], &[], &[]); // error (etcdctl's own): malformed comparison

    s.cmd(&["compaction", "20"]);
    s.read(&["get", "k", "--rev=19"]); // compacted: error
    s.read(&["get", "k", "--rev=20"]); // the compaction revision itself stays readable
    s.cmd(&["compaction", "20"]); // already compacted: error
    s.cmd(&["compaction", "10"]); // older than the compaction: error
    s.cmd(&["compaction", "100"]); // future revision: error
    s.cmd(&["compaction", "25"]); // the current revision is allowed
    s.read(&["get", "--prefix", "t", "--rev=24"]); // compacted: error

    s.put_from_stdin("big-ok", vec![b'x'; VALUE_UNDER_LIMIT_BYTES]); // rev 26
    s.cmd(&["get", "--prefix", "big", "--keys-only"]);
    s.put_from_stdin("too-big", vec![b'y'; VALUE_OVER_LIMIT_BYTES]); // error: request too large
    s.cmd(&["del", "big-ok"]); // rev 27
    s.cmd(&["put", "", "no-key"]); // an empty key: error

    s.all_formats(Target::Member(0), &["member", "list"]);
    s.all_formats(Target::Member(0), &["endpoint", "status"]);
    s.all_formats(Target::Member(0), &["endpoint", "status", "--cluster"]);
    s.cmd_at(Target::All, &["endpoint", "status"]);
    s.cmd(&["endpoint", "health"]);
    s.all_formats(Target::Member(0), &["endpoint", "health", "--cluster"]);

    s.read(&["get", "--prefix", ""]); // the state at revision 27

    watch_steps(&mut s);
    lease_steps(&mut s);
    s.steps
}

/// Watches: history catch-up (a watch from a past revision prints what happened since, in one
/// response for a history this small), from the compaction revision and from below it (canceled),
/// live events (one response per revision), progress notification. From revision 27.
fn watch_steps(s: &mut Script) {
    let n2 = Target::Member(1);
    let n3 = Target::Member(2);
    use Until::*;

    s.cmd(&["put", "w/a", "1"]); // rev 28
    s.cmd(&["put", "w/b", "2"]); // rev 29
    s.cmd(&["put", "w/a", "3"]); // rev 30
    s.cmd(&["del", "w/b"]); // rev 31
    s.cmd(&["put", "w/c", "4"]); // rev 32
    s.cmd(&["put", "x/other", "5"]); // rev 33, outside the watched prefix

    // History. Each event prints 3 lines (type, key, value; a DELETE's value is empty), 5 with a
    // previous key-value.
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=28"], LinesThenKill(15));
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=28", "-w", "json"], LinesThenKill(1));
    // The first event of w/b has no previous key-value; a DELETE's is the deleted one.
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=29", "--prev-kv"], LinesThenKill(16));
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=29", "--prev-kv", "-w", "json"], LinesThenKill(1));
    s.watch(Target::Member(0), &["watch", "w/a", "--rev=28"], LinesThenKill(6)); // one key
    s.watch(Target::Member(0), &["watch", "w/a", "w/c", "--rev=28"], LinesThenKill(12)); // [w/a, w/c)
                                                                                         // A follower serves watches from what it has applied (simple format: how the events are
                                                                                         // split into responses does not show, should it still be applying the last writes).
    s.watch(n2, &["watch", "--prefix", "w/", "--rev=29"], LinesThenKill(12));

    // Interactive: a watch, then a progress request, answered with the current revision.
    s.watch_interactive(Target::Member(0), &["watch", "-i"], "watch w/a\nprogress\n", LinesThenEof(1));

    s.cmd(&["compaction", "30"]);
    // From the compaction revision: still in history.
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=30"], LinesThenKill(9));
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=30", "-w", "json"], LinesThenKill(1));
    // From below it: canceled by the server with the compacted error; etcdctl exits.
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=29"], Exit);
    s.watch(Target::Member(0), &["watch", "--prefix", "w/", "--rev=29", "-w", "json"], Exit);
    s.watch(Target::Member(0), &["watch", "w/a", "--rev=1"], Exit);

    // Live events. Every watch starts at the next revision (34), so whether it is created before
    // or after a write does not change what it prints; the JSON one (where the split into
    // responses shows) is interactive, and is known to be created once its progress request is
    // answered (2 lines: `progress notify: 33` and the response).
    s.start_watch("live", n2, &["watch", "--prefix", "live/", "--rev=34"], None, 0);
    s.start_watch("live-a", n3, &["watch", "live/a", "--prev-kv", "--rev=34"], None, 0);
    s.start_watch("live-from-36", Target::Member(0), &["watch", "--prefix", "live/", "--rev=36"], None, 0);
    s.start_watch(
        "live-json",
        Target::Member(0),
        &["watch", "-i", "-w", "json"],
        Some("watch --prefix live/ --rev=34\nprogress\n"),
        2,
    );
    s.cmd(&["put", "live/a", "1"]); // rev 34
    s.cmd_at(n3, &["put", "live/b", "2"]); // rev 35
    s.cmd_at(n2, &["put", "live/a", "3"]); // rev 36
    s.cmd(&["del", "live/a"]); // rev 37
    s.txn(&[], &[], &["put live/c 3", "put live/d 4"], &[]); // rev 38: two events, one revision
    s.cmd(&["put", "x/other", "6"]); // rev 39, not watched
    s.cmd(&["put", "live/e", "5"]); // rev 40
    s.collect("live", LinesThenKill(21)); // 7 events
    s.collect("live-a", LinesThenKill(13)); // put, put with previous, delete with previous
    s.collect("live-from-36", LinesThenKill(15)); // 5 events
    s.collect("live-json", LinesThenEof(8)); // progress (2 lines), then revisions 34-38 and 40
}

/// An ID no lease has: both stores choose IDs at random, with odds of 2^-32 of hitting it.
const UNKNOWN_LEASE: &str = "1234abcd";

/// Leases: grant, attach, time-to-live, list, keep-alive, revoke (which deletes the attached keys
/// in one revision), expiry (the same, by the leader's clock), and unknown leases. From revision
/// 40. Lease IDs are random: `{lease:NAME}` stands for the ID a grant printed.
fn lease_steps(s: &mut Script) {
    let n2 = Target::Member(1);
    let n3 = Target::Member(2);

    s.grant("L1", &["lease", "grant", "60"]); // grants are not revisions
    s.grant("L2", &["lease", "grant", "60", "-w", "json"]);
    s.grant("L3", &["lease", "grant", "1"]); // below the minimum TTL (2 s here): raised to it
    s.cmd(&["lease", "revoke", "{lease:L3}"]); // no keys attached: no revision
    s.cmd(&["lease", "list"]);
    s.cmd(&["lease", "list", "-w", "json"]);

    s.cmd(&["put", "lease/k1", "v1", "--lease={lease:L1}"]); // rev 41
    s.cmd(&["put", "lease/k2", "v2", "--lease={lease:L1}"]); // rev 42
    s.cmd(&["put", "lease/k3", "v3", "--lease={lease:L2}", "-w", "json"]); // rev 43
    s.read(&["get", "--prefix", "lease/"]); // json shows each key's lease
    s.cmd(&["lease", "timetolive", "{lease:L1}"]);
    s.cmd_at(n2, &["lease", "timetolive", "{lease:L1}", "--keys"]);
    s.cmd_at(n3, &["lease", "timetolive", "{lease:L1}", "--keys", "-w", "json"]);
    s.cmd(&["lease", "timetolive", "{lease:L2}", "-w", "json"]);
    s.cmd(&["lease", "keep-alive", "--once", "{lease:L1}"]);
    s.cmd_at(n3, &["lease", "keep-alive", "--once", "{lease:L2}", "-w", "json"]);

    // Sees the revocation, and later the expiry.
    s.start_watch("lease", n2, &["watch", "--prefix", "lease/", "--rev=44"], None, 0);
    s.cmd(&["lease", "revoke", "{lease:L1}"]); // rev 44: deletes lease/k1 and lease/k2
    s.read(&["get", "--prefix", "lease/"]);
    s.cmd(&["lease", "timetolive", "{lease:L1}"]); // gone: "already expired"
    s.cmd(&["lease", "timetolive", "{lease:L1}", "-w", "json"]);
    s.cmd(&["lease", "revoke", "{lease:L1}"]); // error: not found
    s.cmd(&["lease", "keep-alive", "--once", "{lease:L1}"]); // error: not found
    s.cmd(&["lease", "keep-alive", "--once", UNKNOWN_LEASE]); // error: not found
    s.cmd(&["lease", "timetolive", UNKNOWN_LEASE]);
    s.cmd(&["lease", "revoke", UNKNOWN_LEASE]); // error: not found
    let unknown = format!("--lease={UNKNOWN_LEASE}");
    s.cmd(&["put", "lease/k4", "v4", &unknown]); // error: not found

    // Expiry.
    s.grant("L4", &["lease", "grant", "3"]);
    s.cmd(&["put", "lease/short", "v", "--lease={lease:L4}"]); // rev 45
    s.cmd(&["lease", "timetolive", "{lease:L4}", "--keys"]);
    s.await_gone("lease/short"); // rev 46: the lease expired, its key deleted
    s.read(&["get", "--prefix", "lease/"]);
    s.cmd(&["lease", "timetolive", "{lease:L4}"]); // "already expired"
    s.cmd(&["lease", "list"]); // L2 only
                               // The revocation (two deletes in one revision), the put, the expiry's delete.
    s.collect("lease", Until::LinesThenKill(12));

    s.read(&["get", "--prefix", ""]); // revision 46
    s.cmd(&["lease", "revoke", "{lease:L2}"]); // rev 47: deletes lease/k3
    s.cmd(&["lease", "list"]);
    s.read(&["get", "--prefix", "lease/"]); // the final state, revision 47
}

// ---------------------------------------------------------------------------------------------
// Tools, ports, working directory
// ---------------------------------------------------------------------------------------------

struct Tools {
    etcd: PathBuf,
    etcdctl: PathBuf,
}

impl Tools {
    /// Finds etcd and etcdctl and checks they are 3.4: the expected outputs are 3.4's, and 3.5
    /// prints several things differently.
    fn find() -> Tools {
        let etcd = common::find_on_path("etcd", ETCD_HINT);
        let etcdctl = common::find_on_path("etcdctl", ETCD_HINT);
        check_version(&etcd, &["--version"], "etcd Version: 3.4.");
        check_version(&etcdctl, &["version"], "etcdctl version: 3.4.");
        Tools { etcd, etcdctl }
    }
}

fn check_version(tool: &Path, args: &[&str], expected: &str) {
    let out = Command::new(tool)
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(expected),
        "{} is not the 3.4 release this test's expectations come from (wanted {expected:?}):\n{text}",
        tool.display()
    );
}

struct Ports {
    client: [u16; 3],
    peer: [u16; 3],
}

impl Ports {
    /// Six free loopback ports, found by binding port 0 (tests run in parallel: no fixed ports).
    /// All listeners are held until all six are chosen, so no port is handed out twice.
    fn pick() -> Ports {
        let listeners: Vec<TcpListener> =
            (0..6).map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port")).collect();
        let port = |i: usize| listeners[i].local_addr().expect("listener address").port();
        Ports { client: [port(0), port(1), port(2)], peer: [port(3), port(4), port(5)] }
    }

    fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client[i])
    }

    fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.peer[i])
    }

    fn endpoints(&self, target: Target) -> String {
        match target {
            Target::Member(i) => self.client_url(i),
            Target::All => (0..3).map(|i| self.client_url(i)).collect::<Vec<_>>().join(","),
        }
    }

    fn initial_cluster(&self) -> String {
        (0..3).map(|i| format!("{}={}", MEMBER_NAMES[i], self.peer_url(i))).collect::<Vec<_>>().join(",")
    }
}

/// The test's temporary directory; kept (and its path printed) when the test panics, so the
/// stores' logs and the outputs can be inspected.
struct WorkDir {
    dir: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn new() -> WorkDir {
        let dir = tempfile::Builder::new()
            .prefix("keelson-etcd-diff-")
            .tempdir()
            .expect("cannot create a temporary directory");
        WorkDir { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("work dir present until drop").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("etcd differential: kept {} for inspection", kept.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

enum Server {
    Etcd,
    Keelson(PathBuf),
}

struct Member {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Three running members; killed and reaped on drop, so no path leaks a process.
struct Cluster {
    members: Vec<Member>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

impl Cluster {
    fn start(tools: &Tools, server: &Server, dir: &Path, ports: &Ports) -> Cluster {
        let mut cluster = Cluster { members: Vec::new() };
        for (i, name) in MEMBER_NAMES.iter().copied().enumerate() {
            let log = dir.join(format!("{name}.log"));
            let log_file = fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
            let log_err = log_file.try_clone().expect("clone log file handle");
            let mut cmd = match server {
                Server::Etcd => {
                    let mut c = Command::new(&tools.etcd);
                    c.env_clear(); // no stray ETCD_* settings from the caller
                    c
                }
                Server::Keelson(bin) => {
                    let mut c = Command::new(bin);
                    c.arg("store");
                    c
                }
            };
            let data_dir = dir.join(format!("{name}.data"));
            cmd.args(["--name", name])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &ports.client_url(i)])
                .args(["--advertise-client-urls", &ports.client_url(i)])
                .args(["--listen-peer-urls", &ports.peer_url(i)])
                .args(["--initial-advertise-peer-urls", &ports.peer_url(i)])
                .args(["--initial-cluster", &ports.initial_cluster()])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", CLUSTER_TOKEN])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err);
            let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
            cluster.members.push(Member { name, child, log });
        }
        cluster
    }

    /// Polls `etcdctl endpoint health` on each member until it succeeds, failing early if a
    /// member exits.
    fn wait_healthy(&mut self, tools: &Tools, ports: &Ports, label: &str) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        for (i, name) in MEMBER_NAMES.iter().enumerate() {
            loop {
                let out = etcdctl(tools, &ports.client_url(i))
                    .args(["endpoint", "health"])
                    .stdin(Stdio::null())
                    .output()
                    .expect("cannot run etcdctl");
                if out.status.success() {
                    break;
                }
                if let Some(exited) = self.exited_members() {
                    panic!("{label}: {exited} before the cluster became healthy\n{}", self.log_tails());
                }
                if Instant::now() > deadline {
                    panic!(
                        "{label}: member {name} not healthy within {HEALTHY_WITHIN:?}; last check said:\n{}\n{}",
                        String::from_utf8_lossy(&out.stderr).trim_end(),
                        self.log_tails()
                    );
                }
                // etcdctl fails fast on a refused connection; don't spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// "n2 exited with ..." for every member that is no longer running.
    fn exited_members(&mut self) -> Option<String> {
        let exited: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| match m.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited with {status}", m.name)),
                Ok(None) => None,
                Err(e) => Some(format!("{} cannot be waited for: {e}", m.name)),
            })
            .collect();
        (!exited.is_empty()).then(|| exited.join(", "))
    }

    fn log_tails(&self) -> String {
        self.members.iter().map(|m| log_tail(&m.log)).collect()
    }

    /// Kills every member and waits for it to exit, so the ports are free for the next cluster.
    fn stop(mut self) {
        for m in &mut self.members {
            let _ = m.child.kill(); // already exited is fine; the status below tells
            m.child.wait().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", m.name));
        }
    }
}

fn log_tail(path: &Path) -> String {
    const TAIL_LINES: usize = 30;
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    format!("--- last {} lines of {} ---\n{}\n", tail.len(), path.display(), tail.join("\n"))
}

fn etcdctl(tools: &Tools, endpoints: &str) -> Command {
    let mut cmd = Command::new(&tools.etcdctl);
    // No stray ETCDCTL_* settings from the caller (ETCDCTL_ENDPOINTS would clash with the flag).
    cmd.env_clear().env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoints}"));
    cmd
}

// ---------------------------------------------------------------------------------------------
// Running the script
// ---------------------------------------------------------------------------------------------

struct Outcome {
    /// How the command ended: `exit code N`, or what the test did to end it.
    status: String,
    stdout: String,
    stderr: String,
}

fn exited(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("ended by {status}"),
    }
}

struct Run {
    label: String,
    outcomes: Vec<Outcome>,
    logs: Vec<PathBuf>,
    /// Members that died while the script ran (a crash is a failure even if outputs match).
    exited: Option<String>,
}

fn run_cluster(tools: &Tools, server: &Server, label: &str, ports: &Ports, work: &WorkDir, script: &[Step]) -> Run {
    let dir = work.path().join(label);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut cluster = Cluster::start(tools, server, &dir, ports);
    cluster.wait_healthy(tools, ports, label);
    let mut leases: HashMap<&'static str, String> = HashMap::new();
    let mut watches: HashMap<&'static str, Background> = HashMap::new();
    let mut outcomes = Vec::with_capacity(script.len());
    for step in script {
        let args = resolve_leases(&step.args, &leases);
        let outcome = match step.action {
            Action::Run => run_step(tools, ports, step, &args),
            Action::Watch(until) => Background::start(tools, ports, step, &args).finish(until),
            Action::Start { name, ready_lines } => {
                let watch = Background::start(tools, ports, step, &args);
                let status = if watch.stdout.wait_lines(ready_lines, Instant::now() + WATCH_OUTPUT_WITHIN) {
                    "started".to_string()
                } else {
                    format!(
                        "not ready: fewer than {ready_lines} lines on stdout within {WATCH_OUTPUT_WITHIN:?} \
                         (the output is compared where it is collected)"
                    )
                };
                watches.insert(name, watch);
                Outcome { status, stdout: String::new(), stderr: String::new() }
            }
            Action::Collect { name, until } => {
                watches.remove(name).unwrap_or_else(|| panic!("watch {name} collected but not running")).finish(until)
            }
            Action::PollUntilEmpty => poll_until_empty(tools, ports, step, &args),
        };
        if let Some(name) = step.capture {
            if let Some(id) = printed_lease_id(&outcome.stdout) {
                leases.insert(name, id);
            }
        }
        outcomes.push(outcome);
    }
    assert!(
        watches.is_empty(),
        "the script starts watches it never collects: {:?}",
        watches.keys().collect::<Vec<_>>()
    );
    let exited = cluster.exited_members();
    let logs = cluster.members.iter().map(|m| m.log.clone()).collect();
    cluster.stop();
    Run { label: label.to_string(), outcomes, logs, exited }
}

/// The arguments with every `{lease:NAME}` replaced by the lease ID captured as NAME. A lease
/// that was not granted (the grant failed) becomes an invalid ID, which etcdctl rejects: the
/// comparison then shows where.
fn resolve_leases(args: &[String], leases: &HashMap<&'static str, String>) -> Vec<String> {
    args.iter()
        .map(|arg| {
            let mut arg = arg.clone();
            while let Some(start) = arg.find("{lease:") {
                let end = start + arg[start..].find('}').expect("`{lease:NAME}` is closed");
                let name = &arg[start + "{lease:".len()..end];
                let id = leases.get(name).cloned().unwrap_or_else(|| format!("no-lease-{name}"));
                arg.replace_range(start..=end, &id);
            }
            arg
        })
        .collect()
}

/// The lease ID a `lease grant` printed, in hex as etcdctl takes it: `lease ID granted with
/// TTL(Ns)`, or the `"ID"` (decimal) of `-w json`.
fn printed_lease_id(stdout: &str) -> Option<String> {
    if let Some(rest) = stdout.strip_prefix("lease ") {
        let id = rest.split(' ').next()?;
        return u64::from_str_radix(id, 16).is_ok().then(|| id.to_string());
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
    Some(format!("{:016x}", json.get("ID")?.as_i64()?))
}

fn etcdctl_for(tools: &Tools, ports: &Ports, step: &Step, args: &[String]) -> Command {
    let mut cmd = etcdctl(tools, &ports.endpoints(step.target));
    cmd.args(args)
        .stdin(if step.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run_step(tools: &Tools, ports: &Ports, step: &Step, args: &[String]) -> Outcome {
    let mut child = etcdctl_for(tools, ports, step, args).spawn().expect("cannot run etcdctl");
    // Feed stdin from a thread: the large values exceed a pipe's buffer. etcdctl may exit without
    // reading it all (an argument error), so a broken pipe is not a failure.
    let writer = step.stdin.clone().map(|input| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    // etcdctl bounds every command itself (--dial-timeout 2s, --command-timeout 5s by default).
    let out = child.wait_with_output().expect("cannot wait for etcdctl");
    if let Some(writer) = writer {
        writer.join().expect("stdin writer thread panicked");
    }
    Outcome {
        status: exited(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How long a watch may take to print what it is expected to (or to exit, when it is expected
/// to): etcd and Keelson need milliseconds; this only bounds a wrong or stuck watch.
const WATCH_OUTPUT_WITHIN: Duration = Duration::from_secs(10);
/// How long a lease of a few seconds may take to expire (etcd: its TTL plus up to ~1 s).
const LEASE_EXPIRY_WITHIN: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the step's command until it succeeds with empty stdout; the outcome is the last run's,
/// with the deadline noted if it never did.
fn poll_until_empty(tools: &Tools, ports: &Ports, step: &Step, args: &[String]) -> Outcome {
    let deadline = Instant::now() + LEASE_EXPIRY_WITHIN;
    loop {
        let mut outcome = run_step(tools, ports, step, args);
        if outcome.status == "exit code 0" && outcome.stdout.is_empty() {
            return outcome;
        }
        if Instant::now() > deadline {
            outcome.status = format!("{}, and still printing after {LEASE_EXPIRY_WITHIN:?} of polling", outcome.status);
            return outcome;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A running command whose output is read as it comes (a watch). Killed if dropped unfinished.
struct Background {
    child: Child,
    /// Open until the watch is finished: an interactive watch exits at end of input.
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(tools: &Tools, ports: &Ports, step: &Step, args: &[String]) -> Background {
        let mut child = etcdctl_for(tools, ports, step, args).spawn().expect("cannot run etcdctl");
        let mut stdin = child.stdin.take();
        if let (Some(pipe), Some(input)) = (stdin.as_mut(), &step.stdin) {
            // A few short lines: well within a pipe's buffer. etcdctl may have exited already.
            let _ = pipe.write_all(input).and_then(|()| pipe.flush());
        }
        let (stdout, out_reader) = Capture::spawn(child.stdout.take().expect("piped stdout"));
        let (stderr, err_reader) = Capture::spawn(child.stderr.take().expect("piped stderr"));
        Background { child, stdin, stdout, stderr, readers: vec![out_reader, err_reader] }
    }

    /// Waits for the output `until` expects, ends the command, and returns all it printed.
    fn finish(mut self, until: Until) -> Outcome {
        let deadline = Instant::now() + WATCH_OUTPUT_WITHIN;
        let status = match until {
            Until::LinesThenKill(lines) => {
                let complete = self.stdout.wait_lines(lines, deadline);
                let _ = self.child.kill(); // fails only if already reaped, which it is not
                let status = self.child.wait().expect("cannot wait for etcdctl");
                match (complete, status.code()) {
                    // Killed by the signal, as intended.
                    (true, None) => "ran until killed by the test".to_string(),
                    (_, Some(_)) => format!("{} by itself (expected to run until killed)", exited(status)),
                    (false, None) => {
                        format!("killed by the test: fewer than {lines} lines on stdout within {WATCH_OUTPUT_WITHIN:?}")
                    }
                }
            }
            Until::LinesThenEof(lines) => {
                let complete = self.stdout.wait_lines(lines, deadline);
                drop(self.stdin.take());
                let shortfall = if complete {
                    String::new()
                } else {
                    format!(" (fewer than {lines} lines on stdout within {WATCH_OUTPUT_WITHIN:?})")
                };
                format!("{}{shortfall}", self.wait_exit(Instant::now() + WATCH_OUTPUT_WITHIN))
            }
            Until::Exit => self.wait_exit(deadline),
        };
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader thread panicked");
        }
        Outcome { status, stdout: self.stdout.text(), stderr: self.stderr.text() }
    }

    /// Waits for the command to exit on its own (it closes its output when it does), killing it
    /// at the deadline.
    fn wait_exit(&mut self, deadline: Instant) -> String {
        if self.stdout.wait_eof(deadline) && self.stderr.wait_eof(deadline) {
            exited(self.child.wait().expect("cannot wait for etcdctl"))
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            format!("still running after {WATCH_OUTPUT_WITHIN:?}: killed by the test")
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everything read so far from one output stream, and whether it has ended.
struct Capture {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Capture {
    fn spawn(mut stream: impl std::io::Read + Send + 'static) -> (Arc<Capture>, std::thread::JoinHandle<()>) {
        let capture = Arc::new(Capture { state: Mutex::new((Vec::new(), false)), changed: Condvar::new() });
        let shared = capture.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                let mut state = shared.state.lock().expect("capture lock");
                if n == 0 {
                    state.1 = true;
                } else {
                    state.0.extend_from_slice(&buf[..n]);
                }
                shared.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        (capture, reader)
    }

    /// Waits until `pred(bytes, ended)` holds, or the deadline passes; returns whether it held.
    fn wait(&self, deadline: Instant, pred: impl Fn(&[u8], bool) -> bool) -> bool {
        let mut state = self.state.lock().expect("capture lock");
        loop {
            if pred(&state.0, state.1) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).expect("capture lock").0;
        }
    }

    /// At least `lines` complete lines; false if the stream ends or the deadline passes first.
    fn wait_lines(&self, lines: usize, deadline: Instant) -> bool {
        let count = |b: &[u8]| b.iter().filter(|c| **c == b'\n').count();
        self.wait(deadline, |b, ended| count(b) >= lines || ended) && {
            let state = self.state.lock().expect("capture lock");
            count(&state.0) >= lines
        }
    }

    fn wait_eof(&self, deadline: Instant) -> bool {
        self.wait(deadline, |_, ended| ended)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("capture lock").0).into_owned()
    }
}

fn describe(step: &Step, ports: &Ports) -> String {
    let mut text = format!("etcdctl --endpoints={}", ports.endpoints(step.target));
    for arg in &step.args {
        if arg.is_empty() || arg.contains(' ') {
            write!(text, " '{arg}'").unwrap();
        } else {
            write!(text, " {arg}").unwrap();
        }
    }
    match &step.stdin {
        Some(input) if input.len() > 4096 => {
            write!(text, " < ({} bytes of {:?})", input.len(), input[0] as char).unwrap()
        }
        Some(input) => write!(text, " <<EOF\n{}EOF", String::from_utf8_lossy(input)).unwrap(),
        None => {}
    }
    let until = |until: &Until| match until {
        Until::LinesThenKill(n) => format!("until it has printed {n} lines, then killed"),
        Until::LinesThenEof(n) => format!("until it has printed {n} lines, then its input ends"),
        Until::Exit => "until it exits".to_string(),
    };
    match &step.action {
        Action::Run => {}
        Action::Watch(u) => write!(text, "\n  (runs {})", until(u)).unwrap(),
        Action::Start { name, ready_lines } => write!(
            text,
            "\n  (watch `{name}`, started and left running once it has printed {ready_lines} lines; \
             its output is compared where it is collected)"
        )
        .unwrap(),
        Action::Collect { name, until: u } => {
            write!(text, "\n  (watch `{name}`, started earlier and running through the steps since; runs {})", until(u))
                .unwrap()
        }
        Action::PollUntilEmpty => {
            write!(text, "\n  (repeated until it succeeds and prints nothing, for up to {LEASE_EXPIRY_WITHIN:?})")
                .unwrap()
        }
    }
    text
}

/// Every step's raw outputs, exactly as printed.
fn raw_report(run: &Run, script: &[Step], ports: &Ports) -> String {
    let mut text = format!(
        "# Raw etcdctl outputs of the {} run (ETCDCTL_API=3). Client ports {:?}, peer ports {:?}.\n\
         # Each block: the command, how it ended, stdout, stderr, verbatim.\n",
        run.label, ports.client, ports.peer
    );
    for (n, (step, outcome)) in script.iter().zip(&run.outcomes).enumerate() {
        write!(text, "\n##### step {}\n$ {}\n# {}\n", n + 1, describe(step, ports), outcome.status).unwrap();
        for (name, stream) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
            // Whether output ends with a newline matters for byte equality: say so when it doesn't.
            let ending = if stream.is_empty() || stream.ends_with('\n') { "" } else { "\n# (no final newline)\n" };
            write!(text, "# {name}:\n{stream}{ending}").unwrap();
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

fn compare(reference: &Run, candidate: &Run, script: &[Step], ports: &Ports, work: &WorkDir) {
    let expected = normalise_run(reference, script);
    let actual = normalise_run(candidate, script);
    let mut report = String::new();
    let mut mismatches = 0;
    for (n, step) in script.iter().enumerate() {
        if expected[n] != actual[n] {
            mismatches += 1;
            writeln!(report, "\n=== step {}: {}", n + 1, describe(step, ports)).unwrap();
            writeln!(report, "--- {}\n+++ {}", reference.label, candidate.label).unwrap();
            report.push_str(&unified_diff(&expected[n], &actual[n]));
        }
    }
    if mismatches == 0 && candidate.exited.is_none() {
        return;
    }
    for run in [reference, candidate] {
        let raw = work.path().join(format!("{}.outputs.txt", run.label));
        let _ = fs::write(&raw, raw_report(run, script, ports));
        writeln!(report, "raw outputs of {}: {}", run.label, raw.display()).unwrap();
    }
    for log in &reference.logs {
        writeln!(report, "{} log: {}", reference.label, log.display()).unwrap();
    }
    for log in &candidate.logs {
        report.push_str(&log_tail(log));
    }
    if let Some(exited) = &candidate.exited {
        writeln!(report, "{}: {exited} while the script ran", candidate.label).unwrap();
    }
    panic!(
        "{mismatches} of {} etcdctl steps differ between {} and {} (normalised outputs; `-` is {}, \
         `+` is {}):\n{report}",
        script.len(),
        reference.label,
        candidate.label,
        reference.label,
        candidate.label
    );
}

/// A unified-style line diff: ` ` common, `-` only in `expected`, `+` only in `actual`. Long
/// lines are cut into chunks first, so a difference deep inside a long JSON line shows where it
/// is; only the changed middle (plus a little context) is listed, and the listing is capped.
fn unified_diff(expected: &str, actual: &str) -> String {
    const CONTEXT_LINES: usize = 3;
    const OUTPUT_LINES_MAX: usize = 40;
    const LCS_CELLS_MAX: usize = 1 << 20;
    let a = chunked_lines(expected);
    let b = chunked_lines(actual);
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);

    let mut listing: Vec<(char, &str)> = Vec::new();
    listing.extend(a[prefix.saturating_sub(CONTEXT_LINES)..prefix].iter().map(|l| (' ', l.as_str())));
    if a_mid.len() * b_mid.len() <= LCS_CELLS_MAX {
        // Longest common subsequence of the changed middle.
        let mut lcs = vec![vec![0usize; b_mid.len() + 1]; a_mid.len() + 1];
        for i in (0..a_mid.len()).rev() {
            for j in (0..b_mid.len()).rev() {
                lcs[i][j] = if a_mid[i] == b_mid[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a_mid.len() || j < b_mid.len() {
            if i < a_mid.len() && j < b_mid.len() && a_mid[i] == b_mid[j] {
                listing.push((' ', &a_mid[i]));
                i += 1;
                j += 1;
            } else if i < a_mid.len() && (j == b_mid.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
                listing.push(('-', &a_mid[i]));
                i += 1;
            } else {
                listing.push(('+', &b_mid[j]));
                j += 1;
            }
        }
    } else {
        listing.extend(a_mid.iter().map(|l| ('-', l.as_str())));
        listing.extend(b_mid.iter().map(|l| ('+', l.as_str())));
    }
    listing.extend(a[a.len() - suffix..].iter().take(CONTEXT_LINES).map(|l| (' ', l.as_str())));

    // Runs of one repeated line (a large value cut into chunks) are listed once.
    let mut runs: Vec<((char, &str), usize)> = Vec::new();
    for entry in listing {
        match runs.last_mut() {
            Some((last, count)) if *last == entry => *count += 1,
            _ => runs.push((entry, 1)),
        }
    }
    let mut out = String::new();
    for ((mark, line), count) in runs.iter().take(OUTPUT_LINES_MAX) {
        writeln!(out, "{mark}{line}").unwrap();
        if *count > 1 {
            writeln!(out, "{mark}[… the line above {} more times]", count - 1).unwrap();
        }
    }
    if runs.len() > OUTPUT_LINES_MAX {
        writeln!(out, "[… {} more diff lines]", runs.len() - OUTPUT_LINES_MAX).unwrap();
    }
    out
}

/// Lines cut into chunks of at most 160 characters; continuation chunks start with `…`.
fn chunked_lines(text: &str) -> Vec<String> {
    const CHUNK_CHARS: usize = 160;
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            out.push(String::new());
        }
        for (n, chunk) in chars.chunks(CHUNK_CHARS).enumerate() {
            let lead = if n == 0 { "" } else { "…" };
            out.push(format!("{lead}{}", chunk.iter().collect::<String>()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/// Normalises a whole run with one ID map, so an ID seen in two commands must be the same ID.
fn normalise_run(run: &Run, script: &[Step]) -> Vec<String> {
    let mut ids = IdMap::default();
    script.iter().zip(&run.outcomes).map(|(step, outcome)| normalise(&mut ids, step, outcome)).collect()
}

/// Member and cluster IDs → `<id-N>`, lease IDs → `<lease-N>`, each numbered by first
/// appearance (hex in text, decimal in json). UNKNOWN_LEASE, chosen by the script, stays as is.
#[derive(Default)]
struct IdMap {
    seen: HashMap<u64, usize>,
    leases: HashMap<u64, usize>,
}

impl IdMap {
    fn lease(&mut self, id: u64, text: &str) -> String {
        if u64::from_str_radix(UNKNOWN_LEASE, 16) == Ok(id) {
            return text.to_string();
        }
        let next = self.leases.len() + 1;
        format!("<lease-{}>", self.leases.entry(id).or_insert(next))
    }

    fn lease_hex(&mut self, text: &str) -> String {
        match u64::from_str_radix(text, 16) {
            Ok(id) => self.lease(id, text),
            Err(_) => text.to_string(),
        }
    }

    fn lease_decimal(&mut self, text: &str) -> String {
        match text.parse::<u64>() {
            Ok(id) => self.lease(id, text),
            Err(_) => text.to_string(),
        }
    }

    fn placeholder(&mut self, id: u64) -> String {
        let next = self.seen.len() + 1;
        format!("<id-{}>", self.seen.entry(id).or_insert(next))
    }

    fn hex(&mut self, text: &str) -> String {
        match u64::from_str_radix(text, 16) {
            Ok(id) => self.placeholder(id),
            Err(_) => text.to_string(),
        }
    }

    fn decimal(&mut self, text: &str) -> String {
        match text.parse::<u64>() {
            Ok(id) => self.placeholder(id),
            Err(_) => text.to_string(),
        }
    }
}

#[derive(PartialEq)]
enum Kind {
    MemberList,
    EndpointStatus,
    EndpointHealth,
    /// `lease list`: leases in no particular order (etcd: by expiry, which ties on followers).
    LeaseList,
    /// Any other `lease` command.
    Lease,
    Other,
}

fn kind(args: &[String]) -> Kind {
    let has = |w: &str| args.iter().any(|a| a == w);
    if args.first().is_some_and(|a| a == "lease") {
        if has("list") {
            Kind::LeaseList
        } else {
            Kind::Lease
        }
    } else if has("member") && has("list") {
        Kind::MemberList
    } else if has("endpoint") && has("status") {
        Kind::EndpointStatus
    } else if has("endpoint") && has("health") {
        Kind::EndpointHealth
    } else {
        Kind::Other
    }
}

fn output_format(args: &[String]) -> &str {
    args.windows(2).find(|w| w[0] == "-w" || w[0] == "--write-out").map(|w| w[1].as_str()).unwrap_or("simple")
}

/// One step's outcome as a text block: exit code, normalised stdout and stderr.
fn normalise(ids: &mut IdMap, step: &Step, outcome: &Outcome) -> String {
    let kind = kind(&step.args);
    let stdout = match output_format(&step.args) {
        "json" => normalise_json(ids, &kind, &outcome.stdout),
        "table" => normalise_table(ids, &kind, &outcome.stdout),
        _ => normalise_simple(ids, &kind, &outcome.stdout),
    };
    let stderr = normalise_stderr(&kind, &outcome.stderr);
    format!("{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n", outcome.status)
}

/// Keeps what etcdctl says to the user (`Error: ...` lines, and `endpoint health`'s report,
/// which goes to stderr), drops the timestamped client log lines but keeps their deterministic
/// fields: they carry the gRPC status code (e.g. `code = OutOfRange`) that clients act upon.
fn normalise_stderr(kind: &Kind, stderr: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in stderr.lines() {
        if line.starts_with('{') {
            if let Ok(serde_json::Value::Object(mut log)) = serde_json::from_str(line) {
                for volatile in ["ts", "caller", "target"] {
                    log.remove(volatile);
                }
                lines.push(format!("(client log) {}", serde_json::Value::Object(log)));
                continue;
            }
        }
        if *kind == Kind::EndpointHealth {
            if let Some((head, _took)) = line.split_once(" took = ") {
                lines.push(format!("{head} took = <took>"));
                continue;
            }
        }
        lines.push(line.to_string());
    }
    // Health results print in order of completion.
    if *kind == Kind::EndpointHealth {
        lines.sort();
    }
    lines.join("\n")
}

/// The default ("simple") format: comma-separated fields for member list and endpoint status;
/// anything else is compared as is.
fn normalise_simple(ids: &mut IdMap, kind: &Kind, stdout: &str) -> String {
    match kind {
        Kind::MemberList => {
            let lines: Vec<String> = stdout
                .lines()
                .map(|line| {
                    let mut fields: Vec<String> = line.split(", ").map(str::to_string).collect();
                    fields[0] = ids.hex(&fields[0]);
                    fields.join(", ")
                })
                .collect();
            lines.join("\n")
        }
        Kind::EndpointStatus => {
            // endpoint, ID, version, db size, is leader, is learner, raft term, raft index,
            // raft applied index, errors
            let mut rows: Vec<Vec<String>> =
                stdout.lines().map(|l| l.split(", ").map(str::to_string).collect()).collect();
            if rows.iter().any(|r| r.len() != 10) {
                return stdout.to_string();
            }
            let mut leader_column: Vec<String> = rows.iter().map(|r| r[4].clone()).collect();
            normalise_is_leader(&mut leader_column);
            for (row, leader) in rows.iter_mut().zip(leader_column) {
                row[1] = ids.hex(&row[1]);
                row[4] = leader;
                for (i, name) in
                    [(2, "version"), (3, "db size"), (6, "raft term"), (7, "raft index"), (8, "raft applied index")]
                {
                    row[i] = format!("<{name}>");
                }
            }
            rows.iter().map(|r| r.join(", ")).collect::<Vec<_>>().join("\n")
        }
        Kind::Lease => stdout.lines().map(|line| normalise_lease_line(ids, line)).collect::<Vec<_>>().join("\n"),
        Kind::LeaseList => {
            // `found N leases`, then one hex ID a line.
            let mut lines = stdout.lines();
            let head = lines.next().unwrap_or_default().to_string();
            let mut leases: Vec<String> = lines.map(|l| ids.lease_hex(l)).collect();
            leases.sort();
            [head].into_iter().chain(leases).collect::<Vec<_>>().join("\n")
        }
        Kind::EndpointHealth | Kind::Other => stdout.to_string(),
    }
}

/// `lease ID granted with TTL(60s), remaining(59s), attached keys([k2 k1])` and the like: the
/// ID becomes a placeholder, the remaining TTL (which depends on timing) too; a granted TTL is
/// kept; attached keys are sorted (etcd lists them in Go map order, which varies run to run).
fn normalise_lease_line(ids: &mut IdMap, line: &str) -> String {
    let Some(rest) = line.strip_prefix("lease ") else {
        return line.to_string();
    };
    let (id, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut tail = tail.to_string();
    if let Some((before, after)) = tail.split_once("remaining(") {
        if let Some((seconds, after)) = after.split_once("s)") {
            if seconds.parse::<i64>().is_ok() {
                tail = format!("{before}remaining(<remaining>s){after}");
            }
        }
    }
    if let Some((before, after)) = tail.split_once("attached keys([") {
        if let Some((keys, after)) = after.split_once("])") {
            let mut keys: Vec<&str> = keys.split(' ').collect();
            keys.sort();
            tail = format!("{before}attached keys([{}]){after}", keys.join(" "));
        }
    }
    let id = ids.lease_hex(id);
    if tail.is_empty() {
        format!("lease {id}")
    } else {
        format!("lease {id} {tail}")
    }
}

/// Which member leads is up to the election, but a cluster-wide listing must name exactly one:
/// only then is the column replaced.
fn normalise_is_leader(column: &mut [String]) {
    let leaders = column.iter().filter(|v| *v == "true").count();
    let well_formed = column.iter().all(|v| v == "true" || v == "false");
    if well_formed && (column.len() == 1 || leaders == 1) {
        for v in column.iter_mut() {
            *v = "<is leader>".to_string();
        }
    }
}

/// `-w table`: normalises cells by column header, then re-renders. The raw table must first be
/// exactly what etcdctl's table writer renders from its own cells; otherwise it is left as is
/// (and so differs), because re-rendering would hide a formatting difference.
fn normalise_table(ids: &mut IdMap, kind: &Kind, stdout: &str) -> String {
    let Some(mut rows) = parse_table(stdout) else {
        return stdout.to_string();
    };
    if render_table(&rows) != stdout {
        return stdout.to_string();
    }
    let header = rows[0].clone();
    for (col, name) in header.iter().enumerate() {
        match name.as_str() {
            "ID" => {
                for row in rows.iter_mut().skip(1) {
                    row[col] = ids.hex(&row[col]);
                }
            }
            "VERSION" | "DB SIZE" | "RAFT TERM" | "RAFT INDEX" | "RAFT APPLIED INDEX" | "TOOK" => {
                for row in rows.iter_mut().skip(1) {
                    row[col] = format!("<{}>", name.to_lowercase());
                }
            }
            "IS LEADER" => {
                let mut column: Vec<String> = rows.iter().skip(1).map(|r| r[col].clone()).collect();
                normalise_is_leader(&mut column);
                for (row, v) in rows.iter_mut().skip(1).zip(column) {
                    row[col] = v;
                }
            }
            _ => {}
        }
    }
    if *kind == Kind::EndpointHealth {
        rows[1..].sort(); // in order of completion
    }
    render_table(&rows)
}

/// Cells of every `| a | b |` line, trimmed; the first row is the header.
fn parse_table(text: &str) -> Option<Vec<Vec<String>>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    let columns = rows.first()?.len();
    rows.iter().all(|r| r.len() == columns).then_some(rows)
}

/// Renders like etcdctl 3.4's tablewriter: header centred (extra space on the right), cells
/// right-aligned, one space of padding, `+---+` rules above and below the header and at the end.
fn render_table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |row: &Vec<String>, centred: bool| {
        let mut text = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let gap = w - cell.chars().count();
            let left = if centred { gap / 2 } else { gap };
            write!(text, "| {}{}{} ", " ".repeat(left), cell, " ".repeat(gap - left)).unwrap();
        }
        text + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(&rows[0], true));
    out.push_str(&rule);
    for row in &rows[1..] {
        out.push_str(&line(row, false));
    }
    out.push_str(&rule);
    out
}

/// `-w json`: rewrites the values of volatile members in place, leaving every other byte (key
/// order, spacing) as printed.
fn normalise_json(ids: &mut IdMap, kind: &Kind, stdout: &str) -> String {
    let is_lease = matches!(kind, Kind::Lease | Kind::LeaseList);
    let text = rewrite_json_scalars(stdout, |key, value| match key {
        // A lease command's `ID`/`id` is the lease's; a key's `lease` (0 is omitted) too.
        "ID" | "id" if is_lease => Some(ids.lease_decimal(value)),
        "lease" => Some(ids.lease_decimal(value)),
        // `lease timetolive`'s remaining TTL depends on timing; -1 (expired or unknown) is kept.
        // `TTL` (granted, and what keep-alive renews to) and `granted-ttl` are kept.
        "ttl" if is_lease && value != "-1" => Some("\"<remaining ttl>\"".to_string()),
        "cluster_id" | "member_id" | "ID" => Some(ids.decimal(value)),
        // Which member leads is up to the election.
        "leader" if value != "0" => Some("\"<leader>\"".to_string()),
        "raft_term" | "raftTerm" | "raftIndex" | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" => {
            Some(format!("\"<{key}>\""))
        }
        // The server version is a string; a key's version is a number and is kept.
        "version" | "took" if value.starts_with('"') => Some(format!("\"<{key}>\"")),
        _ => None,
    });
    match kind {
        Kind::EndpointHealth => sort_json_array(&text), // in order of completion
        Kind::LeaseList => sort_json_member_array(&text, "leases"),
        // `lease timetolive --keys`: in Go map order on etcd.
        Kind::Lease => sort_json_member_array(&text, "keys"),
        _ => text,
    }
}

/// Sorts the elements of the array that is the value of the first `"name":` member.
fn sort_json_member_array(text: &str, name: &str) -> String {
    let marker = format!("\"{name}\":[");
    let Some(at) = text.find(&marker) else {
        return text.to_string();
    };
    let open = at + marker.len() - 1;
    let b = text.as_bytes();
    let (mut depth, mut i) = (0i32, open);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_json_string(b, i);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if i >= b.len() || i == open + 1 {
        return text.to_string(); // unterminated, or empty
    }
    format!("{}{}{}", &text[..open], sort_json_array(&text[open..=i]), &text[i + 1..])
}

/// Calls `f(key, raw_value)` for every object member whose value is a scalar (string, number,
/// literal) and substitutes `Some` results for the raw value.
fn rewrite_json_scalars(json: &str, mut f: impl FnMut(&str, &str) -> Option<String>) -> String {
    let b = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let string_end = skip_json_string(b, i);
        let colon = skip_whitespace(b, string_end);
        if b.get(colon) != Some(&b':') {
            i = string_end;
            continue;
        }
        let start = skip_whitespace(b, colon + 1);
        let end = match b.get(start) {
            Some(b'"') => skip_json_string(b, start),
            Some(c) if c.is_ascii_alphanumeric() || *c == b'-' => {
                start + b[start..].iter().take_while(|c| !b",}] \t\r\n".contains(c)).count()
            }
            _ => start, // an object or array: its members are visited in turn
        };
        if end > start {
            if let Some(replacement) = f(&json[i + 1..string_end - 1], &json[start..end]) {
                out.push_str(&json[copied..start]);
                out.push_str(&replacement);
                copied = end;
            }
        }
        i = end;
    }
    out.push_str(&json[copied..]);
    out
}

/// Index just past the string starting at `b[start] == '"'`.
fn skip_json_string(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Sorts the elements of a top-level JSON array textually (keeping each element's bytes).
fn sort_json_array(text: &str) -> String {
    let trimmed = text.trim_end();
    let (Some(inner), trailing) = (trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')), &text[trimmed.len()..])
    else {
        return text.to_string();
    };
    let b = inner.as_bytes();
    let (mut elements, mut depth, mut start, mut i) = (Vec::new(), 0i32, 0, 0);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_json_string(b, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => {
                elements.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    elements.push(&inner[start..]);
    elements.sort();
    format!("[{}]{trailing}", elements.join(","))
}

// ---------------------------------------------------------------------------------------------
// The normalisation itself, on outputs recorded from etcd 3.4.23
// ---------------------------------------------------------------------------------------------

/// Goal: IDs become placeholders numbered by first appearance, shared between decimal (json)
/// and hex (text) forms, while revisions, key versions and values stay as printed.
#[test]
fn normalisation_replaces_only_volatile_fields() {
    let mut ids = IdMap::default();
    let get = r#"{"header":{"cluster_id":15026865183257840938,"member_id":16577583988903792037,"revision":27,"raft_term":2},"kvs":[{"key":"Zm9v","create_revision":15,"mod_revision":15,"version":1,"value":"cmVib3Ju"}],"count":1}"#;
    assert_eq!(
        normalise_json(&mut ids, &Kind::Other, get),
        r#"{"header":{"cluster_id":<id-1>,"member_id":<id-2>,"revision":27,"raft_term":"<raft_term>"},"kvs":[{"key":"Zm9v","create_revision":15,"mod_revision":15,"version":1,"value":"cmVib3Ju"}],"count":1}"#
    );
    let status = "http://127.0.0.1:40327, e60f68ce5cd04da5, 3.4.23, 2.0 MB, true, false, 2, 43, 43, \n\
                  http://127.0.0.1:42199, 2247296566fcceb2, 3.4.23, 2.0 MB, false, false, 2, 43, 43, \n";
    assert_eq!(
        normalise_simple(&mut ids, &Kind::EndpointStatus, status),
        "http://127.0.0.1:40327, <id-2>, <version>, <db size>, <is leader>, false, <raft term>, <raft index>, <raft applied index>, \n\
         http://127.0.0.1:42199, <id-3>, <version>, <db size>, <is leader>, false, <raft term>, <raft index>, <raft applied index>, "
    );
    // Two leaders in one listing is not normalised away.
    let two_leaders = status.replace("false, false", "true, false");
    assert!(normalise_simple(&mut ids, &Kind::EndpointStatus, &two_leaders).contains("true"));
}

/// Goal: tables are re-rendered exactly like etcdctl's table writer, so a table whose raw
/// layout differs from etcd's is left unnormalised (and fails the comparison).
#[test]
fn tables_round_trip_through_the_renderer() {
    let table = "\
+------------------+---------+------+------------------------+------------------------+------------+
|        ID        | STATUS  | NAME |       PEER ADDRS       |      CLIENT ADDRS      | IS LEARNER |
+------------------+---------+------+------------------------+------------------------+------------+
| 2247296566fcceb2 | started |   n2 | http://127.0.0.1:34435 | http://127.0.0.1:42199 |      false |
| 857e4a52a292c8e1 | started |   n3 | http://127.0.0.1:41015 | http://127.0.0.1:39763 |      false |
+------------------+---------+------+------------------------+------------------------+------------+
";
    let rows = parse_table(table).expect("a table");
    assert_eq!(render_table(&rows), table);
    let normalised = normalise_table(&mut IdMap::default(), &Kind::MemberList, table);
    assert!(normalised.contains("| <id-1> | started |   n2 |"), "{normalised}");
    let left_aligned = table.replace("|   n2 |", "| n2   |");
    assert_eq!(normalise_table(&mut IdMap::default(), &Kind::MemberList, &left_aligned), left_aligned);
}

/// Goal: a mismatch deep inside a long line is listed, with the lines around it as context.
#[test]
fn diff_lists_the_changed_chunk() {
    let long = "x".repeat(1000);
    let expected = format!("exit code 0\n{long}a{long}\ntail\n");
    let actual = format!("exit code 0\n{long}b{long}\ntail\n");
    let diff = unified_diff(&expected, &actual);
    let changed: Vec<&str> = diff.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(changed.len(), 2, "{diff}");
    assert!(changed[0].starts_with("-…") && changed[0].contains('a'), "{diff}");
    assert!(changed[1].starts_with("+…") && changed[1].contains('b'), "{diff}");
}

/// Goal: `endpoint health` results, printed in order of completion, compare in a fixed order
/// without their timings.
#[test]
fn health_reports_are_sorted_and_untimed() {
    let json = r#"[{"endpoint":"http://127.0.0.1:39763","health":true,"took":"3.646451ms"},{"endpoint":"http://127.0.0.1:2","health":true,"took":"3.7ms"}]
"#;
    assert_eq!(
        normalise_json(&mut IdMap::default(), &Kind::EndpointHealth, json),
        "[{\"endpoint\":\"http://127.0.0.1:2\",\"health\":true,\"took\":\"<took>\"},\
         {\"endpoint\":\"http://127.0.0.1:39763\",\"health\":true,\"took\":\"<took>\"}]\n"
    );
    let stderr = "http://b is healthy: successfully committed proposal: took = 13.9ms\n\
                  {\"level\":\"warn\",\"ts\":\"t\",\"caller\":\"c\",\"target\":\"x\",\"msg\":\"m\"}\n\
                  http://a is healthy: successfully committed proposal: took = 8.7ms\n";
    assert_eq!(
        normalise_stderr(&Kind::EndpointHealth, stderr),
        "(client log) {\"level\":\"warn\",\"msg\":\"m\"}\n\
         http://a is healthy: successfully committed proposal: took = <took>\n\
         http://b is healthy: successfully committed proposal: took = <took>"
    );
}

/// Goal: lease IDs become `<lease-N>` by first appearance, shared between hex (text) and decimal
/// (json); remaining TTLs are hidden but granted ones kept; listings compare in a fixed order;
/// the script's own unknown lease ID stays as printed.
#[test]
fn lease_ids_and_remaining_ttls_are_normalised() {
    let mut ids = IdMap::default();
    let lease = |args: &str| -> Vec<String> { args.split(' ').map(str::to_string).collect() };
    let granted = "lease 2040a200ea20380a granted with TTL(60s)\n";
    assert_eq!(
        normalise_simple(&mut ids, &kind(&lease("lease grant 60")), granted),
        "lease <lease-1> granted with TTL(60s)"
    );
    let json = r#"{"cluster_id":324952591200643719,"member_id":3319814642761637952,"revision":5,"raft_term":2,"ID":2324035532534855692,"TTL":60,"Error":""}"#;
    assert_eq!(
        normalise_json(&mut ids, &kind(&lease("lease grant 60 -w json")), json),
        r#"{"cluster_id":<id-1>,"member_id":<id-2>,"revision":5,"raft_term":"<raft_term>","ID":<lease-2>,"TTL":60,"Error":""}"#
    );
    let ttl = "lease 2040a200ea20380c granted with TTL(60s), remaining(59s), attached keys([k2 k1])\n";
    assert_eq!(
        normalise_simple(&mut ids, &Kind::Lease, ttl),
        "lease <lease-2> granted with TTL(60s), remaining(<remaining>s), attached keys([k1 k2])"
    );
    let ttl_json = r#"{"cluster_id":1,"member_id":2,"revision":7,"raft_term":2,"id":2324035532534855690,"ttl":29,"granted-ttl":30,"keys":["azI=","azE="]}"#;
    let normalised = normalise_json(&mut ids, &Kind::Lease, ttl_json);
    assert!(
        normalised.contains(r#""id":<lease-1>,"ttl":"<remaining ttl>","granted-ttl":30,"keys":["azE=","azI="]}"#),
        "{normalised}"
    );
    let expired = r#"{"id":2324035532534855690,"ttl":-1,"granted-ttl":0,"keys":null}"#;
    assert_eq!(
        normalise_json(&mut ids, &Kind::Lease, expired),
        r#"{"id":<lease-1>,"ttl":-1,"granted-ttl":0,"keys":null}"#
    );
    assert_eq!(
        normalise_simple(&mut ids, &Kind::Lease, "lease 000000001234abcd already expired\n"),
        "lease 000000001234abcd already expired"
    );
    // Either order lists the same.
    for list in
        ["found 2 leases\n2040a200ea20380c\n2040a200ea20380a\n", "found 2 leases\n2040a200ea20380a\n2040a200ea20380c\n"]
    {
        assert_eq!(normalise_simple(&mut ids, &Kind::LeaseList, list), "found 2 leases\n<lease-1>\n<lease-2>");
    }
    let list_json = r#"{"header":1,"leases":[{"id":2324035532534855692},{"id":2324035532534855690}]}"#;
    assert_eq!(
        normalise_json(&mut ids, &Kind::LeaseList, list_json),
        r#"{"header":1,"leases":[{"id":<lease-1>},{"id":<lease-2>}]}"#
    );
    // A key's lease, in a get or a watch event.
    let event = r#"{"Events":[{"kv":{"key":"YQ==","version":1,"lease":2324035532534855692}}]}"#;
    assert_eq!(
        normalise_json(&mut ids, &Kind::Other, event),
        r#"{"Events":[{"kv":{"key":"YQ==","version":1,"lease":<lease-2>}}]}"#
    );
    assert_eq!(printed_lease_id(granted).as_deref(), Some("2040a200ea20380a"));
    assert_eq!(printed_lease_id(json).as_deref(), Some("2040a200ea20380c"));
}
