//! Endpoints: written by the endpoints controller, read by service proxies.

use k8s_openapi::api::core::v1::Endpoints;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    strategy: &EndpointsStrategy,
};

struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Endpoints>(body)
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Endpoints", "string", 0, |o| json!(count(o, "/subsets"))), AGE]
    }
}
