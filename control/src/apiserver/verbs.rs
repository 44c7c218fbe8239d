//! The verbs on stored objects: get, list, create, update, patch, delete, deletecollection, and
//! the binding and scale subresources.

use base64::Engine as _;
use serde_json::{json, Value};

use super::cache::WatchCache;
use super::errors::ApiError;
use super::kinds;
use super::objects::{self, FieldSelector, LabelSelector};
use super::resources::Resource;
use super::store::{prefix_end, Also, Written};
use super::{managed, Api, Params};

/// Times a read-modify-write is retried when another writer got in between and the request named
/// no resourceVersion of its own.
const UPDATE_ATTEMPTS_MAX: usize = 16;
/// Attempts at a create: a name `generateName` made up, or an allocation another writer picked
/// at the same time, may turn out taken.
const CREATE_ATTEMPTS_MAX: usize = 16;
/// Pages of at least this many objects are decoded on a blocking thread.
const BLOCKING_DECODE_ITEMS_MIN: usize = 64;
/// Most items a list returns when no limit is asked for, per store read.
const LIST_PAGE_ITEMS_MAX: i64 = 500;

/// An object as clients see it: its stored JSON with the key's mod revision as resourceVersion.
pub fn from_kv(kv: &proto::mvccpb::KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object at {} is not JSON: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    }
    Ok(obj)
}

fn to_stored(obj: &Value) -> Vec<u8> {
    let mut v = obj.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&v).expect("a JSON value encodes")
}

fn with_rv(mut obj: Value, revision: i64) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    obj
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// Whether the request asks for a dry run: `dryRun=All` in the query, or in DeleteOptions.
fn dry_run(params: &Params, options: Option<&Value>) -> bool {
    params.get("dryRun") == Some("All")
        || options.and_then(|o| o.get("dryRun")).and_then(Value::as_array).is_some_and(|d| d.iter().any(|v| v == "All"))
}

/// The object and its mod revision.
pub async fn get(api: &Api, res: &Resource, ns: Option<&str>, name: &str) -> Result<(Value, i64), ApiError> {
    let (kv, _) = api.store.get(res.key(ns, name).as_bytes()).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(res.plural, res.group, name))?;
    Ok((from_kv(&kv)?, kv.mod_revision))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    /// The revision the first page was read at; later pages read the same snapshot.
    rv: i64,
    /// The key after which the next page starts.
    start: String,
}

/// Decodes a page of stored objects and keeps those `selectors` select. Large pages are decoded
/// off the async workers, which keep serving other requests meanwhile.
async fn decode_matching(kvs: Vec<proto::mvccpb::KeyValue>, selectors: Selectors) -> Result<Vec<Value>, ApiError> {
    let small = kvs.len() < BLOCKING_DECODE_ITEMS_MIN;
    let work = move || -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for kv in &kvs {
            let obj = from_kv(kv)?;
            if selectors.matches(&obj) {
                out.push(obj);
            }
        }
        Ok(out)
    };
    if small {
        return work();
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(format!("decoding a list: {e}")))?
}

#[derive(Clone)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_params(res: &Resource, params: &Params) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let fields = FieldSelector::parse(res, params.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse fieldSelector: {e}")))?;
        Ok(Selectors { labels, fields })
    }

    /// Whether every object matches.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj.pointer("/metadata/labels").unwrap_or(&Value::Null)) && self.fields.matches(obj)
    }
}

/// How long a consistent read waits for the watch cache to catch up before reading the store.
const CACHE_FRESH_WAIT_MS: u64 = 1_000;

/// Whether `cache` may answer a consistent read: a state at least as new as `at_least`, or as
/// the store's current revision (None), once the cache has caught up with it — and only where
/// the store's progress notifications can tell.
pub async fn cache_current(api: &Api, cache: &WatchCache, at_least: Option<i64>) -> Result<bool, ApiError> {
    if !api.progress_ordered.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(false);
    }
    let revision = match at_least {
        Some(n) => n,
        None => api.store.current_revision().await?,
    };
    Ok(cache.wait_fresh(revision, std::time::Duration::from_millis(CACHE_FRESH_WAIT_MS)).await)
}

/// A consistent list of everything in scope, served from the watch cache once the cache has
/// caught up with the store's current revision (read linearizably first): the objects are
/// already decoded and encoded there, so the answer is their bytes joined. None when the request
/// pages (`limit`, `continue`), names a resourceVersion, or the cache is not ready; the store then
/// answers.
pub async fn list_from_cache(
    api: &Api,
    res: &'static Resource,
    ns: Option<&str>,
    params: &Params,
) -> Result<Option<Vec<u8>>, ApiError> {
    if ["limit", "continue", "resourceVersion", "resourceVersionMatch"].iter().any(|p| params.get(p).is_some()) {
        return Ok(None);
    }
    let selectors = Selectors::from_params(res, params)?;
    let cache = api.cache(res);
    if !cache_current(api, &cache, None).await? {
        return Ok(None);
    }
    let Some((objects, at)) = cache.list(&res.scope_prefix(ns)) else { return Ok(None) };
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": at.to_string()}});
    let small = objects.len() < BLOCKING_DECODE_ITEMS_MIN;
    let join = move || {
        let mut head = serde_json::to_vec(&head).expect("a JSON value encodes");
        head.pop(); // the closing brace; the items follow
        let items: Vec<&axum::body::Bytes> = objects.iter().filter(|o| selectors.matches(o)).map(|o| &o.json).collect();
        // Sized once: a list is megabytes, and growing it would copy it over and over.
        let size = head.len() + items.iter().map(|j| j.len() + 1).sum::<usize>() + 16;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&head);
        out.extend_from_slice(b",\"items\":[");
        for (i, json) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.extend_from_slice(b"]}");
        out
    };
    // Joining thousands of objects' bytes takes a while: off the async workers, as decoding is.
    let out = if small {
        join()
    } else {
        tokio::task::spawn_blocking(join).await.map_err(|e| ApiError::internal(format!("joining a list: {e}")))?
    };
    api.lists_from_cache.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(out))
}

