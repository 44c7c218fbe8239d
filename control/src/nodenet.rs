//! Nodes on one machine, each in its own network namespace standing for its own host
//! (`keelson up --nodes N`). The layout for prefix `P` and node network `A.B.C.0/24`:
//! - bridge `Pbr` in the root namespace with `A.B.C.1/24`, the nodes' shared link: the control
//!   plane listens there, and the host reaches every node (and its NodePorts) through it;
//! - node `k` (1-based) named `Pk`: namespace `Pk`, veth `Pvk` (root side, on the bridge) ↔
//!   `eth0` inside with `A.B.C.(10+k)/24` and a default route through the bridge's address; its
//!   agent (and the agent's containerd, shims and pods) runs in that namespace, its pods' cgroups
//!   under `/keelson-nodes/Pk`.
//!
//! What a run creates is owned through an exclusive `flock` on `/run/keelson/nodes-P.lock`: the
//! kernel drops it when the owner dies, so whoever takes it next knows that names with the prefix
//! are a crashed run's and removes them (processes, pods' cgroups and namespaces included).

use std::fs::{File, OpenOptions, TryLockError};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Most nodes in one run (names stay within Linux's 15-byte interface names).
pub const NODES_MAX: usize = 99;
/// Longest prefix accepted: `<prefix>v99` must fit 15 bytes.
pub const PREFIX_LEN_MAX: usize = 12;
/// Where lock files live (tmpfs, emptied on reboot as network namespaces are).
const LOCK_DIR: &str = "/run/keelson";
/// The cgroup under which each node's pods' cgroups go.
const CGROUP_PARENT: &str = "/keelson-nodes";
/// How long killed processes may take to be gone.
const KILL_WITHIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The names and addresses of one run's nodes.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    prefix: String,
    /// The first three octets of the nodes' /24.
    net: [u8; 3],
}

