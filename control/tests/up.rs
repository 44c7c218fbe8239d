//! `keelson up` end to end, with real containers: the whole cluster in one process over its own
//! containerd, the README's example applied with kubectl, pods answering HTTP from the host, pod
//! specs' environment and Kubernetes' reasons for bad input, pods' containers cleaned up when they
//! are deleted, and Ctrl-C followed by a second `keelson up` that runs the same pods again.
//! Needs root, containerd, runc, the CNI plugins, iptables, nftables and busybox-static (scripts/setup
//! installs them); fails without them.
//!
//! Each cluster works in `/tmp/keelson-up-<pid>-…` with a network it claims (bridge `kupN`, pods
//! in 10.N.0.0/17, services in 10.N.128.0/17, the service proxy's nftables table `kupN`; with
//! `--nodes`, nodes `kupNn1`… on 10.78.N.0/24); what a crashed run left (processes, containers,
//! mounts, bridges, tables, nodes) is removed by the next run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kubectl::{kubectl_binary, Kubectl};
use common::{free_ports, kube_config_from_file, log_tail, wait_until, within};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

const PREFIX: &str = "keelson-up-";
/// A cold `keelson up` (debug build) until its node is Ready.
const READY_WITHIN: Duration = Duration::from_secs(90);
const SETTLED_WITHIN: Duration = Duration::from_secs(60);
/// How long Ctrl-C may take: pods stop (10 s grace at most), then containerd and the store.
const STOP_WITHIN: Duration = Duration::from_secs(60);

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process started from `dir` or running in a container whose root is under it.
fn kill_processes_under(dir: &Path) {
    let dir_s = dir.display().to_string();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let root = std::fs::read_link(p.path().join("root")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&dir_s) || root.starts_with(dir) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir_s = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir_s)).map(String::from).collect()
}

fn unmount_under(dir: &Path) {
    let mut points = mounts_under(dir);
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", &m]).status();
    }
}

/// Clusters of this machine's test runs take pod ranges 10.N.0.0/16 and bridges `kupN` for N
/// in this range, one each, claimed with a marker file naming the claiming process.
const NETWORKS: std::ops::Range<u32> = 150..200;

fn network_marker(n: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/{PREFIX}net-{n}"))
}

fn bridge_of(n: u32) -> String {
    format!("kup{n}")
}

/// Claims a free network: its marker is created exclusively, so two runs never share one.
fn claim_network() -> u32 {
    for n in NETWORKS {
        let created = std::fs::OpenOptions::new().write(true).create_new(true).open(network_marker(n));
        if let Ok(mut f) = created {
            write!(f, "{}", std::process::id()).unwrap();
            // Nodes and namespaces in this range now are a crashed run's.
            if let Err(e) = node_network(n).remove_all() {
                eprintln!("removing the nodes of network {n}: {e:#}");
            }
            for name in netns_of(n) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
            let _ = Command::new("nft").args(["delete", "table", "ip", &bridge_of(n)]).stderr(Stdio::null()).status();
            return n;
        }
    }
    panic!("every test network {NETWORKS:?} is claimed: see /tmp/{PREFIX}net-*");
}

/// The network namespaces (CNI's, under /var/run/netns) holding an address of network `n`.
fn netns_of(n: u32) -> Vec<String> {
    let prefix = format!(" 10.{n}.");
    let names = std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    names
        .filter(|name| {
            let out = Command::new("ip").args(["-n", name, "-br", "-4", "addr"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&prefix))
        })
        .collect()
}

/// The nodes of network `n`'s `keelson up --nodes` cluster.
fn node_prefix(n: u32) -> String {
    format!("kup{n}n")
}

fn node_cidr(n: u32) -> String {
    format!("10.78.{n}.0/24")
}

fn node_network(n: u32) -> control::nodenet::NodeNetwork {
    control::nodenet::NodeNetwork::new(&node_prefix(n), &node_cidr(n)).unwrap()
}

fn release_network(n: u32) {
    // A crashed `keelson up --nodes` leaves nodes: their processes, pods and namespaces.
    if let Err(e) = node_network(n).remove_all() {
        eprintln!("removing the nodes of network {n}: {e:#}");
    }
    // A run killed before its pods stopped leaves their namespaces (and veths) behind.
    for name in netns_of(n) {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    let _ = Command::new("ip").args(["link", "del", &bridge_of(n)]).stderr(Stdio::null()).status();
    let _ = Command::new("nft").args(["delete", "table", "ip", &bridge_of(n)]).stderr(Stdio::null()).status();
    let _ = std::fs::remove_file(network_marker(n));
}

/// Removes pods' cgroups that nothing runs in (a crashed run's); a live pod's cgroup holds its
/// sandbox's process, and removing a cgroup that holds one fails.
fn remove_idle_pod_cgroups() {
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        for pod in std::fs::read_dir(hierarchy.path().join("keelson")).into_iter().flatten().flatten() {
            for container in std::fs::read_dir(pod.path()).into_iter().flatten().flatten() {
                if container.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(container.path());
                }
            }
            let _ = std::fs::remove_dir(pod.path());
        }
    }
}

/// Removes what crashed runs left.
fn cleanup_stale() {
    remove_idle_pod_cgroups();
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if let Some(n) = rest.strip_prefix("net-").and_then(|n| n.parse::<u32>().ok()) {
            let owner = std::fs::read_to_string(e.path()).ok().and_then(|p| p.trim().parse::<u32>().ok());
            if owner.is_some_and(|pid| !pid_alive(pid)) {
                release_network(n);
            }
            continue;
        }
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        kill_processes_under(&dir);
        unmount_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The A records a DNS server at `server` gives for `name`, asked over UDP from the host.
fn resolve_a(server: &str, name: &str) -> Result<Vec<String>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.queries.push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&m.to_vec().unwrap(), server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("no answer from {server}: {e}"))?;
    let answer = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    if from.to_string() != server {
        return Err(format!("answered from {from}, not {server}"));
    }
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect())
}

/// What the clusters' upstream resolver answers every A query with (TEST-NET-1: never sent to).
const UPSTREAM_ANSWER: &str = "192.0.2.123";

