//! The service proxy's rule set, computed from what the informers hold: a pure function from
//! services and their endpoints to one `nft -f` transaction, in the shape of kube-proxy's
//! nftables mode.
//!
//! In the table (family `ip`):
//! - `services` (jumped to from the nat prerouting and output hooks) dispatches through the map
//!   `service-ips` (cluster IP . protocol . port → the service port's chain) and, for
//!   destinations that are the node's own addresses, `service-nodeports` (protocol . port → the
//!   port's `external-` chain);
//! - a service port's chain marks off-cluster sources for masquerade, sends a client to its
//!   remembered endpoint (ClientIP affinity), else picks an endpoint at random (`numgen`);
//! - an endpoint's chain marks hairpin traffic (a pod reaching itself), records the client for
//!   affinity, and DNATs;
//! - filter hooks reject new connections to service ports without endpoints (ICMP port
//!   unreachable, as Kubernetes' `no-endpoint-services`), reject other ports of cluster IPs, and
//!   drop traffic to unallocated addresses of the service range, so that it never leaves the node;
//! - marked connections are masqueraded on their way out.
//!
//! The first sync replaces the whole table; later ones are partial, as kube-proxy's: only the
//! chains whose rules changed are flushed and refilled and only changed map elements are
//! rewritten, in one transaction; affinity sets keep their contents; what is no longer used is
//! deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::policy::PolicyRules;
use sha2::{Digest, Sha256};

/// The packet mark of connections to masquerade (kube-proxy's bit).
const MASQUERADE_MARK: &str = "0x4000";

/// An IPv4 range, `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One endpoint of a service port, as its EndpointSlice describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The node it runs on.
    pub node: Option<String>,
}

/// One port of a service, with everything its rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name in the service (empty for a lone unnamed port).
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `ns/name/tcp/port-name`, as kube-proxy names a service port.
    fn id(&self) -> String {
        format!("{}/{}/{}/{}", self.namespace, self.name, self.protocol.nft(), self.port_name)
    }

    /// The endpoints that take traffic, as kube-proxy chooses them: the ready ones, or where
    /// none is ready, those still serving while they terminate.
    fn usable(&self) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints.iter().filter(|e| e.serving && e.terminating).collect()
    }
}

/// What the rules are computed for.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nftables table (family `ip`) the proxy owns.
    pub table: String,
    pub node_name: String,
    /// The service ranges: traffic to an address there that no service holds is dropped.
    pub service_cidrs: Vec<Cidr>,
    /// Pods' addresses (the cluster's pod range, else the node's): traffic to a cluster IP from
    /// elsewhere is masqueraded, so that replies come back through this node.
    pub local_cidr: Option<Cidr>,
    /// This node's pod range: its pods' traffic to addresses outside `local_cidr` leaves
    /// masqueraded as the node's (as flannel does), so that replies find their way back.
    pub pod_cidr: Option<Cidr>,
}

/// A short stable hash of `s`, as kube-proxy prefixes its chain names (sha256, base32, 8 chars).
fn hash(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let mut bits: u64 = 0;
    for b in &digest[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..8).map(|i| ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize] as char).collect()
}

/// An nftables name for `prefix` and `id`: the hash keeps names unique, the id keeps them
/// readable; both are within nft's 256-byte limit for the names Kubernetes allows.
pub(super) fn name(prefix: &str, id: &str) -> String {
    format!("{prefix}-{}-{id}", hash(id))
}

fn endpoint_id(sp: &ServicePort, e: &Endpoint) -> String {
    format!("{}__{}/{}", sp.id(), e.ip, e.port)
}

/// A complete rule set: every chain's rules, every map's and set's elements, the affinity
/// sets. The last one applied is kept, so that the next sync writes only what differs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub chains: BTreeMap<String, Vec<String>>,
    /// Per map (and the `cluster-ips` set, whose values are empty): key → verdict.
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Affinity sets and their timeouts in seconds.
    pub sets: BTreeMap<String, u32>,
}

impl Desired {
    /// The chains beyond the fixed ones.
    pub fn owned_chains(&self) -> impl Iterator<Item = &String> {
        self.chains
            .keys()
            .filter(|c| !FIXED_CHAINS.contains(&c.as_str()) && !BASE_CHAINS.iter().any(|b| b.0 == c.as_str()))
    }
}

