//! `pod-startup`: pod startup latency with real containers on one node. `keelson up` (store, API,
//! scheduler, controller manager and an agent with its own containerd, in one process) runs on a
//! data directory of its own; `--pods` pods of the example web image (already imported, as
//! Kubernetes' SLO assumes) are created at `--rate` pods/s, then deleted, then created again as a
//! burst. For each pod: create (the client's POST) → Running and → Ready, as a watch shows them;
//! p50 and p99 per phase. Then the CPU seconds and peak RSS of the `keelson up` process (all
//! components, the agent among them) and of its containerd. Needs root.
//!
//! There is no anchor run here: Kubernetes' figure is its published SLO (p99 ≤ 5 s, image
//! present), quoted; Keelson's target is p99 ≤ 1 s at 10 pods/s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;

use benches::http::{call, call_retrying, Http};
use benches::procstat::usage;
use benches::report::percentile;
use benches::up::{keelson_binary, UpCluster};

const NAMESPACE: &str = "default";
/// Creations under way at once in the burst.
const WRITES_IN_FLIGHT_MAX: usize = 32;
const API_ATTEMPTS: u32 = 8;
/// How long one phase may take before it is called failed.
const PHASE_DEADLINE: Duration = Duration::from_secs(300);
/// How long `keelson up` may take until its node is Ready.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// How long `keelson up` has to stop after SIGINT.
const STOP_DEADLINE: Duration = Duration::from_secs(90);
/// Kubernetes' pod startup SLO (quoted) and Keelson's target at 10 pods/s.
const SLO_P99: Duration = Duration::from_secs(5);
const TARGET_P99: Duration = Duration::from_secs(1);

#[derive(Parser, Debug, Serialize)]
#[command(name = "pod-startup", about = "Pod startup latency with real containers on one node (keelson up)")]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods per second of the steady phase.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// The cluster's pod range (the node takes a /24 of it).
    #[arg(long, default_value = "10.209.0.0/17")]
    cluster_cidr: String,
    /// The cluster's service range.
    #[arg(long, default_value = "10.209.128.0/17")]
    service_cidr: String,
    #[arg(long, default_value = "kbench0")]
    bridge: String,
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "bench-results/pod-startup")]
    out: PathBuf,
}

#[derive(Default, Clone, Copy)]
struct Times {
    created: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
}

type Shared = Arc<Mutex<HashMap<String, Times>>>;

fn track(t: &Shared, obj: &serde_json::Value) {
    let Some(name) = obj.pointer("/metadata/name").and_then(|v| v.as_str()) else { return };
    let now = Instant::now();
    let running = obj.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running");
    let ready = obj
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let mut t = t.lock().expect("not poisoned");
    let e = t.entry(name.to_string()).or_default();
    if running {
        e.running.get_or_insert(now);
    }
    if ready {
        e.ready.get_or_insert(now);
    }
}

async fn follow(http: Http, base: String, t: Shared) {
    benches::http::follow(&http, &format!("{base}/api/v1/namespaces/{NAMESPACE}/pods"), |obj| track(&t, obj)).await
}

fn pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pod-startup"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "web", "image": "registry.keelson.local/web:1", "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}}],
        },
    })
}

