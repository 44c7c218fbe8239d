//! Cluster DNS, run by every API server process (`keelson server`, `keelson up`): answers for
//! the cluster's names from watches of Services and EndpointSlices (never a store read per
//! query), other names forwarded to the node's resolvers. Each server publishes itself as an
//! endpoint of the `kube-dns` Service in `kube-system`, a selectorless service at the
//! well-known cluster IP, so that pods reach whichever servers run through the service proxy.

pub mod records;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use hickory_proto::op::{Message, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;

use records::{Answer, Zone};

/// The Service pods resolve through, and its namespace (Kubernetes' names).
pub const SERVICE_NAME: &str = "kube-dns";
pub const NAMESPACE: &str = "kube-system";
/// Who writes the DNS servers' EndpointSlices (the endpointslice controller leaves them alone).
const MANAGED_BY: &str = "keelson-dns";
/// How often a server writes its endpoint again (repairing a deleted Service or slice).
const PUBLISH_PERIOD: Duration = Duration::from_secs(30);
/// A server's EndpointSlice not renewed for this long is a stopped server's, and any server
/// removes it.
const PUBLISHED_STALE_AFTER: Duration = Duration::from_secs(90);
/// The annotation with the time a server last renewed its EndpointSlice (RFC 3339).
const RENEWED_ANNOTATION: &str = "dns.keelson.io/renewed";
/// How soon a publication that failed is tried again.
const PUBLISH_RETRY: Duration = Duration::from_secs(1);
/// How long an upstream resolver gets to answer a forwarded query.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle TCP connection is closed after this.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSES_QUEUED_MAX: usize = 32;
/// Forwarded queries awaiting an upstream at once; past this a query is answered SERVFAIL at
/// once (the server spawns a task per UDP query, so this bounds the tasks that wait).
const FORWARDS_IN_FLIGHT_MAX: usize = 256;
/// Ports tried for a listener on port 0.
const BIND_ATTEMPTS_MAX: usize = 16;
/// The largest answer a forwarded query may get over UDP, in bytes (EDNS's usual maximum).
const UDP_ANSWER_BYTES_MAX: usize = 4096;

/// Where pods reach this server.
#[derive(Debug, Clone)]
pub enum Advertise {
    Address(Ipv4Addr),
    /// The node's InternalIP, or when that is loopback, its pod range's gateway (the first
    /// address, the CNI bridge's): `keelson up`, where the server and the node are one host.
    Node(String),
}

#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The cluster's domain, e.g. `cluster.local`.
    pub domain: String,
    /// The `kube-dns` Service's cluster IP.
    pub service_ip: Ipv4Addr,
    pub listen: SocketAddr,
    pub advertise: Advertise,
    /// Resolvers for names outside the cluster's domain.
    pub upstreams: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf (port 53), as forwarding targets.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The `kube-dns` Service's conventional address: the tenth of the service range.
pub fn default_service_ip(service_cidr: &str) -> anyhow::Result<Ipv4Addr> {
    service_range_address(service_cidr, 10)
}

/// The `n`th address of the (first) service range: the first is the `kubernetes` Service's.
pub fn service_range_address(service_cidr: &str, n: u32) -> anyhow::Result<Ipv4Addr> {
    let first = service_cidr.split(',').next().unwrap_or_default().trim();
    let (base, _) = first.split_once('/').with_context(|| format!("{first:?} is not an IPv4 CIDR"))?;
    let base: Ipv4Addr = base.parse().with_context(|| format!("{first:?} is not an IPv4 CIDR"))?;
    Ok(Ipv4Addr::from(u32::from(base) + n))
}

struct Handler {
    zone: Arc<RwLock<Arc<Zone>>>,
    upstreams: Vec<SocketAddr>,
    forwards: tokio::sync::Semaphore,
}

/// Sends `raw` to the upstreams in turn; the first answer.
async fn forward(upstreams: &[SocketAddr], raw: &[u8]) -> Option<Message> {
    for up in upstreams {
        let local: SocketAddr =
            if up.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let Ok(socket) = tokio::net::UdpSocket::bind(local).await else { continue };
        if socket.send_to(raw, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; UDP_ANSWER_BYTES_MAX];
        match tokio::time::timeout(FORWARD_TIMEOUT, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == *up => match Message::from_vec(&buf[..n]) {
                Ok(m) => return Some(m),
                Err(e) => tracing::debug!(upstream = %up, error = %e, "an upstream's answer does not parse"),
            },
            _ => tracing::debug!(upstream = %up, "no answer from an upstream resolver"),
        }
    }
    None
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let Some(query) = request.queries.queries().first() else {
            metadata.response_code = ResponseCode::FormErr;
            return send(&mut response, builder.build_no_records(metadata)).await;
        };
        let zone = self.zone.read().map(|z| z.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        let qname = query.name().to_string();
        let answer = zone.answer(&qname, query.query_type());
        let soa: Vec<Record> = zone.soa().into_iter().collect();
        metadata.authoritative = true;
        match answer {
            Answer::Records(answers, additionals) => {
                send(&mut response, builder.build(metadata, answers.iter(), [], [], additionals.iter())).await
            }
            Answer::NoData => send(&mut response, builder.build(metadata, [], soa.iter(), [], [])).await,
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                send(&mut response, builder.build(metadata, [], soa.iter(), [], [])).await
            }
            Answer::Outside => {
                metadata.authoritative = false;
                metadata.recursion_available = true;
                let answer = match self.forwards.try_acquire() {
                    Ok(_permit) => forward(&self.upstreams, request.as_slice()).await,
                    Err(_) => None,
                };
                match answer {
                    Some(m) => {
                        metadata.response_code = m.metadata.response_code;
                        send(
                            &mut response,
                            builder.build(metadata, m.answers.iter(), m.authorities.iter(), [], m.additionals.iter()),
                        )
                        .await
                    }
                    None => {
                        metadata.response_code = ResponseCode::ServFail;
                        send(&mut response, builder.build_no_records(metadata)).await
                    }
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let metadata = *message.metadata();
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "a DNS answer was not sent");
            let mut failed = metadata;
            failed.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header { metadata: failed, counts: Default::default() }.into()
        }
    }
}

/// Where pods reach this server now, if it can be told yet.
async fn advertised(client: &kube::Client, advertise: &Advertise) -> anyhow::Result<Ipv4Addr> {
    match advertise {
        Advertise::Address(ip) => Ok(*ip),
        Advertise::Node(name) => {
            let node =
                Api::<Node>::all(client.clone()).get(name).await.with_context(|| format!("reading node {name}"))?;
            let internal = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
            if let Some(ip) = internal.filter(|ip| !ip.is_loopback()) {
                return Ok(ip);
            }
            let cidr = node
                .spec
                .and_then(|s| s.pod_cidr)
                .with_context(|| format!("node {name} has neither a routable InternalIP nor a pod range yet"))?;
            let base: Ipv4Addr = cidr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("node {name}'s pod range {cidr:?}"))?;
            Ok(Ipv4Addr::from(u32::from(base) + 1))
        }
    }
}

