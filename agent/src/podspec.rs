//! What a container's creation reads beyond the pod itself: its environment (values, fields of
//! the pod, its resources, ConfigMap and Secret keys, `$(VAR)` references), its image's pull
//! policy and the registry credentials of the pod's `imagePullSecrets`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;

use crate::machine::parse_quantity;
use crate::runtime::AuthConfig;

/// A container that cannot be configured as its spec says (kubelet's
/// `CreateContainerConfigError`): a missing ConfigMap or Secret, a bad field path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Kubernetes' default pull policy: `Always` for `:latest` or an untagged image, else
/// `IfNotPresent`.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p;
    }
    let image = c.image.as_deref().unwrap_or("");
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, "latest")) | None if !image.contains('@') => "Always",
        _ => "IfNotPresent",
    }
}

/// The registry an image reference names (Docker's rules: a first component with a dot, a
/// colon or `localhost` is a host; otherwise Docker Hub).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `https://host:port/v1/` and `host:port` both name `host:port`.
fn server_host(server: &str) -> &str {
    let s = server.strip_prefix("https://").or_else(|| server.strip_prefix("http://")).unwrap_or(server);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

/// The credentials in a docker config (`.dockerconfigjson`'s `auths`, or `.dockercfg`) for `host`.
pub fn credentials_for(config: &serde_json::Value, host: &str) -> Vec<AuthConfig> {
    let auths = config.get("auths").unwrap_or(config);
    let Some(auths) = auths.as_object() else { return Vec::new() };
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    auths
        .iter()
        .filter(|(server, _)| server_host(server) == host)
        .map(|(server, entry)| AuthConfig {
            username: text(entry, "username"),
            password: text(entry, "password"),
            auth: text(entry, "auth"),
            server_address: server.clone(),
        })
        .collect()
}

/// The credentials the pod's `imagePullSecrets` hold for `image`'s registry, in order. A secret
/// that is missing is skipped, as kubelet skips it (the pull then fails for want of them).
pub async fn pull_credentials(client: &kube::Client, pod: &Pod, image: &str) -> anyhow::Result<Vec<AuthConfig>> {
    let refs = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_deref()).unwrap_or(&[]);
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let host = registry_host(image);
    let api: Api<Secret> = Api::namespaced(client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    let mut out = Vec::new();
    for r in refs {
        let Some(secret) = api.get_opt(&r.name).await? else {
            tracing::warn!(secret = %r.name, "an imagePullSecret of the pod does not exist");
            continue;
        };
        let data = secret.data.unwrap_or_default();
        for key in [".dockerconfigjson", ".dockercfg"] {
            if let Some(bytes) = data.get(key) {
                match serde_json::from_slice::<serde_json::Value>(&bytes.0) {
                    Ok(config) => out.extend(credentials_for(&config, host)),
                    Err(e) => tracing::warn!(secret = %r.name, error = %e, "an imagePullSecret is not a docker config"),
                }
            }
        }
    }
    Ok(out)
}

/// Replaces `$(NAME)` with the value of NAME where it is defined; `$$` is a literal `$`;
/// anything else is left as written (Kubernetes' expansion rules).
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A field of the pod (`fieldRef`), as the downward API gives it.
pub fn pod_field(pod: &Pod, host_ip: &str, pod_ip: Option<&str>, path: &str) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", &m.labels).or_else(|| keyed("metadata.annotations['", &m.annotations)) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.unwrap_or_default().to_string(),
        other => return Err(ConfigError(format!("unsupported fieldRef path {other:?}"))),
    })
}

/// A container's resource (`resourceFieldRef`) in units of `divisor`, rounded up; a limit the
/// container does not set is the node's allocatable amount.
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, ConfigError> {
    let (kind, name) =
        resource.split_once('.').ok_or_else(|| ConfigError(format!("unsupported resource {resource:?}")))?;
    let res = c.resources.as_ref();
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name)),
        "requests" => res.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(name)),
        _ => return Err(ConfigError(format!("unsupported resource {resource:?}"))),
    };
    // An unset request is the limit when one is set (Kubernetes' defaulting), else the node's.
    let set = set.or_else(|| {
        (kind == "requests").then(|| res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name))).flatten()
    });
    let value = set.or_else(|| allocatable.get(name)).map(|q| q.0.as_str()).unwrap_or("0");
    let unit = if name == "cpu" { 1000 } else { 1 };
    let bad = |e: String| ConfigError(format!("resourceFieldRef {resource}: {e}"));
    let amount = parse_quantity(value, unit).map_err(bad)?;
    let divisor = parse_quantity(divisor.map(|d| d.0.as_str()).unwrap_or("1"), unit).map_err(bad)?;
    if divisor == 0 {
        return Err(ConfigError(format!("resourceFieldRef {resource}: divisor is zero")));
    }
    Ok(amount.div_ceil(divisor).to_string())
}

/// What the environment of a container is made from, besides the pod.
pub struct EnvSources<'a> {
    pub client: &'a kube::Client,
    pub host_ip: &'a str,
    pub pod_ip: Option<&'a str>,
    pub allocatable: &'a BTreeMap<String, Quantity>,
}

/// ConfigMaps and Secrets read once per container start.
#[derive(Default)]
struct Fetched {
    config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

async fn config_map(
    src: &EnvSources<'_>,
    ns: &str,
    name: &str,
    f: &mut Fetched,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    if let Some(v) = f.config_maps.get(name) {
        return Ok(v.clone());
    }
    let api: Api<ConfigMap> = Api::namespaced(src.client.clone(), ns);
    let data = api.get_opt(name).await?.map(|cm| {
        let mut d = cm.data.unwrap_or_default();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            d.insert(k, String::from_utf8_lossy(&v.0).into_owned());
        }
        d
    });
    f.config_maps.insert(name.to_string(), data.clone());
    Ok(data)
}

