//! policy/v1 PodDisruptionBudgets: `minAvailable` or `maxUnavailable` (not both), a selector;
//! status is the disruption controller's, and evictions spend it (see `verbs::evict`).

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "policy",
    version: "v1",
    kind: "PodDisruptionBudget",
    plural: "poddisruptionbudgets",
    singular: "poddisruptionbudget",
    namespaced: true,
    short_names: &["pdb"],
    categories: &[],
    subresources: &["status"],
    strategy: &PdbStrategy,
};

struct PdbStrategy;

fn int_or_percent(v: &Value) -> String {
    match v {
        Value::Null => "N/A".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Strategy for PdbStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<PodDisruptionBudget>(body)
    }

    super::controlled_rules!();

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let (min, max) = (obj.pointer("/spec/minAvailable"), obj.pointer("/spec/maxUnavailable"));
        if min.is_some_and(|v| !v.is_null()) && max.is_some_and(|v| !v.is_null()) {
            causes.push(Cause::invalid("spec", "", "minAvailable and maxUnavailable cannot be both set"));
        }
        for (field, v) in [("minAvailable", min), ("maxUnavailable", max)] {
            match v {
                Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => {
                    causes.push(Cause::invalid(format!("spec.{field}"), n, "must be greater than or equal to 0"))
                }
                Some(Value::String(p)) => {
                    let ok =
                        p.strip_suffix('%').and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| (0..=100).contains(&x));
                    if !ok {
                        causes.push(Cause::invalid(
                            format!("spec.{field}"),
                            p,
                            "must be an integer or a percentage between 0% and 100%",
                        ));
                    }
                }
                _ => {}
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Min Available", "string", 0, |o| json!(int_or_percent(&o["spec"]["minAvailable"]))),
            Column::new("Max Unavailable", "string", 0, |o| json!(int_or_percent(&o["spec"]["maxUnavailable"]))),
            Column::new("Allowed Disruptions", "integer", 0, |o| {
                json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0))
            }),
            AGE,
        ]
    }
}