/// Which state a list asks for, by `resourceVersion` and `resourceVersionMatch`
/// (Kubernetes' ListOptions).
enum ListAt {
    /// The newest state.
    Newest,
    /// Any state, the watch cache's included (`resourceVersion=0`).
    Any,
    /// The state at exactly this revision (`Exact`, or a version with `limit`), or 410.
    Exact(i64),
    /// A state at least this new (`NotOlderThan`, or a version without `limit`).
    NotOlderThan(i64),
}

fn list_at(params: &Params, limit: i64) -> Result<ListAt, ApiError> {
    let rv = params.get("resourceVersion");
    let rv_match = params.get("resourceVersionMatch");
    let invalid = |field: &str, value: &str, why: &str| {
        ApiError::invalid("ListOptions", "meta.k8s.io", "", vec![super::errors::Cause::invalid(field, value, why)])
    };
    if params.get("continue").is_some() {
        if rv.is_some() {
            return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
        }
        if let Some(m) = rv_match {
            return Err(invalid(
                "resourceVersionMatch",
                m,
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        return Ok(ListAt::Newest);
    }
    if let Some(m) = rv_match {
        if !matches!(m, "Exact" | "NotOlderThan") {
            return Err(invalid("resourceVersionMatch", m, "supported values: \"Exact\", \"NotOlderThan\""));
        }
        if rv.is_none() {
            return Err(invalid(
                "resourceVersionMatch",
                m,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m == "Exact" && rv == Some("0") {
            return Err(invalid(
                "resourceVersionMatch",
                m,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    let Some(rv) = rv else { return Ok(ListAt::Newest) };
    if rv == "0" {
        return Ok(ListAt::Any);
    }
    let n: i64 = rv
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("resourceVersion {rv:?} is not a valid resource version")))?;
    Ok(match rv_match {
        Some("Exact") => ListAt::Exact(n),
        Some(_) => ListAt::NotOlderThan(n),
        None if limit > 0 => ListAt::Exact(n),
        None => ListAt::NotOlderThan(n),
    })
}

/// A list, filtered, paginated with `limit` and `continue` over one store snapshot.
pub async fn list(api: &Api, res: &'static Resource, ns: Option<&str>, params: &Params) -> Result<Value, ApiError> {
    let selectors = Selectors::from_params(res, params)?;
    let limit: i64 = match params.get("limit") {
        Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        None => 0,
    };
    let at = list_at(params, limit)?;
    // resourceVersion=0 asks for any version: the watch cache's, when it has been built.
    if matches!(at, ListAt::Any) {
        if let Some((objects, revision)) = api.cache(res).list(&res.scope_prefix(ns)) {
            let items: Vec<Value> = objects
                .iter()
                .filter(|o| selectors.matches(o))
                .map(|o| {
                    let mut item = o.full();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    item
                })
                .collect();
            api.lists_from_cache.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            }));
        }
    }
    let prefix = res.scope_prefix(ns);
    let end = prefix_end(prefix.as_bytes());
    let exact = match at {
        ListAt::Exact(n) => n,
        _ => 0,
    };
    let (mut revision, mut from) = (exact, prefix.as_bytes().to_vec());
    if let Some(token) = params.get("continue") {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ApiError::bad_request("the continue token is not valid"))?;
        let c: Continue =
            serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("the continue token is not valid"))?;
        if !c.start.starts_with(&prefix) {
            return Err(ApiError::bad_request("the continue token belongs to another list"));
        }
        revision = c.rv;
        from = c.start.into_bytes();
        from.push(0);
    }
    // resourceVersion=0 lets any member answer from its own state.
    let serializable = matches!(at, ListAt::Any) && revision == 0;
    api.lists_from_store.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut items = Vec::new();
    let mut next: Option<Vec<u8>> = None;
    loop {
        let want = if limit > 0 { (limit - items.len() as i64).max(1) } else { LIST_PAGE_ITEMS_MAX };
        let page = match api.store.range(&from, &end, revision, want, serializable).await {
            Ok(p) => p,
            Err(super::store::StoreError::Compacted) if params.get("continue").is_some() => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can \
                     start a new list without the continue parameter.",
                ))
            }
            Err(super::store::StoreError::Compacted) => {
                return Err(ApiError::gone("The resourceVersion for the provided list is too old."));
            }
            Err(super::store::StoreError::FutureRevision) => {
                let current = api.store.current_revision().await.ok();
                return Err(ApiError::too_large_resource_version(Some(exact), current));
            }
            Err(e) => return Err(e.into()),
        };
        if revision == 0 {
            revision = page.revision;
            if let ListAt::NotOlderThan(n) = at {
                if revision < n {
                    return Err(ApiError::too_large_resource_version(Some(n), Some(revision)));
                }
            }
        }
        let last = page.kvs.last().map(|kv| kv.key.clone());
        items.extend(decode_matching(page.kvs, selectors.clone()).await?);
        let Some(last) = last else { break };
        if !page.more {
            break;
        }
        if limit > 0 && items.len() as i64 >= limit {
            next = Some(last);
            break;
        }
        from = last;
        from.push(0);
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(last) = next {
        let token = serde_json::to_vec(&Continue { rv: revision, start: String::from_utf8_lossy(&last).into_owned() })
            .expect("a token encodes");
        metadata["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
    }
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        item.remove("apiVersion");
        item.remove("kind");
    }
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// Decodes, defaults and validates a body bound for `res`; returns it with the dropped fields.
fn admit(res: &Resource, mut body: Value, name: &str, params: &Params) -> Result<(Value, Vec<String>), ApiError> {
    objects::check_type_meta(res, &mut body)?;
    let (mut obj, unknown) = res
        .strategy
        .decode(&body)
        .map_err(|e| ApiError::bad_request(format!("error decoding {} {name:?}: {e}", res.kind)))?;
    let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    if !unknown.is_empty() && params.get("fieldValidation") == Some("Strict") {
        return Err(ApiError::bad_request(format!("strict decoding error: {}", warnings.join(", "))));
    }
    res.strategy.defaults(&mut obj);
    Ok((obj, warnings))
}

/// Validates `obj`, which replaces `old` if that is given; a kind with allocations first takes
/// over the values `old` had.
fn check_valid(api: &Api, res: &Resource, old: Option<&Value>, obj: &mut Value, name: &str) -> Result<(), ApiError> {
    let mut causes = match res.strategy.allocator() {
        Some(a) => a.prepare(api, old, obj),
        None => Vec::new(),
    };
    causes.extend(objects::validate(res, obj, old));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.kind, res.group, name, causes))
    }
}

