//! The agent's endpoint (kubelet's port, 10250): containers' logs from CRI's log files, and
//! exec, attach and port-forward relayed to the runtime's streaming server. The API server
//! proxies `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` here; errors are
//! Kubernetes `Status` objects, which it passes on as they are.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::logs::{self, form_pairs, Joiner, LogOptions};
use crate::runtime::{ContainerState, ContainerStatus, PodSandboxStatus, RuntimeService, SandboxState, Streams};

/// Connections served at once.
const CONNECTIONS_MAX: usize = 1024;
/// How often a followed log is read again, and how many reads between checks that its
/// container still runs.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const FOLLOW_CHECKS_EVERY: u32 = 10;
/// Chunks of a followed log waiting for a slow client.
const FOLLOW_CHUNKS_QUEUED_MAX: usize = 16;

pub type Body = BoxBody<Bytes, Infallible>;

/// What the endpoint serves from: the node's runtime and where its pods' logs are.
pub struct NodeServer<R> {
    pub runtime: Arc<R>,
    pub pod_log_root: PathBuf,
}

/// A Kubernetes `Status` failure.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).boxed()
}

fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Serves `listener` until the task is dropped.
pub async fn serve<R: RuntimeService>(listener: TcpListener, node: Arc<NodeServer<R>>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the agent's endpoint cannot accept");
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(&node, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "a connection to the agent's endpoint ended");
            }
            drop(permit);
        });
    }
}

async fn handle<R: RuntimeService>(node: &NodeServer<R>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["healthz"]) => Response::new(full(Bytes::from_static(b"ok"))),
        (Method::GET, ["containerLogs", ns, pod, container]) => container_logs(node, ns, pod, container, &query).await,
        (Method::GET | Method::POST, ["exec", ns, pod, container]) => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            let args = form_pairs(&query);
            let cmd: Vec<String> = args.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
            if cmd.is_empty() {
                return bad_request("you must specify at least 1 command");
            }
            let c = match running_container(node, &ns, &pod, &container).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let url = node.runtime.exec(&c.id, &cmd, streams(&args)).await;
            relay_to(req, url).await
        }
        (Method::GET | Method::POST, ["attach", ns, pod, container]) => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            let c = match running_container(node, &ns, &pod, &container).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let url = node.runtime.attach(&c.id, streams(&form_pairs(&query))).await;
            relay_to(req, url).await
        }
        (Method::GET | Method::POST, ["portForward", ns, pod]) => {
            let sandbox = match sandbox_of(node, ns, pod).await {
                Ok(s) if s.state == SandboxState::Ready => s,
                Ok(_) => return bad_request(&format!("pod {pod} is not running")),
                Err(r) => return r,
            };
            let ports: Vec<i32> = form_pairs(&query)
                .into_iter()
                .filter(|(k, _)| k == "ports" || k == "port")
                .filter_map(|(_, v)| v.parse().ok())
                .collect();
            let url = node.runtime.port_forward(&sandbox.id, &ports).await;
            relay_to(req, url).await
        }
        _ => status(StatusCode::NOT_FOUND, "NotFound", &format!("{path} is not served here")),
    }
}

fn streams(args: &[(String, String)]) -> Streams {
    let on = |name: &str| args.iter().any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1" | ""));
    Streams { stdin: on("stdin"), stdout: on("stdout"), stderr: on("stderr"), tty: on("tty") }
}

async fn relay_to(req: Request<Incoming>, url: crate::runtime::Result<String>) -> Response<Body> {
    let url = match url {
        Ok(u) => u,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()),
    };
    let relayed = async {
        let (target, path) = crate::upgrade::split_url(&url)?;
        crate::upgrade::relay(req, &target, &path).await
    };
    match relayed.await {
        Ok(answer) => answer.map(full),
        Err(e) => status(StatusCode::BAD_GATEWAY, "InternalError", &format!("the runtime's streaming server: {e:#}")),
    }
}

