//! Checkers of a run: each takes the recorded history (and what was read after healing) and says
//! valid, invalid with minimal witnesses, or unknown. `check_all` runs them all into one `Verdict`.

pub mod lease;
pub mod linearizable;
pub mod lost;
pub mod monotonic;
pub mod recovery;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

pub use lease::{check_locks, Hold, HoldEnd, LeaseReport, LockAnomaly};
pub use linearizable::{check_registers, KeyOutcome, KeyReport, LinearizabilityReport, Witness, WitnessOp};
pub use lost::{check_lost_writes, LostAnomaly, LostReport};
pub use monotonic::{check_monotonic_revisions, MonotonicReport, RevisionRegression};
pub use recovery::{check_recovery, RecoveryReport};
pub use watch::{
    check_watches, progress_ahead_of_events, EventKind, ProgressAhead, RevisionLog, WatchAnomaly, WatchCheck,
    WatchDelivery, WatchReport, WatchedEvent, WatcherSpec,
};

use crate::history::{Event, Op};

/// Anomalies a text rendering shows per section; the rest are counted (all stay in the JSON).
const SECTION_ANOMALIES_SHOWN_MAX: usize = 20;

/// One checker's result.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub name: String,
    pub valid: Option<bool>,
    /// One line of counts.
    pub summary: String,
    /// Each anomaly with its witness, as readable text (possibly several lines).
    pub anomalies: Vec<String>,
}

/// Something the target is known to do wrong, observed and counted but not judged: it neither
/// invalidates a run nor hides an anomaly (the checks that it would fool do not rely on it).
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub name: String,
    pub count: usize,
    /// One line of counts, then examples.
    pub details: Vec<String>,
}

/// The name of the finding for etcd issue 15220.
pub const PROGRESS_AHEAD_FINDING: &str = "progress notification ahead of events (etcd issue 15220)";

/// The result of all checkers.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// `Some(false)` if any section found an anomaly, `None` if any could not decide (or there is no
    /// section), else `Some(true)`.
    pub valid: Option<bool>,
    pub sections: Vec<Section>,
    pub findings: Vec<Finding>,
}

impl Verdict {
    pub fn with_findings(sections: Vec<Section>, findings: Vec<Finding>) -> Verdict {
        Verdict { findings, ..Verdict::new(sections) }
    }

    pub fn new(sections: Vec<Section>) -> Verdict {
        let valid = if sections.iter().any(|s| s.valid == Some(false)) {
            Some(false)
        } else if sections.is_empty() || sections.iter().any(|s| s.valid.is_none()) {
            None
        } else {
            Some(true)
        };
        Verdict { valid, sections, findings: Vec::new() }
    }

    /// The verdict, then per section its summary and its first anomalies.
    pub fn render_text(&self) -> String {
        let mut s = format!("verdict: {}\n", show_valid(self.valid));
        for section in &self.sections {
            s.push_str(&format!("[{}] {}: {}\n", show_valid(section.valid), section.name, section.summary));
            for a in section.anomalies.iter().take(SECTION_ANOMALIES_SHOWN_MAX) {
                let mut lines = a.lines();
                if let Some(first) = lines.next() {
                    s.push_str(&format!("  - {first}\n"));
                }
                for line in lines {
                    s.push_str(&format!("    {line}\n"));
                }
            }
            let hidden = section.anomalies.len().saturating_sub(SECTION_ANOMALIES_SHOWN_MAX);
            if hidden > 0 {
                s.push_str(&format!("  ... and {hidden} more\n"));
            }
        }
        for f in &self.findings {
            s.push_str(&format!("[finding] {}: {}\n", f.name, f.count));
            for d in f.details.iter().take(SECTION_ANOMALIES_SHOWN_MAX) {
                s.push_str(&format!("  - {d}\n"));
            }
        }
        s
    }
}

fn show_valid(valid: Option<bool>) -> &'static str {
    match valid {
        Some(true) => "valid",
        Some(false) => "INVALID",
        None => "unknown",
    }
}

