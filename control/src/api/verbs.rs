//! The verbs on stored objects: get, list, create, update, patch, delete, deletecollection, and
//! the binding and scale subresources.

use base64::Engine as _;
use serde_json::{json, Value};

use super::alloc;
use super::errors::ApiError;
use super::objects::{self, FieldSelector, LabelSelector};
use super::resources::{self, Resource};
use super::store::{prefix_end, Also, Written};
use super::{Api, Params};

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

fn dry_run(params: &Params) -> bool {
    params.get("dryRun") == Some("All")
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
    pub fn from_params(params: &Params) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
        let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or(""))
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

/// How long a consistent list waits for the watch cache to catch up before reading the store.
const CACHE_FRESH_WAIT_MS: u64 = 1_000;

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
    let selectors = Selectors::from_params(params)?;
    let cache = api.cache(res);
    let revision = api.store.current_revision().await?;
    if !cache.wait_fresh(revision, std::time::Duration::from_millis(CACHE_FRESH_WAIT_MS)).await {
        return Ok(None);
    }
    let Some((objects, at)) = cache.list(&res.scope_prefix(ns)) else { return Ok(None) };
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": at.to_string()}});
    let mut out = serde_json::to_vec(&head).expect("a JSON value encodes");
    out.pop(); // the closing brace; the items follow
    out.extend_from_slice(b",\"items\":[");
    let mut first = true;
    for o in objects.iter().filter(|o| selectors.matches(o)) {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&o.json);
    }
    out.extend_from_slice(b"]}");
    Ok(Some(out))
}

/// A list, filtered, paginated with `limit` and `continue` over one store snapshot.
pub async fn list(api: &Api, res: &'static Resource, ns: Option<&str>, params: &Params) -> Result<Value, ApiError> {
    let selectors = Selectors::from_params(params)?;
    // resourceVersion=0 asks for any version: the watch cache's, when it has been built.
    if params.get("resourceVersion") == Some("0") && params.get("continue").is_none() {
        if let Some((objects, revision)) = api.cache(res).list(&res.scope_prefix(ns)) {
            let items: Vec<Value> = objects
                .iter()
                .filter(|o| selectors.matches(o))
                .map(|o| {
                    let mut item = o.value.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    item
                })
                .collect();
            return Ok(json!({
                "kind": format!("{}List", res.kind),
                "apiVersion": res.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            }));
        }
    }
    let limit: i64 = match params.get("limit") {
        Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        None => 0,
    };
    let prefix = res.scope_prefix(ns);
    let end = prefix_end(prefix.as_bytes());
    let (mut revision, mut from) = (0i64, prefix.as_bytes().to_vec());
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
    let serializable = params.get("resourceVersion") == Some("0") && revision == 0;
    let mut items = Vec::new();
    let mut next: Option<Vec<u8>> = None;
    loop {
        let want = if limit > 0 { (limit - items.len() as i64).max(1) } else { LIST_PAGE_ITEMS_MAX };
        let page = match api.store.range(&from, &end, revision, want, serializable).await {
            Ok(p) => p,
            Err(super::store::StoreError::Compacted) => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can \
                     start a new list without the continue parameter.",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if revision == 0 {
            revision = page.revision;
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
    let (mut obj, unknown) = objects::decode(res, &body)
        .map_err(|e| ApiError::bad_request(format!("error decoding {} {name:?}: {e}", res.kind)))?;
    let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    if !unknown.is_empty() && params.get("fieldValidation") == Some("Strict") {
        return Err(ApiError::bad_request(format!("strict decoding error: {}", warnings.join(", "))));
    }
    objects::apply_defaults(res, &mut obj);
    Ok((obj, warnings))
}

/// Validates `obj`, which replaces `old` if that is given; a service first takes over the values
/// `old` had allocated.
fn check_valid(api: &Api, res: &Resource, old: Option<&Value>, obj: &mut Value, name: &str) -> Result<(), ApiError> {
    let mut causes = if res.kind == "Service" { alloc::prepare(&api.ranges, old, obj) } else { Vec::new() };
    causes.extend(objects::validate(res, obj));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.kind, res.group, name, causes))
    }
}

