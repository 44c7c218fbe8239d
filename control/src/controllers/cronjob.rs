//! The CronJob controller (Kubernetes' `cronjob`): at each time its schedule names (in its
//! `timeZone`, else the controller's), a CronJob makes a Job from its template, named after the
//! scheduled minute so that a second leader makes the same one, not another; a start later than
//! `startingDeadlineSeconds` is skipped; `concurrencyPolicy` Forbid skips a start while a job
//! runs and Replace deletes the running ones first; finished jobs beyond the history limits are
//! deleted, oldest first; status lists the active jobs and the last schedule and success.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use serde_json::json;

use super::informer::{key_of, Change, Informer};
use super::pods::{controller_of, controller_ref};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::cron::Schedule;
use crate::events::{reference, Recorder};

pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The most recent time the schedule named in (earliest, now], and the next one after now. The
/// latest is looked for in a window back from now that doubles until it holds one (or reaches
/// `earliest`), so a CronJob that missed a year of minutes costs a few steps, not every minute.
pub fn due(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let next = schedule.next_after(now, tz);
    let mut window = k8s_openapi::jiff::SignedDuration::from_secs(60);
    loop {
        let from = now.checked_sub(window).ok().filter(|f| *f > earliest).unwrap_or(earliest);
        let mut last = None;
        let mut t = from;
        while let Some(n) = schedule.next_after(t, tz).filter(|n| *n <= now) {
            last = Some(n);
            t = n;
        }
        if last.is_some() || from == earliest {
            return (last, next);
        }
        window = window.checked_mul(2).unwrap_or(window);
    }
}

fn job_finished(job: &Job) -> Option<&'static str> {
    let cs = job.status.as_ref()?.conditions.as_ref()?;
    if cs.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
        Some("Complete")
    } else if cs.iter().any(|c| c.type_ == "Failed" && c.status == "True") {
        Some("Failed")
    } else {
        None
    }
}

pub struct CronJobController {
    client: kube::Client,
    cronjobs: Arc<Informer<CronJob>>,
    jobs: Arc<Informer<Job>>,
    queue: WorkQueue,
    recorder: Recorder,
}

