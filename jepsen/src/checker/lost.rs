//! No acknowledged write lost: after the faults are healed, a final linearizable read of every
//! register must show a write that may legitimately be the last one, and the final read of every set
//! must hold every element whose add was acknowledged before that read began.
//!
//! A final set read is either given (read after healing, so after every operation of the history) or,
//! failing that, the last acknowledged `ReadSet` of the history.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::linearizable::WitnessOp;
use crate::history::{pair, Kind, Op, Operation};

#[derive(Clone, Debug, Serialize)]
pub struct LostReport {
    pub registers_checked: usize,
    pub sets_checked: usize,
    pub acknowledged_writes: usize,
    pub acknowledged_adds: usize,
    /// Registers and sets with acknowledged writes but no final read: nothing can be said of them.
    pub unchecked: Vec<String>,
    pub anomalies: Vec<LostAnomaly>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "anomaly", rename_all = "snake_case")]
pub enum LostAnomaly {
    /// The register's final value is none of the values it may hold: acknowledged writes were lost.
    RegisterFinalValue {
        key: String,
        final_value: Option<String>,
        /// The write of the final value, if any wrote it (then it was overwritten and came back).
        written_by: Option<WitnessOp>,
        /// The acknowledged writes that no acknowledged write followed: one of them (or an unknown
        /// write) must be the final value.
        expected_one_of: Vec<WitnessOp>,
    },
    /// An element whose add was acknowledged before the final read began is missing from it.
    SetElementLost {
        set: String,
        element: String,
        add: WitnessOp,
        /// The final read, or None for the read given after healing.
        read: Option<WitnessOp>,
    },
    /// An element is in the final read though no add of it could have happened before the read ended.
    SetElementUnexpected {
        set: String,
        element: String,
        /// Adds of it that failed or began after the read completed.
        adds: Vec<WitnessOp>,
        read: Option<WitnessOp>,
    },
}

impl LostReport {
    /// `Some(false)` on any anomaly, `None` if something could not be checked, else `Some(true)`.
    pub fn valid(&self) -> Option<bool> {
        if !self.anomalies.is_empty() {
            Some(false)
        } else if !self.unchecked.is_empty() {
            None
        } else {
            Some(true)
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} registers ({} acknowledged writes), {} sets ({} acknowledged adds): {} anomalies",
            self.registers_checked,
            self.acknowledged_writes,
            self.sets_checked,
            self.acknowledged_adds,
            self.anomalies.len()
        );
        if !self.unchecked.is_empty() {
            s.push_str(&format!(", {} without a final read: {}", self.unchecked.len(), self.unchecked.join(", ")));
        }
        s
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.iter().map(LostAnomaly::render).collect()
    }
}

impl LostAnomaly {
    pub fn render(&self) -> String {
        let show = |v: &Option<String>| v.as_ref().map(|v| format!("{v:?}")).unwrap_or_else(|| "nil".into());
        match self {
            LostAnomaly::RegisterFinalValue { key, final_value, written_by, expected_one_of } => {
                let mut s = format!("register {key:?} ends as {}", show(final_value));
                match written_by {
                    Some(w) => s.push_str(&format!(", an overwritten value from {}", w.render())),
                    None if final_value.is_some() => s.push_str(", a value never written"),
                    None => {}
                }
                if expected_one_of.is_empty() {
                    s.push_str("; no write explains it");
                } else {
                    s.push_str("; lost acknowledged writes:");
                }
                for w in expected_one_of {
                    s.push_str(&format!("\n  {}", w.render()));
                }
                s
            }
            LostAnomaly::SetElementLost { set, element, add, read } => format!(
                "set {set:?} lost element {element:?}:\n  added by {}\n  missing from {}",
                add.render(),
                show_read(read)
            ),
            LostAnomaly::SetElementUnexpected { set, element, adds, read } => {
                let mut s = format!("set {set:?} holds {element:?}, never added before {}", show_read(read));
                for a in adds {
                    s.push_str(&format!("\n  add: {}", a.render()));
                }
                s
            }
        }
    }
}

fn show_read(read: &Option<WitnessOp>) -> String {
    read.as_ref().map(WitnessOp::render).unwrap_or_else(|| "the final read after healing".into())
}

