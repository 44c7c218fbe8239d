//! The Kubernetes-compatible API server: a stateless replica serving the REST API over the store's
//! etcd v3 API. Objects live as JSON under `/registry/<resource>/<namespace>/<name>`; an object's
//! resourceVersion is its key's mod revision, a list's the revision it was read at.

pub mod alloc;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod encryption;
pub mod endpoints_reconciler;
pub mod errors;
mod form;
pub mod kinds;
pub mod limits;
pub mod managed;
pub mod node_authz;
pub mod objects;
pub mod openapi;
mod patch;
pub mod podsecurity;
mod protobuf;
mod proxy;
pub mod resources;
pub mod schema;
pub mod serving;
pub mod store;
pub mod table;
pub mod tokens;
mod verbs;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use errors::ApiError;
use resources::Resource;
use store::Store;

/// Largest request body accepted, in bytes (Kubernetes' limit is 3 MiB as well).
pub const REQUEST_BODY_BYTES_MAX: usize = 3 * 1024 * 1024;

/// How long one store lease serves the events written after its grant, in milliseconds
/// (Kubernetes' lease reuse window).
const EVENT_LEASE_REUSE_MS: u64 = 60_000;

/// Where `kubectl auth whoami` asks who it is.
const SELF_SUBJECT_REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
/// Where `kubectl auth can-i` asks what it may do, and `kubectl auth can-i --list` all it may do.
const SELF_SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
const SELF_SUBJECT_RULES_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews";
const SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// The reviews a user asks about itself.
enum Review {
    Access,
    Rules,
    /// Another subject's access, cluster-wide or in the namespace given.
    Subject(Option<String>),
}

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub struct Api {
    pub store: Store,
    /// How long events live (`--event-ttl`).
    pub event_ttl: std::time::Duration,
    /// The lease events are written with, and when it was granted: one lease serves every
    /// event written within `EVENT_LEASE_REUSE_MS` of its grant, as Kubernetes' lease manager
    /// shares them.
    event_lease: tokio::sync::Mutex<Option<(i64, tokio::time::Instant)>>,
    /// Where services' cluster IPs and node ports come from.
    pub ranges: alloc::Ranges,
    requests: HashMap<&'static str, AtomicU64>,
    /// Watches served from a watch cache, and from the store itself.
    pub watches_from_cache: AtomicU64,
    pub watches_from_store: AtomicU64,
    /// Lists served from a watch cache, and from the store.
    pub lists_from_cache: AtomicU64,
    pub lists_from_store: AtomicU64,
    /// Whether the store's progress notifications may be trusted to mean a watch cache is
    /// current (see `store::progress_notifications_ordered`); consistent reads come from the
    /// store otherwise. Unknown until the store has been asked.
    pub progress_ordered: std::sync::atomic::AtomicBool,
    /// Watch caches by resource plural, each started by its first use.
    caches: std::sync::Mutex<HashMap<&'static str, Arc<cache::WatchCache>>>,
    /// How requests say who they come from.
    pub authentication: authn::Authentication,
    /// The RBAC objects as the authorizer last indexed them.
    pub rbac: std::sync::Mutex<Option<Arc<authz::Index>>>,
    /// The audit log, when a policy is given (set once, before serving).
    pub audit: std::sync::OnceLock<Arc<audit::Auditor>>,
    /// What issues and checks service-account tokens, when keys are given (set once, before
    /// serving).
    pub tokens: std::sync::OnceLock<tokens::TokenAuthority>,
    /// Seats for requests under way (set once, before serving; none: unlimited).
    pub limits: std::sync::OnceLock<limits::Limits>,
}

const VERBS: &[&str] =
    &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "discovery", "other"];

