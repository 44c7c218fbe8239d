//! The API server's view of the store: objects as values under keys, read and written through
//! the etcd v3 gRPC API (so the same code runs against Keelson's store and a real etcd). Every
//! write is a Txn conditioned on what the caller last saw, so concurrent replicas never lose an
//! update.

use std::time::Duration;

use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use proto::etcdserverpb::kv_client::KvClient;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcdserverpb::request_op::Request as Op;
use proto::etcdserverpb::watch_client::WatchClient;
use proto::etcdserverpb::watch_request::RequestUnion;
use proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use proto::mvccpb::KeyValue;
use tonic::transport::{Channel, Endpoint};

use super::encryption::Encryption;

/// How long one store call may take before the API request fails with a timeout.
const STORE_CALL_TIMEOUT_MS: u64 = 10_000;
/// Requests (the watch's creation, progress requests) queued on a store watch at most.
const WATCH_REQUESTS_QUEUED_MAX: usize = 8;
/// Largest store response accepted, in bytes (a page of a list).
const STORE_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

#[derive(Debug)]
pub enum StoreError {
    /// The revision asked for has been compacted away.
    Compacted,
    /// The revision asked for is newer than the store's.
    FutureRevision,
    /// The store could not be reached or answered with an error.
    Unavailable(String),
    /// A stored value could not be decrypted (`encryption.rs`): the key and why.
    Undecryptable { key: Vec<u8>, reason: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Compacted => write!(f, "the requested revision has been compacted"),
            StoreError::FutureRevision => write!(f, "the requested revision is a future revision"),
            StoreError::Unavailable(m) => write!(f, "storage unavailable: {m}"),
            StoreError::Undecryptable { key, reason } => {
                write!(f, "unable to transform key {:?}: {reason}", String::from_utf8_lossy(key))
            }
        }
    }
}

/// etcd answers both a compacted and a future revision with OutOfRange; only its message (the
/// `rpctypes` error text etcd's own client matches too) tells them apart.
fn unavailable(status: tonic::Status) -> StoreError {
    let out_of_range = status.code() == tonic::Code::OutOfRange;
    if status.message().contains("compacted") {
        StoreError::Compacted
    } else if out_of_range && status.message().contains("future revision") {
        StoreError::FutureRevision
    } else {
        StoreError::Unavailable(format!("{}: {}", status.code(), status.message()))
    }
}

/// The outcome of a conditional write.
pub enum Written {
    /// Written at this revision.
    Done(i64),
    /// The condition failed: the key (or a claimed one) is not at the expected revision.
    Conflict,
}

/// A key written or removed in the same transaction as an object: an allocation it holds.
pub enum Also {
    /// Put `value` under `key` if the key's mod revision is `expected` (0: absent).
    Claim { key: Vec<u8>, expected: i64, value: Vec<u8> },
    /// Delete `key`, whatever it holds.
    Release { key: Vec<u8> },
    /// Write only if `key`'s mod revision is still `expected` (the namespace an object is
    /// created in, say).
    Unchanged { key: Vec<u8>, expected: i64 },
}

/// One page of a range read.
pub struct Page {
    pub kvs: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: i64,
    pub more: bool,
}

