//! The Job controller (Kubernetes' `job`, with `ttl-after-finished`): runs a job's pods until
//! `completions` succeed (or, without completions, until one does and none is active), at most
//! `parallelism` at once, each completion index once in Indexed mode; pods that fail are
//! replaced after a back-off (10 s doubling to 6 min) until `backoffLimit` failures (restarts
//! count, for OnFailure pods); `activeDeadlineSeconds` ends it; `suspend` removes its pods.
//! Finished pods are counted through Kubernetes' tracking finalizer: a pod's uid is recorded in
//! `status.uncountedTerminatedPods`, then its finalizer removed, then it is counted, so a pod
//! that vanishes is never lost or counted twice. `ttlSecondsAfterFinished` deletes a finished job.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use serde_json::{json, Value};

use super::expectations::Expectations;
use super::informer::{key_of, Change, Informer};
use super::pods::{self, controller_of, controller_ref, is_ready};
use super::queue::WorkQueue;
use super::{Controller, Manager};
use crate::events::{reference, Recorder};
use crate::labels::Selector;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The first back-off after a failure, and the longest.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// The back-off before a replacement after `failures` failures.
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(10) as u32).min(BACKOFF_MAX)
}

/// Indexes as Kubernetes writes them: sorted, runs joined (`0-2,4`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().peekable();
    while let Some(&start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

/// How many pods should be active (NonIndexed): up to parallelism, never more than the
/// completions still wanted; without completions, none once one succeeded.
pub fn wanted_active(parallelism: i32, completions: Option<i32>, succeeded: i32) -> i32 {
    match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        None if succeeded > 0 => 0,
        None => parallelism.max(0),
    }
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(INDEX_ANNOTATION)?.parse().ok()
}

