//! Linearizability of the registers: a Wing & Gong search with Lowe's memoisation (the algorithm of
//! Knossos and Porcupine), run key by key because registers are independent, under one deadline
//! shared by all keys. Running out of time gives "unknown", never "valid".
//!
//! Model: a register holding `Option<String>`, initially absent. Outcomes: an ok operation took
//! effect once between its invocation and completion; a failed one never took effect (dropped); an
//! unknown write or cas took effect at any time after its invocation or never (completion = +∞); an
//! unknown read tells nothing (dropped).

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{pair, Event, Kind, Op, Operation};

/// Search steps between two looks at the clock: reading it every step would cost more than a step.
const CLOCK_CHECK_INTERVAL_STEPS: u64 = 1024;
/// Memory the memo of visited configurations may use per key before the key is given up as unknown.
const CACHE_BYTES_MAX: usize = 1 << 30;
/// Memory of one memo entry besides its bitset: the entry itself and the hash table's share.
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 64;
/// Operations of the longest partial linearization shown in a witness (its end is what matters).
const WITNESS_TAIL_OPS_MAX: usize = 8;
/// Candidate operations shown in a witness (a window of 100 concurrent clients is unreadable).
const WITNESS_CANDIDATES_MAX: usize = 16;

/// The verdict for all registers of a history.
#[derive(Clone, Debug, Serialize)]
pub struct LinearizabilityReport {
    /// One entry per register key, sorted by key.
    pub keys: Vec<KeyReport>,
    pub elapsed_ms: u64,
}

/// The verdict for one register.
#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    pub key: String,
    /// Operations the search had to place (ok ones, and unknown writes whose value someone observed).
    pub operations: usize,
    /// Operations that cannot constrain the result: failed ones, unknown reads, unknown writes of values
    /// nobody observed, and malformed pairs.
    pub dropped: usize,
    /// Configurations the search visited.
    pub steps: u64,
    pub outcome: KeyOutcome,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum KeyOutcome {
    Linearizable,
    NotLinearizable {
        witness: Box<Witness>,
    },
    /// The search ran out of time or memory: nothing is known.
    Unknown {
        reason: String,
    },
}

/// Why a register's history has no linearization, Porcupine-style: the longest partial linearization
/// the search found, and the operations that could not come after it.
#[derive(Clone, Debug, Serialize)]
pub struct Witness {
    /// Length of the longest partial linearization found.
    pub linearized_ops: usize,
    /// Its last operations, in linearization order.
    pub linearized_tail: Vec<WitnessOp>,
    /// The register value after it.
    pub value: Option<String>,
    /// The operation of the partial linearization that set that value (it may precede the tail).
    pub value_set_by: Option<WitnessOp>,
    /// The acknowledged operation that had to take effect before its completion but could not.
    pub blocked: WitnessOp,
    /// Every operation that could have come next, and why it did not fit.
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub op: WitnessOp,
    pub reason: String,
}

/// An operation as the history recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WitnessOp {
    pub process: i64,
    /// Index of the invocation event in the history.
    pub invoke_index: usize,
    /// Index of the completion event, if there is one.
    pub complete_index: Option<usize>,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    pub outcome: Kind,
    /// The operation with its result (a read's value comes from the completion).
    pub op: Op,
}

impl LinearizabilityReport {
    /// `Some(false)` if any key is not linearizable, `None` if some key is unknown, else `Some(true)`.
    pub fn valid(&self) -> Option<bool> {
        if self.not_linearizable_keys() > 0 {
            Some(false)
        } else if self.unknown_keys() > 0 {
            None
        } else {
            Some(true)
        }
    }

    pub fn linearizable_keys(&self) -> usize {
        self.keys.iter().filter(|k| matches!(k.outcome, KeyOutcome::Linearizable)).count()
    }

    pub fn not_linearizable_keys(&self) -> usize {
        self.keys.iter().filter(|k| matches!(k.outcome, KeyOutcome::NotLinearizable { .. })).count()
    }

    pub fn unknown_keys(&self) -> usize {
        self.keys.iter().filter(|k| matches!(k.outcome, KeyOutcome::Unknown { .. })).count()
    }

    /// One line for the report's summary.
    pub fn summary(&self) -> String {
        let ops: usize = self.keys.iter().map(|k| k.operations).sum();
        format!(
            "{} keys, {} operations: {} linearizable, {} not linearizable, {} unknown ({} ms)",
            self.keys.len(),
            ops,
            self.linearizable_keys(),
            self.not_linearizable_keys(),
            self.unknown_keys(),
            self.elapsed_ms
        )
    }

    /// The keys that are not linearizable or unknown, each rendered as text.
    pub fn anomalies(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in &self.keys {
            match &k.outcome {
                KeyOutcome::Linearizable => {}
                KeyOutcome::NotLinearizable { witness } => {
                    out.push(format!("key {:?} is not linearizable:\n{}", k.key, witness.render()))
                }
                KeyOutcome::Unknown { reason } => out.push(format!("key {:?} unknown: {reason}", k.key)),
            }
        }
        out
    }
}

