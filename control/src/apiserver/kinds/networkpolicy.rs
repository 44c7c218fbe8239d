//! networking.k8s.io/v1 NetworkPolicies: which traffic the pods they select may take, enforced by
//! the agents. Validated as Kubernetes does (pkg/apis/networking/validation): policy types,
//! protocols, port numbers and names, `endPort`, peers that are selectors or an ipBlock (never
//! both), ipBlock CIDRs with exceptions inside them.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{label_map, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    singular: "networkpolicy",
    namespaced: true,
    short_names: &["netpol"],
    categories: &[],
    subresources: &[],
    strategy: &NetworkPolicyStrategy,
};

struct NetworkPolicyStrategy;

const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// An IPv4 CIDR: its network address and prefix length; `None` if malformed.
fn cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(addr) & mask, len))
}

/// Kubernetes' IANA_SVC_NAME: 1–15 lowercase letters, digits and '-', a letter among them, no
/// '-' at either end nor two in a row.
fn port_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn validate_ports(ports: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (i, p) in ports.as_array().into_iter().flatten().enumerate() {
        let at = format!("{at}[{i}]");
        if let Some(proto) = p["protocol"].as_str() {
            if !PROTOCOLS.contains(&proto) {
                causes.push(Cause::not_supported(format!("{at}.protocol"), proto, PROTOCOLS));
            }
        }
        match &p["port"] {
            Value::Number(n) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    causes.push(Cause::invalid(format!("{at}.port"), n, "must be between 1 and 65535, inclusive"));
                }
                if let Some(end) = p["endPort"].as_i64() {
                    if end < n {
                        causes.push(Cause::invalid(
                            format!("{at}.endPort"),
                            end,
                            "must be greater than or equal to `port`",
                        ));
                    } else if end > 65535 {
                        causes.push(Cause::invalid(
                            format!("{at}.endPort"),
                            end,
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
            }
            Value::String(name) => {
                if !port_name_ok(name) {
                    causes.push(Cause::invalid(format!("{at}.port"), name, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, at least one letter"));
                }
                if !p["endPort"].is_null() {
                    causes.push(Cause::invalid(
                        format!("{at}.endPort"),
                        &p["endPort"],
                        "may not be specified when `port` is non-numeric",
                    ));
                }
            }
            Value::Null => {
                if !p["endPort"].is_null() {
                    causes.push(Cause::required(format!("{at}.port")));
                }
            }
            other => causes.push(Cause::invalid(format!("{at}.port"), other, "must be a port number or name")),
        }
    }
}

fn validate_peers(peers: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (i, peer) in peers.as_array().into_iter().flatten().enumerate() {
        let at = format!("{at}[{i}]");
        let selectors = !peer["podSelector"].is_null() || !peer["namespaceSelector"].is_null();
        let block = &peer["ipBlock"];
        match (selectors, block.is_null()) {
            (false, true) => causes
                .push(Cause { message: "Required value: must specify a peer".into(), ..Cause::required(at.clone()) }),
            (true, false) => causes.push(Cause::forbidden(at.clone(), "may not specify more than 1 peer")),
            _ => {}
        }
        if block.is_null() {
            continue;
        }
        let given = block["cidr"].as_str().unwrap_or("");
        let Some((net, len)) = cidr(given) else {
            causes.push(Cause::invalid(format!("{at}.ipBlock.cidr"), given, "must be a valid CIDR"));
            continue;
        };
        for (j, e) in block["except"].as_array().into_iter().flatten().enumerate() {
            let text = e.as_str().unwrap_or("");
            match cidr(text) {
                None => causes.push(Cause::invalid(format!("{at}.ipBlock.except[{j}]"), text, "must be a valid CIDR")),
                Some((enet, elen)) => {
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    if elen <= len || enet & mask != net {
                        causes.push(Cause::invalid(
                            format!("{at}.ipBlock.except[{j}]"),
                            text,
                            "must be a strict subset of `cidr`",
                        ));
                    }
                }
            }
        }
    }
}

impl Strategy for NetworkPolicyStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<NetworkPolicy>(body)
    }

    super::controlled_rules!();

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = &obj["spec"];
        let mut seen = Vec::new();
        for (i, t) in spec["policyTypes"].as_array().into_iter().flatten().enumerate() {
            let t = t.as_str().unwrap_or("");
            if !POLICY_TYPES.contains(&t) {
                causes.push(Cause::not_supported(format!("spec.policyTypes[{i}]"), t, POLICY_TYPES));
            } else if seen.contains(&t) {
                causes.push(Cause::duplicate(format!("spec.policyTypes[{i}]"), t));
            }
            seen.push(t);
        }
        for (i, rule) in spec["ingress"].as_array().into_iter().flatten().enumerate() {
            validate_ports(&rule["ports"], &format!("spec.ingress[{i}].ports"), &mut causes);
            validate_peers(&rule["from"], &format!("spec.ingress[{i}].from"), &mut causes);
        }
        for (i, rule) in spec["egress"].as_array().into_iter().flatten().enumerate() {
            validate_ports(&rule["ports"], &format!("spec.egress[{i}].ports"), &mut causes);
            validate_peers(&rule["to"], &format!("spec.egress[{i}].to"), &mut causes);
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Pod-Selector", "string", 0, |o| json!(label_map(o, "/spec/podSelector/matchLabels"))),
            AGE,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(spec: Value) -> Vec<String> {
        NetworkPolicyStrategy
            .validate(&json!({"spec": spec}), None)
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn kubernetes_rules_for_ports_peers_and_blocks() {
        assert!(causes(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 80, "endPort": 90}, {"port": "http"}]}]})).is_empty());
        let bad = causes(json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Ingress", "Sideways"],
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16", "10.0.0.0/8"]}}, {"ipBlock": {"cidr": "nonsense"}}],
                         "ports": [{"protocol": "ICMP"}, {"port": 0}, {"port": 90, "endPort": 80}, {"port": "Not_A_Name"}, {"port": "http", "endPort": 90}]}],
        }));
        let all = bad.join("\n");
        for expected in [
            "spec.policyTypes[1]",
            "spec.policyTypes[2]",
            "spec.ingress[0].from[0]",
            "spec.ingress[0].from[1]",
            "spec.ingress[0].from[2].ipBlock.except[0]",
            "spec.ingress[0].from[2].ipBlock.except[1]",
            "spec.ingress[0].from[3].ipBlock.cidr",
            "spec.ingress[0].ports[0].protocol",
            "spec.ingress[0].ports[1].port",
            "spec.ingress[0].ports[2].endPort",
            "spec.ingress[0].ports[3].port",
            "spec.ingress[0].ports[4].endPort",
        ] {
            assert!(all.contains(expected), "no cause at {expected}:\n{all}");
        }
        assert_eq!(bad.len(), 12, "{all}");
    }
}