impl Api {
    pub fn new(
        store: Store,
        ranges: alloc::Ranges,
        event_ttl: std::time::Duration,
        authentication: authn::Authentication,
    ) -> Arc<Self> {
        let requests = VERBS.iter().map(|v| (*v, AtomicU64::new(0))).collect();
        Arc::new(Api {
            store,
            event_ttl,
            event_lease: tokio::sync::Mutex::new(None),
            ranges,
            requests,
            watches_from_cache: AtomicU64::new(0),
            watches_from_store: AtomicU64::new(0),
            lists_from_cache: AtomicU64::new(0),
            lists_from_store: AtomicU64::new(0),
            progress_ordered: std::sync::atomic::AtomicBool::new(false),
            caches: std::sync::Mutex::new(HashMap::new()),
            authentication,
            rbac: std::sync::Mutex::new(None),
            audit: std::sync::OnceLock::new(),
            tokens: std::sync::OnceLock::new(),
            limits: std::sync::OnceLock::new(),
        })
    }

    /// An object as the watch cache of its type has it, else as the store does (one created a
    /// moment ago may not be in the cache yet); None when neither has it.
    pub async fn current(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let key = res.key(ns, name);
        if let Some(Some(found)) = self.cache(res).get(&key) {
            return Ok(Some(found.full()));
        }
        let (kv, _) = self.store.get(key.as_bytes()).await?;
        kv.map(|kv| verbs::from_kv(&kv)).transpose()
    }

    /// The watch cache of `res`, started if this is its first use.
    pub fn cache(&self, res: &'static Resource) -> Arc<cache::WatchCache> {
        let mut caches = self.caches.lock().expect("not poisoned");
        caches.entry(res.plural).or_insert_with(|| cache::WatchCache::start(self.store.clone(), res)).clone()
    }