fn slice_name(ip: Ipv4Addr, port: u16) -> String {
    format!("{SERVICE_NAME}-{}-{port}", ip.to_string().replace('.', "-"))
}

/// Writes the `kube-dns` Service (unless it exists) and this server's EndpointSlice.
async fn publish(client: &kube::Client, options: &DnsOptions, ip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    if services.get_opt(SERVICE_NAME).await.context("reading the kube-dns Service")?.is_none() {
        let svc = serde_json::json!({
            "metadata": {"name": SERVICE_NAME, "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "KeelsonDNS"}},
            "spec": {
                "clusterIP": options.service_ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port},
                ],
            },
        });
        let svc: Service = serde_json::from_value(svc)?;
        match services.create(&Default::default(), &svc).await {
            Ok(_) => tracing::info!(ip = %options.service_ip, "created the kube-dns Service"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("creating the kube-dns Service"),
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(ip, port),
            "namespace": NAMESPACE,
            "annotations": {RENEWED_ANNOTATION: chrono::Utc::now().to_rfc3339()},
            "labels": {"kubernetes.io/service-name": SERVICE_NAME, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [
            {"name": "dns", "port": port, "protocol": "UDP"},
            {"name": "dns-tcp", "port": port, "protocol": "TCP"},
        ],
    });
    slices
        .patch(&slice_name(ip, port), &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(&slice))
        .await
        .context("writing the DNS server's EndpointSlice")?;
    // Servers that stopped without withdrawing (killed) leave slices no one renews.
    let ours = kube::api::ListParams::default().labels(&format!("endpointslice.kubernetes.io/managed-by={MANAGED_BY}"));
    for s in slices.list(&ours).await.context("listing the DNS servers' EndpointSlices")?.items {
        let renewed = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RENEWED_ANNOTATION))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let stale = renewed.is_none_or(|t| {
            chrono::Utc::now().signed_duration_since(t).to_std().is_ok_and(|age| age > PUBLISHED_STALE_AFTER)
        });
        if let (true, Some(name)) = (stale, s.metadata.name.as_deref()) {
            tracing::info!(slice = name, "removing a stopped DNS server's endpoint");
            if let Err(e) = slices.delete(name, &DeleteParams::default()).await {
                tracing::debug!(error = %e, "a stale DNS endpoint was not removed");
            }
        }
    }
    Ok(())
}

/// Binds UDP and TCP on one port. With port 0 that is a free port for both: the TCP listener
/// takes one, and if some UDP socket holds it already, another is tried.
async fn bind(listen: SocketAddr) -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr)> {
    for _ in 0..BIND_ATTEMPTS_MAX {
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cluster DNS cannot listen on {listen} (TCP)"))?;
        let addr = tcp.local_addr()?;
        let udp = match addr {
            SocketAddr::V4(v4) => udp_socket(v4, false).and_then(tokio::net::UdpSocket::from_std),
            SocketAddr::V6(_) => tokio::net::UdpSocket::bind(addr).await,
        };
        match udp {
            Ok(udp) => return Ok((udp, tcp, addr)),
            Err(e) if listen.port() != 0 => {
                return Err(e).with_context(|| format!("cluster DNS cannot listen on {addr} (UDP)"))
            }
            Err(_) => continue,
        }
    }
    anyhow::bail!(
        "cluster DNS found no port free for both UDP and TCP on {} after {BIND_ATTEMPTS_MAX} tries",
        listen.ip()
    )
}

