//! `sched-load`: Keelson's scheduler under scheduler_perf's workloads, against the whole stack
//! on this machine: three `keelson server` members (store, API replica and a scheduler replica
//! each; one scheduler leads), one `keelson agent --runtime hollow` process holding every node.
//! Per shape: pods scheduled per second as scheduler_perf's SchedulingThroughput measures it (the
//! average of per-second rates from the first measured pod's creation until the last is bound),
//! create→bound and create→Running latencies, each process's peak RSS and CPU seconds, and the
//! ratio to kube-scheduler's published scheduler_perf threshold for the same shape (the anchor
//! cannot run here: its figure is quoted, not measured).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use benches::cluster::Ports;
use benches::http::{call, call_retrying, wait_serving, watch_lines, Http};
use benches::procstat::{usage, Usage};

const NAMESPACE: &str = "sched-bench";
/// Pod creations under way at once when pods are created as fast as the API takes them.
const CREATES_IN_FLIGHT_MAX: usize = 64;
/// How long a shape may take to bind (and run) its pods before it is called failed.
const SHAPE_DEADLINE: Duration = Duration::from_secs(600);
/// Tries of an API call that fails for a passing reason (503, a broken connection).
const API_ATTEMPTS: u32 = 8;
/// How long the agent may take to register its nodes.
const NODES_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Parser, Debug, Serialize)]
#[command(name = "sched-load", about = "Keelson's scheduler under scheduler_perf's workloads")]
struct Args {
    /// The keelson binary (default: $KEELSON_BIN, else `keelson` next to this binary).
    #[arg(long, env = "KEELSON_BIN")]
    keelson: Option<PathBuf>,
    /// Shapes to run, comma-separated (see --list).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "SchedulingBasic/500,SchedulingBasic/5000,SchedulingNodeAffinity/5000,TopologySpreading/5000,SchedulingPodAntiAffinity/5000,Unschedulable/5000,PreemptionBasic/500,Arrival500/5000"
    )]
    shapes: Vec<String>,
    /// Scale every shape's pod counts by this factor (e.g. 0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// List the shapes and exit.
    #[arg(long)]
    list: bool,
    /// The members' data directories go in a fresh temporary folder here.
    #[arg(long, default_value = "/tmp")]
    data_root: PathBuf,
    /// Where results.json goes.
    #[arg(long, default_value = "bench-results/sched")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Basic,
    NodeAffinity,
    TopologySpreading,
    PodAntiAffinity,
    Unschedulable,
    Preemption,
    /// Basic pods arriving at a fixed rate: what latency a user sees while the cluster is busy.
    Arrival {
        per_second: u64,
    },
}

#[derive(Clone, Debug)]
struct Shape {
    name: &'static str,
    kind: Kind,
    nodes: usize,
    /// Zones the nodes are spread over (label topology.kubernetes.io/zone=zone-N).
    zones: usize,
    init_pods: usize,
    measure_pods: usize,
    /// kube-scheduler's published scheduler_perf threshold for the shape (minimum average
    /// SchedulingThroughput, pods/s) in test/integration/scheduler_perf of the Kubernetes
    /// repository, and the older one where it was raised since.
    anchor_threshold: Option<f64>,
    anchor_older: Option<f64>,
}

