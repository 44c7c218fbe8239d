//! The pod lifecycle on one node, over any `RuntimeService`: what kubelet's SyncPod does. A sync
//! reads the pod as the API last showed it and the runtime as it is now, makes one step towards
//! the pod's spec (a sandbox, the next init container, the app containers, restarts under the
//! restart policy and its back-off), and writes the pod's status when it changed. A pod being
//! deleted has its containers stopped within its grace period and is then deleted for good with
//! its uid as precondition.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus as ApiStatus, LifecycleHandler, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use crate::node::NodeSetup;
use crate::podspec::{self, ConfigError, EnvSources};
use crate::prober::{Prober, Target};
use crate::runtime::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ImageService, LinuxResources,
    PodSandboxConfig, PodSandboxStatus, PortMapping, RuntimeService, SandboxMetadata, SandboxState, SecurityContext,
};
use crate::volumes::{self, MountError};
use crate::AgentOptions;

/// Kubelet's crash-loop back-off: 10 s doubling to 5 min, reset after 10 min of running.
pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How soon a container that could not be configured or created is tried again (kubelet's pod
/// worker back-off).
const CONFIG_RETRY: Duration = Duration::from_secs(10);

/// The CFS period a CPU limit is a quota of (kubelet's 100 ms).
const CFS_PERIOD_US: i64 = 100_000;

/// How often volumes made from ConfigMaps, Secrets or the pod's fields are written again.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// Grace period when the pod gives none (Kubernetes' default).
const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// Labels the agent puts on sandboxes and containers, kubelet's names.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What one node's pod syncs share.
pub struct NodeContext<R> {
    pub node_name: String,
    pub host_ip: String,
    pub runtime: Arc<R>,
    pub client: kube::Client,
    /// Scheme of container IDs in pod status (`containerd://…` for containerd).
    pub container_id_scheme: &'static str,
    /// The node's allocatable resources: what a container without a limit may use.
    pub allocatable: BTreeMap<String, Quantity>,
    /// Where pods' log directories go (`<root>/<namespace>_<name>_<uid>`), when containers log.
    pub pod_log_root: Option<PathBuf>,
    /// Where pods' volumes go, on nodes whose runtime mounts them.
    pub pods_dir: Option<PathBuf>,
    pub cgroup_root: String,
    /// The probes of the node's running containers.
    pub prober: Prober,
    /// Service-account tokens of projected volumes.
    pub tokens: crate::tokens::TokenManager,
    pub cluster_dns: Option<crate::dns::ClusterDns>,
    pub host_dns: Option<crate::dns::DnsConfig>,
    /// Syncs that create sandboxes or start containers, at most `starts_in_flight_max` at once.
    starts: tokio::sync::Semaphore,
    backoff: Mutex<HashMap<(String, String), Backoff>>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    /// When the container may start again.
    until: Instant,
}

/// Why a container waits, as its status says it: a reason in Kubernetes' words and a message.
pub type Waiting = (&'static str, String);

impl<R: RuntimeService + ImageService> NodeContext<R> {
    pub fn new(setup: &NodeSetup, runtime: Arc<R>, client: kube::Client, options: &AgentOptions) -> Self {
        NodeContext {
            node_name: setup.name.clone(),
            host_ip: setup.internal_ip.clone(),
            runtime,
            client,
            container_id_scheme: options.container_id_scheme,
            allocatable: setup.allocatable.clone(),
            pod_log_root: options.pod_log_root.clone(),
            pods_dir: options.pods_dir.clone(),
            cgroup_root: options.cgroup_root.clone(),
            cluster_dns: options.cluster_dns.clone(),
            host_dns: options.host_dns.clone(),
            prober: Prober::default(),
            tokens: crate::tokens::TokenManager::default(),
            starts: tokio::sync::Semaphore::new(options.starts_in_flight_max.max(1)),
            backoff: Mutex::new(HashMap::new()),
        }
    }

    fn backoffs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Backoff>> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `key` still backs off, if it does.
    fn backing_off(&self, key: &(String, String)) -> Option<Duration> {
        let now = Instant::now();
        self.backoffs().get(key).filter(|b| b.until > now).map(|b| b.until - now)
    }

    /// Records a failure of `key`: its back-off starts, or doubles. Returns the wait.
    fn failed(&self, key: (String, String)) -> Duration {
        let mut backoffs = self.backoffs();
        let delay =
            backoffs.get(&key).map(|b| (b.delay * 2).min(RESTART_BACKOFF_MAX)).unwrap_or(RESTART_BACKOFF_INITIAL);
        backoffs.insert(key, Backoff { delay, until: Instant::now() + delay });
        delay
    }

    fn succeeded(&self, key: &(String, String)) {
        self.backoffs().remove(key);
    }

    /// Forgets the back-off of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.backoffs().retain(|(u, _), _| u != uid);
    }

    fn log_directory(&self, pod: &Pod) -> Option<PathBuf> {
        let m = &pod.metadata;
        let name =
            format!("{}_{}_{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""), pod_uid(pod));
        self.pod_log_root.as_ref().map(|r| r.join(name))
    }
}

/// What a sync asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until the pod or one of its containers changes.
    Idle,
    /// Sync again after this long (a container is backing off).
    After(Duration),
    /// The pod is gone from the API and the node.
    Gone,
}

fn pod_uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// Brings `pod` one step closer to its spec on this node and reports its status.
pub async fn sync_pod<R: RuntimeService + ImageService>(ctx: &NodeContext<R>, pod: &Pod) -> anyhow::Result<Next> {
    let uid = pod_uid(pod).to_string();
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    if pod.metadata.deletion_timestamp.is_some() {
        kill_pod(ctx, &uid, Some(pod), grace_of(pod)).await?;
        delete_for_good(ctx, pod).await?;
        ctx.forget(&uid);
        return Ok(Next::Gone);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        // Terminal: nothing runs again. The stopped containers stay (their logs with them)
        // until the pod is deleted.
        stop_pod(ctx, &uid).await?;
        return Ok(Next::Idle);
    }

    // Volumes first, as kubelet mounts them before the sandbox; refreshed at every sync (a
    // changed ConfigMap or Secret reaches its files).
    let volumes = match set_up_volumes(ctx, pod).await? {
        Ok(v) => v,
        Err(why) => {
            // The pod waits in ContainerCreating, with the event Kubernetes writes.
            let failed = why.to_string();
            let seen = ctx.backoffs().contains_key(&(uid.clone(), format!("mount/{failed}")));
            if !seen {
                ctx.failed((uid.clone(), format!("mount/{failed}")));
                crate::events::pod_event(&ctx.client, &ctx.node_name, pod, "Warning", "FailedMount", failed);
            }
            let status = pod_status(ctx, pod, &[], &HashMap::new(), true, false, None);
            write_status(ctx, pod, status).await?;
            return Ok(Next::After(CONFIG_RETRY));
        }
    };
    let sandbox_config = sandbox_config(ctx, pod);
    let rt = &ctx.runtime;
    let mut ours = rt.pod_sandboxes(&uid).await?;
    // Taken (in order of arrival) by a sync that will start something, and held to its end.
    let mut starting: Option<tokio::sync::SemaphorePermit<'_>> = None;
    ours.sort_by_key(|s| s.created_at);
    let sandbox = match ours.last() {
        // A list does not carry the sandbox's address; its status does.
        Some(s) if s.state == SandboxState::Ready && s.ip.is_some() => s.clone(),
        Some(s) if s.state == SandboxState::Ready => rt.pod_sandbox_status(&s.id).await?,
        last => {
            // No sandbox, or a dead one: everything starts over in a new one, as kubelet does.
            let attempt = last.map(|s| s.metadata.attempt + 1).unwrap_or(0);
            starting = Some(ctx.starts.acquire().await.context("the agent is stopping")?);
            for s in &ours {
                remove_sandbox(ctx, &s.id).await?;
            }
            let mut config = sandbox_config.clone();
            config.metadata.attempt = attempt;
            if let Some(dir) = ctx.log_directory(pod) {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the pod's log directory {}", dir.display()))?;
            }
            let id = rt.run_pod_sandbox(&config).await.context("RunPodSandbox")?;
            rt.pod_sandbox_status(&id).await?
        }
    };

    let containers = rt.list_containers(Some(&sandbox.id)).await?;
    let latest = latest_by_name(&containers);
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut next = Next::Idle;
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    let mut init_done = true;
    let mut pod_failed = false;

    if volumes.refresh {
        next = earlier(next, Next::After(VOLUME_REFRESH));
    }
    // A container whose liveness (or startup) probe failed is stopped; the restart policy and its
    // back-off decide the rest at the next sync, which follows at once.
    for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
        let Some(s) = latest.get(c.name.as_str()).filter(|s| s.state == ContainerState::Running) else { continue };
        if let Some(why) = ctx.prober.unhealthy(&s.id, c) {
            tracing::info!(node = %ctx.node_name, pod = %pod.metadata.name.as_deref().unwrap_or(""), container = %c.name, reason = %why, "container failed its probe; restarting it");
            stop_container(ctx, pod, c, &s.id, grace_of(pod)).await?;
            next = earlier(next, Next::After(Duration::ZERO));
        }
    }

    let to_start = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| latest.get(c.name.as_str()).is_none_or(|s| s.state == ContainerState::Exited));
    if to_start && starting.is_none() {
        starting = Some(ctx.starts.acquire().await.context("the agent is stopping")?);
    }

    // Init containers one at a time, in order; sidecars (restartPolicy Always) keep running.
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        match latest.get(c.name.as_str()) {
            None => {
                if let Some((w, wait)) = start(ctx, &sandbox, &sandbox_config, &volumes, pod, c, 0).await? {
                    next = earlier(next, Next::After(wait));
                    waiting.insert(c.name.clone(), w);
                }
                if !sidecar {
                    init_done = false;
                    break;
                }
            }
            // A sidecar that exited, or an init container that failed.
            Some(s) if s.state == ContainerState::Exited && (sidecar || s.exit_code != 0) => {
                let may_restart = sidecar || restart_policy != "Never";
                if !may_restart {
                    pod_failed = true;
                    init_done = false;
                    break;
                }
                if let Some((w, wait)) = restart(ctx, &uid, &sandbox, &sandbox_config, &volumes, pod, c, s).await? {
                    next = earlier(next, Next::After(wait));
                    waiting.insert(c.name.clone(), w);
                }
                if !sidecar {
                    init_done = false;
                    break;
                }
            }
            Some(s) if !sidecar && s.state != ContainerState::Exited => {
                init_done = false;
                break;
            }
            Some(_) => {}
        }
    }

    if init_done {
        for c in &spec.containers {
            match latest.get(c.name.as_str()) {
                None => {
                    if let Some((w, wait)) = start(ctx, &sandbox, &sandbox_config, &volumes, pod, c, 0).await? {
                        next = earlier(next, Next::After(wait));
                        waiting.insert(c.name.clone(), w);
                    }
                }
                Some(s) if s.state == ContainerState::Exited => {
                    let again = match restart_policy {
                        "Always" => true,
                        "OnFailure" => s.exit_code != 0,
                        _ => false,
                    };
                    if again {
                        if let Some((w, wait)) =
                            restart(ctx, &uid, &sandbox, &sandbox_config, &volumes, pod, c, s).await?
                        {
                            next = earlier(next, Next::After(wait));
                            waiting.insert(c.name.clone(), w);
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }

    // The status as the runtime now has it; probes for what runs, none for what stopped.
    let containers = rt.list_containers(Some(&sandbox.id)).await?;
    let stopped: Vec<String> =
        containers.iter().filter(|c| c.state != ContainerState::Running).map(|c| c.id.clone()).collect();
    ctx.prober.forget(&stopped);
    for s in containers.iter().filter(|c| c.state == ContainerState::Running) {
        let spec_of =
            spec.init_containers.iter().flatten().chain(spec.containers.iter()).find(|c| c.name == s.metadata.name);
        if let Some(c) = spec_of {
            let target = Target {
                pod_uid: uid.clone(),
                container_id: s.id.clone(),
                pod_ip: sandbox.ip.clone(),
                container: c.clone(),
            };
            ctx.prober.ensure(&ctx.runtime, &target);
        }
    }
    // A pod on the node's network has the node's address.
    let ip = sandbox.ip.as_deref().or_else(|| (spec.host_network == Some(true)).then_some(ctx.host_ip.as_str()));
    let status = pod_status(ctx, pod, &containers, &waiting, init_done, pod_failed, ip);
    // The start slot is given back once the status says what was started.
    write_status(ctx, pod, status).await?;
    drop(starting);
    Ok(next)
}

/// A pod's volumes on the node, by name, and whether their contents come from elsewhere (and
/// are written again now and then).
#[derive(Default)]
struct PodVolumes {
    paths: BTreeMap<String, PathBuf>,
    refresh: bool,
}

/// Sets up the pod's volumes; a volume that cannot be set up is the inner error.
async fn set_up_volumes<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    pod: &Pod,
) -> anyhow::Result<Result<PodVolumes, MountError>> {
    let Some(root) = &ctx.pods_dir else { return Ok(Ok(PodVolumes::default())) };
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
    let src = volumes::Sources {
        client: &ctx.client,
        host_ip: &ctx.host_ip,
        pod_ip,
        allocatable: &ctx.allocatable,
        tokens: &ctx.tokens,
    };
    match volumes::set_up(root, &src, pod).await {
        Ok(paths) => {
            let refresh = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| {
                v.config_map.is_some() || v.secret.is_some() || v.projected.is_some() || v.downward_api.is_some()
            });
            Ok(Ok(PodVolumes { paths, refresh }))
        }
        Err(e) => match e.downcast::<MountError>() {
            Ok(m) => Ok(Err(m)),
            Err(e) => Err(e.context("setting up the pod's volumes")),
        },
    }
}

fn earlier(a: Next, b: Next) -> Next {
    match (a, b) {
        (Next::After(x), Next::After(y)) => Next::After(x.min(y)),
        (Next::Idle, b) => b,
        (a, _) => a,
    }
}

fn backoff_message(c: &Container, pod: &Pod, wait: Duration) -> String {
    format!(
        "back-off {}s restarting failed container={} pod={}_{}({})",
        wait.as_secs().max(1),
        c.name,
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod_uid(pod)
    )
}

/// The newest instance of every container name.
fn latest_by_name(containers: &[ContainerStatus]) -> HashMap<&str, &ContainerStatus> {
    let mut latest: HashMap<&str, &ContainerStatus> = HashMap::new();
    for c in containers {
        let e = latest.entry(c.metadata.name.as_str()).or_insert(c);
        if c.metadata.attempt > e.metadata.attempt {
            *e = c;
        }
    }
    latest
}

/// Creates and starts a container. When it cannot (its image, its configuration, the runtime
/// refusing), says why in kubelet's words and when to try again.
async fn start<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    sandbox: &PodSandboxStatus,
    sandbox_config: &PodSandboxConfig,
    volumes: &PodVolumes,
    pod: &Pod,
    c: &Container,
    attempt: u32,
) -> anyhow::Result<Option<(Waiting, Duration)>> {
    if let Some(w) = pull(ctx, pod, c).await? {
        return Ok(Some(w));
    }
    let src = EnvSources {
        client: &ctx.client,
        host_ip: &ctx.host_ip,
        pod_ip: sandbox.ip.as_deref(),
        allocatable: &ctx.allocatable,
    };
    let env = match podspec::container_env(&src, pod, c).await {
        Ok(env) => env,
        Err(e) => match e.downcast::<ConfigError>() {
            Ok(ConfigError(message)) => return Ok(Some((("CreateContainerConfigError", message), CONFIG_RETRY))),
            Err(e) => return Err(e.context("reading the container's environment")),
        },
    };
    let mounts = if ctx.pods_dir.is_some() {
        match volumes::mounts(c, &volumes.paths) {
            Ok(m) => m,
            Err(message) => return Ok(Some((("CreateContainerConfigError", message), CONFIG_RETRY))),
        }
    } else {
        Vec::new()
    };
    let security = match security_context(pod, c) {
        Ok(s) => s,
        Err(message) => return Ok(Some((("CreateContainerConfigError", message), CONFIG_RETRY))),
    };
    let mut config = container_config(pod, c, attempt, env, mounts);
    config.resources = linux_resources(pod, c, &ctx.allocatable);
    config.security = security;
    let id = match ctx.runtime.create_container(&sandbox.id, &config, sandbox_config).await {
        Ok(id) => id,
        Err(e) => return Ok(Some((("CreateContainerError", e.to_string()), CONFIG_RETRY))),
    };
    if let Err(e) = ctx.runtime.start_container(&id).await {
        // The runtime keeps the container as exited (128, StartError); the next sync restarts
        // it under the crash-loop back-off.
        return Ok(Some((("RunContainerError", e.to_string()), CONFIG_RETRY)));
    }
    if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        let target = Target {
            pod_uid: pod_uid(pod).to_string(),
            container_id: id.clone(),
            pod_ip: sandbox.ip.clone(),
            container: c.clone(),
        };
        if let Err(why) = run_hook(ctx, &target, hook, grace_of(pod)).await {
            // As kubelet does: the container is killed, and restarted under its policy.
            tracing::info!(container = %c.name, reason = %why, "postStart hook failed; stopping the container");
            ctx.runtime.stop_container(&id, Duration::ZERO).await.context("StopContainer")?;
            return Ok(Some((("PostStartHookError", why), CONFIG_RETRY)));
        }
    }
    Ok(None)
}