/// A non-blocking UDP socket on `addr` that shares its port with the server's other sockets
/// (SO_REUSEADDR on each). With `freebind` the address need not be on this host yet (the pods'
/// bridge comes with the first pod).
fn udp_socket(addr: std::net::SocketAddrV4, freebind: bool) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket has no preconditions; the descriptor it returns is owned by `socket` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket no one else owns.
    let socket = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let mut options = vec![(libc::SOL_SOCKET, libc::SO_REUSEADDR)];
    if freebind {
        options.push((libc::IPPROTO_IP, libc::IP_FREEBIND));
    }
    for (level, name) in options {
        // SAFETY: the option value is a live c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in of the length given.
    let r = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// Serves cluster DNS until `stop` resolves; then withdraws this server's endpoint.
pub async fn run(
    client: kube::Client,
    options: DnsOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (udp, tcp, addr) = bind(options.listen).await?;
    let zone = Arc::new(RwLock::new(Arc::new(Zone::build(&options.domain, &[], &[]))));
    let mut server = hickory_server::Server::new(Handler {
        zone: zone.clone(),
        upstreams: options.upstreams.clone(),
        forwards: tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT_MAX),
    });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSES_QUEUED_MAX);
    tracing::info!(listen = %addr, domain = %options.domain, upstreams = ?options.upstreams, "cluster DNS serves");

    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let service_events = reflector::reflector(
        services_writer,
        watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let slice_events = reflector::reflector(
        slices_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    tokio::pin!(service_events, slice_events, stop);
    // Changes not yet in the zone: it is rebuilt (every service and slice) once they settle.
    let mut dirty = agent::client::Settling::default();
    let mut published: Option<Ipv4Addr> = None;
    // Addresses with a UDP socket of their own beside the wildcard one.
    let mut bound: Vec<Ipv4Addr> = Vec::new();
    let mut publish_at = tokio::time::Instant::now();
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            e = service_events.next() => match agent::client::store_changed(e, "service") {
                Ok(true) => dirty.changed(),
                Ok(false) => {}
                Err(e) => break Err(e),
            },
            e = slice_events.next() => match agent::client::store_changed(e, "endpointslice") {
                Ok(true) => dirty.changed(),
                Ok(false) => {}
                Err(e) => break Err(e),
            },
            _ = dirty.wait(), if dirty.due_at().is_some() => {
                dirty.take();
                let built = Arc::new(Zone::build(&options.domain, &services.state(), &slices.state()));
                *zone.write().unwrap_or_else(|p| p.into_inner()) = built;
            }
            _ = tokio::time::sleep_until(publish_at) => {
                let outcome = async { let ip = advertised(&client, &options.advertise).await?; publish(&client, &options, ip, addr.port()).await.map(|()| ip) }.await;
                match outcome {
                    Ok(ip) => {
                        if published != Some(ip) {
                            tracing::info!(address = %ip, port = addr.port(), "cluster DNS published as an endpoint of kube-system/kube-dns");
                            // A socket on the wildcard address answers from whatever address the
                            // route back takes, which conntrack cannot match to a query DNATed
                            // to another local address (the host asking through the Service):
                            // one on the published address answers from it.
                            if addr.ip().is_unspecified() && !bound.contains(&ip) {
                                match udp_socket(std::net::SocketAddrV4::new(ip, addr.port()), true).and_then(tokio::net::UdpSocket::from_std) {
                                    Ok(socket) => {
                                        server.register_socket(socket);
                                        bound.push(ip);
                                    }
                                    Err(e) => tracing::warn!(address = %ip, error = %e, "no UDP socket on the published address; answers from it may come from another"),
                                }
                            }
                        }
                        published = Some(ip);
                        publish_at = tokio::time::Instant::now() + PUBLISH_PERIOD;
                    }
                    Err(e) => {
                        tracing::debug!(error = format!("{e:#}"), "cluster DNS not published yet");
                        publish_at = tokio::time::Instant::now() + PUBLISH_RETRY;
                    }
                }
            }
        }
    };
    if let Some(ip) = published {
        let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
        if let Err(e) = slices.delete(&slice_name(ip, addr.port()), &DeleteParams::default()).await {
            tracing::debug!(error = %e, "the DNS server's EndpointSlice was not withdrawn");
        }
    }
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::debug!(error = %e, "cluster DNS did not shut down cleanly");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_and_the_service_ip_from_the_range() {
        let conf = "# comment\nnameserver 192.0.2.53\nsearch example.org\nnameserver ::1\noptions ndots:2\n";
        assert_eq!(resolv_conf_nameservers(conf), vec!["192.0.2.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        assert_eq!(default_service_ip("10.96.0.0/12").unwrap(), Ipv4Addr::new(10, 96, 0, 10));
        assert!(default_service_ip("nonsense").is_err());
    }
}
