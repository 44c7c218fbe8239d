//! Deployments: generation counts spec changes; status is the controller's, and a status write
//! keeps the labels as they were (Kubernetes' deployment status strategy).

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::{self, typed};
use super::super::resources::Resource;
use super::super::table::{n, template_columns, Column, AGE, NAME};
use super::{default_rolling_update, set_default, workload_rules, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &DeploymentStrategy,
};

struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Deployment>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/replicas", json!(1));
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
        default_rolling_update(obj, "/spec/strategy", &[("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))]);
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    /// A deployment's annotations count too (a rollback is asked for through them).
    fn generation_changed(&self, obj: &Value, old: &Value) -> bool {
        objects::spec_changed(obj, old) || obj.pointer("/metadata/annotations") != old.pointer("/metadata/annotations")
    }

    workload_rules!();

    fn prepare_for_status_update(&self, obj: &mut Value, old: &Value) {
        super::keep_all_but_status(obj, old);
        match old.pointer("/metadata/labels") {
            Some(l) => obj["metadata"]["labels"] = l.clone(),
            None => {
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("labels");
                }
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Ready", "string", 0, |o| {
                json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas")))
            }),
            Column::new("Up-to-date", "integer", 0, |o| json!(n(o, "/status/updatedReplicas"))),
            Column::new("Available", "integer", 0, |o| json!(n(o, "/status/availableReplicas"))),
            AGE,
        ]
        .into_iter()
        .chain(template_columns())
        .collect()
    }
}