/// Runs a lifecycle hook (postStart, preStop) within `limit`: a command, an HTTP GET, a TCP
/// connection or a sleep.
async fn run_hook<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    target: &Target,
    hook: &LifecycleHandler,
    limit: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    let action = k8s_openapi::api::core::v1::Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        ..Default::default()
    };
    match tokio::time::timeout(limit, crate::prober::probe_once(&*ctx.runtime, target, &action, limit)).await {
        Ok(r) => r,
        Err(_) => Err(format!("did not finish within {limit:?}")),
    }
}

/// The grace period a deletion of the pod gives its containers.
pub fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    Duration::from_secs(secs.max(0) as u64)
}

/// Stops a container within `grace`: its preStop hook first (its time counts against the
/// grace period), then SIGTERM, then SIGKILL when the rest of the grace period is over.
async fn stop_container<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    pod: &Pod,
    c: &Container,
    id: &str,
    grace: Duration,
) -> anyhow::Result<()> {
    let began = Instant::now();
    if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let target =
            Target { pod_uid: pod_uid(pod).to_string(), container_id: id.to_string(), pod_ip, container: c.clone() };
        if let Err(why) = run_hook(ctx, &target, hook, grace).await {
            tracing::info!(container = %c.name, reason = %why, "preStop hook failed");
        }
    }
    ctx.prober.forget(&[id.to_string()]);
    let left = grace.saturating_sub(began.elapsed());
    ctx.runtime.stop_container(id, left).await.with_context(|| format!("StopContainer {}", c.name))?;
    Ok(())
}