impl From<&LinearizabilityReport> for Section {
    fn from(r: &LinearizabilityReport) -> Section {
        Section { name: "linearizability".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

impl From<&MonotonicReport> for Section {
    fn from(r: &MonotonicReport) -> Section {
        Section { name: "monotonic revisions".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

impl From<&LostReport> for Section {
    fn from(r: &LostReport) -> Section {
        Section { name: "lost writes".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

impl From<&LeaseReport> for Section {
    fn from(r: &LeaseReport) -> Section {
        Section { name: "lease locks".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

impl From<&RecoveryReport> for Section {
    fn from(r: &RecoveryReport) -> Section {
        Section { name: "crash recovery".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

impl From<&WatchReport> for Section {
    fn from(r: &WatchReport) -> Section {
        Section { name: "watch guarantees".into(), valid: r.valid(), summary: r.summary(), anomalies: r.anomalies() }
    }
}

/// Everything a run recorded that the checkers judge.
pub struct CheckInput<'a> {
    pub history: &'a [Event],
    /// Every register key's value, read linearizably after healing.
    pub final_registers: &'a BTreeMap<String, Option<String>>,
    /// The elements of the workload's set read after healing; it stands for every set the history names
    /// (the set workload has one).
    pub final_set: Option<&'a Vec<String>>,
    pub watchers: &'a [WatcherSpec],
    pub deliveries: &'a [WatchDelivery],
    /// The deliveries of the reference watch from revision 1, run after healing.
    pub reference: &'a [WatchDelivery],
    /// The store's revision after healing: the reference is trusted up to it.
    pub head_revision: i64,
    /// Whether the target's progress notifications prove that every event below them was delivered
    /// (Keelson; etcd only from the fix of its issue 15220).
    pub trust_progress: bool,
    /// Budget of the linearizability search, shared by all keys.
    pub time_limit: Duration,
}

/// Runs every checker.
pub fn check_all(input: CheckInput) -> Verdict {
    let linearizable = check_registers(input.history, input.time_limit);
    let monotonic = check_monotonic_revisions(input.history);
    let mut final_sets = BTreeMap::new();
    if let Some(elements) = input.final_set {
        let mut names: BTreeSet<&str> = input
            .history
            .iter()
            .filter_map(|e| match &e.op {
                Op::Add { set, .. } | Op::ReadSet { set, .. } => Some(set.as_str()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            // Nothing was added, so every element read is unexpected; name the set anyway.
            names.insert("");
        }
        for name in names {
            final_sets.insert(name.to_string(), elements.clone());
        }
    }
    let lost = check_lost_writes(input.history, input.final_registers, &final_sets);
    let reference = RevisionLog::from_deliveries(input.reference, input.head_revision);
    let mut watch = check_watches(input.watchers, input.deliveries, &reference, input.trust_progress);
    // The reference watch asks for progress too, and catching up from revision 1 it is where a
    // notification ahead of the events shows most.
    let reference_ahead = progress_ahead_of_events(input.reference, true);
    let mut findings = Vec::new();
    if input.trust_progress {
        for p in reference_ahead {
            watch.anomalies.push(WatchAnomaly {
                check: WatchCheck::Bookmarkable,
                watcher: None,
                message: format!("reference watch: {}", p.render()),
                seen: Vec::new(),
                revisions: vec![p.first_late_revision],
            });
        }
    } else {
        let all: Vec<&ProgressAhead> = reference_ahead.iter().chain(&watch.progress_ahead).collect();
        if !all.is_empty() {
            let events: usize = all.iter().map(|p| p.late_events).sum();
            let mut details = vec![format!(
                "{} notifications (reference watch {}, watchers {}), followed by {events} events at or below their revision; not counted as loss",
                all.len(),
                reference_ahead.len(),
                watch.progress_ahead.len()
            )];
            details.extend(all.iter().map(|p| p.render()));
            findings.push(Finding { name: PROGRESS_AHEAD_FINDING.into(), count: all.len(), details });
        }
    }
    let mut sections = vec![(&linearizable).into(), (&monotonic).into(), (&lost).into(), (&watch).into()];
    if input.history.iter().any(|e| matches!(e.op, Op::Grant { .. } | Op::Acquire { .. })) {
        sections.push((&check_locks(input.history, &reference, input.deliveries)).into());
    }
    if let Some(recovery) = check_recovery(input.history) {
        sections.push((&recovery).into());
    }
    Verdict::with_findings(sections, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Kind;

    fn event(index: usize, process: i64, kind: Kind, op: Op, revision: Option<i64>) -> Event {
        Event { index, time_ns: index as u64 * 10, process, kind, op, revision, error: None }
    }

    #[test]
    fn the_verdict_is_invalid_if_any_section_is_and_unknown_if_any_cannot_decide() {
        // Goal: the combination rule, and a rendering that names the failing section and its witness.
        let section = |name: &str, valid, anomalies: &[&str]| Section {
            name: name.into(),
            valid,
            summary: "s".into(),
            anomalies: anomalies.iter().map(|a| a.to_string()).collect(),
        };
        let ok = || section("a", Some(true), &[]);
        let unknown = || section("b", None, &[]);
        let bad = || section("c", Some(false), &["first line\nwitness line"]);
        assert_eq!(Verdict::new(vec![ok(), ok()]).valid, Some(true));
        assert_eq!(Verdict::new(vec![ok(), unknown()]).valid, None);
        assert_eq!(Verdict::new(vec![unknown(), bad(), ok()]).valid, Some(false));
        assert_eq!(Verdict::new(vec![]).valid, None, "nothing checked is not valid");
        let text = Verdict::new(vec![ok(), bad()]).render_text();
        assert!(text.starts_with("verdict: INVALID\n"), "{text}");
        assert!(text.contains("[INVALID] c: s\n  - first line\n    witness line\n"), "{text}");
        let many: Vec<String> = (0..25).map(|i| format!("anomaly {i}")).collect();
        let text = Verdict::new(vec![Section { anomalies: many, ..bad() }]).render_text();
        assert!(text.contains("anomaly 19\n  ... and 5 more\n") && !text.contains("anomaly 20"), "{text}");
    }

    #[test]
    fn check_all_runs_every_checker_on_a_run() {
        // Goal: a run with a stale read, a revision going back and a lost set element is invalid in
        // exactly those three sections, and a clean watch section is valid.
        let w = Op::Write { key: "r0".into(), value: "a".into() };
        let r = |value: Option<&str>| Op::Read { key: "r0".into(), value: value.map(String::from) };
        let add = Op::Add { set: "s".into(), element: "e1".into() };
        let history = vec![
            event(0, 1, Kind::Invoke, w.clone(), None),
            event(1, 1, Kind::Ok, w, Some(5)),
            event(2, 1, Kind::Invoke, r(None), None),
            event(3, 1, Kind::Ok, r(None), Some(4)),
            event(4, 2, Kind::Invoke, add.clone(), None),
            event(5, 2, Kind::Ok, add, Some(6)),
        ];
        let finals = BTreeMap::from([("r0".to_string(), Some("a".to_string()))]);
        let final_set: Vec<String> = Vec::new();
        let verdict = check_all(CheckInput {
            history: &history,
            final_registers: &finals,
            final_set: Some(&final_set),
            watchers: &[],
            deliveries: &[],
            reference: &[],
            head_revision: 6,
            trust_progress: true,
            time_limit: Duration::from_secs(10),
        });
        assert_eq!(verdict.valid, Some(false));
        let validity: Vec<(&str, Option<bool>)> = verdict.sections.iter().map(|s| (s.name.as_str(), s.valid)).collect();
        assert_eq!(
            validity,
            [
                ("linearizability", Some(false)),
                ("monotonic revisions", Some(false)),
                ("lost writes", Some(false)),
                ("watch guarantees", Some(true))
            ]
        );
        let text = verdict.render_text();
        assert!(text.contains("set \"s\" lost element \"e1\""), "{text}");
    }
}
