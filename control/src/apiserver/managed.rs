//! Field management, as Kubernetes' structured-merge-diff does it: every write records which
//! manager set which fields (`metadata.managedFields`, in the FieldsV1 format), and server-side
//! apply (`application/apply-patch+yaml`) merges a manager's configuration into the object by the
//! types' list and map semantics, removes the fields the manager applied before and no longer
//! does (unless another manager owns them), and refuses, with 409 naming the fields and their
//! managers, to change fields another manager owns unless forced.
//!
//! A field set is a tree keyed by FieldsV1 path elements (`f:<field>`, `k:<key fields as JSON>`
//! for items of list-maps, `v:<value as JSON>` for items of sets); a node that is itself in the set
//! (a leaf, a list item, a map entry) is a *member* (`.` in FieldsV1).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::errors::ApiError;
use super::resources::Resource;
use super::schema::{Resolved, Shape};

/// Update managers kept apart before the oldest are merged into one, as Kubernetes caps them.
const UPDATE_MANAGERS_MAX: usize = 10;
/// The manager the oldest update managers are merged into beyond the cap.
const ANCIENT_MANAGER: &str = "ancient-changes";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child(&mut self, element: String) -> &mut FieldSet {
        self.children.entry(element).or_default()
    }

    fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for e in path {
            node = node.child(e.clone());
        }
        node.member = true;
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, v) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(v),
                None => v.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, v) in &self.children {
            let rest = match other.children.get(k) {
                Some(theirs) => v.difference(theirs),
                None => v.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(k.clone(), rest);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (k, v) in &self.children {
            if let Some(theirs) = other.children.get(k) {
                let both = v.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(k.clone(), both);
                }
            }
        }
        out
    }

    /// `self` without anything at or under the members of `other` (structured-merge-diff's
    /// RecursiveDifference).
    pub fn recursive_difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, v) in &self.children {
            let rest = match other.children.get(k) {
                Some(theirs) if theirs.member => continue,
                Some(theirs) => v.recursive_difference(theirs),
                None => v.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(k.clone(), rest);
            }
        }
        out
    }

    fn get(&self, element: &str) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// FieldsV1: `{}` for a member leaf, `.` beside children for a member with children.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, v) in &self.children {
            m.insert(k.clone(), v.to_fields_v1());
        }
        Value::Object(m)
    }

    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let Value::Object(m) = v else { return Err(format!("fieldsV1 is not an object: {v}")) };
        let mut out = FieldSet { member: m.is_empty(), children: BTreeMap::new() };
        for (k, child) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            if !(k.starts_with("f:") || k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:")) {
                return Err(format!("fieldsV1 has an unknown path element {k:?}"));
            }
            out.children.insert(k.clone(), FieldSet::from_fields_v1(child)?);
        }
        Ok(out)
    }

    /// The set's member paths as Kubernetes prints them in conflicts (`.spec.replicas`,
    /// `.spec.containers[name="c"].image`).
    fn paths(&self, prefix: &str, out: &mut Vec<String>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        for (k, v) in &self.children {
            let step = match k.split_at(2) {
                ("f:", name) => format!(".{name}"),
                ("k:", key) => {
                    let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                    let parts: Vec<String> = fields.iter().map(|(f, v)| format!("{f}={v}")).collect();
                    format!("[{}]", parts.join(","))
                }
                ("v:", value) => format!("[={value}]"),
                (_, index) => format!("[{index}]"),
            };
            v.paths(&format!("{prefix}{step}"), out);
        }
    }
}

fn field_element(name: &str) -> String {
    format!("f:{name}")
}

/// The path element of a list item, by the list's kind; None where items are not tracked apart.
fn item_element(item: &Value, list_type: &str, keys: &[&str]) -> Option<String> {
    match list_type {
        "map" if !keys.is_empty() => {
            let mut key = Map::new();
            for k in keys {
                if let Some(v) = item.get(*k) {
                    key.insert((*k).to_string(), v.clone());
                }
            }
            Some(format!("k:{}", Value::Object(key)))
        }
        "set" => Some(format!("v:{item}")),
        _ => None,
    }
}

