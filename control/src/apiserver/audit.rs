//! The audit log, as Kubernetes' (`--audit-policy-file`, `--audit-log-path`): a Policy
//! (`audit.k8s.io/v1`) decides per request the level — None, Metadata, Request, RequestResponse —
//! from its first matching rule, and which stages are recorded; each recorded stage is one
//! `audit.k8s.io/v1` Event as a JSON line, written by a thread of its own behind a bounded queue
//! (a request waits for room, as Kubernetes' blocking mode), to a file rotated by size.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::authn::User;
use super::authz::Attributes;

/// Events waiting for the writer at most; a request that finds the queue full waits for room.
const AUDIT_QUEUE_EVENTS_MAX: usize = 10_000;
/// The time in a rotated file's name, and its width.
const ROTATED_TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%S%.3f";
const ROTATED_TIME_CHARS: usize = 23;
/// Request bodies up to this size are read for the Request level.
const AUDITED_BODY_BYTES_MAX: usize = super::REQUEST_BODY_BYTES_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Policy {
    api_version: String,
    kind: String,
    /// Accepted, as Kubernetes' files carry it, and not used.
    #[serde(default, rename = "metadata")]
    _metadata: Option<Value>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// What the policy decided for one request.
struct Decision {
    level: Level,
    omit_stages: Vec<Stage>,
    omit_managed_fields: bool,
}

impl Policy {
    fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if policy.kind != "Policy" {
            return Err(format!("kind {:?}: expected Policy", policy.kind));
        }
        if policy.api_version != "audit.k8s.io/v1" {
            return Err(format!("apiVersion {:?}: expected audit.k8s.io/v1", policy.api_version));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            if !rule.non_resource_urls.is_empty() && (!rule.resources.is_empty() || !rule.namespaces.is_empty()) {
                return Err(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
            for (j, url) in rule.non_resource_urls.iter().enumerate() {
                if url.contains('*') && !(url.ends_with('*') && url.matches('*').count() == 1) {
                    return Err(format!(
                        "rules[{i}].nonResourceURLs[{j}]: Invalid value: {url:?}: '*' may only end a path"
                    ));
                }
            }
            for (j, gr) in rule.resources.iter().enumerate() {
                if !gr.resource_names.is_empty() && gr.resources.is_empty() {
                    return Err(format!(
                        "rules[{i}].resources[{j}].resourceNames: Invalid value: resourceNames need resources"
                    ));
                }
            }
        }
        Ok(policy)
    }

    fn decide(&self, user: &User, attrs: &Attributes) -> Decision {
        let Some(rule) = self.rules.iter().find(|r| r.matches(user, attrs)) else {
            return Decision { level: Level::None, omit_stages: Vec::new(), omit_managed_fields: false };
        };
        let mut omit_stages = self.omit_stages.clone();
        omit_stages.extend(rule.omit_stages.iter().copied());
        Decision {
            level: rule.level,
            omit_stages,
            omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
        }
    }
}

impl Rule {
    fn matches(&self, user: &User, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        match &attrs.resource {
            Some(r) => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
                    return false;
                }
                self.resources.is_empty() || self.resources.iter().any(|gr| gr.matches(r))
            }
            None => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self.non_resource_urls.iter().any(|u| match u.strip_suffix('*') {
                        Some(prefix) => attrs.path.starts_with(prefix),
                        None => *u == attrs.path,
                    })
            }
        }
    }
}

impl GroupResources {
    fn matches(&self, r: &super::authz::ResourceAttributes) -> bool {
        if self.group != r.group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        if !self.resource_names.is_empty() && !self.resource_names.contains(&r.name) {
            return false;
        }
        let combined =
            if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
        self.resources.iter().any(|res| {
            *res == combined
                || res == "*"
                || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                || res.strip_suffix("/*") == Some(r.resource.as_str())
        })
    }
}

