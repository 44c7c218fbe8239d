//! Routes between nodes' pod ranges (flannel's host-gw back end): each node routes every other
//! node's pod range through that node's InternalIP, so that pods reach pods on other nodes
//! without encapsulation. The nodes must share a link (the next hop must be on it). Routes carry
//! their own protocol number, so the agent recognises, replaces and removes only its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;

use crate::proxy::Cidr;

/// The routing protocol number the agent's routes carry (`ip route … proto 77`).
pub const ROUTE_PROTOCOL: u8 = 77;
/// Routes are checked this often even without changes, repairing what else changed them.
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// How long one `ip` run may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct PodNetOptions {
    /// This node's name: its own pod range is on its bridge, not routed.
    pub node_name: String,
    /// The `ip` binary (iproute2).
    pub ip: PathBuf,
}

/// The routes this node needs: every other node's pod range through its InternalIP.
pub fn desired_routes<'a>(nodes: impl IntoIterator<Item = &'a Node>, own: &str) -> BTreeMap<String, Ipv4Addr> {
    let mut routes = BTreeMap::new();
    for node in nodes {
        if node.metadata.name.as_deref() == Some(own) || node.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(spec) = &node.spec else { continue };
        let cidrs = spec
            .pod_cidrs
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| spec.pod_cidr.clone().map(|c| vec![c]))
            .unwrap_or_default();
        let via = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        let Some(via) = via else { continue };
        for c in cidrs {
            if let Ok(cidr) = c.parse::<Cidr>() {
                routes.insert(cidr.to_string(), via);
            }
        }
    }
    routes
}

/// The agent's routes now in the main table: destination → next hop, from `ip -j route show`.
pub fn parse_routes(json: &str) -> anyhow::Result<BTreeMap<String, Ipv4Addr>> {
    #[derive(serde::Deserialize)]
    struct Route {
        dst: String,
        gateway: Option<String>,
    }
    let routes: Vec<Route> = serde_json::from_str(json).context("ip -j route show printed no JSON list")?;
    Ok(routes
        .into_iter()
        .filter_map(|r| {
            let dst = if r.dst.contains('/') { r.dst } else { format!("{}/32", r.dst) };
            Some((dst.parse::<Cidr>().ok()?.to_string(), r.gateway?.parse().ok()?))
        })
        .collect())
}

async fn ip(options: &PodNetOptions, args: &[&str]) -> anyhow::Result<String> {
    let run = tokio::process::Command::new(&options.ip).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(IP_TIMEOUT, run)
        .await
        .with_context(|| format!("ip {} took too long", args.join(" ")))?
        .with_context(|| format!("running {} (iproute2)", options.ip.display()))?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the node's routes `desired`: adds and replaces what differs, deletes the agent's routes
/// to ranges no node holds. Every route is tried; the failures are reported together.
async fn sync(options: &PodNetOptions, desired: &BTreeMap<String, Ipv4Addr>) -> anyhow::Result<usize> {
    let proto = ROUTE_PROTOCOL.to_string();
    let current = parse_routes(&ip(options, &["-j", "route", "show", "proto", &proto]).await?)?;
    let mut failed = Vec::new();
    let mut changed = 0;
    for (dst, via) in desired {
        if current.get(dst) == Some(via) {
            continue;
        }
        let via = via.to_string();
        match ip(options, &["route", "replace", dst, "via", &via, "proto", &proto]).await {
            Ok(_) => changed += 1,
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    for dst in current.keys().filter(|d| !desired.contains_key(*d)) {
        match ip(options, &["route", "del", dst, "proto", &proto]).await {
            Ok(_) => changed += 1,
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(changed)
}

/// Turns on IPv4 forwarding: the node routes pods' traffic to and from other nodes.
pub fn enable_forwarding() -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").with_context(|| format!("turning on IPv4 forwarding ({path})"))
}

/// Keeps the routes to other nodes' pod ranges in step with the cluster's nodes until `stop`
/// resolves. The routes stay when the agent stops, so that traffic flows on.
pub async fn run(client: kube::Client, options: PodNetOptions, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    enable_forwarding()?;
    let (nodes, writer) = reflector::store::<Node>();
    let events =
        reflector::reflector(writer, watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff());
    tokio::pin!(events, stop);
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied: Option<BTreeMap<String, Ipv4Addr>> = None;
    let mut pending = true;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            e = events.next() => {
                if crate::client::store_changed(e, "node")? {
                    pending = true;
                }
            }
            _ = resync.tick() => {
                // Something else may have changed the routes: look again.
                applied = None;
                pending = true;
            }
            _ = std::future::ready(()), if pending && crate::client::listed(&nodes) => {
                pending = false;
                let desired = desired_routes(nodes.state().iter().map(|n| n.as_ref()), &options.node_name);
                if applied.as_ref() == Some(&desired) {
                    continue;
                }
                match sync(&options, &desired).await {
                    Ok(changed) => {
                        if changed > 0 {
                            tracing::info!(routes = desired.len(), changed, "routes to other nodes' pods applied");
                        }
                        applied = Some(desired);
                    }
                    Err(e) => {
                        // The next resync tries again.
                        tracing::warn!(error = format!("{e:#}"), "routes to other nodes' pods not all applied");
                        applied = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn every_other_node_range_goes_through_its_internal_ip() {
        let mut no_ip = node("c", "10.42.3.0/24", "x");
        no_ip.status = None;
        let nodes = [node("a", "10.42.1.0/24", "10.0.0.11"), node("b", "10.42.2.0/24", "10.0.0.12"), no_ip];
        let routes = desired_routes(&nodes, "a");
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![("10.42.2.0/24".to_string(), Ipv4Addr::new(10, 0, 0, 12))]
        );
    }

    #[test]
    fn routes_are_read_from_ip_json() {
        let json = r#"[{"dst":"10.42.2.0/24","gateway":"10.0.0.12","dev":"eth0","protocol":"77","flags":[]},{"dst":"10.9.9.9","gateway":"10.0.0.13","dev":"eth0","flags":[]},{"dst":"10.42.3.0/24","dev":"eth0","flags":[]}]"#;
        let routes = parse_routes(json).unwrap();
        assert_eq!(routes.get("10.42.2.0/24"), Some(&Ipv4Addr::new(10, 0, 0, 12)));
        assert_eq!(routes.get("10.9.9.9/32"), Some(&Ipv4Addr::new(10, 0, 0, 13)));
        assert_eq!(routes.len(), 2, "a route without a next hop is not the agent's");
        assert!(parse_routes("not json").is_err());
    }
}
