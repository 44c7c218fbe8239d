//! One strategy per served kind, as Kubernetes keeps one beside its generic registry store: what
//! the server fills in and resets on create and update, defaults, validation, which writes the
//! `/status` subresource may make, whether `metadata.generation` counts spec changes, how a
//! delete behaves and what it returns, the fields lists select by, and the table columns; and,
//! for the kinds Kubernetes' admission plugins look at, what those plugins check or fill in from
//! other objects (a pod's priority from its PriorityClass). The generic store (`verbs.rs`) does
//! everything else the same way for every kind; adding a kind is adding a file here and naming it
//! in [`ALL`].

pub mod configmap;
pub mod controllerrevision;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod networkpolicy;
pub mod node;
pub mod pdb;
pub mod pod;
pub mod priorityclass;
pub mod rbac;
pub mod replicaset;
pub mod replicationcontroller;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::errors::{ApiError, Cause};
use super::objects::LabelSelector;
use super::resources::Resource;
use super::store::Also;
use super::table::{Column, AGE, NAME};
use super::Api;

/// Every served resource type, in discovery order.
pub static ALL: &[&Resource] = &[
    &namespace::RESOURCE,
    &node::RESOURCE,
    &pod::RESOURCE,
    &service::RESOURCE,
    &replicationcontroller::RESOURCE,
    &endpoints::RESOURCE,
    &endpointslice::RESOURCE,
    &configmap::RESOURCE,
    &secret::RESOURCE,
    &volume::CLAIMS,
    &volume::VOLUMES,
    &event::RESOURCE,
    &serviceaccount::RESOURCE,
    &deployment::RESOURCE,
    &replicaset::RESOURCE,
    &daemonset::RESOURCE,
    &statefulset::RESOURCE,
    &controllerrevision::RESOURCE,
    &job::RESOURCE,
    &cronjob::RESOURCE,
    &lease::RESOURCE,
    &pdb::RESOURCE,
    &priorityclass::RESOURCE,
    &networkpolicy::RESOURCE,
    &rbac::ROLES,
    &rbac::CLUSTER_ROLES,
    &rbac::ROLE_BINDINGS,
    &rbac::CLUSTER_ROLE_BINDINGS,
];

/// Which names a kind accepts.
pub enum NameRule {
    /// An RFC 1123 label (namespaces, services).
    Label,
    /// An RFC 1123 subdomain (most kinds).
    Subdomain,
    /// Any name a URL path segment can carry (RBAC's roles and bindings: `system:node`).
    PathSegment,
}

/// A field that lists and watches of a kind may select by: its selector name, where it is in the
/// object, and what an absent value reads as.
#[derive(Debug)]
pub struct SelectableField {
    pub name: &'static str,
    pub pointer: &'static str,
    pub absent: &'static str,
}

const fn field(name: &'static str, pointer: &'static str) -> SelectableField {
    SelectableField { name, pointer, absent: "" }
}

/// Every kind's own fields come after these.
pub const META_FIELDS: &[SelectableField] =
    &[field("metadata.name", "/metadata/name"), field("metadata.namespace", "/metadata/namespace")];

/// The per-kind rules. Every method but `decode` has the behaviour most kinds want as its default.
pub trait Strategy: Sync + Send {
    /// Decodes `body` as the kind's Kubernetes type and encodes it again; the paths of fields the
    /// type does not have come back beside it.
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String>;

    /// Kubernetes' defaults for what a client left out (its `SetDefaults_*` functions), applied to
    /// every body the server accepts.
    fn defaults(&self, _obj: &mut Value) {}

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether `metadata.generation` starts at 1 and counts changes of everything but metadata
    /// and status.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Whether an update changed what `metadata.generation` counts: by default everything but
    /// metadata and status.
    fn generation_changed(&self, obj: &Value, old: &Value) -> bool {
        super::objects::spec_changed(obj, old)
    }

    /// Brings a named object into its canonical form before every create and update is validated.
    fn canonicalize(&self, _obj: &mut Value) {}

    /// What the server sets or resets on a new object before it is validated.
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// What the server keeps from `old` when the main resource is updated.
    fn prepare_for_update(&self, _obj: &mut Value, _old: &Value) {}

