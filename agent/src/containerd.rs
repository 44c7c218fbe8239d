//! The agent's own containerd (as k3s runs one): a config written under the agent's data
//! directory (its own root, state and socket, the CNI paths, Keelson's sandbox image, registry
//! host configs), the daemon started and supervised as a child, and the sandbox image imported
//! into the namespace CRI uses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cri::CriRuntime;
use crate::image;

/// containerd's namespace for CRI's images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long containerd may take to answer CRI after it starts.
const START_WITHIN: Duration = Duration::from_secs(30);
const START_POLL: Duration = Duration::from_millis(50);
/// How long containerd has to exit after SIGTERM before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Where and how the agent's containerd runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything containerd keeps goes under here.
    pub dir: PathBuf,
    /// The `containerd` binary.
    pub binary: PathBuf,
    /// CNI plugins.
    pub cni_bin_dir: PathBuf,
    /// Registry host configs (`<host>/hosts.toml`), containerd's `config_path`.
    pub registry_config_dir: Option<PathBuf>,
}

impl Options {
    pub fn new(dir: &Path) -> Options {
        Options {
            dir: dir.to_path_buf(),
            binary: PathBuf::from("containerd"),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            registry_config_dir: None,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
}

/// Stops a containerd that an earlier run of the agent started over the same directory and left
/// behind (the agent was killed): two cannot share a root. Its containers' shims go on.
fn stop_leftover(o: &Options) -> anyhow::Result<()> {
    let Ok(pid) = std::fs::read_to_string(o.pid_path()) else { return Ok(()) };
    let Ok(pid) = pid.trim().parse::<u32>() else { return Ok(()) };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&o.config_path().display().to_string()) {
        return Ok(());
    }
    tracing::info!(pid, "stopping the containerd an earlier run left");
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + STOP_WITHIN;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() >= deadline {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            break;
        }
        std::thread::sleep(START_POLL);
    }
    Ok(())
}

/// Whether this process may lower its OOM score adjustment (CAP_SYS_RESOURCE). Where it may
/// not, containerd must be told (`restrict_oom_score_adj`), or every sandbox fails to start.
pub fn can_lower_oom_score() -> bool {
    let path = "/proc/self/oom_score_adj";
    let Ok(now) = std::fs::read_to_string(path) else { return false };
    let Ok(now) = now.trim().parse::<i32>() else { return false };
    if now <= -1000 {
        return true;
    }
    let lowered = std::fs::write(path, (now - 1).to_string()).is_ok();
    if lowered {
        // Raising it back is always allowed.
        if let Err(e) = std::fs::write(path, now.to_string()) {
            tracing::warn!(error = %e, "cannot restore the agent's OOM score adjustment");
        }
    }
    lowered
}

/// containerd's configuration (version 2, containerd 1.6 and later).
pub fn config(o: &Options, restrict_oom_score_adj: bool) -> String {
    let d = |p: PathBuf| p.display().to_string();
    let registry = o
        .registry_config_dir
        .as_ref()
        .map(|p| format!("\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {:?}\n", d(p.clone())))
        .unwrap_or_default();
    format!(
        r#"version = 2
root = {root:?}
state = {state:?}

[grpc]
  address = {socket:?}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause:?}
  restrict_oom_score_adj = {restrict}
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin:?}
    conf_dir = {cni_conf:?}
{registry}"#,
        root = d(o.dir.join("root")),
        state = d(o.dir.join("state")),
        socket = d(o.socket()),
        pause = image::PAUSE_IMAGE,
        restrict = restrict_oom_score_adj,
        cni_bin = d(o.cni_bin_dir.clone()),
        cni_conf = d(o.cni_conf_dir()),
    )
}

/// The pod network of one node: each sandbox gets a veth on `bridge` and an address from
/// `subnet` (host-local IPAM, its state under `ipam_dir`), the bridge being the pods' gateway;
/// `hostPort`s are forwarded by the portmap plugin.
pub fn bridge_network(bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "keelson",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                // The default route through the bridge: cluster IPs and other nodes' pods are
                // reached through the host.
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir.display().to_string()}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
    .to_string()
}

/// A running containerd, stopped (SIGTERM, then SIGKILL) when dropped or by `stop`.
pub struct Containerd {
    child: Option<tokio::process::Child>,
    options: Options,
}

impl Containerd {
    /// Writes the config, starts containerd, waits until it answers CRI, and imports the
    /// sandbox image.
    pub async fn start(options: Options, cni_network: &str) -> anyhow::Result<(Containerd, CriRuntime)> {
        std::fs::create_dir_all(options.cni_conf_dir())
            .with_context(|| format!("creating {}", options.cni_conf_dir().display()))?;
        std::fs::write(options.cni_conf_dir().join("10-keelson.conflist"), cni_network)
            .context("writing the CNI config")?;
        let restrict = !can_lower_oom_score();
        if restrict {
            tracing::info!("this host refuses lower OOM scores; containerd will not ask for them");
        }
        std::fs::write(options.config_path(), config(&options, restrict)).context("writing containerd's config")?;
        stop_leftover(&options)?;
        let _ = std::fs::remove_file(options.socket());
        let log = std::fs::File::create(options.dir.join("containerd.log")).context("creating containerd's log")?;
        let child = tokio::process::Command::new(&options.binary)
            .arg("--config")
            .arg(options.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the agent, which stops the pods
            // first and containerd after them.
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!("starting {} (is containerd installed? scripts/setup installs it)", options.binary.display())
            })?;
        if let Some(pid) = child.id() {
            std::fs::write(options.pid_path(), pid.to_string()).context("writing containerd's pid file")?;
        }
        let mut c = Containerd { child: Some(child), options };
        let runtime = c.wait_ready().await?;
        c.import(&image::pause_archive()?).await.context("importing the sandbox image")?;
        Ok((c, runtime))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<CriRuntime> {
        let deadline = Instant::now() + START_WITHIN;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited ({status}); see {}", self.options.dir.join("containerd.log").display());
                }
            }
            if self.options.socket().exists() {
                match CriRuntime::connect(&self.options.socket()).await {
                    Ok(r) => match r.ready().await {
                        Ok(()) => return Ok(r),
                        Err(e) => last = format!("{e:#}"),
                    },
                    Err(e) => last = format!("{e:#}"),
                }
            }
            tokio::time::sleep(START_POLL).await;
        }
        bail!("containerd did not become ready within {START_WITHIN:?}: {last}")
    }

    /// Imports an OCI archive into CRI's namespace.
    pub async fn import(&self, archive: &[u8]) -> anyhow::Result<()> {
        let path = self.options.dir.join("import.tar");
        std::fs::write(&path, archive)?;
        let result = self.import_file(&path).await;
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Imports the OCI archive at `path` (with containerd's own client, `ctr`).
    pub async fn import_file(&self, path: &Path) -> anyhow::Result<()> {
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(self.options.socket())
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .arg(path)
            .output()
            .await
            .context("running ctr (it comes with containerd)")?;
        if !out.status.success() {
            bail!("importing {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Imports every OCI archive (`*.tar`) in `dir`, for clusters without a registry.
    pub async fn import_dir(&self, dir: &Path) -> anyhow::Result<usize> {
        let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        archives.sort();
        for a in &archives {
            self.import_file(a).await?;
            tracing::info!(archive = %a.display(), "image imported");
        }
        Ok(archives.len())
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Stops containerd (its containers' shims go on, as they do under any containerd restart).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        match tokio::time::timeout(STOP_WITHIN, child.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                child.kill().await?;
            }
        }
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