/// The base chains: hook, type and priority.
const BASE_CHAINS: &[(&str, &str, &str, &str)] = &[
    ("nat-prerouting", "nat", "prerouting", "dstnat"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "srcnat"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("policy-forward", "filter", "forward", "0"),
];

/// The regular chains every rule set has.
const FIXED_CHAINS: &[&str] = &[
    "services",
    "mark-for-masquerade",
    "masquerading",
    "service-endpoints-check",
    "nodeport-endpoints-check",
    "cluster-ips-check",
    "reject-chain",
];

/// Maps and sets every rule set has, with their types.
const FIXED_MAPS: &[(&str, &str)] = &[
    ("service-ips", "map service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }"),
    ("service-nodeports", "map service-nodeports { type inet_proto . inet_service : verdict ; }"),
    ("no-endpoint-services", "map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }"),
    ("no-endpoint-nodeports", "map no-endpoint-nodeports { type inet_proto . inet_service : verdict ; }"),
    ("cluster-ips", "set cluster-ips { type ipv4_addr ; }"),
    ("policy-ingress", "map policy-ingress { type ipv4_addr : verdict ; }"),
    ("policy-egress", "map policy-egress { type ipv4_addr : verdict ; }"),
];

/// The verdict that spreads connections over `chains` at random.
fn pick(chains: &[String]) -> String {
    match chains {
        [] => "drop".into(),
        [one] => format!("goto {one}"),
        many => {
            let arms: Vec<String> = many.iter().enumerate().map(|(i, c)| format!("{i} : goto {c}")).collect();
            format!("numgen random mod {} vmap {{ {} }}", many.len(), arms.join(", "))
        }
    }
}

/// The transaction that makes the table hold exactly the rules for `ports`, and the rule set it
/// makes. `previous` is the rule set the last applied transaction made, or `None` when nothing is
/// known of the table (the first sync, or after a failure): then the table is replaced whole.
pub fn render(
    config: &Config,
    ports: &[ServicePort],
    policy: &PolicyRules,
    previous: Option<&Desired>,
) -> (String, Desired) {
    let desired = desired(config, ports, policy);
    (script(config, &desired, previous), desired)
}

/// The complete rule set for `ports` and the node's pods' network policies.
pub fn desired(config: &Config, ports: &[ServicePort], policy: &PolicyRules) -> Desired {
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut service_ips: BTreeMap<String, String> = BTreeMap::new();
    let mut service_nodeports: BTreeMap<String, String> = BTreeMap::new();
    let mut no_endpoint_services: BTreeMap<String, String> = BTreeMap::new();
    let mut no_endpoint_nodeports: BTreeMap<String, String> = BTreeMap::new();
    let mut cluster_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut affinity_sets: BTreeMap<String, u32> = BTreeMap::new();

    let mut sorted: Vec<&ServicePort> = ports.iter().collect();
    sorted.sort_by(|a, b| a.id().cmp(&b.id()).then(a.cluster_ip.cmp(&b.cluster_ip)));
    sorted.dedup_by(|a, b| a.id() == b.id() && a.cluster_ip == b.cluster_ip);
    for sp in sorted {
        let proto = sp.protocol.nft();
        cluster_ips.insert(sp.cluster_ip);
        let usable = sp.usable();
        let local: Vec<&Endpoint> =
            usable.iter().copied().filter(|e| e.node.as_deref() == Some(config.node_name.as_str())).collect();
        let svc_chain = name("service", &sp.id());
        let ext_chain = name("external", &sp.id());
        let key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);

        // The endpoints' chains.
        let mut ep_chains: BTreeMap<(Ipv4Addr, u16), String> = BTreeMap::new();
        for e in &usable {
            let id = endpoint_id(sp, e);
            let chain = name("endpoint", &id);
            let mut r = vec![format!("ip saddr {} jump mark-for-masquerade", e.ip)];
            if let Some(timeout) = sp.affinity_seconds {
                let set = name("affinity", &id);
                r.push(format!("update @{set} {{ ip saddr }}"));
                affinity_sets.insert(set, timeout);
            }
            r.push(format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port));
            rules.insert(chain.clone(), r);
            ep_chains.insert((e.ip, e.port), chain);
        }
        let chains_of =
            |eps: &[&Endpoint]| -> Vec<String> { eps.iter().map(|e| ep_chains[&(e.ip, e.port)].clone()).collect() };
        // Sends the connection on to one of `eps`: the client's remembered one first.
        let dispatch = |eps: &[&Endpoint]| -> Vec<String> {
            let mut r = Vec::new();
            if sp.affinity_seconds.is_some() {
                for e in eps {
                    let set = name("affinity", &endpoint_id(sp, e));
                    r.push(format!("ip saddr @{set} goto {}", ep_chains[&(e.ip, e.port)]));
                }
            }
            r.push(pick(&chains_of(eps)));
            r
        };

        // Traffic from inside the cluster: all endpoints, or the node's own with
        // internalTrafficPolicy Local.
        let internal: Vec<&Endpoint> = if sp.internal_local { local.clone() } else { usable.clone() };
        if usable.is_empty() {
            no_endpoint_services.insert(key.clone(), "goto reject-chain".into());
        } else if internal.is_empty() {
            // Endpoints exist, none on this node: kube-proxy drops rather than rejects.
            no_endpoint_services.insert(key.clone(), "drop".into());
        } else {
            let mut r = Vec::new();
            if let Some(cidr) = config.local_cidr {
                r.push(format!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
                    sp.cluster_ip, sp.port
                ));
            }
            r.extend(dispatch(&internal));
            rules.insert(svc_chain.clone(), r);
            service_ips.insert(key.clone(), format!("goto {svc_chain}"));
        }

        // NodePort: traffic to the node's own addresses.
        if let Some(node_port) = sp.node_port {
            let np_key = format!("{proto} . {node_port}");
            let external: Vec<&Endpoint> = if sp.external_local { local.clone() } else { usable.clone() };
            if usable.is_empty() {
                no_endpoint_nodeports.insert(np_key, "goto reject-chain".into());
            } else {
                let mut r = Vec::new();
                if sp.external_local {
                    // Pods and the node itself reach the service as from inside; others only
                    // the node's own endpoints, keeping their source address.
                    if let (Some(cidr), false) = (config.local_cidr, internal.is_empty()) {
                        r.push(format!("ip saddr {cidr} goto {svc_chain}"));
                    }
                    if !internal.is_empty() {
                        r.push("fib saddr type local jump mark-for-masquerade".into());
                        r.push(format!("fib saddr type local goto {svc_chain}"));
                    }
                    r.extend(dispatch(&external));
                } else {
                    r.push("jump mark-for-masquerade".into());
                    r.extend(dispatch(&external));
                }
                rules.insert(ext_chain.clone(), r);
                service_nodeports.insert(np_key, format!("goto {ext_chain}"));
            }
        }
    }

    // The fixed chains' rules.
    rules.insert(
        "services".into(),
        vec![
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports".into(),
        ],
    );
    rules.insert("mark-for-masquerade".into(), vec![format!("mark set mark or {MASQUERADE_MARK}")]);
    rules.insert(
        "masquerading".into(),
        vec![
            format!("mark and {MASQUERADE_MARK} == 0 return"),
            format!("mark set mark xor {MASQUERADE_MARK}"),
            "masquerade fully-random".into(),
        ],
    );
    rules.insert(
        "service-endpoints-check".into(),
        vec!["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into()],
    );
    rules.insert(
        "nodeport-endpoints-check".into(),
        vec!["fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports".into()],
    );
    let mut check = vec!["ip daddr @cluster-ips reject".to_string()];
    if !config.service_cidrs.is_empty() {
        let ranges: Vec<String> = config.service_cidrs.iter().map(|c| c.to_string()).collect();
        check.push(format!("ip daddr {{ {} }} drop", ranges.join(", ")));
    }
    rules.insert("cluster-ips-check".into(), check);
    rules.insert("reject-chain".into(), vec!["reject".into()]);
    rules.insert("nat-prerouting".into(), vec!["jump services".into()]);
    rules.insert("nat-output".into(), vec!["jump services".into()]);
    let mut postrouting = vec!["jump masquerading".to_string()];
    if let (Some(pods), Some(cluster)) = (config.pod_cidr, config.local_cidr) {
        postrouting.push(format!("ip saddr {pods} ip daddr != {cluster} masquerade"));
    }
    rules.insert("nat-postrouting".into(), postrouting);
    rules.insert(
        "filter-input".into(),
        vec!["ct state new jump nodeport-endpoints-check".into(), "ct state new jump service-endpoints-check".into()],
    );
    rules.insert(
        "filter-forward".into(),
        vec!["ct state new jump service-endpoints-check".into(), "ct state new jump cluster-ips-check".into()],
    );
    rules.insert("filter-output".into(), vec!["ct state new jump service-endpoints-check".into()]);
    rules.insert("filter-output-post-dnat".into(), vec!["ct state new jump cluster-ips-check".into()]);
    // NetworkPolicy: new connections of isolated local pods, after the DNAT above.
    rules.insert(
        "policy-forward".into(),
        vec![
            "ct state established,related accept".into(),
            "ip daddr vmap @policy-ingress".into(),
            "ip saddr vmap @policy-egress".into(),
        ],
    );
    rules.extend(policy.chains.clone());

    let mut elements: BTreeMap<&'static str, BTreeMap<String, String>> = BTreeMap::new();
    elements.insert("service-ips", service_ips);
    elements.insert("service-nodeports", service_nodeports);
    elements.insert("no-endpoint-services", no_endpoint_services);
    elements.insert("no-endpoint-nodeports", no_endpoint_nodeports);
    elements.insert("cluster-ips", cluster_ips.iter().map(|ip| (ip.to_string(), String::new())).collect());
    elements.insert("policy-ingress", policy.ingress.clone());
    elements.insert("policy-egress", policy.egress.clone());
    Desired { chains: rules, elements, sets: affinity_sets }
}

