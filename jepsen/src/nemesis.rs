//! Fault injection: what a fault is, how targets are chosen (seeded, so a run can be replayed),
//! and a driver that alternates fault windows with quiet ones and always leaves the cluster whole.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cluster::Cluster;

/// How long a membership change (remove, or add back) may keep failing before the nemesis gives up.
pub const MEMBER_CHANGE_WITHIN: Duration = Duration::from_secs(30);

/// One fault, on node indexes of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; healed by restarting on the same data directory.
    Kill(Vec<usize>),
    /// SIGSTOP; healed by SIGCONT.
    Pause(Vec<usize>),
    /// Two nodes can talk only if some group holds both (groups may overlap, for rings and
    /// bridges); clients are never cut off. Healed by removing the rules.
    Partition(Vec<Vec<usize>>),
    /// MemberRemove, kill, wipe; healed by MemberAdd and a start with `--initial-cluster-state existing`.
    RemoveMember(usize),
}

fn names(nodes: &[usize]) -> String {
    nodes.iter().map(|&i| format!("n{}", i + 1)).collect::<Vec<_>>().join(",")
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(nodes) => write!(f, "kill {}", names(nodes)),
            Fault::Pause(nodes) => write!(f, "pause {}", names(nodes)),
            Fault::Partition(groups) => {
                let groups: Vec<String> = groups.iter().map(|g| format!("[{}]", names(g))).collect();
                write!(f, "partition {}", groups.join(" "))
            }
            Fault::RemoveMember(i) => write!(f, "remove member n{}", i + 1),
        }
    }
}

/// A named way of choosing a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Kill,
    KillMinority,
    KillLeader,
    Pause,
    PauseLeader,
    PartitionOne,
    PartitionLeader,
    PartitionMajority,
    PartitionRing,
    PartitionBridge,
    Member,
    /// A follower killed until the leader has purged the log it would need, restarted, and
    /// killed again while it installs the snapshot the leader sends it; then it must come back
    /// (see `Nemesis::kill_during_install`).
    KillInstall,
}

impl Target {
    pub const ALL: [Target; 12] = [
        Target::Kill,
        Target::KillMinority,
        Target::KillLeader,
        Target::Pause,
        Target::PauseLeader,
        Target::PartitionOne,
        Target::PartitionLeader,
        Target::PartitionMajority,
        Target::PartitionRing,
        Target::PartitionBridge,
        Target::Member,
        Target::KillInstall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Kill => "kill",
            Target::KillMinority => "kill-minority",
            Target::KillLeader => "kill-leader",
            Target::Pause => "pause",
            Target::PauseLeader => "pause-leader",
            Target::PartitionOne => "partition-one",
            Target::PartitionLeader => "partition-leader",
            Target::PartitionMajority => "partition-majority",
            Target::PartitionRing => "partition-ring",
            Target::PartitionBridge => "partition-bridge",
            Target::Member => "member",
            Target::KillInstall => "kill-install",
        }
    }
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
            anyhow!("unknown nemesis {s:?}; known: {}", known.join(", "))
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// splitmix64: tiny, seedable, good enough to pick victims.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant for n this small.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

/// `[[x], rest]`.
pub fn isolate(nodes: &[usize], x: usize) -> Vec<Vec<usize>> {
    vec![vec![x], nodes.iter().copied().filter(|&i| i != x).collect()]
}

/// A majority (first ⌊n/2⌋+1 of `perm`) and the minority.
pub fn majority_groups(perm: &[usize]) -> Vec<Vec<usize>> {
    let cut = perm.len() / 2 + 1;
    vec![perm[..cut].to_vec(), perm[cut..].to_vec()]
}

/// Each node talks only to its two neighbours on the ring `perm` (with five nodes each sees a
/// majority, but no two majorities are the same).
pub fn ring_groups(perm: &[usize]) -> Vec<Vec<usize>> {
    let n = perm.len();
    (0..n).map(|k| vec![perm[k], perm[(k + 1) % n]]).collect()
}

