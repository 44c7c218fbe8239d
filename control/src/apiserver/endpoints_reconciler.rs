//! The `default/kubernetes` Service, as Kubernetes' API servers keep it: its cluster IP is the
//! service range's first address, its port 443 (`https`) leads to the API replicas, and its
//! Endpoints and EndpointSlice list the replicas alive. Each replica that pods can reach (its
//! advertise address) holds a key under `/registry/masterleases/` attached to a store lease it
//! renews, and writes the endpoints from the keys there (Kubernetes' lease endpoint reconciler);
//! a replica that stops removes its key, one that dies lets it expire.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::errors::ApiError;
use super::kinds;
use super::store::{prefix_end, Written};
use super::{verbs, Api, Params};

const LEASES_PREFIX: &str = "/registry/masterleases/";
/// How long a replica's key outlives its last renewal, in seconds (Kubernetes' default).
const MASTER_LEASE_TTL_SECONDS: i64 = 15;
/// How often a replica renews its key and reconciles the endpoints.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
pub const SERVICE_NAME: &str = "kubernetes";
const PORT_NAME: &str = "https";
const SERVICE_PORT: u16 = 443;

fn params() -> Params {
    Params { user_agent: Some("kube-apiserver".into()), ..Params::default() }
}

/// The Service itself, with `cluster_ip`, leading to `port`.
fn service(cluster_ip: IpAddr, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip.to_string(), "sessionAffinity": "None",
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "protocol": "TCP", "targetPort": port}],
        },
    })
}

fn endpoints(addresses: &[IpAddr], port: u16) -> Value {
    let subsets = if addresses.is_empty() {
        json!([])
    } else {
        json!([{
            "addresses": addresses.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>(),
            "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
        }])
    };
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": SERVICE_NAME, "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    })
}

fn endpoint_slice(addresses: &[IpAddr], port: u16) -> Value {
    let family = if addresses.iter().all(IpAddr::is_ipv4) { "IPv4" } else { "IPv6" };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": SERVICE_NAME, "namespace": "default", "labels": {"kubernetes.io/service-name": SERVICE_NAME}},
        "addressType": family,
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
    })
}

/// Creates `body` or, when it exists and differs in `fields`, writes those fields.
async fn ensure(
    api: &Api,
    res: &'static super::resources::Resource,
    body: Value,
    fields: &[&str],
) -> Result<(), ApiError> {
    let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match verbs::get(api, res, Some("default"), &name).await {
        Ok((current, _)) => {
            if fields.iter().all(|f| current.get(*f) == body.get(*f)) {
                return Ok(());
            }
            let mut updated = current;
            for f in fields {
                updated[*f] = body[*f].clone();
            }
            match verbs::update(api, res, Some("default"), &name, None, updated, &params()).await {
                Ok(_) => Ok(()),
                // Another replica wrote it meanwhile: the next round looks again.
                Err(e) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) if e.code == 404 => match verbs::create(api, res, Some("default"), body, &params()).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// One round: this replica's key renewed, the Service made if missing, the endpoints written
/// from the live keys.
async fn reconcile(api: &Api, me: Option<IpAddr>, cluster_ip: IpAddr, port: u16) -> Result<(), ApiError> {
    if let Some(ip) = me {
        let lease = api.store.grant_lease(MASTER_LEASE_TTL_SECONDS).await?;
        let key = format!("{LEASES_PREFIX}{ip}");
        let value = json!({"port": port}).to_string().into_bytes();
        // Unconditional: whatever was there is this replica's own earlier key.
        let current = api.store.get(key.as_bytes()).await?.0.map(|kv| kv.mod_revision).unwrap_or(0);
        if let Written::Conflict =
            api.store.write_if_leased(key.as_bytes(), current, Some(value), lease, Vec::new()).await?
        {
            tracing::debug!("the master lease moved while it was renewed; the next round writes it");
        }
    }
    ensure(api, &kinds::service::RESOURCE, service(cluster_ip, port), &["spec"]).await?;
    let prefix = LEASES_PREFIX.as_bytes();
    let mut live: Vec<IpAddr> = api
        .store
        .keys(prefix, &prefix_end(prefix))
        .await?
        .iter()
        .filter_map(|k| std::str::from_utf8(&k[prefix.len()..]).ok()?.parse().ok())
        .collect();
    live.sort();
    ensure(api, &kinds::endpoints::RESOURCE, endpoints(&live, port), &["subsets"]).await?;
    ensure(api, &kinds::endpointslice::RESOURCE, endpoint_slice(&live, port), &["addressType", "endpoints", "ports"])
        .await
}

/// Keeps the Service and its endpoints until `stop`; `advertise` is this replica's address as
/// pods reach it (None: pods cannot, so it is not listed), `port` the API's port.
pub async fn run(
    api: Arc<Api>,
    advertise: Option<IpAddr>,
    cluster_ip: IpAddr,
    port: u16,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        if let Err(e) = reconcile(&api, advertise, cluster_ip, port).await {
            tracing::warn!(error = %e.message, "cannot reconcile the kubernetes service's endpoints");
        }
    }
    // Leaving: this replica's key goes, and the endpoints without it.
    if let Some(ip) = advertise {
        let key = format!("{LEASES_PREFIX}{ip}");
        let removed = async {
            api.store.delete_range(key.as_bytes(), &[]).await?;
            reconcile(&api, None, cluster_ip, port).await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), removed).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e.message, "cannot remove this API server from the kubernetes service's endpoints");
        }
    }
}
