//! The cluster's DNS records as Kubernetes' DNS specification defines them, computed from
//! Services and EndpointSlices into one immutable [`Zone`] that queries read without locking:
//! - `<svc>.<ns>.svc.<domain>`: A for a service's cluster IPs; for a headless service, its ready
//!   endpoints' addresses; CNAME for an ExternalName service;
//! - `<hostname>.<svc>.<ns>.svc.<domain>`: a headless service's endpoint by its hostname (pods
//!   with `hostname` and `subdomain`, StatefulSet pods), or by its dashed address;
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for a named port;
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A for a pod's address;
//! - PTR for cluster IPs and for headless endpoints with hostnames.
//!
//! Names in the domain that none of these match are answered NXDOMAIN (or NODATA when the name
//! exists with other types); names outside it are not the zone's and get forwarded.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{soa::SOA, A, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// How long resolvers may keep an answer, in seconds (CoreDNS's `kubernetes` plugin: 5).
pub const TTL_SECONDS: u32 = 5;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A service as DNS sees it.
#[derive(Debug, Clone, Default)]
struct Svc {
    cluster_ips: Vec<Ipv4Addr>,
    external_name: Option<String>,
    /// Named ports: (name, protocol in lower case, port on the cluster IP).
    ports: Vec<(String, String, u16)>,
    /// A headless service's endpoints: address, hostname, and their port numbers by port name.
    endpoints: Vec<(Ipv4Addr, Option<String>)>,
    endpoint_ports: BTreeMap<(String, String), u16>,
}

/// What a query gets.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Records of the name; additional records (addresses of SRV targets).
    Records(Vec<Record>, Vec<Record>),
    /// The name exists without records of the asked type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// Not the cluster's name: forward it.
    Outside,
}

/// Every record the cluster's DNS answers with, at one moment.
#[derive(Debug, Default)]
pub struct Zone {
    domain: String,
    /// By (namespace, name).
    services: HashMap<(String, String), Svc>,
    namespaces: std::collections::HashSet<String>,
    ptr: HashMap<Ipv4Addr, String>,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).ok()
}

fn record(owner: &str, rdata: RData) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, TTL_SECONDS, rdata))
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

