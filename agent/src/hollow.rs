//! The hollow runtime: CRI's calls answered in memory, for scale tests (thousands of nodes in one
//! process) and for tests that need pods to run without containers. Sandboxes get addresses from
//! the node's pod range. A container's command decides its life: `sleep N` exits 0 after N
//! seconds, `false` exits 1 and `true` exits 0 at once, anything else runs until stopped.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::runtime::{
    AuthConfig, ContainerConfig, ContainerEvent, ContainerMetadata, ContainerState, ContainerStatus, Image,
    ImageService, PodSandboxConfig, PodSandboxStatus, Result, RuntimeError, RuntimeService, SandboxMetadata,
    SandboxState, Streams, VersionInfo,
};

/// Container events waiting for the agent; beyond this the agent's periodic relist notices.
pub const EVENTS_QUEUED_MAX: usize = 256;

pub struct HollowRuntime {
    inner: Mutex<Inner>,
    events_tx: mpsc::Sender<ContainerEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<ContainerEvent>>>,
    pod_range: PodRange,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, Container>,
    used_hosts: BTreeSet<u32>,
}

struct Sandbox {
    metadata: SandboxMetadata,
    state: SandboxState,
    created_at: i64,
    host: u32,
}

struct Container {
    sandbox: String,
    metadata: ContainerMetadata,
    image: String,
    life: Life,
    created_at: i64,
    started_at: i64,
    /// Set when the container was stopped before its life ended.
    stopped_at: i64,
}

/// How a hollow container's process behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Forever,
    Exits { after: Duration, code: i32 },
}

impl Life {
    /// Reads a container's command line as a shell would start it.
    pub fn of(command: &[String], args: &[String]) -> Life {
        let argv: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
        // `sh -c "<script>"`: look at the script's words.
        let words: Vec<&str> = match argv.as_slice() {
            [sh, "-c", script, ..] if sh.ends_with("sh") => script.split_whitespace().collect(),
            _ => argv,
        };
        match words.as_slice() {
            ["false", ..] | ["/bin/false", ..] => Life::Exits { after: Duration::ZERO, code: 1 },
            ["true", ..] | ["/bin/true", ..] => Life::Exits { after: Duration::ZERO, code: 0 },
            [sleep, n, ..] if sleep.ends_with("sleep") => match n.parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                    Life::Exits { after: Duration::from_secs_f64(secs), code: 0 }
                }
                _ => Life::Forever,
            },
            _ => Life::Forever,
        }
    }
}

/// An IPv4 range that sandbox addresses come from (a node's `podCIDR`); the first host is the
/// gateway, as a bridge network would have it.
#[derive(Debug, Clone, Copy)]
pub struct PodRange {
    base: u32,
    size: u32,
}

