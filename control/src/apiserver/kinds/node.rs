//! Nodes: registered by their agents with their status, which updates of the main resource keep.

use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{or_none, s, Column, AGE, NAME};
use super::{SelectableField, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &["status"],
    strategy: &NodeStrategy,
};

struct NodeStrategy;

const FIELDS: &[SelectableField] =
    &[SelectableField { name: "spec.unschedulable", pointer: "/spec/unschedulable", absent: "false" }];

/// Ready or NotReady (Unknown without the condition), then SchedulingDisabled when cordoned.
fn status(o: &Value) -> Value {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").map(|c| c["status"] == "True"));
    let mut parts = vec![match ready {
        Some(true) => "Ready",
        Some(false) => "NotReady",
        None => "Unknown",
    }];
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        parts.push("SchedulingDisabled");
    }
    json!(parts.join(","))
}

/// The roles named by `node-role.kubernetes.io/<role>` labels and the `kubernetes.io/role` label.
fn roles(o: &Value) -> Value {
    let mut roles = std::collections::BTreeSet::new();
    for (k, v) in o.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/").filter(|r| !r.is_empty()) {
            roles.insert(role.to_string());
        } else if k == "kubernetes.io/role" {
            if let Some(role) = v.as_str().filter(|r| !r.is_empty()) {
                roles.insert(role.to_string());
            }
        }
    }
    or_none(roles.into_iter().collect::<Vec<_>>().join(","))
}

fn address(o: &Value, kind: &str) -> Value {
    let found = o
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("");
    or_none(found.to_string())
}

impl Strategy for NodeStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Node>(body)
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
    }

    fn selectable_fields(&self) -> &'static [SelectableField] {
        FIELDS
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", 0, status),
            Column::new("Roles", "string", 0, roles),
            AGE,
            Column::new("Version", "string", 0, |o| json!(s(o, "/status/nodeInfo/kubeletVersion"))),
            Column::new("Internal-IP", "string", 1, |o| address(o, "InternalIP")),
            Column::new("External-IP", "string", 1, |o| address(o, "ExternalIP")),
            Column::new("OS-Image", "string", 1, |o| or_none(s(o, "/status/nodeInfo/osImage"))),
            Column::new("Kernel-Version", "string", 1, |o| or_none(s(o, "/status/nodeInfo/kernelVersion"))),
            Column::new("Container-Runtime", "string", 1, |o| {
                or_none(s(o, "/status/nodeInfo/containerRuntimeVersion"))
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cordoned_nodes_with_roles_print_like_kubectl() {
        let node = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "",
            "node-role.kubernetes.io/worker": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(status(&node), "Ready,SchedulingDisabled");
        assert_eq!(roles(&node), "control-plane,edge,worker");
        assert_eq!(roles(&json!({})), "<none>");
        assert_eq!(status(&json!({})), "Unknown");
    }
}
