//! batch/v1 Jobs: Kubernetes' defaults (one completion at a time unless told, six retries,
//! NonIndexed), a selector generated from the job's uid unless `manualSelector` (the template
//! gets the matching labels), a template that restarts OnFailure or Never, and a selector and
//! template that do not change (the template may while the job is suspended).

use k8s_openapi::api::batch::v1::Job;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{human_age, s, template_columns, Column, AGE, NAME};
use super::{set_default, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
    singular: "job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &["status"],
    strategy: &JobStrategy,
};

pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

struct JobStrategy;

/// How a job's state reads in `kubectl get jobs`.
fn status_column(o: &Value) -> &'static str {
    let cond = |t: &str| {
        o["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == t && c["status"] == "True")
    };
    if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if cond("Suspended") {
        "Suspended"
    } else {
        "Running"
    }
}

impl Strategy for JobStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Job>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        let spec = &obj["spec"];
        if spec.get("completions").is_none_or(Value::is_null) && spec.get("parallelism").is_none_or(Value::is_null) {
            obj["spec"]["completions"] = json!(1);
        }
        set_default(obj, "/spec/parallelism", json!(1));
        set_default(obj, "/spec/backoffLimit", json!(6));
        set_default(obj, "/spec/completionMode", json!("NonIndexed"));
        set_default(obj, "/spec/suspend", json!(false));
        set_default(obj, "/spec/podReplacementPolicy", json!("TerminatingOrFailed"));
        super::pod::default_pod_spec(obj, "/spec/template/spec");
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        super::clear_status(obj);
        if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let uid = s(obj, "/metadata/uid");
        let name = s(obj, "/metadata/name");
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        obj["spec"]["selector"] = json!({"matchLabels": {CONTROLLER_UID_LABEL: uid}});
        let t = &mut obj["spec"]["template"];
        if !t.is_object() {
            *t = json!({});
        }
        if !t["metadata"].is_object() {
            t["metadata"] = json!({});
        }
        if !t["metadata"]["labels"].is_object() {
            t["metadata"]["labels"] = json!({});
        }
        for (k, v) in
            [(CONTROLLER_UID_LABEL, &uid), (JOB_NAME_LABEL, &name), ("controller-uid", &uid), ("job-name", &name)]
        {
            t["metadata"]["labels"][k] = json!(v);
        }
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let policy = s(obj, "/spec/template/spec/restartPolicy");
        if !matches!(policy.as_str(), "OnFailure" | "Never") {
            causes.push(Cause::not_supported("spec.template.spec.restartPolicy", &policy, &["OnFailure", "Never"]));
        }
        for (field, min) in [
            ("parallelism", 0),
            ("completions", 0),
            ("backoffLimit", 0),
            ("activeDeadlineSeconds", 1),
            ("ttlSecondsAfterFinished", 0),
        ] {
            if let Some(n) = obj["spec"][field].as_i64() {
                if n < min {
                    causes.push(Cause::invalid(
                        format!("spec.{field}"),
                        n,
                        format!("must be greater than or equal to {min}"),
                    ));
                }
            }
        }
        let mode = s(obj, "/spec/completionMode");
        if !matches!(mode.as_str(), "NonIndexed" | "Indexed") {
            causes.push(Cause::not_supported("spec.completionMode", &mode, &["NonIndexed", "Indexed"]));
        }
        if mode == "Indexed" && obj["spec"]["completions"].is_null() {
            causes.push(Cause::required("spec.completions"));
        }
        if let Some(old) = old {
            if old["spec"]["selector"] != obj["spec"]["selector"] {
                causes.push(Cause::invalid("spec.selector", obj["spec"]["selector"].to_string(), "field is immutable"));
            }
            let suspended = old["spec"]["suspend"].as_bool() == Some(true);
            if !suspended && old["spec"]["template"] != obj["spec"]["template"] {
                causes.push(Cause::invalid("spec.template", "", "field is immutable"));
            }
            if old["spec"]["completionMode"] != obj["spec"]["completionMode"] {
                causes.push(Cause::invalid("spec.completionMode", &mode, "field is immutable"));
            }
        }
        causes.extend(super::validate_workload(obj));
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", 0, |o| json!(status_column(o))),
            Column::new("Completions", "string", 0, |o| {
                let done = o["status"]["succeeded"].as_i64().unwrap_or(0);
                match o["spec"]["completions"].as_i64() {
                    Some(c) => json!(format!("{done}/{c}")),
                    None => json!(format!("{done}/1 of {}", o["spec"]["parallelism"].as_i64().unwrap_or(1))),
                }
            }),
            Column::new("Duration", "string", 0, |o| {
                let start = s(o, "/status/startTime");
                if start.is_empty() {
                    return json!("");
                }
                let end = s(o, "/status/completionTime");
                let took = match (
                    start.parse::<k8s_openapi::jiff::Timestamp>(),
                    end.parse::<k8s_openapi::jiff::Timestamp>(),
                ) {
                    (Ok(a), Ok(b)) => human_age(&(k8s_openapi::jiff::Timestamp::now() - (b - a)).to_string()),
                    _ => human_age(&start),
                };
                json!(took)
            }),
            AGE,
        ]
        .into_iter()
        .chain(template_columns())
        .collect()
    }
}