fn element(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

/// The transaction from `previous` (none: an unknown table, replaced whole) to `desired`. A
/// partial one, as kube-proxy's: only chains whose rules changed are flushed and refilled, only
/// map elements that changed are deleted or added, and what is no longer used is deleted after
/// everything that referred to it has been emptied.
pub fn script(config: &Config, desired: &Desired, previous: Option<&Desired>) -> String {
    let t = &config.table;
    let mut out = String::new();
    let empty = Desired::default();
    let _ = writeln!(out, "add table ip {t}");
    if previous.is_none() {
        let _ = writeln!(out, "delete table ip {t}");
        let _ = writeln!(out, "add table ip {t} {{ comment \"rules for Keelson's service proxy\" ; }}");
        for (chain, kind, hook, priority) in BASE_CHAINS {
            let _ = writeln!(out, "add chain ip {t} {chain} {{ type {kind} hook {hook} priority {priority} ; }}");
        }
        for (_, decl) in FIXED_MAPS {
            let _ = writeln!(out, "add {}", decl.replacen(' ', &format!(" ip {t} "), 1));
        }
    }
    let prev = previous.unwrap_or(&empty);
    // New chains and sets first: rules and elements below may refer to them.
    for chain in desired
        .chains
        .keys()
        .filter(|c| !prev.chains.contains_key(*c) && !BASE_CHAINS.iter().any(|b| b.0 == c.as_str()))
    {
        let _ = writeln!(out, "add chain ip {t} {chain}");
    }
    for (set, timeout) in desired.sets.iter().filter(|(s, _)| !prev.sets.contains_key(*s)) {
        let _ =
            writeln!(out, "add set ip {t} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}");
    }
    for (chain, rules) in &desired.chains {
        if prev.chains.get(chain) == Some(rules) {
            continue;
        }
        if prev.chains.contains_key(chain) {
            let _ = writeln!(out, "flush chain ip {t} {chain}");
        }
        for r in rules {
            let _ = writeln!(out, "add rule ip {t} {chain} {r}");
        }
    }
    let none = BTreeMap::new();
    for (map, _) in FIXED_MAPS {
        let (old, new) = (prev.elements.get(map).unwrap_or(&none), desired.elements.get(map).unwrap_or(&none));
        let gone: Vec<String> = old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        let added: Vec<String> =
            new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| element(k, v)).collect();
        if !gone.is_empty() {
            let _ = writeln!(out, "delete element ip {t} {map} {{ {} }}", gone.join(", "));
        }
        if !added.is_empty() {
            let _ = writeln!(out, "add element ip {t} {map} {{ {} }}", added.join(", "));
        }
    }
    // Chains and sets no longer used: emptied now, deleted once nothing refers to them.
    let stale: Vec<&String> = prev.chains.keys().filter(|c| !desired.chains.contains_key(*c)).collect();
    for chain in &stale {
        let _ = writeln!(out, "flush chain ip {t} {chain}");
    }
    for chain in &stale {
        let _ = writeln!(out, "delete chain ip {t} {chain}");
    }
    for set in prev.sets.keys().filter(|s| !desired.sets.contains_key(*s)) {
        let _ = writeln!(out, "delete set ip {t} {set}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            table: "keelson-test".into(),
            node_name: "node-a".into(),
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            local_cidr: Some("10.244.0.0/16".parse().unwrap()),
            pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        }
    }

    fn ep(ip: &str, node: &str, ready: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            node: Some(node.into()),
        }
    }

    fn web(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: "10.96.0.20".parse().unwrap(),
            port: 80,
            node_port: None,
            affinity_seconds: None,
            internal_local: false,
            external_local: false,
            endpoints,
        }
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        assert_eq!("10.96.3.4/12".parse::<Cidr>().unwrap().to_string(), "10.96.0.0/12");
        assert!("10.96.0.0".parse::<Cidr>().is_err());
        assert!("10.96.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn a_service_spreads_over_its_ready_endpoints() {
        let sp = web(vec![
            ep("10.244.0.5", "node-a", true),
            ep("10.244.1.6", "node-b", true),
            ep("10.244.1.7", "node-b", false),
        ]);
        let (script, owned) = render(&config(), &[sp], &PolicyRules::default(), None);
        let svc = name("service", "default/web/tcp/http");
        assert!(
            script
                .contains(&format!("add element ip keelson-test service-ips {{ 10.96.0.20 . tcp . 80 : goto {svc} }}")),
            "{script}"
        );
        assert!(script.contains(&format!("add rule ip keelson-test {svc} ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade")));
        let a = name("endpoint", "default/web/tcp/http__10.244.0.5/8080");
        let b = name("endpoint", "default/web/tcp/http__10.244.1.6/8080");
        assert!(script.contains(&format!("numgen random mod 2 vmap {{ 0 : goto {a}, 1 : goto {b} }}")), "{script}");
        assert!(script.contains(&format!("add rule ip keelson-test {a} meta l4proto tcp dnat to 10.244.0.5:8080")));
        assert!(
            script.contains(&format!("add rule ip keelson-test {a} ip saddr 10.244.0.5 jump mark-for-masquerade")),
            "hairpin"
        );
        assert!(!script.contains("10.244.1.7"), "a not-ready endpoint takes no traffic");
        assert!(
            script.starts_with("add table ip keelson-test\ndelete table ip keelson-test\n"),
            "the first sync replaces the table"
        );
        assert!(
            script.contains(
                "add rule ip keelson-test nat-postrouting ip saddr 10.244.0.0/24 ip daddr != 10.244.0.0/16 masquerade"
            ),
            "pods' traffic leaving the cluster is masqueraded"
        );
        assert_eq!(owned.owned_chains().count(), 3);
    }

    #[test]
    fn without_endpoints_a_service_is_rejected_and_terminating_ones_serve_when_nothing_is_ready() {
        let (script, _) =
            render(&config(), &[web(vec![ep("10.244.0.5", "node-a", false)])], &PolicyRules::default(), None);
        assert!(script.contains("no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }"), "{script}");
        assert!(!script.contains("add element ip keelson-test service-ips"), "{script}");
        let mut terminating = ep("10.244.0.5", "node-a", false);
        terminating.serving = true;
        terminating.terminating = true;
        let (script, _) = render(&config(), &[web(vec![terminating])], &PolicyRules::default(), None);
        assert!(script.contains("dnat to 10.244.0.5:8080"), "{script}");
        assert!(script.contains("ip daddr { 10.96.0.0/12 } drop"), "unallocated cluster IPs are dropped");
    }

    #[test]
    fn traffic_policies_keep_to_the_nodes_own_endpoints() {
        let mut sp = web(vec![ep("10.244.0.5", "node-a", true), ep("10.244.1.6", "node-b", true)]);
        sp.internal_local = true;
        sp.node_port = Some(30080);
        sp.external_local = true;
        let (script, _) = render(&config(), &[sp.clone()], &PolicyRules::default(), None);
        let svc = name("service", "default/web/tcp/http");
        let ext = name("external", "default/web/tcp/http");
        let a = name("endpoint", "default/web/tcp/http__10.244.0.5/8080");
        assert!(script.contains(&format!("add rule ip keelson-test {svc} goto {a}")), "{script}");
        assert!(script.contains(&format!("service-nodeports {{ tcp . 30080 : goto {ext} }}")), "{script}");
        assert!(
            script.contains(&format!("add rule ip keelson-test {ext} ip saddr 10.244.0.0/16 goto {svc}")),
            "{script}"
        );
        assert!(script.contains(&format!("add rule ip keelson-test {ext} goto {a}")), "{script}");
        // On a node without endpoints of its own, cluster traffic is dropped, not rejected.
        let mut other = config();
        other.node_name = "node-c".into();
        let (script, _) = render(&other, &[sp], &PolicyRules::default(), None);
        assert!(script.contains("no-endpoint-services { 10.96.0.20 . tcp . 80 : drop }"), "{script}");
        assert!(script.contains(&format!("add rule ip keelson-test {ext} drop")), "{script}");
    }

    #[test]
    fn affinity_remembers_clients_and_later_syncs_delete_what_is_gone() {
        let mut sp = web(vec![ep("10.244.0.5", "node-a", true), ep("10.244.1.6", "node-b", true)]);
        sp.affinity_seconds = Some(10800);
        let (first, owned) = render(&config(), &[sp.clone()], &PolicyRules::default(), None);
        let set = name("affinity", "default/web/tcp/http__10.244.0.5/8080");
        let a = name("endpoint", "default/web/tcp/http__10.244.0.5/8080");
        assert!(
            first.contains(&format!(
                "add set ip keelson-test {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }}"
            )),
            "{first}"
        );
        assert!(first.contains(&format!("ip saddr @{set} goto {a}")), "{first}");
        assert!(first.contains(&format!("add rule ip keelson-test {a} update @{set} {{ ip saddr }}")), "{first}");
        assert_eq!(owned.sets.len(), 2);

        // One endpoint goes: its chain and set are deleted; the other set is kept, not flushed.
        sp.endpoints.remove(0);
        let (second, owned2) = render(&config(), &[sp], &PolicyRules::default(), Some(&owned));
        assert!(!second.contains("delete table"), "{second}");
        assert!(second.contains(&format!("delete chain ip keelson-test {a}")), "{second}");
        assert!(second.contains(&format!("delete set ip keelson-test {set}")), "{second}");
        assert!(!second.contains("flush set ip keelson-test affinity"), "{second}");
        assert_eq!(owned2.sets.len(), 1);
        let deleted = second.find(&format!("delete chain ip keelson-test {a}")).unwrap();
        let flushed =
            second.find(&format!("flush chain ip keelson-test {}", name("service", "default/web/tcp/http"))).unwrap();
        assert!(flushed < deleted, "the chain that jumped to it is emptied first");

        // The service goes: nothing of it is left.
        let (third, owned3) = render(&config(), &[], &PolicyRules::default(), Some(&owned2));
        assert!(
            third.contains(&format!("delete chain ip keelson-test {}", name("service", "default/web/tcp/http"))),
            "{third}"
        );
        assert_eq!((owned3.owned_chains().count(), owned3.sets.len()), (0, 0));
        // Nothing changed: nothing written but the table's idempotent add.
        let (fourth, _) = render(&config(), &[], &PolicyRules::default(), Some(&owned3));
        assert_eq!(fourth, "add table ip keelson-test\n");
    }
}
