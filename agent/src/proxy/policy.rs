//! NetworkPolicy (`networking.k8s.io/v1`) for the node's own pods, as rules in the proxy's table.
//! A pod that some policy selects for Ingress (Egress) is isolated that way: its address maps to
//! a chain of its own in `policy-ingress` (`policy-egress`), which returns for what any of those
//! policies admits and drops the rest. Only new connections are checked (replies and the rest of
//! an admitted connection pass), in the forward hook after the proxy's DNAT, so a Service's
//! traffic is judged by the endpoint it reaches, as Kubernetes specifies. Traffic between a pod
//! and its own node does not pass the forward hook and is not restricted (kubelet's probes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::rules::Cidr;

/// Label every namespace carries with its own name (the API server sets it; assumed here too).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The policy part of the rule set: each isolated local pod's chains, and the maps' elements
/// (pod address → verdict).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRules {
    pub chains: BTreeMap<String, Vec<String>>,
    pub ingress: BTreeMap<String, String>,
    pub egress: BTreeMap<String, String>,
}

/// A pod as policies see it.
struct PodView<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    node: Option<&'a str>,
    /// Named container ports: name → (protocol, number).
    ports: Vec<(String, String, u16)>,
}

fn view(pod: &Pod) -> Option<PodView<'_>> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) || matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some((
                p.name.clone()?,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                u16::try_from(p.container_port).ok()?,
            ))
        })
        .collect();
    Some(PodView {
        namespace: pod.metadata.namespace.as_deref()?,
        name: pod.metadata.name.as_deref()?,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip,
        node: spec.node_name.as_deref(),
        ports,
    })
}

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // The API server refuses other operators; a selector it let through matches nothing.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

fn chain_name(prefix: &str, pod: &PodView) -> String {
    super::rules::name(prefix, &format!("{}/{}", pod.namespace, pod.name))
}

/// Which traffic a rule's peers admit, as nft matches on `field` (`saddr` or `daddr`); `None` is
/// any peer. Selected pods are named by address; an empty set matches nothing.
fn peer_matches(
    field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    policy_ns: &str,
    pods: &[PodView],
    namespaces: &BTreeMap<&str, BTreeMap<String, String>>,
) -> Option<Vec<String>> {
    let peers = peers.filter(|p| !p.is_empty())?;
    let mut out = Vec::new();
    let mut addresses: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = block.cidr.parse::<Cidr>() else { continue };
            let except: Vec<String> =
                block.except.iter().flatten().filter_map(|e| e.parse::<Cidr>().ok()).map(|c| c.to_string()).collect();
            if except.is_empty() {
                out.push(format!("ip {field} {cidr}"));
            } else {
                out.push(format!("ip {field} {cidr} ip {field} != {{ {} }}", except.join(", ")));
            }
            continue;
        }
        let in_namespace = |ns: &str| match &peer.namespace_selector {
            Some(sel) => namespaces.get(ns).is_some_and(|labels| matches(sel, labels)),
            None => ns == policy_ns,
        };
        for pod in pods {
            let pod_ok = peer.pod_selector.as_ref().is_none_or(|sel| matches(sel, &pod.labels));
            if in_namespace(pod.namespace) && pod_ok {
                addresses.insert(pod.ip);
            }
        }
    }
    if !addresses.is_empty() {
        let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        out.push(format!("ip {field} {{ {} }}", list.join(", ")));
    }
    Some(out)
}

