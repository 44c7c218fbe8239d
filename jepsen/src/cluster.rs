//! Runs `keelson store` members (or etcd's, for comparison), each in its own network namespace, on
//! a private bridge, so that the nemesis can partition them without touching the host's network.
//!
//! Layout of a run holding slot `S` (0..=255) with prefix `kj`:
//! - bridge `kjSbr` in the root namespace with `10.77.S.1/24`: clients in the root namespace reach
//!   every node through it, and it is never partitioned;
//! - per node `k` (1-based): namespace `kjSnk`, veth `kjSvk` (root side, enslaved to the bridge) ↔
//!   `kjSpk` (inside, `10.77.S.(10+k)/24`), `lo` up;
//! - partitions are ingress `ip rule … blackhole` rules inside the namespaces, so packets vanish as
//!   on a real network (the sender sees timeouts, not errors).
//!
//! A slot is owned through an exclusive `flock` on `/run/keelson-jepsen/<prefix><slot>.lock`: the
//! kernel drops it when the owner dies, which is how `cleanup_stale` tells a crashed run's
//! leftovers from a run in progress. Only names that parse as `<prefix><slot>{br,nK,vK,pK}` are
//! ever touched, and a run deletes only what it recorded creating.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use proto::etcdserverpb::cluster_client::ClusterClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::{MemberAddRequest, MemberListRequest, MemberRemoveRequest, StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

/// Prefix of every namespace, bridge and veth this harness creates.
pub const NAME_PREFIX: &str = "kj";
/// Most members in one cluster: node numbers are one digit in names and in `10.77.S.1K`.
pub const NODES_MAX: usize = 9;
/// First two octets of every run's /24; the third is the run's slot.
const SUBNET: [u8; 2] = [10, 77];
/// Slots a run can take, one /24 each.
const SLOTS_MAX: u16 = 256;
/// Where slot lock files live (tmpfs: it is emptied on reboot, as network namespaces are).
const LOCK_DIR: &str = "/run/keelson-jepsen";
/// Longest prefix accepted, so that `<prefix>255br` fits Linux's 15-byte interface names.
const PREFIX_LEN_MAX: usize = 8;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// Where each namespace's `lookup local` rule moves, so that partition rules (below it) see
/// incoming packets before they are delivered locally.
const LOCAL_RULE_PREF: u32 = 1000;
/// Partition rule dropping packets from node `k` sits at `PARTITION_RULE_PREF_BASE + k`.
const PARTITION_RULE_PREF_BASE: u32 = 100;
/// Upper bound on one Status probe; a paused member never answers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound on one membership RPC issued by the harness.
const MEMBER_RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Upper bound on any RPC on the channels handed to clients.
const CHANNEL_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two evaluations of a condition waited for.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of each member's log printed when the cluster is dropped during a panic.
const LOG_TAIL_LINES: usize = 60;
/// Lines of each member's log put in the error of a launch that failed.
const LAUNCH_LOG_TAIL_LINES: usize = 20;

/// The store under test. Both take etcd's member flags; etcd is started as it is, Keelson as
/// `keelson store`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Keelson,
    Etcd,
}

/// Where Debian's etcd server lives.
pub const ETCD_DEFAULT_PATH: &str = "/usr/bin/etcd";

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Keelson => "keelson",
            System::Etcd => "etcd",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for System {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<System> {
        match s {
            "keelson" => Ok(System::Keelson),
            "etcd" => Ok(System::Etcd),
            other => bail!("unknown system {other:?}; known: keelson, etcd"),
        }
    }
}

/// The version an etcd binary reports (`etcd --version`: "etcd Version: 3.4.23").
pub fn etcd_version(binary: &Path) -> Result<(u32, u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_etcd_version(&text).ok_or_else(|| anyhow!("{} --version printed no version: {text:?}", binary.display()))
}

fn parse_etcd_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.lines().find_map(|l| l.strip_prefix("etcd Version:"))?.trim();
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?))
}

/// Whether an etcd version answers progress requests only once every event below the reported
/// revision has been sent: etcd issue 15220 (a requested progress notification carries the
/// store's revision even to a watcher still catching up) was fixed for good in 3.4.31 and 3.5.13.
pub fn etcd_progress_is_ordered(version: (u32, u32, u32)) -> bool {
    match version {
        (3, 4, patch) => patch >= 31,
        (3, 5, patch) => patch >= 13,
        (major, minor, _) => (major, minor) >= (3, 6),
    }
}

/// How to run a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub system: System,
    /// The `keelson` binary, or etcd's.
    pub binary: PathBuf,
    /// Members, 1..=NODES_MAX (3 or 5 in practice).
    pub nodes: usize,
    /// Directory of the run: `<dir>/nK/data` and `<dir>/nK.log` (kept after the run).
    pub dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    /// `--snapshot-catchup-entries` of Keelson's members (entries kept behind a snapshot); None
    /// leaves Keelson's default. etcd 3.4 has no such flag.
    pub snapshot_catchup_entries: Option<u64>,
    /// Further member flags given to every member at every start.
    pub extra_flags: Vec<String>,
    /// `KEELSON_LOG` of every Keelson member.
    pub log_filter: String,
    /// How long a fresh cluster may take to answer and elect a leader.
    pub ready_within: Duration,
}

