//! Secrets: `stringData` is folded into `data` (base64) and never stored, as Kubernetes' conversion
//! does on every write; the type defaults to Opaque.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, s, Column, AGE, NAME};
use super::{set_default, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &SecretStrategy,
};

struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Secret>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        set_default(obj, "/type", json!("Opaque"));
        let Some(map) = obj.as_object_mut() else { return };
        let Some(Value::Object(strings)) = map.remove("stringData") else { return };
        let data = map.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in strings {
            let text = v.as_str().unwrap_or_default();
            data[&k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        super::configmap::check_config_keys(obj, &["data"], &mut causes);
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Type", "string", 0, |o| json!(s(o, "/type"))),
            Column::new("Data", "integer", 0, |o| json!(count(o, "/data"))),
            AGE,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_merged_into_data_and_dropped() {
        let mut secret = json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "new", "c": "z"}});
        SecretStrategy.defaults(&mut secret);
        assert_eq!(secret, json!({"type": "Opaque", "data": {"a": "eA==", "b": "bmV3", "c": "eg=="}}));
    }
}
