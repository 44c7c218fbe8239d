//! ServiceAccounts. A delete answers with the deleted account, as Kubernetes' does.

use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::{json, Value};

use rand::Rng;

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, Column, AGE, NAME};
use super::super::Api;
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &["token"],
    strategy: &ServiceAccountStrategy,
};

struct ServiceAccountStrategy;

impl Strategy for ServiceAccountStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<ServiceAccount>(body)
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Secrets", "integer", 0, |o| json!(count(o, "/secrets"))), AGE]
    }
}

/// Where a pod's service-account credentials are mounted.
pub const CREDENTIALS_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap every namespace holds with the CA of the API's serving certificate.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The lifetime of the token in an admitted pod's credentials (Kubernetes' 3607 s).
const CREDENTIALS_TOKEN_SECONDS: i64 = 3_607;
const CREDENTIALS_VOLUME_PREFIX: &str = "kube-api-access-";
/// The letters Kubernetes makes generated name suffixes from.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Kubernetes' ServiceAccount admission plugin for a new pod: it runs as `default` unless it
/// names an account, and, unless it or its account turns automounting off, gets the projected
/// `kube-api-access-<suffix>` volume (a token bound to the pod, the cluster's CA, its
/// namespace) mounted read-only at `CREDENTIALS_MOUNT_PATH` in every container that has nothing
/// there. An account that does not exist (yet) is not refused: the namespace's `default` is made
/// by a controller, and a pod created first would otherwise fail.
pub fn admit_pod(api: &Api, pod: &mut Value) {
    if pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_ANNOTATION)).is_some() {
        return;
    }
    super::ensure_object(pod, "/spec");
    let named = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let spec = &pod["spec"];
    let account =
        named(spec, "serviceAccountName").or_else(|| named(spec, "serviceAccount")).unwrap_or("default".into());
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    pod["spec"]["serviceAccountName"] = json!(account);
    let automount = match pod["spec"].get("automountServiceAccountToken").and_then(Value::as_bool) {
        Some(chosen) => chosen,
        None => match api.cache(&RESOURCE).get(&RESOURCE.key(Some(&namespace), &account)) {
            Some(Some(sa)) => sa.get("automountServiceAccountToken").and_then(Value::as_bool) != Some(false),
            _ => true,
        },
    };
    if !automount {
        return;
    }
    let mounted = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == CREDENTIALS_MOUNT_PATH))
    };
    let lists = ["containers", "initContainers"];
    let needing = lists
        .iter()
        .flat_map(|l| pod["spec"].get(*l).and_then(Value::as_array).into_iter().flatten())
        .filter(|c| !mounted(c))
        .count();
    if needing == 0 {
        return;
    }
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5).map(|_| NAME_ALPHABET[rng.gen_range(0..NAME_ALPHABET.len())] as char).collect();
    let volume = format!("{CREDENTIALS_VOLUME_PREFIX}{suffix}");
    let source = json!({
        "name": volume,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": CREDENTIALS_TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    match pod["spec"].get_mut("volumes").and_then(Value::as_array_mut) {
        Some(list) => list.push(source),
        None => pod["spec"]["volumes"] = json!([source]),
    }
    let mount = json!({"name": volume, "readOnly": true, "mountPath": CREDENTIALS_MOUNT_PATH});
    for l in lists {
        for c in pod["spec"].get_mut(l).and_then(Value::as_array_mut).into_iter().flatten() {
            if mounted(c) {
                continue;
            }
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(m) => m.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
}
