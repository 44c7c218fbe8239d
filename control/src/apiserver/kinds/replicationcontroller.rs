//! ReplicationControllers (core/v1): what client libraries and older manifests still use; a
//! ReplicaSet with a plain map selector. Kubernetes' defaults: one replica, and a missing selector
//! or set of labels taken from the template's labels.

use k8s_openapi::api::core::v1::ReplicationController;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{n, template_columns, Column, AGE, NAME};
use super::{set_default, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "ReplicationController",
    plural: "replicationcontrollers",
    singular: "replicationcontroller",
    namespaced: true,
    short_names: &["rc"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &ReplicationControllerStrategy,
};

struct ReplicationControllerStrategy;

impl Strategy for ReplicationControllerStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ReplicationController>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/replicas", json!(1));
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            .cloned();
        if let Some(labels) = labels {
            if obj.pointer("/spec/selector").and_then(Value::as_object).is_none_or(|m| m.is_empty()) {
                obj["spec"]["selector"] = labels.clone();
            }
            if !obj["metadata"].is_object() {
                obj["metadata"] = json!({});
            }
            if obj.pointer("/metadata/labels").and_then(Value::as_object).is_none_or(|m| m.is_empty()) {
                obj["metadata"]["labels"] = labels;
            }
        }
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    super::controlled_rules!();

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let selector = obj.pointer("/spec/selector").and_then(Value::as_object).cloned().unwrap_or_default();
        if selector.is_empty() {
            causes.push(Cause::required("spec.selector"));
        }
        let labels =
            obj.pointer("/spec/template/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
        if obj.pointer("/spec/template").is_none() {
            causes.push(Cause::required("spec.template"));
        } else if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                json!(labels).to_string(),
                "`selector` does not match template `labels`",
            ));
        }
        if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64).filter(|r| *r < 0) {
            causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
        causes
    }

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