/// Makes the container's image present as its pull policy says, with the pod's pull secrets.
/// A failed pull backs off per image (kubelet's: 10 s doubling to 5 min).
async fn pull<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    pod: &Pod,
    c: &Container,
) -> anyhow::Result<Option<(Waiting, Duration)>> {
    let image = c.image.as_deref().unwrap_or("");
    if image.is_empty() {
        return Ok(Some((("InvalidImageName", format!("container {} names no image", c.name)), CONFIG_RETRY)));
    }
    let present = ctx.runtime.image_status(image).await.context("ImageStatus")?.is_some();
    match (podspec::pull_policy(c), present) {
        ("Never", false) => {
            let message = format!("Container image \"{image}\" is not present with pull policy of Never");
            return Ok(Some((("ErrImageNeverPull", message), CONFIG_RETRY)));
        }
        ("Always", _) | (_, false) => {}
        _ => return Ok(None),
    }
    let key = (pod_uid(pod).to_string(), format!("pull/{image}"));
    if let Some(wait) = ctx.backing_off(&key) {
        return Ok(Some((("ImagePullBackOff", format!("Back-off pulling image \"{image}\"")), wait)));
    }
    let credentials =
        podspec::pull_credentials(&ctx.client, pod, image).await.context("reading the pod's imagePullSecrets")?;
    let mut tries: Vec<Option<&crate::runtime::AuthConfig>> = credentials.iter().map(Some).collect();
    if tries.is_empty() {
        tries.push(None);
    }
    let mut last = String::new();
    for auth in tries {
        match ctx.runtime.pull_image(image, auth).await {
            Ok(_) => {
                ctx.succeeded(&key);
                return Ok(None);
            }
            Err(e) => last = e.to_string(),
        }
    }
    let wait = ctx.failed(key);
    Ok(Some((("ErrImagePull", format!("failed to pull image \"{image}\": {last}")), wait)))
}

