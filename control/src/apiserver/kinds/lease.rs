//! coordination.k8s.io Leases: leader election and node heartbeats.

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{s, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &LeaseStrategy,
};

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Lease>(body)
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Holder", "string", 0, |o| json!(s(o, "/spec/holderIdentity"))), AGE]
    }
}
