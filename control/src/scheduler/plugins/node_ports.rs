//! NodePorts: a pod fits a node only if none of the host ports it claims is already taken there.
//! A port bound to 0.0.0.0 takes that protocol and port on every address of the node.
use crate::scheduler::framework::{CycleState, HostPort, NodeInfo, Plugin, PodInfo, Snapshot, Status};

pub const NAME: &str = "NodePorts";

/// Kubernetes' reason text.
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

const BIND_ALL: &str = "0.0.0.0";

/// Whether `want` collides with one of `used`, as kube-scheduler's `HostPortInfo.CheckConflict`:
/// the same protocol and port, and either address being 0.0.0.0 or both the same. An empty
/// address counts as 0.0.0.0 and an empty protocol as TCP; port 0 or less claims nothing.
pub fn port_conflicts(used: &[HostPort], want: &HostPort) -> bool {
    if want.port <= 0 {
        return false;
    }
    let (want_ip, want_protocol) = sanitized(want);
    used.iter().any(|u| {
        let (ip, protocol) = sanitized(u);
        u.port == want.port && protocol == want_protocol && (want_ip == BIND_ALL || ip == BIND_ALL || ip == want_ip)
    })
}

fn sanitized(p: &HostPort) -> (&str, &str) {
    let ip = if p.ip.is_empty() { BIND_ALL } else { p.ip.as_str() };
    let protocol = if p.protocol.is_empty() { "TCP" } else { p.protocol.as_str() };
    (ip, protocol)
}

/// Whether all of `pod`'s host ports are free on `node`.
pub fn fits_ports(pod: &PodInfo, node: &NodeInfo) -> bool {
    !pod.host_ports.iter().any(|want| port_conflicts(&node.used_ports, want))
}

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A pod that claims no host port has nothing to check.
    fn pre_filter(&self, _state: &mut CycleState, pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        if pod.host_ports.is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if fits_ports(pod, node) {
            Status::success()
        } else {
            Status::unschedulable(REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::Code;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn hp(protocol: &str, ip: &str, port: i32) -> HostPort {
        HostPort { protocol: protocol.into(), ip: ip.into(), port }
    }
    fn pod(name: &str, ports: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"containers": [{"name": "c", "ports": ports}]}
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn conflicts_follow_check_conflict() {
        let used = [hp("TCP", "127.0.0.1", 8080), hp("UDP", "0.0.0.0", 53), hp("TCP", "10.0.0.1", 9090)];
        let cases = [
            (hp("TCP", "127.0.0.1", 8080), true),
            (hp("TCP", "127.0.0.2", 8080), false),
            (hp("UDP", "127.0.0.1", 8080), false),
            (hp("TCP", "127.0.0.1", 8081), false),
            // A wildcard wants the port on every address: it meets any address's use.
            (hp("TCP", "0.0.0.0", 8080), true),
            (hp("TCP", "", 9090), true),
            // A used wildcard blocks every specific address.
            (hp("UDP", "192.168.1.1", 53), true),
            (hp("TCP", "192.168.1.1", 53), false),
            // An empty protocol is TCP; port 0 claims nothing.
            (hp("", "10.0.0.1", 9090), true),
            (hp("TCP", "127.0.0.1", 0), false),
        ];
        for (want, conflict) in cases {
            assert_eq!(port_conflicts(&used, &want), conflict, "{want:?}");
        }
    }

    #[test]
    fn filter_checks_the_node_s_used_ports() {
        let mut node = NodeInfo::new(Arc::new(serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap()));
        node.add_pod(Arc::new(pod("old", json!([{"containerPort": 80, "hostPort": 8080}]))));
        let state = CycleState::default();
        let snapshot = Snapshot::default();

        let clash = pod("new", json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]));
        let s = NodePorts.filter(&state, &clash, &node);
        assert_eq!((s.code, s.reasons), (Code::Unschedulable, vec![REASON.to_string()]));

        let udp = pod("udp", json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]));
        assert!(NodePorts.filter(&state, &udp, &node).is_success());

        let none = pod("none", json!([{"containerPort": 80}]));
        assert_eq!(NodePorts.pre_filter(&mut CycleState::default(), &none, &snapshot).code, Code::Skip);
        assert_eq!(NodePorts.pre_filter(&mut CycleState::default(), &clash, &snapshot).code, Code::Success);
    }
}
