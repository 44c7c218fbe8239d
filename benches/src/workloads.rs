//! The workloads, written once against the etcd v3 gRPC API and run unchanged on both systems.
//! Every workload stops at its operation count or its time limit, whichever comes first.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::etcdserverpb::request_op::Request;
use proto::etcdserverpb::watch_client::WatchClient;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Longest a single operation may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of a preload (not measured).
const PRELOAD_SECONDS: f64 = 120.0;
/// Concurrent clients of a preload.
const PRELOAD_CLIENTS: usize = 32;
/// How long watchers may keep receiving after the writer has finished.
const WATCH_DRAIN: Duration = Duration::from_secs(5);
/// Time-to-live of the leases kept alive, in seconds; long enough never to lapse during the run.
const LEASE_TTL_SECONDS: i64 = 300;

/// What one workload measured on one system.
pub struct Sample {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of every successful operation (or delivered event), sorted.
    pub latencies: Vec<Duration>,
}

impl Sample {
    fn new(elapsed: Duration, parts: Vec<ClientResult>) -> Self {
        let mut sample = Sample { ops: 0, errors: 0, first_error: None, elapsed, latencies: Vec::new() };
        for part in parts {
            sample.errors += part.errors;
            sample.first_error = sample.first_error.or(part.first_error);
            sample.latencies.extend(part.latencies);
        }
        sample.ops = sample.latencies.len() as u64;
        sample.latencies.sort_unstable();
        sample
    }
}

#[derive(Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl ClientResult {
    fn record(&mut self, started: Instant, outcome: Result<()>) {
        match outcome {
            Ok(()) => self.latencies.push(started.elapsed()),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

/// Opens `n` connections, spread round-robin over the members.
pub async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let endpoint = &endpoints[i % endpoints.len()];
        channels.push(Channel::from_shared(endpoint.clone())?.connect().await.with_context(|| format!("{endpoint}"))?);
    }
    Ok(channels)
}

/// Runs `clients` closed-loop clients over `channels`, each calling `op(channel, client, op_index)`
/// until `max_ops` operations have started in total or `seconds` have passed. Each client keeps
/// to one channel, except when there are fewer clients than channels: then each operation takes
/// the next channel, so that a lone client meets the leader and the followers alike (which
/// member leads is chance, and must not decide the comparison).
async fn closed_loop<F, Fut>(channels: &[Channel], clients: usize, max_ops: u64, seconds: f64, op: F) -> Result<Sample>
where
    F: Fn(Channel, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let (op, next) = (op.clone(), next.clone());
        let rotate = clients < channels.len();
        let own: Vec<Channel> =
            if rotate { channels.to_vec() } else { vec![channels[client % channels.len()].clone()] };
        tasks.spawn(async move {
            let mut result = ClientResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_ops || Instant::now() >= deadline {
                    return result;
                }
                let channel = own[i as usize % own.len()].clone();
                let started = Instant::now();
                let outcome = match tokio::time::timeout(OP_TIMEOUT, op(channel, client, i)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(anyhow::anyhow!("timed out after {OP_TIMEOUT:?}")),
                };
                result.record(started, outcome);
            }
        });
    }
    let mut parts = Vec::with_capacity(clients);
    while let Some(part) = tasks.join_next().await {
        parts.push(part.context("client task")?);
    }
    Ok(Sample::new(start.elapsed(), parts))
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // Prefixes here are ASCII ending in '/', so the last byte never overflows.
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

