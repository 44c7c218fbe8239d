//! The `api-load` benchmark end to end at a tiny scale: three `keelson server` processes, two
//! rate steps, watchers, and the results it writes. Needs the keelson binary (`KEELSON_BIN`, set
//! by `scripts/test`).

use std::process::Command;

#[test]
fn two_rate_steps_give_latencies_per_verb_and_every_watch_event() {
    let keelson = std::env::var("KEELSON_BIN").expect("KEELSON_BIN must name the keelson binary (see scripts/test)");
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_api-load"))
        .args(["--keelson", &keelson, "--rates", "20,40", "--seconds", "1", "--watchers", "3"])
        .arg("--data-root")
        .arg(data.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("api-load runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "api-load failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 4, "{results:#}");
    for rate in [20u64, 40] {
        let of = |verb: &str| rows.iter().find(|r| r["step_rate"] == rate && r["verb"] == verb).unwrap().clone();
        for verb in ["create", "patch"] {
            let r = of(verb);
            assert_eq!((r["ops"].as_u64(), r["errors"].as_u64()), (Some(rate), Some(0)), "{r:#}");
            assert!(r["p99_ms"].as_f64().unwrap() > 0.0, "{r:#}");
        }
        assert!(of("list")["ops"].as_u64().unwrap() >= 1);
        // Every watcher saw every created pod.
        let w = of("watch ADDED");
        assert_eq!((w["ops"].as_u64(), w["errors"].as_u64()), (Some(3 * rate), Some(0)), "{w:#}");
    }
    assert!(stdout.contains("p99/target"), "{stdout}");
}
