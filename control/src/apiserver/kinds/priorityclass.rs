//! scheduling.k8s.io PriorityClasses: the names pods give for their priority. Validated as
//! Kubernetes does (pkg/apis/scheduling/validation): a value no higher than
//! [`HIGHEST_USER_DEFINABLE_PRIORITY`] unless the class is one of the built-ins, which own the
//! `system-` prefix, exist on every cluster (`Api::ensure_system_objects`) and cannot be deleted;
//! value and preemption policy fixed once created; and, as the Priority admission plugin checks,
//! one global default at most.

use futures::future::BoxFuture;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use serde_json::{json, Value};

use super::super::errors::{ApiError, Cause};
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::store::prefix_end;
use super::super::table::{n, or_none, s, Column, AGE, NAME};
use super::super::verbs::from_kv;
use super::super::Api;
use super::{Admission, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "scheduling.k8s.io",
    version: "v1",
    kind: "PriorityClass",
    plural: "priorityclasses",
    singular: "priorityclass",
    namespaced: false,
    short_names: &["pc"],
    categories: &[],
    subresources: &[],
    strategy: &PriorityClassStrategy,
};

/// The highest value a class other than the built-ins may have (Kubernetes'
/// `HighestUserDefinablePriority`); the range above it is the system's.
pub const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;
/// The priority of a pod that names no class when no class is the global default.
pub const DEFAULT_PRIORITY: i64 = 0;
/// What a class's (and so a pod's) preemption policy is when none is given.
pub const DEFAULT_PREEMPTION_POLICY: &str = "PreemptLowerPriority";
/// The preemption policies, in the order Kubernetes lists them.
pub const PREEMPTION_POLICIES: &[&str] = &["PreemptLowerPriority", "Never"];
/// Names with this prefix belong to the built-in classes.
const SYSTEM_PREFIX: &str = "system-";

/// A class every cluster has.
pub struct BuiltIn {
    pub name: &'static str,
    pub value: i64,
    pub description: &'static str,
}

/// Kubernetes' system classes, with its values and descriptions (neither is a global default).
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        name: "system-node-critical",
        value: 2 * HIGHEST_USER_DEFINABLE_PRIORITY + 1000,
        description: "Used for system critical pods that must not be moved from their current node.",
    },
    BuiltIn {
        name: "system-cluster-critical",
        value: 2 * HIGHEST_USER_DEFINABLE_PRIORITY,
        description: "Used for system critical pods that must run in the cluster, but can be moved to another node \
                      if necessary.",
    },
];

impl BuiltIn {
    /// The object created when the API server starts.
    pub fn object(&self) -> Value {
        json!({"apiVersion": RESOURCE.api_version(), "kind": RESOURCE.kind, "metadata": {"name": self.name},
            "value": self.value, "description": self.description})
    }
}

/// Why a `system-` class is not one of the built-ins as they are (Kubernetes'
/// `IsKnownSystemPriorityClass`), if it is not.
fn unknown_system_class(name: &str, value: Option<i64>, global_default: bool) -> Option<String> {
    let Some(known) = BUILT_IN.iter().find(|b| b.name == name) else {
        return Some(format!("{name} is not a known system priority class"));
    };
    if value != Some(known.value) {
        return Some(format!("value of {name} PriorityClass must be {}", known.value));
    }
    if global_default {
        return Some(format!("globalDefault of {name} PriorityClass must be false"));
    }
    None
}

fn value(obj: &Value) -> Option<i64> {
    obj.get("value").and_then(Value::as_i64)
}

fn is_global_default(obj: &Value) -> bool {
    obj.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// The class named `name`, read linearizably (a class created just before a pod is found).
pub async fn find(api: &Api, name: &str) -> Result<Option<Value>, ApiError> {
    let (kv, _) = api.store.get(RESOURCE.key(None, name).as_bytes()).await?;
    kv.map(|kv| from_kv(&kv)).transpose()
}

/// The global default class, read linearizably: of those marked `globalDefault` (more than one
/// when two were marked at once, which the admission check cannot exclude), the lowest-valued,
/// as Kubernetes picks it.
pub async fn global_default(api: &Api) -> Result<Option<Value>, ApiError> {
    let prefix = RESOURCE.prefix();
    let page = api.store.range(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), 0, 0, false).await?;
    let mut best: Option<Value> = None;
    for kv in &page.kvs {
        let class = from_kv(kv)?;
        if is_global_default(&class) && best.as_ref().is_none_or(|b| value(&class) < value(b)) {
            best = Some(class);
        }
    }
    Ok(best)
}

struct PriorityClassStrategy;

/// The Priority admission plugin's check of classes: a class may become the global default only
/// while no other class is.
struct DefaultAdmission;

impl Admission for DefaultAdmission {
    fn validate<'a>(
        &'a self,
        api: &'a Api,
        name: &'a str,
        obj: &'a Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if !is_global_default(obj) {
                return Ok(());
            }
            let Some(current) = global_default(api).await? else { return Ok(()) };
            let current = name_of(&current);
            // An update of the default itself keeps it the default.
            if old.is_some() && current == name {
                return Ok(());
            }
            Err(ApiError::forbidden(
                RESOURCE.plural,
                RESOURCE.group,
                name,
                &format!("PriorityClass {current} is already marked as default. Only one default can exist"),
            ))
        })
    }
}

