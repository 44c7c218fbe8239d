//! `jepsen`: run a fault-injection campaign against Keelson's store (or etcd) and check the history.
//! Exit status 0: no anomaly; 1: anomalies found; 2: the run could not be checked (unknown).

use std::path::PathBuf;

use clap::Parser;
use jepsen::cluster::System;
use jepsen::run::{run, RunOpts};

#[derive(Parser, Debug)]
#[command(name = "jepsen", about = "Fault-injection testing of Keelson's replicated store (or etcd's)")]
struct Cli {
    /// Store members (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults to inject, comma-separated: kill, kill-minority, kill-leader, pause, pause-leader,
    /// partition (= partition-one), partition-leader, partition-majority, partition-ring,
    /// partition-bridge, member, kill-install (a follower killed while it installs a snapshot;
    /// members then snapshot every few hundred entries); or `none`.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Seconds a fault lasts, and then the quiet between faults.
    #[arg(long, default_value_t = 5)]
    nemesis_interval: u64,
    /// `register` (read / write / compare-and-set), `set` (unique adds, whole reads) or `lease`
    /// (locks held with leases kept alive, released by delete or revoke).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Register keys (register workload), or locks (lease workload).
    #[arg(long, default_value_t = 5)]
    keys: u64,
    /// Watchers following the workload's keys.
    #[arg(long, default_value_t = 3)]
    watchers: u32,
    /// Seconds the linearizability search may take before it answers "unknown".
    #[arg(long, default_value_t = 60)]
    check_time_limit: u64,
    /// The store under test: `keelson` or `etcd` (started with etcd's own flags, for comparison).
    #[arg(long, default_value = "keelson")]
    system: String,
    /// The keelson binary (default: $KEELSON_BIN, else next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// The etcd server binary, for `--system etcd`.
    #[arg(long, default_value = jepsen::cluster::ETCD_DEFAULT_PATH)]
    etcd: PathBuf,
    /// Where runs are kept (each in its own folder).
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEELSON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let system: System = match cli.system.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jepsen: --system: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let binary = match system {
        System::Etcd if cli.etcd.is_file() => cli.etcd.clone(),
        System::Etcd => {
            eprintln!(
                "jepsen: --etcd {} is not a file (Debian's etcd-server installs /usr/bin/etcd)",
                cli.etcd.display()
            );
            return std::process::ExitCode::from(2);
        }
        System::Keelson => match cli.keelson.clone().map(Ok).unwrap_or_else(jepsen::cluster::find_keelson_binary) {
            Ok(path) if path.is_file() => path,
            Ok(path) => {
                eprintln!("jepsen: --keelson {} is not a file", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("jepsen: {e:#} (for a release run: cargo build --release -p control)");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let opts = RunOpts {
        nodes: cli.nodes,
        time_limit_s: cli.time_limit,
        nemesis: cli
            .nemesis
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(String::from)
            .collect(),
        nemesis_interval_s: cli.nemesis_interval,
        workload: match cli.workload.parse() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("jepsen: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        seed: cli.seed,
        concurrency: cli.concurrency,
        keys: cli.keys,
        watchers: cli.watchers,
        check_time_limit_s: cli.check_time_limit,
        system,
        binary,
        out: cli.out,
    };
    match run(opts).await {
        Ok(outcome) => {
            println!("{}", outcome.summary);
            println!("report: {}", outcome.dir.join("report.html").display());
            match outcome.valid {
                Some(true) => std::process::ExitCode::SUCCESS,
                Some(false) => std::process::ExitCode::from(1),
                None => std::process::ExitCode::from(2),
            }
        }
        Err(e) => {
            eprintln!("jepsen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
