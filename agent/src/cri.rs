//! The runtime that speaks CRI (`runtime.v1`) to containerd over its unix socket: the same
//! `RuntimeService` the hollow runtime implements, so the pod lifecycle above it is one code path.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::runtime::{
    AuthConfig, ContainerConfig, ContainerEvent, ContainerMetadata, ContainerState, ContainerStatus, Image,
    ImageService, PodSandboxConfig, PodSandboxStatus, Result, RuntimeError, RuntimeService, SandboxMetadata,
    SandboxState, Streams, VersionInfo,
};

/// The longest one CRI call may take (image pulls aside).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest an image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct CriRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// What a container's status told that its list entry does not, kept while it cannot change
    /// (the start time of a running container; everything of an exited one), so that a list
    /// costs one call rather than one per container.
    known: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, ContainerStatus>>>,
}

fn failed(what: &str, s: tonic::Status) -> RuntimeError {
    if s.code() == tonic::Code::NotFound {
        return RuntimeError::NotFound { kind: "object", id: format!("{what}: {}", s.message()) };
    }
    RuntimeError::Failed(format!("{what}: {:?}: {}", s.code(), s.message()))
}

fn map(m: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn sandbox_metadata(m: Option<cri::PodSandboxMetadata>) -> SandboxMetadata {
    let m = m.unwrap_or_default();
    SandboxMetadata { name: m.name, uid: m.uid, namespace: m.namespace, attempt: m.attempt }
}

fn sandbox_state(s: i32) -> SandboxState {
    if s == cri::PodSandboxState::SandboxReady as i32 {
        SandboxState::Ready
    } else {
        SandboxState::NotReady
    }
}

fn container_state(s: i32) -> ContainerState {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn sandbox_config(c: &PodSandboxConfig) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: c.metadata.name.clone(),
            uid: c.metadata.uid.clone(),
            namespace: c.metadata.namespace.clone(),
            attempt: c.metadata.attempt,
        }),
        hostname: c.hostname.clone(),
        dns_config: c.dns.as_ref().map(|d| cri::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        log_directory: c.log_directory.clone(),
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: c.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                privileged: c.privileged,
                namespace_options: Some(namespaces(c)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        port_mappings: c
            .port_mappings
            .iter()
            .map(|p| cri::PortMapping {
                protocol: match p.protocol.as_str() {
                    "UDP" => cri::Protocol::Udp as i32,
                    "SCTP" => cri::Protocol::Sctp as i32,
                    _ => cri::Protocol::Tcp as i32,
                },
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The namespaces of a pod's sandbox and containers: the pod's own network and IPC, a process
/// namespace per container (Kubernetes' default) — or the node's, as the pod asks.
fn namespaces(s: &PodSandboxConfig) -> cri::NamespaceOption {
    let mode = |host: bool, own: cri::NamespaceMode| if host { cri::NamespaceMode::Node as i32 } else { own as i32 };
    cri::NamespaceOption {
        network: mode(s.host_network, cri::NamespaceMode::Pod),
        pid: mode(
            s.host_pid,
            if s.share_process_namespace { cri::NamespaceMode::Pod } else { cri::NamespaceMode::Container },
        ),
        ipc: mode(s.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

fn linux_config(c: &ContainerConfig, sandbox: &PodSandboxConfig) -> cri::LinuxContainerConfig {
    let r = &c.resources;
    let s = &c.security;
    cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: r.cpu_shares,
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            oom_score_adj: r.oom_score_adj,
            ..Default::default()
        }),
        security_context: Some(cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: s.add_capabilities.clone(),
                drop_capabilities: s.drop_capabilities.clone(),
                ..Default::default()
            }),
            privileged: s.privileged,
            run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
            run_as_group: s.run_as_group.map(|value| cri::Int64Value { value }),
            readonly_rootfs: s.readonly_rootfs,
            supplemental_groups: s.supplemental_groups.clone(),
            no_new_privs: s.no_new_privs,
            namespace_options: Some(namespaces(sandbox)),
            ..Default::default()
        }),
    }
}

impl CriRuntime {
    /// A client of the CRI server at `socket` (connects lazily; see `ready`).
    pub async fn connect(socket: &Path) -> anyhow::Result<CriRuntime> {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]")?
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }))
            .await?;
        Ok(CriRuntime {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            known: Default::default(),
        })
    }

    /// Resolves once the runtime reports itself and its network ready (CRI's Status).
    pub async fn ready(&self) -> anyhow::Result<()> {
        let status = self.runtime.clone().status(cri::StatusRequest { verbose: false }).await?.into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let not_ready: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} ({}: {})", c.r#type, c.reason, c.message))
            .collect();
        if conditions.is_empty() || !not_ready.is_empty() {
            anyhow::bail!("runtime not ready: {}", not_ready.join(", "));
        }
        Ok(())
    }

    /// The status of container `id`, which belongs to sandbox `pod_sandbox_id`.
    async fn status_in(&self, id: &str, pod_sandbox_id: String) -> Result<ContainerStatus> {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        let r =
            self.runtime.clone().container_status(req).await.map_err(|s| failed("ContainerStatus", s))?.into_inner();
        let s = r.status.ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.to_string() })?;
        let m = s.metadata.unwrap_or_default();
        Ok(ContainerStatus {
            id: s.id,
            pod_sandbox_id,
            metadata: ContainerMetadata { name: m.name, attempt: m.attempt },
            state: container_state(s.state),
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            exit_code: s.exit_code,
            image: s.image.map(|i| i.image).unwrap_or_default(),
            image_ref: s.image_ref,
            reason: s.reason,
            message: s.message,
        })
    }

    async fn sandboxes(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<PodSandboxStatus>> {
        let r = self
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
            .await
            .map_err(|s| failed("ListPodSandbox", s))?;
        Ok(r.into_inner()
            .items
            .into_iter()
            .map(|s| PodSandboxStatus {
                id: s.id,
                metadata: sandbox_metadata(s.metadata),
                state: sandbox_state(s.state),
                created_at: s.created_at,
                ip: None,
            })
            .collect())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, ContainerStatus>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sandbox_of(&self, id: &str) -> Result<String> {
        let filter = cri::ContainerFilter { id: id.to_string(), ..Default::default() };
        let r = self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(|s| failed("ListContainers", s))?;
        r.into_inner()
            .containers
            .into_iter()
            .next()
            .map(|c| c.pod_sandbox_id)
            .ok_or_else(|| RuntimeError::NotFound { kind: "container", id: id.to_string() })
    }
}

impl RuntimeService for CriRuntime {
    async fn version(&self) -> Result<VersionInfo> {
        let r = self
            .runtime
            .clone()
            .version(cri::VersionRequest { version: "v1".into() })
            .await
            .map_err(|s| failed("Version", s))?
            .into_inner();
        Ok(VersionInfo {
            runtime_name: r.runtime_name,
            runtime_version: r.runtime_version,
            runtime_api_version: r.runtime_api_version,
        })
    }

    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String> {
        let req = cri::RunPodSandboxRequest { config: Some(sandbox_config(config)), runtime_handler: String::new() };
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(req)
            .await
            .map_err(|s| failed("RunPodSandbox", s))?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.to_string() })
            .await
            .map_err(|s| failed("StopPodSandbox", s))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() })
            .await
            .map_err(|s| failed("RemovePodSandbox", s))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false };
        let r =
            self.runtime.clone().pod_sandbox_status(req).await.map_err(|s| failed("PodSandboxStatus", s))?.into_inner();
        let s = r.status.ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.to_string() })?;
        let ip = s.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
        Ok(PodSandboxStatus {
            id: s.id,
            metadata: sandbox_metadata(s.metadata),
            state: sandbox_state(s.state),
            created_at: s.created_at,
            ip,
        })
    }

    async fn list_pod_sandbox(&self) -> Result<Vec<PodSandboxStatus>> {
        self.sandboxes(None).await
    }

    async fn pod_sandboxes(&self, uid: &str) -> Result<Vec<PodSandboxStatus>> {
        let mut labels = std::collections::HashMap::new();
        labels.insert(crate::pods::LABEL_POD_UID.to_string(), uid.to_string());
        let filter = cri::PodSandboxFilter { label_selector: labels, ..Default::default() };
        Ok(self.sandboxes(Some(filter)).await?.into_iter().filter(|s| s.metadata.uid == uid).collect())
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String> {
        let c = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: config.metadata.name.clone(),
                attempt: config.metadata.attempt,
            }),
            image: Some(cri::ImageSpec { image: config.image.clone(), ..Default::default() }),
            command: config.command.clone(),
            args: config.args.clone(),
            working_dir: config.working_dir.clone(),
            envs: config.envs.iter().map(|(k, v)| cri::KeyValue { key: k.clone(), value: v.clone() }).collect(),
            labels: map(&config.labels),
            annotations: map(&config.annotations),
            log_path: config.log_path.clone(),
            mounts: config
                .mounts
                .iter()
                .map(|m| cri::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    ..Default::default()
                })
                .collect(),
            linux: Some(linux_config(config, sandbox)),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(c),
            sandbox_config: Some(sandbox_config(sandbox)),
        };
        Ok(self
            .runtime
            .clone()
            .create_container(req)
            .await
            .map_err(|s| failed("CreateContainer", s))?
            .into_inner()
            .container_id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .start_container(cri::StartContainerRequest { container_id: id.to_string() })
            .await
            .map_err(|s| failed("StartContainer", s))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut req = tonic::Request::new(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout.as_secs() as i64,
        });
        // The call lasts as long as the grace period, and then some.
        req.set_timeout(timeout + CALL_TIMEOUT);
        self.runtime.clone().stop_container(req).await.map_err(|s| failed("StopContainer", s))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.runtime
            .clone()
            .remove_container(cri::RemoveContainerRequest { container_id: id.to_string() })
            .await
            .map_err(|s| failed("RemoveContainer", s))?;
        self.known().remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        // CRI's status does not name the sandbox; the list does.
        let pod_sandbox_id = self.sandbox_of(id).await?;
        self.status_in(id, pod_sandbox_id).await
    }

    async fn list_containers(&self, pod_sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>> {
        let filter =
            pod_sandbox_id.map(|id| cri::ContainerFilter { pod_sandbox_id: id.to_string(), ..Default::default() });
        let r = self
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest { filter })
            .await
            .map_err(|s| failed("ListContainers", s))?;
        let listed = r.into_inner().containers;
        let mut out = Vec::with_capacity(listed.len());
        for c in listed {
            let state = container_state(c.state);
            let cached = self.known().get(&c.id).filter(|k| k.state == state).cloned();
            if let Some(s) = cached {
                out.push(s);
                continue;
            }
            // The list carries no start or exit details; the container's status does.
            match self.status_in(&c.id, c.pod_sandbox_id).await {
                Ok(s) => {
                    if matches!(s.state, ContainerState::Running | ContainerState::Exited) && s.state == state {
                        self.known().insert(s.id.clone(), s.clone());
                    }
                    out.push(s)
                }
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if pod_sandbox_id.is_none() {
            // A whole list: what is not in it is gone.
            let ids: std::collections::HashSet<&str> = out.iter().map(|c| c.id.as_str()).collect();
            self.known().retain(|id, _| ids.contains(id.as_str()));
        }
        Ok(out)
    }

    fn container_events(&self) -> Option<tokio::sync::mpsc::Receiver<ContainerEvent>> {
        // containerd 1.6 has no GetContainerEvents: the agent relists.
        None
    }

    async fn exec(&self, container_id: &str, cmd: &[String], s: Streams) -> Result<String> {
        let req = cri::ExecRequest {
            container_id: container_id.to_string(),
            cmd: cmd.to_vec(),
            tty: s.tty,
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
        };
        Ok(self.runtime.clone().exec(req).await.map_err(|e| failed("Exec", e))?.into_inner().url)
    }

    async fn attach(&self, container_id: &str, s: Streams) -> Result<String> {
        let req = cri::AttachRequest {
            container_id: container_id.to_string(),
            stdin: s.stdin,
            tty: s.tty,
            stdout: s.stdout,
            stderr: s.stderr,
        };
        Ok(self.runtime.clone().attach(req).await.map_err(|e| failed("Attach", e))?.into_inner().url)
    }

    async fn exec_sync(&self, container_id: &str, cmd: &[String], timeout: Duration) -> Result<(i32, Vec<u8>)> {
        let mut req = tonic::Request::new(cri::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.to_vec(),
            timeout: timeout.as_secs().max(1) as i64,
        });
        req.set_timeout(timeout + CALL_TIMEOUT);
        let r = self.runtime.clone().exec_sync(req).await.map_err(|e| failed("ExecSync", e))?.into_inner();
        let mut out = r.stdout;
        out.extend_from_slice(&r.stderr);
        Ok((r.exit_code, out))
    }

    async fn port_forward(&self, pod_sandbox_id: &str, ports: &[i32]) -> Result<String> {
        let req = cri::PortForwardRequest { pod_sandbox_id: pod_sandbox_id.to_string(), port: ports.to_vec() };
        Ok(self.runtime.clone().port_forward(req).await.map_err(|e| failed("PortForward", e))?.into_inner().url)
    }
}

