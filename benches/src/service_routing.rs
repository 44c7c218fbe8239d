//! `service-routing`: what the service proxy costs a request. `keelson up` runs one pod of the
//! example web server (busybox httpd) behind a ClusterIP Service, and a client pod; from the
//! client pod (its network namespace) and from the host, `--clients` clients each send GET
//! requests, one TCP connection per request (so every request is a new connection through
//! conntrack and the DNAT rules), to the pod's address and to the Service's cluster IP, in
//! alternating rounds so that all see the same noise. Requests per second and p50/p99 latency
//! for each, and the ratios: the proxy's cost. Needs root.
//!
//! The anchor is the same pod addressed directly, measured in the same run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use benches::http::call_json as api_json;
use benches::report::percentile;
use benches::up::{in_pod, keelson_binary, run_pod, UpCluster};

const READY_DEADLINE: Duration = Duration::from_secs(120);
const STOP_DEADLINE: Duration = Duration::from_secs(90);
/// One request may take this long before the run is called failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug, Serialize)]
#[command(
    name = "service-routing",
    about = "Requests through a ClusterIP against the same pod addressed directly (keelson up)"
)]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// Requests per round.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Rounds per target (they alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value = "10.208.0.0/17")]
    cluster_cidr: String,
    #[arg(long, default_value = "10.208.128.0/17")]
    service_cidr: String,
    #[arg(long, default_value = "kbench1")]
    bridge: String,
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "bench-results/service-routing")]
    out: PathBuf,
}

#[derive(Serialize, Default)]
struct Target {
    requests: usize,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One GET over a new connection; its latency.
async fn get(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        anyhow::ensure!(
            body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"),
            "answer: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.context("no answer")??;
    Ok(started.elapsed())
}

/// `n` requests to `addr` from `clients` clients; their latencies and the elapsed time.
async fn round(addr: SocketAddr, n: usize, clients: usize) -> Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let per = n.div_ceil(clients.max(1));
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    lat.push(get(addr).await?);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

fn summary(latencies: &[Duration], seconds: f64) -> Target {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Target {
        requests: ms.len(),
        seconds,
        rps: ms.len() as f64 / seconds,
        p50_ms: percentile(&mut ms, 0.5),
        p99_ms: percentile(&mut ms, 0.99),
    }
}

async fn run(args: &Args, up: &mut UpCluster) -> Result<()> {
    let http = up.http(4, READY_DEADLINE).await?;
    up.wait_ready(&http, READY_DEADLINE).await?;
    let api = up.api.clone();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "routing-0", "labels": {"app": "routing"}},
        "spec": {"containers": [{"name": "web", "image": "registry.keelson.local/web:1", "ports": [{"containerPort": 80}]}]},
    });
    let pod_ip = run_pod(&http, &api, pod, READY_DEADLINE).await?;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "routing"}, "spec": {"selector": {"app": "routing"}, "ports": [{"port": 80}]}});
    let svc = api_json(&http, "POST", format!("{api}/api/v1/namespaces/default/services"), svc).await?;
    let cluster_ip =
        svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()).context("the service has no cluster IP")?.to_string();
    let client_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "routing-client"},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sleep", "3600"]}]},
    });
    let client_ip = run_pod(&http, &api, client_pod, READY_DEADLINE).await?;
    let deadline = Instant::now() + READY_DEADLINE;
    let direct: SocketAddr = format!("{pod_ip}:80").parse()?;
    let service: SocketAddr = format!("{cluster_ip}:80").parse()?;
    // The cluster IP answers once the node's rules hold it (until then its range is dropped).
    while get(service).await.is_err() {
        if Instant::now() > deadline {
            bail!("the service does not answer after {READY_DEADLINE:?}");
        }
    }
    round(direct, 200, args.clients).await?;
    round(service, 200, args.clients).await?;
    let from_pod = |addr: SocketAddr, n: usize, clients: usize| {
        let ip = client_ip.clone();
        async move { tokio::task::spawn_blocking(move || in_pod(&ip, move || Box::pin(round(addr, n, clients)))).await? }
    };
    from_pod(direct, 200, args.clients).await?;
    from_pod(service, 200, args.clients).await?;

    // Host → pod, host → cluster IP, pod → pod, pod → cluster IP, in turn each round.
    let mut lat: [Vec<Duration>; 4] = Default::default();
    let mut secs = [0.0f64; 4];
    for _ in 0..args.rounds {
        for (i, (from_host, addr)) in
            [(true, direct), (true, service), (false, direct), (false, service)].into_iter().enumerate()
        {
            let (l, t) = if from_host {
                round(addr, args.requests, args.clients).await?
            } else {
                from_pod(addr, args.requests, args.clients).await?
            };
            lat[i].extend(l);
            secs[i] += t.as_secs_f64();
        }
    }
    let [hd, hs, pd, ps] = [0, 1, 2, 3].map(|i| summary(&lat[i], secs[i]));
    println!("service routing: one busybox httpd pod, {} clients, a new connection per request, {} rounds of {} requests each", args.clients, args.rounds, args.requests);
    println!("{:<40} {:>10} {:>10} {:>10}", "from → to", "req/s", "p50 ms", "p99 ms");
    for (label, t) in [
        (format!("pod → pod ({pod_ip})"), &pd),
        (format!("pod → cluster IP ({cluster_ip})"), &ps),
        (format!("host → pod ({pod_ip})"), &hd),
        (format!("host → cluster IP ({cluster_ip})"), &hs),
    ] {
        println!("{label:<40} {:>10.0} {:>10.3} {:>10.3}", t.rps, t.p50_ms, t.p99_ms);
    }
    println!("from a pod, cluster IP / direct: throughput {:.2}x, p99 {:.2}x", ps.rps / pd.rps, ps.p99_ms / pd.p99_ms);
    println!(
        "from the host, cluster IP / direct: throughput {:.2}x, p99 {:.2}x",
        hs.rps / hd.rps,
        hs.p99_ms / hd.p99_ms
    );
    std::fs::create_dir_all(&args.out)?;
    let report =
        json!({"params": args, "pod_direct": pd, "pod_cluster_ip": ps, "host_direct": hd, "host_cluster_ip": hs});
    std::fs::write(args.out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let keelson = keelson_binary(args.keelson.as_deref())?;
    let mut up = UpCluster::start(
        &keelson,
        &args.data_root,
        "keelson-service-routing-",
        &args.cluster_cidr,
        &args.service_cidr,
        &args.bridge,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = runtime.block_on(run(&args, &mut up));
    up.stop(STOP_DEADLINE)?;
    result
}