fn condition_true(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn finished(job: &Job) -> bool {
    condition_true(job, "Complete") || condition_true(job, "Failed")
}

fn new_condition(kind: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn has_tracking(pod: &Pod) -> bool {
    pod.metadata.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER)
}

pub struct JobController {
    client: kube::Client,
    jobs: Arc<Informer<Job>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    expectations: Expectations,
    recorder: Recorder,
}

impl JobController {
    pub fn new(m: &Manager) -> Arc<JobController> {
        let c = Arc::new(JobController {
            client: m.client.clone(),
            jobs: m.informers.jobs(),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            expectations: Expectations::default(),
            recorder: Recorder::start(m.client.clone(), "job-controller", &m.identity),
        });
        let weak = Arc::downgrade(&c);
        c.jobs.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(j) | Change::Updated { new: j, .. } | Change::Deleted(j)) = change;
            if let Change::Deleted(_) = change {
                c.expectations.delete(&key_of(j.as_ref()));
            }
            c.queue.add(&key_of(j.as_ref()));
        });
        let weak = Arc::downgrade(&c);
        c.pods.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (pod, created, gone) = match change {
                Change::Added(p) => (p, true, false),
                Change::Updated { old, new } => {
                    if old.metadata.resource_version == new.metadata.resource_version {
                        return;
                    }
                    (new, false, new.metadata.deletion_timestamp.is_some() && old.metadata.deletion_timestamp.is_none())
                }
                Change::Deleted(p) => (p, false, true),
            };
            let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "Job") else { return };
            let Some(job) = c
                .jobs
                .get(pod.metadata.namespace.as_deref().unwrap_or(""), &r.name)
                .filter(|j| j.metadata.uid.as_deref() == Some(r.uid.as_str()))
            else {
                return;
            };
            let key = key_of(job.as_ref());
            if created {
                c.expectations.creation_observed(&key);
            }
            if gone {
                c.expectations.deletion_observed(&key, &key_of(pod.as_ref()));
            }
            c.queue.add(&key);
        });
        c
    }

    fn pod_api(&self, job: &Job) -> Api<Pod> {
        Api::namespaced(self.client.clone(), job.metadata.namespace.as_deref().unwrap_or(""))
    }

    async fn write_status(&self, job: &Job, status: Value) -> anyhow::Result<()> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), job.metadata.namespace.as_deref().unwrap_or(""));
        let patch = json!({"metadata": {"resourceVersion": job.metadata.resource_version}, "status": status});
        match api
            .patch_status(job.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_tracking(&self, job: &Job, pod: &Pod) -> anyhow::Result<()> {
        let kept: Vec<&String> =
            pod.metadata.finalizers.iter().flatten().filter(|f| *f != TRACKING_FINALIZER).collect();
        let patch = json!({"metadata": {"finalizers": if kept.is_empty() { Value::Null } else { json!(kept) }, "resourceVersion": pod.metadata.resource_version}});
        match self
            .pod_api(job)
            .patch(pod.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_pods(&self, key: &str, job: &Job, victims: &[Arc<Pod>]) -> anyhow::Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        self.expectations.expect_deletions(key, victims.iter().map(|p| key_of(p.as_ref())));
        for pod in victims {
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            match self.pod_api(job).delete(pod.metadata.name.as_deref().unwrap_or(""), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    self.expectations.deletion_observed(key, &key_of(pod.as_ref()))
                }
                Err(e) => {
                    self.expectations.deletion_observed(key, &key_of(pod.as_ref()));
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn job_pod(&self, job: &Job, index: Option<i32>) -> Pod {
        let name = job.metadata.name.clone().unwrap_or_default();
        let ns = job.metadata.namespace.as_deref().unwrap_or("");
        let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let prefix = match index {
            Some(i) => format!("{name}-{i}"),
            None => name.clone(),
        };
        let mut pod = pods::pod_from_template(&template, ns, &prefix, controller_ref(job));
        pod.metadata.finalizers.get_or_insert_with(Vec::new).push(TRACKING_FINALIZER.into());
        if let Some(i) = index {
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(INDEX_ANNOTATION.into(), i.to_string());
            pod.metadata.labels.get_or_insert_with(Default::default).insert(INDEX_ANNOTATION.into(), i.to_string());
            let spec = pod.spec.get_or_insert_with(Default::default);
            spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
            };
            for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
        }
        pod
    }
}

impl Controller for JobController {
    const NAME: &'static str = "job";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let Some(job) = self.jobs.get_key(key) else {
            self.expectations.delete(key);
            return Ok(());
        };
        let now = Timestamp::now();
        let spec = job.spec.clone().unwrap_or_default();
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let sel = spec
            .selector
            .as_ref()
            .map(|s| Selector::parse(s).unwrap_or_else(|_| Selector::nothing()))
            .unwrap_or_else(Selector::nothing);
        let owned = pods::claim(&self.client, job.as_ref(), &sel, &self.pods, pods::is_active).await?;
        let status = job.status.clone().unwrap_or_default();

        // Counting finished pods through the tracking finalizer, in three steps that each
        // survive a restart: record the uid as uncounted, remove the finalizer, count.
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut uncounted_ok: BTreeSet<String> = uncounted.succeeded.clone().unwrap_or_default().into_iter().collect();
        let mut uncounted_failed: BTreeSet<String> = uncounted.failed.clone().unwrap_or_default().into_iter().collect();
        let before = (uncounted_ok.len(), uncounted_failed.len());
        for p in owned.iter().filter(|p| has_tracking(p)) {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if uncounted_ok.contains(&uid) || uncounted_failed.contains(&uid) {
                continue;
            }
            match pods::phase(p) {
                "Succeeded" => {
                    uncounted_ok.insert(uid);
                }
                "Failed" => {
                    uncounted_failed.insert(uid);
                }
                // Deleted before it finished: a failure.
                _ if p.metadata.deletion_timestamp.is_some() => {
                    uncounted_failed.insert(uid);
                }
                _ => {}
            }
        }
        if (uncounted_ok.len(), uncounted_failed.len()) != before {
            return self
                .write_status(
                    &job,
                    json!({"uncountedTerminatedPods": {"succeeded": uncounted_ok, "failed": uncounted_failed}}),
                )
                .await;
        }
        let mut succeeded = status.succeeded.unwrap_or(0);
        let mut failed = status.failed.unwrap_or(0);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
        if !uncounted_ok.is_empty() || !uncounted_failed.is_empty() {
            for p in owned.iter().filter(|p| has_tracking(p)) {
                let uid = p.metadata.uid.as_deref().unwrap_or("");
                if uncounted_ok.contains(uid) || uncounted_failed.contains(uid) {
                    self.remove_tracking(&job, p).await?;
                }
            }
            for p in &owned {
                if uncounted_ok.contains(p.metadata.uid.as_deref().unwrap_or("")) {
                    if let Some(i) = index_of(p) {
                        completed.insert(i);
                    }
                }
            }
            succeeded += uncounted_ok.len() as i32;
            failed += uncounted_failed.len() as i32;
            let mut st = json!({"succeeded": succeeded, "failed": failed, "uncountedTerminatedPods": {"succeeded": [], "failed": []}});
            if indexed {
                st["completedIndexes"] = json!(format_indexes(&completed));
                st["succeeded"] = json!(completed.len());
            }
            return self.write_status(&job, st).await;
        }
        if indexed {
            succeeded = completed.len() as i32;
        }

        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).cloned().collect();
        let terminating = owned.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count() as i32;
        let ready = active.iter().filter(|p| is_ready(p)).count() as i32;

        if finished(&job) {
            // A finished job's leftovers are stopped; its time to live counts from its end.
            self.delete_pods(key, &job, &active).await?;
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                let ended = status.completion_time.as_ref().map(|t| t.0).or_else(|| {
                    status
                        .conditions
                        .iter()
                        .flatten()
                        .filter(|c| c.status == "True")
                        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                        .max()
                });
                if let Some(ended) = ended {
                    let due = ended.as_second() + i64::from(ttl);
                    if now.as_second() >= due {
                        let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
                        let dp = DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Background),
                            preconditions: Some(Preconditions {
                                uid: job.metadata.uid.clone(),
                                resource_version: None,
                            }),
                            ..Default::default()
                        };
                        match api.delete(job.metadata.name.as_deref().unwrap_or(""), &dp).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        self.queue.add_after(key, Duration::from_secs((due - now.as_second()) as u64));
                    }
                }
            }
            return Ok(());
        }

        let suspended = spec.suspend == Some(true);
        let restarts: i32 =
            if job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure")
            {
                active
                    .iter()
                    .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
                    .map(|c| c.restart_count)
                    .sum()
            } else {
                0
            };
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let start = status.start_time.as_ref().map(|t| t.0);
        let deadline_passed = match (spec.active_deadline_seconds, start) {
            (Some(d), Some(s)) if !suspended => now.as_second() >= s.as_second() + d,
            _ => false,
        };
        let mut conditions: Vec<JobCondition> = status.conditions.clone().unwrap_or_default();
        let mut set = |c: JobCondition| {
            conditions.retain(|x| x.type_ != c.type_);
            conditions.push(c);
        };
        let failure = if failed + restarts > backoff_limit {
            Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        } else if deadline_passed {
            Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
        } else {
            None
        };
        let mut st = json!({"active": active.len(), "ready": ready, "terminating": terminating});
        if let Some((reason, message)) = failure {
            self.delete_pods(key, &job, &active).await?;
            set(new_condition("FailureTarget", reason, message, now));
            set(new_condition("Failed", reason, message, now));
            self.recorder.record(reference(job.as_ref()), true, "Sync", reason, message.to_string());
            st["conditions"] = json!(conditions);
            return self.write_status(&job, st).await;
        }
        let completions = spec.completions;
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            self.delete_pods(key, &job, &active).await?;
            set(new_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            set(new_condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", now));
            self.recorder.record(reference(job.as_ref()), false, "Sync", "Completed", "Job completed".into());
            st["conditions"] = json!(conditions);
            st["completionTime"] = json!(Time(now));
            return self.write_status(&job, st).await;
        }
        if suspended {
            self.delete_pods(key, &job, &active).await?;
            if !condition_true(&job, "Suspended") {
                set(new_condition("Suspended", "JobSuspended", "Job suspended", now));
                st["conditions"] = json!(conditions);
                st["startTime"] = Value::Null;
            }
            return self.write_status(&job, st).await;
        }
        if condition_true(&job, "Suspended") {
            let mut resumed = new_condition("Suspended", "JobResumed", "Job resumed", now);
            resumed.status = "False".into();
            set(resumed);
        }
        if start.is_none() {
            st["startTime"] = json!(Time(now));
        }
        if let Some(d) = spec.active_deadline_seconds {
            let from = start.unwrap_or(now).as_second();
            self.queue.add_after(key, Duration::from_secs((from + d - now.as_second()).max(0) as u64 + 1));
        }
        // Replacements wait out the back-off after the last failure.
        let wait = backoff(failed);
        let last_failure = owned
            .iter()
            .filter(|p| pods::phase(p) == "Failed")
            .filter_map(|p| {
                p.status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .iter()
                    .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
                    .max()
            })
            .max();
        let blocked =
            last_failure.map(|t| t.as_second() + wait.as_secs() as i64 - now.as_second()).filter(|left| *left > 0);
        if self.expectations.satisfied(key) {
            let parallelism = spec.parallelism.unwrap_or(1);
            let api = self.pod_api(&job);
            if indexed {
                let c = completions.unwrap_or(0);
                let running: HashSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                // Two active pods of one index: the newer goes.
                let mut seen = HashSet::new();
                let duplicates: Vec<Arc<Pod>> =
                    active.iter().filter(|p| index_of(p).is_some_and(|i| !seen.insert(i) || i >= c)).cloned().collect();
                self.delete_pods(key, &job, &duplicates).await?;
                let room = (parallelism - (active.len() - duplicates.len()) as i32).max(0) as usize;
                let pending: Vec<i32> =
                    (0..c).filter(|i| !completed.contains(i) && !running.contains(i)).take(room).collect();
                if !pending.is_empty() && blocked.is_none() {
                    self.expectations.expect_creations(key, pending.len());
                    for i in pending {
                        if let Err(e) = api.create(&PostParams::default(), &self.job_pod(&job, Some(i))).await {
                            self.expectations.creation_observed(key);
                            return Err(e.into());
                        }
                    }
                }
            } else {
                let want = wanted_active(parallelism, completions, succeeded) as usize;
                if active.len() < want && blocked.is_none() {
                    let n = want - active.len();
                    self.expectations.expect_creations(key, n);
                    let pod = self.job_pod(&job, None);
                    let out = super::replicaset::slow_start(n, |_| {
                        let (api, pod) = (api.clone(), pod.clone());
                        async move { api.create(&PostParams::default(), &pod).await }
                    })
                    .await;
                    for _ in 0..out.skipped + out.results.iter().filter(|r| r.is_err()).count() {
                        self.expectations.creation_observed(key);
                    }
                    if let Some(Err(e)) = out.results.into_iter().find(|r| r.is_err()) {
                        return Err(e.into());
                    }
                } else if active.len() > want {
                    let extra = super::replicaset::pods_to_delete(&active, active.len() - want);
                    self.delete_pods(key, &job, &extra).await?;
                }
            }
        }
        if let Some(left) = blocked {
            self.queue.add_after(key, Duration::from_secs(left as u64));
        }
        st["conditions"] = if conditions.is_empty() { Value::Null } else { json!(conditions) };
        let old = json!({
            "active": status.active.unwrap_or(0),
            "ready": status.ready.unwrap_or(0),
            "terminating": status.terminating.unwrap_or(0),
            "conditions": status.conditions,
        });
        let mut compare = st.clone();
        compare.as_object_mut().map(|m| m.remove("startTime"));
        if compare != old || st.get("startTime").is_some() {
            self.write_status(&job, st).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_pods_follow_parallelism_and_completions() {
        let cases = [
            (1, Some(1), 0, 1),
            (3, Some(5), 0, 3),
            (3, Some(5), 4, 1),
            (3, Some(5), 5, 0),
            (2, None, 0, 2),
            (2, None, 1, 0),
            (0, Some(3), 0, 0),
        ];
        for (p, c, s, want) in cases {
            assert_eq!(wanted_active(p, c, s), want, "parallelism {p} completions {c:?} succeeded {s}");
        }
    }

    #[test]
    fn indexes_round_trip_in_kubernetes_notation() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
    }

    #[test]
    fn back_off_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(100), BACKOFF_MAX);
    }
}
