//! ServiceAccounts. A delete answers with the deleted account, as Kubernetes' does.

use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &[],
    strategy: &ServiceAccountStrategy,
};

struct ServiceAccountStrategy;

impl Strategy for ServiceAccountStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ServiceAccount>(body)
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Secrets", "integer", 0, |o| json!(count(o, "/secrets"))), AGE]
    }
}
