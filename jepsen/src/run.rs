//! One campaign: launch a cluster (Keelson's store or etcd), run clients, watchers and the nemesis
//! for the time limit, heal, read the final state, check the history and write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::checker::watch::WatcherSpec;
use crate::client::{final_registers, read_until, Client, Recorder, Workload, SET_NAME};
use crate::cluster::{Cluster, ClusterOpts, System};
use crate::history::{Kind, Op, NEMESIS_PROCESS};
use crate::nemesis::Nemesis;
use crate::watcher::FollowOpts;

/// How long the cluster may take to become healthy again after the last fault is healed.
pub const RECOVERY_WITHIN_S: u64 = 60;

#[derive(Clone, Debug)]
pub struct RunOpts {
    pub nodes: usize,
    pub time_limit_s: u64,
    pub nemesis: Vec<String>,
    pub nemesis_interval_s: u64,
    pub workload: Workload,
    pub seed: u64,
    pub concurrency: usize,
    pub keys: u64,
    pub watchers: u32,
    pub check_time_limit_s: u64,
    /// The store under test, and its binary (`keelson`, or etcd's server).
    pub system: System,
    pub binary: PathBuf,
    pub out: PathBuf,
}

pub struct Outcome {
    /// Some(true): no anomaly; Some(false): anomalies; None: some check could not decide.
    pub valid: Option<bool>,
    /// Snapshot installs of the run (Keelson only).
    pub installs: Option<Installs>,
    pub summary: String,
    pub dir: PathBuf,
}

/// Snapshot installs of a run: completed ones as the members' logs tell, crashed ones as the
/// nemesis recorded (`kill-install`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installs {
    /// Lines `installed snapshot` per member log.
    pub completed: Vec<usize>,
    pub crashed: usize,
}

impl Installs {
    pub fn completed_total(&self) -> usize {
        self.completed.iter().sum()
    }

    fn render(&self) -> String {
        let per: Vec<String> = self.completed.iter().enumerate().map(|(i, n)| format!("n{} {n}", i + 1)).collect();
        format!(
            "snapshot installs: {} completed (members' logs: {}), {} crashed mid-install",
            self.completed_total(),
            per.join(", "),
            self.crashed
        )
    }
}

/// Counts the installs the members' logs report.
fn count_installs(cluster: &Cluster, history: &[crate::history::Event]) -> Installs {
    let completed = (0..cluster.node_count())
        .map(|i| match std::fs::read_to_string(cluster.log_path(i)) {
            Ok(text) => text.lines().filter(|l| l.contains(crate::nemesis::INSTALL_DONE_MARKER)).count(),
            Err(e) => {
                tracing::warn!(node = i + 1, error = %e, "cannot read a member's log to count installs");
                0
            }
        })
        .collect();
    let crashed = crate::checker::check_recovery(history).map(|r| r.installs_crashed).unwrap_or(0);
    Installs { completed, crashed }
}

/// Whether the run's faults include `kill-install`.
fn kills_installs(kinds: &[String]) -> bool {
    kinds.iter().any(|k| k == crate::nemesis::Target::KillInstall.name())
}

/// The prefix the watchers follow: the workload's keys.
fn watched_prefix(workload: Workload) -> String {
    match workload {
        Workload::Register => "r".to_string(),
        Workload::Set => format!("{SET_NAME}/"),
        Workload::Lease => crate::lease::LOCK_PREFIX.to_string(),
    }
}

/// The fault kinds to draw from: `partition` stands for every kind of partition.
pub fn expand_nemesis(kinds: &[String], nodes: usize) -> Vec<String> {
    let mut out = Vec::new();
    for k in kinds {
        if k == "partition" {
            out.extend(
                ["partition-one", "partition-leader", "partition-majority", "partition-bridge"].map(String::from),
            );
            if nodes >= 5 {
                out.push("partition-ring".into());
            }
        } else {
            out.push(k.clone());
        }
    }
    out
}