impl Strategy for PriorityClassStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        // The typed class cannot be without `value`; validation reports it missing instead, as
        // a 422 naming the field rather than a decoding error.
        if body.get("value").is_some_and(|v| !v.is_null()) {
            return typed::<PriorityClass>(body);
        }
        let mut filled = body.clone();
        if let Some(map) = filled.as_object_mut() {
            map.insert("value".into(), json!(0));
        }
        let (mut obj, unknown) = typed::<PriorityClass>(&filled)?;
        if let Some(map) = obj.as_object_mut() {
            map.remove("value");
        }
        Ok((obj, unknown))
    }

    fn defaults(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            map.entry("preemptionPolicy").or_insert(json!(DEFAULT_PREEMPTION_POLICY));
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let name = name_of(obj);
        let v = value(obj);
        if v.is_none() {
            causes.push(Cause::required("value"));
        }
        if name.starts_with(SYSTEM_PREFIX) {
            if let Some(why) = unknown_system_class(name, v, is_global_default(obj)) {
                causes.push(Cause::forbidden(
                    "metadata.name",
                    format!(
                        "priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system use only. error: \
                         {why}"
                    ),
                ));
            }
        } else if v.is_some_and(|v| v > HIGHEST_USER_DEFINABLE_PRIORITY) {
            causes.push(Cause::forbidden(
                "value",
                format!("maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE_PRIORITY}"),
            ));
        }
        check_preemption_policy(obj.get("preemptionPolicy"), "preemptionPolicy", &mut causes);
        if let Some(old) = old {
            if v != value(old) {
                causes.push(Cause::forbidden("value", "may not be changed in an update."));
            }
            let (policy, was) = (obj.get("preemptionPolicy"), old.get("preemptionPolicy"));
            if policy != was {
                let shown = policy.and_then(Value::as_str).unwrap_or("null");
                causes.push(Cause::invalid("preemptionPolicy", shown, "field is immutable"));
            }
        }
        causes
    }

    fn admission(&self) -> Option<&'static dyn Admission> {
        Some(&DefaultAdmission)
    }

    fn check_delete(&self, obj: &Value) -> Result<(), ApiError> {
        let name = name_of(obj);
        if BUILT_IN.iter().any(|b| b.name == name) {
            return Err(ApiError::forbidden(
                RESOURCE.plural,
                RESOURCE.group,
                name,
                "this is a system priority class and cannot be deleted",
            ));
        }
        Ok(())
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Value", "integer", 0, |o| json!(n(o, "/value"))),
            Column::new("Global-Default", "boolean", 0, |o| json!(is_global_default(o))),
            AGE,
            Column::new("PreemptionPolicy", "string", 0, |o| or_none(s(o, "/preemptionPolicy"))),
        ]
    }
}

/// A preemption policy, where one is given (Kubernetes' `ValidatePreemptionPolicy`), for
/// classes and pod specs alike.
pub fn check_preemption_policy(policy: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    match policy {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p.is_empty() => causes.push(Cause::required(field)),
        Some(Value::String(p)) if PREEMPTION_POLICIES.contains(&p.as_str()) => {}
        Some(other) => {
            let shown = other.as_str().map(String::from).unwrap_or_else(|| other.to_string());
            causes.push(Cause::not_supported(field, shown, PREEMPTION_POLICIES));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: Value) -> Value {
        let mut obj = json!({"metadata": {"name": name}, "value": value});
        PriorityClassStrategy.defaults(&mut obj);
        obj
    }

    fn messages(causes: Vec<Cause>) -> Vec<String> {
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn user_classes_stay_below_the_system_range_and_keep_value_and_policy() {
        let s = PriorityClassStrategy;
        assert!(s.validate(&class("high", json!(HIGHEST_USER_DEFINABLE_PRIORITY)), None).is_empty());
        assert_eq!(
            messages(s.validate(&class("higher", json!(HIGHEST_USER_DEFINABLE_PRIORITY + 1)), None)),
            ["value: Forbidden: maximum allowed value of a user defined priority is 1000000000"]
        );
        let (decoded, _) = s.decode(&json!({"metadata": {"name": "x"}})).unwrap();
        assert!(decoded.get("value").is_none());
        assert_eq!(messages(s.validate(&decoded, None)), ["value: Required value"]);
        let old = class("high", json!(10));
        let mut new = class("high", json!(11));
        new["preemptionPolicy"] = json!("Never");
        assert_eq!(
            messages(s.validate(&new, Some(&old))),
            [
                "value: Forbidden: may not be changed in an update.",
                "preemptionPolicy: Invalid value: \"Never\": field is immutable"
            ]
        );
        let mut odd = class("odd", json!(1));
        odd["preemptionPolicy"] = json!("Sometimes");
        assert_eq!(
            messages(s.validate(&odd, None)),
            ["preemptionPolicy: Unsupported value: \"Sometimes\": supported values: \"PreemptLowerPriority\", \"Never\""]
        );
    }

    #[test]
    fn the_system_prefix_is_the_built_ins_alone() {
        let s = PriorityClassStrategy;
        for b in BUILT_IN {
            let mut obj = b.object();
            s.defaults(&mut obj);
            assert!(s.validate(&obj, None).is_empty(), "{}", b.name);
            assert!(s.check_delete(&obj).is_err());
        }
        assert_eq!(
            messages(s.validate(&class("system-mine", json!(5)), None)),
            ["metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use \
              only. error: system-mine is not a known system priority class"]
        );
        let mut defaulted = class("system-node-critical", json!(2_000_001_000));
        defaulted["globalDefault"] = json!(true);
        assert!(messages(s.validate(&defaulted, None))[0]
            .ends_with("globalDefault of system-node-critical PriorityClass must be false"));
        assert!(s.check_delete(&class("mine", json!(1))).is_ok());
    }
}