/// scheduler_perf's workloads: the same node shape (4 cpu, 32Gi, 110 pods), pod counts and pod
/// templates (pause, 100m / 500Mi), and its thresholds as published.
fn shapes() -> Vec<Shape> {
    let s = |name, kind, nodes, zones, init_pods, measure_pods, anchor_threshold, anchor_older| Shape {
        name,
        kind,
        nodes,
        zones,
        init_pods,
        measure_pods,
        anchor_threshold,
        anchor_older,
    };
    vec![
        s("SchedulingBasic", Kind::Basic, 500, 3, 500, 1000, None, None),
        s("SchedulingBasic", Kind::Basic, 5000, 3, 1000, 10000, Some(680.0), Some(270.0)),
        // Every node is in an allowed zone, as scheduler_perf labels every node zone1.
        s("SchedulingNodeAffinity", Kind::NodeAffinity, 5000, 1, 5000, 10000, Some(220.0), None),
        s("TopologySpreading", Kind::TopologySpreading, 5000, 3, 5000, 5000, Some(460.0), Some(85.0)),
        s("SchedulingPodAntiAffinity", Kind::PodAntiAffinity, 5000, 3, 1000, 2000, Some(60.0), None),
        s("Unschedulable", Kind::Unschedulable, 5000, 3, 100, 10000, Some(590.0), Some(200.0)),
        s("PreemptionBasic", Kind::Preemption, 500, 3, 2000, 500, Some(18.0), None),
        s("Arrival500", Kind::Arrival { per_second: 500 }, 5000, 3, 0, 5000, None, None),
    ]
}

/// The hollow nodes' shape (scheduler_perf's default node).
const NODE_CPU: &str = "4";
const NODE_MEMORY: &str = "32Gi";
/// Unschedulable's churn: a pod that fits nowhere every this often (scheduler_perf: 200 ms).
const CHURN_INTERVAL: Duration = Duration::from_millis(200);

fn base_pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}, "limits": {"cpu": "100m", "memory": "500Mi"}}}]}
    })
}

/// A shape's pod: initial (`measured` false) or measured.
fn pod_body(kind: Kind, name: &str, measured: bool) -> Value {
    match kind {
        Kind::Basic | Kind::Arrival { .. } => base_pod(name, json!({"app": "basic"})),
        Kind::NodeAffinity => {
            let mut p = base_pod(name, json!({"app": "affinity"}));
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-0", "zone-1"]}]}]}}});
            p
        }
        Kind::TopologySpreading => {
            if !measured {
                return base_pod(name, json!({"app": "basic"}));
            }
            let mut p = base_pod(name, json!({"color": "blue"}));
            p["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 5, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"color": "blue"}}}]);
            p
        }
        Kind::PodAntiAffinity => {
            let mut p = base_pod(name, json!({"color": "green"}));
            p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"color": "green"}}}]}});
            p
        }
        Kind::Unschedulable => {
            if measured {
                base_pod(name, json!({"app": "basic"}))
            } else {
                // scheduler_perf's pod-high-priority-large-cpu: 9 cpu fits no 4-cpu node.
                let mut p = base_pod(name, json!({"app": "huge"}));
                p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "9", "memory": "500Mi"}});
                p["spec"]["priorityClassName"] = json!("sched-bench-10");
                p
            }
        }
        Kind::Preemption => {
            let mut p = base_pod(name, json!({"app": if measured { "high" } else { "low" }}));
            // Four 900m low-priority pods fill a 4-cpu node; a 3-cpu high-priority pod needs
            // three of them gone (scheduler_perf's pod-low-priority and pod-high-priority).
            let cpu = if measured { "3" } else { "900m" };
            p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": cpu, "memory": "500Mi"}});
            if measured {
                p["spec"]["priorityClassName"] = json!("sched-bench-10");
            }
            p
        }
    }
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    object: Obj,
}
#[derive(Deserialize)]
struct List {
    metadata: ListMeta,
    items: Vec<Obj>,
}
#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    resource_version: String,
}
#[derive(Deserialize)]
struct Obj {
    metadata: Meta,
    spec: Option<Spec>,
    status: Option<Status>,
}
#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
}
#[derive(Deserialize)]
struct Spec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}
#[derive(Deserialize)]
struct Status {
    phase: Option<String>,
    conditions: Option<Vec<Condition>>,
}
#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Default, Clone, Copy)]
struct Times {
    created: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
    failed_scheduling: bool,
    deleted: bool,
}

type Tracker = Arc<Mutex<HashMap<String, Times>>>;