    fn count(&self, verb: &'static str) {
        if let Some(c) = self.requests.get(verb) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lease an object of a kind that expires is written with: one granted for the event
    /// TTL plus the reuse window, shared by every write within that window, so that each lives
    /// at least the TTL and at most the TTL plus the window.
    pub async fn expiry_lease(&self) -> Result<i64, ApiError> {
        let reuse = std::time::Duration::from_millis(EVENT_LEASE_REUSE_MS).min(self.event_ttl);
        let mut lease = self.event_lease.lock().await;
        if let Some((id, granted)) = *lease {
            if granted.elapsed() < reuse {
                return Ok(id);
            }
        }
        let ttl = (self.event_ttl + reuse).as_secs().max(1) as i64;
        let id = self.store.grant_lease(ttl).await?;
        *lease = Some((id, tokio::time::Instant::now()));
        Ok(id)
    }

    /// Forgets the shared lease (the store no longer knows it).
    pub async fn forget_expiry_lease(&self) {
        *self.event_lease.lock().await = None;
    }

    /// Asks the store which version it runs, and decides from it whether consistent reads may
    /// come from the watch caches.
    pub async fn detect_store(&self) -> Result<(), ApiError> {
        let version = self.store.version().await?;
        let ordered = store::progress_notifications_ordered(&version);
        self.progress_ordered.store(ordered, Ordering::Relaxed);
        if ordered {
            tracing::info!(%version, "consistent reads are served from the watch caches");
        } else {
            tracing::warn!(%version, "this store's progress notifications may run ahead of its watch events \
                (etcd before 3.4.31 / 3.5.13): consistent reads go to the store");
        }
        Ok(())
    }

    /// Creates what every cluster has, unless it exists: the system namespaces and the built-in
    /// priority classes. Replicas starting together race to create them; the losers' creates
    /// answer AlreadyExists, which is as good as their own.
    pub async fn ensure_system_objects(&self) -> Result<(), ApiError> {
        let params = Params { user_agent: Some("kube-apiserver".into()), ..Params::default() };
        let namespaces = SYSTEM_NAMESPACES.iter().map(|ns| {
            (&kinds::namespace::RESOURCE, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        });
        let classes = kinds::priorityclass::BUILT_IN.iter().map(|c| (&kinds::priorityclass::RESOURCE, c.object()));
        let roles = authz::bootstrap::cluster_roles().into_iter().map(|r| (&kinds::rbac::CLUSTER_ROLES, r));
        let bindings =
            authz::bootstrap::cluster_role_bindings().into_iter().map(|b| (&kinds::rbac::CLUSTER_ROLE_BINDINGS, b));
        for (res, body) in namespaces.chain(classes).chain(roles).chain(bindings) {
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            match verbs::create(self, res, None, body, &params).await {
                Ok(_) => tracing::info!(kind = res.kind, name, "created"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The query parameters the verbs read, and the client's user agent (managers are named after
/// it when a request names none).
#[derive(Default, Debug)]
pub struct Params {
    pub map: HashMap<String, String>,
    pub user_agent: Option<String>,
}

impl Params {
    /// The field manager a write is recorded under.
    pub fn manager(&self) -> String {
        managed::manager_name(self.get("fieldManager"), self.user_agent.as_deref())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
}

/// Where a request points: a resource type, perhaps a namespace, an object and a subresource.
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

fn resolve(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let own = |s: &str| Some(s.to_string());
    let found = |plural: &str| resources::find(group, version, plural);
    let namespaced = rest.len() >= 3 && rest[0] == "namespaces" && found(rest[2]).is_some();
    let (namespace, rest) = if namespaced { (own(rest[1]), &rest[2..]) } else { (None, rest) };
    let resource = found(rest.first()?)?;
    if namespace.is_some() && !resource.namespaced {
        return None;
    }
    let (name, subresource) = match rest.len() {
        1 => (None, None),
        2 => (own(rest[1]), None),
        3 if resource.has(rest[2]) => (own(rest[1]), own(rest[2])),
        _ => return None,
    };
    Some(Target { resource, namespace, name, subresource })
}

/// `/api/v1/namespaces/<ns>/pods/<name>/<sub>` for a subresource a node serves.
fn node_subresource(method: &Method, path: &str) -> Option<(String, String, String)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] if proxy::is_node_subresource(sub) => {
            let allowed = *method == Method::GET || (*method == Method::POST && *sub != "log");
            allowed.then(|| (ns.to_string(), name.to_string(), sub.to_string()))
        }
        _ => None,
    }
}

pub fn router(api: Arc<Api>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(api)
}

async fn dispatch(State(api): State<Arc<Api>>, req: axum::extract::Request) -> Response {
    let user = match authn::credentials(api.authentication, &req) {
        authn::Credentials::Decided(decided) => decided,
        authn::Credentials::Token(token) => match tokens::authenticate(&api, &token).await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
            Err(e) => Err(e),
        },
    };
    let user = match user {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let authenticated = api.audit.get().map(|_| user.clone());
    let user = match authz::impersonate(&api, user, req.headers()).await {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let attributes = authz::Attributes::of(req.method(), req.uri().path(), watch);
    // Held until the answer is made (a stream's seat is given back at once: it holds none).
    let _seat = match api.limits.get() {
        Some(limits) => {
            let long_running = watch || node_subresource(req.method(), req.uri().path()).is_some();
            match limits.admit(&user, &attributes, long_running).await {
                Ok(seat) => seat,
                Err(e) => return shed(e),
            }
        }
        None => None,
    };
    let watch_seat = match (api.limits.get(), watch) {
        (Some(limits), true) => match limits.watch(&user) {
            Ok(seat) => seat,
            Err(e) => return shed(e),
        },
        _ => None,
    };
    let response = decide_and_serve(api, user, authenticated, attributes, req).await;
    match watch_seat {
        // The watch holds its seat as long as its stream is served.
        Some(seat) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, holding(body, seat))
        }
        None => response,
    }
}

/// A request refused under load: the 429, with when to try again.
fn shed(e: ApiError) -> Response {
    let mut refused = e.into_response();
    refused.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    refused
}

/// Authorizes the request, audits it when a policy says so, and serves it.
async fn decide_and_serve(
    api: Arc<Api>,
    user: authn::User,
    authenticated: Option<authn::User>,
    attributes: authz::Attributes,
    req: axum::extract::Request,
) -> Response {
    let decision = authz::authorize(&api, &user, &attributes).await;
    let (Some(auditor), Some(authenticated)) = (api.audit.get(), authenticated) else {
        return match decision {
            Ok(()) => authorized(api, user, &attributes, req).await,
            Err(e) => e.into_response(),
        };
    };
    let auditor = auditor.clone();
    let impersonated = (authenticated != user).then(|| user.clone());
    let allowed = decision.is_ok();
    auditor
        .around(&authenticated, impersonated.as_ref(), &attributes.clone(), allowed, req, move |req| async move {
            match decision {
                Ok(()) => authorized(api, user, &attributes, req).await,
                Err(e) => e.into_response(),
            }
        })
        .await
}

/// A request its user may make, served.
async fn authorized(
    api: Arc<Api>,
    user: authn::User,
    attributes: &authz::Attributes,
    req: axum::extract::Request,
) -> Response {
    let path = req.uri().path().trim_end_matches('/');
    if req.method() == Method::POST && path == SELF_SUBJECT_REVIEWS {
        api.count("create");
        return json_response(StatusCode::CREATED, &authn::self_subject_review(&user));
    }
    let review = match path {
        SELF_SUBJECT_ACCESS_REVIEWS if req.method() == Method::POST => Some(Review::Access),
        SELF_SUBJECT_RULES_REVIEWS if req.method() == Method::POST => Some(Review::Rules),
        SUBJECT_ACCESS_REVIEWS if req.method() == Method::POST => Some(Review::Subject(None)),
        _ if req.method() == Method::POST => path
            .strip_prefix("/apis/authorization.k8s.io/v1/namespaces/")
            .and_then(|rest| rest.strip_suffix("/localsubjectaccessreviews"))
            .filter(|ns| !ns.is_empty() && !ns.contains('/'))
            .map(|ns| Review::Subject(Some(ns.to_string()))),
        _ => None,
    };
    if let Some(review) = review {
        api.count("create");
        let content_type =
            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = match axum::body::to_bytes(req.into_body(), REQUEST_BODY_BYTES_MAX).await {
            Ok(b) => b,
            Err(_) => return ApiError::bad_request("the review is larger than 3 MiB").into_response(),
        };
        let body = if content_type.starts_with(protobuf::CONTENT_TYPE) {
            match protobuf::to_json(&body) {
                Ok(v) => v,
                Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
            }
        } else {
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => v,
                Err(e) => return ApiError::bad_request(format!("the review is not JSON: {e}")).into_response(),
            }
        };
        let answer = match review {
            Review::Access => authz::self_subject_access_review(&api, &user, &body).await,
            Review::Rules => authz::self_subject_rules_review(&api, &user, &body).await,
            Review::Subject(ns) => authz::subject_access_review(&api, ns.as_deref(), &body).await,
        };
        return match answer {
            Ok(answer) => json_response(StatusCode::CREATED, &answer),
            Err(e) => e.into_response(),
        };
    }
    // A pod's log, exec, attach and port-forward go to its node's agent, the request whole
    // (an upgrade needs the connection, not just the body).
    if let Some((ns, name, sub)) = node_subresource(req.method(), req.uri().path()) {
        api.count(if req.method() == Method::GET { "get" } else { "create" });
        return match proxy::serve(&api, req, &ns, &name, &sub).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let (parts, body) = req.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let body = match axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX + 1).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(413, "RequestEntityTooLarge", "the request body is larger than 3 MiB").into_response()
        }
    };
    if let Some(node) = node_authz::node_of(&user) {
        let object = if attributes.verb == "create" { parse_body(&headers, &body).ok() } else { None };
        if let Err(e) = node_authz::admit(&api, node, attributes, object.as_ref()).await {
            return e.into_response();
        }
    }
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let params = Params {
        map: axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default(),
        user_agent: headers.get("user-agent").and_then(|v| v.to_str().ok()).map(String::from),
    };
    let result = route(&api, &method, &segments, &headers, body, &params).await;
    match result {
        Ok(response) => response,
        Err(e) => {
            if e.code >= 500 {
                tracing::warn!(%method, path, code = e.code, message = %e.message, "request failed");
            }
            e.into_response()
        }
    }
}

/// A response body that keeps `held` until the body is dropped: what a stream holds while it
/// is served (a watch's seat, its audit completion).
pub fn holding<T: Send + Unpin + 'static>(inner: axum::body::Body, held: T) -> axum::body::Body {
    struct Holding<T> {
        inner: axum::body::Body,
        _held: T,
    }
    impl<T: Send + Unpin + 'static> http_body::Body for Holding<T> {
        type Data = Bytes;
        type Error = axum::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            http_body::Body::is_end_stream(&self.inner)
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::Body::size_hint(&self.inner)
        }
    }
    axum::body::Body::new(Holding { inner, _held: held })
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    // Encoded straight into bytes (`to_string` goes through the formatter, a third slower).
    let body = serde_json::to_vec(value).expect("a JSON value encodes");
    (code, [("content-type", "application/json")], body).into_response()
}

