//! Crash recovery: a member that the nemesis killed (in the middle of a snapshot install, for the
//! `kill-install` fault) must start again, catch up with the others and serve reads. The nemesis
//! records what it saw as history events; this checker judges them.

use serde::Serialize;

use crate::history::{Event, Op, NEMESIS_PROCESS};

/// A member was SIGKILLed after its snapshot install began and before it was done.
pub const INSTALL_CRASHED: &str = "install-crashed";
/// A member restarted after a kill-install fault caught up and served a read.
pub const MEMBER_RECOVERED: &str = "member-recovered";
/// A member restarted after a kill-install fault did not start, or did not catch up in time.
pub const MEMBER_WEDGED: &str = "member-wedged";

#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Installs crashed mid-way.
    pub installs_crashed: usize,
    pub recovered: usize,
    /// (time, what the nemesis saw) per member that did not come back.
    pub wedged: Vec<(u64, String)>,
}

impl RecoveryReport {
    pub fn valid(&self) -> Option<bool> {
        Some(self.wedged.is_empty())
    }

    pub fn summary(&self) -> String {
        format!(
            "{} snapshot installs crashed mid-way; {} members came back and caught up, {} wedged",
            self.installs_crashed,
            self.recovered,
            self.wedged.len()
        )
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.wedged
            .iter()
            .map(|(t, detail)| {
                format!("member wedged after a crash during snapshot install (at {:.1} s): {detail}", *t as f64 / 1e9)
            })
            .collect()
    }
}

/// The report of the run's kill-install faults; None when there were none.
pub fn check_recovery(history: &[Event]) -> Option<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let mut any = false;
    for e in history.iter().filter(|e| e.process == NEMESIS_PROCESS) {
        let Op::Nemesis { action, detail } = &e.op else { continue };
        match action.as_str() {
            INSTALL_CRASHED => report.installs_crashed += 1,
            MEMBER_RECOVERED => report.recovered += 1,
            MEMBER_WEDGED => report.wedged.push((e.time_ns, detail.clone())),
            _ => continue,
        }
        any = true;
    }
    any.then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Kind;

    fn nem(index: usize, action: &str, detail: &str) -> Event {
        let op = Op::Nemesis { action: action.into(), detail: detail.into() };
        Event {
            index,
            time_ns: index as u64 * 1_000_000_000,
            process: NEMESIS_PROCESS,
            kind: Kind::Info,
            op,
            revision: None,
            error: None,
        }
    }

    #[test]
    fn a_wedged_member_is_an_anomaly_and_recoveries_are_counted() {
        assert!(check_recovery(&[nem(0, "start-kill", "n1")]).is_none(), "no kill-install fault, no section");
        let history = [
            nem(0, INSTALL_CRASHED, "n2 3 ms in"),
            nem(1, MEMBER_RECOVERED, "n2"),
            nem(2, INSTALL_CRASHED, "n3 0 ms in"),
            nem(3, MEMBER_WEDGED, "n3 exited on its own"),
        ];
        let report = check_recovery(&history).expect("a report");
        assert_eq!((report.installs_crashed, report.recovered, report.wedged.len()), (2, 1, 1));
        assert_eq!(report.valid(), Some(false));
        let anomalies = report.anomalies();
        assert!(
            anomalies[0].contains("member wedged after a crash during snapshot install (at 3.0 s): n3"),
            "{anomalies:?}"
        );
        let clean = check_recovery(&history[..2]).expect("a report");
        assert_eq!(clean.valid(), Some(true));
    }
}