fn track(tracker: &Tracker, line: &[u8]) {
    if let Ok(l) = serde_json::from_slice::<Line>(line) {
        track_object(tracker, l.kind == "DELETED", l.object);
    }
}

fn track_object(tracker: &Tracker, deleted: bool, object: Obj) {
    let Some(name) = object.metadata.name else { return };
    let now = Instant::now();
    let mut t = tracker.lock().expect("not poisoned");
    let e = t.entry(name).or_default();
    if deleted {
        e.deleted = true;
        return;
    }
    if e.bound.is_none() && object.spec.and_then(|s| s.node_name).is_some_and(|n| !n.is_empty()) {
        e.bound = Some(now);
    }
    if let Some(st) = object.status {
        if e.running.is_none() && st.phase.as_deref() == Some("Running") {
            e.running = Some(now);
        }
        if st.conditions.iter().flatten().any(|c| c.kind == "PodScheduled" && c.status == "False") {
            e.failed_scheduling = true;
        }
    }
}

/// Follows the namespace's pods into `tracker`: a list, then a watch from it, and again from a
/// fresh list whenever the watch ends, so that a dropped stream loses nothing.
async fn follow(http: &Http, base: &str, tracker: &Tracker) {
    loop {
        let listed = match call(http, "GET", format!("{base}/api/v1/namespaces/{NAMESPACE}/pods"), "", vec![]).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("listing pods: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(list) = serde_json::from_slice::<List>(&listed) else { continue };
        for item in list.items {
            track_object(tracker, false, item);
        }
        let rv = list.metadata.resource_version;
        let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/pods?watch=1&resourceVersion={rv}");
        if let Err(e) = watch_lines(http, &url, |line| track(tracker, line)).await {
            eprintln!("pod watch ended: {e:#}; listing again");
        }
    }
}

#[derive(Serialize, Clone)]
struct Row {
    shape: String,
    nodes: usize,
    measured_pods: usize,
    /// scheduler_perf's SchedulingThroughput: average of per-second scheduling rates.
    throughput_avg: f64,
    throughput_p50: f64,
    throughput_p99: f64,
    /// Measured pods over the time from the first creation to the last binding.
    overall_per_sec: f64,
    create_per_sec: f64,
    bound_p50_ms: f64,
    bound_p99_ms: f64,
    running_p50_ms: f64,
    running_p99_ms: f64,
    anchor_threshold: Option<f64>,
    anchor_older: Option<f64>,
    ratio_to_anchor: Option<f64>,
    /// CPU the servers and the agent used together from the first measured pod's creation until
    /// every measured pod ran, per measured pod: the cost of a pod, less noisy than a rate.
    stack_cpu_ms_per_pod: f64,
    processes: Vec<(String, Usage)>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn create_pods(
    http: &Http,
    bases: &[String],
    tracker: &Tracker,
    names: &[String],
    kind: Kind,
    measured: bool,
    per_second: Option<u64>,
) -> Result<()> {
    let gate = Arc::new(Semaphore::new(CREATES_IN_FLIGHT_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for (i, name) in names.iter().enumerate() {
        if let Some(rate) = per_second {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let body = serde_json::to_vec(&pod_body(kind, name, measured))?;
        let url = format!("{}/api/v1/namespaces/{NAMESPACE}/pods", bases[i % bases.len()]);
        let (http, tracker, name) = (http.clone(), tracker.clone(), name.clone());
        tasks.spawn(async move {
            tracker.lock().expect("not poisoned").entry(name).or_default().created = Some(Instant::now());
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

/// Waits until `done` holds for every pod in `names`; the number that turned done in each second.
async fn wait_for(tracker: &Tracker, names: &[String], what: &str, done: impl Fn(&Times) -> bool) -> Result<Vec<f64>> {
    let deadline = Instant::now() + SHAPE_DEADLINE;
    let count = || {
        let t = tracker.lock().expect("not poisoned");
        names.iter().filter(|n| t.get(*n).is_some_and(&done)).count()
    };
    let mut samples = Vec::new();
    let mut last = count();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while last < names.len() {
        if Instant::now() > deadline {
            bail!("{what}: {last} of {} after {SHAPE_DEADLINE:?}", names.len());
        }
        tick.tick().await;
        let now = count();
        // As scheduler_perf: nothing is sampled before the first pod is done, and the interval
        // in which the last one is done (a partial one) is not sampled.
        if now < names.len() && (now > 0 || !samples.is_empty()) {
            samples.push((now - last) as f64);
        }
        last = now;
    }
    Ok(samples)
}

async fn run_shape(args: &Args, keelson: &std::path::Path, shape: &Shape) -> Result<Row> {
    let scaled = |n: usize| ((n as f64 * args.scale).round() as usize).max(if n > 0 { 1 } else { 0 });
    let (init_count, measure_count) = (scaled(shape.init_pods), scaled(shape.measure_pods));
    println!("\n== {}/{} nodes: {} initial pods, {} measured", shape.name, shape.nodes, init_count, measure_count);
    let root = tempfile::Builder::new().prefix("keelson-sched-bench-").tempdir_in(&args.data_root)?;
    let ports = Ports::free()?;
    // As scheduler_perf runs it: the API and the scheduler, no controller manager.
    let servers = benches::cluster::Servers::start(
        keelson,
        root.path(),
        &ports,
        &["--disable", "controller-manager,cluster-dns"],
    )
    .await?;
    let http = benches::http::client(CREATES_IN_FLIGHT_MAX, Some(&servers.kubeconfig_text))?;
    let kubeconfig_args = servers.kubeconfig_args();
    let (mut cluster, bases) = (servers.cluster, servers.bases);
    wait_serving(&http, &bases, Duration::from_secs(30)).await?;

    let agent_log = std::fs::File::create(root.path().join("agent.log"))?;
    let mut agent = std::process::Command::new(keelson)
        .arg("agent")
        .args(&kubeconfig_args)
        .args(["--runtime", "hollow"])
        .args(["--hollow-nodes", &shape.nodes.to_string(), "--hollow-zones", &shape.zones.to_string()])
        .args(["--hollow-cpu", NODE_CPU, "--hollow-memory", NODE_MEMORY])
        .stdout(std::process::Stdio::null())
        .stderr(agent_log)
        .spawn()
        .context("starting the hollow agent")?;
    let agent_pid = agent.id();
    let mut stack = cluster.pids();
    stack.push(agent_pid);
    let result = measure(&http, &bases, shape, init_count, measure_count, &stack).await;
    let mut processes: Vec<(String, Usage)> = Vec::new();
    for (i, pid) in cluster.pids().into_iter().enumerate() {
        processes.push((format!("server-{}", i + 1), usage(pid)?));
    }
    processes.push(("agent".into(), usage(agent_pid)?));
    let _ = agent.kill();
    let _ = agent.wait();
    cluster.check_alive()?;
    let (samples, mut bound, mut running, first_created, last_bound, create_per_sec, stack_cpu_seconds) = result?;
    let mut s = samples.clone();
    let overall = measure_count as f64 / last_bound.duration_since(first_created).as_secs_f64().max(1e-3);
    // Bound within the first second, no full second is sampled: the overall rate stands in.
    let throughput_avg = if samples.is_empty() { overall } else { samples.iter().sum::<f64>() / samples.len() as f64 };
    if samples.is_empty() {
        s = vec![overall];
    }
    let row = Row {
        shape: shape.name.to_string(),
        nodes: shape.nodes,
        measured_pods: measure_count,
        throughput_avg,
        throughput_p50: percentile(&mut s, 0.5),
        throughput_p99: percentile(&mut s, 0.99),
        overall_per_sec: overall,
        create_per_sec,
        bound_p50_ms: percentile(&mut bound, 0.5),
        bound_p99_ms: percentile(&mut bound, 0.99),
        running_p50_ms: percentile(&mut running, 0.5),
        running_p99_ms: percentile(&mut running, 0.99),
        anchor_threshold: shape.anchor_threshold,
        anchor_older: shape.anchor_older,
        ratio_to_anchor: shape.anchor_threshold.map(|t| throughput_avg / t),
        stack_cpu_ms_per_pod: stack_cpu_seconds * 1e3 / measure_count.max(1) as f64,
        processes,
    };
    print_row(&row);
    Ok(row)
}

/// Per-second samples, create→bound and create→Running in ms, first creation, last binding,
/// creations/s, and the CPU seconds the stack used over the measured pods.
type Measured = (Vec<f64>, Vec<f64>, Vec<f64>, Instant, Instant, f64, f64);

/// CPU seconds the processes have used so far, together.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| usage(p).map(|u| u.cpu_seconds)).sum()
}

async fn measure(
    http: &Http,
    bases: &[String],
    shape: &Shape,
    init_count: usize,
    measure_count: usize,
    stack: &[u32],
) -> Result<Measured> {
    // Every node registered and Ready.
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
        if ready >= shape.nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("{ready} of {} nodes registered", shape.nodes);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("{} nodes ready", shape.nodes);
    let ns = serde_json::to_vec(&json!({"metadata": {"name": NAMESPACE}}))?;
    call_retrying(http, "POST", format!("{}/api/v1/namespaces", bases[0]), "application/json", ns, API_ATTEMPTS)
        .await?;
    if matches!(shape.kind, Kind::Preemption | Kind::Unschedulable) {
        let pc = serde_json::to_vec(
            &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "sched-bench-10"}, "value": 10}),
        )?;
        call_retrying(
            http,
            "POST",
            format!("{}/apis/scheduling.k8s.io/v1/priorityclasses", bases[0]),
            "application/json",
            pc,
            API_ATTEMPTS,
        )
        .await?;
    }
    let tracker: Tracker = Arc::default();
    let watcher = {
        let (http, tracker, base) = (http.clone(), tracker.clone(), bases[1 % bases.len()].clone());
        tokio::spawn(async move { follow(&http, &base, &tracker).await })
    };

    let init: Vec<String> = (0..init_count).map(|i| format!("init-{i}")).collect();
    create_pods(http, bases, &tracker, &init, shape.kind, false, None).await?;
    if shape.kind == Kind::Unschedulable {
        wait_for(&tracker, &init, "initial pods marked unschedulable", |t| t.failed_scheduling).await?;
    } else {
        wait_for(&tracker, &init, "initial pods bound", |t| t.bound.is_some()).await?;
    }
    println!("{init_count} initial pods in place");

    let names: Vec<String> = (0..measure_count).map(|i| format!("pod-{i}")).collect();
    let first_created = Instant::now();
    let cpu_before = cpu_seconds(stack)?;
    let rate = match shape.kind {
        Kind::Arrival { per_second } => Some(per_second),
        _ => None,
    };
    let creating = {
        let (http, bases, tracker, names) = (http.clone(), bases.to_vec(), tracker.clone(), names.clone());
        let kind = shape.kind;
        tokio::spawn(async move {
            let started = Instant::now();
            create_pods(&http, &bases, &tracker, &names, kind, true, rate).await.map(|()| started.elapsed())
        })
    };
    let churn = (shape.kind == Kind::Unschedulable).then(|| {
        let (http, bases, tracker) = (http.clone(), bases.to_vec(), tracker.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHURN_INTERVAL);
            for i in 0.. {
                tick.tick().await;
                let name = [format!("churn-{i}")];
                if let Err(e) = create_pods(&http, &bases, &tracker, &name, Kind::Unschedulable, false, None).await {
                    eprintln!("churn: {e:#}");
                }
            }
        })
    });
    let samples = wait_for(&tracker, &names, "measured pods bound", |t| t.bound.is_some()).await?;
    if let Some(churn) = churn {
        churn.abort();
    }
    let creating_took = creating.await??;
    wait_for(&tracker, &names, "measured pods running", |t| t.running.is_some()).await?;
    let stack_cpu = cpu_seconds(stack)? - cpu_before;
    watcher.abort();
    let t = tracker.lock().expect("not poisoned");
    let mut bound = Vec::new();
    let mut running = Vec::new();
    let mut last_bound = first_created;
    for n in &names {
        let Some(times) = t.get(n) else { continue };
        if let (Some(c), Some(b)) = (times.created, times.bound) {
            bound.push(b.saturating_duration_since(c).as_secs_f64() * 1e3);
            last_bound = last_bound.max(b);
        }
        if let (Some(c), Some(r)) = (times.created, times.running) {
            running.push(r.saturating_duration_since(c).as_secs_f64() * 1e3);
        }
    }
    Ok((
        samples,
        bound,
        running,
        first_created,
        last_bound,
        measure_count as f64 / creating_took.as_secs_f64().max(1e-3),
        stack_cpu,
    ))
}

fn print_row(r: &Row) {
    println!(
        "{}/{}: {:.0} pods/s (scheduler_perf average; p50 {:.0}, p99 {:.0}; overall {:.0}/s, created at {:.0}/s)  create→bound p50 {:.0} ms p99 {:.0} ms  create→Running p50 {:.0} ms p99 {:.0} ms{}",
        r.shape,
        r.nodes,
        r.throughput_avg,
        r.throughput_p50,
        r.throughput_p99,
        r.overall_per_sec,
        r.create_per_sec,
        r.bound_p50_ms,
        r.bound_p99_ms,
        r.running_p50_ms,
        r.running_p99_ms,
        match (r.anchor_threshold, r.ratio_to_anchor) {
            (Some(t), Some(x)) => format!(
                "  vs kube-scheduler's published threshold {t:.0}/s: {x:.2}x{}",
                r.anchor_older.map(|o| format!(" (older threshold {o:.0}/s: {:.2}x)", r.throughput_avg / o)).unwrap_or_default()
            ),
            _ => String::new(),
        }
    );
    println!(
        "    stack CPU {:.2} ms per measured pod (servers and agent, from the first creation until all ran)",
        r.stack_cpu_ms_per_pod
    );
    for (name, u) in &r.processes {
        println!("    {name:<9} peak RSS {:>7.1} MiB  CPU {:>6.1} s", u.peak_rss_mib, u.cpu_seconds);
    }
}

async fn run(args: Args) -> Result<()> {
    let all = shapes();
    if args.list {
        for s in &all {
            println!(
                "{}/{}  initial {} measured {}  kube-scheduler's threshold {:?} (older {:?})",
                s.name, s.nodes, s.init_pods, s.measure_pods, s.anchor_threshold, s.anchor_older
            );
        }
        return Ok(());
    }
    let keelson = match &args.keelson {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("this binary has no folder")?.join("keelson"),
    };
    let mut chosen = Vec::new();
    for want in &args.shapes {
        let found = all
            .iter()
            .find(|s| format!("{}/{}", s.name, s.nodes) == *want)
            .with_context(|| format!("unknown shape {want:?} (see --list)"))?;
        chosen.push(found.clone());
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for shape in &chosen {
        // One shape that fails (e.g. pods that never bind in time) does not lose the others.
        match run_shape(&args, &keelson, shape).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("{}/{} failed: {e:#}", shape.name, shape.nodes);
                failed.push(format!("{}/{}: {e:#}", shape.name, shape.nodes));
            }
        }
    }
    println!("\n######## summary");
    for r in &rows {
        print_row(r);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json!({"params": args, "rows": rows, "failed": failed}))?,
    )?;
    println!("wrote results.json to {}", args.out.display());
    if !failed.is_empty() {
        bail!("{} shape(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sched-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
