//! Kubernetes' controller *expectations*: a controller that has just created or deleted pods
//! records how many it expects to see arrive or go, and does not compute another diff for that
//! owner until its informer has seen them all — or until the record is old enough that a watch
//! event must have been lost. Without this, a slow watch makes a controller create (or delete)
//! the same pods twice.
//!
//! Deletions are tracked by the pods' keys, so a pod seen going twice (its deletion timestamp,
//! then its removal) counts once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// After this, unmet expectations are assumed lost and the owner is synced anyway (Kubernetes'
/// ExpectationsTimeout).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Record {
    adds: i64,
    deletes: HashSet<String>,
    set_at: Instant,
}

#[derive(Default)]
pub struct Expectations {
    records: Mutex<HashMap<String, Record>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the owner `key` may be synced: nothing is expected, or the record expired.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(r) => (r.adds <= 0 && r.deletes.is_empty()) || r.set_at.elapsed() > EXPECTATIONS_TIMEOUT,
        }
    }

    /// Records that `n` creations are under way (replacing what was expected before).
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.lock().insert(key.to_string(), Record { adds: n as i64, deletes: HashSet::new(), set_at: Instant::now() });
    }

    /// Records that the pods `pods` (their keys) are being deleted.
    pub fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = String>) {
        self.lock()
            .insert(key.to_string(), Record { adds: 0, deletes: pods.into_iter().collect(), set_at: Instant::now() });
    }

    /// Records creations and deletions under way together.
    pub fn expect(&self, key: &str, adds: usize, deletes: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_string(),
            Record { adds: adds as i64, deletes: deletes.into_iter().collect(), set_at: Instant::now() },
        );
    }

    /// A pod owned by `key` was seen created (or a creation failed, so it never will be).
    pub fn creation_observed(&self, key: &str) {
        if let Some(r) = self.lock().get_mut(key) {
            r.adds -= 1;
        }
    }

    /// The pod `pod` owned by `key` was seen going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(r) = self.lock().get_mut(key) {
            r.deletes.remove(pod);
        }
    }

    /// Forgets `key` (its owner is gone).
    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_waits_for_what_it_expects() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        // The same pod seen going twice counts once.
        e.deletion_observed("ns/rs", "ns/a");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 1);
        e.delete("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }

    #[tokio::test(start_paused = true)]
    async fn unmet_expectations_expire() {
        let e = Expectations::default();
        e.expect_creations("k", 5);
        tokio::time::advance(EXPECTATIONS_TIMEOUT - Duration::from_secs(1)).await;
        assert!(!e.satisfied("k"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(e.satisfied("k"));
    }
}
