//! DaemonSets: generation counts spec changes; status is the controller's.

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{n, selector, template_field, Column, AGE, NAME};
use super::{default_rolling_update, set_default, status_by_controllers, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &DaemonSetStrategy,
};

struct DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<DaemonSet>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        default_rolling_update(obj, "/spec/updateStrategy", &[("maxUnavailable", json!(1)), ("maxSurge", json!(0))]);
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    status_by_controllers!();

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        super::validate_workload(obj)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Desired", "integer", 0, |o| json!(n(o, "/status/desiredNumberScheduled"))),
            Column::new("Current", "integer", 0, |o| json!(n(o, "/status/currentNumberScheduled"))),
            Column::new("Ready", "integer", 0, |o| json!(n(o, "/status/numberReady"))),
            Column::new("Up-to-date", "integer", 0, |o| json!(n(o, "/status/updatedNumberScheduled"))),
            Column::new("Available", "integer", 0, |o| json!(n(o, "/status/numberAvailable"))),
            Column::new("Node Selector", "string", 0, |o| {
                let labels: Vec<String> = o
                    .pointer("/spec/template/spec/nodeSelector")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                json!(if labels.is_empty() { "<none>".to_string() } else { labels.join(",") })
            }),
            AGE,
            Column::new("Containers", "string", 1, |o| template_field(o, "name")),
            Column::new("Images", "string", 1, |o| template_field(o, "image")),
            Column::new("Selector", "string", 1, selector),
        ]
    }
}