/// What `obj` (replacing `old`) claims and releases in the store beside its own write.
async fn allocations(api: &Api, res: &Resource, old: Option<&Value>, obj: &mut Value) -> Result<Vec<Also>, ApiError> {
    match res.strategy.allocator() {
        Some(a) => a.claim(api, old, obj).await,
        None => Ok(Vec::new()),
    }
}

/// What deleting `obj` gives back.
fn releases(res: &Resource, obj: &Value) -> Vec<Also> {
    res.strategy.allocator().map(|a| a.release(obj)).unwrap_or_default()
}

fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null())
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The namespace `ns`, which must accept new content, and its mod revision: a create is written
/// only if the namespace is still at that revision, so nothing lands in a namespace whose
/// deletion began after the check.
async fn namespace_for_content(api: &Api, res: &Resource, name: &str, ns: &str) -> Result<i64, ApiError> {
    let (obj, revision) = get(api, &kinds::namespace::RESOURCE, None, ns).await?;
    if is_deleting(&obj) {
        return Err(ApiError::namespace_terminating(res.plural, res.group, name, ns));
    }
    Ok(revision)
}

/// How a write's managed fields come about.
#[derive(Clone, Copy)]
enum Track<'a> {
    /// An update by this manager: it takes the fields it changed.
    Update(&'a str),
    /// Already computed (server-side apply), or kept (the server's own writes).
    Given,
}

pub async fn create(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    body: Value,
    params: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    create_with(api, res, ns, body, params, Track::Update(&params.manager())).await
}

async fn create_with(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    body: Value,
    params: &Params,
    track: Track<'_>,
) -> Result<(Value, Vec<String>), ApiError> {
    let name = meta_str(&body, "name").unwrap_or("").to_string();
    let generate = meta_str(&body, "generateName").unwrap_or("").to_string();
    if name.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(res.kind, res.group, "", vec![super::errors::Cause::required("metadata.name")]));
    }
    if let (Some(url_ns), Some(body_ns)) = (ns, meta_str(&body, "namespace")) {
        if url_ns != body_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let (mut obj, warnings) = admit(res, body, &name, params)?;
    {
        let meta = obj["metadata"].as_object_mut().expect("admitted objects have metadata");
        for f in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "generation"] {
            meta.remove(f);
        }
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns.unwrap_or("default")));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
        if res.strategy.tracks_generation() {
            meta.insert("generation".into(), json!(1));
        }
    }
    // The manager owns what the request set and defaulted; what the server itself then resets
    // and adds (status, admission defaults) it does not, as in Kubernetes' create handler.
    if let Track::Update(manager) = track {
        managed::track_update(res, "", None, &mut obj, manager)?;
    }
    res.strategy.prepare_for_create(&mut obj);
    let shown_name = if name.is_empty() { generate.as_str() } else { name.as_str() };
    let content_ns = ns.filter(|_| res.namespaced);
    let admission = res.strategy.admission();
    // The namespace and what admission reads are read at once; a namespace that refuses the
    // object answers first, as Kubernetes' NamespaceLifecycle plugin runs before the others.
    let namespace = async {
        match content_ns {
            Some(ns) => namespace_for_content(api, res, shown_name, ns).await.map(Some),
            None => Ok(None),
        }
    };
    let admitted = async {
        match admission {
            Some(a) => a.admit_create(api, shown_name, &mut obj).await,
            None => Ok(()),
        }
    };
    let (namespace, admitted) = tokio::join!(namespace, admitted);
    let mut ns_revision = namespace?;
    admitted?;
    let mut warnings = warnings;
    warnings.extend(super::podsecurity::admit(api, res, content_ns, shown_name, &obj).await?);
    // A generated name may be taken, an allocation picked while another replica picked the same,
    // or the namespace changed since it was read: each time, try again.
    for _ in 0..CREATE_ATTEMPTS_MAX {
        let this_name = if name.is_empty() { format!("{generate}{}", objects::random_suffix()) } else { name.clone() };
        if let Some(why) = objects::name_error(res, &this_name) {
            return Err(ApiError::invalid(
                res.kind,
                res.group,
                &this_name,
                vec![super::errors::Cause::invalid("metadata.name", &this_name, why)],
            ));
        }
        let mut obj = obj.clone();
        obj["metadata"]["name"] = json!(this_name);
        res.strategy.canonicalize(&mut obj);
        check_valid(api, res, None, &mut obj, &this_name)?;
        if let Some(a) = admission {
            a.validate(api, &this_name, &obj, None).await?;
        }
        let mut also = allocations(api, res, None, &mut obj).await?;
        if dry_run(params, None) {
            return Ok((obj, warnings));
        }
        if let (Some(ns), Some(revision)) = (content_ns, ns_revision) {
            also.push(Also::Unchanged {
                key: kinds::namespace::RESOURCE.key(None, ns).into_bytes(),
                expected: revision,
            });
        }
        let key = res.key(ns, &this_name);
        let lease = if res.strategy.expires() { api.expiry_lease().await? } else { 0 };
        let written = api.store.write_if_leased(key.as_bytes(), 0, Some(to_stored(&obj)), lease, also).await;
        if lease_lost(api, &written).await {
            continue;
        }
        match written? {
            Written::Done(rev) => return Ok((with_rv(obj, rev), warnings)),
            Written::Conflict => {
                if api.store.get(key.as_bytes()).await?.0.is_some() {
                    if name.is_empty() {
                        continue;
                    }
                    return Err(ApiError::already_exists(res.plural, res.group, &this_name));
                }
                if let Some(ns) = content_ns {
                    ns_revision = Some(namespace_for_content(api, res, shown_name, ns).await?);
                }
            }
        }
    }
    Err(ApiError::internal(format!(
        "no free name (generateName {generate:?}) or allocation after {CREATE_ATTEMPTS_MAX} attempts"
    )))
}

