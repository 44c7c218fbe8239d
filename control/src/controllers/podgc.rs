//! Pod garbage collection (Kubernetes' `podgc`): pods bound to nodes that no longer exist are
//! deleted at once (their agent is gone and will never confirm), and finished pods beyond
//! `--terminated-pod-gc-threshold` are deleted oldest first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};

use super::informer::Informer;
use super::queue::WorkQueue;
use super::{pods, Controller, Manager, Synced};

/// How often the collector looks (Kubernetes': 20 s).
pub const POD_GC_PERIOD: Duration = Duration::from_secs(5);
/// The one key the collector's queue holds.
const KEY: &str = "podgc";

pub struct PodGcController {
    client: kube::Client,
    nodes: Arc<Informer<Node>>,
    pods: Arc<Informer<Pod>>,
    queue: WorkQueue,
    threshold: usize,
}

impl PodGcController {
    pub fn new(m: &Manager, threshold: usize) -> Arc<PodGcController> {
        Arc::new(PodGcController {
            client: m.client.clone(),
            nodes: m.informers.nodes(),
            pods: m.informers.pods(),
            queue: WorkQueue::new(),
            threshold,
        })
    }

    async fn force_delete(&self, pod: &Pod) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or(""));
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(pod.metadata.name.as_deref().unwrap_or(""), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The finished pods to delete so that at most `threshold` remain: the oldest first.
pub fn terminated_beyond(all: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut done: Vec<Arc<Pod>> =
        all.iter().filter(|p| matches!(pods::phase(p), "Succeeded" | "Failed")).cloned().collect();
    if threshold == 0 || done.len() <= threshold {
        return Vec::new();
    }
    done.sort_by(|a, b| {
        a.metadata.creation_timestamp.as_ref().map(|t| t.0).cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    let extra = done.len() - threshold;
    done.truncate(extra);
    done
}

impl Controller for PodGcController {
    const NAME: &'static str = "podgc";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    fn start(self: Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) -> Option<Synced> {
        let weak = Arc::downgrade(&self);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(POD_GC_PERIOD);
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { return };
                c.queue.add(KEY);
            }
        });
        None
    }

    async fn sync(&self, _key: &str) -> anyhow::Result<()> {
        let all = self.pods.list();
        let nodes: Api<Node> = Api::all(self.client.clone());
        for pod in &all {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) else {
                continue;
            };
            if self.nodes.get("", node).is_some() {
                continue;
            }
            // The cache may lag: only a node the API does not have either is gone.
            if nodes.get_opt(node).await?.is_none() {
                tracing::info!(pod = %super::informer::key_of(pod.as_ref()), node, "deleting a pod bound to a node that no longer exists");
                self.force_delete(pod).await?;
            }
        }
        for pod in terminated_beyond(&all, self.threshold) {
            self.force_delete(&pod).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_pods_beyond_the_threshold_go_oldest_first() {
        let pod = |name: &str, phase: &str, created: &str| -> Arc<Pod> {
            Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name, "creationTimestamp": created}, "status": {"phase": phase}})).unwrap())
        };
        let all = vec![
            pod("new-done", "Succeeded", "2026-01-03T00:00:00Z"),
            pod("old-done", "Failed", "2026-01-01T00:00:00Z"),
            pod("running", "Running", "2025-01-01T00:00:00Z"),
            pod("mid-done", "Succeeded", "2026-01-02T00:00:00Z"),
        ];
        let names = |v: Vec<Arc<Pod>>| v.iter().map(|p| p.metadata.name.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(names(terminated_beyond(&all, 1)), vec!["old-done", "mid-done"]);
        assert!(terminated_beyond(&all, 3).is_empty());
        assert!(terminated_beyond(&all, 0).is_empty(), "0 turns collection off");
    }
}