/// How the API server reaches the store: over the network, or, when the member runs in the same
/// process, by calling its services directly (the same gRPC messages, without sockets or HTTP/2:
/// the loopback round trip and its framing cost as much CPU as the write itself).
#[derive(Clone)]
pub enum StoreChannel {
    Remote(Channel),
    Local(tonic::service::Routes),
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::BoxBody>> for StoreChannel {
    type Response = tonic::codegen::http::Response<tonic::body::BoxBody>;
    type Error = tonic::codegen::StdError;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            StoreChannel::Remote(c) => c.poll_ready(cx).map_err(Into::into),
            StoreChannel::Local(r) => r.poll_ready(cx),
        }
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::BoxBody>) -> Self::Future {
        match self {
            StoreChannel::Remote(c) => {
                let f = c.call(request);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            StoreChannel::Local(r) => Box::pin(r.call(request)),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    kv: KvClient<StoreChannel>,
    channel: StoreChannel,
    /// Values of the resources it names are encrypted on the way in and decrypted on the way out.
    encryption: Option<std::sync::Arc<Encryption>>,
}

/// Decrypts `kv`'s value in place where the encryption configuration covers its key; whether
/// an older provider or key wrote it.
fn decrypt(encryption: Option<&Encryption>, kv: &mut KeyValue) -> Result<bool, StoreError> {
    let Some(providers) = encryption.and_then(|e| e.for_key(&kv.key)) else { return Ok(false) };
    if kv.value.is_empty() {
        return Ok(false);
    }
    let read = providers
        .decrypt(&kv.value, &kv.key)
        .map_err(|reason| StoreError::Undecryptable { key: kv.key.clone(), reason })?;
    kv.value = read.value;
    Ok(read.stale)
}

impl Store {
    /// The store member running in this process, called directly.
    pub fn local(routes: tonic::service::Routes) -> Self {
        Self::with_channel(StoreChannel::Local(routes))
    }

    /// Connects lazily to every endpoint (`http://host:port`); calls go to whichever answers.
    pub fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            anyhow::bail!("no store endpoint given");
        }
        let mut list = Vec::new();
        for e in endpoints {
            if !e.starts_with("http://") {
                anyhow::bail!("store endpoint {e:?} is not an http:// URL (TLS is not supported yet)");
            }
            let endpoint = Endpoint::from_shared(e.clone())
                .map_err(|err| anyhow::anyhow!("store endpoint {e:?}: {err}"))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_nodelay(true);
            list.push(endpoint);
        }
        Ok(Self::with_channel(StoreChannel::Remote(Channel::balance_list(list.into_iter()))))
    }

    fn with_channel(channel: StoreChannel) -> Self {
        let kv = KvClient::new(channel.clone())
            .max_decoding_message_size(STORE_RESPONSE_BYTES_MAX)
            .max_encoding_message_size(STORE_RESPONSE_BYTES_MAX);
        Self { kv, channel, encryption: None }
    }

    /// This store client with values encrypted at rest as `encryption` configures.
    pub fn with_encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(std::sync::Arc::new(encryption));
        self
    }

    fn encrypt(&self, key: &[u8], value: Vec<u8>) -> Vec<u8> {
        match self.encryption.as_deref().and_then(|e| e.for_key(key)) {
            Some(providers) => providers.encrypt(&value, key),
            None => value,
        }
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(Duration::from_millis(STORE_CALL_TIMEOUT_MS), f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(unavailable(status)),
            Err(_) => Err(StoreError::Unavailable("the store did not answer in time".into())),
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), StoreError> {
        self.get_at(key, false).await
    }

    /// The version the answering member reports (etcd's `Status`).
    pub async fn version(&self) -> Result<String, StoreError> {
        let mut client = MaintenanceClient::new(self.channel.clone());
        let r = self.call(client.status(proto::etcdserverpb::StatusRequest {})).await?;
        Ok(r.version)
    }

    /// The store's current revision, read linearizably.
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        let mut kv = self.kv.clone();
        let r =
            self.call(kv.range(RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() })).await?;
        Ok(r.header.map(|h| h.revision).unwrap_or_default())
    }

    /// A read of one key; `serializable` lets the answering member use its own state, which may
    /// lag the newest writes.
    pub async fn get_at(&self, key: &[u8], serializable: bool) -> Result<(Option<KeyValue>, i64), StoreError> {
        let (kv, revision, _) = self.get_checked(key, serializable).await?;
        Ok((kv, revision))
    }

    /// `get_at`, and whether the value is stale: written by an encryption provider or key that
    /// no longer writes, so that an update rewrites it even when nothing else changed.
    pub async fn get_checked(
        &self,
        key: &[u8],
        serializable: bool,
    ) -> Result<(Option<KeyValue>, i64, bool), StoreError> {
        let mut kv = self.kv.clone();
        let r = self.call(kv.range(RangeRequest { key: key.to_vec(), serializable, ..Default::default() })).await?;
        let revision = r.header.map(|h| h.revision).unwrap_or_default();
        let mut found = r.kvs.into_iter().next();
        let stale = match found.as_mut() {
            Some(kv) => decrypt(self.encryption.as_deref(), kv)?,
            None => false,
        };
        Ok((found, revision, stale))
    }

    /// Keys from `from` (inclusive) up to `end` (exclusive), at `revision` (0: the newest),
    /// at most `limit` of them (0: all). `serializable` reads the answering member's own state.
    pub async fn range(
        &self,
        from: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
        serializable: bool,
    ) -> Result<Page, StoreError> {
        let mut kv = self.kv.clone();
        let r = self
            .call(kv.range(RangeRequest {
                key: from.to_vec(),
                range_end: end.to_vec(),
                revision,
                limit,
                serializable,
                ..Default::default()
            }))
            .await?;
        let revision = r.header.map(|h| h.revision).unwrap_or_default();
        let mut kvs = r.kvs;
        if self.encryption.is_some() {
            for kv in &mut kvs {
                decrypt(self.encryption.as_deref(), kv)?;
            }
        }
        Ok(Page { kvs, revision, more: r.more })
    }

    /// Writes `value` if the key's mod revision is `expected` (0: the key must not exist).
    pub async fn put_if(&self, key: &[u8], value: Vec<u8>, expected: i64) -> Result<Written, StoreError> {
        self.write_if(key, expected, Some(value), Vec::new()).await
    }

    /// Deletes every key in `[from, end)`.
    pub async fn delete_range(&self, from: &[u8], end: &[u8]) -> Result<i64, StoreError> {
        let mut kv = self.kv.clone();
        let r = self
            .call(kv.delete_range(DeleteRangeRequest {
                key: from.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            }))
            .await?;
        Ok(r.header.map(|h| h.revision).unwrap_or_default())
    }

    /// The keys in `[from, end)`, without their values.
    pub async fn keys(&self, from: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut kv = self.kv.clone();
        let r = self
            .call(kv.range(RangeRequest {
                key: from.to_vec(),
                range_end: end.to_vec(),
                keys_only: true,
                ..Default::default()
            }))
            .await?;
        Ok(r.kvs.into_iter().map(|kv| kv.key).collect())
    }

    /// A lease of `ttl_seconds`; keys written with it go when it expires.
    pub async fn grant_lease(&self, ttl_seconds: i64) -> Result<i64, StoreError> {
        let mut client = LeaseClient::new(self.channel.clone());
        let r =
            self.call(client.lease_grant(proto::etcdserverpb::LeaseGrantRequest { ttl: ttl_seconds, id: 0 })).await?;
        if !r.error.is_empty() {
            return Err(StoreError::Unavailable(format!("lease grant: {}", r.error)));
        }
        Ok(r.id)
    }

    /// Puts `value` under `key` (or deletes the key, for None) if its mod revision is `expected`,
    /// and in the same transaction claims and releases the keys in `also`; a claim's own
    /// condition failing fails the whole write.
    pub async fn write_if(
        &self,
        key: &[u8],
        expected: i64,
        value: Option<Vec<u8>>,
        also: Vec<Also>,
    ) -> Result<Written, StoreError> {
        self.write_if_leased(key, expected, value, 0, also).await
    }

    /// `write_if`, the value attached to `lease` (0: none).
    pub async fn write_if_leased(
        &self,
        key: &[u8],
        expected: i64,
        value: Option<Vec<u8>>,
        lease: i64,
        also: Vec<Also>,
    ) -> Result<Written, StoreError> {
        let mod_is = |key: &[u8], expected: i64| Compare {
            key: key.to_vec(),
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            target_union: Some(TargetUnion::ModRevision(expected)),
            ..Default::default()
        };
        let put = |key: Vec<u8>, value: Vec<u8>| Op::RequestPut(PutRequest { key, value, ..Default::default() });
        let delete = |key: Vec<u8>| Op::RequestDeleteRange(DeleteRangeRequest { key, ..Default::default() });
        let mut compare = vec![mod_is(key, expected)];
        let mut success = vec![match value {
            Some(v) => {
                let value = self.encrypt(key, v);
                Op::RequestPut(PutRequest { key: key.to_vec(), value, lease, ..Default::default() })
            }
            None => delete(key.to_vec()),
        }];
        for a in also {
            match a {
                Also::Claim { key, expected, value } => {
                    compare.push(mod_is(&key, expected));
                    let value = self.encrypt(&key, value);
                    success.push(put(key, value));
                }
                Also::Release { key } => success.push(delete(key)),
                Also::Unchanged { key, expected } => compare.push(mod_is(&key, expected)),
            }
        }
        let success = success.into_iter().map(|op| RequestOp { request: Some(op) }).collect();
        let mut kv = self.kv.clone();
        let r = self.call(kv.txn(TxnRequest { compare, success, failure: vec![] })).await?;
        let revision = r.header.map(|h| h.revision).unwrap_or_default();
        if r.succeeded {
            return Ok(Written::Done(revision));
        }
        Ok(Written::Conflict)
    }

    /// A watch of `[from, end)` starting at `start_revision`, with each event's previous value
    /// when `prev_kv` asks for it. The stream yields the store's responses as they come.
    pub async fn watch(
        &self,
        from: &[u8],
        end: &[u8],
        start_revision: i64,
        progress_notify: bool,
        prev_kv: bool,
    ) -> Result<WatchStream, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_REQUESTS_QUEUED_MAX);
        let create = WatchCreateRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            start_revision,
            prev_kv,
            progress_notify,
            ..Default::default()
        };
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            .await
            .map_err(|_| StoreError::Unavailable("watch request not sent".into()))?;
        let mut client = WatchClient::new(self.channel.clone()).max_decoding_message_size(STORE_RESPONSE_BYTES_MAX);
        let stream = self.call(client.watch(tokio_stream::wrappers::ReceiverStream::new(rx))).await?;
        Ok(WatchStream { stream, requests: tx, encryption: self.encryption.clone() })
    }
}

