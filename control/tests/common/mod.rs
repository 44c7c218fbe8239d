//! Shared harness for tests that run real `keelson store` processes: free ports, a cluster of
//! members whose processes are always killed on drop (and whose log tails are printed when the
//! test fails), etcd v3 gRPC clients, a background writer that records acknowledged writes, and
//! `wait_until`, which polls a condition against a deadline instead of sleeping.

#![allow(dead_code)]

pub mod api;
pub mod kubectl;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::etcdserverpb::cluster_client::ClusterClient;
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::{
    Member, MemberListRequest, PutRequest, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
};
use tonic::transport::{Channel, Endpoint};

/// Leader heartbeat period given to every member, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Election timeout given to every member, in milliseconds.
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// How long a fresh cluster may take to elect a leader and publish every member (debug build, 2
/// cores, other tests running alongside).
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// Upper bound on one client RPC issued by the harness; the store itself times out after 3 s.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each member's log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// Pause between two evaluations of a `wait_until` condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Lowest and highest+1 port handed out by `free_ports`: below Linux's ephemeral range
/// (32768-60999), so that no outgoing connection (members dial each other constantly) can take a
/// port between the moment it is picked and the moment a member binds it, or while a killed
/// member is down before its restart.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A tool from PATH (or /usr/bin); a test that needs it fails, saying `hint`, where it is missing.
pub fn find_on_path(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH or in /usr/bin: {hint}"))
}

/// Picks `n` distinct free TCP ports on 127.0.0.1 from `PORT_RANGE`, at pseudo-random places so
/// that tests running in parallel rarely try the same ones; every listener is held until all `n`
/// are chosen.
pub fn free_ports(n: usize) -> Vec<u16> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS.fetch_add(1, Ordering::SeqCst).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return ports;
        }
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let port = PORT_RANGE.start + (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % span) as u16;
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports.push(port);
        }
    }
    panic!("cannot find {n} free ports in {PORT_RANGE:?}");
}

/// Evaluates `condition` until it returns `Ok`, every 50 ms, and panics with `what` and the last
/// error once `deadline` has passed.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Instant, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(remaining.max(POLL_INTERVAL), condition()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e,
            Err(_) => "the last evaluation did not finish before the deadline".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("gave up after {:?} waiting until {what}; last observation: {last}", started.elapsed());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A TCP proxy to `127.0.0.1:target` that passes what flows towards the target at no more than
/// `bytes_per_second` (what comes back is not held up): a slow link on loopback. Returns the
/// port it listens on; it runs as long as the test's runtime.
pub async fn throttled_proxy(target: u16, bytes_per_second: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TICK: Duration = Duration::from_millis(10);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a proxy port");
    let port = listener.local_addr().expect("a bound port").port();
    let per_tick = (bytes_per_second / 100).max(1);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { continue };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; per_tick];
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    match in_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = out_write.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                let _ = in_write.shutdown().await;
            });
        }
    });
    port
}

/// A deadline `d` from now.
pub fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// Store flags that differ between tests.
#[derive(Clone, Debug)]
pub struct Options {
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self { snapshot_count: 10_000, snapshot_catchup_entries: 5_000 }
    }
}

