//! `proxy-sync`: how long the agent's service proxy takes to program a node. In a network
//! namespace of its own (made with unshare, gone with the process), `--services` services of
//! `--endpoints` endpoints each are rendered by the proxy's own rule generator and applied with
//! `nft -f -` as the proxy applies them: the first sync (the table created whole), then
//! `--changes` syncs each after one endpoint changed (partial: only the changed chains and map
//! elements rewritten, in one transaction), p50 and p99 split into rendering (CPU in the agent) and `nft` (parsing and
//! the kernel's commit). Needs root and nft.
//!
//! kube-proxy cannot run here; its nftables mode's figures are not measured in the same run.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::proxy::rules::{self, Config, Endpoint, Protocol, ServicePort};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use benches::report::percentile;

#[derive(Parser, Debug, Serialize)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: u32,
    #[arg(long, default_value_t = 10)]
    endpoints: u32,
    /// Syncs after one endpoint changed.
    #[arg(long, default_value_t = 20)]
    changes: u32,
    /// The `nft` binary.
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    services: u32,
    endpoints_per_service: u32,
    script_bytes: usize,
    first_render_ms: f64,
    first_apply_ms: f64,
    change_render_p50_ms: f64,
    change_render_p99_ms: f64,
    change_apply_p50_ms: f64,
    change_apply_p99_ms: f64,
    change_total_p50_ms: f64,
    change_total_p99_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ports(services: u32, endpoints: u32, round: u32) -> Vec<ServicePort> {
    (0..services)
        .map(|s| ServicePort {
            namespace: format!("ns-{}", s % 50),
            name: format!("svc-{s}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + s),
            port: 80,
            node_port: None,
            affinity_seconds: None,
            internal_local: false,
            external_local: false,
            endpoints: (0..endpoints)
                .map(|e| {
                    // Service 0's first endpoint moves each round: one endpoint changed.
                    let shift = if s == 0 && e == 0 { round } else { 0 };
                    Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(10, 244, 0, 0)) + s * endpoints + e + shift * 100_000,
                        ),
                        port: 8080,
                        ready: true,
                        serving: true,
                        terminating: false,
                        node: Some(format!("node-{}", e % 5)),
                    }
                })
                .collect(),
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    // A network namespace of this process alone: its tables vanish with it, and nothing
    // reaches the machine's own rules.
    // SAFETY: unshare has no memory-safety preconditions; it runs before any other thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {} (proxy-sync needs root)", std::io::Error::last_os_error());
    }
    let config = Config {
        table: "keelson-bench".into(),
        node_name: "node-0".into(),
        service_cidrs: vec!["10.96.0.0/12".parse().map_err(anyhow::Error::msg)?],
        local_cidr: Some("10.244.0.0/16".parse().map_err(anyhow::Error::msg)?),
        pod_cidr: None,
    };

    let all = ports(args.services, args.endpoints, 0);
    let started = Instant::now();
    let (script, mut owned) = rules::render(&config, &all, &Default::default(), None);
    let first_render = started.elapsed();
    let started = Instant::now();
    agent::proxy::apply(&args.nft, &script).await.context("the first sync")?;
    let first_apply = started.elapsed();

    let (mut render_times, mut apply_times, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.changes {
        let all = ports(args.services, args.endpoints, round);
        let started = Instant::now();
        let (script, now_owned) = rules::render(&config, &all, &Default::default(), Some(&owned));
        let rendered = started.elapsed();
        agent::proxy::apply(&args.nft, &script).await.with_context(|| format!("sync {round}"))?;
        let total = started.elapsed();
        owned = now_owned;
        render_times.push(rendered);
        apply_times.push(total - rendered);
        totals.push(total);
    }
    let p = |v: &[Duration], q: f64| {
        let mut millis: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
        percentile(&mut millis, q)
    };
    let report = Report {
        services: args.services,
        endpoints_per_service: args.endpoints,
        script_bytes: script.len(),
        first_render_ms: ms(first_render),
        first_apply_ms: ms(first_apply),
        change_render_p50_ms: p(&render_times, 0.5),
        change_render_p99_ms: p(&render_times, 0.99),
        change_apply_p50_ms: p(&apply_times, 0.5),
        change_apply_p99_ms: p(&apply_times, 0.99),
        change_total_p50_ms: p(&totals, 0.5),
        change_total_p99_ms: p(&totals, 0.99),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} services × {} endpoints ({} KiB of nft script)",
            report.services,
            report.endpoints_per_service,
            report.script_bytes / 1024
        );
        println!("first sync:  render {:.1} ms, nft {:.1} ms", report.first_render_ms, report.first_apply_ms);
        println!(
            "one endpoint changed ({} syncs): render p50/p99 {:.1}/{:.1} ms, nft {:.1}/{:.1} ms, total {:.1}/{:.1} ms",
            args.changes,
            report.change_render_p50_ms,
            report.change_render_p99_ms,
            report.change_apply_p50_ms,
            report.change_apply_p99_ms,
            report.change_total_p50_ms,
            report.change_total_p99_ms
        );
    }
    Ok(())
}
