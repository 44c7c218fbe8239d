//! What a node's agent (`system:node:<name>` in `system:nodes`) may reach, as Kubernetes' Node
//! authorizer and NodeRestriction admission plugin limit kubelets: the secrets, configmaps,
//! claims and volumes of the pods bound to it and the tokens of their service accounts, its own
//! Lease, and writes only to its own Node and to the pods bound to it. Everything else a node
//! does is RBAC's `system:node` role.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::authn::User;
use super::authz::{Attributes, ResourceAttributes};
use super::errors::ApiError;
use super::kinds;
use super::Api;

/// How long a refused read waits for the pods cache to catch up with the store before the
/// refusal stands (a pod bound a moment ago may not be in the cache yet).
const GRAPH_FRESH_WAIT_MS: u64 = 2_000;
/// How long a request waits for the caches the authorizer reads to be built.
const GRAPH_CACHE_READY_WAIT_MS: u64 = 5_000;
const NODE_USER_PREFIX: &str = "system:node:";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The node a user is the agent of.
pub fn node_of(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && user.groups.iter().any(|g| g == crate::pki::NODES_GROUP)).then_some(name)
}

/// The Node authorizer's verdict on a request it restricts.
pub enum Decision {
    Allow,
    /// Refused, and why (appended to Kubernetes' 403 message).
    Deny(String),
    /// Not a request it restricts: RBAC decides.
    NoOpinion,
}

