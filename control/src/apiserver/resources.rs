//! The resource types the API server serves, and the discovery documents built from them.

use serde_json::{json, Value};

use super::kinds::Strategy;

/// One resource type, as discovery describes it.
pub struct Resource {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served: "status", "scale", "binding", "log", "exec", …
    pub subresources: &'static [&'static str],
    /// The kind's own rules (see `kinds/`).
    pub strategy: &'static dyn Strategy,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, subresource: &str) -> bool {
        self.subresources.contains(&subresource)
    }

    /// The key prefix of every object of this type (`/registry/<plural>/`).
    pub fn prefix(&self) -> String {
        format!("/registry/{}/", self.plural)
    }

    /// The key prefix of this type's objects in one namespace, or all of them.
    pub fn scope_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.plural),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/{name}", self.plural),
            _ => format!("/registry/{}/{name}", self.plural),
        }
    }
}

/// Every served resource type, in discovery order.
pub static RESOURCES: &[&Resource] = super::kinds::ALL;

/// The groups other than the core one, in discovery order, each with its one version.
const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("batch", "v1"),
    ("coordination.k8s.io", "v1"),
    ("discovery.k8s.io", "v1"),
    ("networking.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("scheduling.k8s.io", "v1"),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn group_version_known(group: &str, version: &str) -> bool {
    RESOURCES.iter().any(|r| r.group == group && r.version == version)
}

fn verbs(r: &Resource, sub: Option<&str>) -> Vec<&'static str> {
    match sub {
        None if r.strategy.deletecollection() => {
            vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
        None => vec!["create", "delete", "get", "list", "patch", "update", "watch"],
        Some("status") | Some("scale") | Some("ephemeralcontainers") => vec!["get", "patch", "update"],
        Some("binding") | Some("eviction") => vec!["create"],
        Some("finalize") => vec!["update"],
        Some("log") => vec!["get"],
        Some("exec") | Some("attach") | Some("portforward") => vec!["create", "get"],
        Some(_) => vec![],
    }
}

/// `/api/v1` or `/apis/<group>/<version>`: the APIResourceList.
pub fn resource_list(group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r, None),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in r.subresources {
            let (_, _, kind) = subresource_kind(r, sub);
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs(r, Some(sub)),
            });
            // Subresources of another group name it (kubectl drain reads eviction's).
            let (g, v, _) = subresource_kind(r, sub);
            if g != r.group {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            list.push(entry);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
        "resources": list,
    })
}

/// The kind a subresource answers with.
fn subresource_kind(r: &Resource, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "exec" => ("", "v1", "PodExecOptions"),
        "attach" => ("", "v1", "PodAttachOptions"),
        "portforward" => ("", "v1", "PodPortForwardOptions"),
        _ => (r.group, r.version, r.kind),
    }
}

/// Whether a discovery request asks for the aggregated form (kubectl 1.30+, kube-rs's
/// `Discovery::run_aggregated`): `as=APIGroupDiscoveryList` in one of its media ranges.
pub fn wants_aggregated(headers: &axum::http::HeaderMap) -> bool {
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    super::form::media_ranges(accept).any(|r| {
        r.as_ == "APIGroupDiscoveryList" && r.group == "apidiscovery.k8s.io" && matches!(r.version, "v2" | "v2beta1")
    })
}

/// Aggregated discovery (apidiscovery.k8s.io/v2): every group, version and resource, with its
/// verbs, scope and subresources, in one document — the core group alone for `/api`, the
/// named groups for `/apis`.
pub fn aggregated_discovery(core: bool) -> Value {
    let groups: Vec<(&str, &str)> = if core { vec![("", "v1")] } else { GROUPS.to_vec() };
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, version)| {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == *group && r.version == *version)
                .map(|r| {
                    let subresources: Vec<Value> = r
                        .subresources
                        .iter()
                        .map(|sub| {
                            let (g, v, k) = subresource_kind(r, sub);
                            json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": k},
                                "verbs": verbs(r, Some(sub))})
                        })
                        .collect();
                    let mut entry = json!({
                        "resource": r.plural,
                        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": verbs(r, None),
                    });
                    if !r.short_names.is_empty() {
                        entry["shortNames"] = json!(r.short_names);
                    }
                    if !r.categories.is_empty() {
                        entry["categories"] = json!(r.categories);
                    }
                    if !subresources.is_empty() {
                        entry["subresources"] = json!(subresources);
                    }
                    entry
                })
                .collect();
            let metadata = if group.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": group, "creationTimestamp": null}) };
            json!({"metadata": metadata, "versions": [{"version": version, "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/api`: the core group's versions.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`: every named group.
pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>(),
    })
}

/// `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    let (g, v) = GROUPS.iter().find(|(g, _)| *g == name)?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_served_is_discovered() {
        for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
            assert!(GROUPS.contains(&(r.group, r.version)), "{}/{} is served but not in GROUPS", r.group, r.version);
        }
    }

    #[test]
    fn every_resource_is_discoverable_under_its_group_version() {
        for r in RESOURCES {
            let list = resource_list(r.group, r.version);
            let names: Vec<&str> =
                list["resources"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
            assert!(names.contains(&r.plural), "{} missing from {}", r.plural, list["groupVersion"]);
            for sub in r.subresources {
                assert!(names.contains(&format!("{}/{sub}", r.plural).as_str()));
            }
            assert!(r.group.is_empty() || group(r.group).is_some(), "group {} not listed", r.group);
        }
        assert_eq!(find("apps", "v1", "deployments").unwrap().kind, "Deployment");
        assert!(find("", "v1", "deployments").is_none());
    }

    #[test]
    fn keys_follow_the_registry_layout() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/registry/pods/default/web");
        assert_eq!(pods.scope_prefix(Some("default")), "/registry/pods/default/");
        assert_eq!(pods.scope_prefix(None), "/registry/pods/");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/nodes/n1");
    }
}