impl ImageService for CriRuntime {
    async fn image_status(&self, image: &str) -> Result<Option<String>> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.to_string(), ..Default::default() }),
            verbose: false,
        };
        let r = self.images.clone().image_status(req).await.map_err(|s| failed("ImageStatus", s))?.into_inner();
        Ok(r.image.map(|i| i.id))
    }

    async fn pull_image(&self, image: &str, auth: Option<&AuthConfig>) -> Result<String> {
        let auth = auth.map(|a| cri::AuthConfig {
            username: a.username.clone(),
            password: a.password.clone(),
            auth: a.auth.clone(),
            // containerd parses a server address as a URL and checks it against the image's
            // host; `host:port` is no URL, and the credentials were already matched by host.
            server_address: if a.server_address.contains("://") { a.server_address.clone() } else { String::new() },
            ..Default::default()
        });
        let image = Some(cri::ImageSpec { image: image.to_string(), ..Default::default() });
        let mut req = tonic::Request::new(cri::PullImageRequest { image, auth, sandbox_config: None });
        req.set_timeout(PULL_TIMEOUT);
        let r = self.images.clone().pull_image(req).await.map_err(|s| failed("PullImage", s))?.into_inner();
        Ok(r.image_ref)
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        let r = self
            .images
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .map_err(|s| failed("ListImages", s))?;
        Ok(r.into_inner()
            .images
            .into_iter()
            .map(|i| Image { id: i.id, repo_tags: i.repo_tags, repo_digests: i.repo_digests, size_bytes: i.size })
            .collect())
    }
}