/// Creates `names` at `rate` pods/s (all at once when None), recording each POST's start.
async fn create(http: &Http, base: &str, names: &[String], rate: Option<f64>, t: &Shared) -> Result<()> {
    let gate = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for (i, name) in names.iter().enumerate() {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        t.lock().expect("not poisoned").entry(name.clone()).or_default().created = Some(Instant::now());
        let (http, url, body) =
            (http.clone(), format!("{base}/api/v1/namespaces/{NAMESPACE}/pods"), serde_json::to_vec(&pod(name))?);
        tasks.spawn(async move {
            let r = call_retrying(&http, "POST", url, "application/json", body, API_ATTEMPTS).await.map(|_| ());
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

#[derive(Serialize, Default)]
struct Phase {
    name: String,
    pods: usize,
    seconds: f64,
    running_p50_ms: f64,
    running_p99_ms: f64,
    ready_p50_ms: f64,
    ready_p99_ms: f64,
}

async fn phase(
    http: &Http,
    base: &str,
    t: &Shared,
    label: &str,
    prefix: &str,
    count: usize,
    rate: Option<f64>,
) -> Result<Phase> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let began = Instant::now();
    create(http, base, &names, rate, t).await?;
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let ready = {
            let t = t.lock().expect("not poisoned");
            names.iter().filter(|n| t.get(*n).is_some_and(|p| p.ready.is_some())).count()
        };
        if ready == count {
            break;
        }
        if Instant::now() > deadline {
            bail!("{label}: {ready} of {count} pods Ready after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = t.lock().expect("not poisoned");
    let since = |f: fn(&Times) -> Option<Instant>| -> Vec<f64> {
        names
            .iter()
            .filter_map(|n| t.get(n))
            .filter_map(|p| Some(f(p)?.saturating_duration_since(p.created?).as_secs_f64() * 1e3))
            .collect()
    };
    let (mut running, mut ready) = (since(|p| p.running), since(|p| p.ready));
    Ok(Phase {
        name: label.to_string(),
        pods: count,
        seconds: began.elapsed().as_secs_f64(),
        running_p50_ms: percentile(&mut running, 0.5),
        running_p99_ms: percentile(&mut running, 0.99),
        ready_p50_ms: percentile(&mut ready, 0.5),
        ready_p99_ms: percentile(&mut ready, 0.99),
    })
}

async fn delete_all(http: &Http, base: &str) -> Result<()> {
    call(
        http,
        "DELETE",
        format!("{base}/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=bench%3Dpod-startup&gracePeriodSeconds=0"),
        "application/json",
        vec![],
    )
    .await?;
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let list: serde_json::Value = serde_json::from_slice(
            &call(http, "GET", format!("{base}/api/v1/namespaces/{NAMESPACE}/pods"), "", vec![]).await?,
        )?;
        let left = list["items"].as_array().map(|a| a.len()).unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods still there after deleting them");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Serialize)]
struct Report<'a> {
    params: &'a Args,
    phases: Vec<Phase>,
    keelson_up_cpu_seconds: f64,
    keelson_up_peak_rss_mib: f64,
    containerd_cpu_seconds: f64,
    containerd_peak_rss_mib: f64,
}

async fn run(args: &Args, up: &mut UpCluster) -> Result<()> {
    let http = up.http(WRITES_IN_FLIGHT_MAX, READY_DEADLINE).await?;
    up.wait_ready(&http, READY_DEADLINE).await?;
    let api = up.api.clone();
    let api = api.as_str();
    let t: Shared = Arc::default();
    let watcher = tokio::spawn(follow(http.clone(), api.to_string(), t.clone()));
    let mut phases = Vec::new();
    phases.push(
        phase(
            &http,
            api,
            &t,
            &format!("{} pods at {} pods/s", args.pods, args.rate),
            "steady",
            args.pods,
            Some(args.rate),
        )
        .await?,
    );
    delete_all(&http, api).await?;
    phases.push(phase(&http, api, &t, &format!("{} pods at once", args.pods), "burst", args.pods, None).await?);
    delete_all(&http, api).await?;
    watcher.abort();

    let keelson_up = usage(up.child.id())?;
    let containerd_pid: u32 =
        std::fs::read_to_string(up.data.join("agent/containerd/containerd.pid"))?.trim().parse()?;
    let containerd = usage(containerd_pid)?;
    println!("pod startup with real containers (image present), one node, keelson up");
    println!("{:<24} {:>8} {:>22} {:>22}", "phase", "seconds", "create→Running p50/p99", "create→Ready p50/p99");
    for p in &phases {
        println!(
            "{:<24} {:>8.1} {:>13.0} / {:>4.0} ms {:>13.0} / {:>4.0} ms",
            p.name, p.seconds, p.running_p50_ms, p.running_p99_ms, p.ready_p50_ms, p.ready_p99_ms
        );
    }
    println!(
        "steady p99 Ready: {:.0} ms; target ≤ {} ms ({}); Kubernetes' SLO (published, not measured here): p99 ≤ {} s",
        phases[0].ready_p99_ms,
        TARGET_P99.as_millis(),
        if phases[0].ready_p99_ms <= TARGET_P99.as_millis() as f64 { "met" } else { "missed" },
        SLO_P99.as_secs()
    );
    println!(
        "keelson up (store, API, scheduler, controllers, agent): {:.1} CPU s, peak RSS {:.0} MiB; its containerd: {:.1} CPU s, peak RSS {:.0} MiB",
        keelson_up.cpu_seconds, keelson_up.peak_rss_mib, containerd.cpu_seconds, containerd.peak_rss_mib
    );
    let report = Report {
        params: args,
        phases,
        keelson_up_cpu_seconds: keelson_up.cpu_seconds,
        keelson_up_peak_rss_mib: keelson_up.peak_rss_mib,
        containerd_cpu_seconds: containerd.cpu_seconds,
        containerd_peak_rss_mib: containerd.peak_rss_mib,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let keelson = keelson_binary(args.keelson.as_deref())?;
    let mut up = UpCluster::start(
        &keelson,
        &args.data_root,
        "keelson-pod-startup-",
        &args.cluster_cidr,
        &args.service_cidr,
        &args.bridge,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = runtime.block_on(run(&args, &mut up));
    up.stop(STOP_DEADLINE)?;
    result
}
