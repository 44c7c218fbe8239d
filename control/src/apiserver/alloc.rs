//! The API server's allocators for services: a cluster IP from the service range and node ports
//! from the node-port range, as Kubernetes' service storage hands them out.
//!
//! An allocation is a key in the store (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) whose value names the service holding it. The keys
//! are created and deleted in the same transaction as that service's write, so replicas never
//! hand one value out twice and a failed write leaks nothing. A key whose owner no longer exists
//! (a namespace's contents are removed by range, without looking at each object) is free again.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::errors::{ApiError, Cause};
use super::resources::{self, Resource};
use super::store::{prefix_end, Also};
use super::Api;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Random picks tried before a scan of the whole range for a free value.
const RANDOM_PICKS_MAX: usize = 64;

/// The ranges allocations come from; every API replica of a cluster must be given the same.
#[derive(Debug, Clone)]
pub struct Ranges {
    /// The service range's network address and prefix length.
    ip_network: u32,
    ip_prefix_len: u8,
    node_ports: (u16, u16),
}

impl Ranges {
    /// `cidr` as `10.96.0.0/12`, `ports` as `30000-32767`.
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, String> {
        let (ip, len) = cidr.split_once('/').ok_or_else(|| format!("service range {cidr:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("service range {cidr:?}: {ip:?} is not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| format!("service range {cidr:?}: bad prefix length"))?;
        // At least four addresses: the network, the broadcast, and two to hand out.
        if !(8..=30).contains(&len) {
            return Err(format!("service range {cidr:?}: the prefix length must be between 8 and 30"));
        }
        let ip_network = u32::from(ip) & mask(len);
        if ip_network != u32::from(ip) {
            return Err(format!("service range {cidr:?} has host bits set"));
        }
        let (lo, hi) = ports.split_once('-').ok_or_else(|| format!("node-port range {ports:?} is not FROM-TO"))?;
        let (lo, hi): (u16, u16) = match (lo.trim().parse(), hi.trim().parse()) {
            (Ok(lo), Ok(hi)) if lo >= 1 && lo <= hi => (lo, hi),
            _ => return Err(format!("node-port range {ports:?} is not FROM-TO with 1 <= FROM <= TO <= 65535")),
        };
        Ok(Ranges { ip_network, ip_prefix_len: len, node_ports: (lo, hi) })
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.ip_network), self.ip_prefix_len)
    }

    /// The range's first host address and its broadcast address: what may be held lies
    /// between them, the first included.
    fn ip_hosts(&self) -> (u32, u32) {
        (self.ip_network + 1, self.ip_network | !mask(self.ip_prefix_len))
    }

    fn ip_in_range(&self, ip: Ipv4Addr) -> bool {
        let (first, broadcast) = self.ip_hosts();
        (first..broadcast).contains(&u32::from(ip))
    }
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges::parse("10.96.0.0/12", "30000-32767").expect("the default ranges parse")
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX << (32 - u32::from(len))
}

/// Who holds an allocation: the value stored under its key.
#[derive(Serialize, Deserialize)]
struct Owner {
    namespace: String,
    name: String,
    uid: String,
}

fn spec_type(svc: &Value) -> &str {
    svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP")
}

fn needs_cluster_ip(svc: &Value) -> bool {
    spec_type(svc) != "ExternalName"
}

fn needs_node_ports(svc: &Value) -> bool {
    matches!(spec_type(svc), "NodePort" | "LoadBalancer")
}

fn cluster_ip(svc: &Value) -> &str {
    svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("")
}

fn ports(svc: &Value) -> impl Iterator<Item = &Value> {
    svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten()
}

