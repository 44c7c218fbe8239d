//! Authorization: whether a request's user may do what it asks, as Kubernetes' RBAC authorizer
//! decides it. The `system:masters` group may do everything (Kubernetes' privileged group,
//! allowed before RBAC is asked); everyone else gets what the roles bound to them (by user,
//! group, or service account) allow. The bindings and roles are read from the watch caches into
//! an index that is rebuilt when one of the four caches has moved on, so a request costs a look
//! through the user's own bindings, not a read of the store.
//!
//! The bootstrap policy every cluster starts with — Kubernetes' default roles and bindings, as
//! far as Keelson's components need them — is in [`bootstrap`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde_json::{json, Value};

use super::authn::User;
use super::errors::ApiError;
use super::kinds::rbac::{CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS};
use super::Api;
use crate::pki::MASTERS_GROUP;

/// How long a request waits for the RBAC caches to be built (at the API's start), in milliseconds.
const RBAC_CACHE_READY_WAIT_MS: u64 = 5_000;

/// What a request asks to do, as Kubernetes' request info names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// A resource request, or a request for a path (discovery, health, metrics).
    pub resource: Option<ResourceAttributes>,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// The attributes of a request for `path` with `method` (`watch` when it asks to watch).
    pub fn of(method: &Method, path: &str, watch: bool) -> Attributes {
        let path = path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest): (&str, &[&str]) = match segments.as_slice() {
            ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (group, rest),
            _ => {
                let verb = match *method {
                    Method::GET | Method::HEAD => "get",
                    Method::POST => "post",
                    Method::PUT => "put",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "",
                };
                return Attributes { verb: verb.into(), resource: None, path: path.to_string() };
            }
        };
        let (namespace, rest): (&str, &[&str]) = match rest {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns, tail),
            _ => ("", rest),
        };
        let resource = rest.first().copied().unwrap_or_default();
        let name = rest.get(1).copied().unwrap_or_default();
        let subresource = rest.get(2).copied().unwrap_or_default();
        // A namespace is in itself: a binding in it may grant reading it.
        let namespace =
            if group.is_empty() && resource == "namespaces" && namespace.is_empty() { name } else { namespace };
        let verb = match (method, name.is_empty()) {
            (&Method::GET | &Method::HEAD, true) if watch => "watch",
            (&Method::GET | &Method::HEAD, true) => "list",
            (&Method::GET | &Method::HEAD, false) if watch => "watch",
            (&Method::GET | &Method::HEAD, false) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "deletecollection",
            (&Method::DELETE, false) => "delete",
            _ => "",
        };
        Attributes {
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: subresource.into(),
                namespace: namespace.into(),
                name: name.into(),
            }),
            path: path.to_string(),
        }
    }

    /// Kubernetes' 403 for `user` asking this.
    pub fn forbidden(&self, user: &User) -> ApiError {
        let Some(r) = &self.resource else {
            let mut e = ApiError::new(
                403,
                "Forbidden",
                format!("forbidden: User {:?} cannot {} path {:?}", user.name, self.verb, self.path),
            );
            e.details = Some(json!({}));
            return e;
        };
        let resource =
            if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
        let scope = if r.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", r.namespace)
        };
        let why = format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            user.name, self.verb, r.group
        );
        let qualified = if r.group.is_empty() { r.resource.clone() } else { format!("{}.{}", r.resource, r.group) };
        let message = if r.name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {:?} is forbidden: {why}", r.name)
        };
        let mut e = ApiError::new(403, "Forbidden", message);
        e.details = Some(json!({"name": r.name, "group": r.group, "kind": r.resource}));
        e
    }
}