impl Witness {
    /// Readable lines, indented by two spaces.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let skipped = self.linearized_ops - self.linearized_tail.len();
        s.push_str(&format!("  longest linearizable prefix: {} operations", self.linearized_ops));
        if skipped > 0 {
            s.push_str(&format!(" (first {skipped} not shown)"));
        }
        s.push('\n');
        for op in &self.linearized_tail {
            s.push_str(&format!("    {}\n", op.render()));
        }
        s.push_str(&format!("  the register then holds {}", show_value(self.value.as_deref())));
        match &self.value_set_by {
            Some(op) => s.push_str(&format!(", set by {}\n", op.render())),
            None => s.push_str(" (initial value)\n"),
        }
        s.push_str(&format!("  blocked: {} must take effect before it completes\n", self.blocked.render()));
        s.push_str("  none of the operations that could come next fits:\n");
        for c in &self.candidates {
            s.push_str(&format!("    {}: {}\n", c.op.render(), c.reason));
        }
        s
    }
}

impl WitnessOp {
    /// For example `p3 read -> "a" ok [1.000200 ms .. 1.300000 ms] events #12..#15`.
    pub fn render(&self) -> String {
        let what = match &self.op {
            Op::Read { value, .. } => format!("read -> {}", show_value(value.as_deref())),
            Op::Write { value, .. } => format!("write {}", show_value(Some(value))),
            Op::Cas { from, to, .. } => format!("cas {} -> {}", show_value(Some(from)), show_value(Some(to))),
            other => format!("{other:?}"),
        };
        let outcome = match self.outcome {
            Kind::Invoke => "pending",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        };
        let end = self.complete_ns.map(show_ms).unwrap_or_else(|| "never".into());
        let complete = self.complete_index.map(|i| format!("#{i}")).unwrap_or_else(|| "-".into());
        format!(
            "p{} {what} {outcome} [{} .. {end}] events #{}..{complete}",
            self.process,
            show_ms(self.invoke_ns),
            self.invoke_index
        )
    }

    /// The operation as recorded, with its result.
    pub fn from_operation(o: &Operation) -> WitnessOp {
        let op = match (&o.invoke.op, &o.complete) {
            // A read's result lives in its completion.
            (Op::Read { .. }, Some(c)) if matches!(c.op, Op::Read { .. }) => c.op.clone(),
            _ => o.invoke.op.clone(),
        };
        WitnessOp {
            process: o.process,
            invoke_index: o.invoke.index,
            complete_index: o.complete.as_ref().map(|c| c.index),
            invoke_ns: o.invoke.time_ns,
            complete_ns: o.complete.as_ref().map(|c| c.time_ns),
            outcome: o.outcome(),
            op,
        }
    }
}

fn show_value(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "nil".into(),
    }
}

fn show_ms(ns: u64) -> String {
    format!("{}.{:06} ms", ns / 1_000_000, ns % 1_000_000)
}

/// Checks every register key of `history`; all keys share one deadline `time_limit` from now.
pub fn check_registers(history: &[Event], time_limit: Duration) -> LinearizabilityReport {
    let started = Instant::now();
    // No deadline when it does not fit in an Instant (Duration::MAX means "no limit").
    let deadline = started.checked_add(time_limit);
    let operations = pair(history);
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for o in &operations {
        if let Some(key) = o.invoke.op.register_key() {
            by_key.entry(key).or_default().push(o);
        }
    }
    // Small keys first, so that one hard key spends the shared budget after the easy ones are done.
    let mut order: Vec<(&str, Vec<&Operation>)> = by_key.into_iter().collect();
    order.sort_by_key(|(_, ops)| ops.len());
    let mut keys: Vec<KeyReport> = order.into_iter().map(|(key, ops)| check_key(key, &ops, deadline)).collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    LinearizabilityReport { keys, elapsed_ms: started.elapsed().as_millis() as u64 }
}

/// A register value, interned: 0 is "absent".
type Value = u32;
const ABSENT: Value = 0;
/// Every value that no read returned and no cas expected: such values are interchangeable, and
/// merging them lets the memo recognise orders of unread writes as the same configuration.
const UNREAD: Value = 1;

#[derive(Clone, Copy, Debug)]
enum Effect {
    Read(Value),
    Write(Value),
    Cas { from: Value, to: Value },
}

struct KeyOp<'a> {
    effect: Effect,
    /// Ok: it must take effect before `return_ns`. Otherwise (unknown) it may take effect or not.
    acknowledged: bool,
    call_ns: u64,
    /// None is +∞: an unknown operation may take effect at any later time.
    return_ns: Option<u64>,
    source: &'a Operation,
}

/// Whether `effect` fits a register holding `state`, and the value afterwards. An unknown cas that
/// found another value did nothing, which is the same as never happening: it is simply left out.
fn step(effect: Effect, state: Value) -> Option<Value> {
    match effect {
        Effect::Read(v) => (v == state).then_some(state),
        Effect::Write(v) => Some(v),
        Effect::Cas { from, to } => (from == state).then_some(to),
    }
}