/// What `obj` (replacing `old`) claims and releases in the store beside its own write: a service's
/// cluster IP and node ports, filled in where still unset.
async fn allocations(api: &Api, res: &Resource, old: Option<&Value>, obj: &mut Value) -> Result<Vec<Also>, ApiError> {
    if res.kind == "Service" {
        alloc::claim(api, old, obj).await
    } else {
        Ok(Vec::new())
    }
}

/// What deleting `obj` gives back.
fn releases(res: &Resource, obj: &Value) -> Vec<Also> {
    if res.kind == "Service" {
        alloc::release(obj)
    } else {
        Vec::new()
    }
}

async fn namespace_accepts_content(api: &Api, ns: &str) -> Result<(), ApiError> {
    let namespaces = resources::find("", "v1", "namespaces").expect("namespaces are served");
    let (obj, _) = get(api, namespaces, None, ns).await?;
    if obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("unable to create new content in namespace {ns} because it is being terminated"),
        ));
    }
    Ok(())
}

pub async fn create(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    body: Value,
    params: &Params,
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
    if res.has("status") && res.kind != "Namespace" && res.kind != "Pod" {
        // Status is the controllers' to write, through /status.
        if let Some(map) = obj.as_object_mut() {
            map.remove("status");
        }
    }
    {
        let meta = obj["metadata"].as_object_mut().expect("admitted objects have metadata");
        for f in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            meta.remove(f);
        }
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns.unwrap_or("default")));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
        if obj_has_spec(&obj) {
            obj["metadata"]["generation"] = json!(1);
        }
    }
    if let Some(ns) = ns.filter(|_| res.namespaced) {
        namespace_accepts_content(api, ns).await?;
    }
    // A generated name may be taken, and so may an allocation picked while another replica
    // picked the same: either way, try again.
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
        check_valid(api, res, None, &mut obj, &this_name)?;
        let also = allocations(api, res, None, &mut obj).await?;
        if dry_run(params) {
            return Ok((obj, warnings));
        }
        let key = res.key(ns, &this_name);
        match api.store.write_if(key.as_bytes(), 0, Some(to_stored(&obj)), also).await? {
            Written::Done(rev) => return Ok((with_rv(obj, rev), warnings)),
            Written::Conflict if name.is_empty() => continue,
            Written::Conflict => {
                if api.store.get(key.as_bytes()).await?.0.is_some() {
                    return Err(ApiError::already_exists(res.plural, res.group, &this_name));
                }
            }
        }
    }
    Err(ApiError::internal(format!(
        "no free name (generateName {generate:?}) or allocation after {CREATE_ATTEMPTS_MAX} attempts"
    )))
}

fn obj_has_spec(obj: &Value) -> bool {
    obj.get("spec").is_some()
}