/// Two halves that share one bridge node (`perm[n/2]`), which sees everyone.
pub fn bridge_groups(perm: &[usize]) -> Vec<Vec<usize>> {
    let mid = perm.len() / 2;
    vec![perm[..=mid].to_vec(), perm[mid..].to_vec()]
}

/// Injects and heals faults on a cluster.
pub struct Nemesis {
    cluster: Arc<Cluster>,
    targets: Vec<Target>,
    rng: SplitMix64,
    /// Faults in force, with the target that chose them.
    active: Vec<(Target, Fault)>,
}

impl Nemesis {
    /// `kinds` are target names (see `Target::name`); an unknown one is an error.
    pub fn new(cluster: Arc<Cluster>, kinds: Vec<String>, seed: u64) -> Result<Nemesis> {
        let targets = kinds.iter().map(|k| k.parse()).collect::<Result<Vec<Target>>>()?;
        if targets.is_empty() {
            bail!("the nemesis needs at least one fault kind");
        }
        Ok(Nemesis { cluster, targets, rng: SplitMix64::new(seed), active: Vec::new() })
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Faults in force.
    pub fn active(&self) -> &[(Target, Fault)] {
        &self.active
    }

    /// Runs a synchronous cluster operation (`ip`, `kill`) off the async worker threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Cluster) -> Result<T> + Send + 'static,
    {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&cluster)).await.context("a nemesis operation panicked")?
    }

    /// Nodes that are members and whose process is alive and not paused.
    fn candidates(&self) -> Vec<usize> {
        self.cluster.live_nodes()
    }

    /// The leader, or a random live node when there is none (noted in the returned string).
    async fn leader_or_random(&mut self) -> Result<(usize, &'static str)> {
        if let Some(l) = self.cluster.leader().await {
            return Ok((l, "leader"));
        }
        let pick = self.rng.pick(&self.candidates()).ok_or_else(|| anyhow!("no live node"))?;
        Ok((pick, "no leader; random node"))
    }

    fn shuffled_members(&mut self) -> Vec<usize> {
        let mut nodes: Vec<usize> = (0..self.cluster.node_count()).filter(|&i| !self.cluster.is_removed(i)).collect();
        self.rng.shuffle(&mut nodes);
        nodes
    }

    /// Chooses the fault a target means now; the note says how (e.g. that there was no leader).
    pub async fn choose(&mut self, target: Target) -> Result<(Fault, String)> {
        let live = self.candidates();
        let random = |rng: &mut SplitMix64| rng.pick(&live).ok_or_else(|| anyhow!("no live node to fault"));
        let fault = match target {
            Target::Kill => (Fault::Kill(vec![random(&mut self.rng)?]), String::new()),
            Target::KillMinority => {
                let mut nodes = live.clone();
                self.rng.shuffle(&mut nodes);
                let minority_max = (self.cluster.node_count() - 1) / 2;
                let size = (1 + self.rng.below(minority_max.max(1))).min(nodes.len());
                nodes.truncate(size);
                nodes.sort_unstable();
                (Fault::Kill(nodes), String::new())
            }
            Target::KillLeader => {
                let (l, how) = self.leader_or_random().await?;
                (Fault::Kill(vec![l]), how.to_string())
            }
            Target::Pause => (Fault::Pause(vec![random(&mut self.rng)?]), String::new()),
            Target::PauseLeader => {
                let (l, how) = self.leader_or_random().await?;
                (Fault::Pause(vec![l]), how.to_string())
            }
            Target::PartitionOne => {
                let x = random(&mut self.rng)?;
                (Fault::Partition(isolate(&self.shuffled_members(), x)), String::new())
            }
            Target::PartitionLeader => {
                let (l, how) = self.leader_or_random().await?;
                (Fault::Partition(isolate(&self.shuffled_members(), l)), how.to_string())
            }
            Target::PartitionMajority => (Fault::Partition(majority_groups(&self.shuffled_members())), String::new()),
            Target::PartitionRing => (Fault::Partition(ring_groups(&self.shuffled_members())), String::new()),
            Target::PartitionBridge => (Fault::Partition(bridge_groups(&self.shuffled_members())), String::new()),
            Target::Member => (Fault::RemoveMember(random(&mut self.rng)?), String::new()),
            // On its own (`start`), the first step of the fault: a follower killed.
            Target::KillInstall => (Fault::Kill(vec![self.follower().await?]), String::new()),
        };
        Ok(fault)
    }

    /// Puts a fault in force and remembers it for `heal`.
    pub async fn inject(&mut self, target: Target, fault: Fault) -> Result<()> {
        match &fault {
            Fault::Kill(nodes) => {
                let nodes = nodes.clone();
                self.blocking(move |c| nodes.iter().try_for_each(|&i| c.kill(i))).await?
            }
            Fault::Pause(nodes) => {
                let nodes = nodes.clone();
                self.blocking(move |c| nodes.iter().try_for_each(|&i| c.pause(i))).await?
            }
            Fault::Partition(groups) => {
                let groups = groups.clone();
                self.blocking(move |c| c.partition(&groups)).await?
            }
            Fault::RemoveMember(i) => self.cluster.remove_member(*i, MEMBER_CHANGE_WITHIN).await?,
        }
        tracing::info!(%target, %fault, "fault injected");
        // Remembered even when partly done (e.g. the first of two kills), so heal undoes it.
        self.active.push((target, fault));
        Ok(())
    }

    /// Chooses and injects a fault; returns what was done.
    pub async fn start(&mut self, target: Target) -> Result<String> {
        let (fault, note) = self.choose(target).await?;
        let detail = if note.is_empty() { fault.to_string() } else { format!("{fault} ({note})") };
        self.inject(target, fault).await.with_context(|| format!("{target}: {detail}"))?;
        Ok(detail)
    }

    /// Undoes the faults in force, latest first; returns (target, what was undone) per fault.
    /// A fault whose undoing fails stays in force for `heal_all`.
    pub async fn heal(&mut self) -> Result<Vec<(Target, String)>> {
        let mut healed = Vec::new();
        while let Some((target, fault)) = self.active.pop() {
            if let Err(e) = self.undo(&fault).await {
                self.active.push((target, fault));
                return Err(e.context(format!("cannot heal {target}")));
            }
            healed.push((target, fault.to_string()));
        }
        Ok(healed)
    }

    async fn undo(&self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Kill(nodes) => {
                let nodes = nodes.clone();
                self.blocking(move |c| {
                    nodes.iter().filter(|&&i| !c.is_running(i) && !c.is_removed(i)).try_for_each(|&i| c.restart(i))
                })
                .await
            }
            Fault::Pause(nodes) => {
                let nodes = nodes.clone();
                self.blocking(move |c| nodes.iter().filter(|&&i| c.is_paused(i)).try_for_each(|&i| c.resume(i))).await
            }
            Fault::Partition(_) => self.blocking(|c| c.heal_partition()).await,
            Fault::RemoveMember(i) if self.cluster.is_removed(*i) => {
                self.cluster.add_member(*i, MEMBER_CHANGE_WITHIN).await
            }
            // The removal itself failed part-way: the node may be killed but still a member.
            Fault::RemoveMember(i) => {
                let i = *i;
                self.blocking(move |c| if c.is_running(i) { Ok(()) } else { c.restart(i) }).await
            }
        }
    }

    /// Heals the faults in force, then whatever the cluster still shows: partition rules, paused,
    /// removed or stopped nodes. Returns what it did.
    pub async fn heal_all(&mut self) -> Result<String> {
        let mut done: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        match self.heal().await {
            Ok(healed) => done.extend(healed.into_iter().map(|(t, f)| format!("{t}: {f}"))),
            Err(e) => errors.push(format!("{e:#}")),
        }
        self.active.clear();
        let nodes = self.cluster.node_count();
        let swept = self
            .blocking(move |c| {
                let mut done = Vec::new();
                let mut errors = Vec::new();
                if !c.severed().is_empty() {
                    match c.heal_partition() {
                        Ok(()) => done.push("removed partition rules".to_string()),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
                for i in (0..nodes).filter(|&i| !c.is_removed(i)) {
                    let result = if c.is_paused(i) {
                        c.resume(i).map(|()| format!("resumed n{}", i + 1))
                    } else if !c.is_running(i) {
                        c.restart(i).map(|()| format!("restarted n{}", i + 1))
                    } else {
                        continue;
                    };
                    match result {
                        Ok(d) => done.push(d),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
                Ok((done, errors))
            })
            .await?;
        done.extend(swept.0);
        errors.extend(swept.1);
        for i in (0..nodes).filter(|&i| self.cluster.is_removed(i)) {
            match self.cluster.add_member(i, MEMBER_CHANGE_WITHIN).await {
                Ok(()) => done.push(format!("added n{} back", i + 1)),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("healing left faults in force: {}", errors.join("; "));
        }
        Ok(done.join("; "))
    }

    /// Until `until`: a random fault of the configured kinds (sometimes two at once) for
    /// `interval`, heal, quiet for `interval`. Every start and stop is passed to `record(action, detail)` (actions
    /// `start-<kind>`, `stop-<kind>`, `heal-all`, and `<action>-failed`) after it took effect.
    /// Everything is healed at the end, also after errors; the first error is returned.
    pub async fn run(&mut self, until: Instant, interval: Duration, mut record: impl FnMut(&str, &str)) -> Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        while Instant::now() < until {
            let target = self.targets[self.rng.below(self.targets.len())];
            if target == Target::KillInstall {
                // A procedure of its own, which heals what it did; it fails only when the cluster
                // cannot be made whole again.
                if let Err(e) = self.kill_during_install(until, &mut record).await {
                    record("stop-kill-install-failed", &format!("{e:#}"));
                    first_error.get_or_insert(e);
                    break;
                }
                sleep_until_or(until, interval).await;
                continue;
            }
            let mut window = vec![target];
            // One window in three combines two kinds of fault (a partition and a kill, say).
            // Membership changes stay alone: healing them needs a working quorum; so do
            // kill-install faults, which need a quorum that writes.
            let alone = |t: Target| matches!(t, Target::Member | Target::KillInstall);
            let others: Vec<Target> = self.targets.iter().copied().filter(|t| *t != target && !alone(*t)).collect();
            if !alone(target) && !others.is_empty() && self.rng.below(3) == 0 {
                window.push(others[self.rng.below(others.len())]);
            }
            for target in window {
                match self.start(target).await {
                    Ok(detail) => record(&format!("start-{target}"), &detail),
                    // A fault that cannot start now (no leader to single out during an
                    // election, say) is recorded and skipped; only failing to heal stops the run.
                    Err(e) => {
                        tracing::warn!(%target, error = %format!("{e:#}"), "cannot inject a fault");
                        record(&format!("start-{target}-failed"), &format!("{e:#}"));
                    }
                }
            }
            sleep_until_or(until, interval).await;
            match self.heal().await {
                Ok(healed) => {
                    for (t, what) in healed {
                        record(&format!("stop-{t}"), &what);
                    }
                }
                Err(e) => {
                    record("stop-failed", &format!("{e:#}"));
                    first_error.get_or_insert(e);
                    // Do not stack faults on a cluster left broken.
                    break;
                }
            }
            sleep_until_or(until, interval).await;
        }
        match self.heal_all().await {
            Ok(detail) if detail.is_empty() => {}
            Ok(detail) => record("heal-all", &detail),
            Err(e) => {
                record("heal-all-failed", &format!("{e:#}"));
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a member logs (openraft's state machine worker, `openraft::core::sm::worker`, at info)
/// right before it hands a received snapshot to the state machine to install; openraft issues the
/// purge of the log the snapshot covers at the same time. (`Done install complete snapshot`
/// follows the install; the first occurrence is this one.)
pub const INSTALL_BEGIN_MARKER: &str = ": install complete snapshot";
/// What Keelson logs (`raft_store::storage`, info) once an install is complete.
pub const INSTALL_DONE_MARKER: &str = "installed snapshot";
/// Member log filter for `kill-install`: Keelson's default, plus openraft's lines on receiving and
/// installing snapshots, which the nemesis watches for.
pub const INSTALL_LOG_FILTER: &str =
    "info,openraft=warn,openraft::core::sm::worker=info,openraft::engine::handler::following_handler=info,openraft::network::snapshot_transport=info";
/// Snapshot policy of the members when `kill-install` is selected: snapshots, and purges of the
/// log behind them, every few hundred entries.
pub const INSTALL_SNAPSHOT_COUNT: u64 = 200;
pub const INSTALL_CATCHUP_ENTRIES: u64 = 50;
/// Entries beyond `snapshot count + catch-up entries` that the log must advance past a killed
/// follower's last one, so that the leader has surely purged what the follower would need.
const INSTALL_ADVANCE_MARGIN_ENTRIES: u64 = 50;
/// Restarts per fault that try to kill the member mid-install.
const INSTALL_KILL_ATTEMPTS_MAX: u32 = 4;
/// How long after a restart the member may take to begin installing the leader's snapshot.
const INSTALL_BEGIN_WITHIN: Duration = Duration::from_secs(20);
/// How often the member's log is read for the markers.
const INSTALL_LOG_POLL: Duration = Duration::from_millis(2);
/// The kill lands up to this long after the install began (a random delay per attempt, halved
/// after an attempt that came too late).
const INSTALL_KILL_DELAY_MAX_MS: u64 = 16;
/// How long a member restarted after the fault may take to catch up and serve a read.
pub const INSTALL_RECOVERY_WITHIN: Duration = Duration::from_secs(45);
/// Pause between two probes of a recovering member.
const RECOVERY_POLL: Duration = Duration::from_millis(100);
/// Lines of a wedged member's log quoted in the anomaly.
const WEDGED_LOG_LINES: usize = 8;

/// How one restart of `restart_and_kill_mid_install` went.
#[derive(Clone, Debug, PartialEq, Eq)]
enum InstallAttempt {
    /// No install began in time: the member caught up from the leader's log (it is left running).
    NotSent,
    /// The member exited on its own before an install began (it is left stopped).
    Exited(String),
    /// Killed `delay_ms` after the install began; `completed`: the install was done by then.
    Killed { delay_ms: u64, completed: bool },
}

/// Reads what a log file gained since an offset.
struct LogTail {
    path: std::path::PathBuf,
    offset: u64,
    text: String,
}

impl LogTail {
    fn new(path: std::path::PathBuf, offset: u64) -> LogTail {
        LogTail { path, offset, text: String::new() }
    }

    /// Everything written since the start offset.
    fn read(&mut self) -> Result<&str> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.offset)).with_context(|| format!("cannot seek in {}", self.path.display()))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.text.push_str(&String::from_utf8_lossy(&bytes));
        Ok(&self.text)
    }
}

/// Restarts node `i` and SIGKILLs it `delay` after its log shows that a snapshot install began.
/// Synchronous (it polls the log every `INSTALL_LOG_POLL`): run it off the async workers.
fn restart_and_kill_mid_install(c: &Cluster, i: usize, delay: Duration) -> Result<InstallAttempt> {
    let path = c.log_path(i);
    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    c.restart(i)?;
    let mut tail = LogTail::new(path, offset);
    let deadline = Instant::now() + INSTALL_BEGIN_WITHIN;
    let began = loop {
        if let Some(at) = tail.read()?.find(INSTALL_BEGIN_MARKER) {
            break at;
        }
        if let Some(status) = c.exited_on_its_own(i) {
            return Ok(InstallAttempt::Exited(status.to_string()));
        }
        if Instant::now() >= deadline {
            return Ok(InstallAttempt::NotSent);
        }
        std::thread::sleep(INSTALL_LOG_POLL);
    };
    // The delay is the fault's timing, chosen at random: where in the install the kill lands.
    std::thread::sleep(delay);
    c.kill(i)?;
    // The process is reaped: everything it wrote is in the file.
    let completed = tail.read()?[began..].contains(INSTALL_DONE_MARKER);
    Ok(InstallAttempt::Killed { delay_ms: delay.as_millis() as u64, completed })
}

impl Nemesis {
    /// A live follower, at random; an error when no leader is agreed on.
    async fn follower(&mut self) -> Result<usize> {
        let leader = self.cluster.leader().await.ok_or_else(|| anyhow!("no leader to tell a follower by"))?;
        let followers: Vec<usize> = self.candidates().into_iter().filter(|&i| i != leader).collect();
        self.rng.pick(&followers).ok_or_else(|| anyhow!("no live follower"))
    }

    /// The highest applied log index and revision that the live nodes other than `except` report.
    async fn others_applied(&self, except: usize) -> Option<(u64, i64)> {
        let mut best: Option<(u64, i64)> = None;
        for j in self.candidates().into_iter().filter(|&j| j != except) {
            if let Ok(s) = self.cluster.status(j).await {
                let revision = s.header.map(|h| h.revision).unwrap_or_default();
                let (index, rev) = best.unwrap_or_default();
                best = Some((index.max(s.raft_applied_index), rev.max(revision)));
            }
        }
        best
    }

    /// Waits until the others' applied index is past `index` (false at `until`: the workload ended).
    async fn wait_applied_past(&self, except: usize, index: u64, until: Instant) -> bool {
        loop {
            if self.others_applied(except).await.is_some_and(|(applied, _)| applied > index) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }

    /// The `kill-install` fault. A random follower is SIGKILLed; once the workload has moved the
    /// log more than a snapshot interval plus the catch-up entries past it (the leader has
    /// purged what it would need), it is restarted, so that the leader sends it a snapshot, and
    /// SIGKILLed again a random few milliseconds after its log shows the install began (up to
    /// `INSTALL_KILL_ATTEMPTS_MAX` restarts, as a kill that lands after the install needs the log
    /// to move on again). Then it is restarted for good and must start, catch up with the others'
    /// applied index and serve a read at their revision within `INSTALL_RECOVERY_WITHIN`;
    /// if it does not, that is recorded as an anomaly (`member-wedged`) and the member is
    /// replaced (removed, wiped and added back) so that the run goes on. Records `start-` and
    /// `stop-kill-install` around it, `install-crashed` per install killed mid-way and
    /// `member-recovered` or `member-wedged`. An error means the cluster could not be made whole.
    pub async fn kill_during_install(&mut self, until: Instant, record: &mut impl FnMut(&str, &str)) -> Result<()> {
        let victim = match self.follower().await {
            Ok(v) => v,
            Err(e) => {
                record("start-kill-install-failed", &format!("{e:#}"));
                return Ok(());
            }
        };
        let name = self.cluster.node_name(victim);
        let last_index = match self.cluster.status(victim).await {
            Ok(s) => s.raft_index,
            Err(e) => {
                record("start-kill-install-failed", &format!("{e:#}"));
                return Ok(());
            }
        };
        let fault = Fault::Kill(vec![victim]);
        self.inject(Target::KillInstall, fault.clone()).await?;
        record("start-kill-install", &format!("{fault} (follower, log at index {last_index})"));
        let opts = self.cluster.opts();
        let purge_distance =
            opts.snapshot_count + opts.snapshot_catchup_entries.unwrap_or(0) + INSTALL_ADVANCE_MARGIN_ENTRIES;
        let mut base = last_index;
        let mut delay_max_ms = INSTALL_KILL_DELAY_MAX_MS;
        let mut crashed = None;
        for attempt in 1..=INSTALL_KILL_ATTEMPTS_MAX {
            if !self.wait_applied_past(victim, base + purge_distance, until).await {
                record(
                    "install-skipped",
                    &format!(
                        "{name}: the log did not move {purge_distance} entries past {base} before the workload ended"
                    ),
                );
                break;
            }
            let delay = Duration::from_millis(self.rng.below(delay_max_ms as usize + 1) as u64);
            let outcome = self.blocking(move |c| restart_and_kill_mid_install(c, victim, delay)).await?;
            tracing::info!(node = %name, attempt, ?outcome, "kill-install attempt");
            match outcome {
                InstallAttempt::NotSent => {
                    record(
                        "install-not-sent",
                        &format!(
                            "{name}: no snapshot install began within {INSTALL_BEGIN_WITHIN:?} of restart {attempt}"
                        ),
                    );
                    break;
                }
                InstallAttempt::Exited(status) => {
                    record(
                        "install-not-sent",
                        &format!("{name} exited on its own ({status}) before an install began, restart {attempt}"),
                    );
                    break;
                }
                InstallAttempt::Killed { delay_ms, completed: false } => {
                    let detail =
                        format!("{name} killed {delay_ms} ms after its snapshot install began (restart {attempt})");
                    record(crate::checker::recovery::INSTALL_CRASHED, &detail);
                    crashed = Some(detail);
                    break;
                }
                InstallAttempt::Killed { delay_ms, completed: true } => {
                    record("install-completed-first", &format!("{name}: the install was done {delay_ms} ms after it began, before the kill (restart {attempt})"));
                    delay_max_ms /= 2;
                    // The member now holds the leader's latest snapshot: the log must move on again.
                    base = self.others_applied(victim).await.map(|(index, _)| index).unwrap_or(base);
                }
            }
        }
        let verdict = self.recover(victim).await?;
        let what = crashed.as_deref().unwrap_or("no install was crashed");
        match verdict {
            Ok(detail) => record(crate::checker::recovery::MEMBER_RECOVERED, &format!("{detail} ({what})")),
            Err(detail) => {
                record(crate::checker::recovery::MEMBER_WEDGED, &format!("{detail} ({what})"));
                self.cluster.remove_member(victim, MEMBER_CHANGE_WITHIN).await.context("replacing a wedged member")?;
                self.cluster.add_member(victim, MEMBER_CHANGE_WITHIN).await.context("replacing a wedged member")?;
                record("replace-member", &format!("{name} removed, wiped and added back"));
            }
        }
        self.active.retain(|(t, f)| !(*t == Target::KillInstall && *f == fault));
        record("stop-kill-install", &format!("restarted {name}"));
        Ok(())
    }

    /// Starts node `i` if it is stopped and waits until it has applied what the others had at
    /// that point and serves a serializable read at their revision. Inner `Err`: it did not
    /// (what was seen, with the end of its log); outer `Err`: the harness failed.
    async fn recover(&self, i: usize) -> Result<std::result::Result<String, String>> {
        let name = self.cluster.node_name(i);
        if !self.cluster.is_running(i) {
            self.blocking(move |c| {
                // A member that died on its own is reaped by `kill` before it is started again.
                if c.exited_on_its_own(i).is_some() {
                    c.kill(i)?;
                }
                c.restart(i)
            })
            .await?;
        }
        let started = Instant::now();
        let deadline = started + INSTALL_RECOVERY_WITHIN;
        let target = loop {
            if let Some(t) = self.others_applied(i).await {
                break t;
            }
            if Instant::now() >= deadline {
                bail!("no other member answered Status within {INSTALL_RECOVERY_WITHIN:?}");
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        };
        let (index, revision) = target;
        let mut last: String;
        let wedged = |why: String| {
            let log = crate::cluster::log_tail(&self.cluster.log_path(i), WEDGED_LOG_LINES);
            Ok(Err(format!("{name} {why}; end of its log:\n{log}")))
        };
        loop {
            if let Some(status) = self.cluster.exited_on_its_own(i) {
                return wedged(format!("exited on its own ({status}) after its restart"));
            }
            match self.cluster.status(i).await {
                Ok(s) if s.raft_applied_index >= index => {
                    let mut kv = proto::etcdserverpb::kv_client::KvClient::new(self.cluster.channel(i));
                    let req = proto::etcdserverpb::RangeRequest {
                        key: b"\0".to_vec(),
                        range_end: vec![0],
                        count_only: true,
                        serializable: true,
                        ..Default::default()
                    };
                    match kv.range(req).await {
                        Ok(r) => {
                            let read_at = r.into_inner().header.map(|h| h.revision).unwrap_or_default();
                            if read_at >= revision {
                                return Ok(Ok(format!(
                                    "{name} caught up to index {index} in {:.1} s and serves reads (revision {read_at})",
                                    started.elapsed().as_secs_f64()
                                )));
                            }
                            last = format!("a read at revision {read_at} < {revision}");
                        }
                        Err(e) => last = format!("a read failed: {:?} {}", e.code(), e.message()),
                    }
                }
                Ok(s) => last = format!("applied index {} of {index}", s.raft_applied_index),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                return wedged(format!(
                    "did not catch up to index {index} and revision {revision} within {INSTALL_RECOVERY_WITHIN:?} of its restart: {last}"
                ));
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }
}

async fn sleep_until_or(until: Instant, interval: Duration) {
    let wake = (Instant::now() + interval).min(until);
    tokio::time::sleep_until(wake.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::severed_pairs;
    use std::collections::BTreeSet;

    /// The runner spawns `run` as a task: its future must be Send.
    #[allow(dead_code)]
    fn run_can_be_spawned(n: &'static mut Nemesis) {
        tokio::spawn(n.run(Instant::now(), Duration::ZERO, |_, _| {}));
    }

    #[test]
    fn targets_parse_by_name() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
        }
        assert!("partition-everything".parse::<Target>().is_err());
    }

    #[test]
    fn the_prng_is_deterministic_and_shuffles_are_permutations() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut v: Vec<usize> = (0..5).collect();
        a.shuffle(&mut v);
        assert_eq!(v.iter().copied().collect::<BTreeSet<_>>(), (0..5).collect());
    }

    #[test]
    fn ring_lets_each_of_five_see_a_majority_but_not_the_same_one() {
        let perm = [3, 0, 4, 1, 2];
        let cut = severed_pairs(5, &ring_groups(&perm));
        for node in 0..5 {
            let sees = (0..5).filter(|&o| o != node && !cut.contains(&(node.min(o), node.max(o)))).count();
            assert_eq!(sees, 2, "n{} sees itself and two neighbours", node + 1);
        }
        assert!(!cut.contains(&(0, 3)) && cut.contains(&(0, 1)), "{cut:?}");
    }

    #[test]
    fn bridge_node_sees_both_halves_which_do_not_see_each_other() {
        let cut = severed_pairs(5, &bridge_groups(&[0, 1, 2, 3, 4]));
        assert_eq!(cut, BTreeSet::from([(0, 3), (0, 4), (1, 3), (1, 4)]));
        let cut = severed_pairs(3, &bridge_groups(&[2, 0, 1]));
        assert_eq!(cut, BTreeSet::from([(1, 2)]));
    }

    #[test]
    fn majority_split_and_isolation() {
        assert_eq!(majority_groups(&[4, 2, 0, 1, 3]), vec![vec![4, 2, 0], vec![1, 3]]);
        assert_eq!(isolate(&[0, 1, 2], 1), vec![vec![1], vec![0, 2]]);
    }
}
