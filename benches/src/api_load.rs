//! `api-load`: does Keelson's Kubernetes API keep single-object writes under 50 ms at p99 at
//! 1,000 writes per second? Starts three `keelson server` processes (a three-member store, an API
//! replica on each), then for each rate in `--rates`: creates pods at that rate, then patches them
//! at that rate, listing the namespace twice a second throughout, while `--watchers` watches
//! receive every pod. Prints p50/p99/max per verb and step, the watch delivery latency, and p99
//! against the 50 ms target (Kubernetes' own objective is 1 s); writes results.json to --out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use benches::cluster::Ports;
use benches::http::{call, contains, wait_serving, watch_lines, Http};

/// Requests under way at once; beyond it the open loop waits (and the achieved rate shows it).
const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// Time the watchers get to receive the last pods of a step.
const WATCH_DRAIN: Duration = Duration::from_secs(5);
/// How often the namespace is listed during a step.
const LIST_INTERVAL: Duration = Duration::from_millis(500);
/// p99 target of single-object writes, in milliseconds.
const WRITE_P99_TARGET_MS: f64 = 50.0;
/// The rate at which the target applies, in writes per second.
const TARGET_RATE: u64 = 1_000;
const NAMESPACE: &str = "bench";

#[derive(Parser, Debug, Serialize)]
#[command(name = "api-load", about = "Keelson's Kubernetes API under increasing write rates")]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// Write rates to step through, per second, comma-separated.
    #[arg(long, default_value = "250,500,1000,2000", value_delimiter = ',')]
    rates: Vec<u64>,
    /// Seconds of creates, then of patches, per step.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Watches of the namespace held open throughout.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// The members' data directories go in a fresh temporary folder here.
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    /// Where results.json goes.
    #[arg(long, default_value = "bench-results/api")]
    out: PathBuf,
}

#[derive(Default)]
struct Latencies {
    ok: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Latencies {
    fn record(&mut self, took: Duration, outcome: Result<()>) {
        match outcome {
            Ok(()) => self.ok.push(took),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

#[derive(Serialize, Clone)]
struct Row {
    step_rate: u64,
    verb: String,
    ops: usize,
    errors: u64,
    achieved_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    first_error: Option<String>,
}

fn row(step_rate: u64, verb: &str, mut l: Latencies, seconds: f64) -> Row {
    l.ok.sort();
    let pct = |p: f64| {
        if l.ok.is_empty() {
            0.0
        } else {
            l.ok[((l.ok.len() as f64 * p) as usize).min(l.ok.len() - 1)].as_secs_f64() * 1e3
        }
    };
    Row {
        step_rate,
        verb: verb.into(),
        ops: l.ok.len(),
        errors: l.errors,
        achieved_per_sec: l.ok.len() as f64 / seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: l.ok.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        first_error: l.first_error,
    }
}

fn pod(name: &str, sent_ns: u128) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}, "annotations": {"bench/sent": sent_ns.to_string()}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/bench:1", "ports": [{"containerPort": 8080}]}]},
    }))
    .expect("a pod encodes")
}

/// Issues `rate` requests per second for `seconds`, the i-th built by `request(i)`.
async fn open_loop<F, Fut>(rate: u64, seconds: f64, request: F) -> Latencies
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let total = (rate as f64 * seconds) as u64;
    let gate = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        let permit = gate.clone().acquire_owned().await.expect("the gate stays open");
        let fut = request(i);
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = fut.await;
            drop(permit);
            (started.elapsed(), outcome)
        });
    }
    let mut l = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((took, outcome)) => l.record(took, outcome),
            Err(e) => l.record(Duration::ZERO, Err(e.into())),
        }
    }
    l
}

/// Watches the namespace from `from`; for each ADDED pod, the delay since its `bench/sent` time.
async fn watch(http: Http, url: String, origin: Instant, delays: Arc<std::sync::Mutex<Latencies>>) -> Result<()> {
    watch_lines(&http, &url, |line| {
        // Only the event type and the send time are needed: found in the bytes, without
        // decoding the whole object, so that the measuring client takes little of the CPU it
        // shares with the servers.
        if !contains(line, br#""type":"ADDED""#) {
            return;
        }
        if let Some(sent) = sent_annotation(line) {
            let now = origin.elapsed().as_nanos();
            delays.lock().expect("not poisoned").ok.push(Duration::from_nanos(now.saturating_sub(sent) as u64));
        }
    })
    .await
}