/// A binding as the authorizer needs it.
struct Binding {
    /// The role's kind ("Role" or "ClusterRole") and name.
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

/// The RBAC objects of the caches at one set of revisions.
#[derive(Default)]
pub struct Index {
    revisions: [i64; 4],
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

fn binding_of(role_ref: &k8s_openapi::api::rbac::v1::RoleRef, subjects: Option<Vec<Subject>>) -> Binding {
    Binding {
        role_kind: role_ref.kind.clone(),
        role_name: role_ref.name.clone(),
        subjects: subjects.unwrap_or_default(),
    }
}

impl Index {
    fn build(revisions: [i64; 4], objects: [Vec<Value>; 4]) -> Index {
        let [cluster_roles, roles, cluster_bindings, bindings] = objects;
        let mut index = Index { revisions, ..Index::default() };
        for o in cluster_roles {
            if let Ok(r) = serde_json::from_value::<ClusterRole>(o) {
                index.cluster_roles.insert(r.metadata.name.unwrap_or_default(), r.rules.unwrap_or_default());
            }
        }
        for o in roles {
            if let Ok(r) = serde_json::from_value::<Role>(o) {
                let key = (r.metadata.namespace.unwrap_or_default(), r.metadata.name.unwrap_or_default());
                index.roles.insert(key, r.rules.unwrap_or_default());
            }
        }
        for o in cluster_bindings {
            if let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(o) {
                index.cluster_bindings.push(binding_of(&b.role_ref, b.subjects));
            }
        }
        for o in bindings {
            if let Ok(b) = serde_json::from_value::<RoleBinding>(o) {
                let ns = b.metadata.namespace.clone().unwrap_or_default();
                index.bindings.entry(ns).or_default().push(binding_of(&b.role_ref, b.subjects));
            }
        }
        index
    }

    /// The rules of a binding's role (a RoleBinding's Role is in the binding's namespace).
    fn rules(&self, binding: &Binding, namespace: &str) -> &[PolicyRule] {
        let rules = match binding.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&binding.role_name),
            _ => self.roles.get(&(namespace.to_string(), binding.role_name.clone())),
        };
        rules.map(Vec::as_slice).unwrap_or_default()
    }

    /// Every rule that applies to `user` for a request in `namespace` ("" for none).
    fn rules_for<'a>(&'a self, user: &'a User, namespace: &'a str) -> impl Iterator<Item = &'a PolicyRule> + 'a {
        let cluster =
            self.cluster_bindings.iter().filter(move |b| holds(user, b, "")).flat_map(move |b| self.rules(b, ""));
        let local = self
            .bindings
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(move |b| holds(user, b, namespace))
            .flat_map(move |b| self.rules(b, namespace));
        cluster.chain(local)
    }

    /// Whether `user` may do what `attrs` asks.
    pub fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return true;
        }
        let namespace = attrs.resource.as_ref().map(|r| r.namespace.as_str()).unwrap_or_default();
        let mut rules = self.rules_for(user, namespace);
        rules.any(|rule| rule_allows(rule, attrs))
    }

    /// The rules `user` holds in `namespace`, for SelfSubjectRulesReview.
    pub fn rules_of(&self, user: &User, namespace: &str) -> Vec<PolicyRule> {
        self.rules_for(user, namespace).cloned().collect()
    }
}

/// Whether `user` is one of `binding`'s subjects (a binding in `namespace`).
fn holds(user: &User, binding: &Binding, namespace: &str) -> bool {
    binding.subjects.iter().any(|s| match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
            user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    })
}

fn has(list: &Option<Vec<String>>, value: &str) -> bool {
    list.iter().flatten().any(|v| v == "*" || v == value)
}

fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !rule.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
        return false;
    }
    match &attrs.resource {
        None => rule.non_resource_urls.iter().flatten().any(|url| match url.strip_suffix('*') {
            Some(prefix) => attrs.path.starts_with(prefix),
            None => *url == attrs.path,
        }),
        Some(r) => {
            if !has(&rule.api_groups, &r.group) {
                return false;
            }
            let resource =
                if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
            let resource_ok = rule.resources.iter().flatten().any(|x| {
                *x == "*" || *x == resource || (!r.subresource.is_empty() && *x == format!("*/{}", r.subresource))
            });
            let names = rule.resource_names.as_deref().unwrap_or_default();
            resource_ok && (names.is_empty() || names.contains(&r.name))
        }
    }
}