/// Read-modify-write of one object. `change` builds the new object from the current one (the
/// server's own metadata is kept whatever it says) and may name the version it expects; when
/// it does (the client's resourceVersion) a different current version is a 409, otherwise the
/// write is retried on the newer version.
async fn modify(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    params: &Params,
    mut change: impl FnMut(&Value) -> Result<(Value, Option<String>), ApiError>,
) -> Result<(Value, Vec<String>), ApiError> {
    for attempt in 0..UPDATE_ATTEMPTS_MAX {
        // The first read may come from the member's own state (the write's condition catches a
        // stale one); what it cannot settle — absent, or not the client's version — is read
        // again, linearizably, before the client is told.
        let first = attempt == 0;
        let (kv, _) = api.store.get_at(res.key(ns, name).as_bytes(), first).await?;
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
        let (mut obj, warnings) = admit(res, body, name, params)?;
        match sub {
            // Only status changes through /status.
            Some("status") => {
                let status = obj.get("status").cloned();
                obj = current.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        obj.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            // The main resource never changes status where a /status exists.
            _ if res.has("status") => match current.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    obj.as_object_mut().map(|m| m.remove("status"));
                }
            },
            _ => {}
        }
        // The server's own metadata stays as it was.
        for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
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
        check_valid(api, res, Some(&current), &mut obj, name)?;
        if obj_has_spec(&obj) && objects::spec_part(&obj) != objects::spec_part(&current) {
            let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        let terminating = obj.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
        let finalizers_left =
            obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let deleting = terminating && !finalizers_left;
        let also =
            if deleting { releases(res, &current) } else { allocations(api, res, Some(&current), &mut obj).await? };
        if dry_run(params) {
            return Ok((with_rv(obj, mod_rev), warnings));
        }
        let key = res.key(ns, name);
        // The last finalizer gone from an object being deleted deletes it now.
        let value = if deleting { None } else { Some(to_stored(&obj)) };
        let written = api.store.write_if(key.as_bytes(), mod_rev, value, also).await?;
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
        let (obj, w) = modify(api, res, ns, name, None, params, |current| {
            let mut next = current.clone();
            next["spec"]["replicas"] = replicas.clone();
            Ok((next, expected.clone()))
        })
        .await?;
        return Ok((scale_of(&obj), w));
    }
    let expected = body_rv(&body);
    modify(api, res, ns, name, sub, params, |_| Ok((body.clone(), expected.clone()))).await
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
    let apply = |target: &Value| -> Result<Value, ApiError> {
        let mut doc = target.clone();
        match media {
            "application/merge-patch+json" => json_patch::merge(&mut doc, &patch),
            "application/strategic-merge-patch+json" => strategic_merge(&mut doc, &patch, ""),
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
                             application/strategic-merge-patch+json"
                    ),
                ))
            }
        }
        Ok(doc)
    };
    // A resourceVersion in the patch itself is a precondition.
    let expected = body_rv(&patch);
    if sub == Some("scale") {
        let (obj, w) = modify(api, res, ns, name, None, params, |current| {
            let scale = apply(&scale_of(current))?;
            let mut next = current.clone();
            next["spec"]["replicas"] = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            Ok((next, expected.clone()))
        })
        .await?;
        return Ok((scale_of(&obj), w));
    }
    modify(api, res, ns, name, sub, params, |current| {
        let mut next = apply(current)?;
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

/// The key a strategic merge patch merges list items of `field` by, for the built-in types.
fn merge_key(path: &str, field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases" => Some(if field == "hostAliases" { "ip" } else { "name" }),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ports" if path.ends_with("containers") || path.contains("containers[") => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Kubernetes' strategic merge patch for the built-in types: maps merge, `null` deletes, lists
/// with a merge key merge item by item (`$patch: delete` removes one), other lists are replaced.
fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.as_object_mut().map(|m| m.remove("$patch"));
        *doc = replacement;
        return;
    }
    if !doc.is_object() {
        *doc = json!({});
    }
    let d = doc.as_object_mut().expect("made an object above");
    for (key, value) in p {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                d.remove(key);
            }
            Value::Array(items) => match merge_key(path, key) {
                Some(mk) => {
                    let existing = d.entry(key.clone()).or_insert_with(|| json!([]));
                    if !existing.is_array() {
                        *existing = json!([]);
                    }
                    let list = existing.as_array_mut().expect("made an array above");
                    for item in items {
                        let id = item.get(mk).cloned();
                        let at = id.as_ref().and_then(|id| list.iter().position(|x| x.get(mk) == Some(id)));
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (at, delete) {
                            (Some(i), true) => {
                                list.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => strategic_merge(&mut list[i], item, &format!("{path}.{key}[{i}]")),
                            (None, false) => list.push(item.clone()),
                        }
                    }
                }
                None => {
                    d.insert(key.clone(), value.clone());
                }
            },
            Value::Object(_) => {
                let child = d.entry(key.clone()).or_insert(Value::Null);
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                strategic_merge(child, value, &child_path);
            }
            other => {
                d.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
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

/// `POST pods/<name>/binding`: puts the pod on the target node, once.
pub async fn bind(api: &Api, res: &Resource, ns: Option<&str>, name: &str, body: Value) -> Result<Value, ApiError> {
    let node = body.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid("Binding", "", name, vec![super::errors::Cause::required("target.name")]));
    }
    modify(api, res, ns, name, None, &Params::default(), |current| {
        if let Some(existing) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(res.plural, res.group, name).with_message(format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \
                 \"{existing}\""
            )));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        Ok((next, None))
    })
    .await?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

impl ApiError {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// Deletes one object, or marks it for deletion while finalizers (or a node's graceful stop of a
/// pod) remain. Returns the object as it was, or as marked.
pub async fn delete(
    api: &Api,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    options: &Value,
    params: &Params,
) -> Result<Value, ApiError> {
    let grace: Option<i64> = options
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
        let mut finalizers: Vec<Value> =
            current.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
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
        let on_node = current.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let pod_grace = if res.kind == "Pod" && on_node {
            let g = grace.or_else(|| current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64));
            g.filter(|g| *g > 0)
        } else {
            None
        };
        let key = res.key(ns, name);
        if res.kind == "Namespace" && !dry_run(params) {
            delete_namespace_contents(api, name).await?;
        }
        if finalizers.is_empty() && pod_grace.is_none() {
            if dry_run(params) {
                return Ok(current);
            }
            match api.store.write_if(key.as_bytes(), mod_rev, None, releases(res, &current)).await? {
                Written::Done(_) => return Ok(current),
                Written::Conflict => continue,
            }
        }
        // Marked, not yet deleted: finalizers or the node's graceful stop finish it.
        let mut marked = current.clone();
        let already = marked.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
        if !already {
            let when = chrono::Utc::now() + chrono::Duration::seconds(pod_grace.unwrap_or(0));
            marked["metadata"]["deletionTimestamp"] = json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace.unwrap_or(0));
        }
        marked["metadata"]["finalizers"] = json!(finalizers);
        if finalizers.is_empty() {
            marked["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
        }
        if res.kind == "Namespace" {
            marked["status"]["phase"] = json!("Terminating");
        }
        if dry_run(params) {
            return Ok(marked);
        }
        match api.store.put_if(key.as_bytes(), to_stored(&marked), mod_rev).await? {
            Written::Done(rev) => return Ok(with_rv(marked, rev)),
            Written::Conflict => continue,
        }
    }
    Err(ApiError::new(409, "Conflict", format!("{} {name:?} kept changing while being deleted", res.plural)))
}