/// The `bench/sent` annotation of an event line: nanoseconds since the run's origin.
fn sent_annotation(line: &[u8]) -> Option<u128> {
    const KEY: &[u8] = br#""bench/sent":""#;
    let at = memchr::memmem::find(line, KEY)? + KEY.len();
    let digits: Vec<u8> = line[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if args.rates.is_empty() || args.rates.contains(&0) {
        bail!("--rates must name positive rates");
    }
    let keelson = match &args.keelson {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("this binary has no folder")?.join("keelson"),
    };
    let root = tempfile::Builder::new().prefix("keelson-api-bench-").tempdir_in(&args.data_root)?;
    let ports = Ports::free()?;
    // The API alone is measured: the pods it writes are never scheduled.
    println!("starting three keelson servers (store member + API replica each)");
    let servers = benches::cluster::Servers::start(
        &keelson,
        root.path(),
        &ports,
        &["--disable", "scheduler,controller-manager,cluster-dns"],
    )
    .await?;
    let http: Http = benches::http::client(REQUESTS_IN_FLIGHT_MAX, Some(&servers.kubeconfig_text))?;
    let (mut cluster, bases) = (servers.cluster, servers.bases);

    // Every replica serves the API (it creates the system namespaces first).
    wait_serving(&http, &bases, Duration::from_secs(30)).await?;
    let ns = serde_json::to_vec(&json!({"metadata": {"name": NAMESPACE}}))?;
    call(&http, "POST", format!("{}/api/v1/namespaces", bases[0]), "application/json", ns).await?;

    let origin = Instant::now();
    let delays = Arc::new(std::sync::Mutex::new(Latencies::default()));
    let listed = call(&http, "GET", format!("{}/api/v1/namespaces/{NAMESPACE}/pods", bases[0]), "", vec![]).await?;
    let rv = serde_json::from_slice::<serde_json::Value>(&listed)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let mut watchers = tokio::task::JoinSet::new();
    for w in 0..args.watchers {
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={rv}", bases[w % bases.len()]);
        watchers.spawn(watch(http.clone(), url, origin, delays.clone()));
    }

    let mut rows = Vec::new();
    let mut next_pod = 0u64;
    for &rate in &args.rates {
        let first = next_pod;
        let count = (rate as f64 * args.seconds) as u64;
        next_pod += count;
        let stop_lists = Arc::new(tokio::sync::Notify::new());
        let lists = {
            let (http, base, stop) = (http.clone(), bases[0].clone(), stop_lists.clone());
            tokio::spawn(async move {
                let mut l = Latencies::default();
                let mut tick = tokio::time::interval(LIST_INTERVAL);
                loop {
                    tokio::select! {
                        _ = stop.notified() => return l,
                        _ = tick.tick() => {
                            let started = Instant::now();
                            let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/pods");
                            let outcome = call(&http, "GET", url, "", vec![]).await.map(|_| ());
                            l.record(started.elapsed(), outcome);
                        }
                    }
                }
            })
        };
        let create = open_loop(rate, args.seconds, |i| {
            let (http, base) = (http.clone(), bases[i as usize % bases.len()].clone());
            let name = format!("pod-{}", first + i);
            let body = pod(&name, origin.elapsed().as_nanos());
            async move {
                call(&http, "POST", format!("{base}/api/v1/namespaces/{NAMESPACE}/pods"), "application/json", body)
                    .await
                    .map(|_| ())
            }
        })
        .await;
        let patch = open_loop(rate, args.seconds, |i| {
            let (http, base) = (http.clone(), bases[i as usize % bases.len()].clone());
            let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/pods/pod-{}", first + i);
            let body = serde_json::to_vec(&json!({"metadata": {"labels": {"patched": "yes"}}})).expect("encodes");
            async move { call(&http, "PATCH", url, "application/merge-patch+json", body).await.map(|_| ()) }
        })
        .await;
        stop_lists.notify_one();
        let lists = lists.await?;
        // Let the watchers take the step's last pods before counting.
        tokio::time::sleep(WATCH_DRAIN).await;
        let delivered = std::mem::take(&mut *delays.lock().expect("not poisoned"));
        let expected = create.ok.len() * args.watchers;
        let mut watch_row = row(rate, "watch ADDED", delivered, args.seconds);
        watch_row.errors = expected.saturating_sub(watch_row.ops) as u64;
        for r in [
            row(rate, "create", create, args.seconds),
            row(rate, "patch", patch, args.seconds),
            row(rate, "list", lists, 2.0 * args.seconds),
            watch_row,
        ] {
            rows.push(r);
        }
        cluster.check_alive()?;
        print_step(rate, &rows[rows.len() - 4..]);
    }
    watchers.abort_all();

    println!("\n######## summary (target: p99 of single-object writes <= {WRITE_P99_TARGET_MS} ms at {TARGET_RATE}/s)");
    for r in rows.iter().filter(|r| r.verb == "create" || r.verb == "patch") {
        println!(
            "{:>6}/s {:<7} p99 {:>8.2} ms  p99/target {:>5.2}x  achieved {:>7.0}/s  errors {}",
            r.step_rate,
            r.verb,
            r.p99_ms,
            r.p99_ms / WRITE_P99_TARGET_MS,
            r.achieved_per_sec,
            r.errors
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let results = json!({"params": args, "target": {"rate": TARGET_RATE, "p99_ms": WRITE_P99_TARGET_MS}, "rows": rows, "rss_mib": cluster.rss_bytes()? as f64 / 1048576.0});
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("wrote results.json to {}", args.out.display());
    Ok(())
}

fn print_step(rate: u64, rows: &[Row]) {
    println!("\n== {rate} writes/s");
    println!(
        "{:<12} {:>8} {:>7} {:>11} {:>9} {:>9} {:>9}",
        "verb", "ops", "errors", "per sec", "p50 ms", "p99 ms", "max ms"
    );
    for r in rows {
        println!(
            "{:<12} {:>8} {:>7} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
            r.verb, r.ops, r.errors, r.achieved_per_sec, r.p50_ms, r.p99_ms, r.max_ms
        );
        if let Some(e) = &r.first_error {
            println!("{:<12} first error: {e}", "");
        }
    }
}
