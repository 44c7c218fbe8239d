//! The lease-lock checker on synthetic histories: it passes holders that follow one another (by
//! release or by expiry, and a hold resumed by a late keep-alive that the store honoured), and
//! catches two holders at once and a lock deleted under its holder.

use jepsen::checker::watch::{EventKind, RevisionLog, WatchDelivery, WatchedEvent};
use jepsen::checker::{check_locks, lease::holds, HoldEnd, LockAnomaly};
use jepsen::history::{Event, Kind, Op};

const MS: u64 = 1_000_000;
const LOCK: &str = "l/0";

/// Builds a history from (process, invoke ms, completion ms or None, outcome, invoke op,
/// completion op, revision), ordered by time as a recorder would have it.
struct Builder(Vec<Event>);

impl Builder {
    fn new() -> Builder {
        Builder(Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn op(mut self, p: i64, at: u64, done: Option<u64>, kind: Kind, op: Op, answer: Op, revision: Option<i64>) -> Self {
        self.0.push(Event {
            index: 0,
            time_ns: at * MS,
            process: p,
            kind: Kind::Invoke,
            op,
            revision: None,
            error: None,
        });
        if let Some(done) = done {
            self.0.push(Event { index: 0, time_ns: done * MS, process: p, kind, op: answer, revision, error: None });
        }
        self
    }

    fn grant(self, p: i64, at: u64, lease: i64) -> Self {
        let answer = Op::Grant { lease: Some(lease), ttl: Some(2) };
        self.op(p, at, Some(at + 5), Kind::Ok, Op::Grant { lease: None, ttl: None }, answer, None)
    }

    fn acquire(self, p: i64, at: u64, done: u64, lease: i64, revision: Option<i64>) -> Self {
        let op = Op::Acquire { lock: LOCK.into(), token: token(p), lease };
        let kind = if revision.is_some() { Kind::Ok } else { Kind::Fail };
        self.op(p, at, Some(done), kind, op.clone(), op, revision)
    }

    fn keep_alive(self, p: i64, at: u64, done: u64, lease: i64, ttl: i64) -> Self {
        let kind = if ttl > 0 { Kind::Ok } else { Kind::Fail };
        let answer = Op::KeepAlive { lease, ttl: Some(ttl) };
        self.op(p, at, Some(done), kind, Op::KeepAlive { lease, ttl: None }, answer, None)
    }

    fn release(self, p: i64, at: u64, done: u64, lease: i64, revision: Option<i64>) -> Self {
        let op = Op::Release { lock: LOCK.into(), token: token(p), lease, how: "delete".into() };
        self.op(p, at, Some(done), Kind::Ok, op.clone(), op, revision)
    }

    fn build(mut self) -> Vec<Event> {
        // Stable: an invoke stays before its own completion at the same time.
        self.0.sort_by_key(|e| e.time_ns);
        for (i, e) in self.0.iter_mut().enumerate() {
            e.index = i;
        }
        self.0
    }
}

fn token(p: i64) -> String {
    format!("p{p}-1")
}

fn put(p: i64, revision: i64) -> WatchedEvent {
    WatchedEvent {
        kind: EventKind::Put,
        key: LOCK.into(),
        value: Some(token(p)),
        mod_revision: revision,
        create_revision: revision,
        version: 1,
        prev_value: None,
    }
}

fn delete(revision: i64) -> WatchedEvent {
    WatchedEvent {
        kind: EventKind::Delete,
        key: LOCK.into(),
        value: None,
        mod_revision: revision,
        create_revision: 0,
        version: 0,
        prev_value: None,
    }
}

/// A watcher's delivery of `event` at `at` ms.
fn seen(at: u64, event: WatchedEvent) -> WatchDelivery {
    WatchDelivery {
        watcher: 0,
        session: 1,
        time_ns: at * MS,
        header_revision: event.mod_revision,
        progress: false,
        events: vec![event],
    }
}

#[test]
fn holders_one_after_another_by_release_are_valid() {
    // p1 holds from 10 ms, renews at 600 ms, releases at 1000 ms; p2 takes the lock at 1020 ms.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .grant(2, 0, 0x22)
        .acquire(1, 6, 10, 0x11, Some(2))
        .acquire(2, 20, 25, 0x22, None)
        .keep_alive(1, 600, 605, 0x11, 2)
        .release(1, 1000, 1010, 0x11, Some(3))
        .acquire(2, 1015, 1020, 0x22, Some(4))
        .release(2, 1500, 1510, 0x22, Some(5))
        .build();
    let reference = RevisionLog::from_events(5, [put(1, 2), delete(3), put(2, 4), delete(5)]);
    let deliveries = [seen(1012, delete(3)), seen(1022, put(2, 4))];
    let report = check_locks(&history, &reference, &deliveries);
    assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
    assert_eq!(report.holds.len(), 2);
    assert_eq!((report.holds[0].start_ns, report.holds[0].end_ns), (10 * MS, 1000 * MS));
    assert_eq!(report.holds[0].ended_by, HoldEnd::Release);
}

#[test]
fn a_holder_after_the_previous_lease_expired_is_valid() {
    // p1 never renews: its belief ends at its grant's send time + TTL (2,000 ms); the store
    // deletes the key at 2,150 ms and p2 takes the lock at 2,200 ms.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .acquire(1, 6, 10, 0x11, Some(2))
        .grant(2, 2100, 0x22)
        .acquire(2, 2190, 2200, 0x22, Some(4))
        .release(2, 2500, 2510, 0x22, Some(5))
        .build();
    let reference = RevisionLog::from_events(5, [put(1, 2), delete(3), put(2, 4), delete(5)]);
    let deliveries = [seen(2150, delete(3))];
    let report = check_locks(&history, &reference, &deliveries);
    assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
    assert_eq!(report.holds[0].ended_by, HoldEnd::Deadline);
    assert_eq!(report.holds[0].end_ns, 2000 * MS);
}

#[test]
fn two_holders_at_once_are_invalid() {
    // p2 takes the lock at 500 ms while p1's lease runs until 2,000 ms. No store history to
    // compare with: the real-time overlap alone decides.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .grant(2, 0, 0x22)
        .acquire(1, 6, 10, 0x11, Some(2))
        .acquire(2, 490, 500, 0x22, Some(3))
        .release(1, 900, 910, 0x11, Some(4))
        .release(2, 1200, 1210, 0x22, Some(5))
        .build();
    let report = check_locks(&history, &RevisionLog::default(), &[]);
    assert_eq!(report.valid(), Some(false));
    assert_eq!(report.anomalies.len(), 1, "{:#?}", report.anomalies());
    let LockAnomaly::Overlap { first, second } = &report.anomalies[0] else { panic!("{:?}", report.anomalies) };
    assert_eq!((first.process, second.process), (1, 2));
    assert!(report.anomalies()[0].contains("two holders of \"l/0\" at once, from 0.500000 s to 0.900000 s"));
}

#[test]
fn a_key_deleted_under_a_holder_renewed_late_is_invalid() {
    // The store bug the workload hunts: p1's renewal sent at 2,050 ms, after its deadline, is
    // answered TTL 2 — yet the revocation already under way deletes the key (seen at 2,080 ms) and
    // p2 takes the lock at 2,100 ms while p1 believes it holds it until 4,050 ms.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .acquire(1, 6, 10, 0x11, Some(2))
        .keep_alive(1, 2050, 2060, 0x11, 2)
        .grant(2, 2000, 0x22)
        .acquire(2, 2090, 2100, 0x22, Some(4))
        .release(2, 3000, 3010, 0x22, Some(5))
        .release(1, 4500, 4510, 0x11, None)
        .build();
    let reference = RevisionLog::from_events(5, [put(1, 2), delete(3), put(2, 4), delete(5)]);
    let deliveries = [seen(2080, delete(3))];
    let report = check_locks(&history, &reference, &deliveries);
    assert_eq!(report.valid(), Some(false));
    let (holds_of_p1, _) = holds(&history);
    let resumed = holds_of_p1.iter().find(|h| h.process == 1 && h.resumed).expect("a resumed hold");
    assert_eq!((resumed.start_ns, resumed.end_ns), (2060 * MS, 4050 * MS));
    let kinds: Vec<&str> = report
        .anomalies
        .iter()
        .map(|a| match a {
            LockAnomaly::Overlap { .. } => "overlap",
            LockAnomaly::LostWhileHeld { .. } => "lost",
            LockAnomaly::NotInHistory { .. } => "not in history",
        })
        .collect();
    assert_eq!(kinds, ["overlap", "lost"], "{:#?}", report.anomalies());
    let text = &report.anomalies()[1];
    assert!(text.contains("was deleted at revision 3, seen by 2.080000 s"), "{text}");
    assert!(text.contains("token \"p2-1\" took it at revision 4"), "{text}");
    // Without the other client, the deletion under the holder is still caught.
    let alone: Vec<Event> = history.iter().filter(|e| e.process == 1).cloned().collect();
    let reference = RevisionLog::from_events(3, [put(1, 2), delete(3)]);
    let report = check_locks(&alone, &reference, &deliveries);
    assert_eq!(report.valid(), Some(false), "{:#?}", report.anomalies());
}

#[test]
fn a_late_renewal_the_store_honours_resumes_the_hold_and_is_valid() {
    // The answer to a renewal sent at 1,900 ms comes at 2,100 ms, after the deadline: belief lapses
    // at 2,000 ms and resumes at 2,100 ms until 1,900 + 2,000 ms; the key stays until p1's release.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .acquire(1, 6, 10, 0x11, Some(2))
        .keep_alive(1, 1900, 2100, 0x11, 2)
        .release(1, 3000, 3010, 0x11, Some(3))
        .build();
    let reference = RevisionLog::from_events(3, [put(1, 2), delete(3)]);
    let report = check_locks(&history, &reference, &[seen(3012, delete(3))]);
    assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
    let spans: Vec<(u64, u64, HoldEnd, bool)> =
        report.holds.iter().map(|h| (h.start_ns / MS, h.end_ns / MS, h.ended_by, h.resumed)).collect();
    assert_eq!(spans, [(10, 2000, HoldEnd::Deadline, false), (2100, 3000, HoldEnd::Release, true)]);
    // A renewal answered "gone" ends belief for good.
    let history = Builder::new()
        .grant(1, 0, 0x11)
        .acquire(1, 6, 10, 0x11, Some(2))
        .keep_alive(1, 1500, 1510, 0x11, 0)
        .keep_alive(1, 1600, 1610, 0x11, 2)
        .build();
    let (spans, _) = holds(&history);
    assert_eq!(spans.len(), 1);
    assert_eq!((spans[0].end_ns / MS, spans[0].ended_by), (1510, HoldEnd::LeaseGone));
}

#[test]
fn nothing_held_is_unknown_not_valid() {
    let history = Builder::new().grant(1, 0, 0x11).acquire(1, 6, 10, 0x11, None).build();
    let report = check_locks(&history, &RevisionLog::from_events(2, []), &[]);
    assert_eq!(report.valid(), None);
}
