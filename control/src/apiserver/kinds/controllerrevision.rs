//! ControllerRevisions: the template history of stateful sets and daemon sets.

use k8s_openapi::api::apps::v1::ControllerRevision;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{n, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "ControllerRevision",
    plural: "controllerrevisions",
    singular: "controllerrevision",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &ControllerRevisionStrategy,
};

struct ControllerRevisionStrategy;

impl Strategy for ControllerRevisionStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ControllerRevision>(body)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Controller", "string", 0, |o| {
                let owner = o.pointer("/metadata/ownerReferences/0");
                json!(owner.map_or(String::new(), |r| format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase(),
                    r["name"].as_str().unwrap_or("")
                )))
            }),
            Column::new("Revision", "integer", 0, |o| json!(n(o, "/revision"))),
            AGE,
        ]
    }
}
