//! Kubernetes API processes for tests: `keelson server` (a one-member store with the API beside
//! it) and `keelson apiserver` (an API replica over given store endpoints), each killed on drop,
//! with its log printed when the test fails, and a kube-rs client for it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

use super::{free_ports, log_tail, wait_until, within};

/// How long an API process may take to serve the default namespace (debug build, tests alongside).
pub const API_READY_WITHIN: Duration = Duration::from_secs(30);

pub struct ApiProcess {
    child: Child,
    log: PathBuf,
    /// The kubeconfig the process wrote: the admin's credentials for `keelson server`'s TLS.
    kubeconfig: PathBuf,
    config: kube::Config,
    pub api_port: u16,
    /// The store's client port, for `keelson server`.
    pub store_port: Option<u16>,
    /// The command line, for restarts.
    args: Vec<std::ffi::OsString>,
    _dir: tempfile::TempDir,
}

impl ApiProcess {
    /// `keelson server`: a one-member store and an API replica.
    pub async fn server() -> ApiProcess {
        Self::server_with(&[]).await
    }

    /// `keelson server` with more flags; the API alone, without its scheduler, controller
    /// manager and cluster DNS (tests of the API bind pods and make dependents themselves, and
    /// count on nothing else writing).
    pub async fn server_with(args: &[&str]) -> ApiProcess {
        let mut all = vec!["--disable", "scheduler,controller-manager,cluster-dns"];
        all.extend_from_slice(args);
        Self::server_full(&all).await
    }

    /// `keelson server` whose controller manager runs only the namespace controller (which
    /// empties and finalizes deleted namespaces) and the garbage collector (which finishes
    /// foreground deletions), without a scheduler.
    pub async fn server_with_namespaces() -> ApiProcess {
        Self::server_full(&["--disable", "scheduler,cluster-dns", "--controllers", "namespace,garbagecollector"]).await
    }