impl ClusterOpts {
    /// Keelson's own defaults for timing and snapshots (etcd's are the same).
    pub fn new(binary: PathBuf, nodes: usize, dir: PathBuf) -> ClusterOpts {
        ClusterOpts {
            system: System::Keelson,
            binary,
            nodes,
            dir,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 10_000,
            snapshot_catchup_entries: None,
            extra_flags: Vec::new(),
            log_filter: "info,openraft=warn".to_string(),
            ready_within: Duration::from_secs(60),
        }
    }
}

/// The `keelson` binary: `$KEELSON_BIN`, else `keelson` in the directory of the running executable
/// or one of its two parents (`target/debug/deps/<test>` → `target/debug/keelson`).
pub fn find_keelson_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KEELSON_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("KEELSON_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("keelson");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no keelson binary next to {} or in its two parent directories, and KEELSON_BIN is unset: \
         build it with cargo build -p control",
        exe.display()
    )
}

/// What a run creates, in creation order; deleted in reverse.
#[derive(Clone, Debug)]
enum Resource {
    Bridge(String),
    Netns(String),
    /// The root-namespace end; deleting it deletes its peer.
    Veth(String),
}

/// A partition rule: in `node`'s namespace, drop packets coming from `from`.
type Rule = (usize, usize);

/// One member's process and the flags it is started with.
struct NodeProc {
    child: Option<Child>,
    paused: bool,
    /// Removed from the membership (its data wiped) until added back.
    removed: bool,
    initial_cluster: String,
    cluster_state: &'static str,
    starts: u32,
    member_id: Option<u64>,
}

/// A running cluster. Every method that changes processes or the network is synchronous and takes
/// milliseconds (it runs `ip` and `kill`); call it through `spawn_blocking` from latency-sensitive
/// async code. Dropping it (or `shutdown`) kills the members and deletes the network.
pub struct Cluster {
    opts: ClusterOpts,
    prefix: String,
    slot: u8,
    run_id: String,
    channels: Vec<Channel>,
    procs: Mutex<Vec<NodeProc>>,
    created: Mutex<Vec<Resource>>,
    rules: Mutex<BTreeSet<Rule>>,
    /// Holds the slot; released last.
    lock: Mutex<Option<File>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop cleanup.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// Creates the network, starts every member with `--initial-cluster-state new` and waits until
    /// all answer Status and agree on a leader. Leftovers of crashed runs are removed first.
    pub async fn launch(opts: ClusterOpts) -> Result<Cluster> {
        if opts.nodes == 0 || opts.nodes > NODES_MAX {
            bail!("a cluster has 1..={NODES_MAX} members, not {}", opts.nodes);
        }
        if !opts.binary.is_file() {
            match opts.system {
                System::Keelson => bail!(
                    "the keelson binary {} does not exist: build it with cargo build -p control",
                    opts.binary.display()
                ),
                System::Etcd => bail!(
                    "the etcd binary {} does not exist: install Debian's etcd-server (scripts/setup)",
                    opts.binary.display()
                ),
            }
        }
        check_privileges()?;
        match cleanup_stale(NAME_PREFIX) {
            Ok(removed) if !removed.is_empty() => tracing::warn!(?removed, "removed leftovers of crashed runs"),
            Ok(_) => {}
            // Other slots' leftovers do not stop this run: claim_slot skips slots with names in use.
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot remove leftovers of crashed runs"),
        }
        let (slot, lock) = claim_slot(NAME_PREFIX)?;
        fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let run_id = format!("keelson-jepsen-{NAME_PREFIX}{slot}-{}-{nanos}", std::process::id());
        let mut channels = Vec::new();
        let mut procs = Vec::new();
        for i in 0..opts.nodes {
            let url = format!("http://{}:{CLIENT_PORT}", node_ip(slot, i));
            let channel = Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad client URL {url}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CHANNEL_RPC_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push(channel);
            procs.push(NodeProc {
                child: None,
                paused: false,
                removed: false,
                initial_cluster: String::new(),
                cluster_state: "new",
                starts: 0,
                member_id: None,
            });
        }
        let cluster = Cluster {
            prefix: NAME_PREFIX.to_string(),
            slot,
            run_id,
            channels,
            procs: Mutex::new(procs),
            created: Mutex::new(Vec::new()),
            rules: Mutex::new(BTreeSet::new()),
            lock: Mutex::new(Some(lock)),
            opts,
        };
        let subnet = format!("10.77.{slot}.0/24");
        tracing::info!(run = %cluster.run_id, %subnet, dir = %cluster.opts.dir.display(), "launching a cluster");
        // From here on, an early return drops `cluster`, which deletes whatever was created.
        cluster.create_network()?;
        let initial = cluster.initial_cluster(&(0..cluster.opts.nodes).collect::<Vec<_>>());
        {
            let mut procs = locked(&cluster.procs);
            for (i, p) in procs.iter_mut().enumerate() {
                p.initial_cluster = initial.clone();
                p.cluster_state = "new";
                cluster.spawn(i, p)?;
            }
        }
        if let Err(e) = cluster.wait_healthy(cluster.opts.ready_within).await {
            // The caller sees only this error: the cluster (and its processes) are gone after it.
            let tails: Vec<String> = (0..cluster.opts.nodes)
                .map(|i| format!("--- {} ---\n{}", node_name(i), log_tail(&cluster.log_path(i), LAUNCH_LOG_TAIL_LINES)))
                .collect();
            let prefix = cluster.resource_prefix();
            return Err(e.context(format!(
                "the new cluster of run {prefix} did not become ready; last log lines:\n{}",
                tails.join("\n")
            )));
        }
        Ok(cluster)
    }

