//! The `load` benchmark end to end at a tiny scale: both systems, two rounds, every workload,
//! and the files it writes. Needs etcd 3.4 (`scripts/setup` installs Debian's etcd-server) and the
//! keelson binary (`KEELSON_BIN`, set by `scripts/test`).

use std::process::Command;

const WORKLOADS: usize = 8;
const ROUNDS: usize = 2;

#[test]
fn two_rounds_of_every_workload_on_both_systems_give_medians_and_ratios() {
    let keelson = std::env::var("KEELSON_BIN").expect("KEELSON_BIN must name the keelson binary (see scripts/test)");
    assert!(std::path::Path::new("/usr/bin/etcd").is_file(), "/usr/bin/etcd missing: run scripts/setup");
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["--keelson", &keelson, "--rounds", &ROUNDS.to_string(), "--seconds", "5"])
        .args(["--connections", "4", "--put1-ops", "30", "--put-clients", "16", "--put-ops", "300"])
        .args(["--clients", "8", "--get-ops", "300", "--txn-ops", "100", "--range-keys", "50", "--range-ops", "30"])
        .args(["--watchers", "6", "--watch-events", "20", "--leases", "10", "--lease-streams", "2"])
        .args(["--keepalive-ops", "100"])
        .arg("--data-root")
        .arg(data.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("load runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "load failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    // A workload that fails is skipped with a message, not fatal: none may have.
    assert!(!stderr.contains("skipped"), "a workload was skipped:\n{stderr}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let rounds = results["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), ROUNDS * 2 * WORKLOADS, "{results:#}");
    for row in rounds {
        assert_eq!(row["errors"], 0, "{row:#}");
        assert!(row["ops"].as_u64().unwrap() > 0, "{row:#}");
        assert!(row["rss_mib"].as_f64().unwrap() > 1.0, "{row:#}");
    }
    // The second round starts with the other system.
    let first_of = |round: u64| rounds.iter().find(|r| r["round"] == round).unwrap()["system"].clone();
    assert_ne!(first_of(0), first_of(1));

    let medians = results["results"].as_array().unwrap();
    assert_eq!(medians.len(), 2 * WORKLOADS);
    for m in medians {
        // A median is one of its system's rounds, not a blend of them.
        assert!(rounds.contains(m), "{m:#} is not one of the rounds");
    }
    let ratios = results["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), WORKLOADS);
    for r in ratios {
        let (workload, throughput) = (r["workload"].as_str().unwrap(), r["throughput"].as_f64().unwrap());
        let of = |system: &str| {
            medians.iter().find(|m| m["workload"] == workload && m["system"] == system).unwrap()["ops_per_sec"]
                .as_f64()
                .unwrap()
        };
        assert!((throughput - of("keelson") / of("etcd")).abs() < 1e-9, "{r:#}");
    }
    assert!(stdout.contains("ops/s by round"), "{stdout}");

    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + ROUNDS * 2 * WORKLOADS, "{csv}");
    let svg = std::fs::read_to_string(out.path().join("summary.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("watch-fanout"), "{svg}");
}