/// The index of the RBAC objects the caches hold now: the one kept if no cache has moved since,
/// else a new one.
pub async fn index(api: &Api) -> Result<Arc<Index>, ApiError> {
    let resources = [&CLUSTER_ROLES, &ROLES, &CLUSTER_ROLE_BINDINGS, &ROLE_BINDINGS];
    let caches = resources.map(|r| api.cache(r));
    let mut revisions = [0; 4];
    for (cache, revision) in caches.iter().zip(revisions.iter_mut()) {
        if cache.current_revision().is_none() && !cache.ready(Duration::from_millis(RBAC_CACHE_READY_WAIT_MS)).await {
            return Err(ApiError::new(503, "ServiceUnavailable", "the authorizer's caches are not built yet"));
        }
        *revision = cache.current_revision().unwrap_or_default();
    }
    // The common case: nothing changed since the index was built, and nothing is listed.
    if let Some(index) = api.rbac.lock().expect("not poisoned").as_ref().filter(|i| i.revisions == revisions) {
        return Ok(index.clone());
    }
    let mut objects: [Vec<Value>; 4] = Default::default();
    for ((cache, res), (out, revision)) in
        caches.iter().zip(resources).zip(objects.iter_mut().zip(revisions.iter_mut()))
    {
        let Some((items, at)) = cache.list(&res.prefix()) else {
            return Err(ApiError::new(503, "ServiceUnavailable", "the authorizer's caches are being rebuilt"));
        };
        *out = items.iter().map(|o| o.full()).collect();
        *revision = at;
    }
    let index = Arc::new(Index::build(revisions, objects));
    *api.rbac.lock().expect("not poisoned") = Some(index.clone());
    Ok(index)
}

/// Whether `user` may do what `attrs` asks, and when refused by the Node authorizer, why.
pub async fn decide(api: &Api, user: &User, attrs: &Attributes) -> Result<Result<(), Option<String>>, ApiError> {
    // The privileged group needs no index (and is what the API's own bootstrap writes as).
    if user.groups.iter().any(|g| g == MASTERS_GROUP) {
        return Ok(Ok(()));
    }
    if let Some(node) = super::node_authz::node_of(user) {
        match super::node_authz::authorize(api, node, attrs).await? {
            super::node_authz::Decision::Allow => return Ok(Ok(())),
            super::node_authz::Decision::Deny(reason) => return Ok(Err(Some(reason))),
            super::node_authz::Decision::NoOpinion => {}
        }
    }
    Ok(if index(api).await?.allows(user, attrs) { Ok(()) } else { Err(None) })
}

/// Whether `user` may do what `attrs` asks; the 403 if not.
pub async fn authorize(api: &Api, user: &User, attrs: &Attributes) -> Result<(), ApiError> {
    match decide(api, user, attrs).await? {
        Ok(()) => Ok(()),
        Err(reason) => {
            let mut e = attrs.forbidden(user);
            if let Some(reason) = reason {
                e.message = format!("{}: {reason}", e.message);
            }
            Err(e)
        }
    }
}

/// `POST .../selfsubjectrulesreviews` (`kubectl auth can-i --list`): the rules the request's own
/// user holds in the namespace the spec names, from its cluster-wide and namespaced bindings.
pub async fn self_subject_rules_review(api: &Api, user: &User, body: &Value) -> Result<Value, ApiError> {
    let namespace = body["spec"]["namespace"].as_str().unwrap_or_default();
    let rules = index(api).await?.rules_of(user, namespace);
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    for rule in rules {
        if rule.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}));
        } else {
            let mut r = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups, "resources": rule.resources});
            if let Some(names) = rule.resource_names.filter(|n| !n.is_empty()) {
                r["resourceNames"] = json!(names);
            }
            resource_rules.push(r);
        }
    }
    Ok(json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": body["spec"],
        "status": {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false},
    }))
}

/// Kubernetes' impersonation (`kubectl --as`, `--as-group`): a request carrying
/// `Impersonate-User` (and any `Impersonate-Group`s) acts as that user if its own user may
/// `impersonate` the user (`users`, or `serviceaccounts` for a service account's name) and each
/// group (`groups`); the result is the user as it would have authenticated, in
/// `system:authenticated` (or `system:unauthenticated` for `system:anonymous`).
pub async fn impersonate(api: &Api, user: User, headers: &axum::http::HeaderMap) -> Result<User, ApiError> {
    let named = headers.get("impersonate-user").map(|v| v.to_str().unwrap_or_default().to_string());
    let groups: Vec<String> =
        headers.get_all("impersonate-group").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
    let Some(name) = named else {
        if groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(format!("requested {groups:?} without impersonating a user")));
    };
    let asks = |resource: &str, namespace: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        resource: Some(ResourceAttributes {
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: name.into(),
        }),
        path: String::new(),
    };
    let mut checks = Vec::new();
    let mut implied = Vec::new();
    match name.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':')) {
        Some((ns, account)) => {
            checks.push(asks("serviceaccounts", ns, account));
            implied.extend(["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")]);
        }
        None => checks.push(asks("users", "", &name)),
    }
    checks.extend(groups.iter().map(|g| asks("groups", "", g)));
    for check in &checks {
        authorize(api, &user, check).await?;
    }
    let mut all = groups;
    all.extend(implied);
    let everyone = if name == super::authn::ANONYMOUS_USER {
        super::authn::UNAUTHENTICATED_GROUP
    } else {
        super::authn::AUTHENTICATED_GROUP
    };
    if !all.iter().any(|g| g == everyone) {
        all.push(everyone.to_string());
    }
    Ok(User { name, groups: all })
}

