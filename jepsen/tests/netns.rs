//! Tests of the harness's cluster and nemesis against real `keelson store` processes in network
//! namespaces. They need root and the `ip` command, and fail (never skip) without them. The
//! `keelson` binary comes from `$KEELSON_BIN` or `<target>/debug/keelson`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jepsen::cluster::{cleanup_stale, find_keelson_binary, severed_pairs, Cluster, ClusterOpts, NAME_PREFIX};
use jepsen::nemesis::{Fault, Nemesis, Target};
use proto::etcdserverpb::cluster_client::ClusterClient;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::{MemberListRequest, PutRequest, RangeRequest};

const HEARTBEAT_INTERVAL_MS: u64 = 50;
const ELECTION_TIMEOUT_MS: u64 = 500;
/// Debug build, 2 cores, other tests alongside.
const READY_WITHIN: Duration = Duration::from_secs(60);
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(20);
const CATCH_UP_WITHIN: Duration = Duration::from_secs(30);
/// A write through an isolated node must fail this fast (the store gives up after 3 s).
const PUT_FAILS_WITHIN: Duration = Duration::from_secs(10);
/// Upper bound on one client RPC of these tests.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Set in the child process of `stale_leftovers_of_a_crashed_run_are_removed`.
const CRASH_HELPER_ENV: &str = "KEELSON_JEPSEN_CRASH_HELPER_DIR";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("jepsen=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The keelson binary, after checking that this machine can run the tests at all.
fn preflight() -> PathBuf {
    if let Err(e) = Command::new("ip").arg("-V").output() {
        panic!("these tests need the `ip` command (iproute2) and root; running `ip -V` failed: {e}");
    }
    find_keelson_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

fn opts(nodes: usize, dir: &Path) -> ClusterOpts {
    let mut opts = ClusterOpts::new(preflight(), nodes, dir.to_path_buf());
    opts.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
    opts.election_timeout_ms = ELECTION_TIMEOUT_MS;
    opts.ready_within = READY_WITHIN;
    opts
}

async fn launch(nodes: usize, dir: &Path) -> Cluster {
    Cluster::launch(opts(nodes, dir))
        .await
        .unwrap_or_else(|e| panic!("cannot launch a {nodes}-node cluster in network namespaces: {e:#}"))
}

fn run_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("keelson-jepsen-{test}-")).tempdir().expect("cannot create a temp dir")
}

/// Evaluates `condition` until it returns `Ok`, and panics with `what` and the last error once
/// `within` has passed.
async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(within, condition()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e,
            Err(_) => format!("one evaluation took over {within:?}"),
        };
        if Instant::now() >= deadline {
            panic!("gave up after {within:?} waiting until {what}; last observation: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn put(c: &Cluster, i: usize, key: &str, value: &str) -> Result<i64, String> {
    let mut kv = KvClient::new(c.channel(i));
    let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    match tokio::time::timeout(RPC_TIMEOUT, kv.put(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0)),
        Ok(Err(s)) => Err(format!("put {key} via n{}: {:?} {}", i + 1, s.code(), s.message())),
        Err(_) => Err(format!("put {key} via n{}: no answer within {RPC_TIMEOUT:?}", i + 1)),
    }
}

async fn get_local(c: &Cluster, i: usize, key: &str) -> Result<Option<String>, String> {
    let mut kv = KvClient::new(c.channel(i));
    let req = RangeRequest { key: key.into(), serializable: true, ..Default::default() };
    match tokio::time::timeout(RPC_TIMEOUT, kv.range(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())),
        Ok(Err(s)) => Err(format!("get {key} via n{}: {:?} {}", i + 1, s.code(), s.message())),
        Err(_) => Err(format!("get {key} via n{}: no answer within {RPC_TIMEOUT:?}", i + 1)),
    }
}

async fn wait_put(c: &Cluster, i: usize, key: &str, value: &str, context: &str) {
    let what = format!("a put of {key} through n{} succeeds ({context})", i + 1);
    wait_until(&what, NEW_LEADER_WITHIN, || put(c, i, key, value)).await;
}

