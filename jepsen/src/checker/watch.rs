//! Watch guarantees, replayed against the store's full history: every watcher's deliveries are
//! compared with a reference log of every event of the watched keys, taken at the end of the run by
//! a watch from revision 1. The guarantees are etcd's: ordered, unique, atomic, reliable, resumable,
//! bookmarkable (progress notifications), prev_kv, and create events marked by their revisions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Missing revisions listed in one gap's witness; the message gives the full count.
const WITNESS_REVISIONS_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedEvent {
    pub kind: EventKind,
    pub key: String,
    /// The value put; None for a delete.
    pub value: Option<String>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    /// The key's previous value, when the watch asked for prev_kv and the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_value: Option<String>,
}

/// One watch response as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchDelivery {
    pub watcher: u32,
    /// Increases at every reconnection of the watcher.
    pub session: u32,
    pub time_ns: u64,
    pub header_revision: i64,
    /// A progress notification: every event up to `header_revision` has been delivered.
    pub progress: bool,
    pub events: Vec<WatchedEvent>,
}

/// What a watcher asked for. A new session resumes from the last revision it saw + 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherSpec {
    pub watcher: u32,
    pub prefix: String,
    /// The first revision of its first session; 0 or less means "from now", so nothing is known to be
    /// missing before its first event.
    pub start_revision: i64,
    pub prev_kv: bool,
}

/// The store's history of the watched keys: every event by revision, complete up to `header_revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionLog {
    pub header_revision: i64,
    pub revisions: BTreeMap<i64, Vec<WatchedEvent>>,
}

impl RevisionLog {
    /// Groups events by revision, in the order given, dropping exact repeats; a log is complete up to
    /// `header_revision`.
    pub fn from_events(header_revision: i64, events: impl IntoIterator<Item = WatchedEvent>) -> RevisionLog {
        let mut revisions: BTreeMap<i64, Vec<WatchedEvent>> = BTreeMap::new();
        for e in events {
            let list = revisions.entry(e.mod_revision).or_default();
            if !list.contains(&e) {
                list.push(e);
            }
        }
        RevisionLog { header_revision, revisions }
    }

    /// From the deliveries of a reference watch from revision 1 that ran until an event at or past
    /// `head_revision`: complete up to the lower of `head_revision` and the last event it received.
    /// Progress notifications do not count: an etcd with issue 15220 sends one at the head to a
    /// watch still catching up.
    pub fn from_deliveries(deliveries: &[WatchDelivery], head_revision: i64) -> RevisionLog {
        let reached = deliveries.iter().filter_map(|d| d.events.last()).map(|e| e.mod_revision).max().unwrap_or(1);
        RevisionLog::from_events(head_revision.min(reached), deliveries.iter().flat_map(|d| d.events.iter().cloned()))
    }
}

/// The guarantee a watch anomaly breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchCheck {
    /// Revisions only increase.
    Ordered,
    /// No event twice.
    Unique,
    /// A revision's events come in one delivery, all of them.
    Atomic,
    /// No event missing between the start and what the watcher has seen (or was told it has seen).
    Reliable,
    /// A new session continues exactly after the last revision seen.
    Resumable,
    /// Nothing at or below a progress notification's revision comes after it.
    Bookmarkable,
    /// prev_value is the key's value just before the event.
    PrevKv,
    /// Version 1 exactly when create_revision == mod_revision, exactly for puts that create the key.
    Create,
    /// The event is the store's: in its history, under the watched prefix, and after the start revision.
    Content,
}

/// A delivered event (or progress notification) named by where the watcher got it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub session: u32,
    /// Index of the delivery in the input slice (the line of the watch log).
    pub delivery: usize,
    pub time_ns: u64,
    /// The event's mod_revision, or a progress notification's header revision.
    pub revision: i64,
    /// None for a progress notification.
    pub key: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchAnomaly {
    pub check: WatchCheck,
    /// None when the reference log itself is inconsistent.
    pub watcher: Option<u32>,
    pub message: String,
    /// The deliveries involved, in the order received.
    pub seen: Vec<Seen>,
    /// Revisions of the reference involved (for a gap: the missing ones, at most WITNESS_REVISIONS_MAX).
    pub revisions: Vec<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    pub deliveries: usize,
    pub events: usize,
    /// Events past the end of the reference log, which could not be compared with it.
    pub events_past_reference: usize,
    /// Watchers with deliveries but no spec: nothing can be said of them.
    pub unchecked_watchers: Vec<u32>,
    pub anomalies: Vec<WatchAnomaly>,
    /// Whether progress notifications were taken as proof of delivery (see `check_watches`).
    pub trust_progress: bool,
    /// Progress notifications followed by events at or below their revision, when progress is not
    /// trusted: the target's known bug, not a loss.
    pub progress_ahead: Vec<ProgressAhead>,
}