/// `POST .../selfsubjectaccessreviews` (`kubectl auth can-i`): whether the request's own user
/// may do what the review's spec asks.
pub async fn self_subject_access_review(api: &Api, user: &User, body: &Value) -> Result<Value, ApiError> {
    access_review(api, user, body, "SelfSubjectAccessReview").await
}

/// `POST .../subjectaccessreviews` and `.../namespaces/<ns>/localsubjectaccessreviews`: whether
/// the user and groups the spec names may do what it asks (the asker needs `create` on the
/// review, as in Kubernetes). A local review's namespace is the path's.
pub async fn subject_access_review(api: &Api, namespace: Option<&str>, body: &Value) -> Result<Value, ApiError> {
    let kind = if namespace.is_some() { "LocalSubjectAccessReview" } else { "SubjectAccessReview" };
    let spec = &body["spec"];
    let user = spec["user"].as_str().unwrap_or_default().to_string();
    let groups: Vec<String> =
        spec["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![super::errors::Cause::invalid("spec.user", "", "at least one of user or group must be specified")],
        ));
    }
    let mut body = body.clone();
    if let Some(ns) = namespace {
        let asked = body.pointer("/spec/resourceAttributes/namespace").and_then(Value::as_str).unwrap_or_default();
        if !asked.is_empty() && asked != ns {
            return Err(ApiError::invalid(
                kind,
                "authorization.k8s.io",
                "",
                vec![super::errors::Cause::invalid(
                    "spec.resourceAttributes.namespace",
                    asked,
                    "must match metadata.namespace",
                )],
            ));
        }
        if body.pointer("/spec/resourceAttributes").is_some_and(Value::is_object) {
            body["spec"]["resourceAttributes"]["namespace"] = json!(ns);
        }
    }
    let mut review = access_review(api, &User { name: user, groups }, &body, kind).await?;
    if let Some(ns) = namespace {
        review["metadata"]["namespace"] = json!(ns);
    }
    Ok(review)
}

async fn access_review(api: &Api, user: &User, body: &Value, kind: &str) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let attrs = if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let field = |f: &str| r[f].as_str().unwrap_or_default().to_string();
        Attributes {
            verb: field("verb"),
            resource: Some(ResourceAttributes {
                group: field("group"),
                resource: field("resource"),
                subresource: field("subresource"),
                namespace: field("namespace"),
                name: field("name"),
            }),
            path: String::new(),
        }
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        Attributes {
            verb: n["verb"].as_str().unwrap_or_default().to_string(),
            resource: None,
            path: n["path"].as_str().unwrap_or_default().to_string(),
        }
    } else {
        return Err(ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![super::errors::Cause::required("spec.resourceAttributes")],
        ));
    };
    let decision = decide(api, user, &attrs).await?;
    let mut review = json!({
        "kind": kind,
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {"allowed": decision.is_ok()},
    });
    match decision {
        Ok(()) => review["status"]["reason"] = json!("allowed by RBAC"),
        Err(Some(reason)) => {
            review["status"]["denied"] = json!(true);
            review["status"]["reason"] = json!(reason);
        }
        Err(None) => {}
    }
    Ok(review)
}

/// Kubernetes' bootstrap policy, as far as Keelson's components and users need it: the roles
/// every cluster starts with and the bindings that give them to the system's identities.
pub mod bootstrap {
    use serde_json::{json, Value};