/// Aggregated discovery (`as=APIGroupDiscoveryList`), under the media type clients check for.
fn aggregated(doc: Value) -> Response {
    let media = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    (StatusCode::OK, [("content-type", media)], doc.to_string()).into_response()
}

fn plain(text: &'static str) -> Response {
    (StatusCode::OK, [("content-type", "text/plain; charset=utf-8")], text).into_response()
}

async fn route(
    api: &Arc<Api>,
    method: &Method,
    segments: &[&str],
    headers: &HeaderMap,
    body: Bytes,
    params: &Params,
) -> Result<Response, ApiError> {
    let discovery = |v: Value| {
        api.count("discovery");
        Ok(json_response(StatusCode::OK, &v))
    };
    match segments {
        [] => discovery(
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/metrics", "/version"]}),
        ),
        ["healthz" | "livez", ..] => Ok(plain("ok")),
        ["readyz", ..] => {
            // Ready when the store answers.
            api.store.get(b"/registry/namespaces/default").await?;
            Ok(plain("ok"))
        }
        ["version"] => discovery(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": concat!("v1.33.0-keelson-", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        })),
        ["metrics"] => Ok(metrics(api)),
        ["openapi", "v2"] => {
            api.count("discovery");
            let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
            if openapi::wants_protobuf(accept) {
                Ok((StatusCode::OK, [("content-type", "application/octet-stream")], openapi::v2_protobuf())
                    .into_response())
            } else {
                Ok(json_response(StatusCode::OK, &openapi::v2_json()))
            }
        }
        ["openapi", "v3"] => discovery(openapi::v3_root()),
        ["api"] if resources::wants_aggregated(headers) => Ok(aggregated(resources::aggregated_discovery(true))),
        ["apis"] if resources::wants_aggregated(headers) => Ok(aggregated(resources::aggregated_discovery(false))),
        ["api"] => discovery(resources::core_versions()),
        ["api", "v1"] => discovery(resources::resource_list("", "v1")),
        ["apis"] => discovery(resources::group_list()),
        ["apis", group] => match resources::group(group) {
            Some(doc) => discovery(doc),
            None => Err(ApiError::path_not_found(&segments.join("/"))),
        },
        ["apis", group, version] if resources::group_version_known(group, version) => {
            discovery(resources::resource_list(group, version))
        }
        ["api", "v1", rest @ ..] => {
            serve_resource(api, method, resolve("", "v1", rest), segments, headers, body, params).await
        }
        ["apis", group, version, rest @ ..] => {
            serve_resource(api, method, resolve(group, version, rest), segments, headers, body, params).await
        }
        _ => Err(ApiError::path_not_found(&format!("/{}", segments.join("/")))),
    }
}

/// A request body as JSON, from JSON (also when no type is named) or from Kubernetes' protocol
/// buffers; any other media type is 415.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > REQUEST_BODY_BYTES_MAX {
        return Err(ApiError::new(413, "RequestEntityTooLarge", "the request body is larger than 3 MiB"));
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "" | "application/json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        protobuf::CONTENT_TYPE => protobuf::to_json(body).map_err(|e| match e {
            protobuf::Refused::Malformed(m) => ApiError::bad_request(format!("the request body is not a valid protobuf object: {m}")),
            protobuf::Refused::Unsupported(m) => ApiError::new(415, "UnsupportedMediaType", m),
        }),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, {}",
                protobuf::CONTENT_TYPE
            ),
        )),
    }
}

