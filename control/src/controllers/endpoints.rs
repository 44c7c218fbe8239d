//! The endpoints and endpointslice controllers (Kubernetes' `endpoint` and `endpointslice`): for
//! every Service with a selector, the pods it selects as addresses — ready ones, not-ready ones
//! (or all as ready with `publishNotReadyAddresses`), terminating ones in slices with their
//! conditions — with each service port's `targetPort` resolved per pod (a name through the pod's
//! container ports). Endpoints are one object per service; EndpointSlices hold at most
//! `ENDPOINTS_PER_SLICE_MAX` endpoints each, one group of slices per distinct port mapping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};

use super::informer::{key_of, split_key, Change, Informer};
use super::pods::{self, controller_ref, is_ready};
use super::queue::WorkQueue;
use super::{Controller, Manager};

/// Endpoints in one EndpointSlice at most (Kubernetes' default `--max-endpoints-per-slice`).
pub const ENDPOINTS_PER_SLICE_MAX: usize = 100;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The service's selector, if it has a non-empty one (services without one are managed by hand).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    selector(svc).is_some_and(|sel| {
        let labels = pods::labels(&pod.metadata);
        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    })
}

/// The port number `port`'s targetPort means on `pod` (Kubernetes' FindPort): a number as it is,
/// a name through the pod's container ports of the same protocol.
pub fn resolve_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            })
        }
    }
}

/// Whether a selected pod has an endpoint at all: it has an address and has not finished; one
/// being deleted only where terminating endpoints are wanted.
fn has_endpoint(pod: &Pod, include_terminating: bool) -> bool {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).unwrap_or("");
    !ip.is_empty()
        && !matches!(pods::phase(pod), "Succeeded" | "Failed")
        && (include_terminating || pod.metadata.deletion_timestamp.is_none())
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// A pod's DNS hostname under the service, when the pod names this service as its subdomain.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| spec.hostname.clone()).flatten()
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true)
}

fn service_ports(svc: &Service) -> Vec<ServicePort> {
    svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default()
}

/// The labels a service's endpoints carry: the service's own, and whether it is headless.
fn endpoint_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// The Endpoints subsets for `svc` over the pods it selects (Kubernetes' packing: addresses
/// grouped by the ports they serve, ports grouped by the addresses serving them).
pub fn subsets(svc: &Service, selected: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let tolerate = publish_not_ready(svc);
    let ports = service_ports(svc);
    // Per port: ready and not-ready addresses (by IP, so the result is in a stable order).
    let mut per_port: BTreeMap<
        (String, i32, String),
        (BTreeMap<String, EndpointAddress>, BTreeMap<String, EndpointAddress>),
    > = BTreeMap::new();
    let mut portless: (BTreeMap<String, EndpointAddress>, BTreeMap<String, EndpointAddress>) = Default::default();
    for pod in selected.iter().filter(|p| has_endpoint(p, false)) {
        let address = EndpointAddress {
            ip: pod_ip(pod),
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
        };
        let ready = tolerate || is_ready(pod);
        if ports.is_empty() {
            let side = if ready { &mut portless.0 } else { &mut portless.1 };
            side.insert(address.ip.clone(), address);
            continue;
        }
        for sp in &ports {
            let Some(n) = resolve_port(sp, pod) else { continue };
            let key = (sp.name.clone().unwrap_or_default(), n, sp.protocol.clone().unwrap_or_else(|| "TCP".into()));
            let entry = per_port.entry(key).or_default();
            let side = if ready { &mut entry.0 } else { &mut entry.1 };
            side.insert(address.ip.clone(), address.clone());
        }
    }
    let as_list =
        |m: &BTreeMap<String, EndpointAddress>| (!m.is_empty()).then(|| m.values().cloned().collect::<Vec<_>>());
    if ports.is_empty() {
        if portless.0.is_empty() && portless.1.is_empty() {
            return Vec::new();
        }
        return vec![EndpointSubset {
            addresses: as_list(&portless.0),
            not_ready_addresses: as_list(&portless.1),
            ports: None,
        }];
    }
    // Ports served by the same addresses share a subset.
    let mut groups: BTreeMap<(Vec<String>, Vec<String>), Vec<EndpointPort>> = BTreeMap::new();
    let mut addresses: BTreeMap<
        (Vec<String>, Vec<String>),
        (Option<Vec<EndpointAddress>>, Option<Vec<EndpointAddress>>),
    > = BTreeMap::new();
    for ((name, port, protocol), (ready, not_ready)) in &per_port {
        let key = (ready.keys().cloned().collect(), not_ready.keys().cloned().collect());
        let app_protocol =
            ports.iter().find(|p| p.name.clone().unwrap_or_default() == *name).and_then(|p| p.app_protocol.clone());
        groups.entry(key.clone()).or_default().push(EndpointPort {
            name: (!name.is_empty()).then(|| name.clone()),
            port: *port,
            protocol: Some(protocol.clone()),
            app_protocol,
        });
        addresses.entry(key).or_insert_with(|| (as_list(ready), as_list(not_ready)));
    }
    groups
        .into_iter()
        .map(|(key, ports)| {
            let (ready, not_ready) = addresses.remove(&key).unwrap_or_default();
            EndpointSubset { addresses: ready, not_ready_addresses: not_ready, ports: Some(ports) }
        })
        .collect()
}