/// A resolver on loopback standing in for the node's upstream: every A query gets
/// [`UPSTREAM_ANSWER`]; it stops when dropped.
struct Upstream {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    fn start() -> Upstream {
        use hickory_proto::op::{Message, MessageType};
        use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(mut m) = Message::from_vec(&buf[..n]) else { continue };
                m.metadata.message_type = MessageType::Response;
                let answers: Vec<Record> = m
                    .queries
                    .iter()
                    .filter(|q| q.query_type() == RecordType::A)
                    .map(|q| Record::from_rdata(q.name().clone(), 30, RData::A(A(UPSTREAM_ANSWER.parse().unwrap()))))
                    .collect();
                m.answers = answers;
                if let Ok(bytes) = m.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Upstream { addr, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One `keelson up` cluster, stopped and removed on drop.
struct Up {
    _upstream: Upstream,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    api: String,
    network: u32,
    cidr_prefix: String,
}

impl Up {
    fn start() -> Up {
        Self::start_with(&[])
    }

    /// A cluster whose `keelson up` gets `extra` arguments too.
    fn start_with(extra: &[&str]) -> Up {
        let mut up = Self::prepare(extra);
        up.spawn();
        up
    }

    /// A cluster of `nodes` nodes, each in its own network namespace (`keelson up --nodes`),
    /// named `kupNn1`…, on the link 10.78.N.0/24 where the control plane listens too.
    fn start_nodes(nodes: usize) -> Up {
        let mut up = Self::prepare(&[]);
        // Flags that name the one node of the default cluster.
        for flag in ["--node-ip", "--node-name"] {
            let i = up.args.iter().position(|a| a == flag).unwrap();
            up.args.drain(i..i + 2);
        }
        let net = node_network(up.network);
        up.args.extend([
            "--nodes".into(),
            nodes.to_string(),
            "--node-prefix".into(),
            node_prefix(up.network),
            "--node-network".into(),
            node_cidr(up.network),
        ]);
        let port = up.api.rsplit(':').next().unwrap().to_string();
        up.api = format!("https://{}:{port}", net.gateway());
        up.spawn();
        up
    }

    fn prepare(extra: &[&str]) -> Up {
        cleanup_stale();
        let pid = std::process::id();
        let network = claim_network();
        let dir = tempfile::Builder::new().prefix(&format!("{PREFIX}{pid}-")).tempdir_in("/tmp").unwrap().keep();
        let images = dir.join("images");
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
        let built =
            Command::new(scripts.join("example-images")).arg(&images).status().expect("scripts/example-images runs");
        assert!(built.success(), "scripts/example-images failed");
        let ports = free_ports(3);
        let upstream = Upstream::start();
        let cidr_prefix = format!("10.{network}.");
        let bridge = bridge_of(network);
        let args: Vec<String> = [
            "up",
            "--data-dir",
            &dir.display().to_string(),
            "--api-listen",
            &format!("127.0.0.1:{}", ports[0]),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", ports[1]),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", ports[2]),
            "--cluster-cidr",
            &format!("10.{network}.0.0/17"),
            "--service-cluster-ip-range",
            &format!("10.{network}.128.0/17"),
            "--cni-bridge",
            &bridge,
            "--proxy-table",
            &bridge,
            "--cluster-dns-upstream",
            &upstream.addr.to_string(),
            "--node-ip",
            "127.0.0.1",
            "--node-name",
            "node-1",
            "--port",
            "0",
            "--image-dir",
            &images.display().to_string(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        Up {
            _upstream: upstream,
            child: None,
            log: dir.join("up.log"),
            dir,
            args,
            api: format!("https://127.0.0.1:{}", ports[0]),
            network,
            cidr_prefix,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(&self.args)
            .env("KEELSON_LOG", "info,openraft=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keelson up starts");
        self.child = Some(child);
    }

    /// A client with the admin credentials `keelson up` writes (waiting for them when it has
    /// just started).
    fn client(&self) -> kube::Client {
        let config = kube_config_from_file(&self.kubeconfig(), std::time::Instant::now() + READY_WITHIN);
        kube::Client::try_from(config).unwrap()
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    /// Ctrl-C: SIGINT, and the exit within `STOP_WITHIN`.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("keelson up runs");
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + STOP_WITHIN;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("keelson up did not stop within {STOP_WITHIN:?} of SIGINT\n{}", log_tail(&self.log, 60));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn wait_node_ready(&self) {
        self.wait_nodes_ready(&["node-1".to_string()]).await;
    }

    async fn wait_nodes_ready(&self, names: &[String]) {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client());
        wait_until("the nodes are Ready", within(READY_WITHIN), || {
            let nodes = nodes.clone();
            async move {
                for name in names {
                    let n = match nodes.get_opt(name).await.map_err(|e| e.to_string())? {
                        Some(n) => n,
                        None => {
                            let all: Vec<String> = nodes
                                .list(&ListParams::default())
                                .await
                                .map_err(|e| e.to_string())?
                                .items
                                .into_iter()
                                .filter_map(|n| n.metadata.name)
                                .collect();
                            return Err(format!("no {name} at {}; nodes: {all:?}", self.api));
                        }
                    };
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| c.status.clone());
                    if ready.as_deref() != Some("True") {
                        return Err(format!("{name}: Ready={ready:?}"));
                    }
                }
                Ok(())
            }
        })
        .await;
    }

    /// The log of a pod's container, as containerd wrote it in CRI's format.
    fn container_log(&self, pod: &Pod, container: &str) -> String {
        let m = &pod.metadata;
        let dir = self.dir.join("agent/pod-logs").join(format!(
            "{}_{}_{}",
            m.namespace.as_deref().unwrap(),
            m.name.as_deref().unwrap(),
            m.uid.as_deref().unwrap()
        ));
        std::fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_default()
    }

    /// Containers containerd still has (any state). ctr gives up dialling a containerd that
    /// is slow to accept (a busy machine), and loses its connection when the containerd a
    /// killed agent left is replaced by the restarted agent's, so both are tried again for a
    /// while.
    fn runtime_containers(&self) -> Vec<String> {
        let deadline = Instant::now() + SETTLED_WITHIN;
        loop {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(self.dir.join("agent/containerd/containerd.sock"))
                .args(["--namespace", "k8s.io", "containers", "list", "--quiet"])
                .output()
                .expect("ctr runs");
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
            }
            let transient = err.contains("failed to dial") || err.contains("transport is closing");
            assert!(transient && Instant::now() < deadline, "ctr: {err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== keelson up log {} =====\n{}", self.log.display(), log_tail(&self.log, 80));
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = std::time::Instant::now() + STOP_WITHIN;
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_processes_under(&self.dir);
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        release_network(self.network);
    }
}

/// `GET /` from the host to `ip:80`: the body.
fn http_get(ip: &str) -> Result<String, String> {
    http_get_at(&format!("{ip}:80"))
}

/// `GET /` from the host to `addr`: the body.
fn http_get_at(addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The web pods that run, with their addresses.
async fn running_web_pods(client: &kube::Client) -> Result<Vec<(String, String)>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?;
    let running: Vec<(String, String)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
        .collect();
    if running.len() == 2 {
        Ok(running)
    } else {
        Err(format!("{} running: {running:?}", running.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelson_up_runs_the_example_web_site_and_resumes_it_after_ctrl_c() {
    let mut up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let node: k8s_openapi::api::core::v1::Node = Api::all(client.clone()).get("node-1").await.unwrap();
    let status = node.status.clone().unwrap();
    let info = status.node_info.unwrap();
    assert!(info.container_runtime_version.starts_with("containerd://"), "{info:?}");
    assert!(!info.kernel_version.is_empty() && !info.os_image.is_empty(), "{info:?}");
    let capacity = status.capacity.unwrap();
    assert_eq!(capacity["pods"].0, "110");
    assert!(
        capacity.contains_key("cpu") && capacity.contains_key("memory") && capacity.contains_key("ephemeral-storage")
    );
    let pod_cidr = node.spec.unwrap().pod_cidr.expect("the node IPAM gave the node a pod range");
    assert!(pod_cidr.starts_with(&up.cidr_prefix) && pod_cidr.ends_with("/24"), "{pod_cidr}");
    // Each condition with kubelet's reason for its status (whether this machine's disk is past
    // nodefs.available<10% depends on the machine, so either status is accepted there).
    let conditions = status.conditions.unwrap();
    for (kind, when_true, when_false) in [
        ("MemoryPressure", "KubeletHasInsufficientMemory", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasDiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasInsufficientPID", "KubeletHasSufficientPID"),
        ("Ready", "KubeletReady", "KubeletNotReady"),
    ] {
        let c = conditions.iter().find(|c| c.type_ == kind).unwrap_or_else(|| panic!("no {kind} in {conditions:?}"));
        let reason = if c.status == "True" { when_true } else { when_false };
        assert_eq!(c.reason.as_deref(), Some(reason), "{c:?}");
        if kind != "DiskPressure" {
            let expected = if kind == "Ready" { "True" } else { "False" };
            assert_eq!(c.status, expected, "{c:?}");
        }
    }
    // The images imported at start are listed in the node's status, with their sizes.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    wait_until("the node lists its images", within(SETTLED_WITHIN), || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get("node-1").await.map_err(|e| e.to_string())?;
            let images = node.status.and_then(|s| s.images).unwrap_or_default();
            let web =
                images.iter().find(|i| i.names.iter().flatten().any(|n| n.ends_with("registry.keelson.local/web:1")));
            match web {
                Some(i) if i.size_bytes.is_some_and(|b| b > 0) => Ok(()),
                _ => Err(format!("{images:?}")),
            }
        }
    })
    .await;

    // The README's example, applied with the current kubectl through the written kubeconfig.
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = std::fs::read_to_string(up.kubeconfig()).expect("keelson up wrote a kubeconfig");
    assert!(kubeconfig.contains(&up.api), "{kubeconfig}");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web.yaml");
    let current = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    current.run(&["apply", "-f", &example.display().to_string()]);
    let pods = wait_until("both web pods run", within(SETTLED_WITHIN), || running_web_pods(&client)).await;
    for (name, ip) in &pods {
        assert!(ip.starts_with(&up.cidr_prefix), "{name} has {ip}, outside the node's range {pod_cidr}");
        let body =
            wait_until(&format!("{name} answers HTTP at {ip}"), within(SETTLED_WITHIN), || async move { http_get(ip) })
                .await;
        assert!(body.starts_with("HTTP/1.1 200 OK") && body.contains("Hello from a pod on Keelson"), "{body}");
    }
    // Debian's kubectl 1.20 sees them too, and the Service's endpoints are the pods.
    let debian = Kubectl::new(work.path(), &up.kubeconfig());
    let listed = debian.run(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    assert_eq!(listed.matches("Running").count(), 2, "{listed}");
    let endpoints = wait_until("the Service has both pods as endpoints", within(SETTLED_WITHIN), || {
        let debian = &debian;
        async move {
            let e = debian.run(&["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"]);
            if e.split_whitespace().count() == 2 {
                Ok(e)
            } else {
                Err(e)
            }
        }
    })
    .await;
    for (_, ip) in &pods {
        assert!(endpoints.contains(ip.as_str()), "{endpoints}");
    }

    // Ctrl-C stops everything: no container process and no mount is left.
    let status = up.interrupt();
    assert!(status.success(), "keelson up exited with {status}\n{}", log_tail(&up.log, 40));
    assert!(mounts_under(&up.dir).is_empty(), "mounts left: {:?}", mounts_under(&up.dir));
    assert!(netns_of(up.network).is_empty(), "network namespaces left: {:?}", netns_of(up.network));
    for (_, ip) in &pods {
        assert!(http_get(ip).is_err(), "{ip} still answers after Ctrl-C");
    }

    // A second `keelson up` over the same directory resumes the cluster and runs the pods again.
    up.spawn();
    up.wait_node_ready().await;
    // Their new sandboxes have new addresses: each pod answers at the one its status shows.
    let again = wait_until("both web pods answer again at their addresses", within(SETTLED_WITHIN), || {
        let client = client.clone();
        async move {
            let pods = running_web_pods(&client).await?;
            for (name, ip) in &pods {
                let body = http_get(ip).map_err(|e| format!("{name}: {e}"))?;
                if !body.contains("Hello from a pod on Keelson") {
                    return Err(body);
                }
            }
            Ok(pods)
        }
    })
    .await;
    let names = |p: &[(String, String)]| -> Vec<String> {
        let mut n: Vec<String> = p.iter().map(|(n, _)| n.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&again), names(&pods), "the same pods");

    // Deleting the Deployment removes its pods' containers from the node.
    current.run(&["delete", "-f", &example.display().to_string(), "--wait=true", "--grace-period=2"]);
    wait_until("the pods are gone from the API and the node", within(SETTLED_WITHIN), || {
        let client = client.clone();
        let up = &up;
        async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            let containers = up.runtime_containers();
            let mounts = mounts_under(&up.dir);
            let netns = netns_of(up.network);
            if left == 0 && containers.is_empty() && mounts.is_empty() && netns.is_empty() {
                Ok(())
            } else {
                Err(format!("{left} pods, containers {containers:?}, mounts {mounts:?}, network namespaces {netns:?}"))
            }
        }
    })
    .await;
    let status = up.interrupt();
    assert!(status.success(), "keelson up exited with {status}");
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "spec"}},
        "spec": spec,
    }))
    .unwrap()
}

/// Waits until the pod's phase is Running.
async fn wait_running(pods: &Api<Pod>, name: &str, what: &str) {
    wait_until(what, within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let phase = pods.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase);
            if phase.as_deref() == Some("Running") {
                Ok(())
            } else {
                Err(format!("{phase:?}"))
            }
        }
    })
    .await;
}