/// Whether a write failed because the shared expiry lease is gone (expired, or the store lost
/// it); the lease is then forgotten, and the write is tried again with a new one.
async fn lease_lost(api: &Api, written: &Result<Written, super::store::StoreError>) -> bool {
    let lost = matches!(written, Err(super::store::StoreError::Unavailable(m)) if m.contains("lease not found"));
    if lost {
        api.forget_expiry_lease().await;
    }
    lost
}

/// Which part of an object a write changes.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// The main resource: everything but status, by the kind's update rules.
    Main,
    /// The `/status` subresource: status and metadata, by the kind's status rules.
    Status,
    /// Both, for the server's own subresources (a pod's binding).
    Whole,
    /// A pod's ephemeral containers (`kubectl debug`), and nothing else.
    Ephemeral,
}

impl Part {
    /// The subresource managed fields are recorded under.
    fn subresource(self) -> &'static str {
        match self {
            Part::Status => "status",
            Part::Ephemeral => "ephemeralcontainers",
            Part::Main | Part::Whole => "",
        }
    }

    fn of(sub: Option<&str>) -> Part {
        match sub {
            Some("status") => Part::Status,
            Some("ephemeralcontainers") => Part::Ephemeral,
            _ => Part::Main,
        }
    }
}

/// Read-modify-write of one object. `change` builds the new object from the current one (the
/// server's own metadata is kept whatever it says) and may name the version it expects; when
/// it does (the client's resourceVersion) a different current version is a 409, otherwise the
/// write is retried on the newer version. A change that leaves the stored object as it was
/// writes nothing: the resourceVersion stays and no watch hears of it, as in Kubernetes.
#[allow(clippy::too_many_arguments)]
async fn modify(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    part: Part,
    params: &Params,
    track: Track<'_>,
    mut change: impl FnMut(&Value) -> Result<(Value, Option<String>), ApiError>,
) -> Result<(Value, Vec<String>), ApiError> {
    for attempt in 0..UPDATE_ATTEMPTS_MAX {
        // The first read may come from the member's own state (the write's condition catches a
        // stale one); what it cannot settle — absent, or not the client's version — is read
        // again, linearizably, before the client is told.
        let first = attempt == 0;
        let (kv, _, stale) = api.store.get_checked(res.key(ns, name).as_bytes(), first).await?;
        let Some(kv) = kv else {
            if first {
                continue;
            }
            return Err(ApiError::not_found(res.plural, res.group, name));
        };
        let (current, mod_rev) = (from_kv(&kv)?, kv.mod_revision);
        let (body, expected_rv) = change(&current)?;
        if let Some(rv) = expected_rv.as_deref() {
            if rv != mod_rev.to_string() {
                if first {
                    continue;
                }
                return Err(ApiError::conflict(res.plural, res.group, name));
            }
        }
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&body, "name").unwrap_or_default()
            )));
        }
        if let (Some(url_ns), Some(body_ns)) = (ns, meta_str(&body, "namespace")) {
            if url_ns != body_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        // The server's own change (a binding) to an object admitted when it was written: decoding
        // and defaulting it again would find nothing, at a cost per pod scheduled.
        let (mut obj, warnings) = match part {
            Part::Whole => (body, Vec::new()),
            _ => admit(res, body, name, params)?,
        };
        match part {
            Part::Main => res.strategy.prepare_for_update(&mut obj, &current),
            Part::Status => res.strategy.prepare_for_status_update(&mut obj, &current),
            Part::Ephemeral => res.strategy.prepare_for_ephemeral_update(&mut obj, &current),
            Part::Whole => {}
        }
        // The server's own metadata stays as it was; a uid left out is the stored one (a
        // different one fails validation).
        if meta_str(&obj, "uid").is_none_or(str::is_empty) {
            obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
        }
        for f in ["creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match current["metadata"].get(f) {
                Some(v) => obj["metadata"][f] = v.clone(),
                None => {
                    obj["metadata"].as_object_mut().map(|m| m.remove(f));
                }
            }
        }
        obj["metadata"]["name"] = json!(name);
        if res.namespaced {
            obj["metadata"]["namespace"] = json!(ns.unwrap_or("default"));
        }
        res.strategy.canonicalize(&mut obj);
        check_valid(api, res, Some(&current), &mut obj, name)?;
        if let (Part::Main, Some(a)) = (part, res.strategy.admission()) {
            a.validate(api, name, &obj, Some(&current)).await?;
        }
        if let Track::Update(manager) = track {
            managed::track_update(res, part.subresource(), Some(&current), &mut obj, manager)?;
        }
        if res.strategy.tracks_generation() && res.strategy.generation_changed(&obj, &current) {
            let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        // An object being deleted whose last finalizer goes is deleted now, unless a graceful
        // deletion is still under way (a pod's node finishes that with a delete of its own).
        let grace = current.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
        // A namespace is also held by its spec's finalizers until it is finalized.
        let held = res.strategy.owns_namespace_contents() && !spec_finalizers(&obj).is_empty();
        let deleting = is_deleting(&current) && finalizers(&obj).is_empty() && grace == 0 && !held;
        let also =
            if deleting { releases(res, &current) } else { allocations(api, res, Some(&current), &mut obj).await? };
        let stored = to_stored(&obj);
        // A value an older encryption key wrote is written again even when unchanged: that is
        // how a key rotation re-encrypts (Kubernetes' `kubectl replace` of every object).
        if dry_run(params, None) || (!deleting && !stale && stored == kv.value) {
            return Ok((with_rv(obj, mod_rev), warnings));
        }
        let key = res.key(ns, name);
        let value = if deleting { None } else { Some(stored) };
        let lease = if res.strategy.expires() && !deleting { api.expiry_lease().await? } else { 0 };
        let written = api.store.write_if_leased(key.as_bytes(), mod_rev, value, lease, also).await;
        if lease_lost(api, &written).await {
            continue;
        }
        let written = written?;
        match written {
            Written::Done(rev) => return Ok((with_rv(obj, rev), warnings)),
            Written::Conflict if expected_rv.is_none() => continue,
            Written::Conflict => {
                // The object unchanged, the write lost an allocation it claimed: try again.
                let (now, _) = api.store.get(key.as_bytes()).await?;
                if now.is_some_and(|kv| kv.mod_revision == mod_rev) {
                    continue;
                }
                return Err(ApiError::conflict(res.plural, res.group, name));
            }
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!("{} {name:?} kept changing; gave up after {UPDATE_ATTEMPTS_MAX} attempts", res.plural),
    ))
}

