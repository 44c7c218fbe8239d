//! `endpoint-latency`: how long an endpoint change takes to reach a node's rules, end to end.
//! `keelson up` runs one web pod and `--services` selectorless Services with `--endpoints`
//! endpoints each (hand-written EndpointSlices, so that the node's table is as large as a busy
//! cluster's); a selectorless Service `probe` has none, so its cluster IP refuses connections.
//! Each of `--changes` rounds writes an EndpointSlice naming the web pod for `probe` and times,
//! from the write, the first connection to the cluster IP that the pod accepts (the agent saw the
//! slice through its watch, synced and applied the rules), then deletes the slice and times the
//! first refused connection. Needs root.
//!
//! kube-proxy cannot run here; its project publishes network programming latency only as an SLO
//! (p99 ≤ 30 s at 5,000 nodes, including the endpoints controller), quoted for scale.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;

use benches::http::call_json as api_json;
use benches::report::percentile;
use benches::up::{keelson_binary, run_pod, UpCluster};

const READY_DEADLINE: Duration = Duration::from_secs(120);
const STOP_DEADLINE: Duration = Duration::from_secs(90);
/// A change not in the rules after this long fails the run.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);
/// Between two connection attempts while waiting for a change.
const POLL: Duration = Duration::from_millis(1);
/// Background objects created at once.
const CREATES_IN_FLIGHT_MAX: usize = 16;

#[derive(Parser, Debug, Serialize)]
#[command(name = "endpoint-latency", about = "Endpoint change to the node's rules, end to end (keelson up)")]
struct Args {
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// Background services (each with its own EndpointSlice).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per background service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Changes timed (each an addition and a removal).
    #[arg(long, default_value_t = 50)]
    changes: usize,
    #[arg(long, default_value = "10.209.0.0/17")]
    cluster_cidr: String,
    #[arg(long, default_value = "10.209.128.0/17")]
    service_cidr: String,
    #[arg(long, default_value = "kbench3")]
    bridge: String,
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "bench-results/endpoint-latency")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Latency {
    changes: usize,
    /// Every change's latency, in order.
    samples_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency(samples: &[Duration]) -> Latency {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let max = ms.iter().copied().fold(0.0, f64::max);
    let samples_ms = ms.clone();
    Latency {
        changes: ms.len(),
        samples_ms,
        p50_ms: percentile(&mut ms, 0.5),
        p99_ms: percentile(&mut ms, 0.99),
        max_ms: max,
    }
}

/// Whether a connection to `addr` is accepted (`Some(true)`), refused (`Some(false)`), or
/// neither within a moment (`None`).
async fn accepted(addr: SocketAddr) -> Option<bool> {
    match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(false),
        _ => None,
    }
}

/// Polls until connections to `addr` are `want` (accepted or refused); the time since `since`.
async fn until(addr: SocketAddr, want: bool, since: Instant) -> Result<Duration> {
    loop {
        if accepted(addr).await == Some(want) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > CHANGE_DEADLINE {
            bail!("{addr} did not become {} within {CHANGE_DEADLINE:?}", if want { "accepted" } else { "refused" });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn slice(name: &str, service: &str, ips: &[String]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> =
        ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
    })
}

async fn run(args: &Args, up: &mut UpCluster) -> Result<()> {
    let http = up.http(CREATES_IN_FLIGHT_MAX, READY_DEADLINE).await?;
    up.wait_ready(&http, READY_DEADLINE).await?;
    let api = up.api.clone();
    let ns = format!("{api}/api/v1/namespaces/default");
    let slices = format!("{api}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"}, "spec": {"containers": [{"name": "web", "image": "registry.keelson.local/web:1", "ports": [{"containerPort": 80}]}]}});
    let pod_ip = run_pod(&http, &api, pod, READY_DEADLINE).await?;
    // The background: services with endpoints that exist only as rules.
    let started = Instant::now();
    let mut creating = tokio::task::JoinSet::new();
    for i in 0..args.services {
        if creating.len() >= CREATES_IN_FLIGHT_MAX {
            creating.join_next().await.context("a create task")???;
        }
        let (http, ns, slices, per) = (http.clone(), ns.clone(), slices.clone(), args.endpoints);
        creating.spawn(async move {
            let name = format!("bg-{i}");
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
            api_json(&http, "POST", format!("{ns}/services"), svc).await?;
            let ips: Vec<String> = (0..per).map(|e| format!("10.209.{}.{}", 64 + (i * per + e) / 250 % 60, 2 + (i * per + e) % 250)).collect();
            api_json(&http, "POST", slices, slice(&format!("{name}-1"), &name, &ips)).await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = creating.join_next().await {
        r??;
    }
    let probe = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"}, "spec": {"ports": [{"port": 80}]}});
    let probe = api_json(&http, "POST", format!("{ns}/services"), probe).await?;
    let cluster_ip =
        probe.pointer("/spec/clusterIP").and_then(|v| v.as_str()).context("the probe service has no cluster IP")?;
    let addr: SocketAddr = format!("{cluster_ip}:80").parse()?;
    // The node's rules hold every background service and refuse the probe's.
    until(addr, false, Instant::now()).await.context("the probe service is not refused")?;
    println!(
        "{} background services of {} endpoints written in {:.1} s",
        args.services,
        args.endpoints,
        started.elapsed().as_secs_f64()
    );

    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for _ in 0..args.changes {
        let at = Instant::now();
        api_json(&http, "POST", slices.clone(), slice("probe-1", "probe", std::slice::from_ref(&pod_ip))).await?;
        added.push(until(addr, true, at).await?);
        let at = Instant::now();
        api_json(&http, "DELETE", format!("{slices}/probe-1"), serde_json::Value::Null).await?;
        removed.push(until(addr, false, at).await?);
    }
    let (a, r) = (latency(&added), latency(&removed));
    println!(
        "endpoint change → the node's rules (from the API write to the first connection that shows it), {} changes",
        args.changes
    );
    println!("{:<24} {:>10} {:>10} {:>10}", "change", "p50 ms", "p99 ms", "max ms");
    println!("{:<24} {:>10.1} {:>10.1} {:>10.1}", "endpoint added", a.p50_ms, a.p99_ms, a.max_ms);
    println!("{:<24} {:>10.1} {:>10.1} {:>10.1}", "endpoint removed", r.p50_ms, r.p99_ms, r.max_ms);
    println!("Kubernetes' published SLO for network programming latency (quoted, not measured here): p99 <= 30 s");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&json!({"params": args, "added": a, "removed": r}))?,
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let keelson = keelson_binary(args.keelson.as_deref())?;
    let mut up = UpCluster::start(
        &keelson,
        &args.data_root,
        "keelson-endpoint-latency-",
        &args.cluster_cidr,
        &args.service_cidr,
        &args.bridge,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = runtime.block_on(run(&args, &mut up));
    // The cluster's log goes with the report.
    if std::fs::create_dir_all(&args.out).is_ok() {
        let _ = std::fs::copy(up.data.join("up.log"), args.out.join("up.log"));
    }
    up.stop(STOP_DEADLINE)?;
    result
}
