//! A short campaign against etcd itself (Debian's etcd 3.4, started by the harness with etcd's own
//! flags in the same network namespaces): the checkers must acquit a correct reference store, and
//! must report etcd's known progress-notification bug (issue 15220, fixed in 3.4.31) as a finding,
//! not as lost events. Fails, never skips, without /usr/bin/etcd or root.

use std::path::PathBuf;

use jepsen::checker::PROGRESS_AHEAD_FINDING;
use jepsen::client::Workload;
use jepsen::cluster::{etcd_progress_is_ordered, etcd_version, System, ETCD_DEFAULT_PATH};
use jepsen::run::{run, RunOpts};

/// A run's output: removed after a passing test, kept after a failing one.
struct OutDir(Option<tempfile::TempDir>);

impl Drop for OutDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!("kept the run's output in {}", dir.keep().display());
            }
        }
    }
}

fn etcd_binary() -> PathBuf {
    let path = PathBuf::from(ETCD_DEFAULT_PATH);
    assert!(path.is_file(), "{ETCD_DEFAULT_PATH} is missing: install Debian's etcd-server (scripts/setup does)");
    path
}

/// A set under kills, pauses and partitions of etcd members: nothing lost, watches intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_set_under_kills_pauses_and_partitions_is_valid() {
    let etcd = etcd_binary();
    let version = etcd_version(&etcd).expect("etcd's version");
    let out = OutDir(Some(tempfile::Builder::new().prefix("keelson-jepsen-etcd-").tempdir().expect("a temp dir")));
    let opts = RunOpts {
        nodes: 3,
        time_limit_s: 15,
        nemesis: ["kill", "pause", "partition"].map(String::from).to_vec(),
        nemesis_interval_s: 3,
        workload: Workload::Set,
        seed: 21,
        concurrency: 8,
        keys: 4,
        watchers: 3,
        check_time_limit_s: 60,
        system: System::Etcd,
        binary: etcd,
        out: out.0.as_ref().expect("present until drop").path().to_path_buf(),
    };
    let outcome = run(opts).await.expect("the run");
    assert_eq!(
        outcome.valid,
        Some(true),
        "etcd was not acquitted; report in {}:\n{}",
        outcome.dir.display(),
        outcome.summary
    );
    assert!(outcome.summary.contains("target: etcd 3."), "{}", outcome.summary);
    if !etcd_progress_is_ordered(version) {
        // The reference watch asks for progress as it starts to catch up from revision 1: an etcd
        // with the bug answers with the head revision before sending a single event.
        assert!(
            outcome.summary.contains(&format!("[finding] {PROGRESS_AHEAD_FINDING}")),
            "etcd {version:?} should show its progress-notification bug:\n{}",
            outcome.summary
        );
    }
}
