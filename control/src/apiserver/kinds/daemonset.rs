//! DaemonSets: generation counts spec changes; status is the controller's.

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{label_map, n, template_columns, Column, AGE, NAME};
use super::{default_rolling_update, set_default, workload_rules, Strategy};

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

    workload_rules!();

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Desired", "integer", 0, |o| json!(n(o, "/status/desiredNumberScheduled"))),
            Column::new("Current", "integer", 0, |o| json!(n(o, "/status/currentNumberScheduled"))),
            Column::new("Ready", "integer", 0, |o| json!(n(o, "/status/numberReady"))),
            Column::new("Up-to-date", "integer", 0, |o| json!(n(o, "/status/updatedNumberScheduled"))),
            Column::new("Available", "integer", 0, |o| json!(n(o, "/status/numberAvailable"))),
            Column::new("Node Selector", "string", 0, |o| label_map(o, "/spec/template/spec/nodeSelector")),
            AGE,
        ]
        .into_iter()
        .chain(template_columns())
        .collect()
    }
}
