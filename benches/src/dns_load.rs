//! `dns-load`: cluster DNS under load. `keelson up` runs with `--services` Services; `--clients`
//! clients send A queries for service names (`<svc>.default.svc.cluster.local`, answered from
//! the server's in-memory zone), each waiting for its answer before the next: from a pod (its
//! network namespace) to the `kube-dns` Service's cluster IP, as a pod's resolver asks, and from
//! the host to the same server directly on loopback (at the port its EndpointSlice names), in
//! alternating rounds. Queries per second and p50/p99 latency for each. Needs root.
//!
//! CoreDNS cannot run here; no anchor is measured in the same run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use serde_json::json;

use benches::http::call_json as api_json;
use benches::report::percentile;
use benches::up::{in_pod, keelson_binary, run_pod, UpCluster};

const READY_DEADLINE: Duration = Duration::from_secs(120);
const STOP_DEADLINE: Duration = Duration::from_secs(90);
/// A query unanswered for this long counts as lost (UDP) and is sent again as a new one.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug, Serialize)]
#[command(name = "dns-load", about = "Cluster DNS queries per second and latency (keelson up)")]
struct Args {
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// Services in the zone.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// Queries per round.
    #[arg(long, default_value_t = 20000)]
    queries: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value = "10.207.0.0/17")]
    cluster_cidr: String,
    #[arg(long, default_value = "10.207.128.0/17")]
    service_cidr: String,
    #[arg(long, default_value = "kbench2")]
    bridge: String,
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    #[arg(long, default_value = "bench-results/dns-load")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Target {
    queries: usize,
    lost: usize,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// `n` queries for the services' names to `server` from `clients` clients: latencies, losses,
/// the elapsed time.
async fn round(
    server: SocketAddr,
    services: usize,
    n: usize,
    clients: usize,
) -> Result<(Vec<Duration>, usize, Duration)> {
    let started = Instant::now();
    let per = n.div_ceil(clients.max(1));
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|c| {
            tokio::spawn(async move {
                let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
                socket.connect(server).await?;
                let (mut lat, mut lost) = (Vec::with_capacity(per), 0usize);
                let mut buf = [0u8; 1500];
                for i in 0..per {
                    let id = (i as u16).wrapping_mul(7).wrapping_add(c as u16);
                    let name = format!("svc-{}.default.svc.cluster.local.", (i * 31 + c) % services);
                    let sent = Instant::now();
                    socket.send(&query(id, &name)?).await?;
                    loop {
                        match tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf)).await {
                            Ok(Ok(len)) => {
                                let m = Message::from_vec(&buf[..len])?;
                                if m.metadata.id != id {
                                    continue;
                                }
                                anyhow::ensure!(!m.answers.is_empty(), "no answer for {name}");
                                lat.push(sent.elapsed());
                            }
                            Ok(Err(e)) => return Err(e.into()),
                            Err(_) => lost += 1,
                        }
                        break;
                    }
                }
                anyhow::Ok((lat, lost))
            })
        })
        .collect();
    let (mut all, mut lost) = (Vec::with_capacity(n), 0);
    for t in tasks {
        let (l, x) = t.await??;
        all.extend(l);
        lost += x;
    }
    Ok((all, lost, started.elapsed()))
}

fn summary(lat: &[Duration], lost: usize, seconds: f64) -> Target {
    let mut ms: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    Target {
        queries: ms.len(),
        lost,
        qps: ms.len() as f64 / seconds,
        p50_ms: percentile(&mut ms, 0.5),
        p99_ms: percentile(&mut ms, 0.99),
    }
}