impl Zone {
    /// The zone of `domain` (e.g. `cluster.local`) for these services and slices.
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut zone = Zone { domain: domain.clone(), ..Default::default() };
        for s in services {
            let (Some(ns), Some(n), Some(spec)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref(), s.spec.as_ref())
            else {
                continue;
            };
            let mut svc = Svc::default();
            if spec.type_.as_deref() == Some("ExternalName") {
                svc.external_name = spec.external_name.clone().filter(|n| !n.is_empty());
            } else {
                let ips = spec
                    .cluster_ips
                    .clone()
                    .filter(|i| !i.is_empty())
                    .or_else(|| spec.cluster_ip.clone().map(|i| vec![i]))
                    .unwrap_or_default();
                svc.cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
            }
            for p in spec.ports.iter().flatten() {
                if let (Some(pname), Ok(port)) = (p.name.clone().filter(|n| !n.is_empty()), u16::try_from(p.port)) {
                    svc.ports.push((pname, p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(), port));
                }
            }
            let fqdn = format!("{n}.{ns}.svc.{domain}");
            for ip in &svc.cluster_ips {
                zone.ptr.insert(*ip, fqdn.clone());
            }
            zone.namespaces.insert(ns.to_string());
            zone.services.insert((ns.to_string(), n.to_string()), svc);
        }
        // A headless service's endpoints: ready ones (the endpointslice controller marks all
        // ready for `publishNotReadyAddresses`).
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let (Some(ns), Some(svc_name)) = (
                slice.metadata.namespace.as_deref(),
                slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            let Some(svc) = zone.services.get_mut(&(ns.to_string(), svc_name.clone())) else { continue };
            if !svc.cluster_ips.is_empty() || svc.external_name.is_some() {
                continue;
            }
            for p in slice.ports.iter().flatten() {
                if let (Some(pname), Some(port)) =
                    (p.name.clone().filter(|n| !n.is_empty()), p.port.and_then(|p| u16::try_from(p).ok()))
                {
                    svc.endpoint_ports
                        .insert((pname, p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase()), port);
                }
            }
            for e in &slice.endpoints {
                if !e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) {
                    continue;
                }
                let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else { continue };
                if svc.endpoints.iter().any(|(x, _)| *x == ip) {
                    continue;
                }
                let hostname = e.hostname.clone().filter(|h| !h.is_empty()).map(|h| h.to_ascii_lowercase());
                if let Some(h) = &hostname {
                    zone.ptr.insert(ip, format!("{h}.{svc_name}.{ns}.svc.{domain}"));
                }
                svc.endpoints.push((ip, hostname));
            }
        }
        for svc in zone.services.values_mut() {
            svc.endpoints.sort();
        }
        zone
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The zone's SOA record, for negative answers.
    pub fn soa(&self) -> Option<Record> {
        let soa = SOA::new(
            name(&format!("ns.dns.{}", self.domain))?,
            name(&format!("hostmaster.{}", self.domain))?,
            1,
            7200,
            1800,
            86400,
            TTL_SECONDS,
        );
        record(&self.domain, RData::SOA(soa))
    }

    /// The answer for `qname` (any case, with or without the final dot) and `qtype`.
    pub fn answer(&self, qname: &str, qtype: RecordType) -> Answer {
        let q = qname.trim_end_matches('.').to_ascii_lowercase();
        if let Some(rev) = q.strip_suffix(".in-addr.arpa") {
            return self.reverse(&q, rev, qtype);
        }
        let Some(rest) =
            q.strip_suffix(&self.domain).and_then(|r| if r.is_empty() { Some("") } else { r.strip_suffix('.') })
        else {
            return Answer::Outside;
        };
        let labels: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('.').collect() };
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] => Answer::NoData,
            [ns, "svc"] | [ns, "pod"] => {
                if self.namespaces.contains(*ns) {
                    Answer::NoData
                } else {
                    Answer::NxDomain
                }
            }
            [svc, ns, "svc"] => self.service(&q, ns, svc, qtype),
            [first, svc, ns, "svc"] => self.endpoint(&q, ns, svc, first, qtype),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(&q, ns, svc, &port[1..], &proto[1..], qtype)
            }
            [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
                Ok(addr) if qtype == RecordType::A => self.a(&q, &[addr]),
                Ok(_) => Answer::NoData,
                Err(_) => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    fn a(&self, owner: &str, ips: &[Ipv4Addr]) -> Answer {
        Answer::Records(ips.iter().filter_map(|ip| record(owner, RData::A(A(*ip)))).collect(), Vec::new())
    }

    fn service(&self, q: &str, ns: &str, svc: &str, qtype: RecordType) -> Answer {
        let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else { return Answer::NxDomain };
        if let Some(target) = &s.external_name {
            return match name(target) {
                Some(t) => Answer::Records(record(q, RData::CNAME(CNAME(t))).into_iter().collect(), Vec::new()),
                None => Answer::NxDomain,
            };
        }
        let ips: Vec<Ipv4Addr> = if s.cluster_ips.is_empty() {
            s.endpoints.iter().map(|(ip, _)| *ip).collect()
        } else {
            s.cluster_ips.clone()
        };
        match qtype {
            RecordType::A | RecordType::ANY if !ips.is_empty() => self.a(q, &ips),
            _ => Answer::NoData,
        }
    }

    fn endpoint(&self, q: &str, ns: &str, svc: &str, first: &str, qtype: RecordType) -> Answer {
        let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else { return Answer::NxDomain };
        let found = s.endpoints.iter().find(|(ip, host)| host.as_deref() == Some(first) || dashed(*ip) == first);
        match (found, qtype) {
            (Some((ip, _)), RecordType::A | RecordType::ANY) => self.a(q, &[*ip]),
            (Some(_), _) => Answer::NoData,
            (None, _) => Answer::NxDomain,
        }
    }

    fn srv(&self, q: &str, ns: &str, svc: &str, port: &str, proto: &str, qtype: RecordType) -> Answer {
        let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else { return Answer::NxDomain };
        let Some((_, _, svc_port)) = s.ports.iter().find(|(n, p, _)| n == port && p == proto) else {
            return Answer::NxDomain;
        };
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Answer::NoData;
        }
        let service_name = format!("{svc}.{ns}.svc.{}", self.domain);
        if !s.cluster_ips.is_empty() {
            let answers = name(&service_name)
                .and_then(|t| record(q, RData::SRV(SRV::new(0, 100, *svc_port, t))))
                .into_iter()
                .collect();
            let extra = s.cluster_ips.iter().filter_map(|ip| record(&service_name, RData::A(A(*ip)))).collect();
            return Answer::Records(answers, extra);
        }
        // Headless: one record per endpoint, at the endpoint's port for this port name.
        let Some(port) = s.endpoint_ports.get(&(port.to_string(), proto.to_string())) else { return Answer::NoData };
        let weight = (100 / s.endpoints.len().max(1)) as u16;
        let (mut answers, mut extra) = (Vec::new(), Vec::new());
        for (ip, host) in &s.endpoints {
            let target = format!("{}.{service_name}", host.clone().unwrap_or_else(|| dashed(*ip)));
            answers.extend(name(&target).and_then(|t| record(q, RData::SRV(SRV::new(0, weight, *port, t)))));
            extra.extend(record(&target, RData::A(A(*ip))));
        }
        Answer::Records(answers, extra)
    }

    fn reverse(&self, q: &str, rev: &str, qtype: RecordType) -> Answer {
        let octets: Vec<&str> = rev.split('.').collect();
        let ip = (octets.len() == 4)
            .then(|| format!("{}.{}.{}.{}", octets[3], octets[2], octets[1], octets[0]).parse::<Ipv4Addr>().ok())
            .flatten();
        match ip.and_then(|ip| self.ptr.get(&ip)) {
            Some(target) if qtype == RecordType::PTR || qtype == RecordType::ANY => match name(target) {
                Some(t) => Answer::Records(record(q, RData::PTR(PTR(t))).into_iter().collect(), Vec::new()),
                None => Answer::NxDomain,
            },
            Some(_) => Answer::NoData,
            None => Answer::Outside,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
                .unwrap(),
        )
    }

    fn slice(ns: &str, svc: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": format!("{svc}-abc"), "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            }))
            .unwrap(),
        )
    }

    fn zone() -> Zone {
        let services = vec![
            service(
                "default",
                "web",
                serde_json::json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
            ),
            service("db", "pg", serde_json::json!({"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]})),
            service("default", "out", serde_json::json!({"type": "ExternalName", "externalName": "example.org"})),
        ];
        let slices = vec![slice(
            "db",
            "pg",
            serde_json::json!([
                {"addresses": ["10.244.0.7"], "hostname": "pg-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.8"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.9"], "hostname": "pg-2", "conditions": {"ready": false}},
            ]),
            serde_json::json!([{"name": "sql", "port": 5433, "protocol": "TCP"}]),
        )];
        Zone::build("cluster.local", &services, &slices)
    }

    fn addresses(a: &Answer) -> Vec<String> {
        match a {
            Answer::Records(r, _) => r.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_resolve_to_cluster_ips_and_headless_ones_to_ready_endpoints() {
        let z = zone();
        assert_eq!(addresses(&z.answer("web.default.svc.cluster.local.", RecordType::A)), ["10.96.0.20"]);
        assert_eq!(
            addresses(&z.answer("WEB.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.20"],
            "names are case-insensitive"
        );
        assert_eq!(addresses(&z.answer("pg.db.svc.cluster.local.", RecordType::A)), ["10.244.0.7", "10.244.1.8"]);
        assert_eq!(addresses(&z.answer("pg-0.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.0.7"]);
        assert_eq!(addresses(&z.answer("10-244-1-8.pg.db.svc.cluster.local.", RecordType::A)), ["10.244.1.8"]);
        assert_eq!(z.answer("pg-2.pg.db.svc.cluster.local.", RecordType::A), Answer::NxDomain, "not ready");
        assert_eq!(z.answer("web.default.svc.cluster.local.", RecordType::AAAA), Answer::NoData);
        assert_eq!(z.answer("nope.default.svc.cluster.local.", RecordType::A), Answer::NxDomain);
        assert_eq!(z.answer("default.svc.cluster.local.", RecordType::A), Answer::NoData);
        assert_eq!(z.answer("example.org.", RecordType::A), Answer::Outside);
        assert_eq!(addresses(&z.answer("out.default.svc.cluster.local.", RecordType::A)), ["example.org."]);
        assert_eq!(addresses(&z.answer("10-1-2-3.default.pod.cluster.local.", RecordType::A)), ["10.1.2.3"]);
    }

    #[test]
    fn named_ports_have_srv_records_and_addresses_have_ptr_records() {
        let z = zone();
        let Answer::Records(srv, extra) = z.answer("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV) else {
            panic!()
        };
        assert_eq!(srv[0].data.to_string(), "0 100 80 web.default.svc.cluster.local.");
        assert_eq!(extra[0].data.to_string(), "10.96.0.20");
        let Answer::Records(srv, _) = z.answer("_sql._tcp.pg.db.svc.cluster.local.", RecordType::SRV) else { panic!() };
        let targets: Vec<String> = srv.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(
            targets,
            ["0 50 5433 pg-0.pg.db.svc.cluster.local.", "0 50 5433 10-244-1-8.pg.db.svc.cluster.local."]
        );
        assert_eq!(z.answer("_sql._udp.pg.db.svc.cluster.local.", RecordType::SRV), Answer::NxDomain);
        assert_eq!(
            addresses(&z.answer("20.0.96.10.in-addr.arpa.", RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            addresses(&z.answer("7.0.244.10.in-addr.arpa.", RecordType::PTR)),
            ["pg-0.pg.db.svc.cluster.local."]
        );
        assert_eq!(z.answer("1.1.168.192.in-addr.arpa.", RecordType::PTR), Answer::Outside);
    }
}