/// A progress notification whose revision was ahead of events that the same session delivered
/// after it (etcd issue 15220).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgressAhead {
    /// None for the reference watch.
    pub watcher: Option<u32>,
    pub session: u32,
    pub time_ns: u64,
    pub progress_revision: i64,
    /// Events delivered after it at or below its revision, and the lowest of their revisions.
    pub late_events: usize,
    pub first_late_revision: i64,
}

impl ProgressAhead {
    pub fn render(&self) -> String {
        let who = self.watcher.map_or_else(|| "reference watch".to_string(), |w| format!("watcher {w}"));
        format!(
            "{who}, session {}: progress notification at revision {} (at {:.3} s), then {} events from revision {}",
            self.session,
            self.progress_revision,
            self.time_ns as f64 / 1e9,
            self.late_events,
            self.first_late_revision
        )
    }
}

/// Every progress notification in `deliveries` that a later event of the same session contradicts
/// (its revision at or below the notification's). `watcher` overrides the deliveries' own number
/// (None: the reference watch).
pub fn progress_ahead_of_events(deliveries: &[WatchDelivery], reference: bool) -> Vec<ProgressAhead> {
    let mut out: Vec<ProgressAhead> = Vec::new();
    // Per (watcher, session): indexes into `out` of the notifications seen so far.
    let mut open: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    for d in deliveries {
        let notes = open.entry((d.watcher, d.session)).or_default();
        for e in &d.events {
            for &i in notes.iter() {
                if e.mod_revision <= out[i].progress_revision {
                    out[i].late_events += 1;
                    out[i].first_late_revision = out[i].first_late_revision.min(e.mod_revision);
                }
            }
            // Passed notifications can only be contradicted by events out of order, which the
            // ordering check reports; dropping them keeps this linear in a long session.
            notes.retain(|&i| out[i].progress_revision > e.mod_revision);
        }
        if d.progress {
            notes.push(out.len());
            out.push(ProgressAhead {
                watcher: if reference { None } else { Some(d.watcher) },
                session: d.session,
                time_ns: d.time_ns,
                progress_revision: d.header_revision,
                late_events: 0,
                first_late_revision: i64::MAX,
            });
        }
    }
    out.retain(|p| p.late_events > 0);
    out
}

impl WatchReport {
    /// `Some(false)` on any anomaly, `None` if a watcher or an event could not be checked (no spec, or
    /// past the end of the reference log), else `Some(true)`.
    pub fn valid(&self) -> Option<bool> {
        if !self.anomalies.is_empty() {
            Some(false)
        } else if !self.unchecked_watchers.is_empty() || self.events_past_reference > 0 {
            None
        } else {
            Some(true)
        }
    }

    pub fn summary(&self) -> String {
        let mut by_check: BTreeMap<WatchCheck, usize> = BTreeMap::new();
        for a in &self.anomalies {
            *by_check.entry(a.check).or_default() += 1;
        }
        let mut s = format!(
            "{} watchers, {} deliveries, {} events: {} anomalies",
            self.watchers,
            self.deliveries,
            self.events,
            self.anomalies.len()
        );
        if !by_check.is_empty() {
            let parts: Vec<String> = by_check.iter().map(|(c, n)| format!("{c:?} {n}")).collect();
            s.push_str(&format!(" ({})", parts.join(", ")));
        }
        if self.events_past_reference > 0 {
            s.push_str(&format!("; {} events past the reference log", self.events_past_reference));
        }
        if !self.unchecked_watchers.is_empty() {
            s.push_str(&format!("; watchers without a spec: {:?}", self.unchecked_watchers));
        }
        if !self.trust_progress {
            s.push_str("; progress notifications not taken as proof of delivery");
        }
        s
    }

    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.iter().map(WatchAnomaly::render).collect()
    }
}

impl WatchAnomaly {
    pub fn render(&self) -> String {
        let who = match self.watcher {
            Some(w) => format!("watcher {w}"),
            None => "reference log".into(),
        };
        let mut s = format!("{:?}: {who}: {}", self.check, self.message);
        for seen in &self.seen {
            s.push_str(&format!("\n  {}", seen.render()));
        }
        if !self.revisions.is_empty() {
            s.push_str(&format!("\n  revisions {:?}", self.revisions));
        }
        s
    }
}

impl Seen {
    pub fn render(&self) -> String {
        let what = match &self.key {
            Some(key) => format!("event {key:?} at revision {}", self.revision),
            None => format!("progress notification at revision {}", self.revision),
        };
        format!("{what}, session {} delivery #{} at {} ns", self.session, self.delivery, self.time_ns)
    }
}

/// The reference, indexed: each event with the key's value just before it.
struct Reference<'r> {
    log: &'r RevisionLog,
    events: HashMap<(i64, &'r str), (&'r WatchedEvent, Option<&'r str>)>,
}

