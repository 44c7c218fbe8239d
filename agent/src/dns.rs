//! A pod's resolv.conf as kubelet computes it, handed to the runtime as the sandbox's DNS
//! config: by `dnsPolicy` — ClusterFirst (cluster DNS, the `<ns>.svc.<domain> svc.<domain>
//! <domain>` search list, `ndots:5`), Default (the node's resolv.conf), None (only the pod's
//! `dnsConfig`) — with the pod's `dnsConfig` merged in.

use k8s_openapi::api::core::v1::Pod;

/// Nameservers a resolver uses at most (glibc's MAXNS).
const NAMESERVERS_MAX: usize = 3;
/// Search domains kubelet passes at most.
const SEARCHES_MAX: usize = 32;

/// The node's cluster DNS (kubelet's `--cluster-dns` and `--cluster-domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
}

/// A resolv.conf's content, and CRI's `DNSConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    /// A resolv.conf file's nameservers, search domains and options.
    pub fn parse(text: &str) -> DnsConfig {
        let mut c = DnsConfig::default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.starts_with(';')) {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => c.servers.extend(words.next().map(String::from)),
                // The last search (or domain) line wins, as in glibc.
                Some("search") | Some("domain") => c.searches = words.map(String::from).collect(),
                Some("options") => c.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        c
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// The pod's DNS config: `cluster` is the node's cluster DNS (none: ClusterFirst falls back to
/// Default, as kubelet does), `host` the node's own resolv.conf.
pub fn pod_dns(pod: &Pod, cluster: Option<&ClusterDns>, host: &DnsConfig) -> DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut c = match (policy, cluster_first.then_some(cluster).flatten()) {
        ("None", _) => DnsConfig::default(),
        (_, Some(cluster)) => {
            let d = &cluster.domain;
            let mut searches = vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.clone()];
            push_unique(&mut searches, host.searches.iter().cloned());
            DnsConfig { servers: cluster.servers.clone(), searches, options: vec!["ndots:5".into()] }
        }
        _ => host.clone(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        push_unique(&mut c.servers, extra.nameservers.iter().flatten().cloned());
        push_unique(&mut c.searches, extra.searches.iter().flatten().cloned());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.clone() else { continue };
            c.options.retain(|x| x.split(':').next() != Some(name.as_str()));
            c.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    c.servers.truncate(NAMESERVERS_MAX);
    c.searches.truncate(SEARCHES_MAX);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c"}]);
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}))
            .unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns { servers: vec!["10.96.0.10".into()], domain: "cluster.local".into() }
    }

    #[test]
    fn cluster_first_gets_cluster_dns_and_kubernetes_search_list() {
        let host = DnsConfig::parse("nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n");
        let c = pod_dns(&pod(serde_json::json!({})), Some(&cluster()), &host);
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(c.searches, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]);
        assert_eq!(c.options, ["ndots:5"]);
        // Host network: the node's resolv.conf, unless ClusterFirstWithHostNet.
        assert_eq!(pod_dns(&pod(serde_json::json!({"hostNetwork": true})), Some(&cluster()), &host), host);
        let with = pod_dns(
            &pod(serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            Some(&cluster()),
            &host,
        );
        assert_eq!(with.servers, ["10.96.0.10"]);
        // Without cluster DNS, ClusterFirst falls back to the node's.
        assert_eq!(pod_dns(&pod(serde_json::json!({})), None, &host), host);
        assert_eq!(pod_dns(&pod(serde_json::json!({"dnsPolicy": "Default"})), Some(&cluster()), &host), host);
    }

    #[test]
    fn none_takes_only_the_pods_dns_config_and_options_merge_by_name() {
        let host = DnsConfig::parse("nameserver 192.0.2.53\n");
        let spec = serde_json::json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}});
        let c = pod_dns(&pod(spec), Some(&cluster()), &host);
        assert_eq!(
            c,
            DnsConfig {
                servers: vec!["192.0.2.1".into()],
                searches: vec!["a.example".into()],
                options: vec!["ndots:2".into(), "edns0".into()]
            }
        );
        let spec = serde_json::json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}});
        assert_eq!(pod_dns(&pod(spec), Some(&cluster()), &host).options, ["ndots:1"]);
    }
}