/// Whether values of `shape` are replaced whole (and so owned as one field).
fn is_leaf(shape: Option<Shape>) -> bool {
    match shape.map(|s| s.resolve()) {
        None | Some(Resolved::Scalar) | Some(Resolved::Untyped) => true,
        Some(Resolved::Struct { atomic, .. }) | Some(Resolved::Map { atomic, .. }) => atomic,
        Some(Resolved::List { list_type, keys, .. }) => {
            list_type == "atomic" || (list_type == "map" && keys.is_empty())
        }
    }
}

/// The fields `value` sets (structured-merge-diff's ToFieldSet): leaves, list items, map
/// entries, and struct fields holding null or an empty map.
pub fn to_set(value: &Value, shape: Option<Shape>) -> FieldSet {
    let mut set = FieldSet::default();
    walk_set(value, shape, &mut Vec::new(), &mut set);
    set
}

fn walk_set(value: &Value, shape: Option<Shape>, path: &mut Vec<String>, set: &mut FieldSet) {
    if is_leaf(shape) {
        set.insert(path);
        return;
    }
    let resolved = shape.expect("a leaf otherwise").resolve();
    match (value, resolved) {
        (Value::Object(m), Resolved::Struct { fields, .. }) => {
            for (k, v) in m {
                let Some(f) = fields.get(k) else { continue };
                path.push(field_element(k));
                walk_set(v, Some(Shape::Node(f)), path, set);
                if v.is_null() || v.as_object().is_some_and(Map::is_empty) {
                    set.insert(path);
                }
                path.pop();
            }
        }
        (Value::Object(m), Resolved::Map { elem, .. }) => {
            for (k, v) in m {
                path.push(field_element(k));
                walk_set(v, Some(elem), path, set);
                set.insert(path);
                path.pop();
            }
        }
        (Value::Array(items), Resolved::List { elem, list_type, keys, .. }) => {
            for item in items {
                let Some(e) = item_element(item, list_type, &keys) else { continue };
                path.push(e);
                if list_type == "map" {
                    walk_set(item, Some(elem), path, set);
                }
                set.insert(path);
                path.pop();
            }
        }
        _ => set.insert(path),
    }
}

/// What changed from `old` to `new`: fields added, fields whose value changed, fields removed.
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

pub fn compare(old: &Value, new: &Value, shape: Option<Shape>) -> Comparison {
    let mut cmp =
        Comparison { added: FieldSet::default(), modified: FieldSet::default(), removed: FieldSet::default() };
    diff(Some(old), Some(new), shape, &mut Vec::new(), &mut cmp);
    cmp
}

/// Whether a struct field's value makes the field itself a member (null, or an empty map).
fn empty_member(v: Option<&Value>) -> bool {
    v.is_some_and(|v| v.is_null() || v.as_object().is_some_and(Map::is_empty))
}