impl<'r> Reference<'r> {
    fn new(log: &'r RevisionLog, anomalies: &mut Vec<WatchAnomaly>) -> Self {
        let mut current: HashMap<&str, Option<&str>> = HashMap::new();
        let mut events = HashMap::new();
        for (&revision, list) in &log.revisions {
            for e in list {
                let before = current.get(e.key.as_str()).copied().flatten();
                if let Some(message) = create_violation(e, Some(before.is_none())) {
                    anomalies.push(WatchAnomaly {
                        check: WatchCheck::Create,
                        watcher: None,
                        message,
                        seen: Vec::new(),
                        revisions: vec![revision],
                    });
                }
                if events.insert((revision, e.key.as_str()), (e, before)).is_some() {
                    anomalies.push(WatchAnomaly {
                        check: WatchCheck::Content,
                        watcher: None,
                        message: format!("two different events for {:?} at revision {revision}", e.key),
                        seen: Vec::new(),
                        revisions: vec![revision],
                    });
                }
                current.insert(&e.key, e.value.as_deref().filter(|_| e.kind == EventKind::Put));
            }
        }
        Reference { log, events }
    }

    /// The reference events a watcher of `prefix` from `start` must get, by revision.
    fn expected(&self, prefix: &str, start: i64) -> BTreeMap<i64, usize> {
        let mut out = BTreeMap::new();
        for (&revision, list) in self.log.revisions.range(start..=self.log.header_revision) {
            let n = list.iter().filter(|e| e.key.starts_with(prefix)).count();
            if n > 0 {
                out.insert(revision, n);
            }
        }
        out
    }
}

/// Why a put's create markers are wrong, if they are; `created` is whether it created the key, when
/// known. Deletes carry no markers.
fn create_violation(e: &WatchedEvent, created: Option<bool>) -> Option<String> {
    if e.kind != EventKind::Put {
        return None;
    }
    let first_version = e.version == 1;
    let same_revisions = e.create_revision == e.mod_revision;
    if first_version != same_revisions {
        return Some(format!(
            "put of {:?} at revision {} has version {} but create_revision {}",
            e.key, e.mod_revision, e.version, e.create_revision
        ));
    }
    match created {
        Some(created) if created != first_version => Some(format!(
            "put of {:?} at revision {} {} the key but has version {}",
            e.key,
            e.mod_revision,
            if created { "creates" } else { "does not create" },
            e.version
        )),
        _ => None,
    }
}

/// Checks every watcher's deliveries (taken in the order given) against the reference log. With
/// `trust_progress`, a progress notification promises that every event at or below its revision
/// has been delivered (bookmarkable, and reliable up to it); without, it promises nothing, and an
/// event arriving below one is counted in `progress_ahead` instead of being an anomaly.
pub fn check_watches(
    specs: &[WatcherSpec],
    deliveries: &[WatchDelivery],
    reference: &RevisionLog,
    trust_progress: bool,
) -> WatchReport {
    let mut anomalies = Vec::new();
    let reference = Reference::new(reference, &mut anomalies);
    let mut by_watcher: BTreeMap<u32, Vec<(usize, &WatchDelivery)>> = BTreeMap::new();
    for (i, d) in deliveries.iter().enumerate() {
        by_watcher.entry(d.watcher).or_default().push((i, d));
    }
    let mut report = WatchReport {
        watchers: specs.len(),
        deliveries: deliveries.len(),
        events: deliveries.iter().map(|d| d.events.len()).sum(),
        events_past_reference: 0,
        unchecked_watchers: Vec::new(),
        anomalies,
        trust_progress,
        progress_ahead: Vec::new(),
    };
    for (watcher, list) in &by_watcher {
        match specs.iter().find(|s| s.watcher == *watcher) {
            Some(spec) => WatcherCheck::new(spec, &reference, trust_progress).run(list, &mut report),
            None => report.unchecked_watchers.push(*watcher),
        }
    }
    if !trust_progress {
        report.progress_ahead = progress_ahead_of_events(deliveries, false);
    }
    report
}

/// What the comparison of a delivered event with the reference found.
#[derive(PartialEq)]
enum Judged {
    /// It is in the store's history (perhaps with wrong details, reported).
    Known,
    /// It lies past the reference's end: only its own markers could be judged.
    PastReference,
    /// It is outside the watch or not in the store's history at all: it takes no part in ordering.
    Foreign,
}

/// The state of one watcher's replay.
struct WatcherCheck<'s, 'r> {
    spec: &'s WatcherSpec,
    reference: &'s Reference<'r>,
    /// Revisions (with their event counts) the watcher must get, from its start to the log's end.
    expected: BTreeMap<i64, usize>,
    /// Where each event was first delivered, by (revision, key).
    seen: HashMap<(i64, String), Seen>,
    /// Per revision, the deliveries that carried its events, with how many.
    carried_by: BTreeMap<i64, Vec<(Seen, usize)>>,
    /// Revisions already reported as a gap at a session seam.
    seam_gaps: BTreeSet<i64>,
    anomalies: Vec<WatchAnomaly>,
    trust_progress: bool,
}

