//! A controller's work queue, as client-go's rate-limited work queue behaves: a key is held once
//! however often it is added; a key being processed is not handed to a second worker (an add
//! meanwhile marks it to come back once the first is done); a failed key returns after a per-key
//! exponential back-off, and failures as a whole are held to an overall rate.
//!
//! The queue is bounded by what it holds: keys of objects in the informers' caches, each at most
//! once (`len` counts them).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The first retry of a failed key (client-go's default).
pub const BACKOFF_BASE: Duration = Duration::from_millis(5);
/// The longest a failed key waits between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1000);
/// Retries of failed keys, all keys together, per second, and how many may go at once.
pub const RETRIES_PER_SECOND: f64 = 10.0;
pub const RETRY_BURST: f64 = 100.0;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Keys waiting in `queue` or to be queued again once processed.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    /// Keys to add at a later instant, each once at its earliest instant.
    waiting: BTreeSet<(Instant, String)>,
    waiting_at: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
    /// The overall retry bucket: tokens and when they were last counted.
    tokens: f64,
    counted_at: Option<Instant>,
    shut_down: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
}

impl Default for WorkQueue {
    fn default() -> Self {
        WorkQueue::new()
    }
}

impl WorkQueue {
    pub fn new() -> WorkQueue {
        WorkQueue { state: Mutex::new(State { tokens: RETRY_BURST, ..Default::default() }), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` unless it is already queued.
    pub fn add(&self, key: &str) {
        let mut st = self.lock();
        if Self::insert(&mut st, key) {
            drop(st);
            self.ready.notify_one();
        }
    }

    fn insert(st: &mut State, key: &str) -> bool {
        if st.shut_down || !st.dirty.insert(key.to_string()) {
            return false;
        }
        if st.processing.contains(key) {
            return false;
        }
        st.queue.push_back(key.to_string());
        true
    }

    /// Queues `key` after `delay` (at once when it is zero); an earlier pending add wins.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut st = self.lock();
        if st.shut_down {
            return;
        }
        match st.waiting_at.get(key) {
            Some(&earlier) if earlier <= at => return,
            Some(&later) => {
                st.waiting.remove(&(later, key.to_string()));
            }
            None => {}
        }
        st.waiting.insert((at, key.to_string()));
        st.waiting_at.insert(key.to_string(), at);
        drop(st);
        // A worker asleep until a later instant must look again.
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Queues a key whose processing failed, after its back-off (and the overall rate).
    pub fn add_rate_limited(&self, key: &str) {
        self.retry(key, true);
    }

    /// Queues a key after its back-off alone, outside the overall rate: for a sync that only
    /// met a write newer than its cache (a conflict), which the cache catches up with at once.
    /// Under load such conflicts come by the hundred, and the overall rate (meant for a failing
    /// API) would hold them back for seconds.
    pub fn add_backoff(&self, key: &str) {
        self.retry(key, false);
    }

    fn retry(&self, key: &str, bucket: bool) {
        let delay = {
            let mut st = self.lock();
            let n = st.failures.entry(key.to_string()).or_insert(0);
            let per_key = backoff(*n);
            *n = n.saturating_add(1);
            if bucket {
                per_key.max(Self::bucket_delay(&mut st))
            } else {
                per_key
            }
        };
        self.add_after(key, delay);
    }

    /// How long the overall bucket makes this retry wait (and takes its token).
    fn bucket_delay(st: &mut State) -> Duration {
        let now = Instant::now();
        if let Some(then) = st.counted_at {
            st.tokens = (st.tokens + (now - then).as_secs_f64() * RETRIES_PER_SECOND).min(RETRY_BURST);
        }
        st.counted_at = Some(now);
        st.tokens -= 1.0;
        if st.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.tokens / RETRIES_PER_SECOND)
        }
    }

    /// Failures counted for `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Clears `key`'s failures (after it was processed successfully).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Waits for a key to process; None once the queue is shut down. Call `done` after.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut st = self.lock();
                let now = Instant::now();
                while let Some((at, _)) = st.waiting.first() {
                    if *at > now {
                        break;
                    }
                    let Some((_, key)) = st.waiting.pop_first() else { break };
                    st.waiting_at.remove(&key);
                    Self::insert(&mut st, &key);
                }
                if st.shut_down {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    if !st.queue.is_empty() {
                        drop(st);
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
                st.waiting.first().map(|(at, _)| *at)
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let mut st = self.lock();
        st.processing.remove(key);
        if st.dirty.contains(key) && !st.shut_down {
            st.queue.push_back(key.to_string());
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Keys queued or waiting to be.
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.dirty.len() + st.waiting_at.keys().filter(|k| !st.dirty.contains(*k)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; workers waiting in `get` return None.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }
}

/// The per-key back-off after `failures` earlier failures: 5 ms doubling up to 1000 s.
pub fn backoff(failures: u32) -> Duration {
    let factor = 2f64.powi(failures.min(40) as i32);
    BACKOFF_BASE.mul_f64(factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_held_once_and_not_handed_out_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added while being processed: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        let waited = tokio::time::timeout(Duration::from_millis(50), q.get()).await;
        assert!(waited.is_err(), "a key in processing was handed out again");
        q.done("a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new();
        for n in 0..4 {
            let start = Instant::now();
            q.add_rate_limited("k");
            assert_eq!(q.get().await.unwrap(), "k");
            assert_eq!(Instant::now() - start, backoff(n), "retry {n}");
            q.done("k");
        }
        assert_eq!(q.failures("k"), 4);
        q.forget("k");
        assert_eq!(q.failures("k"), 0);
        assert_eq!(backoff(0), Duration::from_millis(5));
        assert_eq!(backoff(3), Duration::from_millis(40));
        assert_eq!(backoff(100), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_delayed_add_wins_and_an_add_comes_at_once() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_after("k", Duration::from_secs(10));
        q.add_after("k", Duration::from_secs(2));
        q.add_after("k", Duration::from_secs(5));
        assert_eq!(q.get().await.unwrap(), "k");
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        q.done("k");
        q.add_after("j", Duration::from_secs(60));
        q.add("j");
        let start = Instant::now();
        assert_eq!(q.get().await.unwrap(), "j");
        assert_eq!(Instant::now(), start);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_beyond_the_burst_are_held_to_the_overall_rate() {
        let q = WorkQueue::new();
        for i in 0..(RETRY_BURST as usize + 20) {
            q.add_rate_limited(&format!("k{i}"));
        }
        let start = Instant::now();
        for _ in 0..(RETRY_BURST as usize + 20) {
            let k = q.get().await.unwrap();
            q.done(&k);
        }
        // 20 beyond the burst at 10/s: two seconds.
        let took = Instant::now() - start;
        assert!(took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_wait_for_their_own_back_off_only() {
        let q = WorkQueue::new();
        for i in 0..(RETRY_BURST as usize + 20) {
            q.add_rate_limited(&format!("k{i}"));
        }
        // The bucket is empty now; a conflict still comes back after its own back-off: 5 ms (the
        // second add, due at 10 ms, yields to the earlier one), then 20 ms more.
        q.add_backoff("c");
        q.add_backoff("c");
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < 2 {
            let k = q.get().await.unwrap();
            q.done(&k);
            if k == "c" {
                got.push(Instant::now() - start);
                if got.len() == 1 {
                    q.add_backoff("c");
                }
            }
        }
        assert_eq!(got, vec![BACKOFF_BASE, BACKOFF_BASE * 5], "{got:?}");
        assert_eq!(q.failures("c"), 3);
    }

    #[tokio::test]
    async fn shutting_down_releases_waiting_workers() {
        let q = std::sync::Arc::new(WorkQueue::new());
        let w = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap(), None);
    }
}