    fn create_network(&self) -> Result<()> {
        let bridge = self.bridge_name();
        let gateway = format!("{}/24", self.gateway_ip());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        locked(&self.created).push(Resource::Bridge(bridge.clone()));
        ip(&["addr", "add", &gateway, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..self.opts.nodes {
            let ns = self.netns_name(i);
            let (outer, inner) = (self.veth_root_name(i), self.veth_node_name(i));
            ip(&["netns", "add", &ns]).with_context(|| {
                format!("cannot create network namespace {ns}: the jepsen harness needs root (CAP_SYS_ADMIN)")
            })?;
            locked(&self.created).push(Resource::Netns(ns.clone()));
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns])?;
            locked(&self.created).push(Resource::Veth(outer.clone()));
            ip(&["link", "set", &outer, "master", &bridge, "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let local_pref = LOCAL_RULE_PREF.to_string();
            ip(&["-n", &ns, "rule", "add", "pref", &local_pref, "lookup", "local"])?;
            ip(&["-n", &ns, "rule", "del", "pref", "0", "lookup", "local"])?;
        }
        Ok(())
    }

    fn spawn(&self, i: usize, p: &mut NodeProc) -> Result<()> {
        if let Some(child) = &mut p.child {
            if matches!(child.try_wait(), Ok(None)) {
                bail!("{} is already running", node_name(i));
            }
        }
        p.child = None;
        p.paused = false;
        p.starts += 1;
        let name = node_name(i);
        let data_dir = self.data_dir(i);
        fs::create_dir_all(data_dir.parent().unwrap_or(&self.opts.dir))
            .with_context(|| format!("cannot create the directory of {}", data_dir.display()))?;
        let log_path = self.log_path(i);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(log, "===== harness: start #{} of {name} ({}) =====", p.starts, p.cluster_state)
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        let stdout = log.try_clone().context("cannot clone a log handle")?;
        let (client, peer) = (self.client_endpoint(i), self.peer_url(i));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns_name(i)]).arg(&self.opts.binary);
        match self.opts.system {
            System::Keelson => {
                command.arg("store").env("KEELSON_LOG", &self.opts.log_filter).env_remove("RUST_LOG");
                if let Some(entries) = self.opts.snapshot_catchup_entries {
                    command.args(["--snapshot-catchup-entries", &entries.to_string()]);
                }
            }
            System::Etcd => {
                // Settings from the caller's ETCD_* variables would override the flags below.
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("ETCD_") {
                        command.env_remove(key);
                    }
                }
                command.args(["--logger", "zap", "--log-outputs", "stderr"]);
            }
        }
        let child = command
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &p.initial_cluster, "--initial-cluster-state", p.cluster_state])
            .args(["--initial-cluster-token", &self.run_id])
            .args(["--heartbeat-interval", &self.opts.heartbeat_interval_ms.to_string()])
            .args(["--election-timeout", &self.opts.election_timeout_ms.to_string()])
            .args(["--snapshot-count", &self.opts.snapshot_count.to_string()])
            .args(&self.opts.extra_flags)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| {
                format!("cannot start {name} ({} in {})", self.opts.binary.display(), self.netns_name(i))
            })?;
        // `ip netns exec` execs the binary in place, so this is the member's own pid.
        tracing::info!(node = %name, pid = child.id(), start = p.starts, "started");
        p.child = Some(child);
        Ok(())
    }

    /// The token given to `--initial-cluster-token`, unique per run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Prefix of every name this run created (`kj17`): namespaces `<it>nK`, bridge `<it>br`, veths
    /// `<it>vK`.
    pub fn resource_prefix(&self) -> String {
        format!("{}{}", self.prefix, self.slot)
    }

    /// The names of the namespaces, bridge and veths of this run (whether they exist now or not).
    pub fn resource_names(&self) -> Vec<String> {
        let mut names = vec![self.bridge_name()];
        for i in 0..self.opts.nodes {
            names.push(self.netns_name(i));
            names.push(self.veth_root_name(i));
        }
        names
    }

    pub fn node_count(&self) -> usize {
        self.opts.nodes
    }

    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    /// `n1`, `n2`, ... for node index 0, 1, ...
    pub fn node_name(&self, i: usize) -> String {
        node_name(i)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        node_ip(self.slot, i)
    }

    /// The bridge's address: where clients in the root namespace come from.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], self.slot, 1)
    }

    pub fn client_endpoint(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.node_ip(i))
    }

    pub fn client_endpoints(&self) -> Vec<String> {
        (0..self.opts.nodes).map(|i| self.client_endpoint(i)).collect()
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("http://{}:{PEER_PORT}", self.node_ip(i))
    }

    /// A lazily connecting gRPC channel to node `i`'s client URL (reconnects after restarts).
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i].clone()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.opts.dir.join(node_name(i)).join("data")
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.opts.dir.join(format!("{}.log", node_name(i)))
    }

    pub fn netns_name(&self, i: usize) -> String {
        format!("{}{}n{}", self.prefix, self.slot, i + 1)
    }

    fn bridge_name(&self) -> String {
        format!("{}{}br", self.prefix, self.slot)
    }

    fn veth_root_name(&self, i: usize) -> String {
        format!("{}{}v{}", self.prefix, self.slot, i + 1)
    }

    fn veth_node_name(&self, i: usize) -> String {
        format!("{}{}p{}", self.prefix, self.slot, i + 1)
    }

    /// `nK=peer-url,...` for the given nodes.
    fn initial_cluster(&self, nodes: &[usize]) -> String {
        nodes.iter().map(|&i| format!("{}={}", node_name(i), self.peer_url(i))).collect::<Vec<_>>().join(",")
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.opts.nodes {
            bail!("no node {i}: the cluster has {} nodes", self.opts.nodes);
        }
        Ok(())
    }

    /// SIGKILLs node `i` (paused or not) and reaps it.
    pub fn kill(&self, i: usize) -> Result<()> {
        self.check_index(i)?;
        let mut procs = locked(&self.procs);
        let p = &mut procs[i];
        let mut child = p.child.take().ok_or_else(|| anyhow!("{} is not running", node_name(i)))?;
        p.paused = false;
        if let Err(e) = child.kill() {
            // Already exited: reaping below is all that is left.
            tracing::debug!(node = %node_name(i), error = %e, "SIGKILL failed");
        }
        let status = child.wait().with_context(|| format!("cannot reap {}", node_name(i)))?;
        tracing::info!(node = %node_name(i), %status, "killed");
        Ok(())
    }

    /// Starts a stopped node again with the flags and data directory it had.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.check_index(i)?;
        let mut procs = locked(&self.procs);
        if procs[i].removed {
            bail!("{} was removed from the cluster: add it back instead", node_name(i));
        }
        self.spawn(i, &mut procs[i])
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal_running(i, "STOP", true)
    }

    /// SIGCONTs node `i`.
    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal_running(i, "CONT", false)
    }

    fn signal_running(&self, i: usize, signal: &str, paused: bool) -> Result<()> {
        self.check_index(i)?;
        let mut procs = locked(&self.procs);
        let p = &mut procs[i];
        let pid = match p.child.as_mut().map(|c| (c.id(), c.try_wait())) {
            Some((pid, Ok(None))) => pid,
            _ => bail!("{} is not running", node_name(i)),
        };
        send_signal(pid, signal)?;
        p.paused = paused;
        tracing::info!(node = %node_name(i), pid, signal, "signalled");
        Ok(())
    }

    /// Whether node `i`'s process is alive (a paused process is).
    pub fn is_running(&self, i: usize) -> bool {
        let mut procs = locked(&self.procs);
        match procs.get_mut(i).and_then(|p| p.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Node `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        locked(&self.procs).get(i).and_then(|p| p.child.as_ref()).map(Child::id)
    }

    /// How node `i`'s process ended, if it exited without the harness stopping it.
    pub fn exited_on_its_own(&self, i: usize) -> Option<std::process::ExitStatus> {
        let mut procs = locked(&self.procs);
        procs.get_mut(i).and_then(|p| p.child.as_mut()).and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_paused(&self, i: usize) -> bool {
        locked(&self.procs).get(i).is_some_and(|p| p.paused)
    }

    /// Whether node `i` is out of the membership (see `remove_member`).
    pub fn is_removed(&self, i: usize) -> bool {
        locked(&self.procs).get(i).is_some_and(|p| p.removed)
    }

    /// Nodes that are running, not paused and members: those that can answer.
    pub fn live_nodes(&self) -> Vec<usize> {
        (0..self.opts.nodes).filter(|&i| self.is_running(i) && !self.is_paused(i) && !self.is_removed(i)).collect()
    }

    /// The member ID of node `i`, as learned from its Status or from MemberAdd.
    pub fn member_id(&self, i: usize) -> Option<u64> {
        locked(&self.procs).get(i).and_then(|p| p.member_id)
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        locked(&self.procs).iter().position(|p| p.member_id == Some(id))
    }

    /// Node `i`'s Status, within `STATUS_TIMEOUT`.
    pub async fn status(&self, i: usize) -> Result<StatusResponse> {
        self.check_index(i)?;
        status_of(self.channels[i].clone(), i).await
    }

    /// The node that a majority of the membership reports as leader, asking every live node.
    pub async fn leader(&self) -> Option<usize> {
        let members = (0..self.opts.nodes).filter(|&i| !self.is_removed(i)).count();
        let mut probes = tokio::task::JoinSet::new();
        for i in self.live_nodes() {
            let channel = self.channels[i].clone();
            probes.spawn(async move { (i, status_of(channel, i).await) });
        }
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        while let Some(joined) = probes.join_next().await {
            let Ok((i, Ok(status))) = joined else { continue };
            self.learn_id(i, &status);
            if status.leader != 0 {
                *votes.entry(status.leader).or_default() += 1;
            }
        }
        let (&id, _) = votes.iter().find(|(_, &n)| n > members / 2)?;
        self.index_of(id).filter(|&i| self.is_running(i))
    }

    fn learn_id(&self, i: usize, status: &StatusResponse) {
        if let Some(id) = status.header.as_ref().map(|h| h.member_id).filter(|&id| id != 0) {
            locked(&self.procs)[i].member_id = Some(id);
        }
    }

    /// Waits until every live node answers Status and all name the same leader, which is live;
    /// returns the leader.
    pub async fn wait_healthy(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            // A member that died will not come back by waiting.
            if let Some(exit) = self.exited_on_their_own().into_iter().next() {
                bail!("{exit}");
            }
            let last = match self.healthy_once().await {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(last.context(format!(
                    "the cluster was not healthy within {within:?} (logs: {})",
                    self.opts.dir.display()
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Members whose process exited without the harness stopping it, described.
    fn exited_on_their_own(&self) -> Vec<String> {
        let mut procs = locked(&self.procs);
        let mut out = Vec::new();
        for (i, p) in procs.iter_mut().enumerate() {
            if let Some(Ok(Some(status))) = p.child.as_mut().map(Child::try_wait) {
                out.push(format!("{} exited on its own: {status} (log {})", node_name(i), self.log_path(i).display()));
            }
        }
        out
    }

    async fn healthy_once(&self) -> Result<usize> {
        let live = self.live_nodes();
        if live.is_empty() {
            bail!("no node is running");
        }
        let mut leaders = BTreeMap::new();
        for &i in &live {
            let status = self.status(i).await?;
            self.learn_id(i, &status);
            leaders.insert(node_name(i), status.leader);
        }
        let distinct: BTreeSet<u64> = leaders.values().copied().collect();
        match distinct.iter().next() {
            Some(&id) if distinct.len() == 1 && id != 0 => match self.index_of(id) {
                Some(i) if live.contains(&i) => Ok(i),
                _ => bail!("the leader {id:x} is not a live node"),
            },
            _ => bail!("the nodes do not agree on a leader: {leaders:x?}"),
        }
    }

    /// Waits until the live nodes among `among` agree on a leader that is one of them.
    pub async fn wait_leader_among(&self, among: &[usize], within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = BTreeMap::new();
            let mut errors = Vec::new();
            for &i in among {
                match self.status(i).await {
                    Ok(s) => {
                        self.learn_id(i, &s);
                        seen.insert(i, s.leader);
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            let distinct: BTreeSet<u64> = seen.values().copied().collect();
            if errors.is_empty() && distinct.len() == 1 {
                if let Some(l) = distinct.iter().next().and_then(|&id| self.index_of(id)) {
                    if among.contains(&l) {
                        return Ok(l);
                    }
                }
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = among.iter().map(|&i| node_name(i)).collect();
                bail!("{names:?} did not agree on a leader among them within {within:?}: saw {seen:x?}; {errors:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Cuts the network so that two nodes can talk only if some group holds both; a node in no
    /// group is isolated. Replaces any partition in force. Clients (the bridge) are not affected.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<()> {
        for &i in groups.iter().flatten() {
            self.check_index(i)?;
        }
        self.heal_partition()?;
        let mut rules = locked(&self.rules);
        for (a, b) in severed_pairs(self.opts.nodes, groups) {
            for (node, from) in [(a, b), (b, a)] {
                self.partition_rule("add", node, from)?;
                rules.insert((node, from));
            }
        }
        tracing::info!(groups = ?groups, rules = rules.len(), "partitioned");
        Ok(())
    }

    /// Removes every partition rule this cluster added.
    pub fn heal_partition(&self) -> Result<()> {
        let mut rules = locked(&self.rules);
        let mut errors = Vec::new();
        for &(node, from) in rules.clone().iter() {
            match self.partition_rule("del", node, from) {
                Ok(()) => {
                    rules.remove(&(node, from));
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("cannot remove partition rules: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Node pairs (a < b) that cannot talk now.
    pub fn severed(&self) -> BTreeSet<(usize, usize)> {
        locked(&self.rules).iter().map(|&(a, b)| (a.min(b), a.max(b))).collect()
    }

    fn partition_rule(&self, verb: &str, node: usize, from: usize) -> Result<()> {
        let pref = (PARTITION_RULE_PREF_BASE + from as u32).to_string();
        let source = self.node_ip(from).to_string();
        let (ns, dev) = (self.netns_name(node), self.veth_node_name(node));
        ip(&["-n", &ns, "rule", verb, "pref", &pref, "from", &source, "iif", &dev, "blackhole"])
    }

    /// Removes node `i` from the membership (MemberRemove through another live node), then kills it
    /// and wipes its data directory, as an operator replacing a member would.
    pub async fn remove_member(&self, i: usize, within: Duration) -> Result<()> {
        self.check_index(i)?;
        let id = self.member_id(i).ok_or_else(|| anyhow!("the member ID of {} is unknown", node_name(i)))?;
        let deadline = Instant::now() + within;
        let mut last = String::from("no live node to ask");
        'done: loop {
            for j in self.live_nodes().into_iter().filter(|&j| j != i) {
                let mut client = ClusterClient::new(self.channels[j].clone());
                match tokio::time::timeout(MEMBER_RPC_TIMEOUT, client.member_remove(MemberRemoveRequest { id })).await {
                    Ok(Ok(_)) => break 'done,
                    // An earlier attempt whose answer was lost did it.
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => break 'done,
                    Ok(Err(s)) => {
                        last = format!("{} via {}: {:?} {}", node_name(i), node_name(j), s.code(), s.message())
                    }
                    Err(_) => last = format!("MemberRemove via {} took over {MEMBER_RPC_TIMEOUT:?}", node_name(j)),
                }
            }
            if Instant::now() >= deadline {
                bail!("cannot remove {} within {within:?}: {last}", node_name(i));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        if self.is_running(i) {
            self.kill(i)?;
        } else if let Some(mut child) = locked(&self.procs)[i].child.take() {
            // etcd exits by itself once it learns of its removal: reap it, so that it does not
            // count as a member that died.
            let status = child.wait().with_context(|| format!("cannot reap {}", node_name(i)))?;
            tracing::info!(node = %node_name(i), %status, "exited after its removal");
        }
        let dir = self.data_dir(i);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot wipe {}", dir.display()))?;
        }
        locked(&self.procs)[i].removed = true;
        tracing::info!(node = %node_name(i), id = %format!("{id:x}"), "removed from the membership");
        Ok(())
    }

    /// Adds a removed node back (MemberAdd with its peer URL) and starts it on an empty data
    /// directory with `--initial-cluster-state existing`.
    pub async fn add_member(&self, i: usize, within: Duration) -> Result<()> {
        self.check_index(i)?;
        if !self.is_removed(i) {
            bail!("{} is a member already", node_name(i));
        }
        let peer = self.peer_url(i);
        let deadline = Instant::now() + within;
        let mut last = String::from("no live node to ask");
        let id = 'done: loop {
            for j in self.live_nodes() {
                let mut client = ClusterClient::new(self.channels[j].clone());
                let req = MemberAddRequest { peer_ur_ls: vec![peer.clone()], is_learner: false };
                match tokio::time::timeout(MEMBER_RPC_TIMEOUT, client.member_add(req)).await {
                    Ok(Ok(r)) => break 'done r.into_inner().member.map(|m| m.id),
                    // An earlier attempt whose answer was lost did it: find the ID in the list.
                    Ok(Err(s)) if s.message().contains("Peer URLs already exists") => {
                        let list = client.member_list(MemberListRequest { linearizable: false }).await;
                        let members = list.map(|r| r.into_inner().members).unwrap_or_default();
                        break 'done members.iter().find(|m| m.peer_ur_ls.contains(&peer)).map(|m| m.id);
                    }
                    Ok(Err(s)) => last = format!("via {}: {:?} {}", node_name(j), s.code(), s.message()),
                    Err(_) => last = format!("MemberAdd via {} took over {MEMBER_RPC_TIMEOUT:?}", node_name(j)),
                }
            }
            if Instant::now() >= deadline {
                bail!("cannot add {} back within {within:?}: {last}", node_name(i));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let members: Vec<usize> = (0..self.opts.nodes).filter(|&j| j == i || !self.is_removed(j)).collect();
        let initial = self.initial_cluster(&members);
        let mut procs = locked(&self.procs);
        let p = &mut procs[i];
        p.removed = false;
        p.member_id = id.or(p.member_id);
        p.initial_cluster = initial;
        p.cluster_state = "existing";
        self.spawn(i, p)?;
        tracing::info!(node = %node_name(i), "added back to the membership");
        Ok(())
    }

    /// Kills every process, deletes every namespace, veth and bridge the run created and releases
    /// the slot. Idempotent; tries everything and reports every failure.
    pub fn shutdown(&self) -> Result<()> {
        let mut errors = Vec::new();
        for (i, p) in locked(&self.procs).iter_mut().enumerate() {
            if let Some(mut child) = p.child.take() {
                if let Err(e) = child.kill() {
                    tracing::debug!(node = %node_name(i), error = %e, "SIGKILL failed (exited already?)");
                }
                if let Err(e) = child.wait() {
                    errors.push(format!("cannot reap {}: {e}", node_name(i)));
                }
            }
            p.paused = false;
        }
        let mut created = locked(&self.created);
        if let Err(e) = kill_namespace_processes(created.iter().filter_map(|r| match r {
            Resource::Netns(ns) => Some(ns.as_str()),
            _ => None,
        })) {
            errors.push(format!("{e:#}"));
        }
        while let Some(r) = created.pop() {
            if let Err(e) = delete_resource(&r) {
                errors.push(format!("{e:#}"));
                // Leave it to cleanup_stale rather than loop on it.
            }
        }
        locked(&self.rules).clear();
        locked(&self.lock).take();
        if !errors.is_empty() {
            bail!("cleanup of run {} was incomplete: {}", self.run_id, errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.opts.nodes {
                let path = self.log_path(i);
                eprintln!("===== {} log {}, last {LOG_TAIL_LINES} lines =====", node_name(i), path.display());
                eprintln!("{}", log_tail(&path, LOG_TAIL_LINES));
            }
        }
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %format!("{e:#}"), "cluster cleanup failed");
            eprintln!("cluster cleanup failed: {e:#}");
        }
    }
}

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn node_ip(slot: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], slot, 11 + i as u8)
}

async fn status_of(channel: Channel, i: usize) -> Result<StatusResponse> {
    let mut client = MaintenanceClient::new(channel);
    match tokio::time::timeout(STATUS_TIMEOUT, client.status(StatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => bail!("{}: Status: {:?} {}", node_name(i), s.code(), s.message()),
        Err(_) => bail!("{}: no Status within {STATUS_TIMEOUT:?}", node_name(i)),
    }
}

/// Node pairs (a < b) of `0..nodes` that share no group.
pub fn severed_pairs(nodes: usize, groups: &[Vec<usize>]) -> BTreeSet<(usize, usize)> {
    let mut out = BTreeSet::new();
    for a in 0..nodes {
        for b in a + 1..nodes {
            if !groups.iter().any(|g| g.contains(&a) && g.contains(&b)) {
                out.insert((a, b));
            }
        }
    }
    out
}

/// The last `lines` lines of a file, or why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs `ip` with `args`; the error says which command failed and why.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("the `ip` command is missing: install iproute2")
        } else {
            anyhow!("cannot run ip: {e}")
        }
    })?;
    if !out.status.success() {
        bail!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Like `ip`, returning stdout.
fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// Namespaces need root; say so plainly instead of letting `ip` fail obscurely.
fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    if euid != "0" {
        bail!("the jepsen harness creates network namespaces and must run as root (effective uid {euid})");
    }
    ip_output(&["-V"]).context("the jepsen harness needs the `ip` command (iproute2)")?;
    Ok(())
}

/// What a name of ours is; `None` for anything else.
fn parse_name(prefix: &str, name: &str) -> Option<(u8, Resource)> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (slot, kind) = rest.split_at(digits);
    if slot.is_empty() || slot.len() > 3 || (slot.len() > 1 && slot.starts_with('0')) {
        return None;
    }
    let slot: u8 = slot.parse().ok()?;
    let node = |tag: char| {
        kind.strip_prefix(tag).filter(|k| k.len() == 1 && k.as_bytes()[0].is_ascii_digit() && *k != "0").is_some()
    };
    let r = if kind == "br" {
        Resource::Bridge(name.to_string())
    } else if node('n') {
        Resource::Netns(name.to_string())
    } else if node('v') {
        Resource::Veth(name.to_string())
    } else {
        return None;
    };
    Some((slot, r))
}

/// Every namespace and root-namespace link whose name is ours, by slot.
fn our_resources(prefix: &str) -> Result<BTreeMap<u8, Vec<Resource>>> {
    let mut names: Vec<String> =
        ip_output(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    for entry in fs::read_dir("/sys/class/net").context("cannot list /sys/class/net")? {
        names.push(entry.context("cannot list /sys/class/net")?.file_name().to_string_lossy().into_owned());
    }
    let mut out: BTreeMap<u8, Vec<Resource>> = BTreeMap::new();
    for name in names {
        if let Some((slot, r)) = parse_name(prefix, &name) {
            out.entry(slot).or_default().push(r);
        }
    }
    Ok(out)
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > PREFIX_LEN_MAX || !prefix.bytes().all(|b| b.is_ascii_lowercase()) {
        bail!("a resource prefix is 1..={PREFIX_LEN_MAX} lowercase letters, not {prefix:?}");
    }
    Ok(())
}

fn try_lock_slot(prefix: &str, slot: u8) -> Result<Option<File>> {
    fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
    let path = Path::new(LOCK_DIR).join(format!("{prefix}{slot}.lock"));
    // Lock files are never deleted: unlinking one another run has open would let two runs own a slot.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Takes a free slot: unlocked, no names of ours in it, and no address or route of the root
/// namespace inside its /24. Starts at a pid-derived slot so parallel runs rarely contend.
fn claim_slot(prefix: &str) -> Result<(u8, File)> {
    let existing = our_resources(prefix)?;
    let addrs = ip_output(&["-4", "-o", "addr", "show"])?;
    let routes = ip_output(&["-4", "route", "show", "table", "all"])?;
    let start = std::process::id() as u16 % SLOTS_MAX;
    for k in 0..SLOTS_MAX {
        let slot = ((start + k) % SLOTS_MAX) as u8;
        if existing.contains_key(&slot) {
            continue;
        }
        let net = format!("{}.{}.{slot}.", SUBNET[0], SUBNET[1]);
        if addrs.split_whitespace().chain(routes.split_whitespace()).any(|w| w.starts_with(&net)) {
            continue;
        }
        if let Some(lock) = try_lock_slot(prefix, slot)? {
            return Ok((slot, lock));
        }
    }
    bail!("no free slot: every 10.77.S.0/24 is in use or locked under {LOCK_DIR}")
}

/// SIGKILLs every process inside the given namespaces (ours; strays of a crashed run).
fn kill_namespace_processes<'a>(namespaces: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut errors = Vec::new();
    for ns in namespaces {
        match ip_output(&["netns", "pids", ns]) {
            Ok(pids) => {
                for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                    // A process may exit between listing and signalling.
                    if let Err(e) = send_signal(pid, "KILL") {
                        tracing::debug!(ns, pid, error = %e, "cannot SIGKILL");
                    }
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

fn delete_resource(r: &Resource) -> Result<()> {
    let result = match r {
        Resource::Bridge(name) | Resource::Veth(name) => ip(&["link", "del", name]),
        Resource::Netns(name) => ip(&["netns", "del", name]),
    };
    match result {
        // Gone already (a veth goes with its namespace's end): nothing left to do.
        Err(e) if format!("{e:#}").contains("Cannot find device") || format!("{e:#}").contains("No such file") => {
            Ok(())
        }
        other => other,
    }
}

/// Removes the namespaces, veths and bridges named `<prefix><slot>…` of runs that no longer hold
/// their slot lock (crashed: killed before `Drop` ran), killing processes left inside them. Runs
/// in progress, in this process or others, are left alone. Returns the names removed.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    check_prefix(prefix)?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for (slot, mut resources) in our_resources(prefix)? {
        let Some(_lock) = try_lock_slot(prefix, slot)? else { continue };
        kill_namespace_processes(resources.iter().filter_map(|r| match r {
            Resource::Netns(ns) => Some(ns.as_str()),
            _ => None,
        }))
        .unwrap_or_else(|e| errors.push(format!("{e:#}")));
        // Veths first (each takes its peer along), then bridges, then namespaces.
        resources.sort_by_key(|r| match r {
            Resource::Veth(_) => 0,
            Resource::Bridge(_) => 1,
            Resource::Netns(_) => 2,
        });
        for r in resources {
            let name = match &r {
                Resource::Bridge(n) | Resource::Veth(n) | Resource::Netns(n) => n.clone(),
            };
            match delete_resource(&r) {
                Ok(()) => removed.push(name),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    if !errors.is_empty() {
        bail!("could not remove every leftover: {}", errors.join("; "));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_ours_parse_and_others_do_not() {
        let slot_of = |n: &str| parse_name("kj", n).map(|(s, _)| s);
        assert_eq!(slot_of("kj17br"), Some(17));
        assert_eq!(slot_of("kj17n3"), Some(17));
        assert_eq!(slot_of("kj255v9"), Some(255));
        assert_eq!(slot_of("kj1n1"), Some(1));
        for other in ["kj17p1", "kj256br", "kj017br", "kjbr", "kj17n10", "kj17n0", "kj17x1", "eth0", "kjx17br", "k17br"]
        {
            assert_eq!(slot_of(other), None, "{other}");
        }
    }

    #[test]
    fn etcd_versions_parse_and_the_progress_fix_is_known() {
        let text = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(parse_etcd_version(text), Some((3, 4, 23)));
        assert_eq!(parse_etcd_version("etcd Version: 3.5.13-rc.0\n"), Some((3, 5, 13)));
        assert_eq!(parse_etcd_version("keelson 0.1\n"), None);
        assert!(!etcd_progress_is_ordered((3, 4, 23)));
        assert!(etcd_progress_is_ordered((3, 4, 31)));
        assert!(!etcd_progress_is_ordered((3, 5, 12)));
        assert!(etcd_progress_is_ordered((3, 6, 0)));
    }

    #[test]
    fn groups_sever_pairs_that_share_none() {
        assert_eq!(severed_pairs(3, &[vec![0], vec![1, 2]]), BTreeSet::from([(0, 1), (0, 2)]));
        // Overlapping groups: 1 bridges 0 and 2.
        assert_eq!(severed_pairs(3, &[vec![0, 1], vec![1, 2]]), BTreeSet::from([(0, 2)]));
        assert!(severed_pairs(3, &[vec![0, 1, 2]]).is_empty());
        // A node in no group is cut off from all.
        assert_eq!(severed_pairs(3, &[vec![0, 1]]), BTreeSet::from([(0, 2), (1, 2)]));
    }
}