impl<'s, 'r> WatcherCheck<'s, 'r> {
    fn new(spec: &'s WatcherSpec, reference: &'s Reference<'r>, trust_progress: bool) -> Self {
        WatcherCheck {
            trust_progress,
            spec,
            reference,
            expected: reference.expected(&spec.prefix, spec.start_revision.max(1)),
            seen: HashMap::new(),
            carried_by: BTreeMap::new(),
            seam_gaps: BTreeSet::new(),
            anomalies: Vec::new(),
        }
    }

    fn anomaly(&mut self, check: WatchCheck, message: String, seen: Vec<Seen>, revisions: Vec<i64>) {
        self.anomalies.push(WatchAnomaly { check, watcher: Some(self.spec.watcher), message, seen, revisions });
    }

    /// Expected revisions strictly between `after` and `before`.
    fn expected_between(&self, after: i64, before: i64) -> Vec<i64> {
        if before <= after.saturating_add(1) {
            return Vec::new();
        }
        self.expected.range(after + 1..before).map(|(&r, _)| r).collect()
    }

    fn run(mut self, deliveries: &[(usize, &WatchDelivery)], report: &mut WatchReport) {
        let start = self.spec.start_revision;
        // Highest revision delivered so far, and where; before any event, the one before the start.
        let mut last: Option<Seen> = None;
        let mut last_revision = if start > 0 { start - 1 } else { i64::MIN };
        let mut bookmark: Option<Seen> = None;
        // The (delivery, revision) last reported as going back: a revision's other events are not news.
        let mut reported_back: Option<(usize, i64)> = None;
        for &(index, d) in deliveries {
            for e in &d.events {
                let here = Seen {
                    session: d.session,
                    delivery: index,
                    time_ns: d.time_ns,
                    revision: e.mod_revision,
                    key: Some(e.key.clone()),
                };
                match self.check_content(e, &here) {
                    Judged::Known => {}
                    Judged::PastReference => report.events_past_reference += 1,
                    Judged::Foreign => continue,
                }
                if let Some(first) = self.seen.get(&(e.mod_revision, e.key.clone())) {
                    let first = first.clone();
                    let (check, what) = if first.session == d.session {
                        (WatchCheck::Unique, "delivered twice")
                    } else {
                        (WatchCheck::Resumable, "delivered again by a resumed session")
                    };
                    self.anomaly(
                        check,
                        format!("event {:?} at revision {} {what}", e.key, e.mod_revision),
                        vec![first, here],
                        vec![],
                    );
                    continue;
                }
                self.seen.insert((e.mod_revision, e.key.clone()), here.clone());
                if let Some(b) = bookmark.as_ref().filter(|_| self.trust_progress) {
                    if e.mod_revision <= b.revision {
                        let message = format!(
                            "event at revision {} after a progress notification at revision {}",
                            e.mod_revision, b.revision
                        );
                        let b = b.clone();
                        self.anomaly(WatchCheck::Bookmarkable, message, vec![b, here.clone()], vec![]);
                    }
                }
                let seam = last.as_ref().is_some_and(|l| l.session != d.session);
                if e.mod_revision < last_revision {
                    if reported_back.replace((index, e.mod_revision)) == Some((index, e.mod_revision)) {
                        continue;
                    }
                    let (check, message) = if seam {
                        (
                            WatchCheck::Resumable,
                            format!(
                                "resumed session starts at revision {}, below the last revision seen, {last_revision}",
                                e.mod_revision
                            ),
                        )
                    } else {
                        (WatchCheck::Ordered, format!("revision {} after revision {last_revision}", e.mod_revision))
                    };
                    let previous = last.clone().into_iter().collect::<Vec<_>>();
                    self.anomaly(check, message, [previous, vec![here]].concat(), vec![]);
                    continue;
                }
                if seam && e.mod_revision > last_revision {
                    // What the previous session was told it had is its own business; the rest is the seam's.
                    let from = bookmark
                        .as_ref()
                        .filter(|_| self.trust_progress)
                        .map_or(last_revision, |b| b.revision.max(last_revision));
                    let gap = self.expected_between(from, e.mod_revision);
                    if !gap.is_empty() {
                        let message = format!(
                            "resumed session skipped {} revisions after revision {from}, first {}",
                            gap.len(),
                            gap[0]
                        );
                        self.seam_gaps.extend(gap.iter().copied());
                        let previous = last.clone().into_iter().collect::<Vec<_>>();
                        let shown = gap.iter().copied().take(WITNESS_REVISIONS_MAX).collect();
                        self.anomaly(WatchCheck::Resumable, message, [previous, vec![here.clone()]].concat(), shown);
                    }
                }
                let parts = self.carried_by.entry(e.mod_revision).or_default();
                match parts.last_mut() {
                    Some((s, n)) if s.delivery == index => *n += 1,
                    _ => parts.push((here.clone(), 1)),
                }
                last_revision = last_revision.max(e.mod_revision);
                last = Some(here);
            }
            if d.progress && bookmark.as_ref().is_none_or(|b| d.header_revision > b.revision) {
                bookmark = Some(Seen {
                    session: d.session,
                    delivery: index,
                    time_ns: d.time_ns,
                    revision: d.header_revision,
                    key: None,
                });
            }
        }
        if start <= 0 {
            // A watch "from now" owes nothing before its first event.
            let first = self.seen.values().map(|s| s.revision).min().unwrap_or(i64::MAX);
            self.expected.retain(|&r, _| r >= first);
        }
        self.check_atomic();
        let bookmark = bookmark.filter(|_| self.trust_progress);
        self.check_reliable(last_revision, bookmark.as_ref());
        report.anomalies.append(&mut self.anomalies);
    }