fn body_rv(body: &Value) -> Option<String> {
    meta_str(body, "resourceVersion").filter(|s| !s.is_empty()).map(String::from)
}

pub async fn update(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    body: Value,
    params: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    if sub == Some("scale") {
        let replicas = body.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
        let expected = body_rv(&body);
        let manager = params.manager();
        let (obj, w) = modify(api, res, ns, name, Part::Main, params, Track::Update(&manager), |current| {
            let mut next = current.clone();
            next["spec"]["replicas"] = replicas.clone();
            Ok((next, expected.clone()))
        })
        .await?;
        return Ok((scale_of(&obj), w));
    }
    let expected = body_rv(&body);
    let manager = params.manager();
    modify(api, res, ns, name, Part::of(sub), params, Track::Update(&manager), |_| Ok((body.clone(), expected.clone())))
        .await
}

#[allow(clippy::too_many_arguments)]
pub async fn patch(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    body: &[u8],
    params: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let apply = |target: &Value, shape: Option<super::schema::Shape>| -> Result<Value, ApiError> {
        let mut doc = target.clone();
        match media {
            "application/merge-patch+json" => json_patch::merge(&mut doc, &patch),
            "application/strategic-merge-patch+json" => {
                doc = super::patch::strategic_merge(&doc, &patch, shape).map_err(|e| {
                    ApiError::bad_request(format!("the strategic merge patch could not be applied: {e}"))
                })?;
            }
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("the JSON patch is not valid: {e}")))?;
                json_patch::patch(&mut doc, &ops)
                    .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format ({other:?}); accepted: \
                             application/json-patch+json, application/merge-patch+json, \
                             application/strategic-merge-patch+json, application/apply-patch+yaml"
                    ),
                ))
            }
        }
        Ok(doc)
    };
    // A resourceVersion in the patch itself is a precondition.
    let expected = body_rv(&patch);
    if sub == Some("scale") {
        let manager = params.manager();
        let (obj, w) = modify(api, res, ns, name, Part::Main, params, Track::Update(&manager), |current| {
            let scale = apply(&scale_of(current), super::schema::root("autoscaling/v1", "Scale"))?;
            let mut next = current.clone();
            next["spec"]["replicas"] = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            Ok((next, expected.clone()))
        })
        .await?;
        return Ok((scale_of(&obj), w));
    }
    let manager = params.manager();
    modify(api, res, ns, name, Part::of(sub), params, Track::Update(&manager), |current| {
        let mut next = apply(current, super::schema::of(res))?;
        // Without a precondition the patch applies to whatever version is current.
        if expected.is_none() {
            if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
        }
        Ok((next, expected.clone()))
    })
    .await
}

/// Whether a PATCH is a server-side apply.
pub fn is_apply(headers: &axum::http::HeaderMap) -> bool {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(APPLY_PATCH)
}

const APPLY_PATCH: &str = "application/apply-patch+yaml";
/// Attempts at an apply that finds the object missing and loses the race to create it.
const APPLY_ATTEMPTS_MAX: usize = 4;

