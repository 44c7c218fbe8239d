//! Kubernetes' strategic merge patch over JSON, driven by the types' schema (`schema.rs`): maps
//! merge key by key and `null` deletes; lists whose field has the `merge` strategy merge item by
//! item on their merge key (lists of scalars, like finalizers, merge as sets); other lists are
//! replaced. The directives: `$patch: replace | delete | merge` on a map or as a list element,
//! `$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`.

use serde_json::{Map, Value};

use super::schema::Shape;

const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies `patch` to `original`, whose type is `shape` (None: unknown, merged as plain maps).
pub fn strategic_merge(original: &Value, patch: &Value, shape: Option<Shape>) -> Result<Value, String> {
    let Value::Object(p) = patch else { return Err("a strategic merge patch must be a JSON object".into()) };
    let mut doc = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if directive(p)? == Some("delete") {
        return Ok(Value::Object(Map::new()));
    }
    merge_map(&mut doc, p, shape)?;
    Ok(Value::Object(doc))
}

/// The `$patch` directive of a map, checked.
fn directive(m: &Map<String, Value>) -> Result<Option<&str>, String> {
    match m.get("$patch") {
        None => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "replace" | "delete" | "merge") => Ok(Some(s.as_str())),
        Some(other) => Err(format!("unknown patch type: {other} in map: {}", Value::Object(m.clone()))),
    }
}

/// A value as it is when nothing was there to merge into: directives applied to emptiness.
fn fresh(v: &Value, shape: Option<Shape>) -> Result<Value, String> {
    match v {
        Value::Object(p) => {
            let mut m = Map::new();
            if directive(p)? == Some("replace") {
                return Ok(Value::Object(strip(p)));
            }
            merge_map(&mut m, p, shape)?;
            Ok(Value::Object(m))
        }
        Value::Array(items) => Ok(Value::Array(merge_list(Vec::new(), items, shape, None)?)),
        other => Ok(other.clone()),
    }
}