async fn serve_resource(
    api: &Arc<Api>,
    method: &Method,
    target: Option<Target>,
    segments: &[&str],
    headers: &HeaderMap,
    body: Bytes,
    params: &Params,
) -> Result<Response, ApiError> {
    let Some(t) = target else {
        return Err(ApiError::path_not_found(&format!("/{}", segments.join("/"))));
    };
    let ns = t.namespace.as_deref();
    let sub = t.subresource.as_deref();
    let res = t.resource;
    if res.namespaced && ns.is_none() && (t.name.is_some() || *method != Method::GET) {
        return Err(ApiError::path_not_found(&format!("/{}", segments.join("/"))));
    }
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    let form = form::negotiate(accept, params.get("includeObject") == Some("Object"))?;
    // The answer to a write or a get, in the form asked for (a scale stays a Scale).
    let shaped = |v: Value| if sub == Some("scale") { v } else { form::object(form, res, v) };
    match (method.as_str(), t.name.as_deref(), sub) {
        ("GET", None, None) if params.flag("watch") => {
            api.count("watch");
            watch::serve(api.clone(), res, ns, params, form).await
        }
        ("GET", None, None) => {
            api.count("list");
            if form == form::Form::Object {
                if let Some(bytes) = verbs::list_from_cache(api, res, ns, params).await? {
                    return Ok((StatusCode::OK, [("content-type", "application/json")], bytes).into_response());
                }
            }
            let list = verbs::list(api, res, ns, params).await?;
            // Encoding thousands of objects takes a while: off the async workers.
            let encode = move || json_response(StatusCode::OK, &form::list(form, res, list));
            tokio::task::spawn_blocking(encode).await.map_err(|e| ApiError::internal(format!("encoding a list: {e}")))
        }
        ("GET", Some(name), None | Some("status") | Some("ephemeralcontainers")) => {
            api.count("get");
            ok(shaped(verbs::get(api, res, ns, name).await?.0))
        }
        ("GET", Some(name), Some("scale")) => {
            api.count("get");
            ok(verbs::scale_of(&verbs::get(api, res, ns, name).await?.0))
        }
        ("POST", None, None) => {
            api.count("create");
            let (obj, warnings) = verbs::create(api, res, ns, parse_body(headers, &body)?, params).await?;
            Ok(with_warnings(json_response(StatusCode::CREATED, &shaped(obj)), &warnings))
        }
        ("POST", Some(name), Some("eviction")) => {
            api.count("create");
            let answer = verbs::evict(api, res, ns, name, parse_body(headers, &body)?).await?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        ("POST", Some(name), Some("token")) => {
            api.count("create");
            let ns = ns.unwrap_or("default");
            Ok(json_response(StatusCode::CREATED, &tokens::request(api, ns, name, parse_body(headers, &body)?).await?))
        }
        ("POST", Some(name), Some("binding")) => {
            api.count("create");
            let bound = verbs::bind(api, res, ns, name, parse_body(headers, &body)?).await?;
            Ok(json_response(StatusCode::CREATED, &bound))
        }
        ("PUT", Some(name), Some("finalize")) if res.strategy.owns_namespace_contents() => {
            api.count("update");
            let done = verbs::finalize_namespace(api, res, name, parse_body(headers, &body)?).await?;
            Ok(json_response(StatusCode::OK, &shaped(done)))
        }
        ("PUT", Some(name), sub) => {
            api.count("update");
            let (obj, warnings) = verbs::update(api, res, ns, name, sub, parse_body(headers, &body)?, params).await?;
            Ok(with_warnings(json_response(StatusCode::OK, &shaped(obj)), &warnings))
        }
        ("PATCH", Some(name), sub) if verbs::is_apply(headers) => {
            api.count("patch");
            let (obj, warnings, created) = verbs::apply(api, res, ns, name, sub, &body, params).await?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(with_warnings(json_response(code, &shaped(obj)), &warnings))
        }
        ("PATCH", Some(name), sub) => {
            api.count("patch");
            let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            let (obj, warnings) = verbs::patch(api, res, ns, name, sub, kind, &body, params).await?;
            Ok(with_warnings(json_response(StatusCode::OK, &shaped(obj)), &warnings))
        }
        ("DELETE", Some(name), None) => {
            api.count("delete");
            let options = if body.is_empty() { json!({}) } else { parse_body(headers, &body)? };
            let answer = verbs::delete(api, res, ns, name, &options, params).await?;
            ok(if answer["kind"] == "Status" { answer } else { shaped(answer) })
        }
        ("DELETE", None, None) => {
            api.count("deletecollection");
            let options = if body.is_empty() { json!({}) } else { parse_body(headers, &body)? };
            ok(verbs::delete_collection(api, res, ns, &options, params).await?)
        }
        (m, _, _) => {
            api.count("other");
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m} {})",
                res.plural
            )))
        }
    }
}

