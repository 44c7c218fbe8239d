//! Revisions never go backwards for any client: each process's acknowledged operations, in the order
//! they completed, observed non-decreasing store revisions. etcd promises this for a client that
//! stays on one member; Keelson promises it across reconnects too, since reads are linearizable.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Event, Kind, NEMESIS_PROCESS};

#[derive(Clone, Debug, Serialize)]
pub struct MonotonicReport {
    pub processes: usize,
    /// Acknowledged events that carried a revision.
    pub events_checked: usize,
    pub anomalies: Vec<RevisionRegression>,
}

/// Two consecutive acknowledged events of one process, the later with the lower revision.
#[derive(Clone, Debug, Serialize)]
pub struct RevisionRegression {
    pub process: i64,
    pub earlier: Event,
    pub later: Event,
}

impl MonotonicReport {
    pub fn valid(&self) -> Option<bool> {
        Some(self.anomalies.is_empty())
    }

    pub fn summary(&self) -> String {
        format!(
            "{} processes, {} acknowledged revisions: {} regressions",
            self.processes,
            self.events_checked,
            self.anomalies.len()
        )
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.iter().map(RevisionRegression::render).collect()
    }
}

impl RevisionRegression {
    pub fn render(&self) -> String {
        let show = |e: &Event| {
            format!("event #{} at {} ns: {:?} revision {}", e.index, e.time_ns, e.op, e.revision.unwrap_or_default())
        };
        format!(
            "process {} went back from revision {} to {}:\n  {}\n  {}",
            self.process,
            self.earlier.revision.unwrap_or_default(),
            self.later.revision.unwrap_or_default(),
            show(&self.earlier),
            show(&self.later)
        )
    }
}

/// Checks every client process of `history`, taken in history order (completion order).
pub fn check_monotonic_revisions(history: &[Event]) -> MonotonicReport {
    // Consecutive pairs suffice: a sequence is non-decreasing iff every adjacent pair is, and one
    // step back is then reported once rather than against every later event.
    let mut last: BTreeMap<i64, &Event> = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut events_checked = 0;
    for e in history {
        if e.process == NEMESIS_PROCESS || e.kind != Kind::Ok {
            continue;
        }
        let Some(revision) = e.revision else { continue };
        events_checked += 1;
        if let Some(prev) = last.insert(e.process, e) {
            if prev.revision.is_some_and(|p| revision < p) {
                anomalies.push(RevisionRegression { process: e.process, earlier: prev.clone(), later: e.clone() });
            }
        }
    }
    MonotonicReport { processes: last.len(), events_checked, anomalies }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn ok(index: usize, process: i64, revision: Option<i64>) -> Event {
        Event {
            index,
            time_ns: index as u64 * 10,
            process,
            kind: Kind::Ok,
            op: Op::Read { key: "k".into(), value: None },
            revision,
            error: None,
        }
    }

    #[test]
    fn a_client_going_back_in_revisions_is_reported_with_both_events() {
        // Goal: 5 -> 7 -> 6 on one process is one regression, witnessed by the 7 and the 6.
        let history = vec![ok(0, 1, Some(5)), ok(1, 2, Some(9)), ok(2, 1, Some(7)), ok(3, 1, Some(6))];
        let report = check_monotonic_revisions(&history);
        assert_eq!(report.valid(), Some(false));
        assert_eq!(report.anomalies.len(), 1);
        let a = &report.anomalies[0];
        assert_eq!((a.process, a.earlier.index, a.later.index), (1, 2, 3));
        assert!(a.render().contains("went back from revision 7 to 6"), "{}", a.render());
    }

    #[test]
    fn other_clients_failures_and_missing_revisions_do_not_count() {
        // Goal: only one process's own acknowledged revisions are compared; equal revisions are fine.
        let mut failed = ok(3, 1, Some(1));
        failed.kind = Kind::Fail;
        let history = vec![ok(0, 1, Some(5)), ok(1, 2, Some(2)), ok(2, 1, None), failed, ok(4, 1, Some(5))];
        let report = check_monotonic_revisions(&history);
        assert_eq!(report.valid(), Some(true), "{:?}", report.anomalies());
        assert_eq!((report.processes, report.events_checked), (2, 3));
    }
}
