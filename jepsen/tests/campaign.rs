//! Short campaigns of the harness against real `keelson store` processes in network namespaces
//! (root needed): the real store comes out clean, and a store built with a deliberate fault is
//! caught. Long campaigns are run by hand: see the README.

use std::path::PathBuf;

use jepsen::client::Workload;
use jepsen::run::{run, RunOpts};

fn opts(keelson: PathBuf, nemesis: &[&str], workload: Workload, seconds: u64, seed: u64) -> RunOpts {
    let out = tempfile::Builder::new().prefix("keelson-jepsen-").tempdir().expect("cannot create a temp dir").keep();
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
        keelson,
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
    let outcome =
        run(opts(keelson, &["partition", "kill", "pause"], Workload::Register, 30, 7)).await.expect("the run");
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
    let outcome = run(opts(keelson, &["kill-leader", "member"], Workload::Set, 20, 11)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "anomalies or unknown outcome; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
}

/// A store that serves "linearizable" reads locally is caught once its leader is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_of_a_faulty_store_are_caught() {
    let outcome = run(opts(faulty_binary(), &["partition-leader"], Workload::Register, 20, 3)).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(false),
        "the fault went unnoticed; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("[INVALID]"), "{}", outcome.summary);
}
