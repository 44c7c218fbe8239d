//! ReplicaSets: generation counts spec changes; status is the controller's.

use k8s_openapi::api::apps::v1::ReplicaSet;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{n, template_columns, Column, AGE, NAME};
use super::{set_default, workload_rules, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &ReplicaSetStrategy,
};

struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ReplicaSet>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/replicas", json!(1));
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    workload_rules!();

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Desired", "integer", 0, |o| json!(n(o, "/spec/replicas"))),
            Column::new("Current", "integer", 0, |o| json!(n(o, "/status/replicas"))),
            Column::new("Ready", "integer", 0, |o| json!(n(o, "/status/readyReplicas"))),
            AGE,
        ]
        .into_iter()
        .chain(template_columns())
        .collect()
    }
}
