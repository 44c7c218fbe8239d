//! Callers that share one run of an operation, such as confirming leadership for a read index:
//! every caller waiting when a run starts gets that run's result, and a caller arriving during a
//! run waits for the next one (whose start follows its arrival, as a read index must).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Callers waiting for the next run; past this, callers wait for room.
pub const COALESCE_QUEUE_MAX: usize = 8192;

pub struct Coalescer<T> {
    queue: mpsc::Sender<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Coalescer<T> {
    /// Starts the task that runs `run` once for each group of waiting callers, one run at a time.
    /// It ends when the coalescer is dropped.
    pub fn spawn<F, Fut>(mut run: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
    {
        let (queue, mut waiting) = mpsc::channel::<oneshot::Sender<T>>(COALESCE_QUEUE_MAX);
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut callers = vec![first];
                while let Ok(caller) = waiting.try_recv() {
                    callers.push(caller);
                }
                let out = run().await;
                for caller in callers {
                    // A caller that gave up (timed out) no longer listens.
                    let _ = caller.send(out.clone());
                }
            }
        });
        Self { queue }
    }

    /// The result of the next run; None once the task has stopped.
    pub async fn join(&self) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Callers queued for the next run.
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn callers_share_runs_and_never_a_run_started_before_them() {
        let runs = Arc::new(AtomicU64::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(0u64);
        let counter = runs.clone();
        let coalescer = Arc::new(Coalescer::spawn(move || {
            let counter = counter.clone();
            let mut gate = gate_rx.clone();
            async move {
                let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
                // Each run waits until the test lets it finish.
                let _ = gate.wait_for(|g| *g >= run).await;
                run
            }
        }));
        // The first caller starts run 1 alone.
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.join().await }
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "run 1 never started");
            tokio::task::yield_now().await;
        }
        // Callers arriving during run 1 must share run 2.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.join().await })
            })
            .collect();
        while coalescer.waiting() < 10 {
            assert!(tokio::time::Instant::now() < deadline, "callers never queued");
            tokio::task::yield_now().await;
        }
        gate_tx.send_replace(1);
        assert_eq!(first.await.unwrap(), Some(1));
        gate_tx.send_replace(2);
        for caller in later {
            assert_eq!(caller.await.unwrap(), Some(2));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "ten waiting callers share one run");
    }
}
