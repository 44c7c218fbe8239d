//! core/v1 Events, as event recorders write them and `kubectl describe` selects them.

use k8s_openapi::api::core::v1::Event;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{human_age, s, Column};
use super::{field, SelectableField, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    strategy: &EventStrategy,
};

struct EventStrategy;

const FIELDS: &[SelectableField] = &[
    field("involvedObject.kind", "/involvedObject/kind"),
    field("involvedObject.namespace", "/involvedObject/namespace"),
    field("involvedObject.name", "/involvedObject/name"),
    field("involvedObject.uid", "/involvedObject/uid"),
    field("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    field("involvedObject.resourceVersion", "/involvedObject/resourceVersion"),
    field("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    field("reason", "/reason"),
    field("reportingComponent", "/reportingComponent"),
    field("source", "/source/component"),
    field("type", "/type"),
];

impl Strategy for EventStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Event>(body)
    }

    fn selectable_fields(&self) -> &'static [SelectableField] {
        FIELDS
    }

    fn expires(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Last Seen", "string", 0, |o| json!(human_age(&s(o, "/lastTimestamp")))),
            Column::new("Type", "string", 0, |o| json!(s(o, "/type"))),
            Column::new("Reason", "string", 0, |o| json!(s(o, "/reason"))),
            Column::new("Object", "string", 0, |o| {
                json!(format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name")))
            }),
            Column::new("Message", "string", 0, |o| json!(s(o, "/message"))),
        ]
    }
}
