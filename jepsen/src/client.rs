//! Workload clients: each is one process of the history, talking to one member over the etcd
//! gRPC API and moving to another member when its connection fails.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::request_op::Request as OpRequest;
use proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;

use crate::history::{Event, Kind, Op};
use crate::nemesis::SplitMix64;

/// How long one operation may take before it is recorded as unknown.
pub const OP_TIMEOUT_MS: u64 = 5_000;
/// How long a client waits for a connection before trying another member.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The shared, ordered history of a run.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self { start, events: Mutex::new(Vec::new()) })
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn record(&self, process: i64, kind: Kind, op: Op, revision: Option<i64>, error: Option<String>) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let index = events.len();
        let time_ns = self.start.elapsed().as_nanos() as u64;
        events.push(Event { index, time_ns, process, kind, op, revision, error });
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How a failed request is recorded: certainly not applied, or perhaps applied.
pub fn classify(status: &tonic::Status, is_write: bool) -> Kind {
    if !is_write {
        // A read that failed changed nothing.
        return Kind::Fail;
    }
    let m = status.message();
    let definite = m.contains("no leader")
        || m.contains("leader changed")
        || m.contains("key is not provided")
        || m.contains("request is too large")
        || m.contains("duplicate key")
        || m.contains("unhealthy cluster")
        // A put with a lease that is gone fails the whole Txn when it is applied.
        || m.contains("requested lease not found")
        || (status.code() == tonic::Code::Unavailable && m.contains("error trying to connect"));
    if definite {
        Kind::Fail
    } else {
        Kind::Info
    }
}

/// Opens a channel to an endpoint (lazily: the first request connects).
pub fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(OP_TIMEOUT_MS))
        .connect_lazy())
}

/// One client process of the register or set workload.
pub struct Client {
    pub process: i64,
    endpoints: Vec<String>,
    member: usize,
    kv: KvClient<Channel>,
    counter: u64,
    rng: SplitMix64,
    /// The last value this client saw per register key, to aim compare-and-sets at.
    last_seen: std::collections::HashMap<String, String>,
}

/// What the clients of a run do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Reads, writes and compare-and-sets of single keys with unique values.
    Register,
    /// Adds of unique elements to a set, and reads of the whole set.
    Set,
    /// Locks taken with leases, kept alive and released (see `lease`).
    Lease,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "set" => Ok(Workload::Set),
            "lease" => Ok(Workload::Lease),
            other => Err(format!("unknown workload {other:?}; known: register, set, lease")),
        }
    }
}

pub const SET_NAME: &str = "s";

pub fn register_key(i: u64) -> String {
    format!("r{i}")
}

