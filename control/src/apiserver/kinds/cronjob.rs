//! batch/v1 CronJobs: Kubernetes' defaults (concurrency Allow, three successful and one failed
//! job kept), a schedule in cron's five fields (or a macro such as `@hourly`) and a time zone
//! that must exist, both checked when written.

use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{human_age, s, Column, AGE, NAME};
use super::{set_default, Strategy};
use crate::cron::Schedule;

pub static RESOURCE: Resource = Resource {
    group: "batch",
    version: "v1",
    kind: "CronJob",
    plural: "cronjobs",
    singular: "cronjob",
    namespaced: true,
    short_names: &["cj"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &CronJobStrategy,
};

struct CronJobStrategy;

impl Strategy for CronJobStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<CronJob>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/concurrencyPolicy", json!("Allow"));
        set_default(obj, "/spec/suspend", json!(false));
        set_default(obj, "/spec/successfulJobsHistoryLimit", json!(3));
        set_default(obj, "/spec/failedJobsHistoryLimit", json!(1));
        super::pod::default_pod_spec(obj, "/spec/jobTemplate/spec/template/spec");
    }

    super::controlled_rules!();

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let schedule = s(obj, "/spec/schedule");
        let zone = obj.pointer("/spec/timeZone").and_then(Value::as_str);
        if schedule.is_empty() {
            causes.push(Cause::required("spec.schedule"));
        } else if let Err(e) = Schedule::parse(&schedule) {
            causes.push(Cause::invalid("spec.schedule", &schedule, e));
        } else if schedule.contains("TZ=") {
            causes.push(Cause::invalid(
                "spec.schedule",
                &schedule,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        }
        if let Some(z) = zone {
            if k8s_openapi::jiff::tz::TimeZone::get(z).is_err() {
                causes.push(Cause::invalid("spec.timeZone", z, "unknown time zone"));
            }
        }
        let policy = s(obj, "/spec/concurrencyPolicy");
        if !matches!(policy.as_str(), "Allow" | "Forbid" | "Replace") {
            causes.push(Cause::not_supported("spec.concurrencyPolicy", &policy, &["Allow", "Forbid", "Replace"]));
        }
        let restart = s(obj, "/spec/jobTemplate/spec/template/spec/restartPolicy");
        if !matches!(restart.as_str(), "OnFailure" | "Never") {
            causes.push(Cause::not_supported(
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                &restart,
                &["OnFailure", "Never"],
            ));
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Schedule", "string", 0, |o| json!(s(o, "/spec/schedule"))),
            Column::new("Timezone", "string", 0, |o| {
                let z = s(o, "/spec/timeZone");
                json!(if z.is_empty() { "<none>".to_string() } else { z })
            }),
            Column::new("Suspend", "boolean", 0, |o| json!(o["spec"]["suspend"].as_bool().unwrap_or(false))),
            Column::new("Active", "integer", 0, |o| json!(o["status"]["active"].as_array().map_or(0, Vec::len))),
            Column::new("Last Schedule", "date", 0, |o| {
                let t = s(o, "/status/lastScheduleTime");
                json!(if t.is_empty() { "<none>".to_string() } else { human_age(&t) })
            }),
            AGE,
        ]
    }
}