    /// What a write through `/status` keeps from `old`: by default everything but metadata and
    /// status (metadata changes go through, as Kubernetes' status strategies let them).
    fn prepare_for_status_update(&self, obj: &mut Value, old: &Value) {
        keep_all_but_status(obj, old);
    }

    /// What a write through a pod's `ephemeralcontainers` subresource keeps from `old`:
    /// everything but the ephemeral containers (other kinds have no such subresource).
    fn prepare_for_ephemeral_update(&self, obj: &mut Value, old: &Value) {
        *obj = old.clone();
    }

    /// Semantic checks of an object about to be written; `old` is the stored one on an update.
    fn validate(&self, _obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        Vec::new()
    }

    /// What the kind takes from shared ranges in the same transaction as its own write.
    fn allocator(&self) -> Option<&'static dyn Allocator> {
        None
    }

    /// What admission does with the kind beyond its own checks, reading other objects.
    fn admission(&self) -> Option<&'static dyn Admission> {
        None
    }

    /// The grace period a delete gives the object (Kubernetes' `CheckGracefulDelete`), given the
    /// one the client asked for; None for kinds deleted without one.
    fn grace_period(&self, _obj: &Value, _asked: Option<i64>) -> Option<i64> {
        None
    }

    /// A delete refused before anything happens.
    fn check_delete(&self, _obj: &Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// What marking the object for deletion changes besides its metadata.
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Whether deleting an object of this kind removes the contents of the namespace it names.
    fn owns_namespace_contents(&self) -> bool {
        false
    }

    /// Whether a delete that removes the object answers with it (Kubernetes'
    /// `ReturnDeletedObject`); otherwise with a `Status` of Success.
    fn returns_deleted_object(&self) -> bool {
        false
    }

    /// Whether objects of the kind expire (`--event-ttl` after their last write), through a
    /// store lease.
    fn expires(&self) -> bool {
        false
    }

    /// Whether the collection may be deleted in one request.
    fn deletecollection(&self) -> bool {
        true
    }

    /// Fields beyond `metadata.name` and `metadata.namespace` that field selectors may name.
    fn selectable_fields(&self) -> &'static [SelectableField] {
        &[]
    }

    /// The columns `kubectl get` prints.
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }
}

/// Values a kind holds from shared ranges (a service's cluster IP and node ports), claimed and
/// released in the same store transaction as the object's own write.
pub trait Allocator: Sync {
    /// Brings `obj` in line with what `old` held and checks what it asks for.
    fn prepare(&self, api: &Api, old: Option<&Value>, obj: &mut Value) -> Vec<Cause>;
    /// Fills in free values and returns the keys to claim and release beside the write.
    fn claim<'a>(
        &'a self,
        api: &'a Api,
        old: Option<&'a Value>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Vec<Also>, ApiError>>;
    /// The keys a deleted object gives back.
    fn release(&self, obj: &Value) -> Vec<Also>;
}

/// Kubernetes' admission plugins for a kind: checks and defaults that read other objects from the
/// store, which a strategy's own (synchronous, one-object) rules cannot. Subresources skip them,
/// as Kubernetes' plugins do.
pub trait Admission: Sync {
    /// Fills in a new object before it is validated (a mutating plugin); `name` is the one errors
    /// give (the `generateName` prefix when no name is given yet).
    fn admit_create<'a>(
        &'a self,
        _api: &'a Api,
        _name: &'a str,
        _obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    /// Refuses a validated create (`old` None) or update of the main resource (a validating
    /// plugin).
    fn validate<'a>(
        &'a self,
        _api: &'a Api,
        _name: &'a str,
        _obj: &'a Value,
        _old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A `/status` write: everything but metadata and status as stored.
pub fn keep_all_but_status(obj: &mut Value, old: &Value) {
    let (Some(new), Some(old)) = (obj.as_object_mut(), old.as_object()) else { return };
    new.retain(|k, _| matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"));
    for (k, v) in old {
        if !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind") {
            new.insert(k.clone(), v.clone());
        }
    }
}

/// A new object of a kind whose status only controllers write: none until they do.
pub fn clear_status(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
}

/// An update of the main resource of a kind with a `/status`: the status stays as stored.
pub fn keep_status(obj: &mut Value, old: &Value) {
    match old.get("status") {
        Some(s) => obj["status"] = s.clone(),
        None => clear_status(obj),
    }
}

/// Sets `pointer` to `value` unless it is there already (its parent must exist).
pub fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    if let Some(Value::Object(map)) = obj.pointer_mut(parent) {
        map.entry(key.to_string()).or_insert(value);
    }
}

