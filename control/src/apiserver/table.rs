//! `as=Table` responses: the columns `kubectl get` prints for each resource type, as Kubernetes'
//! own printers define them.

use serde_json::{json, Value};

use super::resources::Resource;

/// One column of a kind's table: its header, type, and how a cell is computed from an object.
pub struct Column {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    /// 0: always shown; 1: with `-o wide`.
    priority: u8,
    cell: fn(&Value) -> Value,
}

impl Column {
    pub const fn new(name: &'static str, kind: &'static str, priority: u8, cell: fn(&Value) -> Value) -> Self {
        Column { name, kind, description: "", priority, cell }
    }
}

pub fn s(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_string()
}

pub fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

pub fn or_none(text: String) -> Value {
    json!(if text.is_empty() { "<none>".to_string() } else { text })
}

/// Kubernetes' short human durations: 45s, 3m12s, 5h, 3d, 2y.
pub fn human_age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else { return "<unknown>".into() };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

pub const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: |o| json!(s(o, "/metadata/name")),
};
pub const AGE: Column = Column {
    name: "Age",
    kind: "string",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: |o| json!(human_age(&s(o, "/metadata/creationTimestamp"))),
};

pub fn count(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).map_or(0, |v| match v {
        Value::Object(m) => m.len() as i64,
        Value::Array(a) => a.len() as i64,
        _ => 0,
    })
}

/// One field of every container of the pod template, comma-separated.
pub fn template_field(o: &Value, field: &str) -> Value {
    let values: Vec<&str> = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c[field].as_str())
        .collect();
    json!(values.join(","))
}

/// A map of labels at `pointer` as `k=v,k=v`, or `<none>`.
pub fn label_map(o: &Value, pointer: &str) -> Value {
    let labels: Vec<String> = o
        .pointer(pointer)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    or_none(labels.join(","))
}

pub fn selector(o: &Value) -> Value {
    label_map(o, "/spec/selector/matchLabels")
}

/// The `-o wide` columns of a workload: its template's containers and images, its selector.
pub fn template_columns() -> [Column; 3] {
    [
        Column::new("Containers", "string", 1, |o| template_field(o, "name")),
        Column::new("Images", "string", 1, |o| template_field(o, "image")),
        Column::new("Selector", "string", 1, selector),
    ]
}

/// The row object: the whole object if asked (`includeObject=Object`), else its metadata.
fn row_object(res: &Resource, o: &Value, include_object: bool) -> Value {
    if include_object {
        let mut full = o.clone();
        full["apiVersion"] = json!(res.api_version());
        full["kind"] = json!(res.kind);
        return full;
    }
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// A Table of `objects` (one object for a get).
pub fn table(res: &Resource, objects: &[Value], list_metadata: Value, include_object: bool) -> Value {
    let cols = res.strategy.columns();
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.kind, "format": "", "description": c.description, "priority": c.priority});
            if c.name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": cols.iter().map(|c| (c.cell)(o)).collect::<Vec<_>>(), "object": row_object(res, o, include_object)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_print_ready_up_to_date_available_and_age() {
        let res = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let created = (chrono::Utc::now() - chrono::Duration::seconds(75)).to_rfc3339();
        let d = json!({"metadata": {"name": "web", "creationTimestamp": created},
            "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = table(res, &[d], json!({"resourceVersion": "9"}), false);
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector"]);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "2/3", 3, 2, "75s", "", "", "<none>"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn ages_read_like_kubernetes() {
        let ago = |s: i64| human_age(&(chrono::Utc::now() - chrono::Duration::seconds(s)).to_rfc3339());
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(200), "3m20s");
        assert_eq!(ago(3 * 86400), "3d0h");
        assert_eq!(ago(30 * 86400), "30d");
    }
}
