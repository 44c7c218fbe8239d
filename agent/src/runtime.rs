//! The container runtime as the agent sees it: the calls of the Kubernetes Container Runtime
//! Interface (CRI) that a kubelet makes, with CRI's names and states. The hollow runtime
//! (`hollow.rs`) implements it in memory; a runtime that speaks CRI to containerd implements the
//! same trait, so the pod lifecycle above it is one code path.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// What can go wrong in a runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// CRI's `VersionResponse`.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// CRI's `PodSandboxMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// CRI's `PodSandboxConfig`, reduced to what Keelson's pods use.
#[derive(Debug, Clone)]
pub struct PodSandboxConfig {
    pub metadata: SandboxMetadata,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_directory: String,
    /// Ports the node forwards to the pod (`hostPort`).
    pub port_mappings: Vec<PortMapping>,
    /// The cgroup the pod's containers go under (kubelet's pod-level cgroup).
    pub cgroup_parent: String,
    /// Whether any of its containers is privileged (CRI then needs a privileged sandbox).
    pub privileged: bool,
    /// The node's namespaces instead of the pod's own (`hostNetwork`, `hostPID`, `hostIPC`).
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// One process namespace for all of the pod's containers (`shareProcessNamespace`).
    pub share_process_namespace: bool,
    /// The pod's resolv.conf; none leaves it to the runtime (the node's).
    pub dns: Option<crate::dns::DnsConfig>,
}

/// CRI's `PortMapping`: a node port forwarded to a pod's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// CRI's `PodSandboxState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// CRI's `PodSandboxStatus` (and list item): times in nanoseconds since the epoch, as in CRI.
#[derive(Debug, Clone)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: SandboxMetadata,
    pub state: SandboxState,
    pub created_at: i64,
    /// The sandbox's primary address, when it has a network.
    pub ip: Option<String>,
}

/// CRI's `ContainerMetadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// CRI's `ContainerConfig`, reduced to what Keelson's pods use.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_path: String,
    /// Volumes (and their sub-paths) mounted into the container.
    pub mounts: Vec<Mount>,
    /// CRI's `LinuxContainerResources`, as kubelet computes them from requests and limits.
    pub resources: LinuxResources,
    /// CRI's `LinuxContainerSecurityContext`.
    pub security: SecurityContext,
    /// The container's stdin stays open for `kubectl attach` (closed after the first attach
    /// ends when `stdin_once`), and its output is a terminal when `tty`.
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// The cgroup settings of a container (0: unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxResources {
    pub cpu_shares: i64,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
}

/// How a container's process runs: its user and group, privileges and capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityContext {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

/// CRI's `Mount`: a host path bound into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
}

/// CRI's `ContainerState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// CRI's `ContainerStatus` (and list item); times in nanoseconds since the epoch, 0 for unset.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub id: String,
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub image: String,
    pub image_ref: String,
    pub reason: String,
    pub message: String,
}

/// CRI's `ContainerEventResponse`: a container changed state (evented PLEG), so that the agent
/// need not poll the runtime to notice an exit.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_sandbox_id: String,
    pub state: ContainerState,
}

/// CRI's RuntimeService, as the agent calls it. Every call may be slow (a real runtime is another
/// process), so the agent never holds a lock across one.
pub trait RuntimeService: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = Result<VersionInfo>> + Send;
    fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> impl Future<Output = Result<String>> + Send;
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn pod_sandbox_status(&self, id: &str) -> impl Future<Output = Result<PodSandboxStatus>> + Send;
    fn list_pod_sandbox(&self) -> impl Future<Output = Result<Vec<PodSandboxStatus>>> + Send;
    /// The sandboxes of the pod with `uid` (a runtime may filter by the sandbox's labels).
    fn pod_sandboxes(&self, uid: &str) -> impl Future<Output = Result<Vec<PodSandboxStatus>>> + Send {
        async move { Ok(self.list_pod_sandbox().await?.into_iter().filter(|s| s.metadata.uid == uid).collect()) }
    }
    fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> impl Future<Output = Result<String>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Stops a container: SIGTERM, then SIGKILL after `timeout`.
    fn stop_container(&self, id: &str, timeout: Duration) -> impl Future<Output = Result<()>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn container_status(&self, id: &str) -> impl Future<Output = Result<ContainerStatus>> + Send;
    /// The containers of one sandbox, or of every sandbox.
    fn list_containers(
        &self,
        pod_sandbox_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ContainerStatus>>> + Send;
    /// CRI's `GetContainerEvents` stream, when the runtime has one (taken once).
    fn container_events(&self) -> Option<tokio::sync::mpsc::Receiver<ContainerEvent>>;
    /// CRI's Exec: the URL of the runtime's streaming server that runs `cmd` in the container.
    fn exec(&self, container_id: &str, cmd: &[String], streams: Streams)
        -> impl Future<Output = Result<String>> + Send;
    /// CRI's Attach: the URL that attaches to the container's first process.
    fn attach(&self, container_id: &str, streams: Streams) -> impl Future<Output = Result<String>> + Send;
    /// CRI's PortForward: the URL that forwards connections to the sandbox's ports.
    fn port_forward(&self, pod_sandbox_id: &str, ports: &[i32]) -> impl Future<Output = Result<String>> + Send;
    /// CRI's ExecSync: runs `cmd` in the container within `timeout`; its exit code and output.
    fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(i32, Vec<u8>)>> + Send;
    /// Whether containers are real processes with addresses to reach (the hollow runtime's are
    /// not: network probes of its pods pass without a try).
    fn runs_processes(&self) -> bool {
        true
    }
}

/// Which of a process's streams an exec or attach connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// CRI's `AuthConfig`: credentials for one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`, as docker's config files keep it.
    pub auth: String,
    pub server_address: String,
}

/// CRI's `Image` (list item).
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
}

/// CRI's ImageService, as the agent calls it.
pub trait ImageService: Send + Sync + 'static {
    /// The image's id, if the runtime has it.
    fn image_status(&self, image: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Pulls `image` (with `auth` when the registry needs it); returns its reference.
    fn pull_image(&self, image: &str, auth: Option<&AuthConfig>) -> impl Future<Output = Result<String>> + Send;
    fn list_images(&self) -> impl Future<Output = Result<Vec<Image>>> + Send;
}