/// Restarts an exited container unless it is backing off; otherwise says why it waits and for
/// how long. The dead instance before the one that just exited is removed, as kubelet keeps one.
async fn restart<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    uid: &str,
    sandbox: &PodSandboxStatus,
    sandbox_config: &PodSandboxConfig,
    volumes: &PodVolumes,
    pod: &Pod,
    c: &Container,
    exited: &ContainerStatus,
) -> anyhow::Result<Option<(Waiting, Duration)>> {
    let key = (uid.to_string(), c.name.clone());
    // A container that never started (StartError) ran for no time.
    let ran_for = if exited.started_at > 0 {
        Duration::from_nanos((exited.finished_at - exited.started_at).max(0) as u64)
    } else {
        Duration::ZERO
    };
    if let Some(wait) = ctx.backing_off(&key) {
        return Ok(Some((("CrashLoopBackOff", backoff_message(c, pod, wait)), wait)));
    }
    if ran_for >= RESTART_BACKOFF_RESET {
        ctx.succeeded(&key);
    }
    ctx.failed(key);
    for old in ctx.runtime.list_containers(Some(&sandbox.id)).await? {
        if old.metadata.name == c.name && old.metadata.attempt < exited.metadata.attempt {
            ctx.runtime.remove_container(&old.id).await?;
        }
    }
    start(ctx, sandbox, sandbox_config, volumes, pod, c, exited.metadata.attempt + 1).await
}