pub async fn run(mut opts: RunOpts) -> anyhow::Result<Outcome> {
    opts.nemesis = expand_nemesis(&opts.nemesis, opts.nodes);
    // Refuse unknown kinds before anything starts.
    for k in &opts.nemesis {
        k.parse::<crate::nemesis::Target>()?;
    }
    if kills_installs(&opts.nemesis) && opts.system != System::Keelson {
        anyhow::bail!("the kill-install nemesis reads Keelson's member logs: it cannot run with --system etcd");
    }
    // Whether progress notifications prove delivery: Keelson's do; etcd's only once issue 15220 is
    // fixed, else a watch still catching up hears of the head before its events.
    let (trust_progress, target) = match opts.system {
        System::Keelson => (true, format!("keelson ({})", opts.binary.display())),
        System::Etcd => {
            let version = crate::cluster::etcd_version(&opts.binary)?;
            let ordered = crate::cluster::etcd_progress_is_ordered(version);
            tracing::info!(?version, progress_trusted = ordered, "etcd under test");
            let (a, b, c) = version;
            let note = if ordered { "" } else { "; progress notifications not trusted (etcd issue 15220)" };
            (ordered, format!("etcd {a}.{b}.{c} ({}){note}", opts.binary.display()))
        }
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir = opts.out.join(format!("{stamp}-seed{}", opts.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "run starts");
    let mut cluster_opts = ClusterOpts::new(opts.binary.clone(), opts.nodes, dir.join("cluster"));
    cluster_opts.system = opts.system;
    // Frequent snapshots, so that restarted members also catch up through them.
    cluster_opts.snapshot_count = 2_000;
    if kills_installs(&opts.nemesis) {
        // Snapshots and log purges every few hundred entries, and the lines that tell when a
        // member installs one.
        cluster_opts.snapshot_count = crate::nemesis::INSTALL_SNAPSHOT_COUNT;
        cluster_opts.snapshot_catchup_entries = Some(crate::nemesis::INSTALL_CATCHUP_ENTRIES);
        cluster_opts.log_filter = crate::nemesis::INSTALL_LOG_FILTER.to_string();
    }
    let cluster = Arc::new(Cluster::launch(cluster_opts).await.context("cannot launch the cluster")?);
    let result = campaign(&opts, cluster.clone(), &dir, trust_progress, &target).await;
    if let Err(e) = cluster.shutdown() {
        tracing::warn!(error = %e, "cluster cleanup incomplete");
    }
    result
}

async fn campaign(
    opts: &RunOpts,
    cluster: Arc<Cluster>,
    dir: &std::path::Path,
    trust_progress: bool,
    target: &str,
) -> anyhow::Result<Outcome> {
    let endpoints = cluster.client_endpoints();
    let start = Instant::now();
    let recorder = Recorder::new(start);
    let until = start + Duration::from_secs(opts.time_limit_s);

    let mut clients = Vec::new();
    for p in 0..opts.concurrency {
        if opts.workload == Workload::Lease {
            let client = crate::lease::LockClient::new(p as i64, endpoints.clone(), opts.seed)?;
            clients.push(tokio::spawn(client.run(opts.keys, until, recorder.clone())));
        } else {
            let client = Client::new(p as i64, endpoints.clone(), opts.seed)?;
            clients.push(tokio::spawn(client.run(opts.workload, opts.keys, until, recorder.clone())));
        }
    }
    let prefix = watched_prefix(opts.workload);
    let mut specs: Vec<WatcherSpec> = (0..opts.watchers)
        .map(|w| WatcherSpec { watcher: w, prefix: prefix.clone(), start_revision: 1, prev_kv: w % 2 == 0 })
        .collect();
    // Watchers move to another member when theirs fails; with kill-install, one more per member
    // stays on it (reconnecting as it restarts), so that the member a fault restarted has a watcher
    // through its install and after it comes back.
    let mut watcher_endpoints = vec![endpoints.clone(); specs.len()];
    if kills_installs(&opts.nemesis) {
        for (k, endpoint) in endpoints.iter().enumerate() {
            let watcher = opts.watchers + k as u32;
            specs.push(WatcherSpec { watcher, prefix: prefix.clone(), start_revision: 1, prev_kv: true });
            watcher_endpoints.push(vec![endpoint.clone()]);
        }
    }
    let mut watchers = Vec::new();
    for (spec, endpoints) in specs.iter().zip(watcher_endpoints) {
        let follow = FollowOpts { until_event_revision: None, trust_progress };
        watchers.push(tokio::spawn(crate::watcher::follow(spec.clone(), endpoints, start, until, follow)));
    }
    // `--nemesis none`: a run without faults.
    let mut nemesis = if opts.nemesis.is_empty() {
        None
    } else {
        Some(Nemesis::new(cluster.clone(), opts.nemesis.clone(), opts.seed)?)
    };
    let nemesis_task = {
        let recorder = recorder.clone();
        let interval = Duration::from_secs(opts.nemesis_interval_s);
        tokio::spawn(async move {
            let Some(nemesis) = nemesis.as_mut() else { return Ok(()) };
            nemesis
                .run(until, interval, |action: &str, detail: &str| {
                    let op = Op::Nemesis { action: action.to_string(), detail: detail.to_string() };
                    recorder.record(NEMESIS_PROCESS, Kind::Info, op, None, None);
                })
                .await
        })
    };
    for c in clients {
        c.await.context("a client task failed")?;
    }
    nemesis_task.await.context("the nemesis task failed")??;
    let mut deliveries = Vec::new();
    for w in watchers {
        deliveries.extend(w.await.context("a watcher task failed")?);
    }

    // Everything is healed: the cluster must recover, and then nothing acknowledged is lost.
    cluster.wait_healthy(Duration::from_secs(RECOVERY_WITHIN_S)).await.context("the cluster did not recover")?;
    let deadline = Instant::now() + Duration::from_secs(RECOVERY_WITHIN_S);
    let final_registers = match opts.workload {
        Workload::Register => final_registers(&endpoints, opts.keys, deadline).await?,
        Workload::Set | Workload::Lease => Default::default(),
    };
    let final_set = match opts.workload {
        Workload::Set => Some(final_set(&endpoints, deadline).await?),
        Workload::Register | Workload::Lease => None,
    };
    // The reference history: a watch of every key from revision 1 until it has received an event at
    // the head (every revision after the first has one). Ending at a progress notification instead
    // would trust the target to send none ahead of the events (etcd issue 15220).
    let head = head_revision(&endpoints, deadline).await?;
    let reference = if head > 1 {
        let reference_spec = WatcherSpec { watcher: u32::MAX, prefix: String::new(), start_revision: 1, prev_kv: true };
        crate::watcher::follow(
            reference_spec,
            endpoints.clone(),
            start,
            Instant::now() + Duration::from_secs(RECOVERY_WITHIN_S),
            FollowOpts { until_event_revision: Some(head), trust_progress: false },
        )
        .await
    } else {
        Vec::new()
    };

    let history = recorder.snapshot();
    let mut file = std::fs::File::create(dir.join("history.jsonl"))?;
    crate::history::write_jsonl(&history, &mut file)?;
    let mut watch_file = std::fs::File::create(dir.join("watch.jsonl"))?;
    for d in &deliveries {
        serde_json::to_writer(&mut watch_file, d)?;
        std::io::Write::write_all(&mut watch_file, b"\n")?;
    }
    let mut reference_file = std::fs::File::create(dir.join("reference.jsonl"))?;
    for d in &reference {
        serde_json::to_writer(&mut reference_file, d)?;
        std::io::Write::write_all(&mut reference_file, b"\n")?;
    }

    let verdict = crate::checker::check_all(crate::checker::CheckInput {
        history: &history,
        final_registers: &final_registers,
        final_set: final_set.as_ref(),
        watchers: &specs,
        deliveries: &deliveries,
        reference: &reference,
        head_revision: head,
        trust_progress,
        time_limit: Duration::from_secs(opts.check_time_limit_s),
    });
    let installs = (opts.system == System::Keelson).then(|| count_installs(&cluster, &history));
    let mut summary = format!("target: {target}\n{}", crate::report::summary(&history, &verdict.render_text()));
    if let Some(installs) = &installs {
        summary.push_str(&installs.render());
        summary.push('\n');
    }
    let svg = crate::report::timeline_svg(&history);
    std::fs::write(dir.join("summary.txt"), &summary)?;
    std::fs::write(dir.join("timeline.svg"), &svg)?;
    std::fs::write(dir.join("report.html"), crate::report::html(&summary, &svg))?;
    Ok(Outcome { valid: verdict.valid, installs, summary, dir: dir.to_path_buf() })
}

async fn final_set(endpoints: &[String], deadline: Instant) -> anyhow::Result<Vec<String>> {
    read_until(endpoints, deadline, "the set", |mut kv| async move {
        crate::client::read_set(&mut kv, SET_NAME, false).await.map(|(elements, _)| elements)
    })
    .await
}

/// The store's current revision, read linearizably.
async fn head_revision(endpoints: &[String], deadline: Instant) -> anyhow::Result<i64> {
    read_until(endpoints, deadline, "the head revision", |mut kv| async move {
        let req = proto::etcdserverpb::RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() };
        Ok(kv.range(req).await?.into_inner().header.map(|h| h.revision).unwrap_or_default())
    })
    .await
}