    /// Compares an event with the reference.
    fn check_content(&mut self, e: &WatchedEvent, here: &Seen) -> Judged {
        let in_range = e.key.starts_with(&self.spec.prefix)
            && (self.spec.start_revision <= 0 || e.mod_revision >= self.spec.start_revision);
        if !in_range {
            let message = format!(
                "event {:?} at revision {} is outside the watch ({:?} from revision {})",
                e.key, e.mod_revision, self.spec.prefix, self.spec.start_revision
            );
            self.anomaly(WatchCheck::Content, message, vec![here.clone()], vec![]);
            return Judged::Foreign;
        }
        if e.mod_revision > self.reference.log.header_revision {
            // Only the put's own markers can be judged.
            if let Some(message) = create_violation(e, None) {
                self.anomaly(WatchCheck::Create, message, vec![here.clone()], vec![e.mod_revision]);
            }
            return Judged::PastReference;
        }
        let Some(&(expected, before)) = self.reference.events.get(&(e.mod_revision, e.key.as_str())) else {
            let message = format!("event {:?} at revision {} is not in the store's history", e.key, e.mod_revision);
            self.anomaly(WatchCheck::Content, message, vec![here.clone()], vec![e.mod_revision]);
            return Judged::Foreign;
        };
        if let Some(message) = create_violation(e, Some(before.is_none())) {
            self.anomaly(WatchCheck::Create, message, vec![here.clone()], vec![e.mod_revision]);
        } else if (e.kind, &e.value, e.create_revision, e.version)
            != (expected.kind, &expected.value, expected.create_revision, expected.version)
        {
            let message = format!(
                "event {:?} at revision {} differs from the store's history: {:?} {:?} created {} version {}, \
                 expected {:?} {:?} created {} version {}",
                e.key,
                e.mod_revision,
                e.kind,
                e.value,
                e.create_revision,
                e.version,
                expected.kind,
                expected.value,
                expected.create_revision,
                expected.version
            );
            self.anomaly(WatchCheck::Content, message, vec![here.clone()], vec![e.mod_revision]);
        }
        if self.spec.prev_kv && e.prev_value.as_deref() != before {
            let show = |v: Option<&str>| v.map(|v| format!("{v:?}")).unwrap_or_else(|| "nothing".into());
            let message = format!(
                "event {:?} at revision {} has prev_kv {} but the key held {}",
                e.key,
                e.mod_revision,
                show(e.prev_value.as_deref()),
                show(before)
            );
            self.anomaly(WatchCheck::PrevKv, message, vec![here.clone()], vec![e.mod_revision]);
        }
        Judged::Known
    }

    /// A revision's events come in one delivery, and all of them in it.
    fn check_atomic(&mut self) {
        let carried = std::mem::take(&mut self.carried_by);
        for (revision, parts) in carried {
            let expected = self.expected.get(&revision).copied().unwrap_or(0);
            if parts.len() > 1 {
                let counts: Vec<usize> = parts.iter().map(|(_, n)| *n).collect();
                let message = format!("revision {revision} split over {} deliveries ({counts:?} events)", parts.len());
                self.anomaly(WatchCheck::Atomic, message, parts.into_iter().map(|(s, _)| s).collect(), vec![revision]);
            } else if let Some((seen, n)) = parts.into_iter().next() {
                if n < expected {
                    let message = format!("revision {revision} delivered with {n} of its {expected} events");
                    self.anomaly(WatchCheck::Atomic, message, vec![seen], vec![revision]);
                }
            }
        }
    }

