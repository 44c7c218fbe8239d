//! The scheduling queue, as kube-scheduler's: an active queue ordered by priority then arrival, a
//! back-off queue for pods that just failed (1 s doubling to 10 s per attempt), and a set of
//! unschedulable pods that wait for a cluster event (a node added or changed, a pod deleted) —
//! or for `UNSCHEDULABLE_FLUSH` — to be tried again. A pod that failed while such an event
//! arrived goes to back-off rather than waiting for another event that may never come.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::framework::PodInfo;

pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without a cluster event.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(300);

/// A pod in the queue with its bookkeeping.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    pub info: Arc<PodInfo>,
    /// When the pod first entered the queue (for create→bound latency and for ordering).
    pub initial: Instant,
    /// When it (re)entered the active queue: the tie breaker among equal priorities.
    pub timestamp: Instant,
    pub attempts: u32,
    /// The scheduling cycle that popped it last.
    pub cycle: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ActiveKey {
    /// Higher priority first.
    neg_priority: i64,
    timestamp: Instant,
    uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BackoffKey {
    until: Instant,
    uid: String,
}

enum Place {
    Active(ActiveKey),
    Backoff(BackoffKey),
    Unschedulable(Instant),
    /// Popped and being scheduled.
    InFlight,
}

#[derive(Default)]
pub struct SchedulingQueue {
    pods: HashMap<String, (QueuedPod, Place)>,
    active: BTreeSet<ActiveKey>,
    backoff: BTreeSet<BackoffKey>,
    cycle: u64,
    /// The cycle during which the last cluster event arrived.
    move_request_cycle: u64,
    /// Pod updates that arrived while the pod was in flight.
    updated_in_flight: HashMap<String, Arc<PodInfo>>,
}

fn backoff_for(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    (BACKOFF_INITIAL * 2u32.pow(exp)).min(BACKOFF_MAX)
}

impl SchedulingQueue {
    pub fn new() -> SchedulingQueue {
        SchedulingQueue::default()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    fn unplace(&mut self, uid: &str) -> Option<QueuedPod> {
        let (pod, place) = self.pods.remove(uid)?;
        match place {
            Place::Active(k) => {
                self.active.remove(&k);
            }
            Place::Backoff(k) => {
                self.backoff.remove(&k);
            }
            Place::Unschedulable(_) | Place::InFlight => {}
        }
        Some(pod)
    }

    fn make_active(&mut self, mut pod: QueuedPod, now: Instant) {
        pod.timestamp = now;
        let key = ActiveKey { neg_priority: -(pod.info.priority as i64), timestamp: now, uid: pod.info.uid.clone() };
        self.active.insert(key.clone());
        self.pods.insert(pod.info.uid.clone(), (pod, Place::Active(key)));
    }

    fn make_backoff(&mut self, pod: QueuedPod, now: Instant) {
        // Counted from the failure (`timestamp`), not from now.
        let until = (pod.timestamp + backoff_for(pod.attempts)).max(now);
        let key = BackoffKey { until, uid: pod.info.uid.clone() };
        self.backoff.insert(key.clone());
        self.pods.insert(pod.info.uid.clone(), (pod, Place::Backoff(key)));
    }

    /// A new pending pod.
    pub fn add(&mut self, info: Arc<PodInfo>, now: Instant) {
        if self.pods.contains_key(&info.uid) {
            self.update(info, now);
            return;
        }
        let pod = QueuedPod { info, initial: now, timestamp: now, attempts: 0, cycle: 0 };
        self.make_active(pod, now);
    }

    /// A pending pod changed. An unschedulable pod whose spec changed may fit now: it is moved
    /// to the active (or back-off) queue, as kube-scheduler does on a pod update.
    pub fn update(&mut self, info: Arc<PodInfo>, now: Instant) {
        let uid = info.uid.clone();
        let Some((pod, place)) = self.pods.get_mut(&uid) else {
            self.add(info, now);
            return;
        };
        let spec_changed =
            pod.info.pod.spec != info.pod.spec || pod.info.pod.metadata.labels != info.pod.metadata.labels;
        match place {
            Place::InFlight => {
                self.updated_in_flight.insert(uid, info);
            }
            Place::Unschedulable(_) if spec_changed => {
                if let Some(mut pod) = self.unplace(&uid) {
                    pod.info = info;
                    self.make_active(pod, now);
                }
            }
            Place::Active(k) => {
                // Same place in line; a priority change re-sorts it.
                self.active.remove(k);
                k.neg_priority = -(info.priority as i64);
                self.active.insert(k.clone());
                pod.info = info;
            }
            _ => pod.info = info,
        }
    }

    /// A pod left the queue's concern (deleted, or bound by someone).
    pub fn delete(&mut self, uid: &str) {
        self.unplace(uid);
        self.updated_in_flight.remove(uid);
    }

    /// The next pod to schedule, if one is ready. Back-off that expired is moved first.
    pub fn pop(&mut self, now: Instant) -> Option<QueuedPod> {
        self.flush(now);
        let key = self.active.pop_first()?;
        let (mut pod, place) = self.pods.remove(&key.uid)?;
        debug_assert!(matches!(place, Place::Active(_)));
        self.cycle += 1;
        pod.attempts += 1;
        pod.cycle = self.cycle;
        self.pods.insert(key.uid.clone(), (pod.clone(), Place::InFlight));
        Some(pod)
    }

    /// When the next back-off or unschedulable timeout falls due (for the caller's timer).
    pub fn next_due(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|k| k.until);
        let unsched = self
            .pods
            .values()
            .filter_map(
                |(_, p)| if let Place::Unschedulable(since) = p { Some(*since + UNSCHEDULABLE_FLUSH) } else { None },
            )
            .min();
        match (backoff, unsched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some(first) = self.backoff.first() {
            if first.until > now {
                break;
            }
            let uid = first.uid.clone();
            if let Some(pod) = self.unplace(&uid) {
                self.make_active(pod, now);
            }
        }
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (_, p))| matches!(p, Place::Unschedulable(since) if *since + UNSCHEDULABLE_FLUSH <= now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(pod) = self.unplace(&uid) {
                self.make_active(pod, now);
            }
        }
    }

    /// The pod popped in `pod.cycle` could not be scheduled. It waits for a cluster event —
    /// unless one arrived while it was being scheduled, or it errored: then it backs off.
    pub fn failed(&mut self, mut pod: QueuedPod, unschedulable: bool, now: Instant) {
        let uid = pod.info.uid.clone();
        match self.pods.get(&uid) {
            Some((_, Place::InFlight)) => {}
            // Deleted (or re-added) meanwhile.
            _ => return,
        }
        self.pods.remove(&uid);
        if let Some(newer) = self.updated_in_flight.remove(&uid) {
            pod.info = newer;
        }
        pod.timestamp = now;
        if unschedulable && self.move_request_cycle < pod.cycle {
            self.pods.insert(uid, (pod, Place::Unschedulable(now)));
        } else {
            self.make_backoff(pod, now);
        }
    }

    /// The pod popped was scheduled (or given up on): it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        if let Some((_, Place::InFlight)) = self.pods.get(uid) {
            self.pods.remove(uid);
        }
        self.updated_in_flight.remove(uid);
    }

    /// A cluster event that may make unschedulable pods fit: every one of them is tried again
    /// (after its back-off, if that has not passed).
    pub fn move_all_unschedulable(&mut self, now: Instant) {
        self.move_request_cycle = self.cycle;
        let waiting: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (_, p))| matches!(p, Place::Unschedulable(_)))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in waiting {
            if let Some(pod) = self.unplace(&uid) {
                let backoff_ends = pod.timestamp + backoff_for(pod.attempts);
                if backoff_ends > now {
                    self.make_backoff(pod, now);
                } else {
                    self.make_active(pod, now);
                }
            }
        }
    }

    /// Tries the pod again now, whatever its back-off: an event made room that was made for it
    /// (a victim of its preemption is gone).
    pub fn activate(&mut self, uid: &str, now: Instant) {
        let waiting = matches!(self.pods.get(uid), Some((_, Place::Unschedulable(_) | Place::Backoff(_))));
        if waiting {
            if let Some(pod) = self.unplace(uid) {
                self.make_active(pod, now);
            }
        }
    }

    /// Pods waiting as unschedulable (for tests and metrics).
    pub fn unschedulable_count(&self) -> usize {
        self.pods.values().filter(|(_, p)| matches!(p, Place::Unschedulable(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"containers": [{"name": "c"}], "priority": priority}
            }))
            .unwrap(),
        )))
    }

    fn names(q: &mut SchedulingQueue, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(p) = q.pop(now) {
            out.push(p.info.uid.clone());
            q.done(&p.info.uid);
        }
        out
    }

    #[test]
    fn active_queue_orders_by_priority_then_arrival() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("low-1", 0), t);
        q.add(pod("high", 100), t + Duration::from_millis(1));
        q.add(pod("low-2", 0), t + Duration::from_millis(2));
        q.add(pod("mid", 50), t + Duration::from_millis(3));
        assert_eq!(names(&mut q, t + Duration::from_millis(4)), ["high", "mid", "low-1", "low-2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_event_then_back_off() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        let a = q.pop(t).unwrap();
        q.failed(a, true, t);
        assert_eq!(q.unschedulable_count(), 1);
        assert!(q.pop(t + Duration::from_secs(60)).is_none(), "waits for an event");
        // An event within the back-off (1 s after the first attempt) goes through back-off.
        q.move_all_unschedulable(t + Duration::from_millis(500));
        assert!(q.pop(t + Duration::from_millis(600)).is_none());
        let a = q.pop(t + Duration::from_millis(1001)).expect("after its back-off");
        assert_eq!(a.attempts, 2);
        // Second failure, event long after: straight to active.
        let t2 = t + Duration::from_secs(2);
        q.failed(a, true, t2);
        q.move_all_unschedulable(t2 + Duration::from_secs(5));
        assert!(q.pop(t2 + Duration::from_secs(5)).is_some());
    }

    #[test]
    fn an_event_during_the_attempt_sends_the_pod_to_back_off() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        let a = q.pop(t).unwrap();
        q.move_all_unschedulable(t);
        q.failed(a, true, t);
        assert_eq!(q.unschedulable_count(), 0);
        assert!(q.pop(t + Duration::from_millis(999)).is_none());
        assert!(q.pop(t + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn back_off_doubles_to_its_cap_and_errors_back_off() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(5), BACKOFF_MAX);
        assert_eq!(backoff_for(40), BACKOFF_MAX);
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        let a = q.pop(t).unwrap();
        q.failed(a, false, t);
        assert_eq!(q.next_due(), Some(t + Duration::from_secs(1)));
    }

    #[test]
    fn deletes_and_updates_while_in_flight() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        let a = q.pop(t).unwrap();
        q.update(pod("a", 7), t);
        q.failed(a, false, t);
        let a = q.pop(t + BACKOFF_INITIAL).unwrap();
        assert_eq!(a.info.priority, 7, "the update made while in flight is kept");
        q.delete("a");
        q.failed(a, true, t);
        assert!(q.is_empty(), "a deleted pod does not come back");
        // Unschedulable pods stop waiting when their spec changes.
        q.add(pod("b", 0), t);
        let b = q.pop(t).unwrap();
        q.failed(b, true, t);
        let mut changed = (*pod("b", 0)).clone();
        let mut p = (*changed.pod).clone();
        p.spec.as_mut().unwrap().node_selector = Some([("zone".to_string(), "a".to_string())].into());
        changed.pod = Arc::new(p);
        q.update(Arc::new(changed), t + Duration::from_secs(20));
        assert!(q.pop(t + Duration::from_secs(20)).is_some());
    }

    #[test]
    fn a_pod_whose_room_was_made_skips_its_back_off() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        for i in 0..4 {
            let a = q.pop(t + BACKOFF_MAX * i).unwrap();
            q.failed(a, false, t + BACKOFF_MAX * i);
        }
        let later = t + BACKOFF_MAX * 3 + Duration::from_millis(10);
        assert!(q.pop(later).is_none(), "backing off");
        q.activate("a", later);
        assert!(q.pop(later).is_some());
        q.activate("missing", later);
    }

    #[test]
    fn unschedulable_pods_are_flushed_after_a_while() {
        let mut q = SchedulingQueue::new();
        let t = Instant::now();
        q.add(pod("a", 0), t);
        let a = q.pop(t).unwrap();
        q.failed(a, true, t);
        assert_eq!(q.next_due(), Some(t + UNSCHEDULABLE_FLUSH));
        assert!(q.pop(t + UNSCHEDULABLE_FLUSH - Duration::from_secs(1)).is_none());
        assert!(q.pop(t + UNSCHEDULABLE_FLUSH).is_some());
    }
}