/// Stops every container of the pod at once (each within `grace`, after its preStop hook when
/// the pod is known) and removes its sandboxes and logs.
pub async fn kill_pod<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    uid: &str,
    pod: Option<&Pod>,
    grace: Duration,
) -> anyhow::Result<()> {
    for s in ctx.runtime.pod_sandboxes(uid).await? {
        let containers = ctx.runtime.list_containers(Some(&s.id)).await?;
        ctx.prober.forget(&containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
        let stops = containers.iter().filter(|c| c.state == ContainerState::Running).map(|c| async move {
            let spec = pod.and_then(|p| p.spec.as_ref()).and_then(|s| {
                s.init_containers.iter().flatten().chain(s.containers.iter()).find(|x| x.name == c.metadata.name)
            });
            match (pod, spec) {
                (Some(pod), Some(spec)) => stop_container(ctx, pod, spec, &c.id, grace).await,
                _ => ctx
                    .runtime
                    .stop_container(&c.id, grace)
                    .await
                    .with_context(|| format!("StopContainer {}", c.metadata.name)),
            }
        });
        for r in futures::future::join_all(stops).await {
            r?;
        }
        remove_sandbox(ctx, &s.id).await?;
    }
    if let Some(root) = &ctx.pods_dir {
        volumes::tear_down(root, uid).with_context(|| format!("removing the volumes of pod {uid}"))?;
        ctx.tokens.forget_pod(uid);
        crate::cgroups::remove_pod(&ctx.cgroup_root, uid)?;
    }
    if let Some(root) = &ctx.pod_log_root {
        let suffix = format!("_{uid}");
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(&suffix) {
                std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Stops what still runs of a finished pod, keeping its containers (and logs).
async fn stop_pod<R: RuntimeService + ImageService>(ctx: &NodeContext<R>, uid: &str) -> anyhow::Result<()> {
    for s in ctx.runtime.pod_sandboxes(uid).await? {
        for c in ctx.runtime.list_containers(Some(&s.id)).await? {
            if c.state == ContainerState::Running {
                ctx.runtime
                    .stop_container(&c.id, Duration::ZERO)
                    .await
                    .with_context(|| format!("StopContainer {}", c.metadata.name))?;
            }
        }
        if s.state == SandboxState::Ready {
            ctx.runtime.stop_pod_sandbox(&s.id).await.context("StopPodSandbox")?;
        }
    }
    Ok(())
}

async fn remove_sandbox<R: RuntimeService + ImageService>(ctx: &NodeContext<R>, id: &str) -> anyhow::Result<()> {
    ctx.runtime.stop_pod_sandbox(id).await.context("StopPodSandbox")?;
    ctx.runtime.remove_pod_sandbox(id).await.context("RemovePodSandbox")?;
    Ok(())
}

/// The final delete: grace period 0 and the uid as precondition, so that a new pod of the same
/// name is never deleted by mistake. A pod already gone is fine.
async fn delete_for_good<R: RuntimeService + ImageService>(ctx: &NodeContext<R>, pod: &Pod) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(pod.metadata.name.as_deref().unwrap_or(""), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e).context("deleting the pod"),
    }
}

fn sandbox_config<R: RuntimeService + ImageService>(ctx: &NodeContext<R>, pod: &Pod) -> PodSandboxConfig {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod_uid(pod).to_string();
    let spec = pod.spec.as_ref();
    let mut labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_POD_UID.into(), uid.clone());
    labels.insert(LABEL_POD_NAME.into(), name.clone());
    labels.insert(LABEL_POD_NAMESPACE.into(), namespace.clone());
    PodSandboxConfig {
        hostname: spec.and_then(|s| s.hostname.clone()).unwrap_or_else(|| name.clone()),
        log_directory: ctx.log_directory(pod).map(|d| d.display().to_string()).unwrap_or_default(),
        cgroup_parent: if ctx.pods_dir.is_some() {
            crate::cgroups::pod_parent(&ctx.cgroup_root, &uid)
        } else {
            String::new()
        },
        host_network: spec.and_then(|s| s.host_network) == Some(true),
        host_pid: spec.and_then(|s| s.host_pid) == Some(true),
        host_ipc: spec.and_then(|s| s.host_ipc) == Some(true),
        share_process_namespace: spec.and_then(|s| s.share_process_namespace) == Some(true),
        privileged: spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
            .any(|c| c.security_context.as_ref().and_then(|sc| sc.privileged) == Some(true)),
        port_mappings: spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| PortMapping {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                container_port: p.container_port,
                host_port: p.host_port.unwrap_or_default(),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect(),
        // Runtimes that run no processes have no resolver to configure.
        dns: ctx.host_dns.as_ref().map(|host| crate::dns::pod_dns(pod, ctx.cluster_dns.as_ref(), host)),
        metadata: SandboxMetadata { name, uid, namespace, attempt: 0 },
        labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
    }
}

fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    envs: Vec<(String, String)>,
    mounts: Vec<crate::runtime::Mount>,
) -> ContainerConfig {
    // Command and arguments may refer to the environment: `$(VAR)`.
    let lookup = |n: &str| envs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let expanded = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| podspec::expand(s, &lookup)).collect()
    };
    let (command, args) = (expanded(&c.command), expanded(&c.args));
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_POD_UID.to_string(), pod_uid(pod).to_string());
    labels.insert(LABEL_CONTAINER_NAME.to_string(), c.name.clone());
    ContainerConfig {
        metadata: ContainerMetadata { name: c.name.clone(), attempt },
        image: c.image.clone().unwrap_or_default(),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        labels,
        annotations: BTreeMap::new(),
        log_path: format!("{}/{attempt}.log", c.name),
        mounts,
        resources: Default::default(),
        security: Default::default(),
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        tty: c.tty == Some(true),
    }
}

