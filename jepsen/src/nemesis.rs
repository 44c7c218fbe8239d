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
}

impl Target {
    pub const ALL: [Target; 11] = [
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
            let mut window = vec![target];
            // One window in three combines two kinds of fault (a partition and a kill, say).
            // Membership changes stay alone: healing them needs a working quorum.
            let others: Vec<Target> =
                self.targets.iter().copied().filter(|t| *t != target && *t != Target::Member).collect();
            if target != Target::Member && !others.is_empty() && self.rng.below(3) == 0 {
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
