//! Locks built on leases: never two holders at once. A client believes it holds a lock from the
//! answer of the Txn that took it until the first of: the moment it sends its release; a
//! keep-alive answered "lease gone"; its lease's deadline, computed conservatively as the send time
//! of the last renewal that answered TTL > 0 (or of the grant) plus that TTL, since the store counts
//! the TTL from when it processed the request, which is later. A keep-alive answered TTL > 0 after
//! the deadline passed proves the lease, and so its key, still alive: belief resumes from that
//! answer. Each stretch of belief is a `Hold`.
//!
//! Two checks, both sound on a correct store (every bound is taken on the safe side of the clock:
//! beliefs start at recorded answer times and end at recorded send times, which lie outside the
//! real ones):
//! - no two holds of one lock overlap in real time;
//! - per the store's own history (the reference watch), the key a hold put is not deleted or
//!   overwritten before the hold ends: the revision that removed it had happened by the earliest
//!   time any answer or watch delivery showed that revision or a later one.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::watch::{EventKind, RevisionLog, WatchDelivery};
use crate::history::{pair, Event, Kind, Op, NEMESIS_PROCESS};

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldEnd {
    /// The client sent its release.
    Release,
    /// Its lease's conservative deadline passed without a renewal answered in time.
    Deadline,
    /// A keep-alive answered that the lease is gone.
    LeaseGone,
}

/// A stretch of time during which one client believed it held a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub process: i64,
    pub lock: String,
    pub token: String,
    pub lease: i64,
    /// The revision of the put that took the lock (the Txn's answer).
    pub revision: Option<i64>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ended_by: HoldEnd,
    /// Started by a keep-alive answered after the deadline had passed, not by the Txn.
    pub resumed: bool,
    /// The history event that started it.
    pub event: usize,
}