/// Server-side apply (`PATCH` with `application/apply-patch+yaml`): the body, YAML or JSON, is
/// the manager's whole intent for the object; it is merged in by the type's semantics (see
/// `managed.rs`), and creates the object when it does not exist. Returns the object, the
/// warnings, and whether it was created.
pub async fn apply(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    body: &[u8],
    params: &Params,
) -> Result<(Value, Vec<String>, bool), ApiError> {
    let mut config: Value =
        serde_norway::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request("the apply configuration must be an object"));
    }
    let Some(manager) = params.get("fieldManager").map(String::from) else {
        return Err(ApiError::bad_request("PATCH, fieldManager is required for apply requests"));
    };
    for field in ["apiVersion", "kind"] {
        if config.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!("{field} must be set in an apply configuration")));
        }
    }
    objects::check_type_meta(res, &mut config)?;
    if meta_str(&config, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&config, "name").unwrap_or_default()
        )));
    }
    config["metadata"]["name"] = json!(name);
    let mut defaulted = config.clone();
    res.strategy.defaults(&mut defaulted);
    managed::fill_default_keys(&mut config, &defaulted, super::schema::of(res));
    let part = Part::of(sub);
    if sub.is_some_and(|s| s != "status") {
        return Err(ApiError::method_not_allowed(format!(
            "apply is not supported on {}/{}",
            res.plural,
            sub.unwrap_or("")
        )));
    }
    let force = params.flag("force");
    let expected = body_rv(&config);
    for _ in 0..APPLY_ATTEMPTS_MAX {
        let updated = modify(api, res, ns, name, part, params, Track::Given, |current| {
            let obj = managed::apply(res, part.subresource(), Some(current), &config, &manager, force)?;
            Ok((obj, expected.clone()))
        })
        .await;
        match updated {
            Ok((obj, warnings)) => return Ok((obj, warnings, false)),
            Err(e) if e.code == 404 && sub.is_none() => {}
            Err(e) => return Err(e),
        }
        // Nothing to apply to: the configuration creates the object.
        let obj = managed::apply(res, "", None, &config, &manager, force)?;
        match create_with(api, res, ns, obj, params, Track::Given).await {
            Ok((obj, warnings)) => return Ok((obj, warnings, true)),
            Err(e) if e.reason == "AlreadyExists" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::new(409, "Conflict", format!("{} {name:?} kept appearing and disappearing", res.plural)))
}

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(obj: &Value) -> Value {
    // A ReplicationController's selector is the map itself.
    let labels = obj.pointer("/spec/selector/matchLabels").or_else(|| {
        obj.pointer("/spec/selector").filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
    });
    let selector = labels
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// `POST pods/<name>/binding`: puts the pod on the target node, once, and marks it scheduled. A
/// node that does not exist is a 404 naming it, and the pod stays as it was: a scheduler working
/// from a stale node list sees why and tries again, rather than strand the pod on no node.
pub async fn bind(api: &Api, res: &Resource, ns: Option<&str>, name: &str, body: Value) -> Result<Value, ApiError> {
    let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid("Binding", "", name, vec![super::errors::Cause::required("target.name")]));
    }
    // The nodes' watch cache answers almost always; a node it does not hold yet (registered just
    // before) is looked for with one linearizable read of the key alone. A node deleted after
    // the check is the node lifecycle's to handle, as for any bound pod.
    let node_key = kinds::node::RESOURCE.key(None, &node);
    let cached = api.cache(&kinds::node::RESOURCE).contains(&node_key) == Some(true);
    let mut node_end = node_key.clone().into_bytes();
    node_end.push(0);
    if !cached && api.store.keys(node_key.as_bytes(), &node_end).await?.is_empty() {
        return Err(ApiError::not_found(kinds::node::RESOURCE.plural, kinds::node::RESOURCE.group, &node));
    }
    let annotations = body.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
    // The pod is not decoded again on binding: what the binding adds to it is checked here.
    if let Some((k, _)) = annotations.iter().find(|(_, v)| !v.is_string()) {
        return Err(ApiError::bad_request(format!(
            "error decoding Binding {name:?}: metadata.annotations.{k}: invalid type: expected a string"
        )));
    }
    let refuse = |why: String| {
        ApiError::conflict(res.plural, res.group, name)
            .with_message(format!("Operation cannot be fulfilled on pods/binding \"{name}\": {why}"))
    };
    let params = Params::default();
    modify(api, res, ns, name, Part::Whole, &params, Track::Given, |current| {
        if is_deleting(current) {
            return Err(refuse(format!("pod {name} is being deleted, cannot be assigned to a host")));
        }
        if let Some(existing) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(refuse(format!("pod {name} is already assigned to node \"{existing}\"")));
        }
        if current.pointer("/spec/schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty()) {
            return Err(refuse(format!("pod {name} has non-empty .spec.schedulingGates")));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        for (k, v) in &annotations {
            if !next["metadata"]["annotations"].is_object() {
                next["metadata"]["annotations"] = json!({});
            }
            next["metadata"]["annotations"][k] = v.clone();
        }
        set_condition(&mut next, "PodScheduled", "True");
        Ok((next, None))
    })
    .await?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

/// Replaces the pod condition of `kind` with one of `status` (its transition time kept if the
/// status stays), as Kubernetes' UpdatePodCondition does.
fn set_condition(pod: &mut Value, kind: &str, status: &str) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conditions = pod["status"].as_object_mut().expect("made an object above").entry("conditions");
    let list = conditions.or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("made an array above");
    let old = list.iter().position(|c| c["type"] == kind);
    let since = old
        .map(|i| &list[i])
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(objects::now_rfc3339()));
    let condition = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    match old {
        Some(i) => list[i] = condition,
        None => list.push(condition),
    }
}

