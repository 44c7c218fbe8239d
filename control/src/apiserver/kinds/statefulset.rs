//! StatefulSets: generation counts spec changes; status is the controller's.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{n, template_field, Column, AGE, NAME};
use super::{default_rolling_update, ensure_object, set_default, workload_rules, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "StatefulSet",
    plural: "statefulsets",
    singular: "statefulset",
    namespaced: true,
    short_names: &["sts"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &StatefulSetStrategy,
};

struct StatefulSetStrategy;

impl Strategy for StatefulSetStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<StatefulSet>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/replicas", json!(1));
        set_default(obj, "/spec/revisionHistoryLimit", json!(10));
        set_default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
        ensure_object(obj, "/spec/persistentVolumeClaimRetentionPolicy");
        set_default(obj, "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted", json!("Retain"));
        set_default(obj, "/spec/persistentVolumeClaimRetentionPolicy/whenScaled", json!("Retain"));
        default_rolling_update(obj, "/spec/updateStrategy", &[("partition", json!(0))]);
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    workload_rules!();

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Ready", "string", 0, |o| {
                json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas")))
            }),
            AGE,
            Column::new("Containers", "string", 1, |o| template_field(o, "name")),
            Column::new("Images", "string", 1, |o| template_field(o, "image")),
        ]
    }
}