/// Makes every object on the way to `pointer` exist (absent and null alike: what `field: null`
/// in a manifest sends).
pub fn ensure_object(obj: &mut Value, pointer: &str) {
    let mut at = String::new();
    for part in pointer.split('/').skip(1) {
        let parent = at.clone();
        at = format!("{at}/{part}");
        if obj.pointer(&at).is_none_or(Value::is_null) {
            if let Some(Value::Object(map)) = obj.pointer_mut(if parent.is_empty() { "" } else { &parent }) {
                map.insert(part.to_string(), json!({}));
            }
        }
    }
}

/// Defaults the update strategy at `at` to RollingUpdate, and, when it is one, the fields of its
/// `rollingUpdate` to `rolling`.
pub fn default_rolling_update(obj: &mut Value, at: &str, rolling: &[(&str, Value)]) {
    ensure_object(obj, at);
    set_default(obj, &format!("{at}/type"), json!("RollingUpdate"));
    if obj.pointer(&format!("{at}/type")) == Some(&json!("RollingUpdate")) {
        let at = format!("{at}/rollingUpdate");
        ensure_object(obj, &at);
        for (field, value) in rolling {
            set_default(obj, &format!("{at}/{field}"), value.clone());
        }
    }
}

/// The checks every workload (deployment, replica set, stateful set, daemon set) shares: a
/// non-negative replica count, a selector that selects the template's labels, a valid template.
pub fn validate_workload(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    let selector = spec.get("selector");
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels").and_then(Value::as_object).is_none_or(Map::is_empty)
            && s.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty)
    });
    if empty {
        causes.push(Cause::required("spec.selector"));
    }
    let template_labels = spec.pointer("/template/metadata/labels").cloned().unwrap_or(json!({}));
    if let Some(sel) = selector.filter(|_| !empty) {
        match LabelSelector::from_json(sel) {
            Ok(s) if !s.matches(&template_labels) => causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                template_labels.to_string(),
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => causes.push(Cause::invalid("spec.selector", sel.to_string(), e)),
        }
    }
    super::objects::check_labels(
        spec.pointer("/template/metadata/labels"),
        "spec.template.metadata.labels",
        &mut causes,
    );
    pod::check_pod_spec(spec.pointer("/template/spec").unwrap_or(&json!({})), "spec.template.spec", &mut causes);
    causes
}

/// The rules every workload kind shares: generation counts spec changes, the status is its
/// controller's (none on create, kept as stored by updates of the main resource), and
/// [`validate_workload`] checks it.
/// The rules of a kind whose spec changes count in `metadata.generation` and whose status only
/// its controller writes (through `/status`).
macro_rules! controlled_rules {
    () => {
        fn tracks_generation(&self) -> bool {
            true
        }

        fn prepare_for_create(&self, obj: &mut Value) {
            super::clear_status(obj);
        }

        fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
            super::keep_status(obj, old);
        }
    };
}
pub(crate) use controlled_rules;

macro_rules! workload_rules {
    () => {
        super::controlled_rules!();

        fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
            super::validate_workload(obj)
        }
    };
}
pub(crate) use workload_rules;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_served_once_and_decodes_its_own_type() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(seen.insert((r.group, r.plural)), "{} listed twice", r.plural);
            let body = json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            let (decoded, unknown) = r.strategy.decode(&body).unwrap_or_else(|e| panic!("{}: {e}", r.kind));
            assert!(unknown.is_empty(), "{}: {unknown:?}", r.kind);
            assert_eq!(decoded["kind"], r.kind);
        }
    }

    #[test]
    fn status_writes_keep_everything_but_metadata_and_status() {
        let old = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}, "status": {"r": 1}});
        let mut new =
            json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "spec": {"replicas": 5}, "status": {"r": 2}});
        keep_all_but_status(&mut new, &old);
        assert_eq!(
            new,
            json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "spec": {"replicas": 1}, "status": {"r": 2}})
        );
    }
}
