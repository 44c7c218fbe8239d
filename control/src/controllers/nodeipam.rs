//! Node IPAM (Kubernetes' `nodeipam`, range allocator): with `--allocate-node-cidrs`, every
//! node without a pod range gets the next free block of `--node-cidr-mask-size` bits from
//! `--cluster-cidr`, written to `spec.podCIDR` and `spec.podCIDRs`. Ranges that nodes already
//! hold (given by their agents, or allocated before a failover) are marked used before any is
//! handed out, and a deleted node's range is free again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager};

/// An IPv4 range cut into equal blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAllocator {
    base: u32,
    prefix: u8,
    block_prefix: u8,
}

/// Parses `a.b.c.d/n`, the address being the network's first.
pub fn parse_cidr(s: &str) -> Result<(u32, u8), String> {
    let (addr, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let len: u8 =
        len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("{s:?}: {len:?} is not a prefix length"))?;
    let base = u32::from(addr);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if base & !mask != 0 {
        return Err(format!("{s:?} is not the first address of its network"));
    }
    Ok((base, len))
}

impl RangeAllocator {
    pub fn new(cluster_cidr: &str, node_mask_size: u8) -> Result<RangeAllocator, String> {
        let (base, prefix) = parse_cidr(cluster_cidr).map_err(|e| format!("--cluster-cidr: {e}"))?;
        if node_mask_size < prefix || node_mask_size > 30 {
            return Err(format!(
                "--node-cidr-mask-size {node_mask_size} must be between the cluster CIDR's /{prefix} and /30"
            ));
        }
        if node_mask_size - prefix > 20 {
            return Err(format!("--node-cidr-mask-size {node_mask_size}: more than 2^20 node ranges in /{prefix}"));
        }
        Ok(RangeAllocator { base, prefix, block_prefix: node_mask_size })
    }

    /// Blocks in the range.
    pub fn blocks(&self) -> u32 {
        1 << (self.block_prefix - self.prefix)
    }

    pub fn block(&self, i: u32) -> String {
        let addr = Ipv4Addr::from(self.base + (i << (32 - self.block_prefix)));
        format!("{addr}/{}", self.block_prefix)
    }

    /// The block a node's range is, when it is one of ours.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let (addr, len) = parse_cidr(cidr).ok()?;
        if len != self.block_prefix || addr < self.base {
            return None;
        }
        let i = (addr - self.base) >> (32 - self.block_prefix);
        (i < self.blocks()).then_some(i)
    }
}

pub struct NodeIpamController {
    client: kube::Client,
    nodes: Arc<Informer<Node>>,
    queue: WorkQueue,
    ranges: RangeAllocator,
    /// Blocks in use, by index.
    used: Mutex<BTreeSet<u32>>,
}

fn pod_cidr(n: &Node) -> Option<&str> {
    n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty())
}

impl NodeIpamController {
    pub fn new(m: &Manager, ranges: RangeAllocator) -> Arc<NodeIpamController> {
        let c = Arc::new(NodeIpamController {
            client: m.client.clone(),
            nodes: m.informers.nodes(),
            queue: WorkQueue::new(),
            ranges,
            used: Mutex::default(),
        });
        let weak = Arc::downgrade(&c);
        c.nodes.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            match change {
                Change::Added(n) | Change::Updated { new: n, .. } => match pod_cidr(n) {
                    Some(cidr) => {
                        if let Some(i) = c.ranges.index_of(cidr) {
                            c.lock().insert(i);
                        }
                    }
                    None => c.queue.add(n.metadata.name.as_deref().unwrap_or("")),
                },
                Change::Deleted(n) => {
                    if let Some(i) = pod_cidr(n).and_then(|cidr| c.ranges.index_of(cidr)) {
                        c.lock().remove(&i);
                    }
                }
            }
        });
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_free(&self) -> Option<u32> {
        let mut used = self.lock();
        let free = (0..self.ranges.blocks()).find(|i| !used.contains(i))?;
        used.insert(free);
        Some(free)
    }
}

impl Controller for NodeIpamController {
    const NAME: &'static str = "nodeipam";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get("", name) else { return Ok(()) };
        if pod_cidr(&node).is_some() {
            return Ok(());
        }
        let Some(i) = self.take_free() else {
            anyhow::bail!("no pod range left in the cluster CIDR for node {name} (CIDRNotAvailable)");
        };
        let cidr = self.ranges.block(i);
        let api: Api<Node> = Api::all(self.client.clone());
        // The resourceVersion makes it a compare-and-swap: a range set meanwhile is kept.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "podCIDR": cidr, "podCIDRs": [cidr] },
        });
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(node = name, pod_cidr = %cidr, "pod range allocated");
                Ok(())
            }
            Err(e) => {
                self.lock().remove(&i);
                match e {
                    kube::Error::Api(s) if s.code == 404 => Ok(()),
                    e => Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_from_the_cluster_range() {
        let r = RangeAllocator::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(r.blocks(), 256);
        assert_eq!(r.block(0), "10.42.0.0/24");
        assert_eq!(r.block(255), "10.42.255.0/24");
        assert_eq!(r.index_of("10.42.7.0/24"), Some(7));
        assert_eq!(r.index_of("10.43.0.0/24"), None);
        assert_eq!(r.index_of("10.42.7.0/25"), None);
        assert!(RangeAllocator::new("10.42.0.1/16", 24).is_err());
        assert!(RangeAllocator::new("10.42.0.0/16", 8).is_err());
        assert!(RangeAllocator::new("10.42.0.0", 24).is_err());
        assert!(RangeAllocator::new("10.0.0.0/8", 30).is_err());
    }
}