impl ApiError {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// What a delete does to the object in front of it.
enum Deletion {
    /// Remove it from the store now.
    Now,
    /// Write it marked (deletionTimestamp, grace period, finalizers): finalizers or a node's
    /// graceful stop finish the deletion.
    Mark(Value),
    /// A graceful deletion with at least this little time left is under way already.
    Pending,
}

/// Kubernetes' `BeforeDelete` and its store's finalizer rules: what a delete asking for `asked`
/// seconds of grace does to `current`, which will hold `finalizers` afterwards.
fn plan_deletion(res: &Resource, current: &Value, asked: Option<i64>, finalizers: &[Value]) -> Deletion {
    let now = chrono::Utc::now();
    let stamp = |t: chrono::DateTime<chrono::Utc>| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let grace = res.strategy.grace_period(current, asked);
    let mut marked = current.clone();
    marked["metadata"]["finalizers"] = json!(finalizers);
    if finalizers.is_empty() {
        marked["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
    }
    let finalizers_changed = finalizers != self::finalizers(current).as_slice();
    if is_deleting(current) {
        let stored = current.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
        if stored > 0 {
            match grace {
                // Only a shorter grace period changes a deletion under way: the deadline moves
                // up by the difference.
                Some(g) if g < stored => {
                    let deadline = current
                        .pointer("/metadata/deletionTimestamp")
                        .and_then(Value::as_str)
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc) - chrono::Duration::seconds(stored - g))
                        .unwrap_or(now)
                        .max(now);
                    if g == 0 && finalizers.is_empty() {
                        return Deletion::Now;
                    }
                    marked["metadata"]["deletionTimestamp"] = stamp(deadline);
                    marked["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                    return Deletion::Mark(marked);
                }
                _ if finalizers_changed => return Deletion::Mark(marked),
                _ => return Deletion::Pending,
            }
        }
        if finalizers.is_empty() {
            return Deletion::Now;
        }
        return if finalizers_changed { Deletion::Mark(marked) } else { Deletion::Pending };
    }
    let g = grace.unwrap_or(0);
    if g == 0 && finalizers.is_empty() && !res.strategy.owns_namespace_contents() {
        return Deletion::Now;
    }
    marked["metadata"]["deletionTimestamp"] = stamp(now + chrono::Duration::seconds(g));
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(g);
    if let Some(generation) = current.pointer("/metadata/generation").and_then(Value::as_i64).filter(|g| *g > 0) {
        marked["metadata"]["generation"] = json!(generation + 1);
    }
    res.strategy.mark_deleting(&mut marked);
    Deletion::Mark(marked)
}

/// What a delete that removed `obj` answers: the object for kinds that return it, else a
/// `Status` of Success naming it.
fn deleted_answer(res: &Resource, obj: Value) -> Value {
    if res.strategy.returns_deleted_object() {
        return obj;
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": obj["metadata"]["name"], "group": res.group, "kind": res.plural, "uid": obj["metadata"]["uid"]},
    })
}

/// Deletes one object, or marks it for deletion while finalizers (or a node's graceful stop of a
/// pod) remain. Returns what Kubernetes returns: the object as marked, or for one removed, the
/// object or a `Status` (see [`deleted_answer`]).
pub async fn delete(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    options: &Value,
    params: &Params,
) -> Result<Value, ApiError> {
    let asked: Option<i64> = options
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| params.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let policy = options
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| params.get("propagationPolicy"))
        .map(String::from);
    if let Some(p) = policy.as_deref() {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy {p:?} is not one of Orphan, Background, Foreground"
            )));
        }
    }
    let dry = dry_run(params, Some(options));
    for _ in 0..UPDATE_ATTEMPTS_MAX {
        let (current, mod_rev) = get(api, res, ns, name).await?;
        if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
            if rv != mod_rev.to_string() {
                return Err(ApiError::conflict(res.plural, res.group, name));
            }
        }
        if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
            if Some(uid) != meta_str(&current, "uid") {
                return Err(ApiError::conflict(res.plural, res.group, name));
            }
        }
        res.strategy.check_delete(&current)?;
        let mut finalizers = finalizers(&current);
        // The garbage collector's finalizers record the propagation policy asked for.
        let recorded = match policy.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = recorded {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let key = res.key(ns, name);
        match plan_deletion(res, &current, asked, &finalizers) {
            Deletion::Pending => return Ok(current),
            Deletion::Now if dry => return Ok(deleted_answer(res, current)),
            Deletion::Now => match api.store.write_if(key.as_bytes(), mod_rev, None, releases(res, &current)).await? {
                Written::Done(_) => return Ok(deleted_answer(res, current)),
                Written::Conflict => continue,
            },
            Deletion::Mark(marked) if dry => return Ok(marked),
            Deletion::Mark(marked) => {
                let rev = match api.store.put_if(key.as_bytes(), to_stored(&marked), mod_rev).await? {
                    Written::Done(rev) => rev,
                    Written::Conflict => continue,
                };
                let marked = with_rv(marked, rev);
                if !res.strategy.owns_namespace_contents() {
                    return Ok(marked);
                }
                // A namespace: marked Terminating, so that nothing new is created in it; the
                // namespace controller empties it and then finalizes it. One that no finalizer
                // of either kind holds goes now.
                if finalizers.is_empty() && spec_finalizers(&marked).is_empty() {
                    api.store.write_if(key.as_bytes(), rev, None, Vec::new()).await?;
                }
                return Ok(marked);
            }
        }
    }
    Err(ApiError::new(409, "Conflict", format!("{} {name:?} kept changing while being deleted", res.plural)))
}