/// Where the audit log goes and how it is rotated (Kubernetes' `--audit-log-*` flags).
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A file, or `-` for standard output.
    pub path: PathBuf,
    /// Rotate once the file would grow past this many bytes (0: never).
    pub max_size_bytes: u64,
    /// Rotated files kept at most (0: all).
    pub max_backups: usize,
    /// Rotated files older than this many days are removed (0: kept whatever their age).
    pub max_age_days: u64,
}

pub struct Auditor {
    policy: Policy,
    queue: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Auditor {
    /// Reads the policy and starts the writer.
    pub fn start(policy_file: &Path, log: LogOptions) -> Result<Arc<Auditor>, String> {
        let text = std::fs::read_to_string(policy_file).map_err(|e| format!("{}: {e}", policy_file.display()))?;
        let policy = Policy::parse(&text).map_err(|e| format!("{}: {e}", policy_file.display()))?;
        let mut writer = LogWriter::open(log)?;
        let (queue, mut events) = tokio::sync::mpsc::channel::<Vec<u8>>(AUDIT_QUEUE_EVENTS_MAX);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                while let Some(line) = events.blocking_recv() {
                    if let Err(e) = writer.write(&line) {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                }
            })
            .map_err(|e| format!("cannot start the audit log's writer: {e}"))?;
        Ok(Arc::new(Auditor { policy, queue }))
    }

    async fn emit(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).expect("a JSON value encodes");
        line.push(b'\n');
        if self.queue.send(line).await.is_err() {
            tracing::error!("the audit log's writer has stopped");
        }
    }

    /// Serves `req` through `handler`, recording the stages the policy asks for. `user` is who
    /// authenticated, `impersonated` whom they act as, `allowed` the authorizer's decision.
    pub async fn around<F, Fut>(
        self: &Arc<Self>,
        user: &User,
        impersonated: Option<&User>,
        attrs: &Attributes,
        allowed: bool,
        req: Request,
        handler: F,
    ) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let decision = self.policy.decide(user, attrs);
        if decision.level == Level::None {
            return handler(req).await;
        }
        let audit_id = uuid::Uuid::new_v4().to_string();
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": format!("{:?}", decision.level),
            "auditID": audit_id,
            "requestURI": req.uri().to_string(),
            "verb": attrs.verb,
            "user": user_json(user),
            "sourceIPs": req.extensions().get::<super::serving::Peer>().map(|p| vec![p.remote.ip().to_string()]).unwrap_or_default(),
            "requestReceivedTimestamp": now(),
            "annotations": {"authorization.k8s.io/decision": if allowed { "allow" } else { "forbid" }},
        });
        if let Some(agent) = req.headers().get("user-agent").and_then(|v| v.to_str().ok()) {
            event["userAgent"] = json!(agent);
        }
        if let Some(as_user) = impersonated {
            event["impersonatedUser"] = user_json(as_user);
        }
        if let Some(r) = &attrs.resource {
            let mut object = json!({"resource": r.resource, "apiVersion": api_version(&attrs.path)});
            for (field, value) in [("namespace", &r.namespace), ("name", &r.name), ("subresource", &r.subresource)] {
                if !value.is_empty() {
                    object[field] = json!(value);
                }
            }
            if !r.group.is_empty() {
                object["apiGroup"] = json!(r.group);
            }
            event["objectRef"] = object;
        }
        let recorded = |stage: Stage| !decision.omit_stages.contains(&stage);
        if recorded(Stage::RequestReceived) {
            self.emit(&staged(&event, Stage::RequestReceived)).await;
        }
        let mut req = req;
        if decision.level >= Level::Request && has_body(req.method()) {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, AUDITED_BODY_BYTES_MAX + 1).await else {
                return super::errors::ApiError::bad_request("the request body could not be read")
                    .into_response_with_id(&audit_id);
            };
            if let Some(mut object) = body_json(parts.headers.get("content-type"), &bytes) {
                if decision.omit_managed_fields {
                    omit_managed_fields(&mut object);
                }
                event["requestObject"] = object;
            }
            req = Request::from_parts(parts, Body::from(bytes));
        }
        let long_running = attrs.verb == "watch"
            || attrs
                .resource
                .as_ref()
                .is_some_and(|r| matches!(r.subresource.as_str(), "log" | "exec" | "attach" | "portforward" | "proxy"));
        let mut response = handler(req).await;
        if let Ok(v) = axum::http::HeaderValue::from_str(&audit_id) {
            response.headers_mut().insert("audit-id", v);
        }
        let code = response.status().as_u16();
        event["responseStatus"] = json!({"metadata": {}, "code": code});
        if long_running && code < 400 {
            if recorded(Stage::ResponseStarted) {
                self.emit(&staged(&event, Stage::ResponseStarted)).await;
            }
            if !recorded(Stage::ResponseComplete) {
                return response;
            }
            // Complete when the stream ends: when the server drops the body.
            let (parts, body) = response.into_parts();
            let done = Completion { auditor: self.clone(), event: Some(event) };
            return Response::from_parts(parts, super::holding(body, done));
        }
        // A create names its object only in the body: the answer's name completes the reference.
        let unnamed =
            event["objectRef"].is_object() && event["objectRef"].get("name").is_none() && attrs.verb == "create";
        let wants_body = decision.level == Level::RequestResponse || code >= 400 || unnamed;
        if wants_body {
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            if let Some(mut object) = body_json(parts.headers.get("content-type"), &bytes) {
                if object["kind"] == "Status" {
                    let mut status = json!({"metadata": {}, "code": code});
                    for f in ["status", "message", "reason", "details"] {
                        if let Some(v) = object.get(f) {
                            status[f] = v.clone();
                        }
                    }
                    event["responseStatus"] = status;
                } else if unnamed {
                    if let Some(name) = object.pointer("/metadata/name") {
                        event["objectRef"]["name"] = name.clone();
                    }
                }
                if decision.level == Level::RequestResponse {
                    if decision.omit_managed_fields {
                        omit_managed_fields(&mut object);
                    }
                    event["responseObject"] = object;
                }
            }
            response = Response::from_parts(parts, Body::from(bytes));
        }
        if recorded(Stage::ResponseComplete) {
            self.emit(&staged(&event, Stage::ResponseComplete)).await;
        }
        response
    }
}

