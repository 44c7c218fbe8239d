//! What the API server does to an object's body: decoding it as its Kubernetes type (which drops
//! and reports unknown fields), defaulting, validation, and the selectors lists and watches filter by.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::errors::{ApiError, Cause};
use super::resources::Resource;

/// Decodes `body` as `T` and encodes it again: the object as Kubernetes stores it. Returns it and
/// the paths of the fields `T` does not have.
fn typed<T: DeserializeOwned + Serialize>(body: &Value) -> Result<(Value, Vec<String>), String> {
    let decoded: T = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    let encoded = serde_json::to_value(&decoded).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(body, &encoded, "", &mut unknown);
    Ok((encoded, unknown))
}

/// Paths present (and not null) in `sent` but absent from `kept`.
fn unknown_fields(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, value) in s {
                let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match k.get(key) {
                    Some(kv) => unknown_fields(value, kv, &p, out),
                    None if !value.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (sv, kv)) in s.iter().zip(k.iter()).enumerate() {
                unknown_fields(sv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a body as the resource's type. Unknown fields are dropped; their paths are returned.
pub fn decode(resource: &Resource, body: &Value) -> Result<(Value, Vec<String>), String> {
    use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
    match resource.kind {
        "Namespace" => typed::<core::Namespace>(body),
        "Node" => typed::<core::Node>(body),
        "Pod" => typed::<core::Pod>(body),
        "Service" => typed::<core::Service>(body),
        "Endpoints" => typed::<core::Endpoints>(body),
        "ConfigMap" => typed::<core::ConfigMap>(body),
        "Secret" => typed::<core::Secret>(body),
        "Event" => typed::<core::Event>(body),
        "ServiceAccount" => typed::<core::ServiceAccount>(body),
        "Deployment" => typed::<apps::Deployment>(body),
        "ReplicaSet" => typed::<apps::ReplicaSet>(body),
        "DaemonSet" => typed::<apps::DaemonSet>(body),
        "StatefulSet" => typed::<apps::StatefulSet>(body),
        "ControllerRevision" => typed::<apps::ControllerRevision>(body),
        "Lease" => typed::<coordination::Lease>(body),
        other => Err(format!("no decoder for kind {other}")),
    }
}

/// Fills what the request left out: apiVersion and kind from the URL (a mismatch is an error).
pub fn check_type_meta(resource: &Resource, body: &mut Value) -> Result<(), ApiError> {
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let expected = resource.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None => {
            obj.insert("apiVersion".into(), json!(expected));
        }
        Some(v) if v == expected => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None => {
            obj.insert("kind".into(), json!(resource.kind));
        }
        Some(k) if k == resource.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )))
        }
    }
    if !obj.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    obj.entry("metadata").or_insert_with(|| json!({}));
    Ok(())
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Five characters from Kubernetes' alphabet for generated names (no vowels, no look-alikes).
pub fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
                              and must start and end with an alphanumeric character";
const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
                                  '-' or '.', and must start and end with an alphanumeric character";

/// The name rule of a resource: namespaces and services are DNS labels, the rest subdomains.
pub fn name_error(resource: &Resource, name: &str) -> Option<String> {
    let label_only = matches!(resource.kind, "Namespace" | "Service");
    if label_only && !is_dns_label(name) {
        return Some(DNS_LABEL_RULE.into());
    }
    if !label_only && !is_dns_subdomain(name) {
        return Some(DNS_SUBDOMAIN_RULE.into());
    }
    None
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn label_key_ok(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    }
}

fn label_value_ok(value: &str) -> bool {
    value.is_empty() || is_qualified_name_part(value)
}