/// Unknown fields that were dropped, as Kubernetes reports them: `Warning` headers.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        // A quoted-string: quotes and backslashes escaped, as clients unescape them.
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

fn metrics(api: &Api) -> Response {
    let mut text = String::from(
        "# HELP apiserver_request_total Requests served, by verb.\n# TYPE apiserver_request_total counter\n",
    );
    for verb in VERBS {
        let n = api.requests.get(verb).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0);
        text.push_str(&format!("apiserver_request_total{{verb=\"{verb}\"}} {n}\n"));
    }
    text.push_str("# HELP keelson_apiserver_watches_total Watches served, by where their events came from.\n");
    text.push_str("# TYPE keelson_apiserver_watches_total counter\n");
    for (source, n) in [("cache", &api.watches_from_cache), ("store", &api.watches_from_store)] {
        text.push_str(&format!(
            "keelson_apiserver_watches_total{{source=\"{source}\"}} {}\n",
            n.load(Ordering::Relaxed)
        ));
    }
    text.push_str("# HELP keelson_apiserver_lists_total Lists served, by where their objects came from.\n");
    text.push_str("# TYPE keelson_apiserver_lists_total counter\n");
    for (source, n) in [("cache", &api.lists_from_cache), ("store", &api.lists_from_store)] {
        text.push_str(&format!("keelson_apiserver_lists_total{{source=\"{source}\"}} {}\n", n.load(Ordering::Relaxed)));
    }
    (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_resources_namespaces_names_and_subresources() {
        let t = resolve("", "v1", &["namespaces", "ns1", "pods", "web", "status"]).unwrap();
        assert_eq!((t.resource.plural, t.namespace.as_deref()), ("pods", Some("ns1")));
        assert_eq!((t.name.as_deref(), t.subresource.as_deref()), (Some("web"), Some("status")));
        let t = resolve("", "v1", &["namespaces", "ns1"]).unwrap();
        assert_eq!((t.resource.plural, t.name.as_deref(), t.namespace), ("namespaces", Some("ns1"), None));
        let t = resolve("", "v1", &["namespaces", "ns1", "status"]).unwrap();
        assert_eq!((t.resource.plural, t.subresource.as_deref()), ("namespaces", Some("status")));
        let t = resolve("", "v1", &["pods"]).unwrap();
        assert_eq!((t.resource.plural, t.namespace, t.name), ("pods", None, None));
        let t = resolve("apps", "v1", &["namespaces", "d", "deployments", "x", "scale"]).unwrap();
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        assert!(resolve("", "v1", &["namespaces", "d", "configmaps", "x", "scale"]).is_none());
        assert!(resolve("", "v1", &["namespaces", "d", "nodes"]).is_none());
        assert!(resolve("", "v1", &["widgets"]).is_none());
    }
}
