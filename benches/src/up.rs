//! A `keelson up` cluster for the benchmarks that need real containers: started on a data
//! directory of its own with the example images, waited for until its node is Ready, and
//! stopped with Ctrl-C as a user stops it (pods, containerd and its service rules with it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::{call, wait_serving, Http};

pub struct UpCluster {
    pub child: Child,
    pub data: PathBuf,
    pub api: String,
    bridge: String,
    _root: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The keelson binary: `given`, else `keelson` next to the running benchmark.
pub fn keelson_binary(given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(std::env::current_exe()?.with_file_name("keelson")),
    }
}

impl UpCluster {
    /// Starts `keelson up` under `data_root` with pods in `cluster_cidr`, services in
    /// `service_cidr`, the pods' bridge `bridge` and the service proxy's table named after it.
    pub fn start(
        keelson: &Path,
        data_root: &Path,
        prefix: &str,
        cluster_cidr: &str,
        service_cidr: &str,
        bridge: &str,
    ) -> Result<UpCluster> {
        let root = tempfile::Builder::new().prefix(prefix).tempdir_in(data_root)?;
        let data = root.path().to_path_buf();
        let images = data.join("images");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example-images");
        let built = Command::new(&script)
            .arg(&images)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !built.success() {
            bail!("{} failed", script.display());
        }
        let (api_port, client_port, peer_port) = (free_port()?, free_port()?, free_port()?);
        let log = std::fs::File::create(data.join("up.log"))?;
        let child = Command::new(keelson)
            .args(["up", "--data-dir", &data.display().to_string(), "--api-listen", &format!("127.0.0.1:{api_port}")])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client_port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--cluster-cidr",
                cluster_cidr,
                "--service-cluster-ip-range",
                service_cidr,
                "--cni-bridge",
                bridge,
                "--proxy-table",
                bridge,
            ])
            .args(["--node-ip", "127.0.0.1", "--port", "0", "--image-dir", &images.display().to_string()])
            // Names outside the cluster are not asked for; the upstream is loopback's discard port.
            .args(["--cluster-dns-upstream", "127.0.0.1:9"])
            // KEELSON_BENCH_LOG sets the cluster's log filter (default: warnings).
            .env("KEELSON_LOG", std::env::var("KEELSON_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} up", keelson.display()))?;
        Ok(UpCluster { child, data, api: format!("https://127.0.0.1:{api_port}"), bridge: bridge.into(), _root: root })
    }

    /// A client of the API with the admin credentials `keelson up` writes, once it has.
    pub async fn http(&self, idle_per_host: usize, within: Duration) -> Result<Http> {
        let kubeconfig = crate::http::wait_kubeconfig(&self.data.join("kubeconfig.yaml"), within).await?;
        crate::http::client(idle_per_host, Some(&kubeconfig))
    }

    /// Waits until the API serves and the node is Ready.
    pub async fn wait_ready(&mut self, http: &Http, within: Duration) -> Result<()> {
        wait_serving(http, &[self.api.clone()], within).await?;
        let deadline = Instant::now() + within;
        loop {
            let nodes: serde_json::Value =
                serde_json::from_slice(&call(http, "GET", format!("{}/api/v1/nodes", self.api), "", vec![]).await?)?;
            let ready = nodes["items"].as_array().into_iter().flatten().any(|n| {
                n.pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            });
            if ready {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("keelson up exited ({status}); see {}", self.data.join("up.log").display());
            }
            if Instant::now() > deadline {
                bail!("the node is not Ready after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ctrl-C, then SIGKILL after `within`; the bridge is removed.
    pub fn stop(mut self, within: Duration) -> Result<()> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + within;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        Ok(())
    }
}

/// The network namespace (under /var/run/netns, where CNI puts pods') holding address `ip`.
pub fn pod_netns(ip: &str) -> Result<PathBuf> {
    let needle = format!(" {ip}/");
    for e in std::fs::read_dir("/var/run/netns").context("reading /var/run/netns")?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let out = Command::new("ip").args(["-n", &name, "-4", "-o", "addr"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return Ok(e.path());
        }
    }
    bail!("no network namespace holds {ip}")
}

/// Runs `work` on a runtime of its own in a thread that has entered the network namespace of
/// the pod at `ip`: its sockets are the pod's, its traffic leaves through the pod's interface.
pub fn in_pod<T: Send + 'static>(
    ip: &str,
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>> + Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(pod_netns(ip)?)?;
    std::thread::spawn(move || {
        // SAFETY: setns changes only this thread's network namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering the pod's network namespace: {}", std::io::Error::last_os_error());
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(work())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the pod's network namespace panicked"))?
}

/// Creates pod `pod` (a JSON object) in namespace `default` of the cluster at `api` and waits
/// until it runs; its address.
pub async fn run_pod(http: &Http, api: &str, pod: serde_json::Value, within: Duration) -> Result<String> {
    let name = pod.pointer("/metadata/name").and_then(|v| v.as_str()).context("the pod has no name")?.to_string();
    crate::http::call_json(http, "POST", format!("{api}/api/v1/namespaces/default/pods"), pod).await?;
    let deadline = Instant::now() + within;
    loop {
        let p = crate::http::call_json(
            http,
            "GET",
            format!("{api}/api/v1/namespaces/default/pods/{name}"),
            serde_json::Value::Null,
        )
        .await?;
        let running = p.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running");
        if let Some(ip) = p.pointer("/status/podIP").and_then(|v| v.as_str()).filter(|_| running) {
            return Ok(ip.to_string());
        }
        if Instant::now() > deadline {
            bail!("pod {name} is not Running after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
