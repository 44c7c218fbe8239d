//! Three-member clusters of etcd or Keelson on loopback, started with the same flags, ports and
//! data filesystem, and killed on every path (the `Cluster` guard kills its children on drop).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::StatusRequest;
use tonic::transport::Channel;

/// How long a fresh cluster may take to elect a leader that every member knows.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two health polls.
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// Longest a single Status call may take during the health poll.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of a member's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

pub const MEMBERS: usize = 3;

/// Client and peer ports of the three members, chosen once and reused for both systems.
#[derive(Clone, Debug)]
pub struct Ports {
    pub client: [u16; MEMBERS],
    pub peer: [u16; MEMBERS],
}

impl Ports {
    /// Free ports: bind 127.0.0.1:0 for all six at once (so none repeats), then release them.
    pub fn free() -> Result<Self> {
        let listeners: Vec<TcpListener> = (0..2 * MEMBERS)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()
            .context("binding 127.0.0.1:0 to find free ports")?;
        let mut ports = Vec::new();
        for l in &listeners {
            ports.push(l.local_addr()?.port());
        }
        Ok(Ports { client: [ports[0], ports[1], ports[2]], peer: [ports[3], ports[4], ports[5]] })
    }
}

/// A running cluster; dropping it kills and reaps every member.
pub struct Cluster {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    pub endpoints: Vec<String>,
}

impl Cluster {
    /// Starts `program [prefix_args] <etcd flags>` three times and waits until all members agree on a leader.
    pub async fn start(system: &str, program: &Path, prefix_args: &[&str], ports: &Ports, root: &Path) -> Result<Self> {
        Self::start_with(system, program, prefix_args, |_| Vec::new(), ports, root).await
    }

    /// As `start`, with further arguments for member `i` from `member_args(i)`.
    pub async fn start_with(
        system: &str,
        program: &Path,
        prefix_args: &[&str],
        member_args: impl Fn(usize) -> Vec<String>,
        ports: &Ports,
        root: &Path,
    ) -> Result<Self> {
        if !program.is_file() {
            bail!("{system}: {} not found", program.display());
        }
        let name = |i: usize| format!("n{}", i + 1);
        let initial_cluster: Vec<String> =
            (0..MEMBERS).map(|i| format!("{}=http://127.0.0.1:{}", name(i), ports.peer[i])).collect();
        let initial_cluster = initial_cluster.join(",");
        let mut cluster = Cluster { children: Vec::new(), logs: Vec::new(), endpoints: Vec::new() };
        for i in 0..MEMBERS {
            let data_dir = root.join(format!("{system}-{}", name(i)));
            let log = root.join(format!("{system}-{}.log", name(i)));
            let client_url = format!("http://127.0.0.1:{}", ports.client[i]);
            let peer_url = format!("http://127.0.0.1:{}", ports.peer[i]);
            let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(program)
                .args(prefix_args)
                .args(["--name", &name(i)])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("bench-{system}")])
                .args(member_args(i))
                .stdin(Stdio::null())
                .stdout(stderr.try_clone()?)
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?;
            cluster.children.push(child);
            cluster.logs.push(log);
            cluster.endpoints.push(client_url);
        }
        if let Err(e) = cluster.wait_healthy().await {
            let mut msg = format!("{system} did not become healthy: {e:#}");
            for log in &cluster.logs {
                msg.push_str(&format!("\n--- last lines of {}:\n{}", log.display(), tail(log)));
            }
            bail!(msg);
        }
        Ok(cluster)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + HEALTH_DEADLINE;
        loop {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("member {} exited: {status}", child.id());
                }
            }
            let last_problem = match self.leaders().await {
                Ok(leaders) if leaders.iter().all(|&l| l != 0 && l == leaders[0]) => return Ok(()),
                Ok(leaders) => format!("leaders as seen by each member: {leaders:?}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("no agreed leader after {HEALTH_DEADLINE:?} ({last_problem})");
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    /// The leader each member reports through Maintenance Status.
    async fn leaders(&self) -> Result<Vec<u64>> {
        let mut leaders = Vec::new();
        for endpoint in &self.endpoints {
            let status = tokio::time::timeout(STATUS_TIMEOUT, async {
                let channel = Channel::from_shared(endpoint.clone())?.connect().await?;
                let status = MaintenanceClient::new(channel).status(StatusRequest {}).await?.into_inner();
                Ok::<_, anyhow::Error>(status)
            })
            .await
            .with_context(|| format!("{endpoint}: Status timed out"))?
            .with_context(|| format!("{endpoint}: Status"))?;
            leaders.push(status.leader);
        }
        Ok(leaders)
    }

    /// Sum of the members' resident set sizes, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for child in &self.children {
            let path = format!("/proc/{}/status", child.id());
            let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no VmRSS in {path}"))?;
            total += kib * 1024;
        }
        Ok(total)
    }

    /// The members' process IDs.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Fails if a member has exited (crashed) since the start.
    pub fn check_alive(&mut self) -> Result<()> {
        for (child, log) in self.children.iter_mut().zip(&self.logs) {
            if let Some(status) = child.try_wait()? {
                bail!("member {} exited: {status}; see {}", child.id(), log.display());
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Already exited is fine; anything else leaves nothing we could do better here.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// How long a fresh `keelson server` may take to write its kubeconfig (it does so once it serves).
const KUBECONFIG_WITHIN: Duration = Duration::from_secs(30);

/// Three `keelson server`s, a store member and an API replica each, sharing one set of CAs.
pub struct Servers {
    pub cluster: Cluster,
    /// Each replica's API URL (https).
    pub bases: Vec<String>,
    /// The admin kubeconfig the first server wrote (it reaches every replica: one CA signs
    /// every serving certificate and trusts every client certificate).
    pub kubeconfig: PathBuf,
    pub kubeconfig_text: String,
}

impl Servers {
    /// Starts them under `root` with `extra` flags for each, and waits for the admin kubeconfig.
    pub async fn start(keelson: &Path, root: &Path, ports: &Ports, extra: &[&str]) -> Result<Servers> {
        let api_ports: Vec<u16> = (0..MEMBERS)
            .map(|_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        let kubeconfig = root.join("kubeconfig.yaml");
        let cert_dir = root.join("tls");
        let member_args = |i: usize| {
            let mut args = vec!["--api-listen".to_string(), format!("127.0.0.1:{}", api_ports[i])];
            args.extend(["--cert-dir".to_string(), cert_dir.display().to_string()]);
            if i == 0 {
                args.extend(["--write-kubeconfig".to_string(), kubeconfig.display().to_string()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let cluster = Cluster::start_with("keelson", keelson, &["server"], member_args, ports, root).await?;
        let kubeconfig_text = crate::http::wait_kubeconfig(&kubeconfig, KUBECONFIG_WITHIN).await?;
        let bases = api_ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
        Ok(Servers { cluster, bases, kubeconfig, kubeconfig_text })
    }

    /// `--kubeconfig <the admin kubeconfig>`, for a component started beside them.
    pub fn kubeconfig_args(&self) -> [String; 2] {
        ["--kubeconfig".into(), self.kubeconfig.display().to_string()]
    }
}
