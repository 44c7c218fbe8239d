//! `as=Table` responses: the columns `kubectl get` prints for each resource type, as Kubernetes'
//! own printers define them.

use serde_json::{json, Value};

use super::resources::Resource;

/// Whether the client asked for a Table (kubectl get does, in its Accept header).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

struct Column {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    /// 0: always shown; 1: with `-o wide`.
    priority: u8,
    cell: fn(&Value) -> Value,
}

fn s(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_string()
}

fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> Value {
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

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: |o| json!(s(o, "/metadata/name")),
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: |o| json!(human_age(&s(o, "/metadata/creationTimestamp"))),
};

fn count(o: &Value, pointer: &str) -> i64 {
    o.pointer(pointer).map_or(0, |v| match v {
        Value::Object(m) => m.len() as i64,
        Value::Array(a) => a.len() as i64,
        _ => 0,
    })
}

fn pod_ready(o: &Value) -> Value {
    let total = count(o, "/spec/containers");
    let ready = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |l| l.iter().filter(|c| c["ready"] == json!(true)).count());
    json!(format!("{ready}/{total}"))
}

fn pod_status(o: &Value) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return json!("Terminating");
    }
    let reason = s(o, "/status/reason");
    json!(if reason.is_empty() { s(o, "/status/phase") } else { reason })
}

fn restarts(o: &Value) -> Value {
    let total: i64 = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |l| l.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum());
    json!(total)
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{node}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    or_none(ports.join(","))
}

/// One field of every container of the pod template, comma-separated.
fn template_field(o: &Value, field: &str) -> Value {
    let values: Vec<&str> = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c[field].as_str())
        .collect();
    json!(values.join(","))
}

fn selector(o: &Value) -> Value {
    let labels: Vec<String> = o
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    or_none(labels.join(","))
}

fn columns(kind: &str) -> Vec<Column> {
    let col = |name, kind, priority, cell| Column { name, kind, description: "", priority, cell };
    match kind {
        "Namespace" => vec![NAME, col("Status", "string", 0, |o| json!(s(o, "/status/phase"))), AGE],
        "Node" => vec![
            NAME,
            col("Status", "string", 0, |o| {
                let ready = o.pointer("/status/conditions").and_then(Value::as_array).and_then(|c| {
                    c.iter().find(|c| c["type"] == "Ready").map(|c| c["status"] == "True")
                });
                json!(match ready {
                    Some(true) => "Ready",
                    Some(false) => "NotReady",
                    None => "Unknown",
                })
            }),
            AGE,
            col("Version", "string", 0, |o| json!(s(o, "/status/nodeInfo/kubeletVersion"))),
        ],
        "Pod" => vec![
            NAME,
            col("Ready", "string", 0, pod_ready),
            col("Status", "string", 0, pod_status),
            col("Restarts", "integer", 0, restarts),
            AGE,
            col("IP", "string", 1, |o| or_none(s(o, "/status/podIP"))),
            col("Node", "string", 1, |o| or_none(s(o, "/spec/nodeName"))),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0, |o| json!(s(o, "/spec/type"))),
            col("Cluster-IP", "string", 0, |o| or_none(s(o, "/spec/clusterIP"))),
            col("External-IP", "string", 0, |o| or_none(s(o, "/spec/externalName"))),
            col("Port(s)", "string", 0, service_ports),
            AGE,
        ],
        "Endpoints" => vec![NAME, col("Endpoints", "string", 0, |o| json!(count(o, "/subsets"))), AGE],
        "ConfigMap" => vec![
            NAME,
            col("Data", "integer", 0, |o| json!(count(o, "/data") + count(o, "/binaryData"))),
            AGE,
        ],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0, |o| json!(s(o, "/type"))),
            col("Data", "integer", 0, |o| json!(count(o, "/data"))),
            AGE,
        ],
        "ServiceAccount" => vec![NAME, col("Secrets", "integer", 0, |o| json!(count(o, "/secrets"))), AGE],
        "Event" => vec![
            col("Last Seen", "string", 0, |o| json!(human_age(&s(o, "/lastTimestamp")))),
            col("Type", "string", 0, |o| json!(s(o, "/type"))),
            col("Reason", "string", 0, |o| json!(s(o, "/reason"))),
            col("Object", "string", 0, |o| {
                json!(format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name")))
            }),
            col("Message", "string", 0, |o| json!(s(o, "/message"))),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0, |o| json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas")))),
            col("Up-to-date", "integer", 0, |o| json!(n(o, "/status/updatedReplicas"))),
            col("Available", "integer", 0, |o| json!(n(o, "/status/availableReplicas"))),
            AGE,
            col("Containers", "string", 1, |o| template_field(o, "name")),
            col("Images", "string", 1, |o| template_field(o, "image")),
            col("Selector", "string", 1, selector),
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", 0, |o| json!(n(o, "/spec/replicas"))),
            col("Current", "integer", 0, |o| json!(n(o, "/status/replicas"))),
            col("Ready", "integer", 0, |o| json!(n(o, "/status/readyReplicas"))),
            AGE,
        ],
        "DaemonSet" => vec![
            NAME,
            col("Desired", "integer", 0, |o| json!(n(o, "/status/desiredNumberScheduled"))),
            col("Current", "integer", 0, |o| json!(n(o, "/status/currentNumberScheduled"))),
            col("Ready", "integer", 0, |o| json!(n(o, "/status/numberReady"))),
            col("Up-to-date", "integer", 0, |o| json!(n(o, "/status/updatedNumberScheduled"))),
            col("Available", "integer", 0, |o| json!(n(o, "/status/numberAvailable"))),
            AGE,
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", 0, |o| json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas")))),
            AGE,
        ],
        "ControllerRevision" => vec![
            NAME,
            col("Controller", "string", 0, |o| {
                let owner = o.pointer("/metadata/ownerReferences/0");
                json!(owner.map_or(String::new(), |r| format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase(),
                    r["name"].as_str().unwrap_or("")
                )))
            }),
            col("Revision", "integer", 0, |o| json!(n(o, "/revision"))),
            AGE,
        ],
        "Lease" => vec![NAME, col("Holder", "string", 0, |o| json!(s(o, "/spec/holderIdentity"))), AGE],
        _ => vec![NAME, AGE],
    }
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
    let cols = columns(res.kind);
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
        let names: Vec<&str> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector"]);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "2/3", 3, 2, "75s", "", "", "<none>"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
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