/// What a pod references of what a node may read.
#[derive(Default, Debug, PartialEq)]
struct References {
    secrets: Vec<String>,
    configmaps: Vec<String>,
    claims: Vec<String>,
    service_account: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PodView {
    metadata: MetaView,
    spec: SpecView,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetaView {
    name: String,
    namespace: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SpecView {
    node_name: String,
    service_account_name: String,
    image_pull_secrets: Vec<NameRef>,
    containers: Vec<ContainerView>,
    init_containers: Vec<ContainerView>,
    ephemeral_containers: Vec<ContainerView>,
    volumes: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ContainerView {
    env: Vec<Value>,
    env_from: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NameRef {
    name: String,
}

fn push(list: &mut Vec<String>, name: Option<&Value>) {
    if let Some(n) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) {
        if !list.iter().any(|l| l == n) {
            list.push(n.to_string());
        }
    }
}

fn references(pod: &PodView) -> References {
    let mut r = References {
        service_account: match pod.spec.service_account_name.as_str() {
            "" => "default".to_string(),
            name => name.to_string(),
        },
        ..Default::default()
    };
    for s in &pod.spec.image_pull_secrets {
        push(&mut r.secrets, Some(&Value::String(s.name.clone())));
    }
    let containers = pod.spec.containers.iter().chain(&pod.spec.init_containers).chain(&pod.spec.ephemeral_containers);
    for c in containers {
        for e in &c.env {
            push(&mut r.secrets, e.pointer("/valueFrom/secretKeyRef/name"));
            push(&mut r.configmaps, e.pointer("/valueFrom/configMapKeyRef/name"));
        }
        for e in &c.env_from {
            push(&mut r.secrets, e.pointer("/secretRef/name"));
            push(&mut r.configmaps, e.pointer("/configMapRef/name"));
        }
    }
    for v in &pod.spec.volumes {
        push(&mut r.secrets, v.pointer("/secret/secretName"));
        push(&mut r.configmaps, v.pointer("/configMap/name"));
        push(&mut r.claims, v.pointer("/persistentVolumeClaim/claimName"));
        // A generic ephemeral volume's claim is named after the pod and the volume.
        if v.get("ephemeral").is_some() {
            let name = format!("{}-{}", pod.metadata.name, v["name"].as_str().unwrap_or_default());
            push(&mut r.claims, Some(&Value::String(name)));
        }
        for source in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            push(&mut r.secrets, source.pointer("/secret/name"));
            push(&mut r.configmaps, source.pointer("/configMap/name"));
        }
        // Volume plugins that name a secret of their own.
        for (_, plugin) in v.as_object().into_iter().flatten() {
            push(&mut r.secrets, plugin.pointer("/secretRef/name"));
            push(&mut r.secrets, plugin.pointer("/nodePublishSecretRef/name"));
        }
    }
    r
}

/// The references of every pod bound to `node` in `namespace`, from the pods cache.
async fn pods_on(api: &Api, node: &str, namespace: &str) -> Result<Vec<References>, ApiError> {
    let cache = api.cache(&kinds::pod::RESOURCE);
    if !cache.ready(Duration::from_millis(GRAPH_CACHE_READY_WAIT_MS)).await {
        return Err(ApiError::new(503, "ServiceUnavailable", "the node authorizer's caches are not built yet"));
    }
    let scope = kinds::pod::RESOURCE.scope_prefix(Some(namespace));
    let Some((pods, _)) = cache.list(&scope) else {
        return Err(ApiError::new(503, "ServiceUnavailable", "the node authorizer's caches are being rebuilt"));
    };
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)) {
        let view: PodView = serde_json::from_slice(&pod.json)
            .map_err(|e| ApiError::internal(format!("a cached pod does not decode: {e}")))?;
        if view.spec.node_name == node && view.metadata.namespace == namespace {
            out.push(references(&view));
        }
    }
    Ok(out)
}

/// Whether a pod bound to `node` uses the object `attrs` names.
async fn related(api: &Api, node: &str, r: &ResourceAttributes) -> Result<bool, ApiError> {
    match r.resource.as_str() {
        "persistentvolumes" => {
            // Through a claim of one of its pods that is bound to this volume.
            let claims = api.cache(&kinds::volume::CLAIMS);
            if !claims.ready(Duration::from_millis(GRAPH_CACHE_READY_WAIT_MS)).await {
                return Err(ApiError::new(503, "ServiceUnavailable", "the node authorizer's caches are not built yet"));
            }
            let Some((all, _)) = claims.list(&kinds::volume::CLAIMS.prefix()) else { return Ok(false) };
            for claim in all.iter().filter(|c| c.pointer("/spec/volumeName").and_then(Value::as_str) == Some(&r.name)) {
                let ns = claim.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
                let name = claim.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                if pods_on(api, node, ns).await?.iter().any(|p| p.claims.iter().any(|c| c == name)) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        resource => {
            let pods = pods_on(api, node, &r.namespace).await?;
            let name = &r.name;
            Ok(pods.iter().any(|p| match resource {
                "secrets" => p.secrets.contains(name),
                "configmaps" => p.configmaps.contains(name),
                "persistentvolumeclaims" => p.claims.contains(name),
                "serviceaccounts" => p.service_account == *name,
                _ => false,
            }))
        }
    }
}

/// The Node authorizer: decides the requests of node `node` for objects only some pods use.
pub async fn authorize(api: &Api, node: &str, attrs: &Attributes) -> Result<Decision, ApiError> {
    let Some(r) = attrs.resource.as_ref().filter(|r| r.group.is_empty() || r.group == "coordination.k8s.io") else {
        return Ok(Decision::NoOpinion);
    };
    let kind = match (r.group.as_str(), r.resource.as_str(), r.subresource.as_str()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "persistentvolumes", "") => "read",
        ("", "serviceaccounts", "token") => "token",
        ("coordination.k8s.io", "leases", "") if r.namespace == "kube-node-lease" => "lease",
        _ => return Ok(Decision::NoOpinion),
    };
    match kind {
        "lease" => {
            let verbs = ["get", "create", "update", "patch", "delete"];
            // A create names its lease in the body; NodeRestriction checks that name.
            if verbs.contains(&attrs.verb.as_str()) && (r.name == node || (attrs.verb == "create" && r.name.is_empty()))
            {
                return Ok(Decision::Allow);
            }
            return Ok(Decision::Deny("can only access node lease with the same name as the requesting node".into()));
        }
        "token" if attrs.verb != "create" => {
            return Ok(Decision::Deny("can only create tokens for individual service accounts".into()))
        }
        "read" if attrs.verb != "get" || r.name.is_empty() => {
            return Ok(Decision::Deny(format!("can only read individual {}", r.resource)));
        }
        _ => {}
    }
    if related(api, node, r).await? {
        return Ok(Decision::Allow);
    }
    // Perhaps the pod that uses it was bound a moment ago: once the pods cache has caught up
    // with the store, ask again.
    let revision = api.store.current_revision().await?;
    let pods = api.cache(&kinds::pod::RESOURCE);
    if pods.wait_fresh(revision, Duration::from_millis(GRAPH_FRESH_WAIT_MS)).await && related(api, node, r).await? {
        return Ok(Decision::Allow);
    }
    Ok(Decision::Deny(format!("no relationship found between node '{node}' and this object")))
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(403, "Forbidden", message)
}

/// NodeRestriction: a node writes only its own Node and Lease and the pods bound to it, and
/// creates only mirror pods. `body` is the request's, for creates.
pub async fn admit(api: &Api, node: &str, attrs: &Attributes, body: Option<&Value>) -> Result<(), ApiError> {
    let Some(r) = attrs.resource.as_ref() else { return Ok(()) };
    if matches!(attrs.verb.as_str(), "get" | "list" | "watch") {
        return Ok(());
    }
    let body_name = || body.and_then(|v| v.pointer("/metadata/name")).and_then(Value::as_str).map(String::from);
    match (r.group.as_str(), r.resource.as_str()) {
        ("", "nodes") => {
            let target = if attrs.verb == "create" { body_name().unwrap_or_default() } else { r.name.clone() };
            if target != node {
                return Err(forbidden(format!("node {node:?} is not allowed to modify node {target:?}")));
            }
        }
        ("coordination.k8s.io", "leases")
            if attrs.verb == "create" && r.namespace == "kube-node-lease" && body_name().as_deref() != Some(node) =>
        {
            return Err(forbidden(
                "leases.coordination.k8s.io is forbidden: can only access node lease with the same name as the requesting node"
                    .to_string(),
            ));
        }
        ("", "serviceaccounts") if r.subresource == "token" && attrs.verb == "create" => {
            // A node asks only for tokens bound to a pod that runs on it.
            let reference = body.and_then(|b| b.pointer("/spec/boundObjectRef")).filter(|b| b["kind"] == "Pod");
            let Some(pod_name) = reference.and_then(|b| b["name"].as_str()) else {
                return Err(forbidden(format!("node {node:?} requested a token not bound to a pod")));
            };
            let pod = api.current(&kinds::pod::RESOURCE, Some(&r.namespace), pod_name).await?;
            if pod.as_ref().and_then(|p| p.pointer("/spec/nodeName")).and_then(Value::as_str) != Some(node) {
                return Err(forbidden(format!(
                    "node {node:?} requested a token bound to a pod scheduled on a different node"
                )));
            }
        }
        ("", "pods") => match (attrs.verb.as_str(), r.subresource.as_str()) {
            ("create", "") => {
                let pod = body.cloned().unwrap_or_default();
                if pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_ANNOTATION)).is_none() {
                    return Err(forbidden(format!(
                        "pod does not have {MIRROR_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
                    )));
                }
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                    return Err(forbidden(format!(
                        "node {node:?} can only create pods with spec.nodeName set to itself"
                    )));
                }
            }
            (verb, sub) => {
                let (what, doing) = match (verb, sub) {
                    ("delete", "") => ("delete pods", "delete"),
                    ("create", "eviction") => ("evict pods", "evict"),
                    (_, "status") => ("update pod status for pods", "update"),
                    _ => ("", ""),
                };
                if doing.is_empty() {
                    return Ok(());
                }
                // A pod that is not there is the handler's 404 to give.
                let Some(pod) = api.current(&kinds::pod::RESOURCE, Some(&r.namespace), &r.name).await? else {
                    return Ok(());
                };
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                    return Err(forbidden(format!("node {node:?} can only {what} with spec.nodeName set to itself")));
                }
            }
        },
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_references_what_kubelet_reads_for_it() {
        let pod: PodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "team"},
            "spec": {
                "nodeName": "n1",
                "imagePullSecrets": [{"name": "registry"}],
                "containers": [{
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "C", "value": "plain"}
                    ],
                    "envFrom": [{"secretRef": {"name": "bulk"}}, {"configMapRef": {"name": "more"}}]
                }],
                "initContainers": [{"env": [{"name": "D", "valueFrom": {"secretKeyRef": {"name": "init-only", "key": "k"}}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "certs"}},
                    {"name": "c", "configMap": {"name": "files"}},
                    {"name": "p", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                    {"name": "x", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "proj-cm"}}, {"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-secret"}}}
                ]
            }
        }))
        .unwrap();
        let r = references(&pod);
        assert_eq!(r.secrets, ["registry", "db", "bulk", "init-only", "certs", "proj", "csi-secret"]);
        assert_eq!(r.configmaps, ["settings", "more", "files", "proj-cm"]);
        assert_eq!(r.claims, ["data", "web-scratch"]);
        assert_eq!(r.service_account, "default");
    }

    #[test]
    fn only_node_identities_are_nodes() {
        let user = |name: &str, groups: &[&str]| User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(node_of(&user("system:node:n1", &["system:nodes", "system:authenticated"])), Some("n1"));
        assert_eq!(node_of(&user("system:node:n1", &["system:authenticated"])), None);
        assert_eq!(node_of(&user("system:node:", &["system:nodes"])), None);
        assert_eq!(node_of(&user("jane", &["system:nodes"])), None);
    }
}