    use super::super::kinds::rbac::GROUP;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
        json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
    }

    fn paths(urls: &[&str], verbs: &[&str]) -> Value {
        json!({"nonResourceURLs": urls, "verbs": verbs})
    }

    const READ: &[&str] = &["get", "list", "watch"];
    const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

    /// What `view` reads (secrets excepted, as Kubernetes' view role leaves them out).
    fn viewable() -> Vec<Value> {
        vec![
            rule(
                &[""],
                &[
                    "configmaps",
                    "endpoints",
                    "persistentvolumeclaims",
                    "persistentvolumeclaims/status",
                    "pods",
                    "pods/log",
                    "pods/status",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "replicationcontrollers/status",
                    "serviceaccounts",
                    "services",
                    "services/status",
                    "bindings",
                    "events",
                    "limitranges",
                    "namespaces",
                    "namespaces/status",
                    "resourcequotas",
                    "resourcequotas/status",
                ],
                READ,
            ),
            rule(
                &["apps"],
                &[
                    "controllerrevisions",
                    "daemonsets",
                    "daemonsets/status",
                    "deployments",
                    "deployments/scale",
                    "deployments/status",
                    "replicasets",
                    "replicasets/scale",
                    "replicasets/status",
                    "statefulsets",
                    "statefulsets/scale",
                    "statefulsets/status",
                ],
                READ,
            ),
            rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
            rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            rule(&["networking.k8s.io"], &["networkpolicies"], READ),
            rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
            rule(&["coordination.k8s.io"], &["leases"], READ),
        ]
    }

    /// What `edit` writes besides what `view` reads.
    fn editable() -> Vec<Value> {
        vec![
            rule(
                &[""],
                &[
                    "pods",
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                    "pods/eviction",
                    "pods/ephemeralcontainers",
                    "configmaps",
                    "endpoints",
                    "persistentvolumeclaims",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "secrets",
                    "serviceaccounts",
                    "services",
                    "services/proxy",
                ],
                WRITE,
            ),
            rule(&[""], &["secrets"], READ),
            rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "services/proxy"], &["get"]),
            rule(
                &["apps"],
                &[
                    "daemonsets",
                    "deployments",
                    "deployments/rollback",
                    "deployments/scale",
                    "replicasets",
                    "replicasets/scale",
                    "statefulsets",
                    "statefulsets/scale",
                ],
                WRITE,
            ),
            rule(&["batch"], &["cronjobs", "jobs"], WRITE),
            rule(&["networking.k8s.io"], &["networkpolicies"], WRITE),
            rule(&["policy"], &["poddisruptionbudgets"], WRITE),
            rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
            rule(&["coordination.k8s.io"], &["leases"], WRITE),
        ]
    }

    fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
        json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": rules})
    }

    const AGGREGATE_LABEL_PREFIX: &str = "rbac.authorization.k8s.io/aggregate-to-";

    /// A role that aggregates those labelled `aggregate-to-<selects>`, itself labelled to be
    /// aggregated into `into`.
    fn aggregated(name: &str, rules: Vec<Value>, selects: &str, into: Option<&str>) -> Value {
        let mut role = cluster_role(name, rules);
        role["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE_LABEL_PREFIX}{selects}"): "true"}}]});
        if let Some(into) = into {
            role["metadata"]["labels"][format!("{AGGREGATE_LABEL_PREFIX}{into}")] = json!("true");
        }
        role
    }

    /// `system:aggregate-to-<role>`: the rules Kubernetes gives `role` of its own.
    fn aggregate_to(role: &str, rules: Vec<Value>) -> Value {
        let mut r = cluster_role(&format!("system:aggregate-to-{role}"), rules);
        r["metadata"]["labels"][format!("{AGGREGATE_LABEL_PREFIX}{role}")] = json!("true");
        r
    }

    fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
        let subjects: Vec<Value> =
            subjects.iter().map(|(kind, name)| json!({"kind": kind, "apiGroup": GROUP, "name": name})).collect();
        json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
            "subjects": subjects})
    }

    /// The ClusterRoles every cluster starts with.
    pub fn cluster_roles() -> Vec<Value> {
        let all = vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])];
        // As in Kubernetes, view, edit and admin aggregate: each holds the rules of the roles
        // labelled `aggregate-to-<it>` (view is labelled to edit, edit to admin); they start
        // with what the aggregation controller computes, so they hold before it runs.
        let to_view = viewable();
        let to_edit = editable();
        let to_admin = vec![
            rule(
                &[GROUP],
                &["roles", "rolebindings"],
                &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            ),
            rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
        ];
        let union = |parts: &[&Vec<Value>]| {
            let mut out: Vec<Value> = Vec::new();
            for r in parts.iter().flat_map(|p| p.iter()) {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
            out
        };
        // In name order of the roles aggregated: system:aggregate-to-edit before view; edit
        // before system:aggregate-to-admin.
        let view = to_view.clone();
        let edit = union(&[&to_edit, &view]);
        let admin = union(&[&edit, &to_admin]);
        let discovery = vec![paths(
            &[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ],
            &["get"],
        )];
        let basic_user = vec![
            rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
        ];
        let public = vec![paths(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])];
        let scheduler = vec![
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            rule(&["coordination.k8s.io"], &["leases"], &["create", "get", "list", "watch", "update"]),
            rule(
                &[""],
                &[
                    "nodes",
                    "namespaces",
                    "services",
                    "replicationcontrollers",
                    "persistentvolumeclaims",
                    "persistentvolumes",
                ],
                READ,
            ),
            rule(&[""], &["pods"], &["delete", "get", "list", "watch", "patch", "update"]),
            rule(&[""], &["bindings", "pods/binding"], &["create"]),
            rule(&[""], &["pods/status"], &["patch", "update"]),
            rule(&["apps"], &["replicasets", "statefulsets"], READ),
            rule(&["policy"], &["poddisruptionbudgets"], READ),
            rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
            rule(
                &["storage.k8s.io"],
                &["storageclasses", "csinodes", "csidrivers", "csistoragecapacities", "volumeattachments"],
                READ,
            ),
            rule(&[""], &["configmaps"], READ),
        ];
        // Keelson's controller manager runs every controller under its own identity (Kubernetes
        // gives each controller a service account of its own), and cluster DNS uses it too.
        let controller_manager = vec![rule(&["*"], &["*"], &["*"])];
        // A node's agent: its node and lease, its pods and what they mount, and what the service
        // proxy and the NetworkPolicy rules follow (Kubernetes' system:node and
        // system:node-proxier together; the Node authorizer's per-node limits are not here yet).
        let node = vec![
            rule(&[""], &["nodes", "nodes/status"], &["create", "get", "list", "watch", "patch", "update", "delete"]),
            rule(&[""], &["pods"], &["get", "list", "watch", "create", "delete"]),
            rule(&[""], &["pods/status"], &["patch", "update"]),
            rule(&[""], &["pods/eviction"], &["create"]),
            rule(
                &[""],
                &[
                    "configmaps",
                    "secrets",
                    "persistentvolumeclaims",
                    "persistentvolumes",
                    "serviceaccounts",
                    "namespaces",
                    "services",
                    "endpoints",
                ],
                READ,
            ),
            rule(&[""], &["serviceaccounts/token"], &["create"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["create", "delete", "get", "patch", "update", "list", "watch"],
            ),
            rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            rule(&["networking.k8s.io"], &["networkpolicies"], READ),
            rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"]),
        ];
        vec![
            cluster_role("cluster-admin", all),
            aggregated("admin", admin, "admin", None),
            aggregated("edit", edit, "edit", Some("admin")),
            aggregated("view", view, "view", Some("edit")),
            aggregate_to("admin", to_admin),
            aggregate_to("edit", to_edit),
            aggregate_to("view", to_view),
            cluster_role("system:discovery", discovery),
            cluster_role("system:basic-user", basic_user),
            cluster_role("system:public-info-viewer", public),
            cluster_role("system:kube-scheduler", scheduler),
            cluster_role("system:kube-controller-manager", controller_manager),
            cluster_role("system:node", node),
        ]
    }

    /// The ClusterRoleBindings every cluster starts with.
    pub fn cluster_role_bindings() -> Vec<Value> {
        vec![
            binding("cluster-admin", "cluster-admin", &[("Group", crate::pki::MASTERS_GROUP)]),
            binding("system:discovery", "system:discovery", &[("Group", "system:authenticated")]),
            binding("system:basic-user", "system:basic-user", &[("Group", "system:authenticated")]),
            binding(
                "system:public-info-viewer",
                "system:public-info-viewer",
                &[("Group", "system:authenticated"), ("Group", "system:unauthenticated")],
            ),
            binding("system:kube-scheduler", "system:kube-scheduler", &[("User", crate::pki::SCHEDULER_USER)]),
            binding(
                "system:kube-controller-manager",
                "system:kube-controller-manager",
                &[("User", crate::pki::CONTROLLER_MANAGER_USER)],
            ),
            binding("system:node", "system:node", &[("Group", crate::pki::NODES_GROUP)]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn index_of(objects: Vec<Value>) -> Index {
        let mut by_kind: [Vec<Value>; 4] = Default::default();
        for o in objects {
            let i = match o["kind"].as_str().unwrap() {
                "ClusterRole" => 0,
                "Role" => 1,
                "ClusterRoleBinding" => 2,
                _ => 3,
            };
            by_kind[i].push(o);
        }
        Index::build([0; 4], by_kind)
    }

    fn bootstrap_index(extra: Vec<Value>) -> Index {
        let mut all = bootstrap::cluster_roles();
        all.extend(bootstrap::cluster_role_bindings());
        all.extend(extra);
        index_of(all)
    }

    #[test]
    fn requests_read_as_kubernetes_names_them() {
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/default/pods", false);
        let r = a.resource.as_ref().unwrap();
        assert_eq!((a.verb.as_str(), r.resource.as_str(), r.namespace.as_str()), ("list", "pods", "default"));
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/default/pods", true);
        assert_eq!(a.verb, "watch");
        let a = Attributes::of(&Method::POST, "/api/v1/namespaces/default/pods/web/binding", false);
        let r = a.resource.as_ref().unwrap();
        assert_eq!((a.verb.as_str(), r.name.as_str(), r.subresource.as_str()), ("create", "web", "binding"));
        let a = Attributes::of(&Method::DELETE, "/apis/apps/v1/namespaces/x/deployments", false);
        assert_eq!((a.verb.as_str(), a.resource.as_ref().unwrap().group.as_str()), ("deletecollection", "apps"));
        let a = Attributes::of(&Method::GET, "/api/v1/namespaces/team", false);
        let r = a.resource.as_ref().unwrap();
        assert_eq!((a.verb.as_str(), r.resource.as_str(), r.namespace.as_str()), ("get", "namespaces", "team"));
        let a = Attributes::of(&Method::GET, "/apis/apps/v1", false);
        assert_eq!((a.resource.is_none(), a.verb.as_str(), a.path.as_str()), (true, "get", "/apis/apps/v1"));
    }

    #[test]
    fn view_reads_but_does_not_write_and_masters_do_everything() {
        let jane = user("jane", &["system:authenticated"]);
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "jane-view", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}]});
        let index = bootstrap_index(vec![binding]);
        let list = Attributes::of(&Method::GET, "/api/v1/namespaces/team/pods", false);
        assert!(index.allows(&jane, &list));
        // Only in the binding's namespace.
        assert!(!index.allows(&jane, &Attributes::of(&Method::GET, "/api/v1/namespaces/other/pods", false)));
        let create = Attributes::of(&Method::POST, "/api/v1/namespaces/team/configmaps", false);
        assert!(!index.allows(&jane, &create));
        assert!(!index.allows(&jane, &Attributes::of(&Method::GET, "/api/v1/namespaces/team/secrets", false)));
        // Discovery and whoami for every authenticated user.
        assert!(index.allows(&jane, &Attributes::of(&Method::GET, "/apis", false)));
        assert!(!index.allows(&jane, &Attributes::of(&Method::GET, "/metrics", false)));
        let admin = user("system:admin", &[MASTERS_GROUP]);
        assert!(index.allows(&admin, &create));
        let e = create.forbidden(&jane);
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "configmaps is forbidden: User \"jane\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"team\""
        );
    }

    #[test]
    fn a_rule_may_name_resources_subresources_and_names() {
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "one", "namespace": "ns"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get"]},
                      {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "ns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "dev"},
                         {"kind": "ServiceAccount", "name": "robot"}]});
        let index = index_of(vec![role, binding]);
        let dev = user("joe", &["dev"]);
        assert!(index.allows(&dev, &Attributes::of(&Method::GET, "/api/v1/namespaces/ns/configmaps/settings", false)));
        assert!(!index.allows(&dev, &Attributes::of(&Method::GET, "/api/v1/namespaces/ns/configmaps/other", false)));
        let scale = Attributes::of(&Method::PUT, "/apis/apps/v1/namespaces/ns/deployments/web/scale", false);
        assert!(index.allows(&dev, &scale));
        assert!(
            !index.allows(&dev, &Attributes::of(&Method::PUT, "/apis/apps/v1/namespaces/ns/deployments/web", false))
        );
        let robot = user("system:serviceaccount:ns:robot", &["system:serviceaccounts"]);
        assert!(index.allows(&robot, &scale));
        let other_robot = user("system:serviceaccount:other:robot", &[]);
        assert!(!index.allows(&other_robot, &scale));
    }
}
