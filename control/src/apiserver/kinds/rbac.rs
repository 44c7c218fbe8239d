//! rbac.authorization.k8s.io: Roles and ClusterRoles (rules), RoleBindings and
//! ClusterRoleBindings (who holds a role). Validated as Kubernetes does
//! (pkg/apis/rbac/validation): a rule names verbs and either resources (with API groups) or
//! non-resource URLs, the latter only in a ClusterRole; a binding's roleRef names a role of a kind
//! its scope may hold and never changes; each subject has a kind, a name, and (a service account)
//! a namespace. The authorizer (`authz.rs`) reads them from the watch caches.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{s, Column, AGE, NAME};
use super::{NameRule, Strategy};

pub const GROUP: &str = "rbac.authorization.k8s.io";

pub static ROLES: Resource = Resource {
    group: GROUP,
    version: "v1",
    kind: "Role",
    plural: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &RoleStrategy { cluster: false },
};

pub static CLUSTER_ROLES: Resource = Resource {
    group: GROUP,
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &RoleStrategy { cluster: true },
};

pub static ROLE_BINDINGS: Resource = Resource {
    group: GROUP,
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &BindingStrategy { cluster: false },
};

pub static CLUSTER_ROLE_BINDINGS: Resource = Resource {
    group: GROUP,
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &BindingStrategy { cluster: true },
};

struct RoleStrategy {
    cluster: bool,
}

fn created_at() -> Column {
    Column::new("Created At", "date", 0, |o| json!(s(o, "/metadata/creationTimestamp")))
}

impl Strategy for RoleStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        if self.cluster {
            typed::<ClusterRole>(body)
        } else {
            typed::<Role>(body)
        }
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
            let at = format!("rules[{i}]");
            let list = |field: &str| rule[field].as_array().map(|a| a.len()).unwrap_or(0);
            if list("verbs") == 0 {
                causes.push(Cause::required(format!("{at}.verbs")));
            }
            let (resources, urls) = (list("resources"), list("nonResourceURLs"));
            if urls > 0 && !self.cluster {
                causes.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    json!(rule["nonResourceURLs"]),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if urls > 0 && (resources > 0 || list("apiGroups") > 0) {
                causes.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    json!(rule["nonResourceURLs"]),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            if urls == 0 && resources == 0 {
                causes.push(Cause::required(format!("{at}.resources")));
            }
            if resources > 0 && list("apiGroups") == 0 {
                causes.push(Cause::required(format!("{at}.apiGroups")));
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, created_at()]
    }
}

struct BindingStrategy {
    cluster: bool,
}

impl Strategy for BindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        if self.cluster {
            typed::<ClusterRoleBinding>(body)
        } else {
            typed::<RoleBinding>(body)
        }
    }

    /// As Kubernetes' v1 defaulting: a user's or a group's subject is of the RBAC group.
    fn defaults(&self, obj: &mut Value) {
        for subject in obj["subjects"].as_array_mut().into_iter().flatten() {
            let kind = subject["kind"].as_str().unwrap_or_default();
            if (kind == "User" || kind == "Group") && subject["apiGroup"].as_str().unwrap_or_default().is_empty() {
                subject["apiGroup"] = json!(GROUP);
            }
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let role_ref = &obj["roleRef"];
        let kinds: &[&str] = if self.cluster { &["ClusterRole"] } else { &["Role", "ClusterRole"] };
        if role_ref["apiGroup"].as_str() != Some(GROUP) {
            causes.push(Cause::not_supported(
                "roleRef.apiGroup",
                role_ref["apiGroup"].as_str().unwrap_or_default(),
                &[GROUP],
            ));
        }
        match role_ref["kind"].as_str() {
            Some(k) if kinds.contains(&k) => {}
            other => causes.push(Cause::not_supported("roleRef.kind", other.unwrap_or_default(), kinds)),
        }
        if role_ref["name"].as_str().unwrap_or_default().is_empty() {
            causes.push(Cause::required("roleRef.name"));
        }
        if let Some(old) = old {
            if old["roleRef"] != obj["roleRef"] {
                causes.push(Cause::invalid("roleRef", json!(obj["roleRef"]), "cannot change roleRef"));
            }
        }
        for (i, subject) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
            let at = format!("subjects[{i}]");
            if subject["name"].as_str().unwrap_or_default().is_empty() {
                causes.push(Cause::required(format!("{at}.name")));
            }
            match subject["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => {
                    if self.cluster && subject["namespace"].as_str().unwrap_or_default().is_empty() {
                        causes.push(Cause::required(format!("{at}.namespace")));
                    }
                }
                "User" | "Group" => {
                    if subject["apiGroup"].as_str() != Some(GROUP) {
                        causes.push(Cause::not_supported(
                            format!("{at}.apiGroup"),
                            subject["apiGroup"].as_str().unwrap_or_default(),
                            &[GROUP],
                        ));
                    }
                }
                other => {
                    causes.push(Cause::not_supported(format!("{at}.kind"), other, &["ServiceAccount", "User", "Group"]))
                }
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        let role =
            Column::new("Role", "string", 0, |o| json!(format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name"))));
        vec![NAME, role, AGE]
    }
}
