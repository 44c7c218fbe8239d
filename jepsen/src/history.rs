//! The history of a run: every operation's invocation and completion, and every nemesis action,
//! in one stream, written as JSON lines.

use serde::{Deserialize, Serialize};

/// Process number of the nemesis in the history.
pub const NEMESIS_PROCESS: i64 = -1;

/// How an operation ended, or that it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    /// It happened, with the result recorded.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may or may not have happened (a timeout, a broken connection).
    Info,
}

/// What an operation did. Results (read values, revisions) are filled in on completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Read a register; `value` is None when the key is absent.
    Read { key: String, value: Option<String> },
    /// Write a register.
    Write { key: String, value: String },
    /// Compare-and-set a register: write `to` if it holds `from`; `Fail` when it did not.
    Cas { key: String, from: String, to: String },
    /// Add a unique element to a set (a key under the set's prefix).
    Add { set: String, element: String },
    /// Read a whole set.
    ReadSet { set: String, elements: Option<Vec<String>> },
    /// Grant a lease; its ID and TTL (seconds) are filled in on completion.
    Grant { lease: Option<i64>, ttl: Option<i64> },
    /// Take a lock: create `lock` holding `token`, attached to `lease`, if the key does not exist
    /// (a Txn on create_revision 0); `Fail` when it is held. Ok carries the put's revision.
    Acquire { lock: String, token: String, lease: i64 },
    /// Renew a lease (LeaseKeepAlive); `ttl` on completion: `Ok` when the lease is alive (TTL > 0),
    /// `Fail` when it is gone.
    KeepAlive { lease: i64, ttl: Option<i64> },
    /// Give a lock up: `how` is "delete" (guarded by the lock's revision) or "revoke" (its lease).
    Release { lock: String, token: String, lease: i64, how: String },
    /// A fault injected or healed.
    Nemesis { action: String, detail: String },
}

impl Op {
    /// The register key an operation touches, if it is a register operation.
    pub fn register_key(&self) -> Option<&str> {
        match self {
            Op::Read { key, .. } | Op::Write { key, .. } | Op::Cas { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history.
    pub index: usize,
    /// Nanoseconds since the run started, from a monotonic clock.
    pub time_ns: u64,
    /// The client that did it, or `NEMESIS_PROCESS`.
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    /// The store revision the operation observed or produced, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An operation from invocation to completion (completion absent if the run ended first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub process: i64,
    pub invoke: Event,
    pub complete: Option<Event>,
}

impl Operation {
    /// How it ended; an operation without completion is unknown.
    pub fn outcome(&self) -> Kind {
        self.complete.as_ref().map(|c| c.kind).unwrap_or(Kind::Info)
    }
}

/// Pairs each invocation with the next completion of the same process.
pub fn pair(history: &[Event]) -> Vec<Operation> {
    let mut open: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut ops: Vec<Operation> = Vec::new();
    for e in history {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, ops.len());
                ops.push(Operation { process: e.process, invoke: e.clone(), complete: None });
            }
            _ => {
                if let Some(i) = open.remove(&e.process) {
                    ops[i].complete = Some(e.clone());
                }
            }
        }
    }
    ops
}

/// Writes a history as JSON lines.
pub fn write_jsonl(history: &[Event], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for e in history {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads a history written by `write_jsonl`.
pub fn read_jsonl(text: &str) -> Result<Vec<Event>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json_lines() {
        let history = vec![
            Event {
                index: 0,
                time_ns: 10,
                process: 3,
                kind: Kind::Invoke,
                op: Op::Cas { key: "r1".into(), from: "a".into(), to: "b".into() },
                revision: None,
                error: None,
            },
            Event {
                index: 1,
                time_ns: 20,
                process: 3,
                kind: Kind::Fail,
                op: Op::Cas { key: "r1".into(), from: "a".into(), to: "b".into() },
                revision: Some(7),
                error: Some("compare failed".into()),
            },
        ];
        let mut out = Vec::new();
        write_jsonl(&history, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"index":0,"time_ns":10,"process":3,"type":"invoke","f":"cas""#), "{text}");
        assert_eq!(read_jsonl(&text).unwrap(), history);
        let ops = pair(&history);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].outcome(), Kind::Fail);
    }
}