/// The pod's sandbox: the newest, a ready one first.
async fn sandbox_of<R: RuntimeService>(
    node: &NodeServer<R>,
    ns: &str,
    pod: &str,
) -> Result<PodSandboxStatus, Response<Body>> {
    let list = node
        .runtime
        .list_pod_sandbox()
        .await
        .map_err(|e| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()))?;
    let mut ours: Vec<PodSandboxStatus> =
        list.into_iter().filter(|s| s.metadata.namespace == ns && s.metadata.name == pod).collect();
    ours.sort_by_key(|s| (s.state == SandboxState::Ready, s.created_at));
    ours.pop()
        .ok_or_else(|| status(StatusCode::NOT_FOUND, "NotFound", &format!("pod \"{pod}\" has no sandbox on this node")))
}

/// The instances of a pod's container, newest first.
async fn instances<R: RuntimeService>(
    node: &NodeServer<R>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<(PodSandboxStatus, Vec<ContainerStatus>), Response<Body>> {
    let sandbox = sandbox_of(node, ns, pod).await?;
    let list = node
        .runtime
        .list_containers(Some(&sandbox.id))
        .await
        .map_err(|e| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()))?;
    let mut mine: Vec<ContainerStatus> = list.into_iter().filter(|c| c.metadata.name == container).collect();
    mine.sort_by_key(|c| std::cmp::Reverse(c.metadata.attempt));
    Ok((sandbox, mine))
}

async fn running_container<R: RuntimeService>(
    node: &NodeServer<R>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<ContainerStatus, Response<Body>> {
    let (_, mine) = instances(node, ns, pod, container).await?;
    match mine.into_iter().next() {
        Some(c) if c.state == ContainerState::Running => Ok(c),
        Some(_) => Err(bad_request(&format!("container {container} is not running"))),
        None => Err(bad_request(&format!("container {container} not found in pod {pod}"))),
    }
}

async fn container_logs<R: RuntimeService>(
    node: &NodeServer<R>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let o = match LogOptions::parse(query, chrono::Utc::now()) {
        Ok(o) => o,
        Err(e) => return bad_request(&e),
    };
    let (sandbox, mine) = match instances(node, ns, pod, container).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let chosen = if o.previous {
        match mine.get(1) {
            Some(c) => c.clone(),
            None => {
                return bad_request(&format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ))
            }
        }
    } else {
        match mine.first() {
            Some(c) => c.clone(),
            None => {
                return bad_request(&format!(
                    "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                ))
            }
        }
    };
    let path = node
        .pod_log_root
        .join(format!("{ns}_{pod}_{}", sandbox.metadata.uid))
        .join(container)
        .join(format!("{}.log", chosen.metadata.attempt));
    let data = match tokio::fs::read(&path).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("reading {}: {e}", path.display()),
            )
        }
    };
    let mut joiner = Joiner::default();
    let (first, used) = logs::read_all(&data, &o, &mut joiner);
    let ok = |body: Body| {
        Response::builder()
            .header("content-type", "text/plain")
            .body(body)
            .unwrap_or_else(|_| Response::new(full(Bytes::new())))
    };
    let following =
        o.follow && chosen.state == ContainerState::Running && o.limit_bytes.is_none_or(|l| first.len() < l);
    if !following {
        return ok(full(Bytes::from(first)));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(FOLLOW_CHUNKS_QUEUED_MAX);
    let runtime = node.runtime.clone();
    let (id, timestamps) = (chosen.id.clone(), o.timestamps);
    let mut left = o.limit_bytes.map(|l| l - first.len());
    tokio::spawn(async move {
        if tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        let mut offset = used as u64;
        let mut polls = 0u32;
        let mut ended = false;
        loop {
            let more = read_from(&path, offset).await;
            let (recs, took) = logs::records(&more);
            offset += took as u64;
            let mut out = Vec::new();
            for r in recs {
                if let Some(line) = joiner.feed(r) {
                    logs::render(&line, timestamps, &mut out);
                }
            }
            if let Some(l) = left.as_mut() {
                out.truncate(*l);
                *l -= out.len();
            }
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if ended || left == Some(0) || tx.is_closed() {
                return;
            }
            polls += 1;
            if polls % FOLLOW_CHECKS_EVERY == 0 {
                // Once the container stops, what it wrote last is read once more, then the end.
                ended = !matches!(runtime.container_status(&id).await, Ok(s) if s.state == ContainerState::Running);
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    ok(StreamBody::new(stream).boxed())
}

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut f) = tokio::fs::File::open(path).await else { return Vec::new() };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf).await;
    buf
}