impl NodeNetwork {
    /// `prefix` names everything the run creates (letters and digits, starting with a letter);
    /// `cidr` is the nodes' /24.
    pub fn new(prefix: &str, cidr: &str) -> Result<NodeNetwork> {
        let valid = prefix.len() <= PREFIX_LEN_MAX
            && prefix.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            bail!("node prefix {prefix:?}: 1 to {PREFIX_LEN_MAX} lowercase letters and digits, starting with a letter");
        }
        let (addr, len) = cidr.split_once('/').with_context(|| format!("node network {cidr:?} is not a.b.c.0/24"))?;
        let addr: Ipv4Addr = addr.parse().with_context(|| format!("node network {cidr:?} is not a.b.c.0/24"))?;
        let o = addr.octets();
        if len != "24" || o[3] != 0 {
            bail!("node network {cidr:?}: a /24 is expected, a.b.c.0/24");
        }
        Ok(NodeNetwork { prefix: prefix.into(), net: [o[0], o[1], o[2]] })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 1)
    }

    /// Node `k`'s name, which is also its namespace's.
    pub fn node_name(&self, k: usize) -> String {
        format!("{}{k}", self.prefix)
    }

    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 10 + k as u8)
    }

    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn veth(&self, k: usize) -> String {
        format!("{}v{k}", self.prefix)
    }

    /// The cgroup node `k`'s pods go under (its agent's `--cgroup-root`).
    pub fn cgroup_root(&self, k: usize) -> String {
        format!("{CGROUP_PARENT}/{}", self.node_name(k))
    }

    fn lock_path(&self) -> PathBuf {
        Path::new(LOCK_DIR).join(format!("nodes-{}.lock", self.prefix))
    }

    /// Takes the run's lock; whatever carries the prefix then is a crashed run's and is removed.
    pub fn claim(&self) -> Result<File> {
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                bail!("nodes named {}* are in use by another run (it holds {})", self.prefix, path.display())
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        self.remove_all().context("removing a crashed run's nodes")?;
        Ok(file)
    }

    /// Creates the nodes' bridge with the gateway address, if missing.
    pub fn create_bridge(&self) -> Result<()> {
        let bridge = self.bridge();
        if !link_exists(&bridge) {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        Ok(())
    }

    /// Creates the bridge, if missing, and node `k`'s namespace and link.
    pub fn create_node(&self, k: usize) -> Result<()> {
        if k == 0 || k > NODES_MAX {
            bail!("nodes are numbered 1 to {NODES_MAX}, not {k}");
        }
        self.create_bridge()?;
        let bridge = self.bridge();
        let (ns, veth) = (self.node_name(k), self.veth(k));
        ip(&["netns", "add", &ns]).with_context(|| format!("creating network namespace {ns} (this needs root)"))?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["link", "set", &veth, "master", &bridge, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(k)), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &self.gateway().to_string()])?;
        Ok(())
    }

    /// A command that runs in node `k`'s network namespace (and only there: the mount namespace
    /// is the host's, so that the node's containerd, runc and CNI see the same files as the host).
    pub fn command(&self, k: usize, program: &Path) -> Result<Command> {
        let path = Path::new("/var/run/netns").join(self.node_name(k));
        let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut command = Command::new(program);
        // No parent-death signal: it follows the thread that forked, and an async runtime's
        // threads come and go; a crashed run's nodes are removed by the next claim instead.
        // SAFETY: setns is an async-signal-safe system call; `ns` outlives the spawn (the
        // closure owns it) and is closed on exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Kills node `k` as a host is lost: every process in its namespace and every pod's process
    /// at once (SIGKILL), then removes its pods' namespaces, its own namespace and its link.
    pub fn kill_node(&self, k: usize) -> Result<()> {
        let ns = self.node_name(k);
        let mut errors = Vec::new();
        if netns_exists(&ns) {
            if let Err(e) = kill_until_gone(|| namespace_pids(&ns)) {
                errors.push(format!("{e:#}"));
            }
        }
        let cgroup = self.cgroup_root(k);
        if let Err(e) = kill_until_gone(|| Ok(cgroup_pids(&cgroup))) {
            errors.push(format!("{e:#}"));
        }
        remove_cgroups(&cgroup);
        if netns_exists(&ns) {
            // Pods' namespaces (CNI's, under /var/run/netns) hold addresses of this node's link
            // peers only while the node's namespace lives: find them first.
            for pod_ns in pod_namespaces_of(&ns) {
                if let Err(e) = ip(&["netns", "del", &pod_ns]) {
                    errors.push(format!("{e:#}"));
                }
            }
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(format!("{e:#}"));
            }
        }
        // The link usually goes with the namespace (a veth pair dies with either end), though
        // the kernel tears a namespace down in the background.
        let veth = self.veth(k);
        if link_exists(&veth) {
            match ip(&["link", "del", &veth]) {
                Err(e) if !format!("{e:#}").contains("Cannot find device") => errors.push(format!("{e:#}")),
                _ => {}
            }
        }
        if !errors.is_empty() {
            bail!("node {ns} was not removed completely: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Removes every node and the bridge (whatever exists of them).
    pub fn remove_all(&self) -> Result<()> {
        let mut errors = Vec::new();
        for k in 1..=NODES_MAX {
            let leftover =
                netns_exists(&self.node_name(k)) || link_exists(&self.veth(k)) || cgroup_exists(&self.cgroup_root(k));
            if leftover {
                if let Err(e) = self.kill_node(k) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        remove_cgroups(CGROUP_PARENT);
        let bridge = self.bridge();
        if link_exists(&bridge) {
            if let Err(e) = ip(&["link", "del", &bridge]) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// The names of whatever of this run's exists now: namespaces, links and pods' cgroups.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for k in 1..=NODES_MAX {
            let (ns, veth, cgroup) = (self.node_name(k), self.veth(k), self.cgroup_root(k));
            if netns_exists(&ns) {
                found.push(format!("namespace {ns}"));
            }
            if link_exists(&veth) {
                found.push(format!("link {veth}"));
            }
            if cgroup_exists(&cgroup) {
                found.push(format!("cgroup {cgroup}"));
            }
        }
        if link_exists(&self.bridge()) {
            found.push(format!("link {}", self.bridge()));
        }
        found
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn namespace_pids(ns: &str) -> Result<Vec<i32>> {
    Ok(ip(&["netns", "pids", ns])?.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// Every process in `cgroup` or below it, in any hierarchy.
fn cgroup_pids(cgroup: &str) -> Vec<i32> {
    fn walk(dir: &Path, pids: &mut Vec<i32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), pids);
            }
        }
    }
    let mut pids = Vec::new();
    for dir in agent::cgroups::dirs_of(cgroup) {
        walk(&dir, &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn cgroup_exists(cgroup: &str) -> bool {
    agent::cgroups::dirs_of(cgroup).iter().any(|d| d.exists())
}

/// Removes `cgroup` and every cgroup below it that is empty, deepest first, in every hierarchy.
fn remove_cgroups(cgroup: &str) {
    fn remove(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in agent::cgroups::dirs_of(cgroup) {
        remove(&dir);
    }
}

/// SIGKILLs what `pids` lists until it lists nothing.
fn kill_until_gone(pids: impl Fn() -> Result<Vec<i32>>) -> Result<()> {
    let deadline = Instant::now() + KILL_WITHIN;
    loop {
        let left = pids()?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {left:?} outlived SIGKILL for {KILL_WITHIN:?}");
        }
        for pid in left {
            // SAFETY: kill has no memory effects; a pid that exited meanwhile gives ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The pods' namespaces (CNI's, under /var/run/netns) linked into namespace `ns`: their eth0's
/// peer is on the node's bridge, so the kernel knows `ns` in them by an id, which `ip` names.
fn pod_namespaces_of(ns: &str) -> Vec<String> {
    let named = format!("(iproute2 netns name: {ns})");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/var/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("cni-")
            && ip(&["-n", &name, "netns", "list-id"]).is_ok_and(|ids| ids.lines().any(|l| l.contains(&named)))
        {
            found.push(name);
        }
    }
    found
}
