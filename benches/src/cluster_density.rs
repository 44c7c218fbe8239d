//! `cluster-density`: Deployments on the whole stack — three `keelson server` members (store, API,
//! scheduler and controller manager replicas; one of each leads), one `keelson agent --runtime
//! hollow` process holding every node. Phases: `--deployments` Deployments of `--replicas` each
//! created as fast as the API takes them, until every one is Available (pods per second end to
//! end, pod startup latency as Kubernetes' SLO measures it: from the pod's first appearance in a
//! watch to its Running status in it); a rolling update of all of them; and pods started at a
//! steady `--steady-rate` pods/s (Deployments of `--replicas` at the matching rate), whose startup
//! latency p99 Kubernetes' SLO puts at 5 s. Each process's peak RSS and CPU seconds are printed.
//! There is no anchor run here: Kubernetes' figures are its published SLO, quoted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use benches::cluster::Ports;
use benches::http::{call_retrying, wait_serving, Http};
use benches::procstat::usage;
use benches::report::percentile;

const NAMESPACE: &str = "density";
/// Creations (and patches) under way at once.
const WRITES_IN_FLIGHT_MAX: usize = 64;
/// Tries of an API call that fails for a passing reason.
const API_ATTEMPTS: u32 = 8;
/// How long a phase may take before it is called failed.
const PHASE_DEADLINE: Duration = Duration::from_secs(600);
/// How long the agent may take to register its nodes.
const NODES_DEADLINE: Duration = Duration::from_secs(300);
/// Kubernetes' pod startup SLO: p99 within this (quoted, not measured here).
const SLO_STARTUP_P99: Duration = Duration::from_secs(5);

#[derive(Parser, Debug, Serialize)]
#[command(name = "cluster-density", about = "Deployments end to end on Keelson's whole stack")]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    #[arg(long, default_value_t = 10)]
    replicas: usize,
    /// Pods per second of the steady phase (0 leaves it out).
    #[arg(long, default_value_t = 100)]
    steady_rate: usize,
    /// How long the steady phase lasts, in seconds.
    #[arg(long, default_value_t = 20)]
    steady_seconds: usize,
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "bench-results/density")]
    out: PathBuf,
}

#[derive(Default, Clone, Copy)]
struct PodTimes {
    seen: Option<Instant>,
    running: Option<Instant>,
}

#[derive(Default, Clone, Copy)]
struct DeployTimes {
    available: Option<Instant>,
    generation: i64,
    updated: Option<Instant>,
}

#[derive(Default)]
struct Tracker {
    pods: HashMap<String, PodTimes>,
    deployments: HashMap<String, DeployTimes>,
}

type Shared = Arc<Mutex<Tracker>>;

fn track_pod(t: &Shared, obj: &serde_json::Value) {
    let Some(name) = obj.pointer("/metadata/name").and_then(|v| v.as_str()) else { return };
    let now = Instant::now();
    let mut t = t.lock().expect("not poisoned");
    let e = t.pods.entry(name.to_string()).or_default();
    e.seen.get_or_insert(now);
    if e.running.is_none() && obj.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running") {
        e.running = Some(now);
    }
}

fn track_deployment(t: &Shared, obj: &serde_json::Value) {
    let Some(name) = obj.pointer("/metadata/name").and_then(|v| v.as_str()) else { return };
    let n = |p: &str| obj.pointer(p).and_then(|v| v.as_i64()).unwrap_or(0);
    let now = Instant::now();
    let want = n("/spec/replicas");
    let done = n("/status/availableReplicas") == want
        && n("/status/updatedReplicas") == want
        && n("/status/replicas") == want
        && n("/status/observedGeneration") >= n("/metadata/generation");
    let mut t = t.lock().expect("not poisoned");
    let e = t.deployments.entry(name.to_string()).or_default();
    let generation = n("/metadata/generation");
    if generation > e.generation {
        e.generation = generation;
        e.updated = None;
    }
    if done {
        e.available.get_or_insert(now);
        e.updated.get_or_insert(now);
    }
}

/// Follows `resource` in the namespace into the tracker: a list, then a watch, again on a break.
async fn follow(http: Http, base: String, resource: &'static str, t: Shared) {
    let path = if resource == "pods" {
        format!("/api/v1/namespaces/{NAMESPACE}/pods")
    } else {
        format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments")
    };
    benches::http::follow(&http, &format!("{base}{path}"), |obj| {
        if resource == "pods" {
            track_pod(&t, obj)
        } else {
            track_deployment(&t, obj)
        }
    })
    .await
}