/// Checks registers against `final_registers` (key → value read linearizably after healing; keys
/// absent from it are unchecked), and sets against `final_sets` (set → elements read after healing)
/// or else their last acknowledged `ReadSet` in `history`.
pub fn check_lost_writes(
    history: &[crate::history::Event],
    final_registers: &BTreeMap<String, Option<String>>,
    final_sets: &BTreeMap<String, Vec<String>>,
) -> LostReport {
    let ops = pair(history);
    let mut report = LostReport {
        registers_checked: 0,
        sets_checked: 0,
        acknowledged_writes: 0,
        acknowledged_adds: 0,
        unchecked: Vec::new(),
        anomalies: Vec::new(),
    };
    check_registers(&ops, final_registers, &mut report);
    check_sets(&ops, final_sets, &mut report);
    report
}

/// The value a write or cas leaves behind, if it succeeded.
fn written_value(op: &Op) -> Option<&str> {
    match op {
        Op::Write { value, .. } => Some(value),
        Op::Cas { to, .. } => Some(to),
        _ => None,
    }
}

fn complete_ns(o: &Operation) -> u64 {
    o.complete.as_ref().map(|c| c.time_ns).unwrap_or(u64::MAX)
}

fn check_registers(ops: &[Operation], finals: &BTreeMap<String, Option<String>>, report: &mut LostReport) {
    let mut writes: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for o in ops {
        if let (Some(key), Some(_)) = (o.invoke.op.register_key(), written_value(&o.invoke.op)) {
            writes.entry(key).or_default().push(o);
        }
    }
    let keys: BTreeSet<&str> = writes.keys().copied().chain(finals.keys().map(String::as_str)).collect();
    for key in keys {
        let writes = writes.get(key).map(Vec::as_slice).unwrap_or_default();
        let acknowledged: Vec<&Operation> = writes.iter().copied().filter(|o| o.outcome() == Kind::Ok).collect();
        report.acknowledged_writes += acknowledged.len();
        let Some(final_value) = finals.get(key) else {
            if !acknowledged.is_empty() {
                report.unchecked.push(format!("register {key}"));
            }
            continue;
        };
        report.registers_checked += 1;
        // The acknowledged writes that no other acknowledged write began after: each may be the last.
        let last_invoke = acknowledged.iter().map(|o| o.invoke.time_ns).max().unwrap_or(0);
        let latest: Vec<&Operation> = acknowledged.iter().copied().filter(|o| complete_ns(o) >= last_invoke).collect();
        // An unknown write may take effect at any time after its invocation, so any may be last.
        let explained = match final_value {
            None => acknowledged.is_empty(),
            Some(v) => writes.iter().any(|o| {
                written_value(&o.invoke.op) == Some(v.as_str())
                    && (o.outcome() == Kind::Info || latest.iter().any(|l| std::ptr::eq(*l, *o)))
            }),
        };
        if explained {
            continue;
        }
        let written_by = final_value.as_ref().and_then(|v| {
            writes
                .iter()
                .find(|o| o.outcome() == Kind::Ok && written_value(&o.invoke.op) == Some(v.as_str()))
                .map(|o| WitnessOp::from_operation(o))
        });
        report.anomalies.push(LostAnomaly::RegisterFinalValue {
            key: key.to_string(),
            final_value: final_value.clone(),
            written_by,
            expected_one_of: latest.iter().map(|o| WitnessOp::from_operation(o)).collect(),
        });
    }
}