/// Waits until node `i` serves `key` = `value` from its own state (a serializable read).
async fn wait_local_value(c: &Cluster, i: usize, key: &str, value: &str, context: &str) {
    let what = format!("n{} serves {key}={value} locally ({context})", i + 1);
    wait_until(&what, CATCH_UP_WITHIN, || async {
        match get_local(c, i, key).await? {
            Some(v) if v == value => Ok(()),
            other => Err(format!("read {other:?}")),
        }
    })
    .await;
}

/// Which of `names` exist now, as namespaces or root-namespace links.
fn existing(names: &[String]) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("cannot run ip netns list");
    let mut present: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    for entry in std::fs::read_dir("/sys/class/net").expect("cannot list /sys/class/net") {
        present.insert(entry.expect("cannot list /sys/class/net").file_name().to_string_lossy().into_owned());
    }
    names.iter().filter(|n| present.contains(*n)).cloned().collect()
}

/// Whether a process is gone (or a zombie nobody reaped: it holds nothing).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Goal: a cluster in network namespaces behaves as the nemesis needs. Isolating the leader lets
/// the majority elect another leader and take writes while a write through the isolated node
/// fails; after healing, the old leader catches up. Kill/restart and pause/resume work, and
/// dropping the cluster leaves no namespace, bridge or veth of the run behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_kill_pause_and_cleanup() {
    init_tracing();
    let dir = run_dir("netns");
    let c = launch(3, dir.path()).await;
    let names = c.resource_names();
    assert_eq!(existing(&names).len(), names.len(), "the run's network exists: {names:?}");
    wait_put(&c, 0, "k/before", "1", "fresh cluster").await;

    // Isolate the leader.
    let old = c.wait_healthy(READY_WITHIN).await.expect("a leader");
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.partition(&[vec![old], rest.clone()]).expect("partition");
    assert_eq!(c.severed(), severed_pairs(3, &[vec![old], rest.clone()]));
    let new = c.wait_leader_among(&rest, NEW_LEADER_WITHIN).await.expect("the majority elects a leader");
    assert_ne!(new, old, "the majority side must elect one of its own");
    wait_put(&c, rest[0], "k/during", "2", "majority side of a partition").await;
    let started = Instant::now();
    match tokio::time::timeout(PUT_FAILS_WITHIN, put(&c, old, "k/isolated", "x")).await {
        Ok(Err(e)) => eprintln!("write through the isolated n{} failed after {:?}: {e}", old + 1, started.elapsed()),
        Ok(Ok(rev)) => panic!("a write through the isolated n{} succeeded at revision {rev}", old + 1),
        Err(_) => panic!("a write through the isolated n{} got no answer within {PUT_FAILS_WITHIN:?}", old + 1),
    }
    // Clients are not partitioned: the isolated node still answers Status.
    c.status(old).await.expect("the isolated node answers clients");

    c.heal_partition().expect("heal");
    assert!(c.severed().is_empty());
    wait_local_value(&c, old, "k/during", "2", "the old leader after healing").await;
    let leader = c.wait_healthy(CATCH_UP_WITHIN).await.expect("healthy after healing");

    // Kill and restart a follower.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    c.kill(victim).expect("kill");
    assert!(!c.is_running(victim) && c.pid(victim).is_none());
    wait_put(&c, leader, "k/while-down", "3", "one node killed").await;
    c.restart(victim).expect("restart");
    assert!(c.is_running(victim));
    wait_local_value(&c, victim, "k/while-down", "3", "the restarted node").await;

    // Pause and resume a follower.
    let leader = c.wait_healthy(CATCH_UP_WITHIN).await.expect("healthy after the restart");
    let paused = (0..3).rev().find(|&i| i != leader).unwrap();
    c.pause(paused).expect("pause");
    assert!(c.is_paused(paused) && c.is_running(paused));
    assert!(c.status(paused).await.is_err(), "a paused node must not answer");
    wait_put(&c, leader, "k/while-paused", "4", "one node paused").await;
    c.resume(paused).expect("resume");
    wait_local_value(&c, paused, "k/while-paused", "4", "the resumed node").await;
    c.wait_healthy(CATCH_UP_WITHIN).await.expect("healthy after resuming");

    let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    drop(c);
    assert_eq!(existing(&names), Vec::<String>::new(), "namespaces, bridge or veths left after drop");
    assert!(pids.iter().all(|&p| process_gone(p)), "members left running after drop: {pids:?}");
}