impl PodRange {
    pub fn parse(cidr: &str) -> std::result::Result<PodRange, String> {
        let (addr, bits) = cidr.split_once('/').ok_or_else(|| format!("pod range {cidr:?}: expected ADDRESS/BITS"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("pod range {cidr:?}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("pod range {cidr:?}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("pod range {cidr:?}: prefix length must be 8 to 30"));
        }
        let size = 1u32 << (32 - bits);
        Ok(PodRange { base: u32::from(addr) & !(size - 1), size })
    }

    fn address(&self, host: u32) -> String {
        Ipv4Addr::from(self.base + host).to_string()
    }
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

impl HollowRuntime {
    pub fn new(pod_range: PodRange) -> HollowRuntime {
        let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUED_MAX);
        HollowRuntime {
            inner: Mutex::new(Inner::default()),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            pod_range,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status_of(id: &str, c: &Container, now: i64) -> ContainerStatus {
        let (state, finished_at, exit_code, reason) = if c.started_at == 0 {
            (ContainerState::Created, 0, 0, "")
        } else {
            let natural_end = match c.life {
                Life::Forever => None,
                Life::Exits { after, code } => Some((c.started_at + after.as_nanos() as i64, code)),
            };
            match natural_end {
                Some((end, code)) if end <= now && (c.stopped_at == 0 || end <= c.stopped_at) => {
                    (ContainerState::Exited, end, code, if code == 0 { "Completed" } else { "Error" })
                }
                // A stopped process died of SIGTERM: 128 + 15, as a shell reports it.
                _ if c.stopped_at != 0 => (ContainerState::Exited, c.stopped_at, 143, "Error"),
                _ => (ContainerState::Running, 0, 0, ""),
            }
        };
        ContainerStatus {
            id: id.to_string(),
            pod_sandbox_id: c.sandbox.clone(),
            metadata: c.metadata.clone(),
            state,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at,
            exit_code,
            image: c.image.clone(),
            image_ref: c.image.clone(),
            reason: reason.to_string(),
            message: String::new(),
        }
    }

    fn sandbox_status(&self, id: &str, s: &Sandbox) -> PodSandboxStatus {
        PodSandboxStatus {
            id: id.to_string(),
            metadata: s.metadata.clone(),
            state: s.state,
            created_at: s.created_at,
            ip: Some(self.pod_range.address(s.host)),
        }
    }
}

/// Every image is present on a hollow node: nothing is pulled.
impl ImageService for HollowRuntime {
    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        Ok(Some(format!("hollow:{image}")))
    }

    async fn pull_image(&self, image: &str, _auth: Option<&AuthConfig>) -> Result<String> {
        Ok(format!("hollow:{image}"))
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        Ok(Vec::new())
    }
}

/// What a hollow node cannot do: it runs no processes.
fn no_processes() -> RuntimeError {
    RuntimeError::Failed("a hollow node runs no processes to stream".into())
}

impl RuntimeService for HollowRuntime {
    async fn exec(&self, _container_id: &str, _cmd: &[String], _streams: Streams) -> Result<String> {
        Err(no_processes())
    }

    async fn attach(&self, _container_id: &str, _streams: Streams) -> Result<String> {
        Err(no_processes())
    }

    async fn port_forward(&self, _pod_sandbox_id: &str, _ports: &[i32]) -> Result<String> {
        Err(no_processes())
    }

    /// A hollow container's commands succeed without output.
    async fn exec_sync(&self, container_id: &str, _cmd: &[String], _timeout: Duration) -> Result<(i32, Vec<u8>)> {
        if !self.lock().containers.contains_key(container_id) {
            return Err(RuntimeError::NotFound { kind: "container", id: container_id.into() });
        }
        Ok((0, Vec::new()))
    }

    fn runs_processes(&self) -> bool {
        false
    }

    async fn version(&self) -> Result<VersionInfo> {
        Ok(VersionInfo {
            runtime_name: "hollow".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String> {
        let mut inner = self.lock();
        // Hosts 0 and 1 are the network and the gateway; the last is broadcast.
        let host = (2..self.pod_range.size - 1)
            .find(|h| !inner.used_hosts.contains(h))
            .ok_or_else(|| RuntimeError::Failed("no free address in the node's pod range".into()))?;
        inner.used_hosts.insert(host);
        inner.next_id += 1;
        let id = format!("{:016x}", inner.next_id);
        let sandbox =
            Sandbox { metadata: config.metadata.clone(), state: SandboxState::Ready, created_at: now_nanos(), host };
        inner.sandboxes.insert(id.clone(), sandbox);
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut inner = self.lock();
        let now = now_nanos();
        for c in inner.containers.values_mut().filter(|c| c.sandbox == id) {
            if c.started_at != 0 && c.stopped_at == 0 {
                c.stopped_at = now;
            }
        }
        // Stopping what is gone is not an error in CRI.
        if let Some(s) = inner.sandboxes.get_mut(id) {
            s.state = SandboxState::NotReady;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut inner = self.lock();
        inner.containers.retain(|_, c| c.sandbox != id);
        if let Some(s) = inner.sandboxes.remove(id) {
            inner.used_hosts.remove(&s.host);
        }
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let inner = self.lock();
        let s = inner.sandboxes.get(id).ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.into() })?;
        Ok(self.sandbox_status(id, s))
    }

    async fn list_pod_sandbox(&self) -> Result<Vec<PodSandboxStatus>> {
        let inner = self.lock();
        Ok(inner.sandboxes.iter().map(|(id, s)| self.sandbox_status(id, s)).collect())
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox: &PodSandboxConfig,
    ) -> Result<String> {
        let mut inner = self.lock();
        match inner.sandboxes.get(pod_sandbox_id) {
            Some(s) if s.state == SandboxState::Ready => {}
            Some(_) => return Err(RuntimeError::Failed(format!("sandbox {pod_sandbox_id} is not ready"))),
            None => return Err(RuntimeError::NotFound { kind: "sandbox", id: pod_sandbox_id.into() }),
        }
        inner.next_id += 1;
        let id = format!("{:016x}", inner.next_id);
        let container = Container {
            sandbox: pod_sandbox_id.to_string(),
            metadata: config.metadata.clone(),
            image: config.image.clone(),
            life: Life::of(&config.command, &config.args),
            created_at: now_nanos(),
            started_at: 0,
            stopped_at: 0,
        };
        inner.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let (life, sandbox) = {
            let mut inner = self.lock();
            let c = inner
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
            if c.started_at != 0 {
                return Err(RuntimeError::Failed(format!("container {id} was already started")));
            }
            c.started_at = now_nanos();
            (c.life, c.sandbox.clone())
        };
        // The caller knows the container started; only a later exit is news.
        let event = |state| ContainerEvent { container_id: id.to_string(), pod_sandbox_id: sandbox.clone(), state };
        if let Life::Exits { after, .. } = life {
            let tx = self.events_tx.clone();
            let exited = event(ContainerState::Exited);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                // A full queue drops the event; the agent's relist finds the exit.
                let _ = tx.try_send(exited);
            });
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, _timeout: Duration) -> Result<()> {
        let mut inner = self.lock();
        // A hollow process obeys SIGTERM at once, so the grace period is never used up.
        if let Some(c) = inner.containers.get_mut(id) {
            if c.started_at != 0 && c.stopped_at == 0 {
                c.stopped_at = now_nanos();
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let inner = self.lock();
        let c = inner.containers.get(id).ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.into() })?;
        Ok(Self::status_of(id, c, now_nanos()))
    }

    async fn list_containers(&self, pod_sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>> {
        let inner = self.lock();
        let now = now_nanos();
        Ok(inner
            .containers
            .iter()
            .filter(|(_, c)| pod_sandbox_id.is_none_or(|s| c.sandbox == s))
            .map(|(id, c)| Self::status_of(id, c, now))
            .collect())
    }

    fn container_events(&self) -> Option<mpsc::Receiver<ContainerEvent>> {
        self.events_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_decides_a_hollow_containers_life() {
        let secs = |s: f64, code| Life::Exits { after: Duration::from_secs_f64(s), code };
        let cases: &[(&[&str], &[&str], Life)] = &[
            (&["sleep", "5"], &[], secs(5.0, 0)),
            (&["sleep"], &["0.5"], secs(0.5, 0)),
            (&["/bin/sleep", "2"], &[], secs(2.0, 0)),
            (&["sh", "-c", "sleep 3"], &[], secs(3.0, 0)),
            (&["false"], &[], secs(0.0, 1)),
            (&["true"], &[], secs(0.0, 0)),
            (&["sleep", "infinity"], &[], Life::Forever),
            (&["nginx"], &[], Life::Forever),
            (&[], &[], Life::Forever),
        ];
        for (command, args, want) in cases {
            assert_eq!(Life::of(&strings(command), &strings(args)), *want, "{command:?} {args:?}");
        }
    }

    #[test]
    fn pod_ranges_parse_and_refuse_nonsense() {
        let r = PodRange::parse("10.64.3.0/24").unwrap();
        assert_eq!((r.address(2), r.size), ("10.64.3.2".to_string(), 256));
        assert_eq!(PodRange::parse("10.64.3.7/24").unwrap().address(2), "10.64.3.2");
        for bad in ["10.0.0.0", "10.0.0.0/31", "x/24", "10.0.0.0/x"] {
            assert!(PodRange::parse(bad).is_err(), "{bad}");
        }
    }

    fn sandbox_config(uid: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: SandboxMetadata { name: "p".into(), uid: uid.into(), namespace: "default".into(), attempt: 0 },
            hostname: "p".into(),
            labels: Default::default(),
            annotations: Default::default(),
            log_directory: String::new(),
            port_mappings: vec![],
            cgroup_parent: String::new(),
            privileged: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            share_process_namespace: false,
            dns: None,
        }
    }

    fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: ContainerMetadata { name: name.into(), attempt: 0 },
            image: "busybox".into(),
            command: strings(command),
            args: vec![],
            working_dir: String::new(),
            envs: vec![],
            labels: Default::default(),
            annotations: Default::default(),
            log_path: String::new(),
            mounts: vec![],
            resources: Default::default(),
            security: Default::default(),
            stdin: false,
            stdin_once: false,
            tty: false,
        }
    }

    #[tokio::test]
    async fn containers_run_exit_and_stop_as_their_commands_say() {
        let rt = HollowRuntime::new(PodRange::parse("10.1.0.0/29").unwrap());
        let mut events = rt.container_events().expect("events are taken once");
        assert!(rt.container_events().is_none());
        let sb = rt.run_pod_sandbox(&sandbox_config("u1")).await.unwrap();
        assert_eq!(rt.pod_sandbox_status(&sb).await.unwrap().ip.as_deref(), Some("10.1.0.2"));
        let quick = rt
            .create_container(&sb, &container_config("quick", &["sleep", "0.05"]), &sandbox_config("u1"))
            .await
            .unwrap();
        let fails =
            rt.create_container(&sb, &container_config("fails", &["false"]), &sandbox_config("u1")).await.unwrap();
        let serve =
            rt.create_container(&sb, &container_config("serve", &["nginx"]), &sandbox_config("u1")).await.unwrap();
        assert_eq!(rt.container_status(&quick).await.unwrap().state, ContainerState::Created);
        for id in [&quick, &fails, &serve] {
            rt.start_container(id).await.unwrap();
        }
        assert!(rt.start_container(&serve).await.is_err(), "a container starts once");
        let f = rt.container_status(&fails).await.unwrap();
        assert_eq!((f.state, f.exit_code, f.reason.as_str()), (ContainerState::Exited, 1, "Error"));
        // The sleeper's exit arrives as an event.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv()).await.expect("exit event").expect("channel open");
            if e.container_id == quick && e.state == ContainerState::Exited {
                break;
            }
        }
        let q = rt.container_status(&quick).await.unwrap();
        assert_eq!((q.state, q.exit_code, q.reason.as_str()), (ContainerState::Exited, 0, "Completed"));
        assert_eq!(rt.container_status(&serve).await.unwrap().state, ContainerState::Running);
        rt.stop_container(&serve, Duration::from_secs(30)).await.unwrap();
        let s = rt.container_status(&serve).await.unwrap();
        assert_eq!((s.state, s.exit_code), (ContainerState::Exited, 143));
        assert_eq!(rt.list_containers(Some(&sb)).await.unwrap().len(), 3);
        rt.stop_pod_sandbox(&sb).await.unwrap();
        assert!(rt.create_container(&sb, &container_config("late", &["x"]), &sandbox_config("u1")).await.is_err());
        rt.remove_pod_sandbox(&sb).await.unwrap();
        assert!(rt.list_containers(None).await.unwrap().is_empty());
        assert!(matches!(rt.pod_sandbox_status(&sb).await, Err(RuntimeError::NotFound { .. })));
    }

    #[tokio::test]
    async fn addresses_are_reused_and_run_out_cleanly() {
        // A /29 has hosts 2..=6 for pods.
        let rt = HollowRuntime::new(PodRange::parse("10.1.0.0/29").unwrap());
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(rt.run_pod_sandbox(&sandbox_config(&format!("u{i}"))).await.unwrap());
        }
        assert!(rt.run_pod_sandbox(&sandbox_config("u5")).await.is_err());
        rt.remove_pod_sandbox(&ids[1]).await.unwrap();
        let again = rt.run_pod_sandbox(&sandbox_config("u6")).await.unwrap();
        assert_eq!(rt.pod_sandbox_status(&again).await.unwrap().ip.as_deref(), Some("10.1.0.3"));
    }
}