async fn secret(
    src: &EnvSources<'_>,
    ns: &str,
    name: &str,
    f: &mut Fetched,
) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    if let Some(v) = f.secrets.get(name) {
        return Ok(v.clone());
    }
    let api: Api<Secret> = Api::namespaced(src.client.clone(), ns);
    let data = api.get_opt(name).await?.map(|s| {
        let mut d: BTreeMap<String, String> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        d.extend(s.string_data.unwrap_or_default());
        d
    });
    f.secrets.insert(name.to_string(), data.clone());
    Ok(data)
}

/// A key of a ConfigMap's or Secret's data (`kind` in the two spellings Kubernetes' messages
/// use); None when it or its object is missing and the reference is optional.
fn key_of(
    data: Option<BTreeMap<String, String>>,
    key: &str,
    name: &str,
    optional: bool,
    kind: (&str, &str),
    ns: &str,
) -> Result<Option<String>, ConfigError> {
    match data {
        Some(d) => match d.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(ConfigError(format!("couldn't find key {key} in {} {ns}/{name}", kind.1))),
        },
        None if optional => Ok(None),
        None => Err(ConfigError(format!("{} {name:?} not found", kind.0))),
    }
}

/// The container's environment in order: `envFrom` sources, then `env` (later names replace
/// earlier ones, as in Kubernetes), with `$(VAR)` references to earlier variables expanded. A
/// missing ConfigMap, Secret or key that is not optional is a `ConfigError`.
pub async fn container_env(src: &EnvSources<'_>, pod: &Pod, c: &Container) -> anyhow::Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut fetched = Fetched::default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env.iter_mut().find(|(n, _)| *n == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, what, name, optional) = if let Some(r) = &from.config_map_ref {
            (config_map(src, ns, &r.name, &mut fetched).await?, "configmap", &r.name, r.optional == Some(true))
        } else if let Some(r) = &from.secret_ref {
            (secret(src, ns, &r.name, &mut fetched).await?, "secret", &r.name, r.optional == Some(true))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(ConfigError(format!("{what} {name:?} not found")).into()),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let defined = env.clone();
                let lookup = move |n: &str| defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                expand(e.value.as_deref().unwrap_or(""), &lookup)
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    pod_field(pod, src.host_ip, src.pod_ip, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(c, &r.resource, r.divisor.as_ref(), src.allocatable)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = config_map(src, ns, &r.name, &mut fetched).await?;
                    match key_of(data, &r.key, &r.name, r.optional == Some(true), ("configmap", "ConfigMap"), ns)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = secret(src, ns, &r.name, &mut fetched).await?;
                    match key_of(data, &r.key, &r.name, r.optional == Some(true), ("secret", "Secret"), ns)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    continue;
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_as_kubernetes_expands_them() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &lookup), "x-$(B)-$(A)-$");
        assert_eq!(expand("$(A", &lookup), "$(A");
        assert_eq!(expand("plain", &lookup), "plain");
    }

    #[test]
    fn pull_policies_default_by_tag() {
        let c = |image: &str, policy: Option<&str>| Container {
            image: Some(image.into()),
            image_pull_policy: policy.map(String::from),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("busybox", None)), "Always");
        assert_eq!(pull_policy(&c("busybox:latest", None)), "Always");
        assert_eq!(pull_policy(&c("localhost:5000/busybox", None)), "Always");
        assert_eq!(pull_policy(&c("localhost:5000/busybox:1", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("busybox@sha256:abc", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("busybox", Some("Never"))), "Never");
    }

    #[test]
    fn credentials_match_the_images_registry() {
        assert_eq!(registry_host("127.0.0.1:5000/web:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("library/busybox"), "docker.io");
        let config = serde_json::json!({"auths": {
            "http://127.0.0.1:5000": {"username": "u", "password": "p"},
            "other.example:5000": {"auth": "dTpw"},
        }});
        let found = credentials_for(&config, "127.0.0.1:5000");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].username.as_str(), found[0].password.as_str()), ("u", "p"));
        assert!(credentials_for(&config, "docker.io").is_empty());
    }

    #[test]
    fn resource_fields_round_up_and_default_to_allocatable() {
        let mut limits = BTreeMap::new();
        limits.insert("cpu".to_string(), Quantity("500m".into()));
        limits.insert("memory".to_string(), Quantity("64Mi".into()));
        let c = Container {
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(limits),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut alloc = BTreeMap::new();
        alloc.insert("ephemeral-storage".to_string(), Quantity("10Gi".into()));
        assert_eq!(resource_field(&c, "limits.cpu", None, &alloc).unwrap(), "1");
        assert_eq!(resource_field(&c, "limits.cpu", Some(&Quantity("1m".into())), &alloc).unwrap(), "500");
        assert_eq!(resource_field(&c, "requests.memory", Some(&Quantity("1Mi".into())), &alloc).unwrap(), "64");
        assert_eq!(
            resource_field(&c, "limits.ephemeral-storage", Some(&Quantity("1Gi".into())), &alloc).unwrap(),
            "10"
        );
        assert!(resource_field(&c, "limits.cpu", Some(&Quantity("0".into())), &alloc).is_err());
    }
}