impl Hold {
    fn render(&self) -> String {
        format!(
            "p{} held {:?} (token {:?}, lease {:x}, put at revision {}) from {:.6} s{} to {:.6} s ({:?}), event #{}",
            self.process,
            self.lock,
            self.token,
            self.lease,
            self.revision.map_or("?".to_string(), |r| r.to_string()),
            secs(self.start_ns),
            if self.resumed { " (resumed by a late keep-alive)" } else { "" },
            secs(self.end_ns),
            self.ended_by,
            self.event
        )
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A violation of mutual exclusion.
#[derive(Clone, Debug, Serialize)]
pub enum LockAnomaly {
    /// Two clients believed they held one lock at the same time.
    Overlap { first: Hold, second: Hold },
    /// The store removed the key of a hold while the client still believed it held the lock.
    LostWhileHeld {
        hold: Hold,
        /// The revision that deleted or overwrote the key, and whether it was a delete.
        removed_at: i64,
        deleted: bool,
        /// When that revision had happened by, and what showed it.
        observed_ns: u64,
        observed_by: String,
        /// The next put of the key after the removal, if any: (revision, token).
        next_owner: Option<(i64, String)>,
    },
    /// A Txn answered that it took the lock at a revision where the store's history has no such put.
    NotInHistory { hold: Hold },
}

impl LockAnomaly {
    pub fn render(&self) -> String {
        match self {
            LockAnomaly::Overlap { first, second } => format!(
                "two holders of {:?} at once, from {:.6} s to {:.6} s:\n  {}\n  {}",
                first.lock,
                secs(second.start_ns.max(first.start_ns)),
                secs(second.end_ns.min(first.end_ns)),
                first.render(),
                second.render()
            ),
            LockAnomaly::LostWhileHeld { hold, removed_at, deleted, observed_ns, observed_by, next_owner } => {
                let next = match next_owner {
                    Some((r, token)) => format!("; token {token:?} took it at revision {r}"),
                    None => String::new(),
                };
                format!(
                    "{:?} was {} at revision {removed_at}, seen by {:.6} s ({observed_by}), while its holder still believed it held it{next}:\n  {}",
                    hold.lock,
                    if *deleted { "deleted" } else { "overwritten" },
                    secs(*observed_ns),
                    hold.render()
                )
            }
            LockAnomaly::NotInHistory { hold } => {
                format!("the Txn's put is not in the store's history:\n  {}", hold.render())
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseReport {
    pub holds: Vec<Hold>,
    /// Acquisitions (Txns answered "taken").
    pub acquisitions: usize,
    /// Holds that a late keep-alive resumed.
    pub resumed: usize,
    /// Holds whose put lies past the end of the reference log: not checked against it.
    pub unchecked: usize,
    pub anomalies: Vec<LockAnomaly>,
}

impl LeaseReport {
    /// `Some(false)` on any anomaly; `None` when nothing was held or some hold could not be
    /// compared with the store's history; else `Some(true)`.
    pub fn valid(&self) -> Option<bool> {
        if !self.anomalies.is_empty() {
            Some(false)
        } else if self.holds.is_empty() || self.unchecked > 0 {
            None
        } else {
            Some(true)
        }
    }

    pub fn summary(&self) -> String {
        let overlaps = self.anomalies.iter().filter(|a| matches!(a, LockAnomaly::Overlap { .. })).count();
        let lost = self.anomalies.iter().filter(|a| matches!(a, LockAnomaly::LostWhileHeld { .. })).count();
        let mut s = format!(
            "{} acquisitions, {} holds ({} resumed by a late keep-alive): {} overlapping holders, {} locks lost while held",
            self.acquisitions,
            self.holds.len(),
            self.resumed,
            overlaps,
            lost
        );
        let other = self.anomalies.len() - overlaps - lost;
        if other > 0 {
            s.push_str(&format!(", {other} puts not in the store's history"));
        }
        if self.unchecked > 0 {
            s.push_str(&format!("; {} holds past the reference log", self.unchecked));
        }
        s
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.iter().map(LockAnomaly::render).collect()
    }
}

/// Each process's holds, from its operations in order.
pub fn holds(history: &[Event]) -> (Vec<Hold>, usize) {
    let mut by_process: BTreeMap<i64, Vec<crate::history::Operation>> = BTreeMap::new();
    for o in pair(history).into_iter().filter(|o| o.process != NEMESIS_PROCESS) {
        by_process.entry(o.process).or_default().push(o);
    }
    let mut out = Vec::new();
    let mut acquisitions = 0;
    for (process, ops) in by_process {
        // Per lease, the conservative deadline.
        let mut deadlines: HashMap<i64, u64> = HashMap::new();
        // The lock this process took and has not given up, and its hold if belief is on now.
        let mut taken: Option<Hold> = None;
        let mut open: Option<Hold> = None;
        let close = |open: &mut Option<Hold>, at: u64, why: HoldEnd, out: &mut Vec<Hold>| {
            if let Some(mut h) = open.take() {
                h.end_ns = at.max(h.start_ns);
                h.ended_by = why;
                if h.end_ns > h.start_ns {
                    out.push(h);
                }
            }
        };
        for o in ops {
            let sent = o.invoke.time_ns;
            let Some(c) = &o.complete else {
                // No answer: a release still ends belief when sent.
                if let Op::Release { .. } = &o.invoke.op {
                    let at = open.as_ref().map(|h| sent.min(deadlines.get(&h.lease).copied().unwrap_or(0)));
                    close(&mut open, at.unwrap_or(sent), HoldEnd::Release, &mut out);
                    taken = None;
                }
                continue;
            };
            let answered = c.time_ns;
            // Belief lapses at the deadline if nothing renewed it before.
            if let Some(h) = &open {
                let deadline = deadlines.get(&h.lease).copied().unwrap_or(0);
                let now = if matches!(o.invoke.op, Op::Release { .. }) { sent } else { answered };
                if deadline <= now {
                    close(&mut open, deadline, HoldEnd::Deadline, &mut out);
                }
            }
            match (&o.invoke.op, &c.op, c.kind) {
                (Op::Grant { .. }, Op::Grant { lease: Some(lease), ttl: Some(ttl) }, Kind::Ok) => {
                    deadlines.insert(*lease, sent.saturating_add(ttl_ns(*ttl)));
                }
                (Op::Acquire { lock, token, lease }, _, Kind::Ok) => {
                    acquisitions += 1;
                    let hold = Hold {
                        process,
                        lock: lock.clone(),
                        token: token.clone(),
                        lease: *lease,
                        revision: c.revision,
                        start_ns: answered,
                        end_ns: answered,
                        ended_by: HoldEnd::Deadline,
                        resumed: false,
                        event: c.index,
                    };
                    // Taken after the deadline: the lease may be gone already; only a keep-alive
                    // answered TTL > 0 can show otherwise.
                    if deadlines.get(lease).is_some_and(|&d| answered < d) {
                        open = Some(hold.clone());
                    }
                    taken = Some(hold);
                }
                (Op::KeepAlive { lease, .. }, Op::KeepAlive { ttl: Some(ttl), .. }, Kind::Ok) if *ttl > 0 => {
                    let d = deadlines.entry(*lease).or_insert(0);
                    *d = (*d).max(sent.saturating_add(ttl_ns(*ttl)));
                    let deadline = *d;
                    if open.is_none() && answered < deadline {
                        if let Some(t) = taken.as_ref().filter(|t| t.lease == *lease) {
                            open = Some(Hold {
                                start_ns: answered,
                                end_ns: answered,
                                resumed: true,
                                event: c.index,
                                ..t.clone()
                            });
                        }
                    }
                }
                (Op::KeepAlive { lease, .. }, _, Kind::Fail) => {
                    if open.as_ref().is_some_and(|h| h.lease == *lease) {
                        let deadline = deadlines.get(lease).copied().unwrap_or(0);
                        close(&mut open, answered.min(deadline), HoldEnd::LeaseGone, &mut out);
                    }
                    if taken.as_ref().is_some_and(|t| t.lease == *lease) {
                        taken = None;
                    }
                }
                (Op::Release { .. }, _, _) => {
                    close(&mut open, sent, HoldEnd::Release, &mut out);
                    taken = None;
                }
                _ => {}
            }
        }
        if let Some(h) = &open {
            let deadline = deadlines.get(&h.lease).copied().unwrap_or(0);
            close(&mut open, deadline, HoldEnd::Deadline, &mut out);
        }
    }
    out.sort_by_key(|h| (h.start_ns, h.process));
    (out, acquisitions)
}

fn ttl_ns(ttl_s: i64) -> u64 {
    (ttl_s.max(0) as u64).saturating_mul(1_000_000_000)
}

/// When each revision had happened by: the earliest recorded answer or watch delivery that showed
/// it or a later one.
struct Observed {
    /// (revision, earliest time at which it or a later one was seen, what showed it), by revision.
    suffix_min: Vec<(i64, u64, String)>,
}

impl Observed {
    fn new(history: &[Event], deliveries: &[WatchDelivery]) -> Observed {
        let mut seen: Vec<(i64, u64, String)> = Vec::new();
        for e in history.iter().filter(|e| e.kind != Kind::Invoke) {
            if let Some(r) = e.revision {
                seen.push((r, e.time_ns, format!("answer to p{}, event #{}", e.process, e.index)));
            }
        }
        for (i, d) in deliveries.iter().enumerate() {
            if let Some(r) = d.events.iter().map(|e| e.mod_revision).max() {
                seen.push((r, d.time_ns, format!("watcher {} delivery #{i}", d.watcher)));
            }
        }
        seen.sort_by_key(|(r, t, _)| (std::cmp::Reverse(*r), *t));
        let mut suffix_min: Vec<(i64, u64, String)> = Vec::with_capacity(seen.len());
        for (r, t, what) in seen {
            match suffix_min.last() {
                Some((_, best, _)) if *best <= t => {
                    let (_, best, what) = suffix_min.last().cloned().expect("just matched");
                    suffix_min.push((r, best, what));
                }
                _ => suffix_min.push((r, t, what)),
            }
        }
        suffix_min.reverse();
        Observed { suffix_min }
    }

    /// The earliest time at which `revision` was known to have happened.
    fn by(&self, revision: i64) -> Option<(u64, &str)> {
        let i = self.suffix_min.partition_point(|(r, _, _)| *r < revision);
        self.suffix_min.get(i).map(|(_, t, what)| (*t, what.as_str()))
    }
}

/// An event of one key: revision, kind, value put.
type KeyEvent<'a> = (i64, EventKind, Option<&'a str>);

/// Checks the lock holds of a lease workload's history against each other and against the store's
/// history of the lock keys (`reference`, complete up to its header revision); `deliveries` are the
/// run's watch deliveries, which date revisions.
pub fn check_locks(history: &[Event], reference: &RevisionLog, deliveries: &[WatchDelivery]) -> LeaseReport {
    let (holds, acquisitions) = holds(history);
    let mut anomalies = Vec::new();
    // Overlaps, per lock: holds sorted by start; each against those still open.
    let mut by_lock: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in &holds {
        by_lock.entry(&h.lock).or_default().push(h);
    }
    for list in by_lock.values() {
        let mut active: Vec<&Hold> = Vec::new();
        for h in list {
            active.retain(|a| a.end_ns > h.start_ns);
            for a in &active {
                if a.process != h.process {
                    anomalies.push(LockAnomaly::Overlap { first: (*a).clone(), second: (*h).clone() });
                }
            }
            active.push(h);
        }
    }
    // Against the store's history: per lock key, its events by revision.
    let mut key_events: HashMap<&str, Vec<KeyEvent>> = HashMap::new();
    for (&revision, events) in &reference.revisions {
        for e in events {
            key_events.entry(e.key.as_str()).or_default().push((revision, e.kind, e.value.as_deref()));
        }
    }
    let observed = Observed::new(history, deliveries);
    let mut unchecked = 0;
    for h in &holds {
        let Some(put_at) = h.revision.filter(|&r| r <= reference.header_revision) else {
            unchecked += 1;
            continue;
        };
        let events = key_events.get(h.lock.as_str()).map(Vec::as_slice).unwrap_or_default();
        let i = events.partition_point(|(r, _, _)| *r < put_at);
        match events.get(i) {
            Some((r, EventKind::Put, Some(v))) if *r == put_at && *v == h.token => {}
            _ => {
                // Reported once per acquisition, not per resumed hold.
                if !h.resumed {
                    anomalies.push(LockAnomaly::NotInHistory { hold: h.clone() });
                }
                continue;
            }
        }
        let Some(&(removed_at, kind, _)) = events.get(i + 1) else { continue };
        let Some((observed_ns, observed_by)) = observed.by(removed_at) else { continue };
        if observed_ns < h.end_ns {
            let next_owner = events[i + 1..]
                .iter()
                .find(|(_, k, _)| *k == EventKind::Put)
                .map(|(r, _, v)| (*r, v.unwrap_or_default().to_string()));
            anomalies.push(LockAnomaly::LostWhileHeld {
                hold: h.clone(),
                removed_at,
                deleted: kind == EventKind::Delete,
                observed_ns,
                observed_by: observed_by.to_string(),
                next_owner,
            });
        }
    }
    let resumed = holds.iter().filter(|h| h.resumed).count();
    LeaseReport { holds, acquisitions, resumed, unchecked, anomalies }
}