fn deployment(name: &str, replicas: usize, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name, "group": "density"}},
                              "spec": {"containers": [{"name": "c", "image": image, "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}}}
    })
}

async fn create_deployments(
    http: &Http,
    bases: &[String],
    names: &[String],
    replicas: usize,
    per_second: Option<f64>,
) -> Result<()> {
    let gate = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for (i, name) in names.iter().enumerate() {
        if let Some(rate) = per_second {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let body = serde_json::to_vec(&deployment(name, replicas, "app:1"))?;
        let url = format!("{}/apis/apps/v1/namespaces/{NAMESPACE}/deployments", bases[i % bases.len()]);
        let http = http.clone();
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

async fn wait_until(what: &str, t: &Shared, done: impl Fn(&Tracker) -> (usize, usize)) -> Result<Instant> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        let (have, want) = done(&t.lock().expect("not poisoned"));
        if have >= want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{what}: {have} of {want} after {PHASE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Startup latencies (ms) of the pods whose names start with any of `prefixes`.
fn startups(t: &Tracker, prefixes: &[String]) -> Vec<f64> {
    t.pods
        .iter()
        .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(&format!("{p}-"))))
        .filter_map(|(_, p)| Some(p.running?.saturating_duration_since(p.seen?).as_secs_f64() * 1e3))
        .collect()
}

#[derive(Serialize)]
struct Report {
    params: serde_json::Value,
    density_seconds: f64,
    density_pods_per_second: f64,
    density_startup_p50_ms: f64,
    density_startup_p99_ms: f64,
    rollout_seconds: f64,
    steady_rate: usize,
    steady_startup_p50_ms: f64,
    steady_startup_p99_ms: f64,
    processes: Vec<(String, f64, f64)>,
}

async fn run(args: Args) -> Result<()> {
    let keelson = match &args.keelson {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let root = tempfile::Builder::new().prefix("keelson-density-").tempdir_in(&args.data_root)?;
    let ports = Ports::free()?;
    let servers = benches::cluster::Servers::start(&keelson, root.path(), &ports, &[]).await?;
    let http = benches::http::client(WRITES_IN_FLIGHT_MAX, Some(&servers.kubeconfig_text))?;
    let kubeconfig_args = servers.kubeconfig_args();
    let (mut cluster, bases) = (servers.cluster, servers.bases);
    wait_serving(&http, &bases, Duration::from_secs(30)).await?;
    let agent_log = std::fs::File::create(root.path().join("agent.log"))?;
    let mut agent = std::process::Command::new(&keelson)
        .arg("agent")
        .args(&kubeconfig_args)
        .args(["--runtime", "hollow", "--hollow-nodes", &args.nodes.to_string(), "--hollow-zones", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(agent_log)
        .spawn()
        .context("starting the hollow agent")?;
    let result = phases(&args, &http, &bases).await;
    let mut processes = Vec::new();
    for (i, pid) in cluster.pids().into_iter().enumerate() {
        let u = usage(pid)?;
        processes.push((format!("server-{}", i + 1), u.peak_rss_mib, u.cpu_seconds));
    }
    let u = usage(agent.id())?;
    processes.push(("agent".to_string(), u.peak_rss_mib, u.cpu_seconds));
    let _ = agent.kill();
    let _ = agent.wait();
    cluster.check_alive()?;
    let mut report = result?;
    report.processes = processes;
    report.params = serde_json::to_value(&args)?;
    for (name, rss, cpu) in &report.processes {
        println!("    {name:<9} peak RSS {rss:>8.1} MiB  CPU {cpu:>6.1} s");
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&report)?)?;
    println!("wrote results.json to {}", args.out.display());
    Ok(())
}

async fn phases(args: &Args, http: &Http, bases: &[String]) -> Result<Report> {
    let deadline = Instant::now() + NODES_DEADLINE;
    loop {
        let list = call_retrying(
            http,
            "GET",
            format!("{}/api/v1/nodes?resourceVersion=0", bases[0]),
            "",
            vec![],
            API_ATTEMPTS,
        )
        .await?;
        let ready = memchr::memmem::find_iter(&list, br#""reason":"KubeletReady""#).count();
        if ready >= args.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("{ready} of {} nodes registered", args.nodes);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("{} nodes ready", args.nodes);
    let ns = serde_json::to_vec(&json!({"metadata": {"name": NAMESPACE}}))?;
    call_retrying(http, "POST", format!("{}/api/v1/namespaces", bases[0]), "application/json", ns, API_ATTEMPTS)
        .await?;
    let t: Shared = Arc::default();
    let watches = [
        tokio::spawn(follow(http.clone(), bases[1 % bases.len()].clone(), "pods", t.clone())),
        tokio::spawn(follow(http.clone(), bases[2 % bases.len()].clone(), "deployments", t.clone())),
    ];

    // Density: every deployment at once.
    let names: Vec<String> = (0..args.deployments).map(|i| format!("d{i}")).collect();
    let total_pods = args.deployments * args.replicas;
    let started = Instant::now();
    create_deployments(http, bases, &names, args.replicas, None).await?;
    let created_in = started.elapsed();
    let all_available = |t: &Tracker| {
        (names.iter().filter(|n| t.deployments.get(*n).is_some_and(|d| d.available.is_some())).count(), names.len())
    };
    let done = wait_until("deployments available", &t, all_available).await?;
    let density = done.duration_since(started);
    let (mut d_startup, pods_seen) = {
        let t = t.lock().expect("not poisoned");
        (startups(&t, &names), t.pods.len())
    };
    let (d50, d99) = (percentile(&mut d_startup, 0.5), percentile(&mut d_startup, 0.99));
    println!(
        "density: {total_pods} pods in {} deployments Available in {:.1} s ({:.0} pods/s end to end; created in {:.1} s; {pods_seen} pods seen)  startup p50 {d50:.0} ms p99 {d99:.0} ms",
        args.deployments,
        density.as_secs_f64(),
        total_pods as f64 / density.as_secs_f64(),
        created_in.as_secs_f64()
    );

    // A rolling update of every deployment.
    let started = Instant::now();
    {
        let gate = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let permit = gate.clone().acquire_owned().await?;
            let patch = serde_json::to_vec(
                &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "app:2"}]}}}}),
            )?;
            let url = format!("{}/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}", bases[i % bases.len()]);
            let http = http.clone();
            tasks.spawn(async move {
                let r =
                    call_retrying(&http, "PATCH", url, "application/strategic-merge-patch+json", patch, API_ATTEMPTS)
                        .await
                        .map(|_| ());
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    let all_updated = |t: &Tracker| {
        (
            names
                .iter()
                .filter(|n| t.deployments.get(*n).is_some_and(|d| d.generation >= 2 && d.updated.is_some()))
                .count(),
            names.len(),
        )
    };
    let rolled = wait_until("deployments rolled out", &t, all_updated).await?.duration_since(started);
    println!("rolling update: {} deployments rolled out in {:.1} s", args.deployments, rolled.as_secs_f64());

    // Steady arrivals.
    let (mut s50, mut s99) = (0.0, 0.0);
    if args.steady_rate > 0 {
        let count = (args.steady_rate * args.steady_seconds / args.replicas).max(1);
        let steady: Vec<String> = (0..count).map(|i| format!("s{i}")).collect();
        create_deployments(http, bases, &steady, args.replicas, Some(args.steady_rate as f64 / args.replicas as f64))
            .await?;
        let all = |t: &Tracker| {
            (
                steady.iter().filter(|n| t.deployments.get(*n).is_some_and(|d| d.available.is_some())).count(),
                steady.len(),
            )
        };
        wait_until("steady deployments available", &t, all).await?;
        let mut s = startups(&t.lock().expect("not poisoned"), &steady);
        s50 = percentile(&mut s, 0.5);
        s99 = percentile(&mut s, 0.99);
        println!(
            "steady: {} pods/s for {} s: startup p50 {s50:.0} ms p99 {s99:.0} ms (Kubernetes' SLO, quoted: p99 ≤ {} s)",
            args.steady_rate,
            args.steady_seconds,
            SLO_STARTUP_P99.as_secs()
        );
    }
    for w in watches {
        w.abort();
    }
    Ok(Report {
        params: json!({}),
        density_seconds: density.as_secs_f64(),
        density_pods_per_second: total_pods as f64 / density.as_secs_f64(),
        density_startup_p50_ms: d50,
        density_startup_p99_ms: d99,
        rollout_seconds: rolled.as_secs_f64(),
        steady_rate: args.steady_rate,
        steady_startup_p50_ms: s50,
        steady_startup_p99_ms: s99,
        processes: Vec::new(),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-density: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