/// Turns one key's operations into search input; returns the operations, the value table and the
/// number dropped.
fn prepare<'a>(ops: &[&'a Operation]) -> (Vec<KeyOp<'a>>, Vec<String>, usize) {
    enum Raw<'s> {
        Read(Option<&'s str>),
        Write(&'s str),
        Cas(&'s str, &'s str),
    }
    let mut raw: Vec<(Raw, bool, &Operation)> = Vec::new();
    let mut dropped = 0;
    for &o in ops {
        let outcome = o.outcome();
        let r = match (&o.invoke.op, outcome) {
            (_, Kind::Fail | Kind::Invoke) => None,
            (Op::Read { .. }, Kind::Ok) => match &o.complete {
                Some(Event { op: Op::Read { value, .. }, .. }) => Some(Raw::Read(value.as_deref())),
                _ => None,
            },
            (Op::Read { .. }, _) => None,
            (Op::Write { value, .. }, _) => Some(Raw::Write(value)),
            (Op::Cas { from, to, .. }, _) => Some(Raw::Cas(from, to)),
            _ => None,
        };
        match r {
            Some(r) => raw.push((r, outcome == Kind::Ok, o)),
            None => dropped += 1,
        }
    }
    // An unknown write whose value nobody observed can only make later reads and cas fail, and
    // "it never happened" is always allowed for it: drop it. This keeps crash-heavy histories cheap.
    let mut observed: HashSet<&str> = HashSet::new();
    for (r, acknowledged, _) in &raw {
        match r {
            Raw::Read(Some(v)) if *acknowledged => {
                observed.insert(v);
            }
            Raw::Cas(from, _) => {
                observed.insert(from);
            }
            _ => {}
        }
    }
    raw.retain(|(r, acknowledged, _)| {
        let keep = *acknowledged
            || match r {
                Raw::Write(v) | Raw::Cas(_, v) => observed.contains(v),
                Raw::Read(_) => false,
            };
        dropped += usize::from(!keep);
        keep
    });
    let mut values: Vec<String> = vec![String::new(), String::new()];
    let mut ids: std::collections::HashMap<&str, Value> = std::collections::HashMap::new();
    let mut intern = |v: &'a str| -> Value {
        *ids.entry(v).or_insert_with(|| {
            values.push(v.to_string());
            (values.len() - 1) as Value
        })
    };
    let mut out = Vec::with_capacity(raw.len());
    for (r, acknowledged, o) in raw {
        let effect = match r {
            Raw::Read(None) => Effect::Read(ABSENT),
            Raw::Read(Some(v)) => Effect::Read(intern(v)),
            Raw::Write(v) if !observed.contains(v) => Effect::Write(UNREAD),
            Raw::Write(v) => Effect::Write(intern(v)),
            Raw::Cas(from, to) if !observed.contains(to) => Effect::Cas { from: intern(from), to: UNREAD },
            Raw::Cas(from, to) => Effect::Cas { from: intern(from), to: intern(to) },
        };
        let call_ns = o.invoke.time_ns;
        // A completion stamped before its invocation is a clock glitch; read it as instantaneous.
        let return_ns = if acknowledged { o.complete.as_ref().map(|c| c.time_ns.max(call_ns)) } else { None };
        out.push(KeyOp { effect, acknowledged, call_ns, return_ns, source: o });
    }
    (out, values, dropped)
}

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;

/// A call or return in the doubly linked list of the WGL search.
#[derive(Clone, Copy)]
struct Node {
    op: u32,
    /// For a call, its return node; NIL for a return.
    partner: u32,
    prev: u32,
    next: u32,
}

/// A visited configuration: the set of linearized operations and the register value.
struct Configuration {
    hash: u64,
    value: Value,
    linearized: Box<[u64]>,
}

impl Hash for Configuration {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash)
    }
}

impl PartialEq for Configuration {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.value == other.value && self.linearized == other.linearized
    }
}

impl Eq for Configuration {}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn check_key(key: &str, ops: &[&Operation], deadline: Option<Instant>) -> KeyReport {
    let (kops, values, dropped) = prepare(ops);
    let mut report = KeyReport {
        key: key.to_string(),
        operations: kops.len(),
        dropped,
        steps: 0,
        outcome: KeyOutcome::Linearizable,
    };
    if deadline.is_some_and(|d| Instant::now() >= d) {
        report.outcome = KeyOutcome::Unknown { reason: "time limit reached before this key was checked".into() };
        return report;
    }
    let mut search = Search::new(&kops, &values);
    report.outcome = search.run(deadline);
    report.steps = search.steps;
    report
}

/// One operation of the partial linearization.
#[derive(Clone, Copy)]
struct Frame {
    /// Its call node.
    call: u32,
    /// The register value before it.
    before: Value,
    /// A read that fitted when it was taken: no other choice at its level needs trying.
    forced: bool,
}

struct Search<'k, 'a> {
    ops: &'k [KeyOp<'a>],
    values: &'k [String],
    nodes: Vec<Node>,
    /// Per operation, a random number: a set's hash is the xor of its members' (Zobrist hashing).
    op_hash: Vec<u64>,
    linearized: Vec<u64>,
    set_hash: u64,
    value: Value,
    calls: Vec<Frame>,
    cache: HashSet<Configuration>,
    cache_bytes: usize,
    acknowledged_left: usize,
    steps: u64,
    best: Option<Box<Witness>>,
    best_len: Option<usize>,
}

