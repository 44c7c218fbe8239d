//! PersistentVolumeClaims and PersistentVolumes: Kubernetes' defaults (Filesystem volumes, the
//! Retain reclaim policy for volumes made by hand) and phases (a new claim or volume is Pending
//! until a binder writes otherwise), status written through `/status`, and a claim's
//! requested storage and access modes checked. Binding claims to volumes comes with the node agent.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{s, Column, AGE, NAME};
use super::{set_default, Strategy};

pub static CLAIMS: Resource = Resource {
    group: "",
    version: "v1",
    kind: "PersistentVolumeClaim",
    plural: "persistentvolumeclaims",
    singular: "persistentvolumeclaim",
    namespaced: true,
    short_names: &["pvc"],
    categories: &[],
    subresources: &["status"],
    strategy: &ClaimStrategy,
};

pub static VOLUMES: Resource = Resource {
    group: "",
    version: "v1",
    kind: "PersistentVolume",
    plural: "persistentvolumes",
    singular: "persistentvolume",
    namespaced: false,
    short_names: &["pv"],
    categories: &[],
    subresources: &["status"],
    strategy: &VolumeStrategy,
};

const ACCESS_MODES: &[&str] = &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];

fn check_access_modes(obj: &Value, causes: &mut Vec<Cause>) {
    let modes = obj.pointer("/spec/accessModes").and_then(Value::as_array).cloned().unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required("spec.accessModes"));
    }
    for (i, m) in modes.iter().enumerate() {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            causes.push(Cause::not_supported(format!("spec.accessModes[{i}]"), m, ACCESS_MODES));
        }
    }
}

fn access_modes_column(o: &Value) -> Value {
    let short = |m: &str| {
        match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        }
        .to_string()
    };
    let modes: Vec<String> = o
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(short)
        .collect();
    json!(modes.join(","))
}

struct ClaimStrategy;

impl Strategy for ClaimStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<PersistentVolumeClaim>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if obj.get("spec").is_some_and(Value::is_object) {
            set_default(obj, "/spec/volumeMode", json!("Filesystem"));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        check_access_modes(obj, &mut causes);
        if obj.pointer("/spec/resources/requests/storage").is_none() {
            causes.push(Cause::required("spec.resources[storage]"));
        }
        if let Some(old) = old {
            // Beyond its requests, a bound claim's spec does not change.
            let strip = |v: &Value| {
                let mut spec = v["spec"].clone();
                if let Some(m) = spec.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeAttributesClassName");
                    if old["spec"]["volumeName"].is_null() {
                        m.remove("volumeName");
                    }
                }
                spec
            };
            if strip(obj) != strip(old) {
                causes.push(Cause::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", 0, |o| json!(s(o, "/status/phase"))),
            Column::new("Volume", "string", 0, |o| json!(s(o, "/spec/volumeName"))),
            Column::new("Capacity", "string", 0, |o| json!(s(o, "/status/capacity/storage"))),
            Column::new("Access Modes", "string", 0, access_modes_column),
            Column::new("StorageClass", "string", 0, |o| {
                let c = s(o, "/spec/storageClassName");
                json!(if c.is_empty() { "<unset>".to_string() } else { c })
            }),
            AGE,
        ]
    }
}

struct VolumeStrategy;

impl Strategy for VolumeStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<PersistentVolume>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if obj.get("spec").is_some_and(Value::is_object) {
            set_default(obj, "/spec/volumeMode", json!("Filesystem"));
            set_default(obj, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        check_access_modes(obj, &mut causes);
        if obj.pointer("/spec/capacity/storage").is_none() {
            causes.push(Cause::required("spec.capacity"));
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Capacity", "string", 0, |o| json!(s(o, "/spec/capacity/storage"))),
            Column::new("Access Modes", "string", 0, access_modes_column),
            Column::new("Reclaim Policy", "string", 0, |o| json!(s(o, "/spec/persistentVolumeReclaimPolicy"))),
            Column::new("Status", "string", 0, |o| json!(s(o, "/status/phase"))),
            Column::new("Claim", "string", 0, |o| {
                let (ns, name) = (s(o, "/spec/claimRef/namespace"), s(o, "/spec/claimRef/name"));
                json!(if name.is_empty() { String::new() } else { format!("{ns}/{name}") })
            }),
            AGE,
        ]
    }
}