/// One walk over `old` and `new` together that descends only where they differ, so that a
/// write changing one field costs little whatever the object's size.
fn diff(old: Option<&Value>, new: Option<&Value>, shape: Option<Shape>, path: &mut Vec<String>, cmp: &mut Comparison) {
    let (o, n) = match (old, new) {
        (None, None) => return,
        (Some(o), Some(n)) if o == n => return,
        (None, Some(n)) => return walk_set(n, shape, path, &mut cmp.added),
        (Some(o), None) => return walk_set(o, shape, path, &mut cmp.removed),
        (Some(o), Some(n)) => (o, n),
    };
    if is_leaf(shape) {
        cmp.modified.insert(path);
        return;
    }
    match (o, n, shape.expect("a leaf otherwise").resolve()) {
        (Value::Object(a), Value::Object(b), Resolved::Struct { fields, .. }) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                let Some(f) = fields.get(k) else { continue };
                path.push(field_element(k));
                let (before, after) = (a.get(k), b.get(k));
                diff(before, after, Some(Shape::Node(f)), path, cmp);
                match (empty_member(before), empty_member(after)) {
                    (false, true) => cmp.added.insert(path),
                    (true, false) => cmp.removed.insert(path),
                    _ => {}
                }
                path.pop();
            }
        }
        (Value::Object(a), Value::Object(b), Resolved::Map { elem, .. }) => {
            for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                path.push(field_element(k));
                let (before, after) = (a.get(k), b.get(k));
                diff(before, after, Some(elem), path, cmp);
                match (before, after) {
                    (None, Some(_)) => cmp.added.insert(path),
                    (Some(_), None) => cmp.removed.insert(path),
                    _ => {}
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b), Resolved::List { elem, list_type, keys, .. }) => {
            let index = |items: &Vec<Value>| -> BTreeMap<String, usize> {
                items.iter().enumerate().filter_map(|(i, v)| Some((item_element(v, list_type, &keys)?, i))).collect()
            };
            let (before, after) = (index(a), index(b));
            for (e, &i) in &before {
                path.push(e.clone());
                match after.get(e) {
                    None => {
                        if list_type == "map" {
                            walk_set(&a[i], Some(elem), path, &mut cmp.removed);
                        }
                        cmp.removed.insert(path);
                    }
                    Some(&j) if list_type == "map" => diff(Some(&a[i]), Some(&b[j]), Some(elem), path, cmp),
                    Some(_) => {}
                }
                path.pop();
            }
            for (e, &j) in after.iter().filter(|(e, _)| !before.contains_key(*e)) {
                path.push(e.clone());
                if list_type == "map" {
                    walk_set(&b[j], Some(elem), path, &mut cmp.added);
                }
                cmp.added.insert(path);
                path.pop();
            }
        }
        _ => cmp.modified.insert(path),
    }
}