/// A namespace's `spec.finalizers` (the `kubernetes` one the namespace controller removes).
fn spec_finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/spec/finalizers").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// `PUT namespaces/<name>/finalize`: replaces the namespace's `spec.finalizers` (what the
/// namespace controller does once the namespace is empty); a namespace being deleted that no
/// finalizer holds any more is removed.
pub async fn finalize_namespace(api: &Api, res: &Resource, name: &str, body: Value) -> Result<Value, ApiError> {
    let wanted = spec_finalizers(&body);
    for _ in 0..UPDATE_ATTEMPTS_MAX {
        let (mut current, mod_rev) = get(api, res, None, name).await?;
        if let Some(rv) = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|rv| !rv.is_empty())
        {
            if rv != mod_rev.to_string() {
                return Err(ApiError::conflict(res.plural, res.group, name));
            }
        }
        if wanted.is_empty() {
            current.get_mut("spec").and_then(Value::as_object_mut).map(|m| m.remove("finalizers"));
        } else {
            current["spec"]["finalizers"] = json!(wanted);
        }
        let key = res.key(None, name);
        if is_deleting(&current) && wanted.is_empty() && finalizers(&current).is_empty() {
            match api.store.write_if(key.as_bytes(), mod_rev, None, Vec::new()).await? {
                Written::Done(_) => return Ok(current),
                Written::Conflict => continue,
            }
        }
        match api.store.put_if(key.as_bytes(), to_stored(&current), mod_rev).await? {
            Written::Done(rev) => return Ok(with_rv(current, rev)),
            Written::Conflict => continue,
        }
    }
    Err(ApiError::new(409, "Conflict", format!("namespace {name:?} kept changing while being finalized")))
}

/// Deletes everything a list with the same parameters returns; answers that list.
pub async fn delete_collection(
    api: &Api,
    res: &'static Resource,
    ns: Option<&str>,
    options: &Value,
    params: &Params,
) -> Result<Value, ApiError> {
    if !res.strategy.deletecollection() {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource (DELETE {})",
            res.plural
        )));
    }
    let listed = list(api, res, ns, params).await?;
    let mut deleted = Vec::new();
    for item in listed["items"].as_array().into_iter().flatten() {
        let Some(name) = meta_str(item, "name") else { continue };
        match delete(api, res, ns, name, options, params).await {
            Ok(_) => deleted.push(item.clone()),
            Err(e) if e.code == 404 => {}
            // What may never be deleted (the built-in priority classes) stays, and the rest goes.
            Err(_) if res.strategy.check_delete(item).is_err() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": listed["metadata"]["resourceVersion"]},
        "items": deleted,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_views_carry_replicas_and_selector() {
        let d = json!({"metadata": {"name": "d", "namespace": "n", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}}}, "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!((s["spec"]["replicas"].clone(), s["status"]["replicas"].clone()), (json!(3), json!(2)));
        assert_eq!(s["status"]["selector"], "app=nginx");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }
}

/// The pods' `eviction` subresource (policy/v1 Eviction), as `kubectl drain` uses it: a pod
/// covered by a PodDisruptionBudget is deleted only if the budget allows a disruption, which the
/// eviction spends (recording the pod in `status.disruptedPods`, by a write conditioned on the
/// budget's version, so two evictions never spend one disruption); otherwise 429. A pod that is
/// not running (pending, finished, or already being deleted) is deleted whatever its budget,
/// and so is a not-ready pod while its budget is met (the IfHealthyBudget policy).
pub async fn evict(api: &Api, res: &Resource, ns: Option<&str>, name: &str, body: Value) -> Result<Value, ApiError> {
    let options = body.get("deleteOptions").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let too_many = |why: String| {
        let mut e =
            ApiError::new(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": why}]}));
        e
    };
    for _ in 0..UPDATE_ATTEMPTS_MAX {
        let (pod, _) = get(api, res, ns, name).await?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
        let exempt = is_deleting(&pod) || matches!(phase, "Succeeded" | "Failed" | "Pending");
        if !exempt {
            let labels = pod.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            let listed = list(api, &kinds::pdb::RESOURCE, ns, &Params::default()).await?;
            let budgets: Vec<Value> = listed["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| {
                    b.pointer("/spec/selector")
                        .and_then(|s| LabelSelector::from_json(s).ok())
                        .is_some_and(|s| s.matches(&labels))
                })
                .cloned()
                .collect();
            if budgets.len() > 1 {
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some(budget) = budgets.into_iter().next() {
                let pdb_name = meta_str(&budget, "name").unwrap_or("").to_string();
                let status = budget.get("status").cloned().unwrap_or(json!({}));
                let n = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(0);
                let generation = budget.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
                if n("observedGeneration") < generation {
                    return Err(too_many(format!(
                        "The disruption budget {pdb_name} is still being processed by the server."
                    )));
                }
                let ready = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let always =
                    budget.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str) == Some("AlwaysAllow");
                let spend = ready || !(always || n("currentHealthy") >= n("desiredHealthy"));
                if spend {
                    if n("disruptionsAllowed") <= 0 {
                        return Err(too_many(format!(
                            "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                            n("desiredHealthy"),
                            n("currentHealthy")
                        )));
                    }
                    let mut spent = budget.clone();
                    spent["status"]["disruptionsAllowed"] = json!(n("disruptionsAllowed") - 1);
                    if !spent["status"]["disruptedPods"].is_object() {
                        spent["status"]["disruptedPods"] = json!({});
                    }
                    spent["status"]["disruptedPods"][name] = json!(super::objects::now_rfc3339());
                    match update(api, &kinds::pdb::RESOURCE, ns, &pdb_name, Some("status"), spent, &Params::default())
                        .await
                    {
                        Ok(_) => {}
                        // Spent by another eviction meanwhile: look again.
                        Err(e) if e.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        delete(api, res, ns, name, &options, &Params::default()).await?;
        return Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}));
    }
    Err(ApiError::new(409, "Conflict", format!("the disruption budget of pod {name:?} kept changing")))
}