/// A map without its directives (recursively), for the parts of a patch that replace.
fn strip(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(inner) => Value::Object(strip(inner)),
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|i| match i {
                            Value::Object(inner) => Value::Object(strip(inner)),
                            other => other.clone(),
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn merge_map(doc: &mut Map<String, Value>, patch: &Map<String, Value>, shape: Option<Shape>) -> Result<(), String> {
    match directive(patch)? {
        Some("replace") => {
            *doc = strip(patch);
            return Ok(());
        }
        Some("delete") => {
            doc.clear();
            return Ok(());
        }
        _ => {}
    }
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = keys
            .as_array()
            .ok_or("$retainKeys must be a list of field names")?
            .iter()
            .map(|k| k.as_str().ok_or("$retainKeys must be a list of field names"))
            .collect::<Result<_, _>>()?;
        doc.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else { continue };
        let doomed = v.as_array().ok_or_else(|| format!("{k} must be a list"))?;
        if let Some(Value::Array(list)) = doc.get_mut(field) {
            list.retain(|item| !doomed.contains(item));
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            if !(k == "$patch"
                || k == RETAIN_KEYS
                || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
                || k.starts_with(SET_ELEMENT_ORDER))
            {
                return Err(format!("unknown patch directive {k}"));
            }
            continue;
        }
        let field = shape.and_then(|s| s.field(k));
        match v {
            Value::Null => {
                doc.remove(k);
            }
            Value::Object(p) => {
                if directive(p)? == Some("delete") {
                    doc.remove(k);
                    continue;
                }
                if field.is_some_and(|f| f.has_strategy("replace")) {
                    doc.insert(k.clone(), Value::Object(strip(p)));
                    continue;
                }
                match doc.get_mut(k) {
                    Some(Value::Object(existing)) => merge_map(existing, p, field)?,
                    _ => {
                        doc.insert(k.clone(), fresh(v, field)?);
                    }
                }
            }
            Value::Array(items) => {
                let current = match doc.remove(k) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                let order = patch.get(&format!("{SET_ELEMENT_ORDER}{k}"));
                doc.insert(k.clone(), Value::Array(merge_list(current, items, field, order)?));
            }
            other => {
                doc.insert(k.clone(), other.clone());
            }
        }
    }
    // An order named without the list itself still reorders what is there.
    for (k, order) in patch {
        let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else { continue };
        if patch.contains_key(field) {
            continue;
        }
        if let Some(Value::Array(list)) = doc.get_mut(field) {
            let merge_key = shape.and_then(|s| s.field(field)).and_then(|f| merge_key_of(&f));
            *list = reorder(std::mem::take(list), &[], order, merge_key.as_deref())?;
        }
    }
    Ok(())
}

fn merge_key_of(shape: &Shape) -> Option<String> {
    match shape.resolve() {
        super::schema::Resolved::List { merge_key, .. } => merge_key.map(String::from),
        _ => None,
    }
}

fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    shape: Option<Shape>,
    order: Option<&Value>,
) -> Result<Vec<Value>, String> {
    let elem = shape.and_then(|s| s.elem());
    // A `{"$patch": "replace"}` element: the list is the other elements, as sent.
    if patch.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return patch.iter().filter(|i| i.get("$patch").is_none()).map(|i| fresh(i, elem)).collect();
    }
    if !shape.is_some_and(|s| s.has_strategy("merge")) {
        return patch.iter().map(|i| fresh(i, elem)).collect();
    }
    let merge_key = shape.as_ref().and_then(merge_key_of);
    let mut result = original.clone();
    match merge_key.as_deref() {
        // Scalars merge as a set.
        None => {
            for item in patch {
                if item.is_object() || item.is_array() {
                    return Err("a list merged as a set may hold only scalars".into());
                }
                if !result.contains(item) {
                    result.push(item.clone());
                }
            }
        }
        Some(mk) => {
            for item in patch {
                let Value::Object(p) = item else {
                    return Err(format!("a list merged by {mk} may hold only objects"));
                };
                let id = p.get(mk).ok_or_else(|| format!("map: {item} does not contain declared merge key: {mk}"))?;
                let at = result.iter().position(|x| x.get(mk) == Some(id));
                match (directive(p)?, at) {
                    (Some("delete"), Some(i)) => {
                        result.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(existing) = &mut result[i] {
                            merge_map(existing, p, elem)?;
                        }
                    }
                    (_, None) => result.push(fresh(item, elem)?),
                }
            }
        }
    }
    match order {
        Some(order) => reorder(result, &original, order, merge_key.as_deref()),
        None => Ok(result),
    }
}