async fn put(channel: Channel, key: Vec<u8>, value: Vec<u8>) -> Result<i64> {
    let resp = KvClient::new(channel).put(PutRequest { key, value, ..Default::default() }).await?.into_inner();
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Writes `keys` keys `prefix{i:06}` (not measured), failing on any error.
async fn preload(channels: &[Channel], prefix: &'static str, keys: u64, value_bytes: usize) -> Result<()> {
    let value = vec![b'v'; value_bytes];
    let sample = closed_loop(channels, PRELOAD_CLIENTS, keys, PRELOAD_SECONDS, move |ch, _, i| {
        let value = value.clone();
        async move { put(ch, format!("{prefix}{i:06}").into_bytes(), value).await.map(drop) }
    })
    .await?;
    if sample.ops != keys {
        bail!("preload of {prefix}: {} of {keys} keys written ({:?})", sample.ops, sample.first_error);
    }
    Ok(())
}

pub async fn put_load(
    channels: &[Channel],
    clients: usize,
    max_ops: u64,
    seconds: f64,
    value_bytes: usize,
    prefix: &'static str,
) -> Result<Sample> {
    let value = vec![b'x'; value_bytes];
    closed_loop(channels, clients, max_ops, seconds, move |ch, client, i| {
        let value = value.clone();
        async move { put(ch, format!("{prefix}{client}/{i}").into_bytes(), value).await.map(drop) }
    })
    .await
}

/// Gets of preloaded keys; `serializable` reads are answered by the member itself.
pub async fn get_load(
    channels: &[Channel],
    clients: usize,
    max_ops: u64,
    seconds: f64,
    value_bytes: usize,
    serializable: bool,
) -> Result<Sample> {
    const KEYS: u64 = 100;
    const PREFIX: &str = "bench/get/";
    preload(channels, PREFIX, KEYS, value_bytes).await?;
    closed_loop(channels, clients, max_ops, seconds, move |ch, _, i| async move {
        let key = format!("{PREFIX}{:06}", i % KEYS).into_bytes();
        let resp = KvClient::new(ch).range(RangeRequest { key, serializable, ..Default::default() }).await?;
        if resp.into_inner().kvs.len() != 1 {
            bail!("preloaded key missing");
        }
        Ok(())
    })
    .await
}

/// Compare-and-swap: each client swaps its own key conditioned on the mod revision it last wrote.
pub async fn txn_cas(
    channels: &[Channel],
    clients: usize,
    max_ops: u64,
    seconds: f64,
    value_bytes: usize,
) -> Result<Sample> {
    let value = vec![b'c'; value_bytes];
    let revisions: Arc<Vec<AtomicI64>> = Arc::new((0..clients).map(|_| AtomicI64::new(0)).collect());
    for client in 0..clients {
        let rev = put(channels[client % channels.len()].clone(), cas_key(client), value.clone()).await?;
        revisions[client].store(rev, Ordering::Relaxed);
    }
    closed_loop(channels, clients, max_ops, seconds, move |ch, client, _| {
        let (value, revisions) = (value.clone(), revisions.clone());
        async move {
            let key = cas_key(client);
            let compare = Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(revisions[client].load(Ordering::Relaxed))),
                ..Default::default()
            };
            let success =
                RequestOp { request: Some(Request::RequestPut(PutRequest { key, value, ..Default::default() })) };
            let resp = KvClient::new(ch)
                .txn(TxnRequest { compare: vec![compare], success: vec![success], failure: vec![] })
                .await?
                .into_inner();
            if !resp.succeeded {
                bail!("compare-and-swap lost on a key only this client writes");
            }
            revisions[client].store(resp.header.map_or(0, |h| h.revision), Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}

fn cas_key(client: usize) -> Vec<u8> {
    format!("bench/cas/{client}").into_bytes()
}

/// Ranges over all `keys` preloaded keys of a prefix.
pub async fn range_load(
    channels: &[Channel],
    clients: usize,
    max_ops: u64,
    seconds: f64,
    keys: u64,
    value_bytes: usize,
) -> Result<Sample> {
    const PREFIX: &str = "bench/range/";
    preload(channels, PREFIX, keys, value_bytes).await?;
    closed_loop(channels, clients, max_ops, seconds, move |ch, _, _| async move {
        let request =
            RangeRequest { key: PREFIX.into(), range_end: prefix_end(PREFIX.as_bytes()), ..Default::default() };
        let got = KvClient::new(ch).range(request).await?.into_inner().kvs.len() as u64;
        if got != keys {
            bail!("range returned {got} of {keys} keys");
        }
        Ok(())
    })
    .await
}

/// `watchers` watch streams on one prefix, spread over `channels`; one writer puts `events` values
/// carrying their send time. Ops are delivered events; latency is put-to-event.
pub async fn watch_fanout(
    channels: &[Channel],
    members: usize,
    watchers: usize,
    events: u64,
    seconds: f64,
    value_bytes: usize,
) -> Result<Sample> {
    const PREFIX: &str = "bench/watch/";
    const SETUP_DEADLINE: Duration = Duration::from_secs(30);
    let origin = Instant::now();
    // The number of events each watcher should wait for: unknown (MAX) while the writer runs, then
    // what was written, then 0 once the drain time is over.
    let (target_tx, target_rx) = watch::channel(u64::MAX);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(watchers.max(1));
    let mut tasks = JoinSet::new();
    for w in 0..watchers {
        let (channel, ready_tx, mut target_rx) =
            (channels[w % channels.len()].clone(), ready_tx.clone(), target_rx.clone());
        tasks.spawn(async move {
            let mut result = ClientResult::default();
            let (req_tx, req_rx) = mpsc::channel(1);
            let create = WatchCreateRequest {
                key: PREFIX.into(),
                range_end: prefix_end(PREFIX.as_bytes()),
                ..Default::default()
            };
            req_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
            let mut stream = WatchClient::new(channel).watch(ReceiverStream::new(req_rx)).await?.into_inner();
            match stream.message().await? {
                Some(resp) if resp.created => ready_tx.send(()).await?,
                other => bail!("watch not created: {other:?}"),
            }
            let mut received = 0u64;
            while received < *target_rx.borrow_and_update() {
                tokio::select! {
                    changed = target_rx.changed() => if changed.is_err() { break },
                    message = stream.message() => {
                        let Some(resp) = message? else { bail!("watch stream ended") };
                        let now = origin.elapsed();
                        for event in resp.events {
                            let value = event.kv.map(|kv| kv.value).unwrap_or_default();
                            let sent = value.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                            let sent = sent.context("event value without a timestamp")?;
                            result.latencies.push(now.saturating_sub(Duration::from_nanos(sent)));
                            received += 1;
                        }
                    }
                }
            }
            drop(req_tx);
            Ok::<_, anyhow::Error>(result)
        });
    }
    drop(ready_tx);
    let setup = async {
        for _ in 0..watchers {
            ready_rx.recv().await.context("a watcher failed before it was created")?;
        }
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) =
        tokio::time::timeout(SETUP_DEADLINE, setup).await.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
    {
        // Surface the watcher's own error if one failed.
        tasks.abort_all();
        bail!("setting up {watchers} watchers: {e:#}");
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    // The writer's puts go to each member in turn (see `closed_loop`).
    let writers: Vec<KvClient<Channel>> =
        channels[..members.min(channels.len())].iter().cloned().map(KvClient::new).collect();
    let mut written = 0u64;
    let mut write_errors = ClientResult::default();
    while written < events && Instant::now() < deadline {
        let mut value = vec![b'w'; value_bytes.max(8)];
        value[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
        let key = format!("{PREFIX}{written}").into_bytes();
        let mut kv = writers[written as usize % writers.len()].clone();
        let started = Instant::now();
        let outcome = tokio::time::timeout(OP_TIMEOUT, kv.put(PutRequest { key, value, ..Default::default() })).await;
        match outcome {
            Ok(Ok(_)) => written += 1,
            Ok(Err(e)) => write_errors.record(started, Err(e.into())),
            Err(_) => write_errors.record(started, Err(anyhow::anyhow!("put timed out"))),
        }
        if write_errors.errors > 0 {
            break;
        }
    }
    target_tx.send_replace(written);
    let drain = tokio::spawn(async move {
        tokio::time::sleep(WATCH_DRAIN).await;
        target_tx.send_replace(0);
    });
    let mut parts = vec![write_errors];
    while let Some(part) = tasks.join_next().await {
        let part = part.context("watcher task")??;
        let missed = written.saturating_sub(part.latencies.len() as u64);
        parts.push(ClientResult { errors: missed, ..part });
    }
    drain.abort();
    let mut sample = Sample::new(start.elapsed(), parts);
    if sample.errors > 0 && sample.first_error.is_none() {
        sample.first_error = Some(format!("{} events not delivered within {WATCH_DRAIN:?}", sample.errors));
    }
    Ok(sample)
}

/// Grants `leases` leases, then `streams` keep-alive streams refresh them in turn.
pub async fn lease_keepalive(
    channels: &[Channel],
    leases: u64,
    streams: usize,
    max_ops: u64,
    seconds: f64,
) -> Result<Sample> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let granted = ids.clone();
    let grants = closed_loop(channels, PRELOAD_CLIENTS, leases, PRELOAD_SECONDS, move |ch, _, _| {
        let granted = granted.clone();
        async move {
            let resp = LeaseClient::new(ch).lease_grant(LeaseGrantRequest { ttl: LEASE_TTL_SECONDS, id: 0 }).await?;
            let id = resp.into_inner().id;
            granted.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?.push(id);
            Ok(())
        }
    })
    .await?;
    if grants.ops != leases {
        bail!("granted {} of {leases} leases ({:?})", grants.ops, grants.first_error);
    }
    let ids: Vec<i64> = std::mem::take(&mut *ids.lock().map_err(|_| anyhow::anyhow!("poisoned lock"))?);
    let streams = streams.clamp(1, ids.len().max(1));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for s in 0..streams {
        let mine: Vec<i64> = ids.iter().skip(s).step_by(streams).copied().collect();
        let (channel, next) = (channels[s % channels.len()].clone(), next.clone());
        tasks.spawn(async move {
            let mut result = ClientResult::default();
            let (req_tx, req_rx) = mpsc::channel(1);
            // A Go gRPC server sends the response headers of a stream only with its first answer,
            // so the first request must be queued before the call is opened.
            let Some(first) = mine.first() else { return Ok(result) };
            req_tx.send(LeaseKeepAliveRequest { id: *first }).await?;
            let mut queued = true;
            let mut responses =
                LeaseClient::new(channel).lease_keep_alive(ReceiverStream::new(req_rx)).await?.into_inner();
            for id in mine.iter().cycle() {
                if next.fetch_add(1, Ordering::Relaxed) >= max_ops || Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                let send = !std::mem::take(&mut queued);
                let round = async {
                    if send {
                        req_tx.send(LeaseKeepAliveRequest { id: *id }).await?;
                    }
                    let resp = responses.message().await?.context("keep-alive stream ended")?;
                    if resp.ttl <= 0 {
                        bail!("lease {id} not found");
                    }
                    Ok(())
                };
                let outcome =
                    tokio::time::timeout(OP_TIMEOUT, round).await.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
                let failed = outcome.is_err();
                result.record(started, outcome);
                if failed {
                    // The stream's request/response pairing is lost after an error.
                    break;
                }
            }
            Ok::<_, anyhow::Error>(result)
        });
    }
    let mut parts = Vec::with_capacity(streams);
    while let Some(part) = tasks.join_next().await {
        parts.push(part.context("keep-alive task")??);
    }
    Ok(Sample::new(start.elapsed(), parts))
}