/// The container's cgroup settings from its requests and limits, as kubelet computes them: CPU
/// shares from the request (at least 2), a CFS quota from the limit, the memory limit, and an
/// OOM score by the pod's QoS class.
fn linux_resources(pod: &Pod, c: &Container, allocatable: &BTreeMap<String, Quantity>) -> LinuxResources {
    let res = c.resources.as_ref();
    let get = |which: Option<&BTreeMap<String, Quantity>>, name: &str, unit: u64| {
        which.and_then(|m| m.get(name)).and_then(|q| crate::machine::parse_quantity(&q.0, unit).ok())
    };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let cpu_limit = get(limits, "cpu", 1000);
    let cpu_request = get(requests, "cpu", 1000).or(cpu_limit).unwrap_or(0);
    let memory_limit = get(limits, "memory", 1);
    let memory_request = get(requests, "memory", 1).or(memory_limit).unwrap_or(0);
    let capacity = get(Some(allocatable), "memory", 1).unwrap_or(1).max(1);
    let oom_score_adj = match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("Guaranteed") => -997,
        Some("BestEffort") | None => 1000,
        _ => (1000 - (1000 * memory_request / capacity) as i64).clamp(2, 999),
    };
    LinuxResources {
        cpu_shares: ((cpu_request * 1024 / 1000) as i64).max(2),
        cpu_period: if cpu_limit.is_some() { CFS_PERIOD_US } else { 0 },
        cpu_quota: cpu_limit.map(|m| ((m as i64) * CFS_PERIOD_US / 1000).max(1000)).unwrap_or(0),
        memory_limit_in_bytes: memory_limit.unwrap_or(0) as i64,
        oom_score_adj,
    }
}