    /// `keelson server` with every component it runs by default, and more flags.
    pub async fn server_full(args: &[&str]) -> ApiProcess {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let (client, peer, api) = (ports[0], ports[1], ports[2]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelson"));
        cmd.arg("server")
            .args(["--name", "s1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .arg("--write-kubeconfig")
            .arg(dir.path().join("kubeconfig.yaml"))
            .args(args);
        Self::spawn(cmd, dir, api, Some(client)).await
    }

    /// `keelson apiserver` over `endpoints` (client URLs of a Keelson store or of etcd).
    pub async fn apiserver(endpoints: &[String]) -> ApiProcess {
        Self::apiserver_with(endpoints, &[]).await
    }

    /// `keelson apiserver` over `endpoints`, with more flags.
    pub async fn apiserver_with(endpoints: &[String], args: &[&str]) -> ApiProcess {
        let dir = tempfile::tempdir().unwrap();
        let api = free_ports(1)[0];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelson"));
        cmd.arg("apiserver")
            .args(["--store-endpoints", &endpoints.join(",")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .arg("--write-kubeconfig")
            .arg(dir.path().join("kubeconfig.yaml"))
            .args(args);
        Self::spawn(cmd, dir, api, None).await
    }

    async fn spawn(cmd: Command, dir: tempfile::TempDir, api_port: u16, store_port: Option<u16>) -> ApiProcess {
        let log = dir.path().join("api.log");
        // The kubeconfig is written once the store answers, just before the API serves.
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let args = cmd.get_args().map(|a| a.to_os_string()).collect();
        let (child, config) = Self::launch(cmd, &log, &kubeconfig).await;
        ApiProcess { child, log, kubeconfig, config, api_port, store_port, args, _dir: dir }
    }

    async fn launch(mut cmd: Command, log: &std::path::Path, kubeconfig: &std::path::Path) -> (Child, kube::Config) {
        let _ = std::fs::remove_file(kubeconfig);
        let output = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(output).spawn().expect("the keelson binary starts");
        let config = wait_until("the API process writes its kubeconfig", within(API_READY_WITHIN), || {
            let (kubeconfig, log) = (kubeconfig.to_path_buf(), log.to_path_buf());
            async move {
                let Ok(text) = std::fs::read_to_string(&kubeconfig) else {
                    return Err(format!("no {} yet; log: {}", kubeconfig.display(), log_tail(&log, 5)));
                };
                super::kube_config_of(&text)
            }
        })
        .await;
        let client = Client::try_from(config.clone()).expect("a client from the API's kubeconfig");
        wait_until("the API serves the default namespace", within(API_READY_WITHIN), || {
            let api: Api<Namespace> = Api::all(client.clone());
            async move { api.get("default").await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .await;
        (child, config)
    }

    /// Kills the process and starts it again with the same command line (and data).
    #[allow(dead_code)]
    pub async fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelson"));
        cmd.args(&self.args);
        let (child, config) = Self::launch(cmd, &self.log, &self.kubeconfig).await;
        (self.child, self.config) = (child, config);
    }

    /// The API's URL: https for `keelson server`, http for a `keelson apiserver` without
    /// certificates.
    pub fn url(&self) -> String {
        self.config.cluster_url.to_string().trim_end_matches('/').to_string()
    }

    /// The kubeconfig the process wrote, with the admin's credentials where there are any: what
    /// components (`--kubeconfig`) and kubectl reach it with.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Where `keelson server` keeps the cluster's CAs.
    #[allow(dead_code)]
    pub fn cert_dir(&self) -> PathBuf {
        self._dir.path().join("data").join("tls")
    }

    /// [`ApiProcess::kubeconfig`] as an argument.
    pub fn kubeconfig_arg(&self) -> String {
        self.kubeconfig.display().to_string()
    }

    /// The client configuration [`ApiProcess::client`] is made from.
    #[allow(dead_code)]
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a client from the API's kubeconfig")
    }

    /// SIGTERM, then the exit status, waiting up to `within`.
    pub fn terminate(&mut self, within_: Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        wait_exit(&mut self.child, within_)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("===== API process log {} =====\n{}", self.log.display(), log_tail(&self.log, 60));
        }
    }
}

/// One request as `config` makes it, sent once (kube-rs's client retries 429, 503 and 504 by
/// itself unless told not to): the status code and the JSON body, or why nothing came back.
#[allow(dead_code)]
pub async fn send_once(
    config: kube::Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    send_with_headers(config, method, path, body).await.map(|(code, body, _)| (code, body))
}

/// [`send_once`], with the response's headers.
#[allow(dead_code)]
pub async fn send_with_headers(
    config: kube::Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value, http::HeaderMap), String> {
    use http_body_util::BodyExt;
    let mut config = config;
    config.default_retry = false;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let response = client.send(req).await.map_err(|e| format!("{e:?}"))?;
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null), headers))
}

/// The value of the counter `series` (name and labels, as /metrics prints them).
#[allow(dead_code)]
pub async fn metric(client: &Client, series: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{text}"))
}

/// Another `keelson` process beside an API (an agent, a scheduler replica), killed on drop, with
/// its log printed when the test fails.
pub struct Component {
    child: Child,
    pub log: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl Component {
    /// Runs `keelson <args>`.
    pub fn spawn(name: &str, args: &[&str]) -> Component {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the keelson binary starts");
        Component { child, log, name: name.to_string(), _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit on its own; its status, or None after `within_`.
    pub fn wait_exit(&mut self, within_: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, within_)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("===== {} log {} =====\n{}", self.name, self.log.display(), log_tail(&self.log, 40));
        }
    }
}

/// A request as any client sends it: the answer's body, or the `Status` of a failure.
pub async fn call(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Box<kube::core::Status>> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(status)) => Err(status),
        Err(other) => panic!("{method} {path}: {other:?}"),
    }
}

/// The child's exit status once it exits, or None after `within_`.
fn wait_exit(child: &mut Child, within_: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within_;
    while std::time::Instant::now() < deadline {
        if let Some(exit) = child.try_wait().expect("the child can be polled") {
            return Some(exit);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
