//! Probes, as kubelet's prober runs them: one task per running container and probe (startup,
//! readiness, liveness), each waiting `initialDelaySeconds` and then probing every
//! `periodSeconds` within `timeoutSeconds` — a command through CRI's ExecSync, an HTTP GET, or a
//! TCP connection to the pod — and changing its result after `successThreshold` successes or
//! `failureThreshold` failures in a row. A change has the pod synced again, which reports
//! readiness, and restarts a container whose liveness failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::RuntimeService;

/// Kubernetes' defaults.
const PERIOD_SECONDS: i32 = 10;
const TIMEOUT_SECONDS: i32 = 1;
const FAILURE_THRESHOLD: i32 = 3;
/// The most of an HTTP answer read (its status line is all that counts).
const HTTP_ANSWER_BYTES_MAX: usize = 10 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// A probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not yet decided (a startup probe before its first success; readiness starts here too).
    Unknown,
    Passing,
    /// `failureThreshold` failures in a row.
    Failing,
}

#[derive(Debug, Clone)]
struct State {
    verdict: Verdict,
    /// Why it last failed.
    reason: String,
}

struct Worker {
    state: Arc<Mutex<State>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod to sync again (its uid), called when a probe's verdict changes.
pub type Kick = Arc<dyn Fn(&str) + Send + Sync>;

/// The probes of one node's containers, by container id.
#[derive(Default)]
pub struct Prober {
    workers: Mutex<HashMap<(String, Kind), Worker>>,
    kick: OnceLock<Kick>,
}

/// Where a probe of one container reaches it.
#[derive(Clone)]
pub struct Target {
    pub pod_uid: String,
    pub container_id: String,
    pub pod_ip: Option<String>,
    pub container: Container,
}

impl Prober {
    pub fn set_kick(&self, kick: Kick) {
        let _ = self.kick.set(kick);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Kind), Worker>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the probes of a running container that has none yet.
    pub fn ensure<R: RuntimeService>(&self, runtime: &Arc<R>, t: &Target) {
        for kind in [Kind::Startup, Kind::Readiness, Kind::Liveness] {
            let Some(probe) = kind.of(&t.container).cloned() else { continue };
            let key = (t.container_id.clone(), kind);
            let mut workers = self.lock();
            if workers.contains_key(&key) {
                continue;
            }
            // A container is alive until its liveness probe says otherwise.
            let first = if kind == Kind::Liveness { Verdict::Passing } else { Verdict::Unknown };
            let state = Arc::new(Mutex::new(State { verdict: first, reason: String::new() }));
            let kick = self.kick.get().cloned();
            let task = tokio::spawn(run(runtime.clone(), t.clone(), kind, probe, state.clone(), kick));
            workers.insert(key, Worker { state, task: task.abort_handle() });
        }
    }

    /// Stops the probes of the given containers (exited, or gone with their pod).
    pub fn forget(&self, container_ids: &[String]) {
        self.lock().retain(|(id, _), _| !container_ids.contains(id));
    }

    fn state(&self, id: &str, kind: Kind) -> Option<State> {
        self.lock().get(&(id.to_string(), kind)).map(|w| w.state.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Whether the container has started: its startup probe (if any) succeeded.
    pub fn started(&self, id: &str, c: &Container) -> bool {
        c.startup_probe.is_none() || self.state(id, Kind::Startup).is_some_and(|s| s.verdict == Verdict::Passing)
    }

    /// Whether the container is ready: started, and its readiness probe (if any) passing.
    pub fn ready(&self, id: &str, c: &Container) -> bool {
        self.started(id, c)
            && (c.readiness_probe.is_none()
                || self.state(id, Kind::Readiness).is_some_and(|s| s.verdict == Verdict::Passing))
    }

    /// Why the container must be restarted: its startup probe failed, or, once started, its
    /// liveness probe.
    pub fn unhealthy(&self, id: &str, c: &Container) -> Option<String> {
        let failing = |kind: Kind| {
            self.state(id, kind)
                .filter(|s| s.verdict == Verdict::Failing)
                .map(|s| format!("{} probe failed: {}", kind.name(), s.reason))
        };
        if c.startup_probe.is_some() {
            if let Some(why) = failing(Kind::Startup) {
                return Some(why);
            }
            if !self.started(id, c) {
                return None;
            }
        }
        failing(Kind::Liveness)
    }
}

async fn run<R: RuntimeService>(
    runtime: Arc<R>,
    t: Target,
    kind: Kind,
    probe: Probe,
    state: Arc<Mutex<State>>,
    kick: Option<Kick>,
) {
    let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.filter(|s| *s > 0).unwrap_or(default) as u64);
    let period = secs(probe.period_seconds, PERIOD_SECONDS);
    let timeout = secs(probe.timeout_seconds, TIMEOUT_SECONDS);
    let successes_needed = probe.success_threshold.filter(|s| *s > 0).unwrap_or(1);
    let failures_needed = probe.failure_threshold.filter(|s| *s > 0).unwrap_or(FAILURE_THRESHOLD);
    tokio::time::sleep(Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64)).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        let outcome = match tokio::time::timeout(timeout, probe_once(&*runtime, &t, &probe, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {timeout:?}")),
        };
        let next = match outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                (successes >= successes_needed).then_some(Verdict::Passing)
            }
            Err(why) => {
                failures += 1;
                successes = 0;
                state.lock().unwrap_or_else(|p| p.into_inner()).reason = why;
                (failures >= failures_needed).then_some(Verdict::Failing)
            }
        };
        let changed = next.is_some_and(|v| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            let changed = s.verdict != v;
            s.verdict = v;
            changed
        });
        if changed {
            tracing::debug!(container = %t.container.name, kind = kind.name(), verdict = ?next, "probe verdict changed");
            if let Some(k) = &kick {
                k(&t.pod_uid);
            }
            if kind == Kind::Startup && next == Some(Verdict::Passing) {
                // A startup probe ends with its first success.
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// The port a probe names: a number, or the name of one of the container's ports.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

pub(crate) async fn probe_once<R: RuntimeService>(
    runtime: &R,
    t: &Target,
    probe: &Probe,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let (code, out) = runtime.exec_sync(&t.container_id, &cmd, timeout).await.map_err(|e| e.to_string())?;
        return if code == 0 {
            Ok(())
        } else {
            Err(format!("command {cmd:?} exited with {code}: {}", String::from_utf8_lossy(&out).trim()))
        };
    }
    if !runtime.runs_processes() {
        // A hollow pod has no address to reach: its network probes pass.
        return Ok(());
    }
    if let Some(http) = &probe.http_get {
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| t.pod_ip.clone())
            .ok_or("the pod has no address yet")?;
        let port = port(&t.container, &http.port)?;
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            return Err("HTTPS probes are not supported".into());
        }
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("dial {host}:{port}: {e}"))?;
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        for h in http.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < HTTP_ANSWER_BYTES_MAX {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&answer);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or("")))?;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| t.pod_ip.clone())
            .ok_or("the pod has no address yet")?;
        let port = port(&t.container, &tcp.port)?;
        tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        return Ok(());
    }
    Err("the probe names no action (exec, httpGet or tcpSocket)".into())
}