impl<'k, 'a> Search<'k, 'a> {
    fn new(ops: &'k [KeyOp<'a>], values: &'k [String]) -> Self {
        // Calls and returns in time order; at equal times calls first, so that touching operations
        // count as concurrent (the permissive reading: never a false alarm from clock resolution).
        let mut entries: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            entries.push((op.call_ns, false, i as u32));
            entries.push((op.return_ns.unwrap_or(u64::MAX), true, i as u32));
        }
        entries.sort_unstable();
        let mut nodes = vec![Node { op: NIL, partner: NIL, prev: NIL, next: NIL }; entries.len() + 1];
        let mut call_node = vec![NIL; ops.len()];
        for (pos, &(_, is_return, op)) in entries.iter().enumerate() {
            let id = pos as u32 + 1;
            nodes[id as usize] = Node { op, partner: NIL, prev: id - 1, next: NIL };
            nodes[pos].next = id;
            if is_return {
                nodes[call_node[op as usize] as usize].partner = id;
            } else {
                call_node[op as usize] = id;
            }
        }
        Search {
            ops,
            values,
            nodes,
            op_hash: (0..ops.len() as u64).map(splitmix64).collect(),
            linearized: vec![0u64; ops.len().div_ceil(64)],
            set_hash: 0,
            value: ABSENT,
            calls: Vec::new(),
            cache: HashSet::new(),
            cache_bytes: 0,
            acknowledged_left: ops.iter().filter(|o| o.acknowledged).count(),
            steps: 0,
            best: None,
            best_len: None,
        }
    }

    fn lift(&mut self, call: u32) {
        for n in [call, self.nodes[call as usize].partner] {
            let Node { prev, next, .. } = self.nodes[n as usize];
            self.nodes[prev as usize].next = next;
            if next != NIL {
                self.nodes[next as usize].prev = prev;
            }
        }
    }

    /// Undoes `lift`, in reverse order (dancing links).
    fn unlift(&mut self, call: u32) {
        for n in [self.nodes[call as usize].partner, call] {
            let Node { prev, next, .. } = self.nodes[n as usize];
            self.nodes[prev as usize].next = n;
            if next != NIL {
                self.nodes[next as usize].prev = n;
            }
        }
    }

    /// The configuration after linearizing operation `op` next, if it fits.
    fn after(&self, op: u32) -> Option<Configuration> {
        let next_value = step(self.ops[op as usize].effect, self.value)?;
        let mut linearized = self.linearized.clone();
        linearized[op as usize / 64] |= 1u64 << (op % 64);
        let hash = self.set_hash ^ self.op_hash[op as usize] ^ splitmix64(u64::from(next_value) ^ 0x5eed);
        Some(Configuration { hash, value: next_value, linearized: linearized.into_boxed_slice() })
    }

    /// Linearizes the operation of call node `call` next; false if it does not fit or leads to an
    /// explored configuration.
    fn try_linearize(&mut self, call: u32, forced: bool) -> Result<bool, KeyOutcome> {
        let op = self.nodes[call as usize].op;
        let Some(config) = self.after(op) else { return Ok(false) };
        let next_value = config.value;
        if !self.cache.insert(config) {
            return Ok(false);
        }
        self.cache_bytes += self.linearized.len() * 8 + CACHE_ENTRY_OVERHEAD_BYTES;
        if self.cache_bytes > CACHE_BYTES_MAX {
            let reason = format!("memo of visited configurations exceeded {CACHE_BYTES_MAX} bytes");
            return Err(KeyOutcome::Unknown { reason });
        }
        self.calls.push(Frame { call, before: self.value, forced });
        self.linearized[op as usize / 64] |= 1u64 << (op % 64);
        self.set_hash ^= self.op_hash[op as usize];
        self.value = next_value;
        self.acknowledged_left -= usize::from(self.ops[op as usize].acknowledged);
        self.lift(call);
        Ok(true)
    }

    /// Undoes linearizations up to a level with candidates left; returns the node to continue from,
    /// or None when the search space is exhausted.
    fn backtrack(&mut self) -> Option<u32> {
        while let Some(frame) = self.calls.pop() {
            let op = self.nodes[frame.call as usize].op;
            self.linearized[op as usize / 64] &= !(1u64 << (op % 64));
            self.set_hash ^= self.op_hash[op as usize];
            self.value = frame.before;
            self.acknowledged_left += usize::from(self.ops[op as usize].acknowledged);
            self.unlift(frame.call);
            if !frame.forced {
                return Some(self.nodes[frame.call as usize].next);
            }
        }
        None
    }

    /// A candidate read that fits the current value. Linearizing it at once loses nothing: it changes
    /// no value, and being a candidate, moving it earlier breaks no real-time order. So it is the only
    /// choice tried at its level (a partial-order reduction that spares most backtracking).
    fn fitting_read(&self) -> Option<u32> {
        let mut n = self.nodes[HEAD as usize].next;
        while n != NIL && self.nodes[n as usize].partner != NIL {
            if matches!(self.ops[self.nodes[n as usize].op as usize].effect, Effect::Read(v) if v == self.value) {
                return Some(n);
            }
            n = self.nodes[n as usize].next;
        }
        None
    }

    fn exhausted(&mut self) -> KeyOutcome {
        match self.best.take() {
            Some(witness) => KeyOutcome::NotLinearizable { witness },
            None => KeyOutcome::Unknown { reason: "internal error: no witness recorded".into() },
        }
    }

    fn run(&mut self, deadline: Option<Instant>) -> KeyOutcome {
        let mut entry = self.nodes[HEAD as usize].next;
        // At a new level, a fitting read is taken first and alone.
        let mut fresh = true;
        loop {
            // Unknown operations left over may never have taken effect.
            if self.acknowledged_left == 0 {
                return KeyOutcome::Linearizable;
            }
            self.steps += 1;
            if self.steps.is_multiple_of(CLOCK_CHECK_INTERVAL_STEPS) && deadline.is_some_and(|d| Instant::now() >= d) {
                return KeyOutcome::Unknown { reason: format!("time limit reached after {} search steps", self.steps) };
            }
            if std::mem::take(&mut fresh) {
                if let Some(read) = self.fitting_read() {
                    let linearized = match self.try_linearize(read, true) {
                        Ok(linearized) => linearized,
                        Err(unknown) => return unknown,
                    };
                    if linearized {
                        entry = self.nodes[HEAD as usize].next;
                        fresh = true;
                        continue;
                    }
                    // Explored before from here, and failed: so does this whole level.
                    match self.backtrack() {
                        Some(next) => entry = next,
                        None => return self.exhausted(),
                    }
                    continue;
                }
            }
            if entry == NIL {
                // Unreachable: an acknowledged operation's return is still in the list.
                return KeyOutcome::Unknown { reason: "internal error: search ran off the list".into() };
            }
            let node = self.nodes[entry as usize];
            if node.partner != NIL {
                match self.try_linearize(entry, false) {
                    Ok(true) => {
                        entry = self.nodes[HEAD as usize].next;
                        fresh = true;
                    }
                    Ok(false) => entry = node.next,
                    Err(unknown) => return unknown,
                }
            } else {
                // A return: its operation was not linearized and no candidate before it fits. Backtrack.
                if self.best_len.is_none_or(|b| self.calls.len() > b) {
                    self.record_witness(entry);
                }
                match self.backtrack() {
                    Some(next) => entry = next,
                    None => return self.exhausted(),
                }
            }
        }
    }

    /// Keeps the stuck point with the longest partial linearization as the witness.
    fn record_witness(&mut self, blocked_return: u32) {
        let witness_op = |op: u32| WitnessOp::from_operation(self.ops[op as usize].source);
        let calls = &self.calls;
        let tail_start = calls.len().saturating_sub(WITNESS_TAIL_OPS_MAX);
        let linearized_tail = calls[tail_start..].iter().map(|f| witness_op(self.nodes[f.call as usize].op)).collect();
        // The last linearized write or cas that set the current value.
        let mut value_set_by = None;
        for (i, frame) in calls.iter().enumerate().rev() {
            let op = self.nodes[frame.call as usize].op;
            let after = calls.get(i + 1).map(|f| f.before).unwrap_or(self.value);
            let sets = match self.ops[op as usize].effect {
                Effect::Write(_) => true,
                Effect::Cas { from, to } => frame.before == from && after == to,
                Effect::Read(_) => false,
            };
            if sets {
                value_set_by = Some(witness_op(op));
                break;
            }
        }
        // Unread values share one id; the write that set it names the real one.
        let current = match (self.value, value_set_by.as_ref().map(|o| &o.op)) {
            (ABSENT, _) => None,
            (UNREAD, Some(Op::Write { value, .. } | Op::Cas { to: value, .. })) => Some(value.clone()),
            (v, _) => self.values.get(v as usize).cloned(),
        };
        let show = |v: Value| match v {
            ABSENT => "nil".to_string(),
            UNREAD => "a value nobody read".to_string(),
            v => show_value(self.values.get(v as usize).map(String::as_str)),
        };
        let held = show_value(current.as_deref());
        let mut candidates = Vec::new();
        let mut n = self.nodes[HEAD as usize].next;
        while n != blocked_return && n != NIL && candidates.len() < WITNESS_CANDIDATES_MAX {
            let node = self.nodes[n as usize];
            if node.partner != NIL {
                let op = &self.ops[node.op as usize];
                let reason = match (self.after(node.op), op.effect) {
                    (None, Effect::Read(v)) => format!("it read {} but the register held {held}", show(v)),
                    (None, Effect::Cas { from, .. }) if op.acknowledged => {
                        format!("it succeeded from {} but the register held {held}", show(from))
                    }
                    (None, Effect::Cas { from, .. }) => {
                        format!("to take effect it needed {} but the register held {held}", show(from))
                    }
                    (None, Effect::Write(_)) => "a write always fits".into(),
                    (Some(config), _) if self.cache.contains(&config) => {
                        "it fits, but every continuation after it was already explored and failed".into()
                    }
                    (Some(_), _) => "it fits here; the operations after it do not".into(),
                };
                candidates.push(Candidate { op: witness_op(node.op), reason });
            }
            n = node.next;
        }
        let blocked = witness_op(self.nodes[blocked_return as usize].op);
        self.best_len = Some(calls.len());
        self.best = Some(Box::new(Witness {
            linearized_ops: calls.len(),
            linearized_tail,
            value: current,
            value_set_by,
            blocked,
            candidates,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds histories from operations given as (process, invoke ns, complete ns, outcome, op).
    struct Builder {
        events: Vec<Event>,
    }

    impl Builder {
        fn new() -> Self {
            Builder { events: Vec::new() }
        }

        /// `op` carries the result (a read's value) for both events; `end` None leaves it pending.
        fn op(mut self, process: i64, start: u64, end: Option<(u64, Kind)>, op: Op) -> Self {
            let invoke_op = match &op {
                Op::Read { key, .. } => Op::Read { key: key.clone(), value: None },
                other => other.clone(),
            };
            self.events.push(Event {
                index: 0,
                time_ns: start,
                process,
                kind: Kind::Invoke,
                op: invoke_op,
                revision: None,
                error: None,
            });
            if let Some((t, kind)) = end {
                self.events.push(Event { index: 0, time_ns: t, process, kind, op, revision: None, error: None });
            }
            self
        }

        fn ok(self, process: i64, start: u64, end: u64, op: Op) -> Self {
            self.op(process, start, Some((end, Kind::Ok)), op)
        }

        fn build(mut self) -> Vec<Event> {
            // Stable: events at equal times keep the order they were given in.
            self.events.sort_by_key(|e| e.time_ns);
            for (i, e) in self.events.iter_mut().enumerate() {
                e.index = i;
            }
            self.events
        }
    }

    fn w(v: &str) -> Op {
        Op::Write { key: "x".into(), value: v.into() }
    }

    fn r(v: Option<&str>) -> Op {
        Op::Read { key: "x".into(), value: v.map(String::from) }
    }

    fn cas(from: &str, to: &str) -> Op {
        Op::Cas { key: "x".into(), from: from.into(), to: to.into() }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    fn witness(report: &LinearizabilityReport) -> &Witness {
        match &report.keys[0].outcome {
            KeyOutcome::NotLinearizable { witness } => witness,
            other => panic!("expected not linearizable, got {other:?}"),
        }
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        // Goal: a read that starts after a write completed must see it.
        let h = Builder::new().ok(1, 0, 10, w("a")).ok(2, 20, 30, r(None)).build();
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.valid(), Some(false));
        let wit = witness(&report);
        assert_eq!(wit.linearized_ops, 1);
        assert_eq!(wit.value.as_deref(), Some("a"));
        assert_eq!(wit.value_set_by.as_ref().map(|o| o.process), Some(1));
        assert_eq!(wit.blocked.process, 2);
        assert_eq!(wit.blocked.invoke_index, 2);
        assert_eq!(wit.blocked.complete_index, Some(3));
        assert_eq!(wit.candidates.len(), 1);
        assert!(wit.candidates[0].reason.contains("read nil but the register held \"a\""), "{wit:?}");
        let text = report.anomalies().join("\n");
        assert!(text.contains("p2 read -> nil ok"), "{text}");
    }

    #[test]
    fn concurrent_writes_seen_in_both_orders_are_not_linearizable() {
        // Goal: two processes that see two concurrent writes in opposite orders contradict each other.
        let h = Builder::new()
            .ok(1, 0, 100, w("a"))
            .ok(2, 0, 100, w("b"))
            .ok(3, 10, 20, r(Some("a")))
            .ok(3, 30, 40, r(Some("b")))
            .ok(4, 10, 20, r(Some("b")))
            .ok(4, 30, 40, r(Some("a")))
            .build();
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.valid(), Some(false));
        let wit = witness(&report);
        // Best case: both writes and the first reads of each; then one of the second reads is stuck.
        assert!(wit.linearized_ops >= 3, "{}", wit.render());
        assert!(matches!(wit.blocked.op, Op::Read { .. } | Op::Write { .. }), "{}", wit.render());
        // Either read order alone is fine: the checker is not simply rejecting concurrency.
        let one_order = Builder::new()
            .ok(1, 0, 100, w("a"))
            .ok(2, 0, 100, w("b"))
            .ok(3, 10, 20, r(Some("a")))
            .ok(3, 30, 40, r(Some("b")))
            .ok(4, 10, 20, r(Some("a")))
            .ok(4, 30, 40, r(Some("b")))
            .build();
        assert_eq!(check_registers(&one_order, LIMIT).valid(), Some(true));
    }

    #[test]
    fn cas_from_a_value_never_written_is_not_linearizable() {
        // Goal: an acknowledged cas must have found its `from` value in the register.
        let h = Builder::new().ok(1, 0, 10, w("a")).ok(1, 20, 30, cas("z", "b")).build();
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.valid(), Some(false));
        let wit = witness(&report);
        assert!(wit.candidates[0].reason.contains("succeeded from \"z\" but the register held \"a\""), "{wit:?}");
        // The same cas acknowledged from the right value is fine, and a failed one is ignored.
        let good = Builder::new().ok(1, 0, 10, w("a")).ok(1, 20, 30, cas("a", "b")).ok(2, 40, 50, r(Some("b"))).build();
        assert_eq!(check_registers(&good, LIMIT).valid(), Some(true));
    }

    #[test]
    fn read_of_a_value_never_written_is_not_linearizable() {
        // Goal: a read may only return the initial value or a written one.
        let h = Builder::new().ok(1, 0, 10, w("a")).ok(2, 5, 15, r(Some("ghost"))).build();
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.valid(), Some(false));
        assert_eq!(witness(&report).blocked.process, 2);
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        // Goal: overlap means either order; a naive "read sees the last completed write" check errs here.
        for seen in [None, Some("a")] {
            let h = Builder::new().ok(1, 0, 100, w("a")).ok(2, 50, 60, r(seen)).build();
            assert_eq!(check_registers(&h, LIMIT).valid(), Some(true), "read {seen:?}");
        }
        // A read that began before the write completed, and saw the new value, then an old one: invalid.
        let h = Builder::new().ok(1, 0, 100, w("a")).ok(2, 50, 60, r(Some("a"))).ok(2, 70, 80, r(None)).build();
        assert_eq!(check_registers(&h, LIMIT).valid(), Some(false));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Goal: an unknown write may take effect long after it was invoked, or never.
        let info = |b: Builder| b.op(1, 0, Some((10, Kind::Info)), w("a"));
        let happened_late = info(Builder::new()).ok(2, 20, 30, r(None)).ok(2, 40, 50, r(Some("a"))).build();
        assert_eq!(check_registers(&happened_late, LIMIT).valid(), Some(true));
        let never = info(Builder::new()).ok(2, 20, 30, r(None)).build();
        assert_eq!(check_registers(&never, LIMIT).valid(), Some(true));
        // A pending write (no completion at all) is just as unknown.
        let pending = Builder::new().op(1, 0, None, w("a")).ok(2, 40, 50, r(Some("a"))).build();
        assert_eq!(check_registers(&pending, LIMIT).valid(), Some(true));
        // But it cannot take effect before it was invoked.
        let early = Builder::new().ok(2, 0, 10, r(Some("a"))).op(1, 20, Some((30, Kind::Info)), w("a")).build();
        assert_eq!(check_registers(&early, LIMIT).valid(), Some(false));
        // Nor twice: once overwritten, it cannot come back.
        let twice =
            info(Builder::new()).ok(2, 20, 30, r(Some("a"))).ok(2, 40, 50, w("b")).ok(2, 60, 70, r(Some("a"))).build();
        assert_eq!(check_registers(&twice, LIMIT).valid(), Some(false));
    }

    #[test]
    fn failed_operations_did_not_happen() {
        // Goal: a failed cas or write is dropped: reading its value is an anomaly, ignoring it is fine.
        let failed = |b: Builder| {
            b.ok(1, 0, 10, w("a")).op(2, 20, Some((30, Kind::Fail)), cas("b", "c")).op(
                3,
                20,
                Some((30, Kind::Fail)),
                w("d"),
            )
        };
        let ignored = failed(Builder::new()).ok(1, 40, 50, r(Some("a"))).build();
        let report = check_registers(&ignored, LIMIT);
        assert_eq!(report.valid(), Some(true));
        assert_eq!(report.keys[0].dropped, 2);
        let seen = failed(Builder::new()).ok(1, 40, 50, r(Some("d"))).build();
        assert_eq!(check_registers(&seen, LIMIT).valid(), Some(false));
        // An unknown cas may have succeeded...
        let maybe = Builder::new()
            .ok(1, 0, 10, w("a"))
            .op(2, 20, Some((30, Kind::Info)), cas("a", "c"))
            .ok(1, 40, 50, r(Some("c")))
            .build();
        assert_eq!(check_registers(&maybe, LIMIT).valid(), Some(true));
        // ...late, or not at all; but once seen and overwritten, its value cannot come back.
        let late = |b: Builder| {
            b.ok(1, 0, 10, w("a")).op(2, 20, Some((30, Kind::Info)), cas("a", "c")).ok(1, 40, 50, r(Some("a"))).ok(
                1,
                60,
                70,
                r(Some("c")),
            )
        };
        assert_eq!(check_registers(&late(Builder::new()).build(), LIMIT).valid(), Some(true));
        let back = late(Builder::new()).ok(1, 80, 90, r(Some("a"))).build();
        assert_eq!(check_registers(&back, LIMIT).valid(), Some(false));
        // ...but not from a value the register did not hold.
        let impossible = Builder::new()
            .ok(1, 0, 10, w("a"))
            .op(2, 20, Some((30, Kind::Info)), cas("z", "c"))
            .ok(1, 40, 50, r(Some("c")))
            .build();
        assert_eq!(check_registers(&impossible, LIMIT).valid(), Some(false));
    }

    #[test]
    fn keys_are_checked_independently() {
        // Goal: operations on another key neither excuse nor cause an anomaly.
        let mut h = Builder::new().ok(1, 0, 10, w("a")).ok(2, 20, 30, r(None)).build();
        h.push(Event {
            index: 4,
            time_ns: 40,
            process: 3,
            kind: Kind::Invoke,
            op: Op::Write { key: "y".into(), value: "b".into() },
            revision: None,
            error: None,
        });
        h.push(Event { index: 5, time_ns: 50, kind: Kind::Ok, ..h[4].clone() });
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(report.not_linearizable_keys(), 1);
        assert_eq!(report.linearizable_keys(), 1);
        assert_eq!(report.valid(), Some(false));
    }

    /// A hard history: many writes and reads all concurrent, and one read of a value written only later,
    /// so that proving it invalid needs an exhaustive search.
    fn hard_history(key: &str, width: usize) -> Vec<Event> {
        let mut b = Builder::new();
        let op = |o: Op| match o {
            Op::Write { value, .. } => Op::Write { key: key.into(), value },
            Op::Read { value, .. } => Op::Read { key: key.into(), value },
            other => other,
        };
        for i in 0..width {
            b = b.ok(i as i64, 0, 1000, op(w(&format!("v{i}"))));
            b = b.ok((width + i) as i64, 0, 1000, op(r(Some(&format!("v{i}")))));
        }
        b = b.ok(2 * width as i64, 0, 1000, op(r(Some("late"))));
        b.ok(2 * width as i64 + 1, 2000, 3000, op(w("late"))).build()
    }

    #[test]
    fn time_limit_gives_unknown_not_valid() {
        // Goal: a search that runs out of time says "unknown", and stops close to its limit.
        let h = hard_history("x", 24);
        let started = Instant::now();
        let report = check_registers(&h, Duration::from_millis(50));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(report.unknown_keys(), 1, "{report:?}");
        assert_eq!(report.valid(), None);
        assert!(report.anomalies()[0].contains("time limit"), "{:?}", report.anomalies());
    }

    #[test]
    fn easy_keys_are_checked_before_a_hard_key_eats_the_budget() {
        // Goal: an invalid small key is still found when a big key exhausts the shared deadline.
        let mut h = hard_history("big", 24);
        let offset = h.len();
        for mut e in Builder::new().ok(1, 0, 10, w("a")).ok(2, 20, 30, r(None)).build() {
            e.index += offset;
            e.process += 1000;
            h.push(e);
        }
        let report = check_registers(&h, Duration::from_millis(50));
        assert_eq!(report.unknown_keys(), 1);
        assert_eq!(report.not_linearizable_keys(), 1);
        assert_eq!(report.valid(), Some(false));
    }

    /// A tiny deterministic generator (xorshift), so that tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A history of `processes` clients against a real atomic register: each operation takes effect
    /// at a random instant inside its interval; some end unknown (and then happened or not).
    fn simulated_history(seed: u64, processes: i64, ops_per_process: usize) -> Vec<Event> {
        struct Planned {
            process: i64,
            start: u64,
            effect_at: u64,
            end: u64,
            op: Op,
            unknown: bool,
            applied: bool,
        }
        let mut rng = Rng(seed | 1);
        let mut planned = Vec::new();
        let mut next_value = 0;
        for p in 0..processes {
            let mut t = rng.below(100);
            for _ in 0..ops_per_process {
                let start = t + 1 + rng.below(50);
                let effect_at = start + 1 + rng.below(100);
                let end = effect_at + 1 + rng.below(100);
                t = end;
                next_value += 1;
                let op = match rng.below(3) {
                    0 => r(None),
                    1 => w(&format!("v{next_value}")),
                    // The `from` is fixed when effects are replayed below.
                    _ => cas("?", &format!("v{next_value}")),
                };
                let unknown = rng.below(20) == 0;
                let applied = !unknown || rng.below(2) == 0;
                planned.push(Planned { process: p, start, effect_at, end, op, unknown, applied });
            }
        }
        planned.sort_by_key(|o| o.effect_at);
        let mut value: Option<String> = None;
        let mut events = Vec::new();
        let mut recent: Vec<String> = Vec::new();
        for o in &mut planned {
            let mut kind = if o.unknown { Kind::Info } else { Kind::Ok };
            match &mut o.op {
                Op::Read { value: v, .. } => *v = value.clone(),
                Op::Write { value: v, .. } if o.applied => value = Some(v.clone()),
                Op::Cas { from, to, .. } => {
                    // Mostly from the current value, so that most cas succeed.
                    *from = match (&value, rng.below(4)) {
                        (Some(v), 0..=2) => v.clone(),
                        _ => recent.get(rng.below(recent.len().max(1) as u64) as usize).cloned().unwrap_or("v0".into()),
                    };
                    if value.as_deref() == Some(from.as_str()) {
                        if o.applied {
                            value = Some(to.clone());
                        }
                    } else if !o.unknown {
                        kind = Kind::Fail;
                    }
                }
                _ => {}
            }
            if let Some(v) = &value {
                recent.push(v.clone());
            }
            let invoke_op = match &o.op {
                Op::Read { key, .. } => Op::Read { key: key.clone(), value: None },
                other => other.clone(),
            };
            events.push(Event {
                index: 0,
                time_ns: o.start,
                process: o.process,
                kind: Kind::Invoke,
                op: invoke_op,
                revision: None,
                error: None,
            });
            events.push(Event {
                index: 0,
                time_ns: o.end,
                process: o.process,
                kind,
                op: o.op.clone(),
                revision: None,
                error: None,
            });
        }
        // Invocations before completions at equal times keep each process's pairs in order.
        events.sort_by_key(|e| (e.time_ns, e.kind != Kind::Invoke));
        for (i, e) in events.iter_mut().enumerate() {
            e.index = i;
        }
        events
    }

    #[test]
    fn histories_of_a_real_register_are_linearizable_and_checked_fast() {
        // Goal: no false alarm on genuine concurrent histories with unknown outcomes, and a few
        // thousand operations of one key check well under a second (in a debug build, generously).
        for seed in 1..20 {
            let h = simulated_history(seed, 5, 40);
            let report = check_registers(&h, LIMIT);
            assert_eq!(report.valid(), Some(true), "seed {seed}: {}", report.anomalies().join("\n"));
        }
        let h = simulated_history(42, 5, 800);
        let started = Instant::now();
        let report = check_registers(&h, LIMIT);
        assert_eq!(report.valid(), Some(true), "{}", report.anomalies().join("\n"));
        assert!(report.keys[0].operations > 3000, "{:?}", report.keys[0].operations);
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }

    #[test]
    fn one_corrupted_read_in_a_real_history_is_found() {
        // Goal: the search finds a single bad read in a long concurrent history, and points at it.
        for seed in 1..10 {
            let mut h = simulated_history(seed, 5, 100);
            let at = h.iter().rposition(|e| e.kind == Kind::Ok && matches!(e.op, Op::Read { .. })).unwrap();
            h[at].op = r(Some("corrupt"));
            let report = check_registers(&h, LIMIT);
            assert_eq!(report.valid(), Some(false), "seed {seed}");
            let wit = witness(&report);
            let bad = |o: &WitnessOp| o.complete_index == Some(at);
            assert!(bad(&wit.blocked) || wit.candidates.iter().any(|c| bad(&c.op)), "seed {seed}: {}", wit.render());
        }
    }
}