/// One member: its addresses, data directory, log file and (while it runs) its process.
pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Where the other members reach this one, when not `peer_port` itself (a proxy standing
    /// for a slow link: see `throttled_proxy`).
    pub advertised_peer_port: Option<u16>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--initial-cluster` and `--initial-cluster-state` it was first started with; restarts
    /// reuse them, as an operator restarting a member with the same unit file does.
    initial_cluster: String,
    initial_cluster_state: &'static str,
    child: Option<Child>,
    channel: Channel,
    /// Learned from Status once the member answers.
    pub id: Option<u64>,
    starts: u32,
}

impl Node {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL the other members use.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.advertised_peer_port.unwrap_or(self.peer_port))
    }

    /// The peer URL this member listens on.
    pub fn listen_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A set of `keelson store` processes. Dropping it SIGKILLs every process still running; when the
/// thread is panicking it first prints the tail of every member's log.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Node>,
    pub token: String,
    pub options: Options,
    binary: PathBuf,
    /// Further `keelson store` flags given to every member at each start (see `start_with_flags`).
    extra_flags: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut fates = Vec::new();
        for m in &mut self.members {
            let fate = match m.child.take() {
                Some(mut child) => {
                    // A process that exited before the harness killed it is worth knowing about.
                    let fate = match child.try_wait() {
                        Ok(Some(exit)) => format!("had exited on its own: {exit}"),
                        _ => "was running".to_string(),
                    };
                    let _ = child.kill();
                    let _ = child.wait();
                    fate
                }
                None => "was stopped by the test".to_string(),
            };
            fates.push(fate);
        }
        if std::thread::panicking() {
            for (m, fate) in self.members.iter().zip(&fates) {
                eprintln!("===== {} {fate}; log {}, last {LOG_TAIL_LINES} lines =====", m.name, m.log_path.display());
                eprintln!("{}", log_tail(&m.log_path, LOG_TAIL_LINES));
            }
        }
    }
}

/// The last `lines` lines of a file, or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn channel_to(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("a valid client URL")
        .connect_timeout(Duration::from_millis(500))
        .timeout(RPC_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}

impl Cluster {
    /// Defines `n` members named n1..nN forming a new cluster, starts them and waits until they
    /// agree on a leader and every member is published in MemberList.
    pub async fn start(n: usize, options: Options) -> Cluster {
        let mut cluster = Cluster::define(n, options);
        for i in 0..n {
            cluster.start_new(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// As `start`, with further `keelson store` flags (e.g. `--experimental-watch-progress-notify-interval`)
    /// given to every member, at this start and every restart.
    pub async fn start_with_flags(n: usize, options: Options, flags: &[&str]) -> Cluster {
        let mut cluster = Cluster::define(n, options);
        cluster.extra_flags = flags.iter().map(|f| f.to_string()).collect();
        for i in 0..n {
            cluster.start_new(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Defines `n` members named n1..nN forming a new cluster, none started yet.
    pub fn define(n: usize, options: Options) -> Cluster {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_keelson"));
        assert!(binary.exists(), "the keelson binary is missing at {}", binary.display());
        let dir = tempfile::Builder::new().prefix("keelson-cluster-").tempdir().expect("cannot create a temp dir");
        let token = format!("keelson-test-{}", dir.path().file_name().unwrap().to_string_lossy());
        let mut cluster = Cluster { dir, members: Vec::new(), token, options, binary, extra_flags: Vec::new() };
        let ports = free_ports(2 * n);
        for i in 0..n {
            cluster.define_member(&format!("n{}", i + 1), ports[2 * i], ports[2 * i + 1]);
        }
        cluster
    }

    /// Starts member `i` of a cluster made with `define`, as one of the initial members.
    pub fn start_new(&mut self, i: usize) {
        let n = self.members.len();
        let initial = self.initial_cluster(&(0..n).collect::<Vec<_>>());
        self.spawn(i, &initial, "new");
    }

    fn define_member(&mut self, name: &str, client_port: u16, peer_port: u16) -> usize {
        let data_dir = self.dir.path().join(name);
        let log_path = self.dir.path().join(format!("{name}.log"));
        let url = format!("http://127.0.0.1:{client_port}");
        self.members.push(Node {
            name: name.to_string(),
            client_port,
            peer_port,
            advertised_peer_port: None,
            data_dir,
            log_path,
            initial_cluster: String::new(),
            initial_cluster_state: "new",
            child: None,
            channel: channel_to(&url),
            id: None,
            starts: 0,
        });
        self.members.len() - 1
    }

    /// Defines a member on fresh ports, not started: `member add` it, then `start_joining` it.
    pub fn define_new_member(&mut self, name: &str) -> usize {
        let ports = free_ports(2);
        self.define_member(name, ports[0], ports[1])
    }

    /// `name=peer-url,...` for the given members.
    pub fn initial_cluster(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, initial_cluster: &str, state: &'static str) {
        let binary = self.binary.clone();
        let token = self.token.clone();
        let options = self.options.clone();
        let extra_flags = self.extra_flags.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} is already running", m.name);
        m.initial_cluster = initial_cluster.to_string();
        m.initial_cluster_state = state;
        m.starts += 1;
        let mut log =
            OpenOptions::new().create(true).append(true).open(&m.log_path).expect("cannot open the member log");
        writeln!(log, "===== harness: start #{} of {} =====", m.starts, m.name).expect("cannot write the member log");
        let stdout = log.try_clone().expect("cannot clone the log handle");
        let child = Command::new(&binary)
            .arg("store")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.listen_peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", &HEARTBEAT_INTERVAL_MS.to_string()])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .args(["--snapshot-count", &options.snapshot_count.to_string()])
            .args(["--snapshot-catchup-entries", &options.snapshot_catchup_entries.to_string()])
            .args(&extra_flags)
            .env("KEELSON_LOG", "info,openraft=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        m.child = Some(child);
    }

    /// Starts a member defined with `define_new_member` after `member add`, joining the cluster
    /// with `--initial-cluster-state existing`; `initial_cluster` lists the current members and it.
    pub fn start_joining(&mut self, i: usize, initial_cluster: &[usize]) {
        let initial = self.initial_cluster(initial_cluster);
        self.spawn(i, &initial, "existing");
    }

    /// Starts a stopped member again with the flags it was first started with.
    pub fn restart(&mut self, i: usize) {
        let initial = self.members[i].initial_cluster.clone();
        let state = self.members[i].initial_cluster_state;
        self.spawn(i, &initial, state);
    }

    /// SIGKILLs a member and reaps it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut child = m.child.take().unwrap_or_else(|| panic!("{} is not running", m.name));
        child.kill().unwrap_or_else(|e| panic!("cannot SIGKILL {}: {e}", m.name));
        let _ = child.wait();
    }

    /// SIGTERMs a member and waits (up to 10 s) for it to exit; returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let m = &mut self.members[i];
        let mut child = m.child.take().unwrap_or_else(|| panic!("{} is not running", m.name));
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed", child.id());
        let deadline = within(Duration::from_secs(10));
        loop {
            if let Some(exit) = child.try_wait().expect("cannot poll the member") {
                return exit;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 10 s of SIGTERM", m.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].is_running()
    }

    /// Asserts that a member's process has not exited.
    pub fn assert_running(&mut self, i: usize) {
        let name = self.members[i].name.clone();
        if let Some(child) = &mut self.members[i].child {
            if let Ok(Some(exit)) = child.try_wait() {
                panic!("{name} exited unexpectedly: {exit}");
            }
        } else {
            panic!("{name} was not started");
        }
    }

    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.members[i].channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    pub fn cluster_client(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.members[i].channel.clone())
    }

    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.members[i].channel.clone())
    }

    pub fn channel(&self, i: usize) -> Channel {
        self.members[i].channel.clone()
    }

    pub async fn status(&self, i: usize) -> Result<StatusResponse, String> {
        let mut c = self.maintenance(i);
        match tokio::time::timeout(Duration::from_secs(2), c.status(StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{}: Status: {:?} {}", self.members[i].name, s.code(), s.message())),
            Err(_) => Err(format!("{}: Status took over 2 s", self.members[i].name)),
        }
    }

    pub async fn member_list(&self, i: usize) -> Result<Vec<Member>, String> {
        let mut c = self.cluster_client(i);
        match tokio::time::timeout(Duration::from_secs(5), c.member_list(MemberListRequest { linearizable: false }))
            .await
        {
            Ok(Ok(r)) => Ok(r.into_inner().members),
            Ok(Err(s)) => Err(format!("{}: MemberList: {:?} {}", self.members[i].name, s.code(), s.message())),
            Err(_) => Err(format!("{}: MemberList took over 5 s", self.members[i].name)),
        }
    }

    /// The leader ID that every one of `members` reports (non-zero, and the same for all).
    pub async fn agreed_leader(&self, members: &[usize]) -> Result<u64, String> {
        let mut seen = BTreeMap::new();
        for &i in members {
            let s = self.status(i).await?;
            seen.insert(self.members[i].name.clone(), s.leader);
        }
        let leaders: std::collections::BTreeSet<u64> = seen.values().copied().collect();
        match leaders.iter().next() {
            Some(&l) if leaders.len() == 1 && l != 0 => Ok(l),
            _ => Err(format!("members do not agree on a leader: {}", fmt_leaders(&seen))),
        }
    }

    /// The index of the member whose ID is `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.id == Some(id)).unwrap_or_else(|| panic!("no known member has ID {id:x}"))
    }

    /// Learns a running member's ID from its Status, waiting until it answers.
    pub async fn learn_id(&mut self, i: usize, deadline: Instant) -> u64 {
        let what = format!("{} answers Status", self.members[i].name);
        let this = &*self;
        let id = wait_until(&what, deadline, move || async move {
            let s = this.status(i).await?;
            s.header.map(|h| h.member_id).filter(|&id| id != 0).ok_or_else(|| "Status has no member_id".to_string())
        })
        .await;
        self.members[i].id = Some(id);
        id
    }

    /// Waits until every running member answers, all agree on a leader, and MemberList on each
    /// shows every member with its name (published).
    pub async fn wait_ready(&mut self) {
        let deadline = within(READY_WITHIN);
        let running: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect();
        for &i in &running {
            self.learn_id(i, deadline).await;
        }
        let this = &*self;
        let running = &running;
        wait_until("the members agree on a leader and all are published", deadline, move || async move {
            this.agreed_leader(running).await?;
            for &i in running {
                let list = this.member_list(i).await?;
                for &j in running {
                    let id = this.members[j].id.unwrap();
                    match list.iter().find(|m| m.id == id) {
                        Some(m) if m.name == this.members[j].name => {}
                        other => {
                            return Err(format!("{} lists {}: {other:?}", this.members[i].name, this.members[j].name))
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
    }

    /// The index of the leader agreed by `members`, waiting for one.
    pub async fn leader_index(&self, members: &[usize], deadline: Instant) -> usize {
        let id = wait_until("the members agree on a leader", deadline, move || self.agreed_leader(members)).await;
        self.index_of(id)
    }

    /// The running members.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].is_running()).collect()
    }
}

fn fmt_leaders(seen: &BTreeMap<String, u64>) -> String {
    seen.iter().map(|(n, l)| format!("{n}→{l:x}")).collect::<Vec<_>>().join(", ")
}

/// The range end that selects every key with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range over every key with `prefix`.
pub fn prefix_range(prefix: &str, serializable: bool) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        serializable,
        ..Default::default()
    }
}

pub async fn range(kv: &mut KvClient<Channel>, req: RangeRequest) -> Result<RangeResponse, tonic::Status> {
    kv.range(req).await.map(|r| r.into_inner())
}

/// Formats a gRPC error for an assertion message.
pub fn fmt_status(s: &tonic::Status) -> String {
    format!("{:?}: {:?}", s.code(), s.message())
}

/// key → (value, mod_revision, create_revision, version), as a member sees it.
pub type Snapshot = BTreeMap<String, (String, i64, i64, i64)>;

pub fn snapshot_of(resp: &RangeResponse) -> Snapshot {
    resp.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision, kv.create_revision, kv.version),
            )
        })
        .collect()
}

pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> Result<i64, tonic::Status> {
    let r = kv
        .put(PutRequest { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), ..Default::default() })
        .await?
        .into_inner();
    Ok(r.header.map(|h| h.revision).unwrap_or(0))
}

/// A task that puts `prefix/000000`, `prefix/000001`, ... (value `v<i>`) one after the other
/// through one member, and records every acknowledged put.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    failures: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// What a stopped writer did.
pub struct WriterReport {
    pub acked: Vec<(String, String)>,
    pub failures: u64,
    pub last_error: String,
}

impl Writer {
    pub fn spawn(channel: Channel, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let last_error = Arc::new(Mutex::new(String::new()));
        let (s, a, f, l) = (stop.clone(), acked.clone(), failures.clone(), last_error.clone());
        let prefix = prefix.to_string();
        let handle = tokio::spawn(async move {
            let mut kv = KvClient::new(channel);
            let mut i: u64 = 0;
            while !s.load(Ordering::SeqCst) {
                let key = format!("{prefix}/{i:06}");
                let value = format!("v{i}");
                let req = PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                };
                match tokio::time::timeout(RPC_TIMEOUT, kv.put(req)).await {
                    Ok(Ok(_)) => a.lock().unwrap().push((key, value)),
                    Ok(Err(status)) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = fmt_status(&status);
                        // Do not spin on an unavailable cluster.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = format!("no answer within {RPC_TIMEOUT:?}");
                    }
                }
                i += 1;
            }
        });
        Writer { stop, acked, failures, last_error, handle: Some(handle) }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} acknowledged, {} failed (last error: {})",
            self.acked_count(),
            self.failures.load(Ordering::SeqCst),
            self.last_error.lock().unwrap()
        )
    }

    /// Waits until at least `more` further writes are acknowledged.
    pub async fn wait_for_progress(&self, more: usize, deadline: Instant, context: &str) {
        let target = self.acked_count() + more;
        wait_until(&format!("{more} more writes are acknowledged ({context})"), deadline, move || async move {
            if self.acked_count() >= target {
                Ok(())
            } else {
                Err(self.describe())
            }
        })
        .await;
    }

    pub async fn stop(mut self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().await.expect("the writer task panicked");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let last_error = self.last_error.lock().unwrap().clone();
        WriterReport { acked, failures: self.failures.load(Ordering::SeqCst), last_error }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// Asserts that a linearizable read through `kv` returns every acknowledged key with its
/// acknowledged value.
pub async fn assert_acked_present(kv: &mut KvClient<Channel>, prefix: &str, acked: &[(String, String)], via: &str) {
    let resp = range(kv, prefix_range(prefix, false))
        .await
        .unwrap_or_else(|s| panic!("linearizable read of {prefix}/ through {via} failed: {}", fmt_status(&s)));
    let seen = snapshot_of(&resp);
    let missing: Vec<String> = acked
        .iter()
        .filter(|(k, v)| seen.get(k).map(|e| &e.0) != Some(v))
        .map(|(k, v)| format!("{k}={v} (read {:?})", seen.get(k).map(|e| &e.0)))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are missing or wrong in a linearizable read through {via}; first: {missing:#?}",
        acked.iter().filter(|(k, v)| seen.get(k).map(|e| &e.0) != Some(v)).count(),
        acked.len()
    );
}

/// Reads a file's bytes after `offset` (the part of a log written since a point in the test).
pub fn file_since(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    String::from_utf8_lossy(&bytes[(offset as usize).min(bytes.len())..]).into_owned()
}

pub fn file_len(path: &Path) -> u64 {
    File::open(path).and_then(|f| f.metadata()).map(|m| m.len()).unwrap_or(0)
}

/// A client configuration from the kubeconfig at `path`, which a process writes once it serves:
/// waited for until `deadline`.
#[allow(dead_code)]
pub fn kube_config_from_file(path: &Path, deadline: Instant) -> kube::Config {
    loop {
        let parsed = fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|text| kube_config_of(&text));
        match parsed {
            Ok(config) => return config,
            Err(e) if Instant::now() >= deadline => panic!("no usable kubeconfig at {}: {e}", path.display()),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A client configuration from a kubeconfig's text: its first cluster's server and CA, its first
/// user's credentials.
pub fn kube_config_of(text: &str) -> Result<kube::Config, String> {
    use base64::Engine;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
    let cluster = kubeconfig.clusters.first().and_then(|c| c.cluster.clone()).ok_or("no cluster")?;
    let server = cluster.server.ok_or("no server")?;
    let mut config = kube::Config::new(server.parse().map_err(|e| format!("{server:?}: {e}"))?);
    if let Some(ca) = cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD.decode(ca).map_err(|e| e.to_string())?;
        let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        config.root_cert = Some(ders);
    }
    if let Some(user) = kubeconfig.auth_infos.first().and_then(|a| a.auth_info.clone()) {
        config.auth_info = user;
    }
    Ok(config)
}