/// How the container's process runs, from the pod's and the container's securityContext (the
/// container's wins).
fn security_context(pod: &Pod, c: &Container) -> Result<SecurityContext, String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let run_as_user = sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user));
    let non_root = sc.and_then(|s| s.run_as_non_root).or(pod_sc.and_then(|s| s.run_as_non_root)) == Some(true);
    // Keelson's images name no user: without runAsUser, a container runs as root.
    if non_root && run_as_user.unwrap_or(0) == 0 {
        let pod_name = format!(
            "{}_{}({})",
            pod.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod_uid(pod)
        );
        return Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod_name}\", container: {})",
            c.name
        ));
    }
    let mut groups: Vec<i64> = pod_sc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(fs_group);
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    Ok(SecurityContext {
        privileged: sc.and_then(|s| s.privileged) == Some(true),
        run_as_user,
        run_as_group: sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|s| s.run_as_group)),
        supplemental_groups: groups,
        readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    })
}

/// A CRI time (nanoseconds) as the API shows it: whole seconds.
fn time(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_second(nanos / 1_000_000_000).ok().map(Time)
}

fn now() -> Time {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()))
}

fn api_container_status(
    scheme: &str,
    prober: &Prober,
    c: &Container,
    instances: &[&ContainerStatus],
    waiting: Option<&Waiting>,
) -> ApiStatus {
    let mut sorted: Vec<&ContainerStatus> = instances.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.metadata.attempt));
    let state_of = |s: &ContainerStatus| -> ApiState {
        match s.state {
            ContainerState::Running => ApiState {
                running: Some(ContainerStateRunning { started_at: time(s.started_at) }),
                ..Default::default()
            },
            ContainerState::Exited => ApiState {
                terminated: Some(ContainerStateTerminated {
                    container_id: Some(format!("{scheme}://{}", s.id)),
                    exit_code: s.exit_code,
                    reason: Some(if s.reason.is_empty() {
                        if s.exit_code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        }
                    } else {
                        s.reason.clone()
                    }),
                    message: (!s.message.is_empty()).then(|| s.message.clone()),
                    started_at: time(s.started_at),
                    finished_at: time(s.finished_at),
                    signal: None,
                }),
                ..Default::default()
            },
            ContainerState::Created | ContainerState::Unknown => ApiState {
                waiting: Some(ContainerStateWaiting { reason: Some("ContainerCreating".into()), message: None }),
                ..Default::default()
            },
        }
    };
    let latest = sorted.first().copied();
    let mut state = match latest {
        Some(s) => state_of(s),
        None => ApiState {
            waiting: Some(ContainerStateWaiting { reason: Some("ContainerCreating".into()), message: None }),
            ..Default::default()
        },
    };
    let mut last_state = sorted.get(1).map(|s| state_of(s)).filter(|s| s.terminated.is_some());
    if let Some((reason, message)) = waiting {
        // Backing off: the exited instance becomes the last state.
        last_state = latest.map(state_of).filter(|s| s.terminated.is_some()).or(last_state);
        state = ApiState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.to_string()), message: Some(message.clone()) }),
            ..Default::default()
        };
    }
    let running = state.running.is_some();
    ApiStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|s| s.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|s| format!("{scheme}://{}", s.id)),
        ready: running && latest.is_some_and(|s| prober.ready(&s.id, c)),
        started: Some(running && latest.is_some_and(|s| prober.started(&s.id, c))),
        restart_count: latest.map(|s| s.metadata.attempt as i32).unwrap_or(0),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..Default::default()
    }
}

/// Kubernetes' pod phase from its containers (kubelet's getPhase).
fn phase(restart_policy: &str, statuses: &[ApiStatus], init_done: bool, init_failed: bool) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let st = s.state.as_ref();
        if st.is_some_and(|st| st.running.is_some()) {
            running += 1;
        } else if let Some(t) = st.and_then(|st| st.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().is_some_and(|l| l.terminated.is_some()) {
            // Waiting to restart after having run.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        };
    }
    "Pending"
}

