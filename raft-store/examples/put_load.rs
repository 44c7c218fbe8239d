//! A quick put-throughput probe against any etcd v3 endpoint (Keelson or etcd):
//! `cargo run --release -p raft-store --example put_load -- ENDPOINT,... CLIENTS CONNECTIONS TOTAL VALUE_BYTES`
//! Prints ops/s and latency percentiles. The benchmark suite proper lives in `benches`.

use std::time::{Duration, Instant};

use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::PutRequest;
use tonic::transport::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: put_load ENDPOINT[,ENDPOINT...] CLIENTS CONNECTIONS TOTAL VALUE_BYTES");
        std::process::exit(2);
    }
    let endpoints: Vec<String> =
        args[1].split(',').map(|e| format!("http://{}", e.trim_start_matches("http://"))).collect();
    let clients: usize = args[2].parse()?;
    let connections: usize = args[3].parse()?;
    let total: usize = args[4].parse()?;
    let value = vec![b'x'; args[5].parse()?];
    let mut channels = Vec::new();
    for i in 0..connections {
        channels.push(Channel::from_shared(endpoints[i % endpoints.len()].clone())?.connect().await?);
    }
    let per_client = total / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % connections].clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let key = format!("load/{c}/{i}").into_bytes();
                let t = Instant::now();
                kv.put(PutRequest { key, value: value.clone(), ..Default::default() }).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "puts={} clients={} conns={} elapsed={:.2}s ops/s={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        all.len(),
        clients,
        connections,
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