fn protocol(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// Which traffic a rule's ports admit, as nft matches; `None` is any port. A named port is
/// resolved against `targets`: the pod itself for ingress, the destinations for egress.
fn port_matches(ports: Option<&[NetworkPolicyPort]>, targets: &[&PodView]) -> Option<Vec<String>> {
    let ports = ports.filter(|p| !p.is_empty())?;
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = protocol(p.protocol.as_deref()) else { continue };
        match &p.port {
            None => out.push(format!("meta l4proto {proto}")),
            Some(IntOrString::Int(n)) => match p.end_port {
                Some(end) if end > *n => out.push(format!("{proto} dport {n}-{end}")),
                _ => out.push(format!("{proto} dport {n}")),
            },
            Some(IntOrString::String(name)) => {
                let upper = p.protocol.as_deref().unwrap_or("TCP");
                let pairs: BTreeSet<(Ipv4Addr, u16)> = targets
                    .iter()
                    .flat_map(|t| {
                        t.ports.iter().filter(|(n, pr, _)| n == name && pr == upper).map(|(_, _, port)| (t.ip, *port))
                    })
                    .collect();
                if !pairs.is_empty() {
                    let list: Vec<String> = pairs.iter().map(|(ip, port)| format!("{ip} . {port}")).collect();
                    out.push(format!("meta l4proto {proto} ip daddr . th dport {{ {} }}", list.join(", ")));
                }
            }
        }
    }
    Some(out)
}