/// The endpoints of `svc`'s slices, grouped by the ports they serve (Kubernetes' endpointslice
/// reconciler): each pod's endpoint with ready, serving and terminating conditions.
pub fn slice_groups(
    svc: &Service,
    selected: &[Arc<Pod>],
    zone_of: impl Fn(&str) -> Option<String>,
) -> Vec<(Vec<SlicePort>, Vec<Endpoint>)> {
    let tolerate = publish_not_ready(svc);
    let ports = service_ports(svc);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, (Vec<SlicePort>, BTreeMap<String, Endpoint>)> =
        BTreeMap::new();
    for pod in selected.iter().filter(|p| has_endpoint(p, true)) {
        let mut resolved = Vec::new();
        let mut slice_ports = Vec::new();
        for sp in &ports {
            let Some(n) = resolve_port(sp, pod) else { continue };
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            resolved.push((sp.name.clone().unwrap_or_default(), n, protocol.clone()));
            slice_ports.push(SlicePort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(n),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            });
        }
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = tolerate || is_ready(pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let endpoint = Endpoint {
            addresses: vec![pod_ip(pod)],
            conditions: Some(EndpointConditions {
                ready: Some(serving && !terminating),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname(svc, pod),
            zone: node.as_deref().and_then(&zone_of),
            node_name: node,
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        };
        groups.entry(resolved).or_insert_with(|| (slice_ports, BTreeMap::new())).1.insert(pod_ip(pod), endpoint);
    }
    groups.into_values().map(|(ports, eps)| (ports, eps.into_values().collect())).collect()
}

/// Registers the handlers both controllers share: a service's changes queue it; a pod's queue
/// every service that selects it (before or after the change).
fn watch_services_and_pods(
    queue: std::sync::Weak<impl Controller>,
    services: &Arc<Informer<Service>>,
    pods: &Arc<Informer<Pod>>,
) {
    let q = queue.clone();
    services.on(move |change| {
        let Some(c) = q.upgrade() else { return };
        match change {
            Change::Added(s) | Change::Deleted(s) | Change::Updated { new: s, .. } => {
                c.queue().add(&key_of(s.as_ref()))
            }
        }
    });
    let svcs = services.clone();
    pods.on(move |change| {
        let Some(c) = queue.upgrade() else { return };
        let (old, new): (Option<&Pod>, &Pod) = match change {
            Change::Added(p) | Change::Deleted(p) => (None, p),
            Change::Updated { old, new } => {
                if old.metadata.resource_version == new.metadata.resource_version {
                    return;
                }
                (Some(old), new)
            }
        };
        let mut keys = BTreeSet::new();
        for svc in svcs.list_namespace(new.metadata.namespace.as_deref().unwrap_or("")) {
            if selects(&svc, new) || old.is_some_and(|o| selects(&svc, o)) {
                keys.insert(key_of(svc.as_ref()));
            }
        }
        for k in keys {
            c.queue().add(&k);
        }
    });
}

fn selected_pods(pods: &Informer<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    pods.list_namespace(svc.metadata.namespace.as_deref().unwrap_or(""))
        .into_iter()
        .filter(|p| selects(svc, p))
        .collect()
}

pub struct EndpointsController {
    client: kube::Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    endpoints: Arc<Informer<Endpoints>>,
    queue: WorkQueue,
}

impl EndpointsController {
    pub fn new(m: &Manager) -> Arc<EndpointsController> {
        let c = Arc::new(EndpointsController {
            client: m.client.clone(),
            services: m.informers.services(),
            pods: m.informers.pods(),
            endpoints: m.informers.endpoints(),
            queue: WorkQueue::new(),
        });
        watch_services_and_pods(Arc::downgrade(&c), &c.services, &c.pods);
        c
    }
}

impl Controller for EndpointsController {
    const NAME: &'static str = "endpoint";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let (ns, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = self.services.get(ns, name) else {
            // The service is gone: so are its endpoints.
            if self.endpoints.get(ns, name).is_some() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        };
        if selector(&svc).is_none() {
            return Ok(());
        }
        let subsets = subsets(&svc, &selected_pods(&self.pods, &svc));
        let labels = endpoint_labels(&svc);
        let existing = self.endpoints.get(ns, name);
        if let Some(e) = &existing {
            if e.subsets.clone().unwrap_or_default() == subsets
                && e.metadata.labels.clone().unwrap_or_default() == labels
            {
                return Ok(());
            }
        }
        let mut desired = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels),
                ..Default::default()
            },
            subsets: (!subsets.is_empty()).then_some(subsets),
        };
        match existing {
            Some(e) => {
                desired.metadata.resource_version = e.metadata.resource_version.clone();
                desired.metadata.annotations = e.metadata.annotations.clone();
                api.replace(name, &PostParams::default(), &desired).await?;
            }
            None => match api.create(&PostParams::default(), &desired).await {
                Ok(_) => {}
                // Made meanwhile (by a previous leader): the watch brings it, and this key again.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }
}

pub struct EndpointSliceController {
    client: kube::Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    slices: Arc<Informer<EndpointSlice>>,
    queue: WorkQueue,
}

impl EndpointSliceController {
    pub fn new(m: &Manager) -> Arc<EndpointSliceController> {
        let c = Arc::new(EndpointSliceController {
            client: m.client.clone(),
            services: m.informers.services(),
            pods: m.informers.pods(),
            nodes: m.informers.nodes(),
            slices: m.informers.endpointslices(),
            queue: WorkQueue::new(),
        });
        watch_services_and_pods(Arc::downgrade(&c), &c.services, &c.pods);
        // A slice changed or removed by someone else is put back.
        let weak = Arc::downgrade(&c);
        c.slices.on(move |change| {
            let Some(c) = weak.upgrade() else { return };
            let (Change::Added(s) | Change::Deleted(s) | Change::Updated { new: s, .. }) = change;
            let labels = pods::labels(&s.metadata);
            if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) {
                if let Some(svc) = labels.get(SERVICE_NAME_LABEL) {
                    c.queue.add(&format!("{}/{svc}", s.metadata.namespace.as_deref().unwrap_or("")));
                }
            }
        });
        c
    }

    fn zone(&self, node: &str) -> Option<String> {
        self.nodes.get("", node)?.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone").cloned()
    }
}