/// Removes every object in a namespace (the namespace's own deletion follows).
async fn delete_namespace_contents(api: &Api, ns: &str) -> Result<(), ApiError> {
    for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let prefix = res.scope_prefix(Some(ns));
        let end = prefix_end(prefix.as_bytes());
        if res.kind == "Service" {
            // Services go one by one, each with its allocations, so their addresses and node
            // ports are free again for random picks too; one changed meanwhile is left to the
            // range delete below (and its allocations to a later claim of their values).
            for kv in api.store.range(prefix.as_bytes(), &end, 0, 0, false).await?.kvs {
                let Ok(svc) = from_kv(&kv) else { continue };
                api.store.write_if(&kv.key, kv.mod_revision, None, releases(res, &svc)).await?;
            }
        }
        api.store.delete_range(prefix.as_bytes(), &end).await?;
    }
    Ok(())
}

pub async fn delete_collection(
    api: &Api,
    res: &'static Resource,
    ns: Option<&str>,
    options: &Value,
    params: &Params,
) -> Result<Value, ApiError> {
    let listed = list(api, res, ns, params).await?;
    let mut deleted = Vec::new();
    for item in listed["items"].as_array().into_iter().flatten() {
        let Some(name) = meta_str(item, "name") else { continue };
        match delete(api, res, ns, name, options, params).await {
            Ok(obj) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
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
    fn strategic_merge_merges_containers_by_name_and_replaces_plain_lists() {
        let mut doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:1"}]}});
        let patch = json!({"spec": {"containers": [
            {"name": "b", "image": "b:2"},
            {"name": "c", "image": "c:1"},
            {"name": "a", "args": ["y", "z"]}]}});
        strategic_merge(&mut doc, &patch, "");
        assert_eq!(
            doc,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:1", "args": ["y", "z"]},
                {"name": "b", "image": "b:2"},
                {"name": "c", "image": "c:1"}]}})
        );
        strategic_merge(&mut doc, &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}), "");
        let names: Vec<&str> =
            doc["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["a", "c"]);
        strategic_merge(&mut doc, &json!({"metadata": {"labels": {"x": "1"}}, "spec": null}), "");
        assert_eq!(doc, json!({"metadata": {"labels": {"x": "1"}}}));
    }

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