fn pod_status<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    pod: &Pod,
    containers: &[ContainerStatus],
    waiting: &HashMap<String, Waiting>,
    init_done: bool,
    init_failed: bool,
    ip: Option<&str>,
) -> PodStatus {
    let spec = pod.spec.as_ref();
    let old = pod.status.clone().unwrap_or_default();
    let instances =
        |name: &str| -> Vec<&ContainerStatus> { containers.iter().filter(|c| c.metadata.name == name).collect() };
    let statuses = |list: &[Container]| -> Vec<ApiStatus> {
        list.iter()
            .map(|c| {
                api_container_status(ctx.container_id_scheme, &ctx.prober, c, &instances(&c.name), waiting.get(&c.name))
            })
            .collect()
    };
    let app = statuses(spec.map(|s| s.containers.as_slice()).unwrap_or(&[]));
    let init = statuses(spec.and_then(|s| s.init_containers.as_deref()).unwrap_or(&[]));
    let restart_policy = spec.and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let phase = phase(restart_policy, &app, init_done, init_failed);
    let all_ready = init_done && !app.is_empty() && app.iter().all(|s| s.ready);
    let truth = |b: bool| if b { "True" } else { "False" };
    let mut wanted = vec![
        ("PodReadyToStartContainers", truth(ip.is_some()), None),
        ("Initialized", truth(init_done), (!init_done).then_some("ContainersNotInitialized")),
        ("Ready", truth(all_ready), (!all_ready).then_some("ContainersNotReady")),
        ("ContainersReady", truth(all_ready), (!all_ready).then_some("ContainersNotReady")),
    ];
    if phase == "Succeeded" || phase == "Failed" {
        // A finished pod is not ready, whatever its last containers said.
        for w in wanted.iter_mut().skip(2) {
            *w = (w.0, "False", Some("PodCompleted"));
        }
    }
    let mut conditions: Vec<PodCondition> = old.conditions.clone().unwrap_or_default();
    for (kind, status, reason) in wanted {
        let message = match reason {
            Some("ContainersNotReady") => {
                let names: Vec<&str> = app.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
                Some(format!("containers with unready status: [{}]", names.join(" ")))
            }
            Some("ContainersNotInitialized") => {
                let completed = |s: &ApiStatus| {
                    s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)
                };
                let names: Vec<&str> = init.iter().filter(|s| !completed(s)).map(|s| s.name.as_str()).collect();
                Some(format!("containers with incomplete status: [{}]", names.join(" ")))
            }
            _ => None,
        };
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Some(now());
                }
                c.status = status.to_string();
                c.reason = reason.map(str::to_string);
                c.message = message;
            }
            None => conditions.push(PodCondition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: reason.map(str::to_string),
                message,
                last_transition_time: Some(now()),
                last_probe_time: None,
                observed_generation: None,
            }),
        }
    }
    let ips = ip.map(|ip| vec![PodIP { ip: ip.to_string() }]);
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(ctx.host_ip.clone()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP { ip: ctx.host_ip.clone() }]),
        pod_ip: ip.map(str::to_string),
        pod_ips: ips,
        start_time: old.start_time.clone().or_else(|| Some(now())),
        container_statuses: Some(app),
        init_container_statuses: (!init.is_empty()).then_some(init),
        ..old
    }
}

/// Writes the pod's status when it differs from what the API has (one merge patch).
async fn write_status<R: RuntimeService + ImageService>(
    ctx: &NodeContext<R>,
    pod: &Pod,
    status: PodStatus,
) -> anyhow::Result<()> {
    if pod.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    let patch = serde_json::json!({ "metadata": { "uid": pod.metadata.uid }, "status": status });
    match api
        .patch_status(pod.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: the watch brings the deletion.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        // Anything else (a conflict included) is tried again: a status never written would
        // leave the pod Pending for good.
        Err(e) => Err(e).context("writing pod status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(running: bool, exit: Option<i32>, last_exit: bool) -> ApiStatus {
        let terminated = |code| ApiState {
            terminated: Some(ContainerStateTerminated { exit_code: code, ..Default::default() }),
            ..Default::default()
        };
        let state = match (running, exit) {
            (true, _) => ApiState { running: Some(ContainerStateRunning::default()), ..Default::default() },
            (false, Some(code)) => terminated(code),
            (false, None) => ApiState { waiting: Some(ContainerStateWaiting::default()), ..Default::default() },
        };
        ApiStatus { state: Some(state), last_state: last_exit.then(|| terminated(1)), ..Default::default() }
    }

    #[test]
    fn phases_follow_kubelets_rules() {
        let cases: &[(&str, Vec<ApiStatus>, bool, bool, &str)] = &[
            ("Always", vec![st(false, None, false)], true, false, "Pending"),
            ("Always", vec![st(true, None, false), st(false, None, false)], true, false, "Pending"),
            ("Always", vec![st(true, None, false)], true, false, "Running"),
            ("Always", vec![st(false, Some(0), false)], true, false, "Running"),
            ("Always", vec![st(false, None, true)], true, false, "Running"),
            ("OnFailure", vec![st(false, Some(0), false)], true, false, "Succeeded"),
            ("OnFailure", vec![st(false, Some(1), false)], true, false, "Running"),
            ("Never", vec![st(false, Some(0), false), st(false, Some(0), false)], true, false, "Succeeded"),
            ("Never", vec![st(false, Some(0), false), st(false, Some(1), false)], true, false, "Failed"),
            ("Never", vec![st(true, None, false), st(false, Some(1), false)], true, false, "Running"),
            ("Always", vec![st(true, None, false)], false, false, "Pending"),
            ("Never", vec![], false, true, "Failed"),
        ];
        for (policy, statuses, init_done, init_failed, want) in cases {
            assert_eq!(phase(policy, statuses, *init_done, *init_failed), *want, "{policy} {statuses:?}");
        }
    }
}
