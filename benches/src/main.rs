//! `load`: is Keelson's store faster than etcd on this machine? Starts a three-member etcd 3.4 on
//! loopback, runs every workload, stops it, then does the same with a three-member Keelson store on
//! the same ports and data filesystem, with the same client code. That is one round; rounds
//! alternate which system goes first, so that a machine whose disk or neighbours change speed
//! during the run does not favour either. Prints a table per workload and round, then each
//! system's median round per workload, and writes results.json, results.csv and summary.svg to
//! --out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use benches::cluster::{Cluster, Ports};
use benches::report::{self, Row};
use benches::workloads::{self, connect};

const WORKLOADS: [&str; 8] =
    ["put-1", "put-256", "get-linear", "get-serial", "txn-cas", "range-1000", "watch-fanout", "lease-keepalive"];

/// Time a workload may take beyond twice its --seconds (preloads, set-up, drain).
const WORKLOAD_SLACK: Duration = Duration::from_secs(30);

#[derive(Parser, Debug, Serialize)]
#[command(name = "load", about = "Keelson's store against etcd 3.4: throughput, latency and memory per workload")]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// The etcd 3.4 server binary (Debian package etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Systems to run, comma-separated: etcd, keelson.
    #[arg(long, default_value = "etcd,keelson", value_delimiter = ',')]
    systems: Vec<String>,
    /// Workloads to run, comma-separated (default all): put-1, put-256, get-linear, get-serial,
    /// txn-cas, range-1000, watch-fanout, lease-keepalive.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// The members' data directories go in a fresh temporary folder here.
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    /// Keep the data directories and member logs after the run.
    #[arg(long)]
    keep: bool,
    /// Where results.json, results.csv and summary.svg go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Rounds, each on fresh clusters; the summary takes each system's median round per workload.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time limit of each workload, in seconds (each also stops at its operation count).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Connections per workload, spread over the members.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Size of written values, in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Puts of the single-client put workload.
    #[arg(long, default_value_t = 5_000)]
    put1_ops: u64,
    /// Clients of the concurrent put workload.
    #[arg(long, default_value_t = 256)]
    put_clients: usize,
    /// Puts of the concurrent put workload.
    #[arg(long, default_value_t = 100_000)]
    put_ops: u64,
    /// Clients of the get and txn workloads.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Gets of each get workload.
    #[arg(long, default_value_t = 100_000)]
    get_ops: u64,
    /// Compare-and-swap transactions.
    #[arg(long, default_value_t = 30_000)]
    txn_ops: u64,
    /// Keys preloaded for, and returned by, each range.
    #[arg(long, default_value_t = 1_000)]
    range_keys: u64,
    /// Clients of the range workload.
    #[arg(long, default_value_t = 8)]
    range_clients: usize,
    /// Ranges.
    #[arg(long, default_value_t = 5_000)]
    range_ops: u64,
    /// Watchers on the watched prefix.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Puts of the watch writer (each is delivered to every watcher).
    #[arg(long, default_value_t = 2_000)]
    watch_events: u64,
    /// Leases kept alive.
    #[arg(long, default_value_t = 1_000)]
    leases: u64,
    /// Keep-alive streams the leases are spread over.
    #[arg(long, default_value_t = 64)]
    lease_streams: usize,
    /// Keep-alive round trips.
    #[arg(long, default_value_t = 100_000)]
    keepalive_ops: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Dropping `run` on SIGINT or SIGTERM drops the running cluster's guard, which kills its members.
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("load: cannot handle SIGTERM: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        outcome = run(args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let selected: Vec<&str> = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for w in &args.workloads {
            match WORKLOADS.iter().find(|k| *k == w) {
                Some(k) => chosen.push(*k),
                None => bail!("unknown workload {w:?}; known: {}", WORKLOADS.join(", ")),
            }
        }
        chosen
    };
    for s in &args.systems {
        if s != "etcd" && s != "keelson" {
            bail!("unknown system {s:?}; known: etcd, keelson");
        }
    }
    let keelson = match &args.keelson {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.parent().context("this binary has no folder")?.join("keelson"),
    };
    if args.systems.iter().any(|s| s == "etcd") && !args.etcd.is_file() {
        bail!("{} not found: install etcd 3.4 (apt-get install etcd-server) or pass --etcd", args.etcd.display());
    }
    if args.systems.iter().any(|s| s == "keelson") && !keelson.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p control) or pass --keelson / set KEELSON_BIN",
            keelson.display()
        );
    }
    let root = tempfile::Builder::new()
        .prefix("keelson-bench-")
        .tempdir_in(&args.data_root)
        .with_context(|| format!("making a temporary folder in {}", args.data_root.display()))?;
    let ports = Ports::free()?;
    println!("data in {}, client ports {:?}, peer ports {:?}", root.path().display(), ports.client, ports.peer);

    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..args.rounds {
        let mut order: Vec<&String> = args.systems.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let dir = root.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for system in order {
            let (program, prefix): (&PathBuf, &[&str]) =
                if system == "etcd" { (&args.etcd, &[]) } else { (&keelson, &["store"]) };
            println!("round {}/{}: starting three {system} members", round + 1, args.rounds);
            let mut cluster = Cluster::start(system, program, prefix, &ports, &dir).await?;
            for workload in &selected {
                // A workload that fails or hangs is reported and skipped, not fatal to the comparison.
                let limit = Duration::from_secs_f64(2.0 * args.seconds) + WORKLOAD_SLACK;
                let sample = match tokio::time::timeout(limit, run_workload(workload, &args, &cluster)).await {
                    Ok(Ok(sample)) => sample,
                    Ok(Err(e)) => {
                        eprintln!("{system}: workload {workload} failed, skipped: {e:#}");
                        continue;
                    }
                    Err(_) => {
                        eprintln!("{system}: workload {workload} did not finish within {limit:?}, skipped");
                        continue;
                    }
                };
                cluster.check_alive().with_context(|| format!("{system} after {workload}"))?;
                let row = Row::new(workload, system, round, &sample, cluster.rss_bytes()?);
                report::print_table(workload, &[&row], None);
                rows.push(row);
            }
            drop(cluster);
        }
    }

    println!("\n######## summary: each system's median round by ops/s");
    let mut medians = Vec::new();
    let mut ratios = Vec::new();
    for workload in &selected {
        let mut present = Vec::new();
        for system in &args.systems {
            let mut runs: Vec<&Row> = rows.iter().filter(|r| r.workload == *workload && r.system == *system).collect();
            runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            if let Some(median) = runs.get(runs.len() / 2) {
                present.push((*median).clone());
            }
        }
        let of = |system: &str| present.iter().find(|r| r.system == system);
        let ratio = match (of("etcd"), of("keelson")) {
            (Some(e), Some(k)) => Some(report::ratio(e, k)),
            _ => None,
        };
        report::print_table(workload, &present.iter().collect::<Vec<_>>(), ratio.as_ref());
        report::print_rounds(workload, &rows);
        ratios.extend(ratio);
        medians.extend(present);
    }
    report::write_all(&args.out, &args, &rows, &medians, &ratios)?;
    println!("\nwrote results.json, results.csv and summary.svg to {}", args.out.display());
    if args.keep {
        println!("kept data directories and member logs in {}", root.keep().display());
    }
    Ok(())
}