fn slice_ports_key(ports: &[SlicePort]) -> Vec<(Option<String>, Option<i32>, Option<String>)> {
    let mut k: Vec<_> = ports.iter().map(|p| (p.name.clone(), p.port, p.protocol.clone())).collect();
    k.sort();
    k
}

impl Controller for EndpointSliceController {
    const NAME: &'static str = "endpointslice";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, key: &str) -> anyhow::Result<()> {
        let (ns, name) = split_key(key);
        // A deleted service's slices are its dependents: the garbage collector takes them.
        let Some(svc) = self.services.get(ns, name) else { return Ok(()) };
        if selector(&svc).is_none() {
            return Ok(());
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let mut existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .list_namespace(ns)
            .into_iter()
            .filter(|s| {
                let l = pods::labels(&s.metadata);
                l.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                    && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            })
            .collect();
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut labels = endpoint_labels(&svc);
        labels.insert(SERVICE_NAME_LABEL.into(), name.into());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let groups = slice_groups(&svc, &selected_pods(&self.pods, &svc), |n| self.zone(n));
        let mut desired: Vec<(Vec<SlicePort>, Vec<Endpoint>)> = Vec::new();
        for (ports, endpoints) in groups {
            for chunk in endpoints.chunks(ENDPOINTS_PER_SLICE_MAX) {
                desired.push((ports.clone(), chunk.to_vec()));
            }
        }
        // A service selecting nothing still has one (empty) slice, as Kubernetes keeps one.
        if desired.is_empty() {
            let ports: Vec<SlicePort> = service_ports(&svc)
                .iter()
                .map(|p| SlicePort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: None,
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect();
            desired.push((ports, Vec::new()));
        }
        let mut unused: Vec<Arc<EndpointSlice>> = existing;
        for (ports, endpoints) in desired {
            // Reuse a slice of the same ports if there is one.
            let reuse = unused
                .iter()
                .position(|s| slice_ports_key(s.ports.as_deref().unwrap_or_default()) == slice_ports_key(&ports));
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.into()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![controller_ref(svc.as_ref())]),
                    ..Default::default()
                },
                address_type: if endpoints.iter().any(|e| e.addresses.iter().any(|a| a.contains(':'))) {
                    "IPv6".into()
                } else {
                    "IPv4".into()
                },
                endpoints,
                ports: Some(ports),
            };
            match reuse {
                Some(i) => {
                    let old = unused.remove(i);
                    if old.endpoints == slice.endpoints
                        && old.ports == slice.ports
                        && old.metadata.labels.as_ref() == Some(&labels)
                    {
                        continue;
                    }
                    let mut updated = slice;
                    updated.metadata.name = old.metadata.name.clone();
                    updated.metadata.generate_name = None;
                    updated.metadata.resource_version = old.metadata.resource_version.clone();
                    updated.address_type = old.address_type.clone();
                    api.replace(old.metadata.name.as_deref().unwrap_or(""), &PostParams::default(), &updated).await?;
                }
                None => {
                    api.create(&PostParams::default(), &slice).await?;
                }
            }
        }
        for s in unused {
            match api.delete(s.metadata.name.as_deref().unwrap_or(""), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ports: serde_json::Value, extra: serde_json::Value) -> Service {
        let mut v = json!({"metadata": {"name": "web", "namespace": "ns", "labels": {"team": "a"}},
                           "spec": {"selector": {"app": "web"}, "ports": ports}});
        if let Some(m) = extra.as_object() {
            for (k, x) in m {
                v["spec"][k] = x.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, named_port: Option<i32>, deleting: bool) -> Arc<Pod> {
        let ports = named_port.map(|p| json!([{"name": "http", "containerPort": p}])).unwrap_or(json!([]));
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        a.iter().flatten().map(|x| x.ip.as_str()).collect()
    }

    #[test]
    fn subsets_group_addresses_by_the_ports_they_serve() {
        let s = svc(
            json!([{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090, "targetPort": 9090}]),
            json!({}),
        );
        let pods = vec![
            pod("a", "10.0.0.2", true, Some(8080), false),
            pod("b", "10.0.0.1", false, Some(8080), false),
            // No port named "http": only the metrics port.
            pod("c", "10.0.0.3", true, None, false),
            pod("gone", "10.0.0.4", true, Some(8080), true),
            pod("no-ip", "", true, Some(8080), false),
        ];
        let subsets = subsets(&s, &pods);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let http = subsets.iter().find(|s| s.ports.as_ref().unwrap()[0].name.as_deref() == Some("http")).unwrap();
        assert_eq!(http.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(ips(&http.addresses), vec!["10.0.0.2"]);
        assert_eq!(ips(&http.not_ready_addresses), vec!["10.0.0.1"]);
        let metrics = subsets.iter().find(|s| s.ports.as_ref().unwrap()[0].name.as_deref() == Some("metrics")).unwrap();
        assert_eq!(ips(&metrics.addresses), vec!["10.0.0.2", "10.0.0.3"]);
        // publishNotReadyAddresses: every address counts as ready.
        let tolerant =
            svc(json!([{"name": "http", "port": 80, "targetPort": "http"}]), json!({"publishNotReadyAddresses": true}));
        let all = super::subsets(&tolerant, &pods);
        assert_eq!(ips(&all[0].addresses), vec!["10.0.0.1", "10.0.0.2"]);
        assert!(all[0].not_ready_addresses.is_none());
    }

    #[test]
    fn slices_carry_conditions_and_terminating_endpoints() {
        let s = svc(json!([{"name": "http", "port": 80, "targetPort": "http"}]), json!({}));
        let pods = vec![
            pod("a", "10.0.0.2", true, Some(8080), false),
            pod("b", "10.0.0.1", false, Some(8080), false),
            pod("t", "10.0.0.9", true, Some(8080), true),
        ];
        let groups = slice_groups(&s, &pods, |_| Some("z1".to_string()));
        assert_eq!(groups.len(), 1);
        let (ports, eps) = &groups[0];
        assert_eq!(ports[0].port, Some(8080));
        let cond = |ip: &str| {
            let e = eps.iter().find(|e| e.addresses[0] == ip).unwrap();
            let c = e.conditions.clone().unwrap();
            (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap(), e.zone.clone())
        };
        assert_eq!(cond("10.0.0.2"), (true, true, false, Some("z1".into())));
        assert_eq!(cond("10.0.0.1"), (false, false, false, Some("z1".into())));
        assert_eq!(cond("10.0.0.9"), (false, true, true, Some("z1".into())), "terminating but still serving");
    }
}