fn check_sets(ops: &[Operation], given: &BTreeMap<String, Vec<String>>, report: &mut LostReport) {
    let mut adds: BTreeMap<&str, BTreeMap<&str, Vec<&Operation>>> = BTreeMap::new();
    // Per set, the final read (None when given from after healing) and its elements.
    let mut final_read: BTreeMap<&str, (Option<&Operation>, &[String])> = BTreeMap::new();
    let mut last_read_index: BTreeMap<&str, usize> = BTreeMap::new();
    for o in ops {
        match (&o.invoke.op, &o.complete) {
            (Op::Add { set, element }, _) => adds.entry(set).or_default().entry(element).or_default().push(o),
            (Op::ReadSet { set, .. }, Some(c)) if c.kind == Kind::Ok => {
                // The last read to complete is the final one.
                if let Op::ReadSet { elements: Some(elements), .. } = &c.op {
                    if last_read_index.get(set.as_str()).is_none_or(|&i| c.index > i) {
                        last_read_index.insert(set, c.index);
                        final_read.insert(set, (Some(o), elements));
                    }
                }
            }
            _ => {}
        }
    }
    for (set, elements) in given {
        final_read.insert(set, (None, elements));
    }
    let sets: BTreeSet<&str> = adds.keys().copied().chain(final_read.keys().copied()).collect();
    let no_adds = BTreeMap::new();
    for set in sets {
        let adds = adds.get(set).unwrap_or(&no_adds);
        let acknowledged = adds.values().flatten().filter(|o| o.outcome() == Kind::Ok).count();
        report.acknowledged_adds += acknowledged;
        let Some(&(read, elements)) = final_read.get(set) else {
            if acknowledged > 0 {
                report.unchecked.push(format!("set {set}"));
            }
            continue;
        };
        report.sets_checked += 1;
        let read_invoke_ns = read.map_or(u64::MAX, |r| r.invoke.time_ns);
        let read_complete_ns = read.map_or(u64::MAX, complete_ns);
        let present: BTreeSet<&str> = elements.iter().map(String::as_str).collect();
        for (&element, element_adds) in adds {
            if present.contains(element) {
                continue;
            }
            // Touching intervals count as concurrent: only an add done before the read began must show.
            let before_read =
                |o: &&Operation| o.outcome() == Kind::Ok && (read.is_none() || complete_ns(o) < read_invoke_ns);
            if let Some(add) = element_adds.iter().copied().find(before_read) {
                report.anomalies.push(LostAnomaly::SetElementLost {
                    set: set.to_string(),
                    element: element.to_string(),
                    add: WitnessOp::from_operation(add),
                    read: read.map(WitnessOp::from_operation),
                });
            }
        }
        for element in present {
            let element_adds = adds.get(element).map(Vec::as_slice).unwrap_or_default();
            let possible =
                element_adds.iter().any(|o| o.outcome() != Kind::Fail && o.invoke.time_ns <= read_complete_ns);
            if !possible {
                report.anomalies.push(LostAnomaly::SetElementUnexpected {
                    set: set.to_string(),
                    element: element.to_string(),
                    adds: element_adds.iter().map(|o| WitnessOp::from_operation(o)).collect(),
                    read: read.map(WitnessOp::from_operation),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Event;

    /// A history from (process, invoke ns, complete ns, outcome, invoke op, completion op).
    fn history(ops: &[(i64, u64, u64, Kind, Op)]) -> Vec<Event> {
        let mut events = Vec::new();
        for (process, start, end, kind, op) in ops {
            let invoke_op = match op {
                Op::ReadSet { set, .. } => Op::ReadSet { set: set.clone(), elements: None },
                other => other.clone(),
            };
            let e = |time_ns, kind, op| Event {
                index: 0,
                time_ns,
                process: *process,
                kind,
                op,
                revision: None,
                error: None,
            };
            events.push(e(*start, Kind::Invoke, invoke_op));
            events.push(e(*end, *kind, op.clone()));
        }
        events.sort_by_key(|e| (e.time_ns, e.kind != Kind::Invoke));
        for (i, e) in events.iter_mut().enumerate() {
            e.index = i;
        }
        events
    }

    fn w(key: &str, v: &str) -> Op {
        Op::Write { key: key.into(), value: v.into() }
    }

    fn finals(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.map(String::from))).collect()
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_final_read_is_lost() {
        // Goal: a final value older than the last acknowledged write means that write was lost.
        let h = history(&[(1, 0, 10, Kind::Ok, w("x", "a")), (1, 20, 30, Kind::Ok, w("x", "b"))]);
        let report = check_lost_writes(&h, &finals(&[("x", Some("a"))]), &BTreeMap::new());
        assert_eq!(report.valid(), Some(false));
        let LostAnomaly::RegisterFinalValue { written_by, expected_one_of, .. } = &report.anomalies[0] else {
            panic!("{:?}", report.anomalies);
        };
        assert_eq!(written_by.as_ref().map(|o| o.invoke_index), Some(0));
        assert_eq!(expected_one_of.iter().map(|o| o.invoke_index).collect::<Vec<_>>(), [2]);
        assert!(report.anomalies()[0].contains("overwritten value"), "{}", report.anomalies()[0]);
        // The register read as absent, or as a value nobody wrote, loses the write too.
        for bad in [None, Some("ghost")] {
            assert_eq!(check_lost_writes(&h, &finals(&[("x", bad)]), &BTreeMap::new()).valid(), Some(false), "{bad:?}");
        }
        assert_eq!(check_lost_writes(&h, &finals(&[("x", Some("b"))]), &BTreeMap::new()).valid(), Some(true));
        // A key nobody wrote must read as absent.
        let report = check_lost_writes(&h, &finals(&[("x", Some("b")), ("y", Some("ghost"))]), &BTreeMap::new());
        assert_eq!(report.anomalies().len(), 1);
        assert!(
            report.anomalies()[0].contains("\"ghost\", a value never written; no write explains it"),
            "{:?}",
            report.anomalies()
        );
    }

    #[test]
    fn concurrent_and_unknown_writes_may_be_last() {
        // Goal: either of two overlapping writes may win, and an unknown write may land at any time.
        let h = history(&[
            (1, 0, 10, Kind::Info, w("x", "early-unknown")),
            (2, 20, 40, Kind::Ok, w("x", "a")),
            (3, 30, 50, Kind::Ok, w("x", "b")),
            (4, 60, 70, Kind::Fail, w("x", "failed")),
        ]);
        for ok in ["a", "b", "early-unknown"] {
            assert_eq!(
                check_lost_writes(&h, &finals(&[("x", Some(ok))]), &BTreeMap::new()).valid(),
                Some(true),
                "{ok}"
            );
        }
        assert_eq!(check_lost_writes(&h, &finals(&[("x", Some("failed"))]), &BTreeMap::new()).valid(), Some(false));
        // Without a final read nothing is known, which is not "valid".
        let report = check_lost_writes(&h, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(report.valid(), None);
        assert_eq!(report.unchecked, ["register x"]);
    }

    #[test]
    fn set_elements_acknowledged_before_the_final_read_must_be_in_it() {
        // Goal: a missing acknowledged add and an element nobody added are both anomalies; an add
        // concurrent with the read may go either way.
        let add = |e: &str| Op::Add { set: "s".into(), element: e.into() };
        let read =
            |es: &[&str]| Op::ReadSet { set: "s".into(), elements: Some(es.iter().map(|e| e.to_string()).collect()) };
        let h = history(&[
            (1, 0, 10, Kind::Ok, add("a")),
            (1, 20, 30, Kind::Ok, add("lost")),
            (2, 20, 30, Kind::Fail, add("failed")),
            (3, 35, 60, Kind::Ok, add("concurrent")),
            (4, 0, 5, Kind::Ok, read(&[])),
            (4, 40, 50, Kind::Ok, read(&["a", "failed", "phantom"])),
        ]);
        let report = check_lost_writes(&h, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(report.valid(), Some(false));
        let mut found: Vec<String> = report
            .anomalies
            .iter()
            .map(|a| match a {
                LostAnomaly::SetElementLost { element, read, .. } => {
                    assert_eq!(read.as_ref().map(|r| r.invoke_ns), Some(40), "the last read is the final one");
                    format!("lost {element}")
                }
                LostAnomaly::SetElementUnexpected { element, adds, .. } => format!("extra {element} {}", adds.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        found.sort();
        assert_eq!(found, ["extra failed 1", "extra phantom 0", "lost lost"]);
        assert_eq!((report.sets_checked, report.acknowledged_adds), (1, 3));
        // A final read given from after healing must hold every acknowledged add, even the late one.
        let given = BTreeMap::from([("s".to_string(), vec!["a".to_string(), "lost".to_string()])]);
        let report = check_lost_writes(&h, &BTreeMap::new(), &given);
        let lost: Vec<String> = report
            .anomalies
            .iter()
            .map(|a| match a {
                LostAnomaly::SetElementLost { element, read: None, .. } => element.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lost, ["concurrent"]);
        assert!(report.anomalies()[0].contains("the final read after healing"), "{}", report.anomalies()[0]);
    }
}
