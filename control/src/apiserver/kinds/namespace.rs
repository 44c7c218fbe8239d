//! Namespaces: labelled with their own name, born Active with the `kubernetes` finalizer in their
//! spec, and deleted with everything in them. The namespaces every cluster has may not be deleted.

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

use super::super::errors::{ApiError, Cause};
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{s, Column, AGE, NAME};
use super::{ensure_object, NameRule, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &["status", "finalize"],
    strategy: &NamespaceStrategy,
};

/// The label every namespace carries with its own name, so that selectors can pick namespaces.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Namespaces Kubernetes refuses to delete.
const UNDELETABLE: &[&str] = &["default", "kube-system", "kube-public"];

struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Namespace>(body)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        super::super::podsecurity::check_labels(obj.pointer("/metadata/labels").unwrap_or(&Value::Null))
    }

    fn canonicalize(&self, obj: &mut Value) {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            return;
        }
        ensure_object(obj, "/metadata/labels");
        obj["metadata"]["labels"][NAME_LABEL] = json!(name);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        ensure_object(obj, "/spec");
        let finalizers = obj["spec"].get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        if !finalizers.iter().any(|f| f == "kubernetes") {
            let mut finalizers = finalizers;
            finalizers.push(json!("kubernetes"));
            obj["spec"]["finalizers"] = json!(finalizers);
        }
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        // The spec's finalizers change only through the finalize subresource.
        match old.pointer("/spec/finalizers") {
            Some(f) => {
                ensure_object(obj, "/spec");
                obj["spec"]["finalizers"] = f.clone();
            }
            None => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
        super::keep_status(obj, old);
    }

    fn check_delete(&self, obj: &Value) -> Result<(), ApiError> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        if UNDELETABLE.contains(&name) {
            return Err(ApiError::forbidden("namespaces", "", name, "this namespace may not be deleted"));
        }
        Ok(())
    }

    fn mark_deleting(&self, obj: &mut Value) {
        ensure_object(obj, "/status");
        obj["status"]["phase"] = json!("Terminating");
    }

    fn owns_namespace_contents(&self) -> bool {
        true
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn deletecollection(&self) -> bool {
        false
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Status", "string", 0, |o| json!(s(o, "/status/phase"))), AGE]
    }
}