/// An open store watch; dropping it cancels the watch.
pub struct WatchStream {
    stream: tonic::Streaming<proto::etcdserverpb::WatchResponse>,
    /// The request side, open as long as the watch.
    requests: tokio::sync::mpsc::Sender<WatchRequest>,
    encryption: Option<std::sync::Arc<Encryption>>,
}

impl WatchStream {
    /// A handle that asks the store for progress notifications on this watch.
    pub fn progress(&self) -> Progress {
        Progress(self.requests.clone())
    }

    /// The next response; `Ok(None)` when the store ended the stream.
    pub async fn next(&mut self) -> Result<Option<proto::etcdserverpb::WatchResponse>, StoreError> {
        match self.stream.message().await {
            Ok(Some(r)) if r.canceled => {
                if r.compact_revision > 0 {
                    Err(StoreError::Compacted)
                } else {
                    Err(StoreError::Unavailable(format!("watch canceled: {}", r.cancel_reason)))
                }
            }
            Ok(Some(mut r)) => {
                if let Some(encryption) = self.encryption.as_deref() {
                    for event in &mut r.events {
                        for kv in event.kv.iter_mut().chain(event.prev_kv.iter_mut()) {
                            decrypt(Some(encryption), kv)?;
                        }
                    }
                }
                Ok(Some(r))
            }
            Ok(None) => Ok(None),
            Err(status) => Err(unavailable(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_notifications_ordered as ordered;

    #[test]
    fn progress_notifications_are_trusted_from_fixed_etcd_releases_and_keelson() {
        for v in ["3.4.31", "3.4.35", "3.5.13", "3.5.21", "3.6.0", "3.4.0+keelson", "4.0.0"] {
            assert!(ordered(v), "{v}");
        }
        for v in ["3.4.23", "3.4.30", "3.5.0", "3.5.12", "3.3.27", "", "garbage", "3.4.0+other"] {
            assert!(!ordered(v), "{v}");
        }
    }
}

#[derive(Clone)]
pub struct Progress(tokio::sync::mpsc::Sender<WatchRequest>);

impl Progress {
    /// Asks for a progress notification: a response with no events, whose header revision is
    /// the one everything up to has been sent. Never waits: with the queue full, requests are
    /// pending already and their answers serve this caller as well (and a caller that waited
    /// here while also the one reading the watch would stall it: a member in this process
    /// reads requests only as its responses are read).
    pub fn request(&self) -> Result<(), StoreError> {
        let req = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(proto::etcdserverpb::WatchProgressRequest {})),
        };
        match self.0.try_send(req) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                Err(StoreError::Unavailable("watch stream closed".into()))
            }
        }
    }
}

/// Whether a store of this version sends progress notifications only once a watcher has been
/// sent everything up to their revision. etcd before 3.4.31 and 3.5.13 may send one to a watcher
/// still catching up (etcd issue 15220), which would make a watch cache believe itself current
/// too early; Kubernetes then serves no consistent read from its cache, and neither does this
/// server. Keelson's store marks its version with `+keelson` build metadata.
pub fn progress_notifications_ordered(version: &str) -> bool {
    let (core, build) = version.split_once('+').unwrap_or((version, ""));
    if build.split('.').any(|b| b == "keelson") {
        return true;
    }
    let core = core.split('-').next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, m) => m >= 6,
        (m, _) => m > 3,
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