/// Kubernetes' `$setElementOrder`: the items the order names come in its order, the others keep
/// the server's order, and the two are interleaved by their places in the server's list.
fn reorder(items: Vec<Value>, server: &[Value], order: &Value, merge_key: Option<&str>) -> Result<Vec<Value>, String> {
    let order = order.as_array().ok_or("$setElementOrder must be a list")?;
    let id = |v: &Value| -> Value {
        match merge_key {
            Some(mk) => v.get(mk).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order.iter().map(id).collect();
    let server_ids: Vec<Value> =
        if server.is_empty() { items.iter().map(id).collect() } else { server.iter().map(id).collect() };
    let (mut named, mut others): (Vec<Value>, Vec<Value>) = items.into_iter().partition(|i| order_ids.contains(&id(i)));
    named.sort_by_key(|i| order_ids.iter().position(|o| *o == id(i)));
    others.sort_by_key(|i| server_ids.iter().position(|o| *o == id(i)).unwrap_or(usize::MAX));
    let place = |v: &Value| server_ids.iter().position(|o| *o == id(v));
    let mut out = Vec::with_capacity(named.len() + others.len());
    let (mut a, mut b) = (named.into_iter().peekable(), others.into_iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(l), Some(r)) => {
                let left_first = matches!((place(l), place(r)), (Some(x), Some(y)) if x < y);
                out.push(if left_first { a.next() } else { b.next() }.expect("peeked"));
            }
            (Some(_), None) => out.push(a.next().expect("peeked")),
            (None, Some(_)) => out.push(b.next().expect("peeked")),
            (None, None) => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema;
    use super::*;
    use serde_json::json;

    fn pod_patch(original: Value, patch: Value) -> Value {
        strategic_merge(&original, &patch, schema::root("v1", "Pod")).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_plain_lists_are_replaced() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "args": ["x"]},
            {"name": "b", "image": "b:1"}]}});
        let patch = json!({"spec": {"containers": [
            {"name": "b", "image": "b:2"},
            {"name": "c", "image": "c:1"},
            {"name": "a", "args": ["y", "z"]}]}});
        let doc = pod_patch(doc, patch);
        assert_eq!(
            doc,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:1", "args": ["y", "z"]},
                {"name": "b", "image": "b:2"},
                {"name": "c", "image": "c:1"}]}})
        );
        let doc = pod_patch(doc, json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}));
        let names: Vec<&str> =
            doc["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["a", "c"]);
        let doc = pod_patch(doc, json!({"metadata": {"labels": {"x": "1"}}, "spec": null}));
        assert_eq!(doc, json!({"metadata": {"labels": {"x": "1"}}}));
    }

    #[test]
    fn finalizers_owner_references_and_ports_merge_by_their_own_keys() {
        let doc = json!({"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}],
                "initContainers": [{"name": "i", "ports": [{"containerPort": 90}]}]}});
        let patch = json!({"metadata": {"finalizers": ["b"], "ownerReferences": [{"uid": "2", "name": "y"}]},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 81}]}],
                "initContainers": [{"name": "i", "ports": [{"containerPort": 90, "name": "init"}]}]}});
        let doc = pod_patch(doc, patch);
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(doc["metadata"]["ownerReferences"].as_array().unwrap().len(), 2);
        assert_eq!(
            doc["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http"}, {"containerPort": 81}])
        );
        assert_eq!(doc["spec"]["initContainers"][0]["ports"], json!([{"containerPort": 90, "name": "init"}]));
        let doc = pod_patch(doc, json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}));
        assert_eq!(doc["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn retain_keys_replace_and_delete_directives() {
        let deploy = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let doc = strategic_merge(&deploy, &patch, schema::root("apps/v1", "Deployment")).unwrap();
        assert_eq!(doc, json!({"spec": {"strategy": {"type": "Recreate"}}}));

        let doc = pod_patch(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        );
        assert_eq!(doc["metadata"]["labels"], json!({"c": "3"}));
        let doc = pod_patch(doc, json!({"metadata": {"labels": {"$patch": "delete"}}}));
        assert!(doc["metadata"].get("labels").is_none());
        let doc = pod_patch(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(doc["spec"]["containers"], json!([{"name": "z"}]));
        assert!(strategic_merge(&json!({}), &json!({"$patch": "bogus"}), None).is_err());
        assert!(pod_patch_err(json!({"spec": {"containers": [{"image": "x"}]}})).contains("merge key"));
    }

    fn pod_patch_err(patch: Value) -> String {
        strategic_merge(&json!({}), &patch, schema::root("v1", "Pod")).unwrap_err()
    }

    #[test]
    fn set_element_order_orders_what_the_patch_names() {
        let names = |doc: &Value| -> Vec<String> {
            doc["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
            "containers": [{"name": "c", "image": "c:2"}]}});
        assert_eq!(names(&pod_patch(doc, patch)), ["c", "b", "a"]);
        // Items the order leaves out keep their places in the server's list, interleaved with
        // the named ones by position (Kubernetes' mergeSortedSlice).
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "d"}, {"name": "a"}],
            "containers": [{"name": "d", "image": "d:2"}]}});
        assert_eq!(names(&pod_patch(doc, patch)), ["b", "c", "d", "a"]);
    }
}