fn node_port(port: &Value) -> i64 {
    port.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

fn port_id(port: &Value) -> (Option<i64>, &str) {
    (port.get("port").and_then(Value::as_i64), port.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
}

/// The allocation keys a stored service holds.
fn held(svc: &Value) -> HashSet<String> {
    let mut keys = HashSet::new();
    if let Ok(ip) = cluster_ip(svc).parse::<Ipv4Addr>() {
        keys.insert(format!("{IP_PREFIX}{ip}"));
    }
    keys.extend(ports(svc).map(node_port).filter(|p| *p > 0).map(|p| format!("{PORT_PREFIX}{p}")));
    keys
}

/// Brings a service about to be written in line with what it held before (`old`), as
/// Kubernetes' service strategy does: fields its new type does not use are dropped when left as
/// they were, values already allocated are kept when the new object leaves them out, and an
/// allocated cluster IP never changes. Then checks what the client asked for against the ranges.
pub fn prepare(ranges: &Ranges, old: Option<&Value>, svc: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else { return causes };
    let old_ip = old.map(cluster_ip).unwrap_or("");
    let old_port_of = |id: (Option<i64>, &str)| {
        old.into_iter().flat_map(ports).find(|p| port_id(p) == id).map(node_port).filter(|p| *p > 0)
    };
    let new_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    // Type-dependent fields left unchanged go with the old type.
    if new_type == "ExternalName" && spec.get("clusterIP").and_then(Value::as_str) == Some(old_ip) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(field);
        }
    }
    let wants_node_ports = matches!(new_type.as_str(), "NodePort" | "LoadBalancer");
    for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        let kept = old_port_of(port_id(p));
        let given = node_port(p);
        if !wants_node_ports && given > 0 && Some(given) == kept {
            p.as_object_mut().map(|m| m.remove("nodePort"));
        } else if wants_node_ports && given == 0 {
            if let Some(k) = kept {
                p["nodePort"] = json!(k);
            }
        }
    }
    // Single-stack IPv4: clusterIPs may name the address in clusterIP's stead, never another.
    let listed: Vec<String> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").is_empty() {
        if let Some(first) = listed.first().filter(|f| !f.is_empty()) {
            spec.insert("clusterIP".into(), json!(first));
        }
    }
    let given_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
    // clusterIPs left as stored while clusterIP moved: the immutability below says what is wrong.
    let listed_as_stored = old.and_then(|o| o.pointer("/spec/clusterIPs")) == spec.get("clusterIPs");
    let mismatch = listed.first().is_some_and(|f| !f.is_empty() && *f != given_ip) && !listed_as_stored;
    if listed.len() > 1 || mismatch {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            format!("{listed:?}"),
            "must hold one address, equal to spec.clusterIP, on this single-stack IPv4 cluster",
        ));
    }
    if spec.get("ipFamilyPolicy").and_then(Value::as_str) == Some("RequireDualStack") {
        causes.push(Cause::invalid("spec.ipFamilyPolicy", "RequireDualStack", "this cluster is single-stack IPv4"));
    }
    for (i, family) in spec.get("ipFamilies").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if family != "IPv4" {
            causes.push(Cause::invalid(format!("spec.ipFamilies[{i}]"), family, "this cluster is single-stack IPv4"));
        }
    }
    if new_type != "ExternalName" {
        if given_ip.is_empty() && !old_ip.is_empty() {
            spec.insert("clusterIP".into(), json!(old_ip));
        } else if !old_ip.is_empty() && given_ip != old_ip {
            causes.push(Cause::invalid("spec.clusterIPs[0]", &given_ip, "may not change once set"));
        }
    } else if !given_ip.is_empty() {
        causes.push(Cause::invalid("spec.clusterIP", &given_ip, "must be empty for 'ExternalName' services"));
    }
    // Ranges are checked when a value is allocated, not for one the service already holds (the
    // ranges may have been changed since).
    let ip_held = !old_ip.is_empty() && given_ip == old_ip;
    if let Some(ip) =
        spec.get("clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty() && *ip != "None" && !ip_held)
    {
        match ip.parse::<Ipv4Addr>() {
            Ok(addr) if !ranges.ip_in_range(addr) => causes.push(Cause::invalid(
                "spec.clusterIPs",
                ip,
                format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                    ranges.cidr()
                ),
            )),
            Ok(_) => {}
            Err(_) => causes.push(Cause::invalid("spec.clusterIPs[0]", ip, "must be a valid IP address")),
        }
    }
    let (lo, hi) = ranges.node_ports;
    let old_ports: HashSet<i64> = old.into_iter().flat_map(ports).map(node_port).filter(|p| *p > 0).collect();
    let mut seen = HashSet::new();
    for (i, p) in spec.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let n = node_port(p);
        if n == 0 {
            continue;
        }
        let field = format!("spec.ports[{i}].nodePort");
        if !wants_node_ports {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field,
                message: format!("Forbidden: may not be used when `type` is '{new_type}'"),
            });
        } else if !(i64::from(lo)..=i64::from(hi)).contains(&n) && !old_ports.contains(&n) {
            causes.push(Cause::invalid(
                field,
                n,
                format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
            ));
        } else if !seen.insert((n, port_id(p).1.to_string())) {
            causes.push(Cause::duplicate(field, n));
        }
    }
    causes
}

