//! How an overloaded API server sheds load, after Kubernetes' max-in-flight filter and API
//! Priority and Fairness: requests hold a seat while they are served — reads and writes from
//! separate pools (`--max-requests-inflight`, `--max-mutating-requests-inflight`) — and wait in a
//! bounded queue for one, for a bounded time; past either bound the answer is Kubernetes' 429
//! with `Retry-After`, never an unbounded queue. Exempt, as APF's `exempt` level: the privileged
//! group, health checks, and long-running requests (watches and streams), which hold no seat.
//! A user holds at most `--max-watches-per-user` watches at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::authn::User;
use super::authz::Attributes;
use super::errors::ApiError;

/// How long a request may wait for a seat before it is refused, in milliseconds.
const QUEUE_WAIT_MS: u64 = 1_000;
/// What a refused client is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u64 = 1;

struct Pool {
    seats: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Requests that may wait for a seat at once.
    queue_max: usize,
}

impl Pool {
    fn new(seats: usize) -> Pool {
        Pool { seats: Arc::new(Semaphore::new(seats.max(1))), waiting: AtomicUsize::new(0), queue_max: seats.max(1) }
    }

    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(seat) = self.seats.clone().try_acquire_owned() {
            return Some(seat);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let seat = tokio::time::timeout(Duration::from_millis(QUEUE_WAIT_MS), self.seats.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        seat.ok().and_then(Result::ok)
    }
}

pub struct Limits {
    reads: Pool,
    writes: Pool,
    /// Watches open per user, and how many one user may hold.
    watches: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    watches_per_user_max: usize,
}

/// A user's open watch, counted until dropped.
#[derive(Debug)]
pub struct WatchSeat {
    watches: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    user: String,
}

impl Drop for WatchSeat {
    fn drop(&mut self) {
        let mut open = self.watches.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Kubernetes' 429 for a request refused under load.
pub fn too_many_requests() -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", "Too many requests, please try again later.");
    e.details = Some(serde_json::json!({"retryAfterSeconds": RETRY_AFTER_SECONDS}));
    e
}

impl Limits {
    pub fn new(reads_in_flight_max: usize, writes_in_flight_max: usize, watches_per_user_max: usize) -> Limits {
        Limits {
            reads: Pool::new(reads_in_flight_max),
            writes: Pool::new(writes_in_flight_max),
            watches: Arc::default(),
            watches_per_user_max: watches_per_user_max.max(1),
        }
    }

    /// A watch seat for `user` (None for the privileged group), or the 429 when the user holds
    /// as many watches as one may.
    pub fn watch(&self, user: &User) -> Result<Option<WatchSeat>, ApiError> {
        if user.groups.iter().any(|g| g == crate::pki::MASTERS_GROUP) {
            return Ok(None);
        }
        let mut open = self.watches.lock().expect("not poisoned");
        let n = open.entry(user.name.clone()).or_insert(0);
        if *n >= self.watches_per_user_max {
            return Err(too_many_requests());
        }
        *n += 1;
        Ok(Some(WatchSeat { watches: self.watches.clone(), user: user.name.clone() }))
    }

    /// A seat for the request, None for an exempt one, or the 429.
    pub async fn admit(
        &self,
        user: &User,
        attrs: &Attributes,
        long_running: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let health = attrs.resource.is_none()
            && ["/healthz", "/livez", "/readyz"]
                .iter()
                .any(|p| attrs.path == *p || attrs.path.starts_with(&format!("{p}/")));
        if long_running || health || user.groups.iter().any(|g| g == crate::pki::MASTERS_GROUP) {
            return Ok(None);
        }
        let mutating = matches!(
            attrs.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection" | "post" | "put"
        );
        let pool = if mutating { &self.writes } else { &self.reads };
        match pool.take().await {
            Some(seat) => Ok(Some(seat)),
            None => Err(too_many_requests()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn a_user_holds_at_most_its_share_of_watches_and_closing_one_frees_it() {
        let limits = Limits::new(1, 1, 2);
        let (a, b) = (limits.watch(&jane()).unwrap(), limits.watch(&jane()).unwrap());
        assert_eq!(limits.watch(&jane()).unwrap_err().code, 429);
        let bob = User { name: "bob".into(), groups: vec![] };
        assert!(limits.watch(&bob).unwrap().is_some(), "another user has watches of its own");
        drop(a);
        assert!(limits.watch(&jane()).unwrap().is_some());
        drop(b);
        let masters = User { name: "admin".into(), groups: vec![crate::pki::MASTERS_GROUP.into()] };
        for _ in 0..5 {
            assert!(limits.watch(&masters).unwrap().is_none());
        }
    }

    fn jane() -> User {
        User { name: "jane".into(), groups: vec!["system:authenticated".into()] }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_queues_briefly_then_refuses_and_exempts_what_apf_exempts() {
        let limits = Limits::new(1, 1, 2);
        let write = Attributes::of(&Method::POST, "/api/v1/namespaces/a/configmaps", false);
        let read = Attributes::of(&Method::GET, "/api/v1/namespaces/a/configmaps", false);
        let held = limits.admit(&jane(), &write, false).await.unwrap().expect("a seat");
        // Reads have seats of their own.
        assert!(limits.admit(&jane(), &read, false).await.unwrap().is_some());
        // One write may wait; it is refused once the wait is over.
        let e = limits.admit(&jane(), &write, false).await.unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        // A write waiting gets the seat when it is given back within the wait.
        let queued = tokio::spawn(async move {
            let l = limits;
            let got = l.admit(&jane(), &write, false).await.map(|s| s.is_some());
            (got, l)
        });
        tokio::task::yield_now().await;
        drop(held);
        let (got, limits) = queued.await.unwrap();
        assert!(got.unwrap());
        let masters = User { name: "admin".into(), groups: vec![crate::pki::MASTERS_GROUP.into()] };
        let write = Attributes::of(&Method::POST, "/api/v1/namespaces/a/configmaps", false);
        for _ in 0..10 {
            assert!(limits.admit(&masters, &write, false).await.unwrap().is_none());
            assert!(limits
                .admit(&jane(), &Attributes::of(&Method::GET, "/api/v1/pods", true), true)
                .await
                .unwrap()
                .is_none());
            assert!(limits
                .admit(&jane(), &Attributes::of(&Method::GET, "/readyz", false), false)
                .await
                .unwrap()
                .is_none());
        }
    }
}