impl super::errors::ApiError {
    fn into_response_with_id(self, audit_id: &str) -> Response {
        let mut response = axum::response::IntoResponse::into_response(self);
        if let Ok(v) = axum::http::HeaderValue::from_str(audit_id) {
            response.headers_mut().insert("audit-id", v);
        }
        response
    }
}

/// The ResponseComplete event of a long-running request, sent when its body goes.
struct Completion {
    auditor: Arc<Auditor>,
    event: Option<Value>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let Some(event) = self.event.take() else { return };
        let auditor = self.auditor.clone();
        let event = staged(&event, Stage::ResponseComplete);
        // Drop cannot wait for room in the queue; a task does (one per open stream at most).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { auditor.emit(&event).await });
        }
    }
}

fn staged(event: &Value, stage: Stage) -> Value {
    let mut e = event.clone();
    e["stage"] = json!(format!("{stage:?}"));
    e["stageTimestamp"] = json!(now());
    if stage == Stage::RequestReceived {
        if let Some(m) = e.as_object_mut() {
            m.remove("responseStatus");
        }
    }
    e
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn user_json(user: &User) -> Value {
    json!({"username": user.name, "groups": user.groups})
}

fn has_body(method: &axum::http::Method) -> bool {
    matches!(
        *method,
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH | axum::http::Method::DELETE
    )
}

/// The version a resource path names (`/api/v1/...`, `/apis/<group>/<version>/...`).
fn api_version(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["api", v, ..] => v.to_string(),
        ["apis", _, v, ..] => v.to_string(),
        _ => String::new(),
    }
}