/// Fills in what `svc` still needs (a cluster IP, node ports) with free values and returns the
/// allocation keys to claim and release in the same transaction as its write. `old` is the
/// service as stored, if it is.
pub async fn claim(api: &Api, old: Option<&Value>, svc: &mut Value) -> Result<Vec<Also>, ApiError> {
    let ns = svc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let owner =
        Owner { namespace: ns, name, uid: svc.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").into() };
    let ranges = &api.ranges;
    // Values picked here were free when listed; one taken since fails the write's condition and
    // the create is tried again. Values the client asked for are checked one by one.
    let mut picked = HashSet::new();
    if needs_cluster_ip(svc) && cluster_ip(svc).is_empty() {
        let (first, broadcast) = ranges.ip_hosts();
        let used = allocated(api, IP_PREFIX).await?;
        // The range's first address is kept for a `kubernetes` service, as Kubernetes keeps it.
        let ip = pick(&used, first + 1, broadcast - 1).ok_or_else(|| range_full("serviceIP", &ranges.cidr()))?;
        svc["spec"]["clusterIP"] = json!(Ipv4Addr::from(ip).to_string());
        picked.insert(format!("{IP_PREFIX}{}", Ipv4Addr::from(ip)));
    }
    if needs_cluster_ip(svc) {
        let ip = cluster_ip(svc).to_string();
        svc["spec"]["clusterIPs"] = json!([ip]);
        if ip != "None" {
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        svc["spec"].as_object_mut().map(|s| s.entry("internalTrafficPolicy").or_insert(json!("Cluster")));
    }
    if needs_node_ports(svc) && ports(svc).any(|p| node_port(p) == 0) {
        let mut used = allocated(api, PORT_PREFIX).await?;
        used.extend(ports(svc).map(node_port).filter(|p| *p > 0).map(|p| p as u32));
        let (lo, hi) = ranges.node_ports;
        for p in svc["spec"]["ports"].as_array_mut().into_iter().flatten().filter(|p| node_port(p) == 0) {
            let port = pick(&used, u32::from(lo), u32::from(hi))
                .ok_or_else(|| range_full("nodePort", &format!("{lo}-{hi}")))?;
            used.insert(port);
            p["nodePort"] = json!(port);
            picked.insert(format!("{PORT_PREFIX}{port}"));
        }
        svc["spec"].as_object_mut().map(|s| s.entry("externalTrafficPolicy").or_insert(json!("Cluster")));
    }
    let before = old.map(held).unwrap_or_default();
    let after = held(svc);
    let mut also: Vec<Also> =
        before.difference(&after).map(|k| Also::Release { key: k.clone().into_bytes() }).collect();
    let value = serde_json::to_vec(&owner).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut wanted: Vec<&String> = after.difference(&before).collect();
    wanted.sort();
    for key in wanted {
        let free = if picked.contains(key) { Some(0) } else { free_at(api, key, &owner).await? };
        match free {
            Some(expected) => also.push(Also::Claim { key: key.clone().into_bytes(), expected, value: value.clone() }),
            None => return Err(taken(svc, key)),
        }
    }
    Ok(also)
}

/// The allocation keys a service being deleted gives back.
pub fn release(svc: &Value) -> Vec<Also> {
    held(svc).into_iter().map(|k| Also::Release { key: k.into_bytes() }).collect()
}

/// The values allocated under `prefix`.
async fn allocated(api: &Api, prefix: &str) -> Result<HashSet<u32>, ApiError> {
    let keys = api.store.keys(prefix.as_bytes(), &prefix_end(prefix.as_bytes())).await?;
    Ok(keys
        .iter()
        .filter_map(|k| std::str::from_utf8(&k[prefix.len()..]).ok())
        .filter_map(|v| v.parse::<Ipv4Addr>().map(u32::from).ok().or_else(|| v.parse().ok()))
        .collect())
}

/// A value in `[lo, hi]` not in `used`: random picks first, then a scan from a random start.
fn pick(used: &HashSet<u32>, lo: u32, hi: u32) -> Option<u32> {
    let mut rng = rand::thread_rng();
    for _ in 0..RANDOM_PICKS_MAX {
        let v = rng.gen_range(lo..=hi);
        if !used.contains(&v) {
            return Some(v);
        }
    }
    let size = u64::from(hi - lo) + 1;
    let start = rng.gen_range(0..size);
    (0..size).map(|i| lo + ((start + i) % size) as u32).find(|v| !used.contains(v))
}

/// Whether the allocation `key` may be claimed for `owner`: the mod revision to expect (0 when
/// nobody holds it), or None while another living service holds it.
async fn free_at(api: &Api, key: &str, owner: &Owner) -> Result<Option<i64>, ApiError> {
    let (kv, _) = api.store.get(key.as_bytes()).await?;
    let Some(kv) = kv else { return Ok(Some(0)) };
    let Ok(holder) = serde_json::from_slice::<Owner>(&kv.value) else { return Ok(Some(kv.mod_revision)) };
    if holder.uid == owner.uid {
        return Ok(Some(kv.mod_revision));
    }
    let services = resources::find("", "v1", "services").expect("services are served");
    let (svc, _) = api.store.get(services.key(Some(&holder.namespace), &holder.name).as_bytes()).await?;
    let alive = svc
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .is_some_and(|s| s.pointer("/metadata/uid").and_then(Value::as_str) == Some(holder.uid.as_str()));
    Ok(if alive { None } else { Some(kv.mod_revision) })
}

fn taken(svc: &Value, key: &str) -> ApiError {
    let services: &Resource = resources::find("", "v1", "services").expect("services are served");
    let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let cause = if let Some(ip) = key.strip_prefix(IP_PREFIX) {
        Cause::invalid(
            "spec.clusterIPs",
            format!("[{ip}]"),
            format!("failed to allocate IP {ip}: provided IP is already allocated"),
        )
    } else {
        let port = key.strip_prefix(PORT_PREFIX).unwrap_or(key);
        let i = ports(svc).position(|p| node_port(p).to_string() == port).unwrap_or(0);
        Cause::invalid(format!("spec.ports[{i}].nodePort"), port, "provided port is already allocated")
    };
    ApiError::invalid(services.kind, services.group, name, vec![cause])
}

fn range_full(what: &str, range: &str) -> ApiError {
    ApiError::internal(format!("failed to allocate a {what}: range {range} is full"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_bad_input() {
        let r = Ranges::parse("10.96.0.0/12", "30000-32767").unwrap();
        assert!(r.ip_in_range("10.96.0.1".parse().unwrap()));
        assert!(r.ip_in_range("10.111.255.254".parse().unwrap()));
        assert!(!r.ip_in_range("10.96.0.0".parse().unwrap()), "the network address is not a host");
        assert!(!r.ip_in_range("10.111.255.255".parse().unwrap()), "nor is the broadcast address");
        assert!(!r.ip_in_range("10.112.0.1".parse().unwrap()));
        assert!(Ranges::parse("10.96.0.1/12", "30000-32767").is_err());
        assert!(Ranges::parse("10.96.0.0", "30000-32767").is_err());
        assert!(Ranges::parse("10.96.0.0/12", "32767-30000").is_err());
        assert!(Ranges::parse("10.96.0.0/31", "30000-32767").is_err());
    }

    #[test]
    fn picks_find_the_last_free_value() {
        let used: HashSet<u32> = (100..=200).filter(|v| *v != 157).collect();
        assert_eq!(pick(&used, 100, 200), Some(157));
        let full: HashSet<u32> = (100..=200).collect();
        assert_eq!(pick(&full, 100, 200), None);
    }

    #[test]
    fn updates_keep_allocations_and_drop_fields_the_new_type_does_not_use() {
        let r = Ranges::default();
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.3.4",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        // A replacement that leaves the allocated values out keeps them.
        let mut same = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert!(prepare(&r, Some(&old), &mut same).is_empty());
        assert_eq!(same["spec"]["clusterIP"], "10.96.3.4");
        assert_eq!(same["spec"]["ports"][0]["nodePort"], 30080);
        // Back to ClusterIP with the node port left as it was: the node port goes.
        let mut back = old.clone();
        back["spec"]["type"] = json!("ClusterIP");
        assert!(prepare(&r, Some(&old), &mut back).is_empty());
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(held(&back), HashSet::from(["/registry/ranges/serviceips/10.96.3.4".to_string()]));
        // To ExternalName with the address left as it was: the address and its families go.
        let mut external = old.clone();
        external["spec"]["type"] = json!("ExternalName");
        external["spec"]["ipFamilies"] = json!(["IPv4"]);
        assert!(prepare(&r, Some(&old), &mut external).is_empty());
        assert!(external["spec"].get("clusterIP").is_none() && external["spec"].get("ipFamilies").is_none());
        assert!(held(&external).is_empty(), "an ExternalName service holds nothing");
        // Values already held pass even outside the ranges (which may have changed since).
        let narrow = Ranges::parse("10.200.0.0/24", "31000-31999").unwrap();
        let mut status_only = old.clone();
        status_only["status"] = json!({"loadBalancer": {}});
        assert!(prepare(&narrow, Some(&old), &mut status_only).is_empty());
        // clusterIPs alone names the address; dual stack and IPv6 are refused.
        let mut listed = json!({"spec": {"clusterIPs": ["10.96.0.50"], "ports": [{"port": 80}]}});
        assert!(prepare(&r, None, &mut listed).is_empty());
        assert_eq!(listed["spec"]["clusterIP"], "10.96.0.50");
        let mut dual = json!({"spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}});
        let fields: Vec<String> = prepare(&r, None, &mut dual).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.ipFamilyPolicy", "spec.ipFamilies[1]"]);
        // A cluster IP never changes once allocated.
        let mut moved = old.clone();
        moved["spec"]["clusterIP"] = json!("10.96.3.5");
        let causes = prepare(&r, Some(&old), &mut moved);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.clusterIPs[0]");
        // Out-of-range and forbidden values are named.
        let mut bad = json!({"spec": {"type": "ClusterIP", "clusterIP": "192.168.0.1",
            "ports": [{"port": 80, "nodePort": 30001}]}});
        let fields: Vec<String> = prepare(&r, None, &mut bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.clusterIPs", "spec.ports[0].nodePort"]);
    }
}
