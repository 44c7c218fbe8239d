//! What the API server does to an object's body: decoding it as its Kubernetes type (which drops
//! and reports unknown fields), defaulting, validation, and the selectors lists and watches filter by.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::errors::{ApiError, Cause};
use super::kinds::{NameRule, SelectableField, META_FIELDS};
use super::resources::Resource;

/// Decodes `body` as `T` and encodes it again: the object as Kubernetes stores it. Returns it and
/// the paths of the fields `T` does not have.
pub fn typed<T: DeserializeOwned + Serialize>(body: &Value) -> Result<(Value, Vec<String>), String> {
    // Decoded plainly first; only a body that fails is decoded again, tracking the path that the
    // error names (the tracking costs a third of the decode on every write otherwise).
    let decoded: T = match T::deserialize(body) {
        Ok(d) => d,
        Err(_) => crate::decode::with_path(body)?,
    };
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

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub const DNS_LABEL_RULE: &str =
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
                              and must start and end with an alphanumeric character";
pub const DNS_SUBDOMAIN_RULE: &str =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
                                  '-' or '.', and must start and end with an alphanumeric character";

/// What is wrong with `name` under the resource's name rule, if anything.
pub fn name_error(resource: &Resource, name: &str) -> Option<String> {
    match resource.strategy.name_rule() {
        NameRule::Label if !is_dns_label(name) => Some(DNS_LABEL_RULE.into()),
        NameRule::Subdomain if !is_dns_subdomain(name) => Some(DNS_SUBDOMAIN_RULE.into()),
        // Kubernetes' ValidatePathSegmentName: anything a URL path segment can carry.
        NameRule::PathSegment if name == "." || name == ".." => Some(format!("may not be '{name}'")),
        NameRule::PathSegment => {
            ["/", "%"].iter().find(|bad| name.contains(*bad)).map(|bad| format!("may not contain '{bad}'"))
        }
        _ => None,
    }
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

pub fn check_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
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

/// Each element of the port list `ports` (at `at`) names a port in its `field`, 1 to 65535.
pub fn check_ports(ports: Option<&Value>, field: &str, at: &str, causes: &mut Vec<Cause>) {
    for (i, p) in ports.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let port = p.get(field).and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(format!("{at}[{i}].{field}"), port, "must be between 1 and 65535, inclusive"));
        }
    }
}

/// Semantic checks of a decoded object (replacing `old`, on an update); every bad field is named.
pub fn validate(resource: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_labels(obj.pointer("/metadata/labels"), "metadata.labels", &mut causes);
    if let Some(old) = old {
        let (uid, old_uid) = (obj.pointer("/metadata/uid"), old.pointer("/metadata/uid"));
        if let (Some(Value::String(new)), Some(old)) = (uid, old_uid) {
            if !new.is_empty() && Some(new.as_str()) != old.as_str() {
                causes.push(Cause::invalid("metadata.uid", new, "field is immutable"));
            }
        }
    }
    causes.extend(resource.strategy.validate(obj, old));
    causes
}

/// Whether anything but metadata and status differs: what `metadata.generation` counts changes
/// of (compared in place: the objects are not copied).
pub fn spec_changed(obj: &Value, old: &Value) -> bool {
    const NOT_SPEC: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let (Some(a), Some(b)) = (obj.as_object(), old.as_object()) else { return obj != old };
    let spec =
        |m: &'_ serde_json::Map<String, Value>| m.iter().filter(|(k, _)| !NOT_SPEC.contains(&k.as_str())).count();
    spec(a) != spec(b) || a.iter().any(|(k, v)| !NOT_SPEC.contains(&k.as_str()) && b.get(k) != Some(v))
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

/// A field selector over the fields a kind's lists can filter by: each requirement is the
/// field's place in the object, what an absent value reads as, whether it is negated, and the
/// value.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(&'static SelectableField, bool, String)>);

impl FieldSelector {
    pub fn parse(resource: &Resource, text: &str) -> Result<Self, String> {
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
            let known = META_FIELDS.iter().chain(resource.strategy.selectable_fields()).find(|f| f.name == field);
            let Some(known) = known else {
                return Err(format!("field label not supported: {field}"));
            };
            out.push((known, negated, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, negated, value)| {
            let actual = match obj.pointer(field.pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => field.absent.to_string(),
            };
            (actual == *value) != *negated
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
        let pods = super::super::resources::find("", "v1", "pods").unwrap();
        let nodes = super::super::resources::find("", "v1", "nodes").unwrap();
        assert!(FieldSelector::parse(pods, "spec.nodeName=n1,status.phase!=Pending").unwrap().matches(&pod));
        assert!(!FieldSelector::parse(pods, "metadata.name==q").unwrap().matches(&pod));
        assert!(FieldSelector::parse(pods, "spec.nodeName=").unwrap().matches(&json!({})));
        assert_eq!(FieldSelector::parse(pods, "spec.image=x").unwrap_err(), "field label not supported: spec.image");
        // A kind's own fields only; booleans read as Kubernetes prints them, absent as false.
        assert!(FieldSelector::parse(nodes, "spec.nodeName=n1").is_err());
        let cordoned = FieldSelector::parse(nodes, "spec.unschedulable=true").unwrap();
        assert!(cordoned.matches(&json!({"spec": {"unschedulable": true}})));
        assert!(!cordoned.matches(&json!({"spec": {}})));
        assert!(FieldSelector::parse(nodes, "spec.unschedulable!=true").unwrap().matches(&json!({})));
    }

    #[test]
    fn decoding_drops_unknown_fields_and_names_them() {
        let pods = super::super::resources::find("", "v1", "pods").unwrap();
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x", "bogus": 1}], "extra": true}});
        let (kept, unknown) = pods.strategy.decode(&body).unwrap();
        assert_eq!(unknown, vec!["spec.containers[0].bogus".to_string(), "spec.extra".to_string()]);
        assert!(kept.pointer("/spec/extra").is_none());
        let wrong = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": "eighty"}]}]}});
        let err = pods.strategy.decode(&wrong).unwrap_err();
        assert!(err.starts_with("spec.containers[0].ports[0].containerPort"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_field() {
        let deploy = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let obj = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": []}}}});
        let fields: Vec<String> = validate(deploy, &obj, None).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.template.metadata.labels", "spec.template.spec.containers"]);
        let ok = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert!(validate(deploy, &ok, None).is_empty());
        let mut other_uid = ok.clone();
        other_uid["metadata"]["uid"] = json!("b");
        let mut stored = ok.clone();
        stored["metadata"]["uid"] = json!("a");
        let fields: Vec<String> = validate(deploy, &other_uid, Some(&stored)).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["metadata.uid"]);
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
        pods.strategy.defaults(&mut pod);
        pods.strategy.prepare_for_create(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");

        // An empty strategy (what a typed client sends) is filled in; a Recreate one is left be.
        let deployments = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let mut deploy = json!({"spec": {"strategy": {}, "template": {"spec": {"containers": []}}}});
        deployments.strategy.defaults(&mut deploy);
        assert_eq!(
            deploy["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let mut recreate =
            json!({"spec": {"strategy": {"type": "Recreate"}, "template": {"spec": {"containers": []}}}});
        deployments.strategy.defaults(&mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    }
}