/// The waiting reason of a pod's only container, once it is one of `reasons`.
async fn waiting_reason(pods: &Api<Pod>, name: &str, reasons: &[&str]) -> (String, String) {
    wait_until(&format!("{name} waits with one of {reasons:?}"), within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            let s = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .ok_or("no container status")?;
            let w = s.state.and_then(|st| st.waiting).ok_or_else(|| format!("not waiting: {:?}", s.last_state))?;
            let reason = w.reason.unwrap_or_default();
            if reasons.contains(&reason.as_str()) {
                Ok((reason, w.message.unwrap_or_default()))
            } else {
                Err(reason)
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_their_environment_and_bad_input_gets_kubernetes_reasons() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &post,
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": "settings"}, "data": {"color": "teal", "size": "9"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &post,
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();

    // Every source of the environment, and a command that refers to it.
    let script = "echo \"color=$COLOR token=$TOKEN name=$POD_NAME ip=$POD_IP cpu=$CPU_MILLIS size=$CFG_size greeting=$GREETING\"; exec sleep 3600";
    let env_pod = pod(
        "env",
        serde_json::json!({"containers": [{
            "name": "c",
            "image": "registry.keelson.local/web:1",
            "command": ["/bin/sh", "-c", script],
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "GREETING", "value": "hello $(POD_NAME)"},
            ],
        }]}),
    );
    pods.create(&post, &env_pod).await.unwrap();
    let line = wait_until("the env pod logs its environment", within(SETTLED_WITHIN), || {
        let (pods, up) = (pods.clone(), &up);
        async move {
            let p = pods.get("env").await.map_err(|e| e.to_string())?;
            let log = up.container_log(&p, "c");
            let ip = p.status.and_then(|s| s.pod_ip).ok_or("no pod IP yet")?;
            log.lines().find(|l| l.contains("color=")).map(|l| (l.to_string(), ip)).ok_or(log)
        }
    })
    .await;
    let (line, ip) = line;
    let want = format!("color=teal token=s3cr3t name=env ip={ip} cpu=250 size=9 greeting=hello env");
    assert!(line.ends_with(&want), "{line:?} does not end with {want:?}");

    // Kubernetes' reasons for what cannot run.
    let bad = |name: &str, container: serde_json::Value| pod(name, serde_json::json!({"containers": [container]}));
    let cases = [
        // An image no registry has: the pull fails, then backs off.
        (
            bad("no-image", serde_json::json!({"name": "c", "image": "127.0.0.1:9/missing:1"})),
            vec!["ErrImagePull", "ImagePullBackOff"],
        ),
        // A command that does not exist: the start fails, then the container crash-loops.
        (
            bad(
                "no-command",
                serde_json::json!({"name": "c", "image": "registry.keelson.local/web:1", "command": ["/no/such/command"]}),
            ),
            vec!["RunContainerError", "CrashLoopBackOff"],
        ),
        // A ConfigMap that does not exist.
        (
            bad(
                "no-config",
                serde_json::json!({"name": "c", "image": "registry.keelson.local/web:1", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}),
            ),
            vec!["CreateContainerConfigError"],
        ),
        // An image that is not present, with pull policy Never.
        (
            bad(
                "never-pull",
                serde_json::json!({"name": "c", "image": "registry.keelson.local/absent:1", "imagePullPolicy": "Never"}),
            ),
            vec!["ErrImageNeverPull"],
        ),
    ];
    for (p, _) in &cases {
        pods.create(&post, p).await.unwrap();
    }
    for (p, reasons) in &cases {
        let name = p.metadata.name.as_deref().unwrap();
        let (reason, message) = waiting_reason(&pods, name, reasons).await;
        assert!(!message.is_empty(), "{name}: {reason} without a message");
        if name != "no-command" {
            let phase = pods.get(name).await.unwrap().status.and_then(|s| s.phase);
            assert_eq!(phase.as_deref(), Some("Pending"), "{name}");
        }
    }
    // The crash loop: the failed start is the container's last state, and restarts are counted.
    let (_, message) = waiting_reason(&pods, "no-command", &["CrashLoopBackOff"]).await;
    assert!(message.contains("back-off"), "{message}");
    let s = pods.get("no-command").await.unwrap().status.unwrap().container_statuses.unwrap().remove(0);
    let last = s.last_state.and_then(|l| l.terminated).expect("the failed start is the last state");
    assert_eq!((last.exit_code, last.reason.as_deref()), (128, Some("StartError")), "{last:?}");
    assert!(s.restart_count >= 1, "{}", s.restart_count);
    // The ConfigMap, once made, lets the container start.
    config_maps
        .create(
            &post,
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "absent"}, "data": {"k": "v"}})).unwrap(),
        )
        .await
        .unwrap();
    wait_running(&pods, "no-config", "no-config runs once its ConfigMap exists").await;

    // Deleting the pods removes every container and mount they had.
    // (A shell or sleep as a container's first process ignores SIGTERM: a short grace period.)
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(1), ..Default::default() },
        &ListParams::default().labels("test=spec"),
    )
    .await
    .unwrap();
    wait_until("the pods are gone from the API and the node", within(SETTLED_WITHIN), || {
        let (pods, up) = (pods.clone(), &up);
        async move {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            let containers = up.runtime_containers();
            let mounts = mounts_under(&up.dir);
            let netns = netns_of(up.network);
            if left == 0 && containers.is_empty() && mounts.is_empty() && netns.is_empty() {
                Ok(())
            } else {
                Err(format!("{left} pods, containers {containers:?}, mounts {mounts:?}, network namespaces {netns:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelson_up_stops_with_the_agents_error_when_containerd_cannot_start() {
    let dir = tempfile::Builder::new().prefix(&format!("{PREFIX}{}-", std::process::id())).tempdir_in("/tmp").unwrap();
    let ports = free_ports(3);
    let out = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args([
            "up",
            "--data-dir",
            &dir.path().display().to_string(),
            "--containerd",
            "/nonexistent/containerd",
            "--node-ip",
            "127.0.0.1",
            "--node-name",
            "node-1",
            "--port",
            "0",
        ])
        .args(["--api-listen", &format!("127.0.0.1:{}", ports[0])])
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", ports[1]),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", ports[2]),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("keelson up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "keelson up went on without its agent\n{stderr}");
    assert!(stderr.contains("the agent stopped") && stderr.contains("/nonexistent/containerd"), "{stderr}");
}

/// The lines a child writes to stdout, as they come.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(SETTLED_WITHIN).unwrap_or_else(|e| panic!("no line {what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exec_and_port_forward_reach_containers_with_both_kubectls() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    // Unique to this cluster: clusters of parallel tests share the host's ports.
    let host_port = 20000 + up.network;
    pods.create(&post, &pod("ticker", serde_json::json!({"containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sh", "-c", ticker]}]})))
        .await
        .unwrap();
    // Two containers: the web server, and one that fails at once and is restarted.
    pods.create(
        &post,
        &pod(
            "two",
            serde_json::json!({"containers": [
                {"name": "web", "image": "registry.keelson.local/web:1", "ports": [{"containerPort": 80, "hostPort": host_port}]},
                {"name": "fails", "image": "registry.keelson.local/web:1", "command": ["/bin/sh", "-c", "echo attempt; exit 1"]},
            ]}),
        ),
    )
    .await
    .unwrap();
    for name in ["ticker", "two"] {
        wait_running(&pods, name, &format!("{name} runs")).await;
    }
    // hostPort: the node's address (its InternalIP here is loopback) and its bridge's answer for
    // the web container, through CNI's portmap.
    let gateway = format!("{}0.1", up.cidr_prefix);
    for addr in [format!("127.0.0.1:{host_port}"), format!("{gateway}:{host_port}")] {
        let body = wait_until(&format!("the hostPort answers at {addr}"), within(SETTLED_WITHIN), || {
            let addr = addr.clone();
            async move { http_get_at(&addr) }
        })
        .await;
        assert!(body.contains("Hello from a pod on Keelson"), "{addr}: {body}");
    }
    let work = tempfile::tempdir().unwrap();
    let current = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    let debian = Kubectl::new(work.path(), &up.kubeconfig());

    for (kubectl, version) in [(&current, "1.33"), (&debian, "1.20")] {
        // Logs: whole, the last lines, with times; and followed as they are written.
        let all = wait_until("the ticker has logged three lines", within(SETTLED_WITHIN), || async move {
            let (ok, out, err) = kubectl.try_run(&["logs", "ticker"], None);
            if ok && out.lines().count() >= 3 {
                Ok(out)
            } else {
                Err(format!("{out}{err}"))
            }
        })
        .await;
        assert!(all.starts_with("tick 0\ntick 1\n"), "kubectl {version}: {all}");
        // --since: only the last second's lines, once the ticker has run longer than that.
        let recent = wait_until("logs --since=1s leaves the first lines out", within(SETTLED_WITHIN), || async move {
            let out = kubectl.run(&["logs", "ticker", "--since=1s"]);
            if !out.is_empty() && !out.contains("tick 0\n") {
                Ok(out)
            } else {
                Err(out)
            }
        })
        .await;
        assert!(
            recent.lines().all(|l| l.starts_with("tick ")) && recent.lines().count() <= 10,
            "kubectl {version}: {recent}"
        );
        let tail = kubectl.run(&["logs", "ticker", "--tail=1", "--timestamps"]);
        let (time, rest) = tail.trim_end().split_once(' ').unwrap_or_else(|| panic!("{tail}"));
        assert!(time.contains('T') && rest.starts_with("tick "), "kubectl {version}: {tail}");
        let mut follow = kubectl.command(&["logs", "-f", "ticker", "--tail=1"]);
        let mut child = follow.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let rx = lines_of(&mut child);
        let first: u64 = next_line(&rx, "from logs -f").trim_start_matches("tick ").parse().unwrap();
        let later: u64 = next_line(&rx, "from logs -f").trim_start_matches("tick ").parse().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(later, first + 1, "kubectl {version}: logs -f follows the lines as they come");
        // A restarted container has its previous log.
        let previous = wait_until("the failing container has a previous log", within(SETTLED_WITHIN), || async move {
            let (ok, out, err) = kubectl.try_run(&["logs", "two", "-c", "fails", "--previous"], None);
            if ok {
                Ok(out)
            } else {
                Err(err)
            }
        })
        .await;
        assert_eq!(previous, "attempt\n", "kubectl {version}");

        // Exec: output, the exit code, and stdin.
        let (ok, out, err) = kubectl
            .try_run(&["exec", "two", "-c", "web", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"], None);
        assert!(!ok, "kubectl {version}: exit 7 is a failure");
        assert_eq!(out, "out\n", "kubectl {version}: {err}");
        assert!(err.contains("err") && err.contains("command terminated with exit code 7"), "kubectl {version}: {err}");
        let status = kubectl
            .command(&["exec", "two", "-c", "web", "--", "/bin/sh", "-c", "exit 7"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7), "kubectl {version} exits with the command's code");
        let echoed = kubectl
            .run_with_input(&["exec", "-i", "two", "-c", "web", "--", "/bin/cat"], Some("hello through stdin\n"));
        assert_eq!(echoed, "hello through stdin\n", "kubectl {version}");
        // With a terminal (`-it` under script(1), which gives kubectl a pseudo-terminal): the
        // command gets one too, and its exit code comes back.
        let (code, out) =
            in_terminal(kubectl.command(&["exec", "-it", "two", "-c", "web", "--", "/bin/sh", "-c", "tty; exit 5"]));
        assert!(out.contains("/dev/pts/"), "kubectl {version}: {out}");
        assert_eq!(code, Some(5), "kubectl {version}: {out}");

        // Port-forward: a local port that reaches the pod's port 80.
        let mut forward = kubectl.command(&["port-forward", "pod/two", ":80"]);
        let mut child = forward.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let rx = lines_of(&mut child);
        let line = next_line(&rx, "from port-forward");
        let port: u16 = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kubectl {version}: {line}"));
        let body = wait_until("the forwarded port answers", within(SETTLED_WITHIN), || async move {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
            let mut body = String::new();
            s.read_to_string(&mut body).map_err(|e| e.to_string())?;
            if body.contains("Hello from a pod on Keelson") {
                Ok(body)
            } else {
                Err(body)
            }
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(body.starts_with("HTTP/1.1 200"), "kubectl {version}: {body}");
    }

    // Attach: the container's stdin (kept open until the first attach ends) and its output.
    for (kubectl, version, name) in [(&current, "1.33", "attach-a"), (&debian, "1.20", "attach-b")] {
        pods.create(
            &post,
            &pod(name, serde_json::json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/cat"], "stdin": true, "stdinOnce": true}]})),
        )
        .await
        .unwrap();
        wait_running(&pods, name, &format!("{name} runs")).await;
        let out = kubectl.run_with_input(&["attach", "-i", name], Some("through attach\n"));
        assert!(out.contains("through attach"), "kubectl {version}: {out}");
    }

    // kube-rs: exec over WebSocket, with the command's output and exit status.
    let mut run = pods
        .exec(
            "two",
            ["/bin/sh", "-c", "echo from kube-rs; exit 3"],
            &kube::api::AttachParams::default().container("web").stderr(false),
        )
        .await
        .expect("kube-rs execs");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.stdout().as_mut().unwrap(), &mut stdout).await.unwrap();
    let status = run.take_status().unwrap().await.expect("the exec's status");
    assert_eq!(stdout, "from kube-rs\n");
    assert_eq!(status.status.as_deref(), Some("Failure"), "{status:?}");
    let code = status
        .details
        .and_then(|d| d.causes)
        .and_then(|c| c.into_iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message);
    assert_eq!(code.as_deref(), Some("3"));
    // And with a terminal.
    let mut run = pods
        .exec("two", ["/bin/sh", "-c", "tty; exit 4"], &kube::api::AttachParams::interactive_tty().container("web"))
        .await
        .expect("kube-rs execs with a tty");
    drop(run.stdin());
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.stdout().as_mut().unwrap(), &mut stdout).await.unwrap();
    let status = run.take_status().unwrap().await.expect("the exec's status");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?} {status:?}");
    let code = status
        .details
        .and_then(|d| d.causes)
        .and_then(|c| c.into_iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message);
    assert_eq!(code.as_deref(), Some("4"));

    // Init containers run one at a time, in order, before the app container.
    let init = |n: &str| serde_json::json!({"name": n, "image": "registry.keelson.local/web:1", "command": ["/bin/sh", "-c", format!("echo {n} >> /work/order")], "volumeMounts": [{"name": "work", "mountPath": "/work"}]});
    pods.create(
        &post,
        &pod(
            "initialized",
            serde_json::json!({
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [init("first"), init("second")],
                "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sh", "-c", "cat /work/order; exec /bin/sleep 3600"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            }),
        ),
    )
    .await
    .unwrap();
    wait_running(&pods, "initialized", "the pod with init containers runs").await;
    let order = wait_until("the app container logged what the init containers wrote", within(SETTLED_WITHIN), || {
        let current = &current;
        async move {
            let (ok, out, err) = current.try_run(&["logs", "initialized", "-c", "c"], None);
            if ok && out.lines().count() >= 2 {
                Ok(out)
            } else {
                Err(format!("{out}{err}"))
            }
        }
    })
    .await;
    assert_eq!(order, "first\nsecond\n");
    let statuses = pods.get("initialized").await.unwrap().status.unwrap().init_container_statuses.unwrap();
    for s in &statuses {
        let t = s.state.as_ref().and_then(|st| st.terminated.as_ref()).unwrap_or_else(|| panic!("{s:?}"));
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")), "{}", s.name);
    }

    // Bad input: no container named in a pod of two (kubectl picks one itself; the API does not),
    // a container the pod does not have.
    let e = pods.logs("two", &Default::default()).await.unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 400 && s.message == "a container name must be specified for pod two, choose one of: [web fails]"),
        "{e}"
    );
    let (ok, _, err) = current.try_run(&["logs", "ticker", "-c", "nope"], None);
    assert!(!ok && err.contains("container nope is not valid for pod ticker"), "{err}");
    let (ok, _, err) = current.try_run(&["exec", "ticker", "-c", "nope", "--", "true"], None);
    assert!(!ok && err.contains("nope"), "{err}");
}

/// The Ready condition of a pod and its container's restart count.
/// Runs `cmd` under script(1), on a pseudo-terminal: its exit code and everything it printed.
fn in_terminal(cmd: Command) -> (Option<i32>, String) {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote).collect();
    let mut script = Command::new("script");
    script.args(["-qec", &line.join(" "), "/dev/null"]).env_clear().stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    let out = script.output().expect("script(1) runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn ready_and_restarts(pods: &Api<Pod>, name: &str) -> Result<(bool, i32), String> {
    let p = pods.get(name).await.map_err(|e| e.to_string())?;
    let status = p.status.ok_or("no status")?;
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let restarts = status.container_statuses.iter().flatten().map(|c| c.restart_count).sum();
    Ok((ready, restarts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_restart_the_unhealthy_and_hooks_run() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    let fast = |action: serde_json::Value| {
        let mut p = serde_json::json!({"periodSeconds": 1, "failureThreshold": 2});
        p.as_object_mut().unwrap().extend(action.as_object().unwrap().clone());
        p
    };
    // Readiness by a file (exec) and by HTTP; liveness by a file the container makes at start.
    let script = "touch /tmp/alive; exec /bin/httpd -f -p 80 -h /www";
    pods.create(
        &post,
        &pod(
            "probed",
            serde_json::json!({"containers": [{
                "name": "c",
                "image": "registry.keelson.local/web:1",
                "command": ["/bin/sh", "-c", script],
                "ports": [{"name": "http", "containerPort": 80}],
                "readinessProbe": fast(serde_json::json!({"exec": {"command": ["/bin/test", "-f", "/tmp/ready"]}})),
                "livenessProbe": fast(serde_json::json!({"exec": {"command": ["/bin/test", "-f", "/tmp/alive"]}})),
                "startupProbe": fast(serde_json::json!({"httpGet": {"path": "/", "port": "http"}})),
            }]}),
        ),
    )
    .await
    .unwrap();
    // Readiness by a TCP connection to a port nothing listens on until told to.
    pods.create(
        &post,
        &pod(
            "tcp-probed",
            serde_json::json!({"containers": [{
                "name": "c",
                "image": "registry.keelson.local/web:1",
                "command": ["/bin/sleep", "3600"],
                "readinessProbe": fast(serde_json::json!({"tcpSocket": {"port": 8080}})),
            }]}),
        ),
    )
    .await
    .unwrap();
    let settle = |want: (bool, i32), what: &'static str| {
        let pods = pods.clone();
        async move {
            wait_until(what, within(SETTLED_WITHIN), || {
                let pods = pods.clone();
                async move {
                    let got = ready_and_restarts(&pods, "probed").await?;
                    if got.0 == want.0 && got.1 >= want.1 {
                        Ok(got)
                    } else {
                        Err(format!("{got:?}"))
                    }
                }
            })
            .await
        }
    };
    wait_running(&pods, "probed", "the probed pod runs").await;
    let (ready, _) = ready_and_restarts(&pods, "probed").await.unwrap();
    assert!(!ready, "not ready before its readiness file exists");
    wait_running(&pods, "tcp-probed", "the pod probed over TCP runs").await;
    assert_eq!(ready_and_restarts(&pods, "tcp-probed").await.unwrap(), (false, 0), "nothing listens on 8080 yet");
    // busybox httpd without -f goes to the background and listens.
    kubectl.run(&["exec", "tcp-probed", "--", "/bin/httpd", "-p", "8080", "-h", "/www"]);
    wait_until("the TCP readiness probe passes", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let got = ready_and_restarts(&pods, "tcp-probed").await?;
            if got.0 {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    kubectl.run(&["exec", "probed", "--", "/bin/touch", "/tmp/ready"]);
    settle((true, 0), "the readiness probe passes").await;
    let started = pods.get("probed").await.unwrap().status.unwrap().container_statuses.unwrap()[0].started;
    assert_eq!(started, Some(true), "the startup probe passed");
    kubectl.run(&["exec", "probed", "--", "/bin/rm", "/tmp/ready"]);
    settle((false, 0), "the readiness probe fails again").await;
    // Liveness: the file goes, the container is restarted (and makes it again).
    kubectl.run(&["exec", "probed", "--", "/bin/rm", "/tmp/alive"]);
    let (_, restarts) = settle((false, 1), "the unhealthy container is restarted").await;
    assert!(restarts >= 1);
    let s = pods.get("probed").await.unwrap().status.unwrap().container_statuses.unwrap().remove(0);
    assert!(s.last_state.and_then(|l| l.terminated).is_some(), "the killed instance is the last state");
    wait_until("the restarted container runs and stays", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let s = pods
                .get("probed")
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.container_statuses)
                .ok_or("no statuses")?
                .remove(0);
            if s.state.and_then(|st| st.running).is_some() {
                Ok(())
            } else {
                Err("not running".to_string())
            }
        }
    })
    .await;

    // preStop: an HTTP GET to the node (the pods' gateway) before the container is stopped.
    let gateway = {
        let node: k8s_openapi::api::core::v1::Node = Api::all(client.clone()).get("node-1").await.unwrap();
        let cidr = node.spec.unwrap().pod_cidr.unwrap();
        let base: std::net::Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(base) + 1)
    };
    let listener = std::net::TcpListener::bind((gateway, 0)).expect("a listener on the pods' gateway");
    let port = listener.local_addr().unwrap().port();
    pods.create(
        &post,
        &pod(
            "hooked",
            serde_json::json!({"terminationGracePeriodSeconds": 5, "containers": [{
                "name": "c",
                "image": "registry.keelson.local/web:1",
                "lifecycle": {
                    "postStart": {"exec": {"command": ["/bin/sh", "-c", "echo started > /www/hook.html"]}},
                    "preStop": {"httpGet": {"host": gateway.to_string(), "port": port, "path": "/prestop"}},
                },
            }]}),
        ),
    )
    .await
    .unwrap();
    let ip = wait_until("hooked runs with an address", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let s = pods.get("hooked").await.map_err(|e| e.to_string())?.status.ok_or("no status")?;
            match (s.phase.as_deref(), s.pod_ip) {
                (Some("Running"), Some(ip)) => Ok(ip),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // The postStart hook ran in the container: httpd serves the file it wrote.
    let body = wait_until("the postStart hook's file is served", within(SETTLED_WITHIN), || {
        let ip = ip.clone();
        async move {
            let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
            s.write_all(b"GET /hook.html HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
            let mut body = String::new();
            s.read_to_string(&mut body).map_err(|e| e.to_string())?;
            if body.contains("started") {
                Ok(body)
            } else {
                Err(body)
            }
        }
    })
    .await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // The hook's request is answered only after the test has seen the container still serve:
    // the container is stopped after its preStop hook, not before.
    let (tx, rx) = std::sync::mpsc::channel::<(String, Result<String, String>, Instant)>();
    let pod_ip = ip.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            let serving = http_get(&pod_ip);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send((String::from_utf8_lossy(&buf[..n]).into_owned(), serving, Instant::now()));
        }
    });
    let asked = Instant::now();
    pods.delete("hooked", &DeleteParams::default()).await.unwrap();
    let (request, serving, at) = rx.recv_timeout(SETTLED_WITHIN).expect("the preStop hook called the node");
    assert!(request.starts_with("GET /prestop HTTP/1.1"), "{request}");
    assert!(at >= asked);
    assert!(serving.is_ok(), "the container no longer served when its preStop hook ran: {serving:?}");
    wait_until("hooked is deleted", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            if pods.get_opt("hooked").await.map_err(|e| e.to_string())?.is_none() {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_carry_config_secrets_and_fields_and_follow_changes() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &post,
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "files"}, "data": {"greeting": "hello"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &post,
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": "sealed"}, "stringData": {"password": "pw"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let host_dir = up.dir.join("host-volume");
    // A claim bound (by name) to a hostPath PersistentVolume.
    let pv_dir = up.dir.join("persistent");
    std::fs::create_dir_all(&pv_dir).unwrap();
    let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    let pv = serde_json::json!({"metadata": {"name": "disk"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": pv_dir.display().to_string()}}});
    pvs.create(&post, &serde_json::from_value(pv).unwrap()).await.unwrap();
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let claim = serde_json::json!({"metadata": {"name": "data"}, "spec": {"volumeName": "disk", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    claims.create(&post, &serde_json::from_value(claim).unwrap()).await.unwrap();
    pods.create(
        &post,
        &pod(
            "mounted",
            serde_json::json!({
                "volumes": [
                    {"name": "cm", "configMap": {"name": "files"}},
                    {"name": "sec", "secret": {"secretName": "sealed", "defaultMode": 0o400}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                    {"name": "host", "hostPath": {"path": host_dir.display().to_string(), "type": "DirectoryOrCreate"}},
                    {"name": "down", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}, {"path": "labels/test", "fieldRef": {"fieldPath": "metadata.labels['test']"}}]}},
                    {"name": "proj", "projected": {"sources": [{"configMap": {"name": "files", "items": [{"key": "greeting", "path": "g"}]}}, {"secret": {"name": "sealed"}}]}},
                    {"name": "claimed", "persistentVolumeClaim": {"claimName": "data"}},
                ],
                "containers": [{
                    "name": "c",
                    "image": "registry.keelson.local/web:1",
                    "command": ["/bin/sh", "-c", "echo from-the-pod > /host/written; echo kept > /data/kept; exec /bin/sleep 3600"],
                    "volumeMounts": [
                        {"name": "cm", "mountPath": "/etc/cm"},
                        {"name": "sec", "mountPath": "/etc/sec", "readOnly": true},
                        {"name": "scratch", "mountPath": "/scratch"},
                        {"name": "host", "mountPath": "/host"},
                        {"name": "down", "mountPath": "/etc/pod"},
                        {"name": "proj", "mountPath": "/etc/proj"},
                        {"name": "claimed", "mountPath": "/data"},
                    ],
                }],
            }),
        ),
    )
    .await
    .unwrap();
    wait_running(&pods, "mounted", "the pod with volumes runs").await;
    let exec = |script: &str| kubectl.run(&["exec", "mounted", "--", "/bin/sh", "-c", script]);
    assert_eq!(exec("cat /etc/cm/greeting"), "hello");
    assert_eq!(exec("cat /etc/sec/password; echo; stat -L -c %a /etc/sec/password"), "pw\n400\n");
    assert_eq!(exec("cat /etc/pod/name; echo; cat /etc/pod/labels/test"), "mounted\nspec");
    assert_eq!(exec("cat /etc/proj/g; echo; cat /etc/proj/password"), "hello\npw");
    assert!(exec("cat /proc/mounts").lines().any(|l| l.contains(" /scratch tmpfs ")), "/scratch is a tmpfs");
    let (ok, _, err) = kubectl.try_run(&["exec", "mounted", "--", "/bin/sh", "-c", "echo x > /etc/sec/new"], None);
    assert!(!ok && err.contains("Read-only file system"), "a readOnly mount refuses writes: {err}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("written")).unwrap(),
        "from-the-pod\n",
        "the hostPath is the host's directory"
    );
    assert_eq!(std::fs::read_to_string(pv_dir.join("kept")).unwrap(), "kept\n", "the claim is its volume's directory");

    // The service-account credentials every pod gets: its namespace, the cluster's CA, and a
    // token bound to it that authenticates as the account, to which RBAC applies.
    let credentials = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(exec(&format!("cat {credentials}/namespace")), "default");
    let ca = std::fs::read_to_string(up.dir.join("store/tls/server-ca.crt")).unwrap();
    assert_eq!(exec(&format!("cat {credentials}/ca.crt")).trim_end(), ca.trim_end());
    let token = exec(&format!("cat {credentials}/token")).trim().to_string();
    let mut config = kube_config_from_file(&up.kubeconfig(), Instant::now() + READY_WITHIN);
    config.auth_info = Default::default();
    config.auth_info.token = Some(token.clone().into());
    let as_pod = kube::Client::try_from(config).unwrap();
    let review: serde_json::Value = as_pod
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_vec())
                .unwrap(),
        )
        .await
        .expect("the pod's token authenticates");
    assert_eq!(review["status"]["userInfo"]["username"], "system:serviceaccount:default:default", "{review}");
    let pods_as_pod: Api<Pod> = Api::namespaced(as_pod.clone(), "default");
    match pods_as_pod.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the default account listed pods without a binding: {other:?}"),
    }
    kubectl.run(&["create", "rolebinding", "default-view", "--clusterrole=view", "--serviceaccount=default:default"]);
    wait_until("the pod's account may list pods once bound to view", within(SETTLED_WITHIN), || {
        let pods_as_pod = pods_as_pod.clone();
        async move { pods_as_pod.list(&ListParams::default()).await.map(|_| ()).map_err(|e| e.to_string()) }
    })
    .await;

    // A changed ConfigMap reaches the mounted file.
    config_maps
        .patch(
            "files",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"data": {"greeting": "changed"}})),
        )
        .await
        .unwrap();
    wait_until("the mounted file has the ConfigMap's new value", within(SETTLED_WITHIN), || {
        let kubectl = &kubectl;
        async move {
            let (ok, out, err) = kubectl.try_run(&["exec", "mounted", "--", "/bin/cat", "/etc/cm/greeting"], None);
            if ok && out == "changed" {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        }
    })
    .await;

    // A volume of a ConfigMap that does not exist: ContainerCreating, and FailedMount.
    pods.create(
        &post,
        &pod("unmountable", serde_json::json!({"volumes": [{"name": "v", "configMap": {"name": "absent"}}], "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]})),
    )
    .await
    .unwrap();
    let (reason, _) = waiting_reason(&pods, "unmountable", &["ContainerCreating"]).await;
    assert_eq!(reason, "ContainerCreating");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let event = wait_until("a FailedMount event names the missing ConfigMap", within(SETTLED_WITHIN), || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=unmountable"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedMount"))
                .ok_or_else(|| "no FailedMount event yet".to_string())
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.message.as_deref(),
        Some("MountVolume.SetUp failed for volume \"v\" : configmap \"absent\" not found")
    );

    // Deleted, the pods leave no volume and no mount behind.
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
        &ListParams::default(),
    )
    .await
    .unwrap();
    wait_until("the pods' volumes are gone", within(SETTLED_WITHIN), || {
        let (pods, up) = (pods.clone(), &up);
        async move {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            let dirs: Vec<String> = std::fs::read_dir(up.dir.join("agent/pods"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let mounts = mounts_under(&up.dir.join("agent/pods"));
            if left == 0 && dirs.is_empty() && mounts.is_empty() {
                Ok(())
            } else {
                Err(format!("{left} pods, dirs {dirs:?}, mounts {mounts:?}"))
            }
        }
    })
    .await;
}

/// The cgroup v1 directory of `controller` for a path as /proc/<pid>/cgroup names it, or v2's.
fn cgroup_dir(controller: &str, proc_cgroup: &str) -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let line = proc_cgroup
        .lines()
        .find(|l| {
            if unified {
                l.starts_with("0::")
            } else {
                l.split(':').nth(1).is_some_and(|c| c.split(',').any(|x| x == controller))
            }
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {proc_cgroup}"));
    let path = line.splitn(3, ':').nth(2).unwrap().trim_start_matches('/');
    if unified {
        Path::new("/sys/fs/cgroup").join(path)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_become_cgroup_limits_and_security_contexts_apply() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    let sleeper = |name: &str, extra: serde_json::Value| {
        let mut c = serde_json::json!({"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sleep", "3600"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        pod(name, serde_json::json!({"terminationGracePeriodSeconds": 0, "containers": [c]}))
    };
    pods.create(&post, &sleeper("limited", serde_json::json!({"resources": {"requests": {"cpu": "250m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}}}))).await.unwrap();
    pods.create(&post, &sleeper("user", serde_json::json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}))).await.unwrap();
    pods.create(&post, &sleeper("privileged", serde_json::json!({"securityContext": {"privileged": true}})))
        .await
        .unwrap();
    pods.create(
        &post,
        &pod(
            "oom",
            serde_json::json!({"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "registry.keelson.local/web:1",
                "command": ["/bin/sh", "-c", "s=xxxxxxxxxxxxxxxx; while true; do s=\"$s$s\"; done"],
                "resources": {"limits": {"memory": "16Mi"}},
            }]}),
        ),
    )
    .await
    .unwrap();
    pods.create(&post, &sleeper("nonroot", serde_json::json!({"securityContext": {"runAsNonRoot": true}})))
        .await
        .unwrap();
    for name in ["limited", "user", "privileged"] {
        wait_running(&pods, name, &format!("{name} runs")).await;
    }
    let exec = |pod: &str, script: &str| kubectl.try_run(&["exec", pod, "--", "/bin/sh", "-c", script], None);

    // Requests and limits are the container's cgroup settings.
    let (_, cgroups, err) = exec("limited", "cat /proc/1/cgroup");
    assert!(!cgroups.is_empty(), "{err}");
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cgroup_dir(controller, &cgroups).join(file))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("", "memory.max"), "67108864");
        assert_eq!(read("", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "256");
    }
    let uid = pods.get("limited").await.unwrap().metadata.uid.unwrap();
    assert!(cgroups.contains(&format!("/keelson/pod{uid}/")), "the container is under its pod's cgroup: {cgroups}");

    // The user, the group, a read-only root and no capabilities; and a privileged container.
    let (_, ids, err) = exec("user", "id -u; id -g");
    assert_eq!(ids, "1000\n3000\n", "{err}");
    let (ok, _, err) = exec("user", "touch /written");
    assert!(!ok && err.contains("Read-only file system"), "{err}");
    let (_, caps, _) = exec("user", "grep CapEff /proc/self/status");
    assert!(caps.trim().ends_with("0000000000000000"), "{caps}");
    let (_, caps, _) = exec("privileged", "grep CapEff /proc/self/status");
    assert!(!caps.trim().ends_with("0000000000000000"), "{caps}");

    // Over its memory limit, a container is OOM-killed, and its status says so.
    let terminated = wait_until("the oom pod's container is OOM-killed", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let s = pods
                .get("oom")
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.container_statuses)
                .ok_or("no status")?
                .remove(0);
            s.state.and_then(|st| st.terminated).ok_or_else(|| "not terminated yet".to_string())
        }
    })
    .await;
    assert_eq!((terminated.reason.as_deref(), terminated.exit_code), (Some("OOMKilled"), 137), "{terminated:?}");
    // runAsNonRoot with an image that runs as root is refused.
    let (reason, message) = waiting_reason(&pods, "nonroot", &["CreateContainerConfigError"]).await;
    assert!(message.contains("runAsNonRoot"), "{reason}: {message}");

    // Deleted, the pods leave no cgroup.
    pods.delete_collection(
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
        &ListParams::default(),
    )
    .await
    .unwrap();
    wait_until("the pods and their cgroups are gone", within(SETTLED_WITHIN), || {
        let (pods, uid) = (pods.clone(), uid.clone());
        async move {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
            let cgroup = agent::cgroups::pod_exists(agent::cgroups::DEFAULT_ROOT, &uid);
            if left == 0 && !cgroup {
                Ok(())
            } else {
                Err(format!("{left} pods, cgroup left: {cgroup}"))
            }
        }
    })
    .await;
}

/// Each web pod's name, address, container id and restart count.
async fn web_containers(client: &kube::Client) -> Result<Vec<(String, String, String, i32)>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for p in list.items {
        let status = p.status.ok_or("no status")?;
        let c = status.container_statuses.and_then(|c| c.into_iter().next()).ok_or("no container status")?;
        if c.state.as_ref().and_then(|s| s.running.as_ref()).is_none() {
            return Err(format!("{:?} is not running", p.metadata.name));
        }
        out.push((
            p.metadata.name.unwrap_or_default(),
            status.pod_ip.ok_or("no address")?,
            c.container_id.ok_or("no container id")?,
            c.restart_count,
        ));
    }
    out.sort();
    if out.len() == 2 {
        Ok(out)
    } else {
        Err(format!("{out:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_adopts_its_running_pods_without_restarting_them() {
    let mut up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web.yaml");
    kubectl.run(&["apply", "-f", &example.display().to_string()]);
    let before = wait_until("both web pods run", within(SETTLED_WITHIN), || web_containers(&client)).await;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let web_ip = services.get("web").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    wait_until("the web Service routes to both pods", within(SETTLED_WITHIN), || {
        let (up, before) = (&up, &before);
        async move {
            let table = proxy_table(up);
            if before.iter().all(|(_, ip, _, _)| table.contains(&format!("dnat to {ip}:80"))) {
                Ok(())
            } else {
                Err(table)
            }
        }
    })
    .await;

    // SIGKILL: the agent (with the whole control plane of `keelson up`) dies at once; its
    // containerd and the containers' shims go on, and so do the pods, and the node's service
    // rules route to them.
    let mut child = up.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for (name, ip, _, _) in &before {
        let body = http_get(ip).unwrap_or_else(|e| panic!("{name} stopped serving when its agent was killed: {e}"));
        assert!(body.contains("Hello from a pod on Keelson"), "{body}");
    }
    let body = http_get(&web_ip)
        .unwrap_or_else(|e| panic!("the web Service stopped answering when its agent was killed: {e}"));
    assert!(body.contains("Hello from a pod on Keelson"), "{body}");

    // Started again, the node adopts what runs: the same containers, not restarted.
    up.spawn();
    up.wait_node_ready().await;
    let after = wait_until("the node reports its pods again", within(SETTLED_WITHIN), || web_containers(&client)).await;
    assert_eq!(after, before, "the pods' addresses, container ids and restart counts are unchanged");
    for (_, ip, _, _) in &after {
        assert!(http_get(ip).is_ok_and(|b| b.contains("Hello from a pod on Keelson")));
    }
    assert!(
        http_get(&web_ip).is_ok_and(|b| b.contains("Hello from a pod on Keelson")),
        "the Service answers after the restart"
    );
    // One sandbox and one container per pod: nothing was started twice.
    let containers = up.runtime_containers();
    assert_eq!(containers.len(), 4, "two sandboxes and two containers: {containers:?}");
    let status = up.interrupt();
    assert!(status.success(), "keelson up exited with {status}");
}

/// A private registry (Debian's docker-registry, distribution 2.8) on loopback that wants a user
/// and password, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REGISTRY_USER: &str = "puller";
const REGISTRY_PASSWORD: &str = "s3cret-pass";

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let addr = format!("127.0.0.1:{port}");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("htpasswd (apache2-utils; scripts/setup installs it)");
        assert!(htpasswd.status.success());
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: keelson\n    path: {}\n",
            dir.path().join("data").display(),
            dir.path().join("htpasswd").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        let deadline = Instant::now() + SETTLED_WITHIN;
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry does not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr, _dir: dir }
    }

    /// Pushes an OCI archive as `<addr>/<name>` with the registry's credentials.
    fn push(&self, archive: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .expect("skopeo (scripts/setup installs it)");
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// containerd's host config for this registry: plain HTTP.
    fn hosts_dir(&self, under: &Path) -> PathBuf {
        let dir = under.join("registries");
        std::fs::create_dir_all(dir.join(&self.addr)).unwrap();
        let toml = format!(
            "server = \"http://{0}\"\n\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            self.addr
        );
        std::fs::write(dir.join(&self.addr).join("hosts.toml"), toml).unwrap();
        dir
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_serves_pods_with_an_image_pull_secret_and_refuses_others() {
    let registry = Registry::start();
    let staging = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    assert!(Command::new(scripts.join("example-images"))
        .arg(staging.path())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    registry.push(&staging.path().join("web.tar"), "private/web:1");
    let hosts = registry.hosts_dir(staging.path());
    let up = Up::start_with(&["--registry-config", &hosts.display().to_string()]);
    up.wait_node_ready().await;
    let client = up.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    let image = format!("{}/private/web:1", registry.addr);

    // Without credentials: the pull is refused, as Kubernetes reports it.
    pods.create(
        &post,
        &pod(
            "anonymous",
            serde_json::json!({"containers": [{"name": "c", "image": image, "imagePullPolicy": "Always"}]}),
        ),
    )
    .await
    .unwrap();
    let (_, message) = waiting_reason(&pods, "anonymous", &["ErrImagePull", "ImagePullBackOff"]).await;
    assert!(message.contains(&image), "{message}");

    // With an imagePullSecret made by kubectl: pulled, and running.
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    kubectl.run(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server",
        &registry.addr,
        "--docker-username",
        REGISTRY_USER,
        "--docker-password",
        REGISTRY_PASSWORD,
    ]);
    pods.create(
        &post,
        &pod("authorized", serde_json::json!({"imagePullSecrets": [{"name": "regcred"}], "containers": [{"name": "c", "image": image, "imagePullPolicy": "Always"}]})),
    )
    .await
    .unwrap();
    let s = wait_until("the pod with the secret runs", within(SETTLED_WITHIN), || {
        let pods = pods.clone();
        async move {
            let s = pods.get("authorized").await.map_err(|e| e.to_string())?.status.ok_or("no status")?;
            if s.phase.as_deref() == Some("Running") {
                Ok(s)
            } else {
                Err(format!("{:?}", s.container_statuses))
            }
        }
    })
    .await;
    let c = &s.container_statuses.unwrap()[0];
    assert_eq!(c.image, image);
    assert!(c.image_id.contains("sha256:"), "{}", c.image_id);
    // The anonymous pod, pulling again (policy Always), is still refused.
    let (reason, _) = waiting_reason(&pods, "anonymous", &["ErrImagePull", "ImagePullBackOff"]).await;
    assert!(reason == "ErrImagePull" || reason == "ImagePullBackOff");
}

/// The node's service rules as nft lists them.
fn proxy_table(up: &Up) -> String {
    let out = Command::new("nft").args(["list", "table", "ip", &bridge_of(up.network)]).output().expect("nft runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /` to `addr` and the answer's body (after the headers).
fn body_at(addr: &str) -> Result<String, String> {
    let answer = http_get_at(addr)?;
    answer.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).ok_or(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_route_through_cluster_ips_and_node_ports_to_ready_pods() {
    let up = Up::start();
    up.wait_node_ready().await;
    let client = up.client();
    let post = PostParams::default();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    // Two pods that each answer with their own name.
    let deployment = serde_json::json!({
        "metadata": {"name": "named"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "named"}},
            "template": {
                "metadata": {"labels": {"app": "named"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "c",
                    "image": "registry.keelson.local/web:1",
                    "command": ["/bin/sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && touch /tmp/ready && exec /bin/httpd -f -p 8080 -h /tmp/www"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"exec": {"command": ["/bin/test", "-f", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1},
                }]},
            },
        },
    });
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "default");
    deployments.create(&post, &serde_json::from_value(deployment).unwrap()).await.unwrap();
    let node_port = 30000 + up.network;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let service = |name: &str, extra: serde_json::Value| {
        let mut spec = serde_json::json!({"selector": {"app": "named"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value::<k8s_openapi::api::core::v1::Service>(
            serde_json::json!({"metadata": {"name": name}, "spec": spec}),
        )
        .unwrap()
    };
    services.create(&post, &service("named", serde_json::json!({"type": "NodePort", "ports": [{"name": "web", "port": 80, "targetPort": "http", "nodePort": node_port}]}))).await.unwrap();
    services.create(&post, &service("sticky", serde_json::json!({"sessionAffinity": "ClientIP"}))).await.unwrap();
    services.create(&post, &service("nobody", serde_json::json!({"selector": {"app": "nobody"}}))).await.unwrap();
    let ip_of = |name: &'static str| {
        let services = services.clone();
        async move { services.get(name).await.unwrap().spec.unwrap().cluster_ip.unwrap() }
    };
    let (named, sticky, nobody) = (ip_of("named").await, ip_of("sticky").await, ip_of("nobody").await);
    assert!(named.starts_with(&format!("10.{}.", up.network)), "{named}");

    // Nothing is sent to a cluster IP before the node's rules hold it (and so drop what they do
    // not route): traffic to the service range never leaves the node.
    let pods = wait_until("both pods are ready and the rules route to them", within(SETTLED_WITHIN), || {
        let (client, up) = (client.clone(), &up);
        async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let listed = pods.list(&ListParams::default().labels("app=named")).await.map_err(|e| e.to_string())?;
            let ready: Vec<(String, String)> = listed
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
                .collect();
            let table = proxy_table(up);
            let routed =
                ready.iter().filter(|(_, ip)| table.matches(&format!("dnat to {ip}:8080")).count() == 2).count();
            if ready.len() == 2 && routed == 2 {
                Ok(ready)
            } else {
                Err(format!("{ready:?}\n{table}"))
            }
        }
    })
    .await;
    let names: std::collections::BTreeSet<String> = pods.iter().map(|(n, _)| n.clone()).collect();

    // The cluster IP from the host spreads over both pods.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..60 {
        answered.insert(body_at(&format!("{named}:80")).unwrap());
        if answered == names {
            break;
        }
    }
    assert_eq!(answered, names, "requests to {named} reach both pods");
    // From a pod, by cluster IP (busybox wget).
    let from_pod = kubectl.run(&["exec", &pods[0].0, "--", "/bin/wget", "-q", "-O", "-", &format!("http://{named}/")]);
    assert!(names.contains(from_pod.trim()), "{from_pod}");
    // The NodePort on the node's address (the pods' gateway here).
    let gateway = format!("{}0.1", up.cidr_prefix);
    let via_node_port = body_at(&format!("{gateway}:{node_port}")).unwrap();
    assert!(names.contains(&via_node_port), "{via_node_port}");
    // ClientIP affinity: one client, one pod.
    let stuck: std::collections::BTreeSet<String> =
        (0..20).map(|_| body_at(&format!("{sticky}:80")).unwrap()).collect();
    assert_eq!(stuck.len(), 1, "{stuck:?}");

    // Cluster DNS, from a pod: its resolv.conf, then names as Kubernetes' DNS specification
    // defines them.
    let dns_ip = format!("10.{}.128.10", up.network);
    let pod0 = pods[0].0.clone();
    let resolv = kubectl.run(&["exec", &pod0, "--", "/bin/cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("ndots:5"),
        "{resolv}"
    );
    let lookup = |args: Vec<String>| {
        let (kubectl, pod0) = (&kubectl, &pod0);
        async move {
            let mut argv: Vec<&str> = vec!["exec", pod0, "--", "/bin/nslookup"];
            argv.extend(args.iter().map(String::as_str));
            let (_, out, err) = kubectl.try_run(&argv, None);
            Ok::<String, String>(format!("{out}{err}"))
        }
    };
    let by_name = wait_until("the service's name resolves in the pod", within(SETTLED_WITHIN), || async {
        let out = lookup(vec!["named.default.svc.cluster.local".into()]).await?;
        if out.contains(&format!("Address: {named}")) {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(by_name.contains(&dns_ip), "answered by the cluster's DNS: {by_name}");
    // The node itself asks through the Service too (its answer comes from the address asked).
    let from_host = wait_until("the kube-dns Service answers the host", within(SETTLED_WITHIN), || {
        let (dns_ip, name) = (dns_ip.clone(), "named.default.svc.cluster.local.");
        async move { resolve_a(&format!("{dns_ip}:53"), name) }
    })
    .await;
    assert_eq!(from_host, vec![named.clone()]);
    // The search list: the bare name in the pod's namespace.
    let short = lookup(vec!["named".into()]).await.unwrap();
    assert!(short.contains(&format!("Address: {named}")), "{short}");
    let srv = lookup(vec!["-type=srv".into(), "_web._tcp.named.default.svc.cluster.local".into()]).await.unwrap();
    assert!(srv.contains("80 named.default.svc.cluster.local"), "{srv}");
    let ptr = lookup(vec![named.clone()]).await.unwrap();
    assert!(ptr.contains("named.default.svc.cluster.local"), "{ptr}");
    let missing = lookup(vec!["nothing.default.svc.cluster.local".into()]).await.unwrap();
    assert!(missing.contains("NXDOMAIN"), "{missing}");
    // A headless service: its ready pods' addresses.
    services.create(&post, &service("headless", serde_json::json!({"clusterIP": "None"}))).await.unwrap();
    wait_until("the headless service resolves to both pods", within(SETTLED_WITHIN), || async {
        let out = lookup(vec!["headless.default.svc.cluster.local".into()]).await?;
        if pods.iter().all(|(_, ip)| out.contains(&format!("Address: {ip}"))) {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    // ExternalName: a CNAME; names outside the cluster go to the upstream resolver.
    services.create(&post, &serde_json::from_value(serde_json::json!({"metadata": {"name": "elsewhere"}, "spec": {"type": "ExternalName", "externalName": "upstream.example"}})).unwrap()).await.unwrap();
    wait_until("the ExternalName service is a CNAME", within(SETTLED_WITHIN), || async {
        let out = lookup(vec!["-type=cname".into(), "elsewhere.default.svc.cluster.local".into()]).await?;
        if out.contains("upstream.example") {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    let forwarded = lookup(vec!["upstream.example".into()]).await.unwrap();
    assert!(forwarded.contains(&format!("Address: {UPSTREAM_ANSWER}")), "forwarded to the upstream: {forwarded}");
    assert!(!kubectl
        .try_run(&["get", "endpointslices", "-n", "kube-system", "-l", "kubernetes.io/service-name=kube-dns"], None)
        .1
        .is_empty());

    // No endpoints: refused at once (ICMP port unreachable), not left to time out.
    let addr: SocketAddr = format!("{nobody}:80").parse().unwrap();
    let asked = Instant::now();
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect_err("nothing serves the service");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(asked.elapsed() < Duration::from_secs(1));
    // Another port of a cluster IP: refused too.
    let err = TcpStream::connect_timeout(&format!("{named}:81").parse().unwrap(), Duration::from_secs(5))
        .expect_err("port 81 is not the service's");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // A target port name no pod has: no endpoints, so refused (once the rules have it).
    services
        .create(
            &post,
            &service("misnamed", serde_json::json!({"ports": [{"name": "web", "port": 80, "targetPort": "nope"}]})),
        )
        .await
        .unwrap();
    let misnamed = ip_of("misnamed").await;
    wait_until("the misnamed service refuses connections", within(SETTLED_WITHIN), || {
        let addr: SocketAddr = format!("{misnamed}:80").parse().unwrap();
        async move {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // A selectorless service with a hand-written EndpointSlice: routed to what the slice names.
    services.create(&post, &service("manual", serde_json::json!({"selector": null}))).await.unwrap();
    let slice = serde_json::json!({
        "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pods[1].1], "conditions": {"ready": true}}],
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
    });
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices.create(&post, &serde_json::from_value(slice).unwrap()).await.unwrap();
    let manual = ip_of("manual").await;
    let body = wait_until("the selectorless service answers", within(SETTLED_WITHIN), || {
        let manual = manual.clone();
        async move { body_at(&format!("{manual}:80")) }
    })
    .await;
    assert_eq!(body, pods[1].0, "the hand-written endpoint");

    // A pod that stops being ready stops taking traffic.
    let (gone, kept) = (&pods[0], &pods[1]);
    kubectl.run(&["exec", &gone.0, "--", "/bin/rm", "/tmp/ready"]);
    wait_until(&format!("the rules no longer route to {}", gone.1), within(SETTLED_WITHIN), || {
        let (up, ip) = (&up, gone.1.clone());
        async move {
            let table = proxy_table(up);
            if table.contains(&format!("dnat to {ip}:8080")) {
                Err(table)
            } else {
                Ok(())
            }
        }
    })
    .await;
    for _ in 0..10 {
        assert_eq!(body_at(&format!("{named}:80")).unwrap(), kept.0);
    }

    // A deleted service leaves nothing behind in the table.
    services.delete("sticky", &DeleteParams::default()).await.unwrap();
    wait_until("the deleted service's chains and sets are gone", within(SETTLED_WITHIN), || {
        let (up, sticky) = (&up, &sticky);
        async move {
            let table = proxy_table(up);
            if table.contains("default/sticky/") || table.contains(&format!("{sticky} ")) {
                Err(table)
            } else {
                Ok(())
            }
        }
    })
    .await;
}

/// The network namespace (under /var/run/netns, where CNI puts pods') holding address `ip`.
fn pod_netns(ip: &str) -> PathBuf {
    let needle = format!(" {ip}/");
    for e in std::fs::read_dir("/var/run/netns").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let out = Command::new("ip").args(["-n", &name, "-4", "-o", "addr"]).output().expect("ip runs");
        if String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return e.path();
        }
    }
    panic!("no network namespace holds {ip}")
}

/// Runs `work` on a runtime of its own in a thread that entered the network namespace of the
/// pod at `ip`: its sockets are the pod's, its traffic leaves through the pod's interface.
fn in_pod_network<T, F>(ip: &str, work: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, String>>,
{
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(pod_netns(ip)).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns changes only this thread's network namespace.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(work())
    })
    .join()
    .expect("the thread in the pod's network namespace")
    .unwrap_or_else(|e| panic!("in the pod's network namespace: {e}"))
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("a PEM certificate")
}

/// What a client saw of one request.
struct Request {
    at: Instant,
    outcome: Result<(), String>,
    version_2: bool,
}

/// A client sending `GET /` to `addr` without pause, each on a new connection, from inside node
/// network namespace `ns` (as a process on that node would), until dropped.
struct Client {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(ns: &str, addr: SocketAddr) -> Client {
        use std::os::fd::AsRawFd;
        let netns = std::fs::File::open(Path::new("/var/run/netns").join(ns)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopping, log) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: setns changes only this thread's network namespace.
            assert_eq!(
                unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "{}",
                std::io::Error::last_os_error()
            );
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let (outcome, version_2) = match get(addr) {
                    Ok(body) if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") => {
                        (Ok(()), body.contains("version 2"))
                    }
                    Ok(body) => (Err(body.lines().next().unwrap_or_default().to_string()), false),
                    Err(e) => (Err(e), false),
                };
                log.lock().unwrap().push(Request { at, outcome, version_2 });
            }
        });
        Client { stop, seen, thread: Some(thread) }
    }

    /// Requests sent since `since`: how many, and the failures (when, why).
    fn since(&self, since: Instant) -> (usize, Vec<(Duration, String)>) {
        let seen = self.seen.lock().unwrap();
        let after: Vec<&Request> = seen.iter().filter(|r| r.at >= since).collect();
        let failed = after.iter().filter_map(|r| r.outcome.as_ref().err().map(|e| (r.at - since, e.clone()))).collect();
        (after.len(), failed)
    }

    /// Whether the last `n` requests all succeeded, and all came from version 2 if `v2`.
    fn last_ok(&self, n: usize, v2: bool) -> Result<(), String> {
        let seen = self.seen.lock().unwrap();
        if seen.len() < n {
            return Err(format!("{} requests so far", seen.len()));
        }
        let last = &seen[seen.len() - n..];
        match last.iter().find(|r| r.outcome.is_err() || (v2 && !r.version_2)) {
            None => Ok(()),
            Some(r) => Err(format!("{:?}, version 2: {}", r.outcome, r.version_2)),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `GET /` on a new connection: the whole response.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| format!("read: {e}"))?;
    Ok(body)
}

/// How long after a node is lost its pods may still be sent requests: until the node lifecycle
/// controller sees no lease renewal for `--node-monitor-grace-period` (20 s) and marks them not
/// ready, plus the endpoint and proxy updates (the README's failover time).
const FAILOVER_WITHIN: Duration = Duration::from_secs(30);

/// The example's web pods that are ready: (name, node, ip, image).
async fn ready_web_pods(client: &kube::Client) -> Result<Vec<(String, String, String, String)>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            Some((
                p.metadata.name.clone()?,
                spec.node_name.clone()?,
                p.status.as_ref()?.pod_ip.clone()?,
                spec.containers[0].image.clone()?,
            ))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_across_nodes_and_a_service_survives_a_rolling_update_and_a_lost_node() {
    let up = Up::start_nodes(3);
    let net = node_network(up.network);
    let names: Vec<String> = (1..=3).map(|k| net.node_name(k)).collect();
    up.wait_nodes_ready(&names).await;
    let client = up.client();
    let work = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), work.path(), &up.kubeconfig());
    // The client looks on from the first node, where no web pod goes, so that the node lost
    // later always holds one.
    let watcher = names[0].clone();
    kubectl.run(&["cordon", &watcher]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web.yaml");
    kubectl.run(&["apply", "-f", &example.display().to_string()]);
    // Pods on a lost node are evicted when their toleration of its unreachable taint runs out:
    // 300 s by default (as in Kubernetes), 2 s here.
    let tolerations = serde_json::json!({"spec": {"template": {"spec": {"tolerations": [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
    ]}}}});
    kubectl.run(&["patch", "deployment", "web", "-p", &tolerations.to_string()]);
    kubectl.run(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let web = wait_until("both web pods are ready", within(SETTLED_WITHIN), || async {
        let ready = ready_web_pods(&client).await?;
        if ready.len() == 2 {
            Ok(ready)
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await;
    // Each node has its own pod range, and routes to the others' through their addresses.
    for (name, node, ip, _) in &web {
        let k = names.iter().position(|n| n == node).unwrap() + 1;
        let routes =
            String::from_utf8(Command::new("ip").args(["-n", node, "route"]).output().unwrap().stdout).unwrap();
        assert!(routes.contains("dev eth0") && routes.contains(&format!("src {}", net.node_ip(k))), "{routes}");
        assert!(ip.starts_with(&up.cidr_prefix), "{name} on {node}: {ip}");
    }
    let routes = String::from_utf8(
        Command::new("ip").args(["-n", &watcher, "route", "show", "proto", "77"]).output().unwrap().stdout,
    )
    .unwrap();
    assert_eq!(routes.lines().count(), 2, "node 1 routes both other nodes' pod ranges:\n{routes}");

    let victim = web[0].1.clone();
    assert_ne!(victim, watcher);
    let post = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&post, &pod("probe", serde_json::json!({"nodeName": watcher, "terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sleep", "3600"]}]})))
        .await
        .unwrap();
    wait_running(&pods, "probe", "the probe pod runs").await;
    // Pod to pod across nodes, by address.
    let across = kubectl.run(&["exec", "probe", "--", "/bin/wget", "-q", "-O", "-", &format!("http://{}/", web[0].2)]);
    assert!(across.contains("Hello from a pod on Keelson"), "from {watcher} to {} on {victim}: {across}", web[0].2);
    // The Service by cluster IP and by name, through the cluster's DNS on the control plane's host.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let cluster_ip = services.get("web").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    for target in [cluster_ip.clone(), "web.default.svc.cluster.local".into()] {
        let body = wait_until(&format!("{target} answers the probe pod"), within(SETTLED_WITHIN), || {
            let (kubectl, target) = (&kubectl, &target);
            async move {
                let (ok, out, err) = kubectl.try_run(
                    &["exec", "probe", "--", "/bin/wget", "-q", "-O", "-", &format!("http://{target}/")],
                    None,
                );
                if ok && out.contains("Hello from a pod on Keelson") {
                    Ok(out)
                } else {
                    Err(format!("{out}{err}"))
                }
            }
        })
        .await;
        assert!(body.contains("<title>Keelson</title>"), "{body}");
    }
    // The API from inside the pod, as an in-cluster client reaches it: through the
    // `kubernetes` Service's cluster IP (its endpoints are the API's advertised address), with
    // the pod's own service-account token, verifying the API's certificate with the pod's CA;
    // RBAC applies to the token. The client runs in a thread that entered the pod's network
    // namespace (busybox's TLS offers no signature scheme the API's TLS accepts).
    let credentials = "/var/run/secrets/kubernetes.io/serviceaccount";
    let token = kubectl.run(&["exec", "probe", "--", "/bin/cat", &format!("{credentials}/token")]).trim().to_string();
    let ca = kubectl.run(&["exec", "probe", "--", "/bin/cat", &format!("{credentials}/ca.crt")]);
    let probe_ip = pods.get("probe").await.unwrap().status.unwrap().pod_ip.unwrap();
    let mut in_cluster = kube_config_from_file(&up.kubeconfig(), Instant::now() + READY_WITHIN);
    in_cluster.cluster_url = format!("https://10.{}.128.1:443", up.network).parse().unwrap();
    in_cluster.root_cert = Some(vec![pem_der(&ca)]);
    in_cluster.auth_info = Default::default();
    in_cluster.auth_info.token = Some(token.into());
    let (review, secrets) = in_pod_network(&probe_ip, move || async move {
        let client = kube::Client::try_from(in_cluster).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + SETTLED_WITHIN;
        let review: serde_json::Value = loop {
            let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_vec())
                .unwrap();
            match client.request(req).await {
                Ok(r) => break r,
                // The proxies learn of the Service's endpoints a moment after they are written.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("the API through the kubernetes Service: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let secrets =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, "default").list(&ListParams::default()).await;
        Ok((review, secrets.map(|_| ()).map_err(|e| e.to_string())))
    });
    assert_eq!(review["status"]["userInfo"]["username"], "system:serviceaccount:default:default", "{review}");
    let refused = secrets.unwrap_err();
    assert!(refused.contains("403") || refused.contains("forbidden"), "{refused}");

    // A NodePort answers on every node's address, from this host.
    let node_port = 30000 + up.network;
    let np = serde_json::json!({"metadata": {"name": "web-np"}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http", "nodePort": node_port}]}});
    services.create(&post, &serde_json::from_value(np).unwrap()).await.unwrap();
    for k in 1..=3 {
        let addr = format!("{}:{node_port}", net.node_ip(k));
        let body = wait_until(&format!("the NodePort answers at {addr}"), within(SETTLED_WITHIN), || {
            let addr = addr.clone();
            async move { http_get_at(&addr) }
        })
        .await;
        assert!(body.contains("Hello from a pod on Keelson"), "{body}");
    }

    // A rolling update behind the Service while a client on another node sends requests without
    // pause: not one fails, and in the end every answer is version 2's.
    let addr: SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let requests = Client::start(&watcher, addr);
    wait_until("the client's requests succeed", within(SETTLED_WITHIN), || async { requests.last_ok(20, false) }).await;
    let update = Instant::now();
    kubectl.run(&["set", "image", "deployment/web", "httpd=registry.keelson.local/web:2"]);
    kubectl.run(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    wait_until("every answer comes from version 2", within(SETTLED_WITHIN), || async { requests.last_ok(20, true) })
        .await;
    let (sent, failed) = requests.since(update);
    assert!(sent >= 100, "the client sent {sent} requests during the update");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed during the rolling update: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    let updated = ready_web_pods(&client).await.unwrap();
    assert!(updated.len() == 2 && updated.iter().all(|p| p.3.ends_with("web:2")), "{updated:?}");

    // A node lost: its namespace and every process on it (agent, containerd, pods) gone at once.
    let on_victim = updated[0].1.clone();
    let lost_k = names.iter().position(|n| *n == on_victim).unwrap() + 1;
    assert_ne!(on_victim, watcher, "the client's node is not the one lost");
    let lost = Instant::now();
    net.kill_node(lost_k).unwrap();
    assert!(!Path::new("/var/run/netns").join(&on_victim).exists());
    // The pods come back on the other nodes, and the Service answers every request again.
    let replaced =
        wait_until("two web pods are ready on the nodes left", within(FAILOVER_WITHIN + SETTLED_WITHIN), || async {
            let ready = ready_web_pods(&client).await?;
            let elsewhere: Vec<_> = ready.iter().filter(|p| p.1 != on_victim).cloned().collect();
            if elsewhere.len() == 2 {
                Ok(elsewhere)
            } else {
                Err(format!("{ready:?}"))
            }
        })
        .await;
    wait_until("the Service answers every request", within(SETTLED_WITHIN), || async { requests.last_ok(50, true) })
        .await;
    let (sent, failed) = requests.since(lost);
    let answering_again = failed.last().map(|(at, _)| *at).unwrap_or_default();
    eprintln!("node {on_victim} lost: {} of {sent} requests failed, the last {answering_again:?} after; pods now {replaced:?}", failed.len());
    assert!(
        answering_again <= FAILOVER_WITHIN,
        "requests failed until {answering_again:?} after the node was lost: {:?}",
        &failed[failed.len().saturating_sub(5)..]
    );
    drop(requests);

    // NetworkPolicy, across the two nodes left: a server on one, clients on the other.
    let server_node = replaced[0].1.clone();
    kubectl.run(&["create", "namespace", "fenced"]);
    let fenced: Api<Pod> = Api::namespaced(client.clone(), "fenced");
    let sleeper = |name: &str, node: &str, labels: serde_json::Value| {
        let mut p = pod(
            name,
            serde_json::json!({"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "registry.keelson.local/web:1", "command": ["/bin/sleep", "3600"]}]}),
        );
        p.metadata.labels = serde_json::from_value(labels).unwrap();
        p
    };
    let mut server = sleeper("server", &server_node, serde_json::json!({"app": "server"}));
    server.spec.as_mut().unwrap().containers[0] =
        serde_json::from_value(serde_json::json!({"name": "c", "image": "registry.keelson.local/web:1", "ports": [{"name": "http", "containerPort": 80}]})).unwrap();
    fenced.create(&post, &server).await.unwrap();
    fenced.create(&post, &sleeper("friend", &watcher, serde_json::json!({"role": "client"}))).await.unwrap();
    fenced.create(&post, &sleeper("stranger", &watcher, serde_json::json!({}))).await.unwrap();
    for name in ["server", "friend", "stranger"] {
        wait_running(&fenced, name, &format!("fenced/{name} runs")).await;
    }
    let server_ip = fenced.get("server").await.unwrap().status.unwrap().pod_ip.unwrap();
    let outside_ip = replaced[0].2.clone();
    // Whether `from` gets a page from `url` within 3 s.
    let reach = |from: &'static str, url: String| {
        let kubectl = &kubectl;
        async move {
            let (ok, out, _) = kubectl.try_run(
                &["exec", "-n", "fenced", from, "--", "/bin/timeout", "3", "/bin/wget", "-q", "-O", "-", &url],
                None,
            );
            ok && out.contains("Hello from a pod on Keelson")
        }
    };
    let server_url = format!("http://{server_ip}/");
    assert!(reach("stranger", server_url.clone()).await, "without policies every pod reaches every pod");
    let apply = |name: &str, spec: serde_json::Value| {
        let policy = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "fenced"}, "spec": spec});
        let path = work.path().join(format!("{name}.json"));
        std::fs::write(&path, policy.to_string()).unwrap();
        kubectl.run(&["apply", "-f", &path.display().to_string()]);
    };
    // Default deny: nothing reaches the namespace's pods.
    apply("default-deny", serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    wait_until("the default-deny policy blocks the friend", within(SETTLED_WITHIN), || async {
        if reach("friend", server_url.clone()).await {
            Err("reached".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    // An allow rule admits exactly what it names: pods labelled role=client, on the named port.
    apply(
        "allow-clients",
        serde_json::json!({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}]}),
    );
    wait_until("the allow rule admits the friend", within(SETTLED_WITHIN), || async {
        if reach("friend", server_url.clone()).await {
            Ok(())
        } else {
            Err("blocked".to_string())
        }
    })
    .await;
    assert!(!reach("stranger", server_url.clone()).await, "a pod the rule does not name stays blocked");
    // Egress: the friend may reach the server's address on port 80 and nothing else.
    apply(
        "friend-egress",
        serde_json::json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": format!("{server_ip}/32")}}], "ports": [{"protocol": "TCP", "port": 80}]}]}),
    );
    let outside_url = format!("http://{outside_ip}/");
    wait_until("the egress policy keeps the friend from other pods", within(SETTLED_WITHIN), || async {
        if reach("friend", outside_url.clone()).await {
            Err("reached".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(reach("friend", server_url.clone()).await, "the egress rule admits the server");
    assert!(reach("stranger", outside_url.clone()).await, "egress of pods the policy does not select is open");
    // Deleting the policies opens the namespace again.
    kubectl.run(&["delete", "networkpolicy", "-n", "fenced", "--all"]);
    wait_until("without policies the stranger reaches the server again", within(SETTLED_WITHIN), || async {
        if reach("stranger", server_url.clone()).await {
            Ok(())
        } else {
            Err("blocked".to_string())
        }
    })
    .await;

    // Stopped, the cluster leaves no node behind: namespaces, links, cgroups.
    let mut up = up;
    let status = up.interrupt();
    assert!(status.success(), "keelson up exited with {status}\n{}", log_tail(&up.log, 40));
    assert_eq!(net.leftovers(), Vec::<String>::new());
}

#[test]
fn nodes_left_by_a_crashed_run_are_removed_by_the_next_one() {
    // A prefix and link of their own: this test starts no cluster.
    let n = claim_network();
    let net = node_network(n);
    let lock = net.claim().unwrap();
    for k in 1..=2 {
        net.create_node(k).unwrap();
    }
    // A process in node 2's namespace, as its agent would be, and a pod's cgroup.
    let mut sleeper = net.command(2, Path::new("/bin/sleep")).unwrap();
    let child = sleeper.arg("600").spawn().unwrap();
    let pid = child.id();
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    assert_ne!(ns_of(pid), ns_of(std::process::id()), "the process runs in the node's network namespace");
    let cgroup = PathBuf::from("/sys/fs/cgroup/pids").join(net.cgroup_root(2).trim_start_matches('/')).join("podtest");
    std::fs::create_dir_all(&cgroup).unwrap();
    assert!(!net.leftovers().is_empty());
    // The run dies: its lock goes with it; whoever claims the prefix next removes everything.
    drop(lock);
    std::mem::forget(child);
    let _again = net.claim().unwrap();
    assert_eq!(net.leftovers(), Vec::<String>::new());
    assert!(!cgroup.exists());
    wait_until_sync("the node's process is gone", || {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Reaped by no one here, it stays a zombie once killed.
        if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
            Ok(())
        } else {
            Err(state)
        }
    });
    // A prefix in use is refused.
    assert!(net.claim().unwrap_err().to_string().contains("in use"));
    release_network(n);
}

/// Polls `condition` until it holds, for at most `SETTLED_WITHIN`.
fn wait_until_sync(what: &str, condition: impl Fn() -> Result<(), String>) {
    let deadline = Instant::now() + SETTLED_WITHIN;
    loop {
        match condition() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("gave up waiting until {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