async fn run(args: &Args, up: &mut UpCluster) -> Result<()> {
    let http = up.http(4, READY_DEADLINE).await?;
    up.wait_ready(&http, READY_DEADLINE).await?;
    let api = up.api.clone();
    for i in 0..args.services {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"port": 80}]}});
        api_json(&http, "POST", format!("{api}/api/v1/namespaces/default/services"), svc).await?;
    }
    // The pod the queries are sent from (it also makes the node's bridge, where DNS is reached).
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dns-client"}, "spec": {"containers": [{"name": "web", "image": "registry.keelson.local/web:1"}]}});
    let pod_ip = run_pod(&http, &api, pod, READY_DEADLINE).await?;
    let deadline = Instant::now() + READY_DEADLINE;
    // The server on loopback at the port its EndpointSlice names; the Service's cluster IP.
    let direct: SocketAddr = loop {
        let slices = api_json(&http, "GET", format!("{api}/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices?labelSelector=kubernetes.io/service-name%3Dkube-dns"), serde_json::Value::Null).await?;
        let first = slices.pointer("/items/0");
        if let Some(port) = first.and_then(|s| s.pointer("/ports/0/port")).and_then(|v| v.as_u64()) {
            break format!("127.0.0.1:{port}").parse()?;
        }
        if Instant::now() > deadline {
            bail!("cluster DNS published no endpoint within {READY_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every name resolves before the clock starts.
    loop {
        match round(direct, args.services, args.services, 1).await {
            Ok((_, 0, _)) => break,
            other if Instant::now() > deadline => {
                bail!("not every service name resolves within {READY_DEADLINE:?}: {:?}", other.map(|(_, lost, _)| lost))
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let svc = api_json(
        &http,
        "GET",
        format!("{api}/api/v1/namespaces/kube-system/services/kube-dns"),
        serde_json::Value::Null,
    )
    .await?;
    let service: SocketAddr = format!(
        "{}:53",
        svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()).context("kube-dns has no cluster IP")?
    )
    .parse()?;
    let from_pod = |n: usize, clients: usize| {
        let (ip, services) = (pod_ip.clone(), args.services);
        async move {
            tokio::task::spawn_blocking(move || in_pod(&ip, move || Box::pin(round(service, services, n, clients))))
                .await?
        }
    };
    // The pod's path works before the clock starts (the node's rules hold the Service).
    loop {
        match from_pod(args.services, 1).await {
            Ok((_, 0, _)) => break,
            other if Instant::now() > deadline => bail!(
                "the kube-dns Service does not answer the pod within {READY_DEADLINE:?}: {:?}",
                other.map(|(_, lost, _)| lost)
            ),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let (mut d, mut p) = ((Vec::new(), 0, 0.0), (Vec::new(), 0, 0.0));
    for _ in 0..args.rounds {
        let (l, x, t) = round(direct, args.services, args.queries, args.clients).await?;
        d.0.extend(l);
        d.1 += x;
        d.2 += t.as_secs_f64();
        let (l, x, t) = from_pod(args.queries, args.clients).await?;
        p.0.extend(l);
        p.1 += x;
        p.2 += t.as_secs_f64();
    }
    let (d, p) = (summary(&d.0, d.1, d.2), summary(&p.0, p.1, p.2));
    println!(
        "cluster DNS: {} services, {} clients, A queries for service names, {} rounds of {} queries",
        args.services, args.clients, args.rounds, args.queries
    );
    println!("{:<44} {:>10} {:>10} {:>10} {:>6}", "path", "queries/s", "p50 ms", "p99 ms", "lost");
    println!(
        "{:<44} {:>10.0} {:>10.3} {:>10.3} {:>6}",
        format!("a pod → kube-dns ({service})"),
        p.qps,
        p.p50_ms,
        p.p99_ms,
        p.lost
    );
    println!(
        "{:<44} {:>10.0} {:>10.3} {:>10.3} {:>6}",
        format!("the host → the server ({direct})"),
        d.qps,
        d.p50_ms,
        d.p99_ms,
        d.lost
    );
    println!("from a pod / direct: throughput {:.2}x, p99 {:.2}x", p.qps / d.qps, p.p99_ms / d.p99_ms);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&json!({"params": args, "direct": d, "from_pod": p}))?,
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let keelson = keelson_binary(args.keelson.as_deref())?;
    let mut up = UpCluster::start(
        &keelson,
        &args.data_root,
        "keelson-dns-load-",
        &args.cluster_cidr,
        &args.service_cidr,
        &args.bridge,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = runtime.block_on(run(&args, &mut up));
    up.stop(STOP_DEADLINE)?;
    result
}