fn check_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(map) = labels.and_then(Value::as_object) else { return };
    for (k, v) in map {
        if !label_key_ok(k) {
            causes.push(Cause::invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        let v = v.as_str().unwrap_or_default();
        if !label_value_ok(v) {
            causes.push(Cause::invalid(field, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
}

fn check_containers(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push(Cause::required(format!("{field}.containers"))),
        Some(list) if list.is_empty() => causes.push(Cause::required(format!("{field}.containers"))),
        Some(list) => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in list.iter().enumerate() {
                let at = format!("{field}.containers[{i}]");
                match c.get("name").and_then(Value::as_str) {
                    None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
                    Some(n) if !is_dns_label(n) => causes.push(Cause::invalid(format!("{at}.name"), n, DNS_LABEL_RULE)),
                    Some(n) if !seen.insert(n.to_string()) => causes.push(Cause::duplicate(format!("{at}.name"), n)),
                    Some(_) => {}
                }
                if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{at}.image")));
                }
                check_ports(c.get("ports"), "containerPort", &format!("{at}.ports"), causes);
            }
        }
    }
}

/// The selector's matchLabels/matchExpressions must select the template's labels.
fn check_workload(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    let selector = spec.get("selector");
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels").and_then(Value::as_object).is_none_or(Map::is_empty)
            && s.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty)
    });
    if empty {
        causes.push(Cause::required("spec.selector"));
    }
    let template_labels = spec.pointer("/template/metadata/labels").cloned().unwrap_or(json!({}));
    if let Some(sel) = selector.filter(|_| !empty) {
        match LabelSelector::from_json(sel) {
            Ok(s) if !s.matches(&template_labels) => causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                template_labels.to_string(),
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => causes.push(Cause::invalid("spec.selector", sel.to_string(), e)),
        }
    }
    check_labels(spec.pointer("/template/metadata/labels"), "spec.template.metadata.labels", causes);
    check_containers(spec.pointer("/template/spec").unwrap_or(&json!({})), "spec.template.spec", causes);
}

/// Each element of the port list `ports` (at `at`) names a port in its `field`, 1 to 65535.
fn check_ports(ports: Option<&Value>, field: &str, at: &str, causes: &mut Vec<Cause>) {
    for (i, p) in ports.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let port = p.get(field).and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(format!("{at}[{i}].{field}"), port, "must be between 1 and 65535, inclusive"));
        }
    }
}