/// A body as JSON: JSON itself, or Kubernetes' protobuf decoded; None for anything else.
fn body_json(content_type: Option<&axum::http::HeaderValue>, bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    let kind = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    if kind.starts_with(super::protobuf::CONTENT_TYPE) {
        return super::protobuf::to_json(bytes).ok();
    }
    if kind.contains("yaml") {
        return serde_norway::from_slice(bytes).ok();
    }
    serde_json::from_slice(bytes).ok()
}

fn omit_managed_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            omit_managed_fields(item);
        }
    }
}

/// The log file with size-based rotation: a full file is renamed `<name>-<UTC time>.<ext>`
/// (as Kubernetes' log backend names them) and a new one started; old ones beyond the count or
/// the age limit are removed.
struct LogWriter {
    options: LogOptions,
    file: Option<std::fs::File>,
    size: u64,
}

impl LogWriter {
    fn open(options: LogOptions) -> Result<LogWriter, String> {
        if options.path == Path::new("-") {
            return Ok(LogWriter { options, file: None, size: 0 });
        }
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let file = open_log(&options.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogWriter { options, file: Some(file), size })
    }

    fn write(&mut self, line: &[u8]) -> Result<(), String> {
        if self.file.is_none() {
            return std::io::stdout().write_all(line).map_err(|e| e.to_string());
        };
        let max = self.options.max_size_bytes;
        if max > 0 && self.size > 0 && self.size + line.len() as u64 > max {
            drop(self.file.take());
            self.rotate()?;
            self.file = Some(open_log(&self.options.path)?);
            self.size = 0;
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(line).map_err(|e| format!("{}: {e}", self.options.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn parts(&self) -> (PathBuf, String, String) {
        let path = &self.options.path;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        (dir, stem, ext)
    }

    fn rotate(&mut self) -> Result<(), String> {
        let (dir, stem, ext) = self.parts();
        let time = chrono::Utc::now().format(ROTATED_TIME_FORMAT).to_string();
        let mut target = dir.join(format!("{stem}-{time}{ext}"));
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{stem}-{time}.{n}{ext}"));
            n += 1;
        }
        std::fs::rename(&self.options.path, &target).map_err(|e| format!("rotating {}: {e}", target.display()))?;
        self.remove_old(&dir, &stem, &ext);
        Ok(())
    }

    fn remove_old(&self, dir: &Path, stem: &str, ext: &str) {
        let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
            return;
        };
        // Sorted by the time in their names (fixed width), then by the counter a name made in
        // the same millisecond as another carries: the newest last.
        let mut backups: Vec<((String, u32), PathBuf, std::time::SystemTime)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let rest = name.strip_prefix(&format!("{stem}-"))?.strip_suffix(ext)?;
                let time = rest.get(..ROTATED_TIME_CHARS)?;
                chrono::NaiveDateTime::parse_from_str(time, ROTATED_TIME_FORMAT).ok()?;
                let counter = match &rest[ROTATED_TIME_CHARS..] {
                    "" => 0,
                    more => more.strip_prefix('.')?.parse().ok()?,
                };
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                Some(((time.to_string(), counter), e.path(), modified))
            })
            .collect();
        backups.sort();
        let age_limit = (self.options.max_age_days > 0)
            .then(|| std::time::SystemTime::now() - std::time::Duration::from_secs(self.options.max_age_days * 86_400));
        let excess = match self.options.max_backups {
            0 => 0,
            keep => backups.len().saturating_sub(keep),
        };
        for (i, (_, path, modified)) in backups.iter().enumerate() {
            if i < excess || age_limit.is_some_and(|limit| *modified < limit) {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an old audit log");
                }
            }
        }
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn policy(rules: &str) -> Policy {
        Policy::parse(&format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n{rules}"
        ))
        .unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides_the_level() {
        let p = policy(
            "- level: None\n  users: [system:kube-scheduler]\n\
             - level: None\n  nonResourceURLs: [/healthz*, /version]\n\
             - level: RequestResponse\n  resources: [{group: '', resources: [configmaps]}]\n\
             - level: Metadata\n  resources: [{group: '', resources: [secrets, '*/status']}]\n\
             - level: Request\n  verbs: [create]\n  namespaces: [team]\n\
             - level: Metadata\n  omitStages: [ResponseStarted]\n",
        );
        let admin = user("system:admin", &["system:masters"]);
        let level = |u: &User, method: Method, path: &str| p.decide(u, &Attributes::of(&method, path, false)).level;
        assert_eq!(level(&user("system:kube-scheduler", &[]), Method::GET, "/api/v1/pods"), Level::None);
        assert_eq!(level(&admin, Method::GET, "/healthz/etcd"), Level::None);
        assert_eq!(level(&admin, Method::GET, "/metrics"), Level::Metadata);
        assert_eq!(level(&admin, Method::POST, "/api/v1/namespaces/a/configmaps"), Level::RequestResponse);
        assert_eq!(level(&admin, Method::GET, "/api/v1/namespaces/a/secrets/s"), Level::Metadata);
        assert_eq!(level(&admin, Method::PUT, "/api/v1/namespaces/a/pods/p/status"), Level::Metadata);
        assert_eq!(level(&admin, Method::POST, "/api/v1/namespaces/team/pods"), Level::Request);
        assert_eq!(level(&admin, Method::POST, "/api/v1/namespaces/other/pods"), Level::Metadata);
        let d = p.decide(&admin, &Attributes::of(&Method::GET, "/api/v1/pods", false));
        assert_eq!(d.omit_stages, [Stage::RequestReceived, Stage::ResponseStarted]);
        // No rule matching: nothing recorded.
        assert_eq!(
            policy("- level: Metadata\n  verbs: [delete]\n")
                .decide(&admin, &Attributes::of(&Method::GET, "/api", false))
                .level,
            Level::None
        );
    }