/// Server-side apply's merge: `config` over `live` — structs and granular maps field by field,
/// list-maps item by item on their keys, sets as unions, everything else replaced.
pub fn merge(live: &Value, config: &Value, shape: Option<Shape>) -> Value {
    if is_leaf(shape) {
        return config.clone();
    }
    match (live, config, shape.expect("a leaf otherwise").resolve()) {
        (Value::Object(l), Value::Object(c), Resolved::Struct { fields, .. }) => {
            let mut out = l.clone();
            for (k, v) in c {
                let f = fields.get(k).map(Shape::Node);
                let merged = match l.get(k) {
                    Some(before) if !v.is_null() => merge(before, v, f),
                    _ => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Object(l), Value::Object(c), Resolved::Map { elem, .. }) => {
            let mut out = l.clone();
            for (k, v) in c {
                let merged = match l.get(k) {
                    Some(before) if !v.is_null() => merge(before, v, Some(elem)),
                    _ => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c), Resolved::List { elem, list_type, keys, .. }) => {
            let mut out = l.clone();
            for item in c {
                let e = item_element(item, list_type, &keys);
                let at = out.iter().position(|x| e.is_some() && item_element(x, list_type, &keys) == e);
                match (at, list_type) {
                    (Some(i), "map") => out[i] = merge(&out[i], item, Some(elem)),
                    (Some(_), _) => {}
                    (None, _) => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// Fills in the key fields that items of list-maps in `config` leave to their defaults (a
/// container port's protocol), from `defaulted`, the same configuration with the kind's
/// defaults applied: an item is matched by its full key, as Kubernetes matches it.
pub fn fill_default_keys(config: &mut Value, defaulted: &Value, shape: Option<Shape>) {
    if is_leaf(shape) {
        return;
    }
    match (config, shape.expect("a leaf otherwise").resolve()) {
        (Value::Object(m), Resolved::Struct { fields, .. }) => {
            for (k, v) in m.iter_mut() {
                if let (Some(f), Some(d)) = (fields.get(k), defaulted.get(k)) {
                    fill_default_keys(v, d, Some(Shape::Node(f)));
                }
            }
        }
        (Value::Object(m), Resolved::Map { elem, .. }) => {
            for (k, v) in m.iter_mut() {
                if let Some(d) = defaulted.get(k) {
                    fill_default_keys(v, d, Some(elem));
                }
            }
        }
        (Value::Array(items), Resolved::List { elem, list_type: "map", keys, .. }) => {
            let Some(defaults) = defaulted.as_array().filter(|d| d.len() == items.len()) else { return };
            for (item, d) in items.iter_mut().zip(defaults) {
                if let Value::Object(fields) = item {
                    for k in &keys {
                        if let (false, Some(v)) = (fields.contains_key(*k), d.get(*k)) {
                            fields.insert((*k).to_string(), v.clone());
                        }
                    }
                }
                fill_default_keys(item, d, Some(elem));
            }
        }
        _ => {}
    }
}

/// Removes from `value` what `gone` names (its members, with whatever lies under them).
fn remove(value: &mut Value, gone: &FieldSet, shape: Option<Shape>) {
    if is_leaf(shape) {
        return;
    }
    match (value, shape.expect("a leaf otherwise").resolve()) {
        (Value::Object(m), Resolved::Struct { fields, .. }) => {
            for (k, sub) in &gone.children {
                let Some(name) = k.strip_prefix("f:") else { continue };
                if sub.member {
                    m.remove(name);
                } else if let (Some(v), Some(f)) = (m.get_mut(name), fields.get(name)) {
                    remove(v, sub, Some(Shape::Node(f)));
                }
            }
        }
        (Value::Object(m), Resolved::Map { elem, .. }) => {
            for (k, sub) in &gone.children {
                let Some(name) = k.strip_prefix("f:") else { continue };
                if sub.member {
                    m.remove(name);
                } else if let Some(v) = m.get_mut(name) {
                    remove(v, sub, Some(elem));
                }
            }
        }
        (Value::Array(items), Resolved::List { elem, list_type, keys, .. }) => {
            items.retain(|i| !item_element(i, list_type, &keys).and_then(|e| gone.get(&e)).is_some_and(|s| s.member));
            for item in items.iter_mut() {
                if let Some(sub) = item_element(item, list_type, &keys).and_then(|e| gone.get(&e).cloned()) {
                    remove(item, &sub, Some(elem));
                }
            }
        }
        _ => {}
    }
}

/// The paths of `last` that nobody in `owned` holds, nor anything under: what an apply that no
/// longer names them removes (structured-merge-diff's prune).
fn orphaned(last: &FieldSet, owned: Option<&FieldSet>) -> FieldSet {
    let mut out = FieldSet::default();
    for (k, sub) in &last.children {
        match owned.and_then(|o| o.get(k)) {
            None => {
                out.children.insert(k.clone(), FieldSet { member: true, children: BTreeMap::new() });
            }
            Some(theirs) if theirs.is_empty() => {
                out.children.insert(k.clone(), FieldSet { member: true, children: BTreeMap::new() });
            }
            // Held whole by someone (a leaf, or a field the server keeps).
            Some(theirs) if theirs.member && theirs.children.is_empty() => {}
            Some(theirs) => {
                let rest = orphaned(sub, Some(theirs));
                if !rest.is_empty() {
                    out.children.insert(k.clone(), rest);
                }
            }
        }
    }
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Manager {
    pub name: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<Value>,
    pub subresource: String,
    pub set: FieldSet,
}

impl Manager {
    fn same(&self, name: &str, operation: &str, subresource: &str) -> bool {
        self.name == name && self.operation == operation && self.subresource == subresource
    }
}

pub fn decode_managers(obj: &Value) -> Result<Vec<Manager>, String> {
    let mut out = Vec::new();
    for e in obj.pointer("/metadata/managedFields").and_then(Value::as_array).into_iter().flatten() {
        let text = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        if e.as_object().is_some_and(Map::is_empty) {
            continue;
        }
        if text("fieldsType") != "FieldsV1" {
            return Err(format!("managed fields of type {:?} are not understood (FieldsV1 is)", text("fieldsType")));
        }
        out.push(Manager {
            name: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            time: e.get("time").cloned(),
            subresource: text("subresource"),
            set: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&json!({})))?,
        });
    }
    Ok(out)
}

/// Writes `managers` into `obj`, Apply entries first, then by time and name (Kubernetes' order).
fn encode_managers(obj: &mut Value, mut managers: Vec<Manager>) {
    managers.retain(|m| !m.set.is_empty());
    managers.sort_by(|a, b| {
        let t = |m: &Manager| m.time.as_ref().and_then(Value::as_str).unwrap_or("").to_string();
        (a.operation.as_str(), t(a), a.name.as_str(), a.subresource.as_str()).cmp(&(
            b.operation.as_str(),
            t(b),
            b.name.as_str(),
            b.subresource.as_str(),
        ))
    });
    let entries: Vec<Value> = managers
        .into_iter()
        .map(|m| {
            let mut e = json!({"manager": m.name, "operation": m.operation, "apiVersion": m.api_version,
                "fieldsType": "FieldsV1", "fieldsV1": m.set.to_fields_v1()});
            if let Some(t) = m.time {
                e["time"] = t;
            }
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    let meta = obj["metadata"].as_object_mut().expect("objects have metadata");
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// The fields no manager owns: the server's own metadata, and what the request's part of the
/// object does not write (status through the main resource, the rest through `/status`).
fn ignored(res: &Resource, subresource: &str) -> &'static FieldSet {
    // Three sets serve every write, made once: the main resource of a kind with and without a
    // status subresource, and the status subresource.
    static SETS: std::sync::LazyLock<[FieldSet; 3]> =
        std::sync::LazyLock::new(|| [ignored_set(false, ""), ignored_set(true, ""), ignored_set(true, "status")]);
    match subresource {
        "status" => &SETS[2],
        _ if res.has("status") => &SETS[1],
        _ => &SETS[0],
    }
}

fn ignored_set(has_status: bool, subresource: &str) -> FieldSet {
    let mut set = FieldSet::default();
    for p in ["apiVersion", "kind"] {
        set.insert(&[field_element(p)]);
    }
    for p in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "selfLink",
        "generation",
        "managedFields",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        set.insert(&[field_element("metadata"), field_element(p)]);
    }
    match subresource {
        "status" => {
            for p in ["spec", "data", "stringData", "binaryData", "subsets", "template", "webhooks"] {
                set.insert(&[field_element(p)]);
            }
        }
        _ if has_status => set.insert(&[field_element("status")]),
        _ => {}
    }
    set
}

fn now() -> Value {
    json!(super::objects::now_rfc3339())
}

/// The manager of a request: `fieldManager`, else the client's user agent up to its first `/`,
/// as Kubernetes derives it.
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let agent = user_agent.unwrap_or("").split('/').next().unwrap_or("").trim();
    if agent.is_empty() {
        "unknown".into()
    } else {
        agent.chars().take(128).collect()
    }
}

/// The managers of an object about to be written by a non-apply request: those of the stored
/// object, or those the request sets itself (a client may rewrite managedFields; `[{}]` clears
/// them); then `manager` takes what it changed, from whoever held it.
pub fn track_update(
    res: &Resource,
    subresource: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
) -> Result<(), ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("metadata.managedFields: {e}"));
    let sent = new.pointer("/metadata/managedFields").cloned();
    let cleared = sent.as_ref().and_then(Value::as_array).is_some_and(|l| l.len() == 1 && l[0] == json!({}));
    // Managed fields a client sends that cannot be read are passed over for the stored ones, as
    // Kubernetes' field manager does.
    let sent_managers = decode_managers(new).unwrap_or_default();
    let (mut managers, source) = if cleared {
        (Vec::new(), None)
    } else if !sent_managers.is_empty() && subresource.is_empty() {
        (sent_managers, sent)
    } else {
        let stored = old.and_then(|o| o.pointer("/metadata/managedFields")).cloned();
        (old.map(decode_managers).transpose().map_err(bad)?.unwrap_or_default(), stored)
    };
    let shape = super::schema::of(res);
    let empty = json!({});
    let ignore = ignored(res, subresource);
    let cmp = compare(old.unwrap_or(&empty), new, shape);
    let changed = cmp.added.union(&cmp.modified).recursive_difference(ignore);
    let removed = cmp.removed.recursive_difference(ignore);
    let mut moved = false;
    for m in managers.iter_mut() {
        let kept = m.set.difference(&changed).difference(&removed);
        moved |= kept != m.set;
        m.set = kept;
    }
    let api_version = res.api_version();
    match managers.iter_mut().find(|m| m.same(manager, "Update", subresource)) {
        Some(mine) => {
            let set = mine.set.union(&changed);
            if set != mine.set {
                mine.set = set;
                mine.time = Some(now());
                mine.api_version = api_version;
                moved = true;
            }
        }
        None if !changed.is_empty() => {
            managers.push(Manager {
                name: manager.into(),
                operation: "Update".into(),
                api_version,
                time: Some(now()),
                subresource: subresource.into(),
                set: changed,
            });
            moved = true;
        }
        None => {}
    }
    // Nobody's fields changed hands (the common update of fields one already holds): the
    // entries stay as they were, not encoded again.
    if !moved {
        let meta = new["metadata"].as_object_mut().expect("objects have metadata");
        match source {
            Some(v) if v.as_array().is_some_and(|l| !l.is_empty()) => meta.insert("managedFields".into(), v),
            _ => meta.remove("managedFields"),
        };
        return Ok(());
    }
    cap_update_managers(&mut managers);
    encode_managers(new, managers);
    Ok(())
}

/// Beyond `UPDATE_MANAGERS_MAX` update managers, the oldest are merged into one.
fn cap_update_managers(managers: &mut Vec<Manager>) {
    let updates = managers.iter().filter(|m| m.operation == "Update" && !m.set.is_empty()).count();
    if updates <= UPDATE_MANAGERS_MAX {
        return;
    }
    let mut order: Vec<usize> = (0..managers.len()).filter(|&i| managers[i].operation == "Update").collect();
    order.sort_by_key(|&i| managers[i].time.as_ref().and_then(Value::as_str).unwrap_or("").to_string());
    let merge: Vec<usize> = order.into_iter().take(updates - UPDATE_MANAGERS_MAX + 1).collect();
    let mut ancient = FieldSet::default();
    for &i in &merge {
        ancient = ancient.union(&managers[i].set);
    }
    let api_version = managers[merge[0]].api_version.clone();
    let mut i = 0;
    managers.retain(|_| {
        let keep = !merge.contains(&i);
        i += 1;
        keep
    });
    managers.push(Manager {
        name: ANCIENT_MANAGER.into(),
        operation: "Update".into(),
        api_version,
        time: Some(now()),
        subresource: String::new(),
        set: ancient,
    });
}

/// Server-side apply of `config` by `manager` to `live` (None: the object does not exist yet).
/// Returns the object to write, its managedFields set.
pub fn apply(
    res: &Resource,
    subresource: &str,
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("metadata.managedFields: {e}"));
    let shape = super::schema::of(res);
    let mut managers = live.map(decode_managers).transpose().map_err(bad)?.unwrap_or_default();
    let mut base = live.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    if let Some(m) = base.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let mut config = config.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let merged = merge(&base, &config, shape);
    let ignore = ignored(res, subresource);
    let applied = to_set(&config, shape).recursive_difference(ignore);
    let last =
        managers.iter().find(|m| m.same(manager, "Apply", subresource)).map(|m| m.set.clone()).unwrap_or_default();
    // Fields this manager applied before and no longer does go, unless someone else holds them
    // (the server's own fields count as held).
    let mut owned = applied.union(ignore);
    for m in managers.iter().filter(|m| !m.same(manager, "Apply", subresource)) {
        owned = owned.union(&m.set);
    }
    let mut pruned = merged;
    remove(&mut pruned, &orphaned(&last, Some(&owned)), shape);
    // Fields another manager holds may change only when forced; then they change hands.
    let cmp = compare(&base, &pruned, shape);
    let changed = cmp.added.union(&cmp.modified).recursive_difference(ignore);
    let removed = cmp.removed.recursive_difference(ignore);
    let mut conflicts: Vec<(String, String, Vec<String>)> = Vec::new();
    for m in managers.iter().filter(|m| !m.same(manager, "Apply", subresource)) {
        let clash = m.set.intersection(&changed);
        if !clash.is_empty() {
            let mut paths = Vec::new();
            clash.paths("", &mut paths);
            conflicts.push((m.name.clone(), m.api_version.clone(), paths));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    for m in managers.iter_mut().filter(|m| !m.same(manager, "Apply", subresource)) {
        m.set = m.set.difference(&changed).difference(&removed);
    }
    let api_version = res.api_version();
    match managers.iter_mut().find(|m| m.same(manager, "Apply", subresource)) {
        Some(mine) => {
            if mine.set != applied || mine.api_version != api_version {
                mine.set = applied;
                mine.time = Some(now());
                mine.api_version = api_version;
            }
        }
        None => managers.push(Manager {
            name: manager.into(),
            operation: "Apply".into(),
            api_version,
            time: Some(now()),
            subresource: subresource.into(),
            set: applied,
        }),
    }
    encode_managers(&mut pruned, managers);
    Ok(pruned)
}

/// 409 naming each conflicting field and its manager, as Kubernetes words it.
fn conflict_error(conflicts: &[(String, String, Vec<String>)]) -> ApiError {
    let total: usize = conflicts.iter().map(|(_, _, p)| p.len()).sum();
    let mut causes = Vec::new();
    let mut lines = Vec::new();
    for (manager, version, paths) in conflicts {
        let with = format!("conflict with \"{manager}\" using {version}");
        for p in paths {
            causes.push(json!({"reason": "FieldManagerConflict", "message": with, "field": p}));
        }
        if paths.len() == 1 {
            lines.push(format!("{with}: {}", paths[0]));
        } else {
            lines.push(format!("conflicts with \"{manager}\" using {version}:\n- {}", paths.join("\n- ")));
        }
    }
    let plural = if total == 1 { "" } else { "s" };
    let message = format!("Apply failed with {total} conflict{plural}: {}", lines.join("\n"));
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(json!({"causes": causes}));
    e
}

#[cfg(test)]
mod tests {
    use super::super::resources;
    use super::*;

    fn cms() -> &'static Resource {
        resources::find("", "v1", "configmaps").unwrap()
    }

    fn deployments() -> &'static Resource {
        resources::find("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let shape = super::super::schema::of(deployments());
        let d = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}});
        let set = to_set(&d, shape);
        let v1 = set.to_fields_v1();
        assert_eq!(v1["f:spec"]["f:replicas"], json!({}));
        assert_eq!(v1["f:spec"]["f:selector"], json!({}), "an atomic struct is one field");
        let container = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(container["."], json!({}));
        assert!(container["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object());
        assert_eq!(FieldSet::from_fields_v1(&v1).unwrap(), set);
        let mut paths = Vec::new();
        set.paths("", &mut paths);
        assert!(paths.contains(&".spec.template.spec.containers[name=\"c\"].image".to_string()), "{paths:?}");
    }

    #[test]
    fn apply_owns_what_it_sets_and_conflicts_with_other_managers() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let mut live2 = live.clone();
        track_update(cms(), "", None, &mut live2, "kubectl-create").unwrap();
        assert_eq!(live2["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
        // Another manager applying a different value of `a` conflicts; forced, it takes `a` over.
        let config =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "2", "b": "3"}});
        let err = apply(cms(), "", Some(&live2), &config, "helm", false).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("conflict with \"kubectl-create\" using v1: .data.a"), "{}", err.message);
        let forced = apply(cms(), "", Some(&live2), &config, "helm", true).unwrap();
        assert_eq!(forced["data"], json!({"a": "2", "b": "3"}));
        let managers = decode_managers(&forced).unwrap();
        assert_eq!(managers.len(), 1, "kubectl-create lost its only field");
        assert_eq!(managers[0].name, "helm");
        // Same value: no conflict, shared ownership.
        let same = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        let shared = apply(cms(), "", Some(&live2), &same, "helm", false).unwrap();
        assert_eq!(decode_managers(&shared).unwrap().len(), 2);
    }

    #[test]
    fn fields_an_apply_drops_are_removed_unless_another_manager_holds_them() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"l": "1"}}, "data": {"a": "1", "b": "2"}});
        let applied = apply(cms(), "", None, &first, "helm", false).unwrap();
        // Another manager takes `b` (an update) before the next apply drops a, b and the label.
        let mut updated = applied.clone();
        updated["data"]["b"] = json!("20");
        track_update(cms(), "", Some(&applied), &mut updated, "editor").unwrap();
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"c": "3"}});
        let out = apply(cms(), "", Some(&updated), &second, "helm", false).unwrap();
        assert_eq!(out["data"], json!({"b": "20", "c": "3"}));
        assert!(out["metadata"].get("labels").is_none_or(|l| l.as_object().unwrap().is_empty()), "{out}");
    }

    #[test]
    fn one_walk_finds_what_two_sets_would() {
        let shape = super::super::schema::of(deployments());
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"], "annotations": {}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "1"}}, "template": {"spec": {"containers": [
                {"name": "c", "image": "i:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "d", "image": "d:1"}]}}}});
        let new = json!({"metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["y", "z"]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "2"}}, "paused": null, "template": {"spec": {"containers": [
                {"name": "c", "image": "i:2", "ports": [{"containerPort": 81, "protocol": "TCP"}]},
                {"name": "e", "image": "e:1"}]}}}});
        let cmp = compare(&old, &new, shape);
        let (before, after) = (to_set(&old, shape), to_set(&new, shape));
        assert_eq!(cmp.added, after.difference(&before));
        assert_eq!(cmp.removed, before.difference(&after));
        let mut changed = Vec::new();
        cmp.modified.paths("", &mut changed);
        changed.sort();
        assert_eq!(changed, [".spec.replicas", ".spec.selector", ".spec.template.spec.containers[name=\"c\"].image"]);
        assert!(compare(&old, &old, shape).modified.is_empty());
    }

    #[test]
    fn unreadable_managed_fields_from_a_client_give_way_to_the_stored_ones() {
        let mut stored =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}});
        track_update(cms(), "", None, &mut stored, "creator").unwrap();
        let mut sent = stored.clone();
        sent["metadata"]["managedFields"] = json!([{"manager": "m", "fieldsType": "FieldsV9", "fieldsV1": {}}]);
        sent["data"]["b"] = json!("2");
        track_update(cms(), "", Some(&stored), &mut sent, "editor").unwrap();
        let names: Vec<String> = decode_managers(&sent).unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["creator", "editor"]);
    }

    #[test]
    fn list_maps_merge_by_key_and_sets_as_unions() {
        let shape = super::super::schema::of(deployments());
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}},
            "metadata": {"finalizers": ["x"]}});
        let config = json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}, "metadata": {"finalizers": ["y"]}});
        let merged = merge(&live, &config, shape);
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
        assert_eq!(merged["metadata"]["finalizers"], json!(["x", "y"]));
    }
}