impl Client {
    pub fn new(process: i64, endpoints: Vec<String>, seed: u64) -> anyhow::Result<Self> {
        let member = process as usize % endpoints.len();
        let kv = KvClient::new(channel(&endpoints[member])?);
        Ok(Self {
            process,
            endpoints,
            member,
            kv,
            counter: 0,
            rng: SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15 ^ (process as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            last_seen: Default::default(),
        })
    }

    /// Moves to the next member after a failure that may be the member's.
    fn reconnect(&mut self) {
        self.member = (self.member + 1) % self.endpoints.len();
        if let Ok(c) = channel(&self.endpoints[self.member]) {
            self.kv = KvClient::new(c);
        }
    }

    fn fresh_value(&mut self) -> String {
        self.counter += 1;
        format!("p{}-{}", self.process, self.counter)
    }

    /// Runs operations until `until`, recording each.
    pub async fn run(mut self, workload: Workload, keys: u64, until: Instant, recorder: Arc<Recorder>) {
        while Instant::now() < until {
            match workload {
                Workload::Register => self.register_op(keys, &recorder).await,
                Workload::Set => self.set_op(&recorder).await,
                Workload::Lease => {
                    tracing::error!("the lease workload runs lease::LockClient, not Client");
                    return;
                }
            }
        }
    }

    async fn register_op(&mut self, keys: u64, recorder: &Recorder) {
        let key = register_key(self.rng.below(keys.max(1) as usize) as u64);
        let choice = self.rng.below(10);
        if choice < 4 {
            let op = Op::Read { key: key.clone(), value: None };
            recorder.record(self.process, Kind::Invoke, op, None, None);
            let req = RangeRequest { key: key.clone().into_bytes(), ..Default::default() };
            match self.kv.range(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let value = resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    if let Some(v) = &value {
                        self.last_seen.insert(key.clone(), v.clone());
                    }
                    let revision = resp.header.map(|h| h.revision);
                    recorder.record(self.process, Kind::Ok, Op::Read { key, value }, revision, None);
                }
                Err(status) => self.failed(recorder, Op::Read { key, value: None }, &status, false),
            }
        } else if choice < 7 {
            let value = self.fresh_value();
            let op = Op::Write { key: key.clone(), value: value.clone() };
            recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
            let req =
                PutRequest { key: key.clone().into_bytes(), value: value.clone().into_bytes(), ..Default::default() };
            match self.kv.put(req).await {
                Ok(resp) => {
                    self.last_seen.insert(key, value);
                    recorder.record(self.process, Kind::Ok, op, resp.into_inner().header.map(|h| h.revision), None);
                }
                Err(status) => self.failed(recorder, op, &status, true),
            }
        } else {
            let from = self.last_seen.get(&key).cloned().unwrap_or_else(|| "none".to_string());
            let to = self.fresh_value();
            let op = Op::Cas { key: key.clone(), from: from.clone(), to: to.clone() };
            recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
            let req = TxnRequest {
                compare: vec![Compare {
                    key: key.clone().into_bytes(),
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    target_union: Some(TargetUnion::Value(from.into_bytes())),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(OpRequest::RequestPut(PutRequest {
                        key: key.clone().into_bytes(),
                        value: to.clone().into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            match self.kv.txn(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let revision = resp.header.map(|h| h.revision);
                    if resp.succeeded {
                        self.last_seen.insert(key, to);
                        recorder.record(self.process, Kind::Ok, op, revision, None);
                    } else {
                        recorder.record(self.process, Kind::Fail, op, revision, Some("compare failed".into()));
                    }
                }
                Err(status) => self.failed(recorder, op, &status, true),
            }
        }
    }

    async fn set_op(&mut self, recorder: &Recorder) {
        if self.rng.below(10) < 8 {
            let element = self.fresh_value();
            let op = Op::Add { set: SET_NAME.into(), element: element.clone() };
            recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
            let key = format!("{SET_NAME}/{element}");
            let req = PutRequest { key: key.into_bytes(), value: b"1".to_vec(), ..Default::default() };
            match self.kv.put(req).await {
                Ok(resp) => {
                    recorder.record(self.process, Kind::Ok, op, resp.into_inner().header.map(|h| h.revision), None)
                }
                Err(status) => self.failed(recorder, op, &status, true),
            }
        } else {
            let op = Op::ReadSet { set: SET_NAME.into(), elements: None };
            recorder.record(self.process, Kind::Invoke, op.clone(), None, None);
            match read_set(&mut self.kv, SET_NAME, false).await {
                Ok((elements, revision)) => recorder.record(
                    self.process,
                    Kind::Ok,
                    Op::ReadSet { set: SET_NAME.into(), elements: Some(elements) },
                    Some(revision),
                    None,
                ),
                Err(status) => self.failed(recorder, op, &status, false),
            }
        }
    }

    fn failed(&mut self, recorder: &Recorder, op: Op, status: &tonic::Status, is_write: bool) {
        let kind = classify(status, is_write);
        recorder.record(self.process, kind, op, None, Some(format!("{:?}: {}", status.code(), status.message())));
        self.reconnect();
    }
}

/// Reads every element of a set; with its revision.
pub async fn read_set(
    kv: &mut KvClient<Channel>,
    set: &str,
    serializable: bool,
) -> Result<(Vec<String>, i64), tonic::Status> {
    let prefix = format!("{set}/");
    let end = crate::watcher::prefix_end(&prefix);
    let req = RangeRequest {
        key: prefix.clone().into_bytes(),
        range_end: end,
        serializable,
        keys_only: true,
        ..Default::default()
    };
    let resp = kv.range(req).await?.into_inner();
    let elements = resp
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).trim_start_matches(prefix.as_str()).to_string())
        .collect();
    Ok((elements, resp.header.map(|h| h.revision).unwrap_or_default()))
}

/// Runs `read` against the members in turn until it succeeds or `deadline` passes: after
/// healing, the cluster needs a moment before every member answers again.
pub async fn read_until<T, F, Fut>(
    endpoints: &[String],
    deadline: Instant,
    what: &str,
    mut read: F,
) -> anyhow::Result<T>
where
    F: FnMut(KvClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0usize;
    loop {
        let kv = KvClient::new(channel(&endpoints[attempt % endpoints.len()])?);
        match read(kv).await {
            Ok(v) => return Ok(v),
            Err(status) if Instant::now() < deadline => {
                tracing::debug!(%what, error = %status, "final read failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => anyhow::bail!("the final read of {what} kept failing: {status}"),
        }
    }
}

/// The final value of every register key, read linearizably, retrying until `deadline`.
pub async fn final_registers(
    endpoints: &[String],
    keys: u64,
    deadline: Instant,
) -> anyhow::Result<std::collections::BTreeMap<String, Option<String>>> {
    let mut out = std::collections::BTreeMap::new();
    for i in 0..keys {
        let key = register_key(i);
        let value = read_until(endpoints, deadline, &key, |mut kv| {
            let req = RangeRequest { key: key.clone().into_bytes(), ..Default::default() };
            async move {
                let resp = kv.range(req).await?.into_inner();
                Ok(resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
            }
        })
        .await?;
        out.insert(key, value);
    }
    Ok(out)
}