async fn run_workload(workload: &str, a: &Args, cluster: &Cluster) -> Result<workloads::Sample> {
    let members = cluster.endpoints.len();
    // At least one connection per member, the first `members` of them one to each.
    let ch = connect(&cluster.endpoints, a.connections.max(members)).await?;
    let (secs, bytes) = (a.seconds, a.value_bytes);
    match workload {
        "put-1" => workloads::put_load(&ch[..members], 1, a.put1_ops, secs, bytes, "bench/put1/").await,
        "put-256" => workloads::put_load(&ch, a.put_clients, a.put_ops, secs, bytes, "bench/put/").await,
        "get-linear" => workloads::get_load(&ch, a.clients, a.get_ops, secs, bytes, false).await,
        "get-serial" => workloads::get_load(&ch, a.clients, a.get_ops, secs, bytes, true).await,
        "txn-cas" => workloads::txn_cas(&ch, a.clients, a.txn_ops, secs, bytes).await,
        "range-1000" => workloads::range_load(&ch, a.range_clients, a.range_ops, secs, a.range_keys, bytes).await,
        "watch-fanout" => workloads::watch_fanout(&ch, members, a.watchers, a.watch_events, secs, bytes).await,
        "lease-keepalive" => workloads::lease_keepalive(&ch, a.leases, a.lease_streams, a.keepalive_ops, secs).await,
        other => bail!("unknown workload {other}"),
    }
}