    #[test]
    fn group_resources_match_subresources_and_names_as_kubernetes_does() {
        let p = policy(
            "- level: Request\n  resources: [{group: apps, resources: ['deployments/*']}]\n\
             - level: Metadata\n  resources: [{group: '', resources: [pods/log], resourceNames: [web]}]\n",
        );
        let admin = user("a", &[]);
        let level = |path: &str| p.decide(&admin, &Attributes::of(&Method::GET, path, false)).level;
        assert_eq!(level("/apis/apps/v1/namespaces/n/deployments/d/scale"), Level::Request);
        assert_eq!(level("/apis/apps/v1/namespaces/n/deployments/d"), Level::Request);
        assert_eq!(level("/api/v1/namespaces/n/pods/web/log"), Level::Metadata);
        assert_eq!(level("/api/v1/namespaces/n/pods/db/log"), Level::None);
        assert_eq!(level("/api/v1/namespaces/n/pods/web"), Level::None);
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, expected) in [
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Loud}]\n", "unknown variant"),
            ("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\n", "apiVersion"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: None, nonResourceURLs: [/x], namespaces: [a]}]\n", "both"),
            ("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: None, nonResourceURLs: ['/a*b']}]\n", "may only end"),
        ] {
            let err = Policy::parse(text).err().unwrap();
            assert!(err.contains(expected), "{err} does not say {expected}");
        }
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let options = LogOptions { path: path.clone(), max_size_bytes: 100, max_backups: 2, max_age_days: 0 };
        let mut w = LogWriter::open(options).unwrap();
        let line = [b'x'; 39].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        for _ in 0..12 {
            w.write(&line).unwrap();
        }
        // 12 lines of 40 bytes, two per file: the live file holds two, two backups remain.
        assert_eq!(std::fs::read(&path).unwrap().len(), 80);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[..2].iter().all(|n| n.starts_with("audit-") && n.ends_with(".log")), "{names:?}");
        for n in &names {
            assert_eq!(std::fs::read(dir.path().join(n)).unwrap().len(), 80, "{n}");
        }
    }
}