/// Goal: every nemesis target injects the fault it names, `heal` undoes it and the cluster
/// recovers (a leader, and every node serves a write made after healing); `run` alternates
/// starts and stops and ends healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nemesis_target_injects_and_heals() {
    init_tracing();
    let dir = run_dir("nemesis");
    let c = Arc::new(launch(5, dir.path()).await);
    let kinds: Vec<String> = Target::ALL.iter().map(|t| t.name().to_string()).collect();
    let mut nemesis = Nemesis::new(c.clone(), kinds, 42).expect("a nemesis");
    for (round, target) in Target::ALL.into_iter().enumerate() {
        let detail = nemesis.start(target).await.unwrap_or_else(|e| panic!("{target}: {e:#}"));
        eprintln!("{target}: {detail}");
        let (_, fault) = nemesis.active().last().cloned().expect("the fault is remembered");
        match &fault {
            Fault::Kill(nodes) => assert!(!nodes.is_empty() && nodes.iter().all(|&i| !c.is_running(i)), "{fault}"),
            Fault::Pause(nodes) => assert!(nodes.iter().all(|&i| c.is_paused(i)), "{fault}"),
            Fault::Partition(groups) => {
                let expected = severed_pairs(5, groups);
                assert!(!expected.is_empty(), "{target} must cut something: {fault}");
                assert_eq!(c.severed(), expected, "{fault}");
            }
            Fault::RemoveMember(i) => {
                let i = *i;
                assert!(c.is_removed(i) && !c.is_running(i) && !c.data_dir(i).exists(), "{fault}");
                let id = c.member_id(i).expect("the removed member's ID");
                let via = c.live_nodes()[0];
                let list = ClusterClient::new(c.channel(via))
                    .member_list(MemberListRequest { linearizable: false })
                    .await
                    .expect("MemberList")
                    .into_inner()
                    .members;
                assert!(!list.iter().any(|m| m.id == id), "{fault}: still listed in {list:?}");
            }
        }
        match target {
            Target::KillLeader | Target::PauseLeader | Target::PartitionLeader => {
                assert!(detail.ends_with("(leader)"), "{target} found no leader: {detail}")
            }
            _ => {}
        }
        // While the fault holds, a majority that can still talk elects one of its own and takes
        // writes. Overlapping groups (ring, bridge) have no such side.
        let side = match &fault {
            Fault::Partition(groups) => {
                let disjoint = groups.iter().flatten().collect::<BTreeSet<_>>().len()
                    == groups.iter().map(Vec::len).sum::<usize>();
                groups.iter().find(|g| disjoint && g.len() > 5 / 2).cloned()
            }
            _ => Some(c.live_nodes()),
        };
        if let Some(side) = side {
            let l = c.wait_leader_among(&side, NEW_LEADER_WITHIN).await.unwrap_or_else(|e| panic!("{target}: {e:#}"));
            wait_put(&c, l, &format!("during/{round}"), "x", &format!("during {target}")).await;
        }
        let healed = nemesis.heal().await.unwrap_or_else(|e| panic!("heal {target}: {e:#}"));
        assert_eq!(healed.len(), 1, "{healed:?}");
        assert!(nemesis.active().is_empty() && c.severed().is_empty());
        let leader = c.wait_healthy(CATCH_UP_WITHIN).await.unwrap_or_else(|e| panic!("after {target}: {e:#}"));
        let key = format!("n/{round}");
        wait_put(&c, leader, &key, target.name(), &format!("after healing {target}")).await;
        for i in 0..5 {
            wait_local_value(&c, i, &key, target.name(), &format!("after healing {target}")).await;
        }
    }

    let mut events: Vec<(String, String)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    nemesis
        .run(until, Duration::from_millis(700), |action, detail| events.push((action.to_string(), detail.to_string())))
        .await
        .unwrap_or_else(|e| panic!("nemesis run: {e:#}; events {events:#?}"));
    eprintln!("events: {events:#?}");
    assert!(events.first().is_some_and(|(a, _)| a.starts_with("start-")), "{events:#?}");
    let starts = events.iter().filter(|(a, _)| a.starts_with("start-")).count();
    let stops = events.iter().filter(|(a, _)| a.starts_with("stop-")).count();
    assert!(starts >= 1 && stops == starts, "every start has its stop: {events:#?}");
    assert!(c.severed().is_empty() && (0..5).all(|i| c.is_running(i) && !c.is_paused(i) && !c.is_removed(i)));
    c.wait_healthy(CATCH_UP_WITHIN).await.expect("healthy after the run");

    let names = c.resource_names();
    drop(nemesis);
    let c = Arc::try_unwrap(c).unwrap_or_else(|_| panic!("the cluster is still shared"));
    c.shutdown().expect("shutdown");
    drop(c);
    assert_eq!(existing(&names), Vec::<String>::new());
}