impl CronJobController {
    pub fn new(m: &Manager) -> Arc<CronJobController> {
        let c = Arc::new(CronJobController {
            client: m.client.clone(),
            cronjobs: m.informers.cronjobs(),
            jobs: m.informers.jobs(),
            queue: WorkQueue::new(),
            recorder: Recorder::start(m.client.clone(), "cronjob-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.cronjobs.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(x) | Change::Updated { new: x, .. } | Change::Deleted(x)) = change;
            c.queue.add(&key_of(x.as_ref()));
        });
        let weak = Arc::downgrade(&c);
        c.jobs.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(j) | Change::Updated { new: j, .. } | Change::Deleted(j)) = change;
            if let Some(r) = controller_of(&j.metadata).filter(|r| r.kind == "CronJob") {
                c.queue.add(&format!("{}/{}", j.metadata.namespace.as_deref().unwrap_or(""), r.name));
            }
        });
        c
    }

    fn jobs_api(&self, ns: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn delete_job(&self, ns: &str, job: &Job) -> anyhow::Result<()> {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions { uid: job.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match self.jobs_api(ns).delete(job.metadata.name.as_deref().unwrap_or(""), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

impl Controller for CronJobController {
    const NAME: &'static str = "cronjob";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(cj) = self.cronjobs.get_key(key) else { return Ok(()) };
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let status = cj.status.clone().unwrap_or_default();
        let mut owned: Vec<Arc<Job>> = self
            .jobs
            .list_namespace(&ns)
            .into_iter()
            .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let mut active: Vec<ObjectReference> = owned
            .iter()
            .filter(|j| job_finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .map(|j| job_ref(j))
            .collect();
        let mut last_success = status.last_successful_time.clone();
        for j in owned.iter().filter(|j| job_finished(j) == Some("Complete")) {
            let t = j.status.as_ref().and_then(|s| s.completion_time.clone());
            if t.as_ref().map(|t| t.0) > last_success.as_ref().map(|t| t.0) {
                last_success = t;
            }
        }
        // History: finished jobs beyond the limits go, oldest first.
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Job>> = owned
                .iter()
                .filter(|j| job_finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
                .collect();
            let extra = done.len().saturating_sub(limit.max(0) as usize);
            for j in &done[..extra] {
                self.delete_job(&ns, j).await?;
            }
        }
        let mut last_schedule = status.last_schedule_time.clone();
        let write_status = |active: Vec<ObjectReference>, last_schedule: Option<Time>, last_success: Option<Time>| {
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), &ns);
            let name = cj.metadata.name.clone().unwrap_or_default();
            async move {
                let patch = json!({"status": {
                    "active": if active.is_empty() { serde_json::Value::Null } else { json!(active) },
                    "lastScheduleTime": last_schedule,
                    "lastSuccessfulTime": last_success,
                }});
                match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e)),
                }
            }
        };
        let unchanged = |a: &[ObjectReference], ls: &Option<Time>, lsu: &Option<Time>| {
            let names = |v: &[ObjectReference]| v.iter().map(|r| r.uid.clone()).collect::<Vec<_>>();
            names(a) == names(status.active.as_deref().unwrap_or_default())
                && *ls == status.last_schedule_time
                && *lsu == status.last_successful_time
        };
        if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
            if !unchanged(&active, &last_schedule, &last_success) {
                write_status(active, last_schedule, last_success).await?;
            }
            return Ok(());
        }
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.recorder.record(
                    reference(cj.as_ref()),
                    true,
                    "Sync",
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                return Ok(());
            }
        };
        let tz = match spec.time_zone.as_deref() {
            Some(z) => match TimeZone::get(z) {
                Ok(tz) => tz,
                Err(_) => {
                    self.recorder.record(
                        reference(cj.as_ref()),
                        true,
                        "Sync",
                        "UnknownTimeZone",
                        format!("invalid timeZone: {z:?}"),
                    );
                    return Ok(());
                }
            },
            None => TimeZone::system(),
        };
        let now = Timestamp::now();
        let earliest = last_schedule.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map(|t| t.0).unwrap_or(now);
        let (scheduled, next) = due(&schedule, &tz, earliest, now);
        if let Some(next) = next {
            let wait = (next.as_millisecond() - now.as_millisecond()).max(0) as u64;
            // A little after the minute, so that the time is surely due when looked at.
            self.queue.add_after(key, Duration::from_millis(wait + 100));
        }
        let Some(scheduled) = scheduled else {
            if !unchanged(&active, &last_schedule, &last_success) {
                write_status(active, last_schedule, last_success).await?;
            }
            return Ok(());
        };
        let late = spec.starting_deadline_seconds.is_some_and(|d| scheduled.as_second() + d < now.as_second());
        let forbid = spec.concurrency_policy.as_deref() == Some("Forbid") && !active.is_empty();
        if late {
            self.recorder.record(
                reference(cj.as_ref()),
                true,
                "Sync",
                "MissSchedule",
                format!("Missed scheduled time to start a job: {scheduled}"),
            );
        }
        if late || forbid {
            if !unchanged(&active, &last_schedule, &last_success) {
                write_status(active, last_schedule, last_success).await?;
            }
            return Ok(());
        }
        if spec.concurrency_policy.as_deref() == Some("Replace") {
            for j in owned.iter().filter(|j| active.iter().any(|r| r.uid == j.metadata.uid)) {
                self.delete_job(&ns, j).await?;
            }
            active.clear();
        }
        // Named after the scheduled minute: a second attempt (another leader) makes the same one.
        let name = format!("{}-{}", cj.metadata.name.as_deref().unwrap_or(""), scheduled.as_second() / 60);
        let template = spec.job_template.clone();
        let meta = template.metadata.clone().unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(SCHEDULED_ANNOTATION.into(), scheduled.to_string());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(cj.as_ref())]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let created = match self.jobs_api(&ns).create(&PostParams::default(), &job).await {
            Ok(j) => {
                self.recorder.record(
                    reference(cj.as_ref()),
                    false,
                    "Sync",
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                );
                j
            }
            Err(kube::Error::Api(s)) if s.code == 409 => self.jobs_api(&ns).get(&name).await?,
            Err(e) => {
                self.recorder.record(
                    reference(cj.as_ref()),
                    true,
                    "Sync",
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                );
                return Err(e.into());
            }
        };
        if !active.iter().any(|r| r.uid == created.metadata.uid) && job_finished(&created).is_none() {
            active.push(job_ref(&created));
        }
        last_schedule = Some(Time(scheduled));
        write_status(active, last_schedule, last_success).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_latest_missed_time_is_due_and_the_next_is_known() {
        let every_5 = Schedule::parse("*/5 * * * *").unwrap();
        let utc = TimeZone::UTC;
        let (due_at, next) = due(&every_5, &utc, ts("2026-12-06T10:00:00Z"), ts("2026-12-06T10:12:30Z"));
        assert_eq!(due_at.map(|t| t.to_string()).as_deref(), Some("2026-12-06T10:10:00Z"));
        assert_eq!(next.map(|t| t.to_string()).as_deref(), Some("2026-12-06T10:15:00Z"));
        // Nothing due since the last schedule.
        let (due_at, next) = due(&every_5, &utc, ts("2026-12-06T10:10:00Z"), ts("2026-12-06T10:12:30Z"));
        assert_eq!((due_at, next.map(|t| t.to_string())), (None, Some("2026-12-06T10:15:00Z".to_string())));
        // Days of missed minutes: the latest is taken.
        let minutely = Schedule::parse("* * * * *").unwrap();
        let (due_at, _) = due(&minutely, &utc, ts("2026-12-01T00:00:00Z"), ts("2026-12-06T10:12:30Z"));
        assert_eq!(due_at.map(|t| t.to_string()).as_deref(), Some("2026-12-06T10:12:00Z"));
    }
}