/// How a process's hollow nodes look.
#[derive(Debug, Clone)]
pub struct HollowNodes {
    /// Node names: the prefix and the node's index, or exactly `name` for a single node.
    pub prefix: String,
    pub name: Option<String>,
    pub count: usize,
    /// Nodes are spread round-robin over this many zones (`zone-0`, `zone-1`, …).
    pub zones: usize,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
}

/// Largest number of hollow nodes in one process: each takes a /24 of 10.64.0.0/10.
pub const HOLLOW_NODES_MAX: usize = 64 * 256;

impl HollowNodes {
    /// Every node's registration and its own hollow runtime.
    pub fn build(&self) -> std::result::Result<Vec<(crate::node::NodeSetup, std::sync::Arc<HollowRuntime>)>, String> {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        if self.count == 0 || self.count > HOLLOW_NODES_MAX {
            return Err(format!("--hollow-nodes must be 1 to {HOLLOW_NODES_MAX}, not {}", self.count));
        }
        if self.count > 1 && self.name.is_some() {
            return Err(
                "--node-name names one node; with --hollow-nodes above 1 names come from --hollow-node-prefix".into()
            );
        }
        let zones = self.zones.max(1);
        let mut out = Vec::with_capacity(self.count);
        for i in 0..self.count {
            let name = self.name.clone().unwrap_or_else(|| format!("{}{i}", self.prefix));
            let mut labels = self.labels.clone();
            labels.insert("kubernetes.io/hostname".into(), name.clone());
            labels.insert("kubernetes.io/os".into(), "linux".into());
            labels.insert(
                "kubernetes.io/arch".into(),
                std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            );
            labels.insert("topology.kubernetes.io/zone".into(), format!("zone-{}", i % zones));
            let resources: std::collections::BTreeMap<String, Quantity> = [
                ("cpu", self.cpu.clone()),
                ("memory", self.memory.clone()),
                ("pods", self.pods.to_string()),
                ("ephemeral-storage", self.ephemeral_storage.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v)))
            .collect();
            let pod_cidr = format!("10.{}.{}.0/24", 64 + i / 256, i % 256);
            let range = PodRange::parse(&pod_cidr)?;
            let internal_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32).to_string();
            let setup = crate::node::NodeSetup {
                name: name.clone(),
                labels,
                taints: self.taints.clone(),
                capacity: resources.clone(),
                allocatable: resources,
                pod_cidr: Some(pod_cidr),
                internal_ip,
                hostname: name,
                system: k8s_openapi::api::core::v1::NodeSystemInfo {
                    architecture: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                    boot_id: String::new(),
                    container_runtime_version: format!("hollow://{}", env!("CARGO_PKG_VERSION")),
                    kernel_version: String::new(),
                    kube_proxy_version: String::new(),
                    kubelet_version: crate::node::KUBELET_VERSION.into(),
                    machine_id: String::new(),
                    operating_system: "linux".into(),
                    os_image: "Keelson hollow node".into(),
                    system_uuid: String::new(),
                    swap: None,
                },
                not_ready: None,
                // Nothing listens: a hollow node has no processes to stream.
                kubelet_port: 10250,
                measure_dir: None,
                observed: Default::default(),
                since: Default::default(),
            };
            out.push((setup, std::sync::Arc::new(HollowRuntime::new(range))));
        }
        Ok(out)
    }
}