/// The cross product of peer and port matches: one `return` rule each.
fn admit(peers: Option<Vec<String>>, ports: Option<Vec<String>>, rules: &mut Vec<String>) {
    let peers = peers.unwrap_or_else(|| vec![String::new()]);
    let ports = ports.unwrap_or_else(|| vec![String::new()]);
    for peer in &peers {
        for port in &ports {
            let m =
                [peer.as_str(), port.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
            rules.push(if m.is_empty() { "return".into() } else { format!("{m} return") });
        }
    }
}

fn types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else { return (false, false) };
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (t.iter().any(|t| t == "Ingress"), t.iter().any(|t| t == "Egress")),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The rules that enforce `policies` for the pods of node `node`.
pub fn rules(
    node: &str,
    policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
) -> PolicyRules {
    let mut out = PolicyRules::default();
    if policies.is_empty() {
        return out;
    }
    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels.entry(NAMESPACE_NAME_LABEL.into()).or_insert_with(|| name.into());
            Some((name, labels))
        })
        .collect();
    let mut views: Vec<PodView> = pods.iter().filter_map(|p| view(p)).collect();
    views.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    for pod in views.iter().filter(|p| p.node == Some(node)) {
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.metadata.namespace.as_deref() == Some(pod.namespace))
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| s.pod_selector.as_ref().is_none_or(|sel| matches(sel, &pod.labels)))
            })
            .collect();
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        let (mut isolated_in, mut isolated_out) = (false, false);
        for policy in &selecting {
            let (is_in, is_out) = types(policy);
            let spec = policy.spec.as_ref().expect("selected policies have a spec");
            if is_in {
                isolated_in = true;
                for rule in spec.ingress.iter().flatten() {
                    let peers = peer_matches("saddr", rule.from.as_deref(), pod.namespace, &views, &ns_labels);
                    if peers.as_ref().is_some_and(|p| p.is_empty()) {
                        continue;
                    }
                    let ports = port_matches(rule.ports.as_deref(), &[pod]);
                    if ports.as_ref().is_some_and(|p| p.is_empty()) {
                        continue;
                    }
                    admit(peers, ports, &mut ingress);
                }
            }
            if is_out {
                isolated_out = true;
                for rule in spec.egress.iter().flatten() {
                    let peers = peer_matches("daddr", rule.to.as_deref(), pod.namespace, &views, &ns_labels);
                    if peers.as_ref().is_some_and(|p| p.is_empty()) {
                        continue;
                    }
                    let all: Vec<&PodView> = views.iter().collect();
                    let ports = port_matches(rule.ports.as_deref(), &all);
                    if ports.as_ref().is_some_and(|p| p.is_empty()) {
                        continue;
                    }
                    admit(peers, ports, &mut egress);
                }
            }
        }
        for (isolated, mut admitted, prefix, map) in [
            (isolated_in, ingress, "policy-in", &mut out.ingress),
            (isolated_out, egress, "policy-out", &mut out.egress),
        ] {
            if !isolated {
                continue;
            }
            let chain = chain_name(prefix, pod);
            admitted.dedup();
            admitted.push("drop".into());
            map.insert(pod.ip.to_string(), format!("jump {chain}"));
            out.chains.insert(chain, admitted);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .unwrap(),
        )
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
        Arc::new(serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})).unwrap())
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
    }

    fn world() -> (Vec<Arc<Pod>>, Vec<Arc<Namespace>>) {
        let pods = vec![
            pod("shop", "db", "a", "10.1.0.2", json!({"app": "db"})),
            pod("shop", "web", "b", "10.1.1.2", json!({"app": "web"})),
            pod("other", "tool", "b", "10.1.1.3", json!({"app": "web"})),
            pod("shop", "cache", "a", "10.1.0.3", json!({"app": "cache"})),
        ];
        (pods, vec![namespace("shop", json!({"team": "shop"})), namespace("other", json!({}))])
    }

    #[test]
    fn no_policy_isolates_nothing() {
        let (pods, ns) = world();
        assert_eq!(rules("a", &[], &pods, &ns), PolicyRules::default());
    }

    #[test]
    fn default_deny_isolates_every_pod_of_its_namespace_on_this_node() {
        let (pods, ns) = world();
        let deny = policy("shop", "deny", json!({"podSelector": {}}));
        let r = rules("a", &[deny], &pods, &ns);
        assert_eq!(r.ingress.keys().collect::<Vec<_>>(), vec!["10.1.0.2", "10.1.0.3"], "only shop's pods on node a");
        assert!(r.egress.is_empty(), "no Egress type: egress is not isolated");
        assert!(r.chains.values().all(|rules| rules == &vec!["drop".to_string()]));
    }

    #[test]
    fn an_allow_rule_names_its_peers_and_ports() {
        let (pods, ns) = world();
        let allow = policy(
            "shop",
            "db-from-web",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}, {"port": "http"}]}],
            }),
        );
        let r = rules("a", &[allow], &pods, &ns);
        let chain = r.ingress.get("10.1.0.2").unwrap().strip_prefix("jump ").unwrap();
        assert_eq!(
            r.chains[chain],
            vec![
                "ip saddr { 10.1.1.2 } tcp dport 5432 return".to_string(),
                "ip saddr { 10.1.1.2 } meta l4proto tcp ip daddr . th dport { 10.1.0.2 . 8080 } return".to_string(),
                "drop".to_string(),
            ],
            "web of shop only (not other's pod with the same label); the named port resolved"
        );
        assert!(!r.ingress.contains_key("10.1.0.3"), "the cache is not selected");
    }

    #[test]
    fn namespace_selectors_ip_blocks_and_egress() {
        let (pods, ns) = world();
        let p = policy(
            "shop",
            "mixed",
            json!({
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["cache"]}]},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}, {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}, "podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"protocol": "UDP", "port": 53, "endPort": 54}]}],
            }),
        );
        let r = rules("a", &[p], &pods, &ns);
        let ingress = &r.chains[r.ingress["10.1.0.3"].strip_prefix("jump ").unwrap()];
        assert_eq!(
            ingress,
            &vec![
                "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } return".to_string(),
                "ip saddr { 10.1.1.3 } return".into(),
                "drop".into()
            ]
        );
        let egress = &r.chains[r.egress["10.1.0.3"].strip_prefix("jump ").unwrap()];
        assert_eq!(egress, &vec!["ip daddr { 10.1.0.2 } udp dport 53-54 return".to_string(), "drop".into()]);
    }

    #[test]
    fn peers_that_select_nothing_admit_nothing() {
        let (pods, ns) = world();
        let p = policy(
            "shop",
            "none",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "ghost"}}}]}, {"ports": [{"port": "nope"}]}]}),
        );
        let r = rules("a", &[p], &pods, &ns);
        assert!(r.chains.values().all(|rules| rules == &vec!["drop".to_string()]), "{r:?}");
        let open = policy("shop", "open", json!({"podSelector": {}, "ingress": [{}]}));
        let r = rules("a", &[open], &pods, &ns);
        assert!(r.chains.values().all(|rules| rules == &vec!["return".to_string(), "drop".to_string()]), "{r:?}");
    }
}