    /// No event missing from the start to the last revision seen or confirmed by a progress notification.
    fn check_reliable(&mut self, last_revision: i64, bookmark: Option<&Seen>) {
        let upto =
            bookmark.map_or(last_revision, |b| b.revision.max(last_revision)).min(self.reference.log.header_revision);
        // Delivered revisions, with where the first of each came, to name the edges of a gap.
        let mut delivered: BTreeMap<i64, Seen> = BTreeMap::new();
        for s in self.seen.values() {
            match delivered.get(&s.revision) {
                Some(d) if d.delivery <= s.delivery => {}
                _ => {
                    delivered.insert(s.revision, s.clone());
                }
            }
        }
        let mut run: Vec<i64> = Vec::new();
        let mut runs: Vec<Vec<i64>> = Vec::new();
        for (&revision, _) in self.expected.range(..=upto) {
            let events = self.reference.log.revisions.get(&revision).map(Vec::as_slice).unwrap_or_default();
            let missing = events
                .iter()
                .any(|e| e.key.starts_with(&self.spec.prefix) && !self.seen.contains_key(&(revision, e.key.clone())));
            if missing && !self.seam_gaps.contains(&revision) {
                run.push(revision);
            } else if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        for run in runs {
            let (first, last) = (run[0], run[run.len() - 1]);
            let mut around: Vec<Seen> =
                delivered.range(..first).next_back().map(|(_, s)| s.clone()).into_iter().collect();
            match delivered.range(last + 1..).next() {
                Some((_, s)) => around.push(s.clone()),
                None => around.extend(bookmark.cloned()),
            }
            let message = if first == last {
                format!("revision {first} not delivered (or not all its events)")
            } else {
                format!("{} revisions from {first} to {last} not delivered (or not all their events)", run.len())
            };
            self.anomaly(WatchCheck::Reliable, message, around, run.into_iter().take(WITNESS_REVISIONS_MAX).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, revision: i64, created: i64, version: i64) -> WatchedEvent {
        WatchedEvent {
            kind: EventKind::Put,
            key: key.into(),
            value: Some(value.into()),
            mod_revision: revision,
            create_revision: created,
            version,
            prev_value: None,
        }
    }

    fn delete(key: &str, revision: i64) -> WatchedEvent {
        WatchedEvent {
            kind: EventKind::Delete,
            key: key.into(),
            value: None,
            mod_revision: revision,
            create_revision: 0,
            version: 0,
            prev_value: None,
        }
    }

    /// The store's history: 2 puts a, 3 puts b, 4 puts a and c in one txn, 5 deletes b, 6 puts d outside
    /// the watched prefix, 7 puts a. With prev values filled in, as a prev_kv watch sees them.
    fn store() -> Vec<WatchedEvent> {
        let mut events = vec![
            put("k/a", "a1", 2, 2, 1),
            put("k/b", "b1", 3, 3, 1),
            put("k/a", "a2", 4, 2, 2),
            put("k/c", "c1", 4, 4, 1),
            delete("k/b", 5),
            put("other", "d1", 6, 6, 1),
            put("k/a", "a3", 7, 2, 3),
        ];
        events[2].prev_value = Some("a1".into());
        events[4].prev_value = Some("b1".into());
        events[6].prev_value = Some("a2".into());
        events
    }

    fn reference() -> RevisionLog {
        RevisionLog::from_events(7, store())
    }

    fn spec(prev_kv: bool) -> WatcherSpec {
        WatcherSpec { watcher: 1, prefix: "k/".into(), start_revision: 1, prev_kv }
    }

    fn delivery(session: u32, events: Vec<WatchedEvent>) -> WatchDelivery {
        let header_revision = events.last().map(|e| e.mod_revision).unwrap_or(0);
        WatchDelivery { watcher: 1, session, time_ns: 0, header_revision, progress: false, events }
    }

    fn progress(session: u32, revision: i64) -> WatchDelivery {
        WatchDelivery { watcher: 1, session, time_ns: 0, header_revision: revision, progress: true, events: vec![] }
    }

    /// The watched events of the store, by revision, one delivery per revision.
    fn faithful(session: u32) -> Vec<WatchDelivery> {
        let log = reference();
        log.revisions
            .values()
            .map(|list| list.iter().filter(|e| e.key.starts_with("k/")).cloned().collect::<Vec<_>>())
            .filter(|list| !list.is_empty())
            .map(|list| delivery(session, list))
            .collect()
    }

    fn check(deliveries: &[WatchDelivery]) -> WatchReport {
        check_watches(&[spec(true)], deliveries, &reference(), true)
    }

    /// The single anomaly of a report, which must be of `check`.
    fn only(report: &WatchReport, check: WatchCheck) -> WatchAnomaly {
        assert_eq!(report.anomalies.len(), 1, "{:#?}", report.anomalies());
        assert_eq!(report.anomalies[0].check, check, "{}", report.anomalies()[0]);
        report.anomalies[0].clone()
    }

    #[test]
    fn a_faithful_watch_passes_every_check() {
        // Goal: no false alarm: deliveries equal to the store's history, with a progress notification
        // at the end and a resumed session in the middle, are valid.
        let mut ds = faithful(1);
        for d in &mut ds[2..] {
            d.session = 2;
        }
        ds.push(progress(2, 7));
        let report = check(&ds);
        assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
        assert_eq!(report.events, 6);
        // The reference log is consistent, and JSON lines round-trip.
        let text = serde_json::to_string(&ds[1]).unwrap();
        assert_eq!(serde_json::from_str::<WatchDelivery>(&text).unwrap(), ds[1]);
    }

    #[test]
    fn a_gap_is_not_reliable() {
        // Goal: a missing revision in the middle of a session is reported with the events around it.
        let mut ds = faithful(1);
        ds.remove(3); // revision 5, the delete of b
        let report = check(&ds);
        let a = only(&report, WatchCheck::Reliable);
        assert_eq!(a.revisions, [5]);
        assert_eq!(a.seen.iter().map(|s| s.revision).collect::<Vec<_>>(), [4, 7]);
        // A missing tail counts only when a progress notification claimed it was delivered.
        let mut ds = faithful(1);
        ds.pop();
        assert_eq!(check(&ds).valid(), Some(true));
        ds.push(progress(1, 7));
        let a = only(&check(&ds), WatchCheck::Reliable);
        assert_eq!(a.revisions, [7]);
        assert_eq!(a.seen.last().map(|s| s.key.is_none()), Some(true), "the progress notification is named");
    }

    #[test]
    fn a_duplicate_is_not_unique() {
        // Goal: the same event twice in one session is reported once, with both deliveries.
        let mut ds = faithful(1);
        ds.insert(2, ds[1].clone());
        let a = only(&check(&ds), WatchCheck::Unique);
        assert_eq!(a.seen.iter().map(|s| s.delivery).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn going_back_is_not_ordered() {
        // Goal: revisions out of order in one session are reported (not as a duplicate or a gap).
        let mut ds = faithful(1);
        ds.swap(2, 3); // revision 4 after revision 5
        let a = only(&check(&ds), WatchCheck::Ordered);
        assert_eq!(a.seen.iter().map(|s| s.revision).collect::<Vec<_>>(), [5, 4]);
    }

    #[test]
    fn a_split_or_partial_revision_is_not_atomic() {
        // Goal: revision 4's two events in two deliveries, or only one of them, break atomicity.
        let mut ds = faithful(1);
        let second = ds[2].events.pop().unwrap();
        ds.insert(3, delivery(1, vec![second]));
        let a = only(&check(&ds), WatchCheck::Atomic);
        assert_eq!((a.revisions.as_slice(), a.seen.len()), ([4].as_slice(), 2));
        let mut ds = faithful(1);
        ds[2].events.pop();
        let report = check(&ds);
        let checks: Vec<WatchCheck> = report.anomalies.iter().map(|a| a.check).collect();
        assert_eq!(checks, [WatchCheck::Atomic, WatchCheck::Reliable], "{:#?}", report.anomalies());
    }

    #[test]
    fn a_wrong_prev_kv_is_reported() {
        // Goal: prev_value must be the key's value just before the event, absent for a creation.
        let mut ds = faithful(1);
        ds[2].events[0].prev_value = Some("stale".into());
        let a = only(&check(&ds), WatchCheck::PrevKv);
        assert!(a.message.contains("prev_kv \"stale\" but the key held \"a1\""), "{}", a.message);
        let mut ds = faithful(1);
        ds[0].events[0].prev_value = Some("ghost".into());
        only(&check(&ds), WatchCheck::PrevKv);
        // Without prev_kv asked, prev values are not judged.
        let mut ds = faithful(1);
        for d in &mut ds {
            for e in &mut d.events {
                e.prev_value = None;
            }
        }
        assert_eq!(check_watches(&[spec(false)], &ds, &reference(), true).valid(), Some(true));
        assert_eq!(check(&ds).anomalies.len(), 3, "the three events with a previous value");
    }

    #[test]
    fn an_event_below_a_progress_notification_is_not_bookmarkable() {
        // Goal: after a progress notification at 5, revision 4 may not arrive (even if never delivered).
        let mut ds = faithful(1);
        let late = ds.remove(2); // revision 4
        ds.insert(3, progress(1, 5));
        ds.insert(4, late);
        let report = check(&ds);
        let checks: Vec<WatchCheck> = report.anomalies.iter().map(|a| a.check).collect();
        assert!(checks.contains(&WatchCheck::Bookmarkable), "{:#?}", report.anomalies());
        let a = report.anomalies.iter().find(|a| a.check == WatchCheck::Bookmarkable).unwrap();
        assert_eq!(a.seen[0].key, None);
        assert_eq!((a.seen[0].revision, a.seen[1].revision), (5, 4));
    }

    #[test]
    fn a_bad_resume_seam_is_not_resumable() {
        // Goal: a session that restarts past the next revision, or re-delivers the last one, is
        // reported as a resume fault (and the skipped revision is not reported again as a gap).
        let mut ds = faithful(1);
        ds.remove(3); // revision 5
        for d in &mut ds[3..] {
            d.session = 2;
        }
        let a = only(&check(&ds), WatchCheck::Resumable);
        assert_eq!(a.revisions, [5]);
        assert_eq!(a.seen.iter().map(|s| (s.session, s.revision)).collect::<Vec<_>>(), [(1, 4), (2, 7)]);
        let mut ds = faithful(1);
        let again = ds[1].clone();
        for d in &mut ds[2..] {
            d.session = 2;
        }
        let mut again = again;
        again.session = 2;
        ds.insert(2, again);
        only(&check(&ds), WatchCheck::Resumable);
        // A progress notification before the reconnect legitimately moves the seam.
        let mut ds = faithful(1);
        ds.truncate(2);
        ds.push(progress(1, 6));
        ds.push(delivery(2, vec![store()[6].clone()]));
        let report = check(&ds);
        let a = only(&report, WatchCheck::Reliable);
        assert_eq!(a.revisions, [4, 5], "the progress notification lied about 4 and 5, the seam did not");
    }

    #[test]
    fn a_false_create_is_reported() {
        // Goal: version 1 without create_revision == mod_revision, or a "creation" of an existing key.
        let mut ds = faithful(1);
        ds[2].events[0].version = 1; // k/a at 4 is an update: version 2, created at 2
        let a = only(&check(&ds), WatchCheck::Create);
        assert!(a.message.contains("version 1 but create_revision 2"), "{}", a.message);
        let mut ds = faithful(1);
        ds[2].events[0].version = 1;
        ds[2].events[0].create_revision = 4;
        let a = only(&check(&ds), WatchCheck::Create);
        assert!(a.message.contains("does not create the key"), "{}", a.message);
        // The reference log is held to the same rule.
        let mut events = store();
        events[1].create_revision = 2;
        let report = check_watches(&[], &[], &RevisionLog::from_events(7, events), true);
        assert_eq!(report.anomalies.len(), 1, "{:#?}", report.anomalies());
        assert_eq!((report.anomalies[0].check, report.anomalies[0].watcher), (WatchCheck::Create, None));
    }

    #[test]
    fn events_foreign_to_the_store_or_the_watch_are_reported() {
        // Goal: a value the store never had, or a key outside the prefix, is a content anomaly.
        let mut ds = faithful(1);
        ds[0].events[0].value = Some("forged".into());
        only(&check(&ds), WatchCheck::Content);
        let mut ds = faithful(1);
        ds.insert(4, delivery(1, vec![store()[5].clone()])); // "other" at 6, between 5 and 7
        only(&check(&ds), WatchCheck::Content);
        // A watcher without a spec cannot be judged: unknown, not valid.
        let mut ds = faithful(1);
        for d in &mut ds {
            d.watcher = 9;
        }
        let report = check(&ds);
        assert_eq!((report.valid(), report.unchecked_watchers.as_slice()), (None, [9].as_slice()));
    }

    #[test]
    fn the_reference_is_built_from_a_reference_watch() {
        // Goal: the reference watch's deliveries make a log complete up to what it reached.
        let mut ds = faithful(1);
        ds.push(progress(1, 9));
        let log = RevisionLog::from_deliveries(&ds, 7);
        assert_eq!(log.header_revision, 7);
        assert_eq!(log.revisions.keys().copied().collect::<Vec<_>>(), [2, 3, 4, 5, 7]);
        ds.pop();
        ds.pop();
        assert_eq!(RevisionLog::from_deliveries(&ds, 7).header_revision, 5, "stopped short of the head");
        // A progress notification at the head, ahead of the events (etcd issue 15220), is no proof.
        let mut ds = vec![progress(1, 7)];
        assert_eq!(RevisionLog::from_deliveries(&ds, 7).header_revision, 1);
        ds.extend(faithful(1));
        assert_eq!(RevisionLog::from_deliveries(&ds, 7).header_revision, 7);
        let ahead = progress_ahead_of_events(&ds, true);
        assert_eq!(ahead.len(), 1);
        assert_eq!((ahead[0].watcher, ahead[0].late_events, ahead[0].first_late_revision), (None, 6, 2));
    }

    #[test]
    fn untrusted_progress_ahead_of_events_is_a_finding_not_a_loss() {
        // Goal: the etcd bug — a progress notification at 7 before events 4..7 of the same session —
        // is an anomaly where progress is trusted, and only counted where it is not; an untrusted
        // notification also does not make the tail owed or move a resume seam.
        let mut ds = faithful(1);
        ds.insert(2, progress(1, 7));
        let trusted = check(&ds);
        assert!(trusted.anomalies.iter().any(|a| a.check == WatchCheck::Bookmarkable), "{:#?}", trusted.anomalies());
        let report = check_watches(&[spec(true)], &ds, &reference(), false);
        assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
        assert_eq!(report.progress_ahead.len(), 1);
        assert_eq!((report.progress_ahead[0].late_events, report.progress_ahead[0].first_late_revision), (4, 4));
        // A session cut after the notification resumes from its last event, not from the notification.
        let mut ds = faithful(1);
        ds.truncate(2);
        ds.push(progress(1, 7));
        ds.extend(faithful(2).into_iter().skip(2));
        let report = check_watches(&[spec(true)], &ds, &reference(), false);
        assert_eq!(report.valid(), Some(true), "{:#?}", report.anomalies());
        assert!(report.progress_ahead.is_empty(), "a new session owes the old one's notification nothing");
        // Untrusted, a notification does not make the undelivered tail owed.
        let mut ds = faithful(1);
        ds.pop();
        ds.push(progress(1, 7));
        assert_eq!(check_watches(&[spec(true)], &ds, &reference(), false).valid(), Some(true));
    }
}