/// Goal: a launch whose members cannot start fails at once with their logs in the error, and
/// leaves no network behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launch_reports_logs_and_cleans_up() {
    init_tracing();
    let dir = run_dir("bad-launch");
    let mut bad = opts(3, dir.path());
    bad.extra_flags = vec!["--no-such-flag".to_string()];
    let started = Instant::now();
    let error = match Cluster::launch(bad).await {
        Ok(_) => panic!("a cluster started with an unknown flag"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("the launch failed after {:?}: {error}", started.elapsed());
    assert!(started.elapsed() < READY_WITHIN / 2, "the launch waited for members that had exited: {error}");
    assert!(error.contains("exited on its own") && error.contains("--no-such-flag"), "{error}");
    let prefix = error
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("the error names no run: {error}"));
    let names: Vec<String> =
        ["br", "n1", "n2", "n3", "v1", "v2", "v3"].iter().map(|s| format!("{prefix}{s}")).collect();
    assert_eq!(existing(&names), Vec::<String>::new(), "left behind by a failed launch");
}

/// Goal: the leftovers of a run that died without cleaning up (its namespaces, bridge, veths and
/// still-running members) are removed by `cleanup_stale`, which a later launch calls. A child
/// process launches a cluster and exits without running destructors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_leftovers_of_a_crashed_run_are_removed() {
    init_tracing();
    preflight();
    let dir = run_dir("crash");
    let exe = std::env::current_exe().expect("the test executable");
    let out = Command::new(exe)
        .args(["crashed_run_helper", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_HELPER_ENV, dir.path())
        .output()
        .expect("cannot run the helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |tag: &str| -> Vec<String> {
        let line = stdout.lines().find_map(|l| l.split_once(tag).map(|(_, rest)| rest)).unwrap_or_else(|| {
            panic!(
                "the helper printed no {tag:?} line: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        line.split_whitespace().map(String::from).collect()
    };
    let names = line("LEFTOVER NAMES: ");
    let pids: Vec<u32> = line("LEFTOVER PIDS: ").iter().map(|p| p.parse().expect("a pid")).collect();
    // Another test process's launch may clean them up first (it calls cleanup_stale too), so what
    // counts is that they are gone afterwards, not who removed them.
    let removed = cleanup_stale(NAME_PREFIX).expect("cleanup_stale");
    eprintln!("cleanup_stale removed {removed:?}");
    assert_eq!(existing(&names), Vec::<String>::new(), "leftovers after cleanup_stale");
    wait_until("the crashed run's members are gone", Duration::from_secs(10), || async {
        match pids.iter().find(|&&p| !process_gone(p)) {
            Some(p) => Err(format!("pid {p} still runs")),
            None => Ok(()),
        }
    })
    .await;
}

/// Run only as the child of `stale_leftovers_of_a_crashed_run_are_removed`: launches a one-node
/// cluster, prints what it made and exits at once, as a crashed run would (no destructors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: run in a child process by stale_leftovers_of_a_crashed_run_are_removed"]
async fn crashed_run_helper() {
    let Some(dir) = std::env::var_os(CRASH_HELPER_ENV) else { return };
    let c = launch(1, Path::new(&dir)).await;
    println!("LEFTOVER NAMES: {}", c.resource_names().join(" "));
    println!("LEFTOVER PIDS: {}", c.pid(0).expect("the member runs"));
    std::process::exit(0);
}
