//! ConfigMaps: keys checked, no status, no generation.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
    strategy: &ConfigMapStrategy,
};

struct ConfigMapStrategy;

/// Every key of the maps at `fields` is a valid config key.
pub(super) fn check_config_keys(obj: &Value, fields: &[&str], causes: &mut Vec<Cause>) {
    for field in fields {
        for key in obj.get(*field).and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                causes.push(Cause::invalid(
                    format!("{field}[{key}]"),
                    key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
    }
}

impl Strategy for ConfigMapStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ConfigMap>(body)
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        check_config_keys(obj, &["data", "binaryData"], &mut causes);
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Data", "integer", 0, |o| json!(count(o, "/data") + count(o, "/binaryData"))), AGE]
    }
}
