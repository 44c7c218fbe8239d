//! Short campaigns of the harness against real `keelson store` processes in network namespaces
//! (root needed): the real store comes out clean (registers, a set, locks on leases), and a store
//! built with a deliberate fault is caught. Long campaigns are run by hand: see the README.

use std::path::PathBuf;

use jepsen::client::Workload;
use jepsen::run::{run, RunOpts};

/// A run's output (members' data, logs, history, report): removed after a passing test, kept for
/// inspection after a failing one.
struct OutDir(Option<tempfile::TempDir>);

impl OutDir {
    fn new() -> OutDir {
        OutDir(Some(tempfile::Builder::new().prefix("keelson-jepsen-").tempdir().expect("cannot create a temp dir")))
    }

    fn path(&self) -> PathBuf {
        self.0.as_ref().expect("present until drop").path().to_path_buf()
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("kept the run's output in {}", dir.keep().display());
            }
        }
    }
}

fn opts(keelson: PathBuf, nemesis: &[&str], workload: Workload, seconds: u64, seed: u64, out: &OutDir) -> RunOpts {
    let out = out.path();
    RunOpts {
        nodes: 3,
        time_limit_s: seconds,
        nemesis: nemesis.iter().map(|s| s.to_string()).collect(),
        nemesis_interval_s: 3,
        workload,
        seed,
        concurrency: 8,
        keys: 4,
        watchers: 3,
        check_time_limit_s: 60,
        system: jepsen::cluster::System::Keelson,
        binary: keelson,
        out,
    }
}

/// The faulty store is built apart (scripts/test does it): fail, never skip, without it.
fn faulty_binary() -> PathBuf {
    let path = std::env::var_os("KEELSON_FAULTY_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("KEELSON_FAULTY_BIN is unset: build the faulty store with scripts/test (cargo build -p control --features test-fault-stale-reads --target-dir <dir>) and point it there")
    });
    assert!(path.is_file(), "KEELSON_FAULTY_BIN={} is not a file", path.display());
    path
}

/// Registers under partitions, kills and pauses: linearizable, nothing lost, watches intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_under_partitions_kills_and_pauses_are_linearizable() {
    let keelson = jepsen::cluster::find_keelson_binary().expect("the keelson binary");
    let out = OutDir::new();
    let outcome =
        run(opts(keelson, &["partition", "kill", "pause"], Workload::Register, 30, 7, &out)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "anomalies or unknown outcome; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("faults:"), "{}", outcome.summary);
}

/// A set under leader kills and member removal: every acknowledged add is in the final read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_adds_survive_leader_kills_and_membership_changes() {
    let keelson = jepsen::cluster::find_keelson_binary().expect("the keelson binary");
    let out = OutDir::new();
    let outcome = run(opts(keelson, &["kill-leader", "member"], Workload::Set, 20, 11, &out)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "anomalies or unknown outcome; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
}

/// Locks on leases under kills, pauses and partitions, with renewals that race expiry: never two
/// holders at once, and no lock deleted under a client that the store told its lease was alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_locks_under_faults_never_have_two_holders() {
    let keelson = jepsen::cluster::find_keelson_binary().expect("the keelson binary");
    let out = OutDir::new();
    let mut opts = opts(keelson, &["kill", "pause", "partition"], Workload::Lease, 20, 5, &out);
    opts.concurrency = 10;
    let outcome = run(opts).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "anomalies or unknown outcome; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("[valid] lease locks:"), "{}", outcome.summary);
}

/// A follower killed while it installs a snapshot from the leader (after the leader purged the
/// log it would need) starts again, catches up and serves reads; its watchers miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_snapshot_install_comes_back() {
    let keelson = jepsen::cluster::find_keelson_binary().expect("the keelson binary");
    let out = OutDir::new();
    let outcome = run(opts(keelson, &["kill-install"], Workload::Set, 30, 13, &out)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "anomalies or unknown outcome; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    let installs = outcome.installs.clone().expect("install counts of a Keelson run");
    assert!(
        installs.completed_total() > 0 && installs.crashed > 0,
        "the nemesis crashed no snapshot install ({installs:?}); report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("[valid] crash recovery:"), "{}", outcome.summary);
}

/// A store that serves "linearizable" reads locally is caught once its leader is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_of_a_faulty_store_are_caught() {
    let out = OutDir::new();
    let outcome =
        run(opts(faulty_binary(), &["partition-leader"], Workload::Register, 20, 3, &out)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(false),
        "the fault went unnoticed; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("[INVALID]"), "{}", outcome.summary);
}