/// Semantic checks of a decoded object; every bad field is named.
pub fn validate(resource: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_labels(obj.pointer("/metadata/labels"), "metadata.labels", &mut causes);
    match resource.kind {
        "Pod" => check_containers(obj.get("spec").unwrap_or(&json!({})), "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => check_workload(obj, &mut causes),
        "Service" => {
            check_ports(obj.pointer("/spec/ports"), "port", "spec.ports", &mut causes);
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                for key in obj.get(field).and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                    if !ok {
                        causes.push(Cause::invalid(
                            format!("{field}[{key}]"),
                            key,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// Defaults the update strategy at `at` to RollingUpdate, and, when it is one, the fields of its
/// `rollingUpdate` to `rolling`.
fn default_rolling_update(obj: &mut Value, at: &str, rolling: &[(&str, Value)]) {
    ensure_object(obj, at);
    set_default(obj, &format!("{at}/type"), json!("RollingUpdate"));
    if obj.pointer(&format!("{at}/type")) == Some(&json!("RollingUpdate")) {
        let at = format!("{at}/rollingUpdate");
        ensure_object(obj, &at);
        for (field, value) in rolling {
            set_default(obj, &format!("{at}/{field}"), value.clone());
        }
    }
}

fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    if let Some(Value::Object(map)) = obj.pointer_mut(parent) {
        map.entry(key.to_string()).or_insert(value);
    }
}

fn ensure_object(obj: &mut Value, pointer: &str) {
    let mut at = String::new();
    for part in pointer.split('/').skip(1) {
        let parent = at.clone();
        at = format!("{at}/{part}");
        // Absent or null (what `field: null` in a manifest sends) alike.
        if obj.pointer(&at).is_none_or(Value::is_null) {
            if let Some(Value::Object(map)) = obj.pointer_mut(if parent.is_empty() { "" } else { &parent }) {
                map.insert(part.to_string(), json!({}));
            }
        }
    }
}

fn default_pod_spec(obj: &mut Value, at: &str) {
    if obj.pointer(at).is_none() {
        return;
    }
    set_default(obj, &format!("{at}/restartPolicy"), json!("Always"));
    set_default(obj, &format!("{at}/dnsPolicy"), json!("ClusterFirst"));
    set_default(obj, &format!("{at}/schedulerName"), json!("default-scheduler"));
    set_default(obj, &format!("{at}/terminationGracePeriodSeconds"), json!(30));
    set_default(obj, &format!("{at}/securityContext"), json!({}));
    let Some(containers) = obj.pointer_mut(&format!("{at}/containers")).and_then(Value::as_array_mut) else {
        return;
    };
    for c in containers {
        let Some(map) = c.as_object_mut() else { continue };
        map.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
        map.entry("terminationMessagePolicy").or_insert(json!("File"));
        let image = map.get("image").and_then(Value::as_str).unwrap_or_default();
        // The tag is what follows the last ':' after the last '/'.
        let tag = image.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t);
        let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") { "IfNotPresent" } else { "Always" };
        map.entry("imagePullPolicy").or_insert(json!(pull));
        map.entry("resources").or_insert(json!({}));
        if let Some(ports) = map.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
            }
        }
    }
}

/// Kubernetes' defaults for the fields a user usually leaves out.
pub fn apply_defaults(resource: &Resource, obj: &mut Value) {
    match resource.kind {
        "Pod" => {
            default_pod_spec(obj, "/spec");
            ensure_object(obj, "/status");
            set_default(obj, "/status/phase", json!("Pending"));
        }
        "Deployment" => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
            default_rolling_update(
                obj,
                "/spec/strategy",
                &[("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
            );
            default_pod_spec(obj, "/spec/template/spec");
        }
        "ReplicaSet" => {
            set_default(obj, "/spec/replicas", json!(1));
            default_pod_spec(obj, "/spec/template/spec");
        }
        "StatefulSet" => {
            set_default(obj, "/spec/replicas", json!(1));
            default_rolling_update(obj, "/spec/updateStrategy", &[("partition", json!(0))]);
            default_pod_spec(obj, "/spec/template/spec");
        }
        "DaemonSet" => {
            default_rolling_update(
                obj,
                "/spec/updateStrategy",
                &[("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
            );
            default_pod_spec(obj, "/spec/template/spec");
        }
        "Service" => {
            set_default(obj, "/spec/type", json!("ClusterIP"));
            set_default(obj, "/spec/sessionAffinity", json!("None"));
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert(json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    p.entry("targetPort").or_insert(port);
                }
            }
        }
        "Secret" => set_default(obj, "/type", json!("Opaque")),
        "Namespace" => {
            ensure_object(obj, "/spec");
            set_default(obj, "/spec/finalizers", json!(["kubernetes"]));
            ensure_object(obj, "/status");
            set_default(obj, "/status/phase", json!("Active"));
        }
        _ => {}
    }
}

/// Everything but metadata and status: what `metadata.generation` counts changes of.
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A label selector, parsed from a query (`a=b,c in (d,e),!f`) or a `LabelSelector` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            // Split at the next comma outside parentheses.
            let mut depth = 0;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let part = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("").trim();
            reqs.push(Self::requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    fn requirement(part: &str) -> Result<Requirement, String> {
        let bad = || format!("unable to parse requirement: {part:?}");
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            check_key(key)?;
            return Ok(Requirement::NotExists(key.into()));
        }
        for (op, neg) in [(" notin ", true), (" in ", false)] {
            if let Some((key, values)) = part.split_once(op) {
                let key = key.trim();
                check_key(key)?;
                let values = values.trim();
                let inner = values.strip_prefix('(').and_then(|v| v.strip_suffix(')')).ok_or_else(bad)?;
                let list: Vec<String> =
                    inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
                if list.is_empty() {
                    return Err(format!("{part:?}: for 'in', 'notin' operators, values set can't be empty"));
                }
                for v in &list {
                    check_value(v)?;
                }
                return Ok(if neg { Requirement::NotIn(key.into(), list) } else { Requirement::In(key.into(), list) });
            }
        }
        for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
            if let Some((key, value)) = part.split_once(op) {
                let (key, value) = (key.trim(), value.trim());
                check_key(key)?;
                check_value(value)?;
                return Ok(if neg {
                    Requirement::NotEquals(key.into(), value.into())
                } else {
                    Requirement::Equals(key.into(), value.into())
                });
            }
        }
        check_key(part)?;
        Ok(Requirement::Exists(part.into()))
    }

    /// A `metav1.LabelSelector` (matchLabels and matchExpressions).
    pub fn from_json(sel: &Value) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for (k, v) in sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
            reqs.push(Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
            reqs.push(match op {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::NotExists(key),
                "In" | "NotIn" => return Err(format!("{op}: values must be non-empty")),
                "Exists" | "DoesNotExist" => return Err(format!("{op}: values must be empty")),
                other => return Err(format!("{other:?} is not a valid selector operator")),
            });
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` (a JSON object of strings, or null) satisfies every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if label_key_ok(key) {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn check_value(value: &str) -> Result<(), String> {
    if label_value_ok(value) {
        Ok(())
    } else {
        Err(format!("invalid label value: {value:?}"))
    }
}

/// A field selector over the fields lists can filter by.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

const SELECTABLE_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("spec.nodeName", "/spec/nodeName"),
    ("status.phase", "/status/phase"),
    // Events, as `kubectl describe` selects them.
    ("involvedObject.kind", "/involvedObject/kind"),
    ("involvedObject.namespace", "/involvedObject/namespace"),
    ("involvedObject.name", "/involvedObject/name"),
    ("involvedObject.uid", "/involvedObject/uid"),
    ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    ("involvedObject.resourceVersion", "/involvedObject/resourceVersion"),
    ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    ("reason", "/reason"),
    ("type", "/type"),
];

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, negated, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!("invalid selector: '{part}'; can't understand '{part}'"));
            };
            let field = field.trim();
            if !SELECTABLE_FIELDS.iter().any(|(f, _)| *f == field) {
                return Err(format!("field label not supported: {field}"));
            }
            out.push((field.to_string(), negated, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, negated, value)| {
            let pointer = SELECTABLE_FIELDS.iter().find(|(f, _)| f == field).map(|(_, p)| *p).unwrap_or("");
            let actual = obj.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) != *negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_support_every_operator() {
        let labels = json!({"app": "web", "tier": "front", "env": "prod"});
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("tier in (front, back)", true),
            ("tier notin (front,back)", false),
            ("missing notin (x)", true),
            ("app=web,env in (prod),!debug", true),
            ("app=web,env=dev", false),
            ("", true),
        ];
        for (text, want) in cases {
            let s = LabelSelector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.matches(&labels), want, "{text}");
        }
        for bad in ["app in ()", "app in x", "=x", "a b=c", "app=-x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn selector_objects_match_like_their_text() {
        let sel = json!({"matchLabels": {"app": "nginx"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "debug", "operator": "DoesNotExist"}]});
        let s = LabelSelector::from_json(&sel).unwrap();
        assert!(s.matches(&json!({"app": "nginx", "tier": "a"})));
        assert!(!s.matches(&json!({"app": "nginx", "tier": "c"})));
        assert!(!s.matches(&json!({"app": "nginx", "tier": "a", "debug": "1"})));
        assert!(LabelSelector::from_json(&json!({"matchExpressions": [{"key": "a", "operator": "In"}]})).is_err());
    }

    #[test]
    fn field_selectors_know_their_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("metadata.name==q").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&json!({})));
        assert_eq!(FieldSelector::parse("spec.image=x").unwrap_err(), "field label not supported: spec.image");
    }

    #[test]
    fn decoding_drops_unknown_fields_and_names_them() {
        let pods = super::super::resources::find("", "v1", "pods").unwrap();
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x", "bogus": 1}], "extra": true}});
        let (kept, unknown) = decode(pods, &body).unwrap();
        assert_eq!(unknown, vec!["spec.containers[0].bogus".to_string(), "spec.extra".to_string()]);
        assert!(kept.pointer("/spec/extra").is_none());
        let wrong = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": "eighty"}]}]}});
        let err = decode(pods, &wrong).unwrap_err();
        assert!(err.starts_with("spec.containers[0].ports[0].containerPort"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_field() {
        let deploy = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let obj = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": []}}}});
        let fields: Vec<String> = validate(deploy, &obj).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.template.metadata.labels", "spec.template.spec.containers"]);
        let ok = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(validate(deploy, &ok).is_empty());
        let svc = super::super::resources::find("", "v1", "services").unwrap();
        assert!(name_error(svc, "a.b").is_some());
        assert!(name_error(deploy, "a.b").is_none());
        assert!(name_error(deploy, "A").is_some());
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let pods = super::super::resources::find("", "v1", "pods").unwrap();
        let mut pod = json!({"spec": {"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "nginx:1.14.2"}, {"name": "b", "image": "nginx"}]}});
        apply_defaults(pods, &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");

        // An empty strategy (what a typed client sends) is filled in; a Recreate one is left be.
        let deployments = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let mut deploy = json!({"spec": {"strategy": {}, "template": {"spec": {"containers": []}}}});
        apply_defaults(deployments, &mut deploy);
        assert_eq!(
            deploy["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let mut recreate =
            json!({"spec": {"strategy": {"type": "Recreate"}, "template": {"spec": {"containers": []}}}});
        apply_defaults(deployments, &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    }
}
