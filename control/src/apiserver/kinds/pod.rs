//! Pods: the pod spec's defaults and checks (which workloads' templates share), status reset to
//! Pending with its QoS class on create, the priority resolved from its PriorityClass on create
//! and fixed afterwards, graceful deletion, and kubectl's STATUS column.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::super::errors::{ApiError, Cause};
use super::super::objects::{check_ports, is_dns_label, is_dns_subdomain, typed, DNS_LABEL_RULE, DNS_SUBDOMAIN_RULE};
use super::super::resources::Resource;
use super::super::table::{count, or_none, s, Column, AGE, NAME};
use super::super::Api;
use super::priorityclass::{self, check_preemption_policy};
use super::{ensure_object, set_default, Admission, SelectableField, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &["status", "binding", "eviction", "log", "exec", "attach", "portforward", "ephemeralcontainers"],
    strategy: &PodStrategy,
};

struct PodStrategy;

const FIELDS: &[SelectableField] = &[
    SelectableField { name: "spec.nodeName", pointer: "/spec/nodeName", absent: "" },
    SelectableField { name: "spec.restartPolicy", pointer: "/spec/restartPolicy", absent: "" },
    SelectableField { name: "spec.schedulerName", pointer: "/spec/schedulerName", absent: "" },
    SelectableField { name: "spec.serviceAccountName", pointer: "/spec/serviceAccountName", absent: "" },
    SelectableField { name: "spec.hostNetwork", pointer: "/spec/hostNetwork", absent: "false" },
    SelectableField { name: "status.phase", pointer: "/status/phase", absent: "" },
    SelectableField { name: "status.podIP", pointer: "/status/podIP", absent: "" },
    SelectableField { name: "status.nominatedNodeName", pointer: "/status/nominatedNodeName", absent: "" },
];

/// The container lists of a pod spec.
const CONTAINER_LISTS: &[&str] = &["initContainers", "containers", "ephemeralContainers"];

fn default_probe(probe: &mut Value) {
    let Some(p) = probe.as_object_mut() else { return };
    for (k, v) in [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)] {
        p.entry(k).or_insert(json!(v));
    }
}

fn default_field_ref(value_from: Option<&mut Value>) {
    if let Some(f) = value_from.and_then(|v| v.get_mut("fieldRef")).and_then(Value::as_object_mut) {
        f.entry("apiVersion").or_insert(json!("v1"));
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(map) = c.as_object_mut() else { return };
    map.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
    map.entry("terminationMessagePolicy").or_insert(json!("File"));
    let image = map.get("image").and_then(Value::as_str).unwrap_or_default();
    // The tag is what follows the last ':' after the last '/'.
    let tag = image.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t);
    let pull = if image.contains('@') || tag.is_some_and(|t| t != "latest") { "IfNotPresent" } else { "Always" };
    map.entry("imagePullPolicy").or_insert(json!(pull));
    map.entry("resources").or_insert(json!({}));
    for p in map.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten().filter_map(Value::as_object_mut) {
        p.entry("protocol").or_insert(json!("TCP"));
        if host_network {
            let port = p.get("containerPort").cloned().unwrap_or(Value::Null);
            p.entry("hostPort").or_insert(port);
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = map.get_mut(probe) {
            default_probe(p);
        }
    }
    for e in map.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
        default_field_ref(e.get_mut("valueFrom"));
    }
}

/// The default file mode of files projected from secrets, config maps and the downward API.
const DEFAULT_MODE: i64 = 0o644;

fn default_volume(v: &mut Value) {
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
            src.entry("defaultMode").or_insert(json!(DEFAULT_MODE));
        }
    }
    for item in v.pointer_mut("/downwardAPI/items").and_then(Value::as_array_mut).into_iter().flatten() {
        default_field_ref(Some(item));
    }
    for s in v.pointer_mut("/projected/sources").and_then(Value::as_array_mut).into_iter().flatten() {
        for item in s.pointer_mut("/downwardAPI/items").and_then(Value::as_array_mut).into_iter().flatten() {
            default_field_ref(Some(item));
        }
    }
}

/// Kubernetes' defaults of a pod spec at `at` (a pod's or a template's).
pub fn default_pod_spec(obj: &mut Value, at: &str) {
    if obj.pointer(at).is_none_or(|s| !s.is_object()) {
        return;
    }
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
    ] {
        set_default(obj, &format!("{at}/{field}"), value);
    }
    let spec = obj.pointer_mut(at).expect("checked above");
    let host_network = spec.get("hostNetwork") == Some(&json!(true));
    for list in CONTAINER_LISTS {
        for c in spec.get_mut(*list).and_then(Value::as_array_mut).into_iter().flatten() {
            default_container(c, host_network);
        }
    }
    for v in spec.get_mut("volumes").and_then(Value::as_array_mut).into_iter().flatten() {
        default_volume(v);
    }
}

/// The pod spec's containers (at least one) and init containers: names unique DNS labels across
/// both, an image each, valid ports; a priority class name that can name one, a known preemption
/// policy.
pub fn check_pod_spec(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(class) = spec.get("priorityClassName").and_then(Value::as_str).filter(|c| !c.is_empty()) {
        if !is_dns_subdomain(class) {
            causes.push(Cause::invalid(format!("{field}.priorityClassName"), class, DNS_SUBDOMAIN_RULE));
        }
    }
    check_preemption_policy(spec.get("preemptionPolicy"), &format!("{field}.preemptionPolicy"), causes);
    if spec.get("containers").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{field}.containers")));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let at = format!("{field}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
                Some(n) if !is_dns_label(n) => causes.push(Cause::invalid(format!("{at}.name"), n, DNS_LABEL_RULE)),
                Some(n) if !seen.insert(n.to_string()) => causes.push(Cause::duplicate(format!("{at}.name"), n)),
                Some(_) => {}
            }
            if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{at}.image")));
            }
            check_ports(c.get("ports"), "containerPort", &format!("{at}.ports"), causes);
        }
    }
}

/// Ephemeral containers: an image each, names unique among all the pod's containers, none of
/// what only regular containers may have (ports, probes, resources), and once added, never
/// changed or removed.
fn check_ephemeral_containers(spec: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let list = |s: Option<&Value>, field: &str| -> Vec<Value> {
        s.and_then(|s| s.get(field)).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let taken: std::collections::HashSet<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| list(Some(spec), f))
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in list(Some(spec), "ephemeralContainers").iter().enumerate() {
        let at = format!("spec.ephemeralContainers[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
            Some(n) if !is_dns_label(n) => causes.push(Cause::invalid(format!("{at}.name"), n, DNS_LABEL_RULE)),
            Some(n) if taken.contains(n) || !seen.insert(n.to_string()) => {
                causes.push(Cause::duplicate(format!("{at}.name"), n))
            }
            Some(_) => {}
        }
        if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{at}.image")));
        }
        for field in ["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"] {
            if c.get(field).is_some_and(|v| !v.is_null()) {
                causes.push(Cause::forbidden(format!("{at}.{field}"), "cannot be set for an Ephemeral Container"));
            }
        }
        if c.pointer("/resources").is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty())) {
            causes.push(Cause::forbidden(format!("{at}.resources"), "cannot be set for an Ephemeral Container"));
        }
    }
    let now = list(Some(spec), "ephemeralContainers");
    for before in list(old, "ephemeralContainers") {
        let name = before["name"].as_str().unwrap_or_default();
        if !now.contains(&before) {
            causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers \"{name}\" may not be changed"),
            ));
        }
    }
}

/// The fields of a pod's priority, which its PriorityClass sets at creation.
const PRIORITY_FIELDS: &[&str] = &["priorityClassName", "priority", "preemptionPolicy"];

/// Kubernetes' refusal of a pod update that changes its spec beyond what may change.
const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,\
    `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
    tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// The taints a pod tolerates for `DEFAULT_TOLERATION_SECONDS` unless it says otherwise.
const DEFAULT_TOLERATED_TAINTS: &[&str] = &["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"];
/// How long a pod stays on a node that is not ready or unreachable before it is evicted
/// (Kubernetes' `--default-not-ready-toleration-seconds` and `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Kubernetes' DefaultTolerationSeconds admission plugin: a new pod that does not tolerate the
/// not-ready or unreachable NoExecute taint gets a toleration of it for 300 s.
fn default_toleration_seconds(obj: &mut Value) {
    let tolerates = |t: &Value, key: &str| {
        let effect = t["effect"].as_str().unwrap_or("");
        let tkey = t["key"].as_str().unwrap_or("");
        let value_ok = match t["operator"].as_str().unwrap_or("") {
            "Exists" => true,
            "" | "Equal" => t["value"].as_str().unwrap_or("").is_empty(),
            _ => false,
        };
        (effect.is_empty() || effect == "NoExecute") && (tkey.is_empty() || tkey == key) && value_ok
    };
    let existing: Vec<Value> = obj.pointer("/spec/tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut added = Vec::new();
    for key in DEFAULT_TOLERATED_TAINTS {
        if !existing.iter().any(|t| tolerates(t, key)) {
            added.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
        }
    }
    if !added.is_empty() {
        ensure_object(obj, "/spec");
        obj["spec"]["tolerations"] = json!(existing.into_iter().chain(added).collect::<Vec<_>>());
    }
}

/// Kubernetes' admission plugins on pod creation: ServiceAccount (see
/// `serviceaccount::admit_pod`), then Priority: the pod's priority class — the one it names, else
/// the global default if there is one — gives its priority and preemption policy; a class that
/// does not exist, or a priority or policy given that differs from the class's, is refused.
/// Without any class the priority is 0 and the policy PreemptLowerPriority.
struct PodAdmission;

impl Admission for PodAdmission {
    fn admit_create<'a>(
        &'a self,
        api: &'a Api,
        name: &'a str,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            super::serviceaccount::admit_pod(api, obj);
            let forbidden = |why: String| ApiError::forbidden(RESOURCE.plural, RESOURCE.group, name, &why);
            let named = s(obj, "/spec/priorityClassName");
            let class = if named.is_empty() {
                priorityclass::global_default(api).await?
            } else {
                let found = priorityclass::find(api, &named).await?;
                Some(found.ok_or_else(|| forbidden(format!("no PriorityClass with name {named} was found")))?)
            };
            let (class_name, priority, policy) = match &class {
                Some(c) => (
                    s(c, "/metadata/name"),
                    c.get("value").and_then(Value::as_i64).unwrap_or(priorityclass::DEFAULT_PRIORITY),
                    c.get("preemptionPolicy")
                        .and_then(Value::as_str)
                        .unwrap_or(priorityclass::DEFAULT_PREEMPTION_POLICY)
                        .to_string(),
                ),
                None => {
                    (String::new(), priorityclass::DEFAULT_PRIORITY, priorityclass::DEFAULT_PREEMPTION_POLICY.into())
                }
            };
            if let Some(given) = obj.pointer("/spec/priority").filter(|p| !p.is_null()) {
                if given.as_i64() != Some(priority) {
                    return Err(forbidden(format!(
                        "the integer value of priority ({given}) must not be provided in pod spec; priority \
                         admission controller computed {priority} from the given PriorityClass name"
                    )));
                }
            }
            if let Some(given) = obj.pointer("/spec/preemptionPolicy").and_then(Value::as_str) {
                if given != policy {
                    return Err(forbidden(format!(
                        "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority \
                         admission controller computed {policy} from the given PriorityClass name"
                    )));
                }
            }
            ensure_object(obj, "/spec");
            if !class_name.is_empty() {
                obj["spec"]["priorityClassName"] = json!(class_name);
            }
            obj["spec"]["priority"] = json!(priority);
            obj["spec"]["preemptionPolicy"] = json!(policy);
            default_toleration_seconds(obj);
            Ok(())
        })
    }
}

/// A resource quantity ("500m", "1Gi", "2") as a number, for comparing requests with limits.
fn quantity(q: &Value) -> Option<f64> {
    let text = match q {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse::<f64>().ok()
}

/// Kubernetes' QoS class of a pod: BestEffort without any CPU or memory request or limit,
/// Guaranteed when every container limits both and requests what it limits, else Burstable.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let (mut any, mut guaranteed) = (false, true);
    for c in containers {
        let amount = |kind: &str, res: &str| {
            c.pointer(&format!("/resources/{kind}/{res}")).and_then(quantity).filter(|q| *q != 0.0)
        };
        for res in ["cpu", "memory"] {
            let (request, limit) = (amount("requests", res), amount("limits", res));
            any |= request.is_some() || limit.is_some();
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn state_reason(state: &Value, kind: &str) -> String {
    state.pointer(&format!("/{kind}/reason")).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The exit of a terminated container without a reason: its signal, else its exit code.
fn exit_text(terminated: &Value) -> String {
    match terminated.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
        Some(signal) => format!("Signal:{signal}"),
        None => format!("ExitCode:{}", terminated.get("exitCode").and_then(Value::as_i64).unwrap_or(0)),
    }
}

fn condition_true(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// kubectl's STATUS of a pod: the phase or reason, refined by init containers (Init:1/2,
/// Init:CrashLoopBackOff), then by the containers' waiting and terminated reasons
/// (ContainerCreating, CrashLoopBackOff, Completed, Error), and Terminating while being deleted.
pub fn display_status(o: &Value) -> String {
    let phase = s(o, "/status/phase");
    let mut reason = match s(o, "/status/reason") {
        r if r.is_empty() => phase.clone(),
        r => r,
    };
    let conditions = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if conditions.iter().any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated") {
        reason = "SchedulingGated".into();
    }
    let init_total = count(o, "/spec/initContainers");
    let restartable: std::collections::HashSet<&str> = o
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut initializing = false;
    let init_statuses =
        o.pointer("/status/initContainerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, c) in init_statuses.iter().enumerate() {
        let state = &c["state"];
        let terminated = state.get("terminated").filter(|t| t.is_object());
        if terminated.is_some_and(|t| t["exitCode"].as_i64() == Some(0)) {
            continue;
        }
        if c["name"].as_str().is_some_and(|n| restartable.contains(n)) && c["started"] == json!(true) {
            continue;
        }
        initializing = true;
        let waiting = state_reason(state, "waiting");
        reason = match terminated {
            Some(t) => match state_reason(state, "terminated") {
                r if r.is_empty() => format!("Init:{}", exit_text(t)),
                r => format!("Init:{r}"),
            },
            None if !waiting.is_empty() && waiting != "PodInitializing" => format!("Init:{waiting}"),
            None => format!("Init:{i}/{init_total}"),
        };
        break;
    }
    if !initializing || condition_true(o, "Initialized") {
        let mut running = false;
        let statuses = o.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
        for c in statuses.iter().rev() {
            let state = &c["state"];
            let (waiting, terminated) =
                (state_reason(state, "waiting"), state.get("terminated").filter(|t| t.is_object()));
            if !waiting.is_empty() {
                reason = waiting;
            } else if let Some(t) = terminated {
                reason = match state_reason(state, "terminated") {
                    r if r.is_empty() => exit_text(t),
                    r => r,
                };
            } else if c["ready"] == json!(true) && state.get("running").is_some_and(Value::is_object) {
                running = true;
            }
        }
        if reason == "Completed" && running {
            reason = if condition_true(o, "Ready") { "Running".into() } else { "NotReady".into() };
        }
    }
    let deleting = o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
    if deleting && s(o, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    reason
}

fn ready(o: &Value) -> Value {
    let total = count(o, "/spec/containers");
    let ready = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |l| l.iter().filter(|c| c["ready"] == json!(true)).count());
    json!(format!("{ready}/{total}"))
}

fn restarts(o: &Value) -> Value {
    let total: i64 = ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .flat_map(|p| o.pointer(p).and_then(Value::as_array).into_iter().flatten())
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    json!(total)
}

impl Strategy for PodStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Pod>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        default_pod_spec(obj, "/spec");
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        if obj.pointer("/spec/schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty()) {
            obj["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False",
                "reason": "SchedulingGated", "message": "Scheduling is blocked due to non-empty scheduling gates",
                "lastProbeTime": null, "lastTransitionTime": super::super::objects::now_rfc3339()}]);
        }
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
        // Admission set these at creation; a client that leaves them out keeps them (Kubernetes'
        // Priority plugin on update), one that changes them is refused by validation.
        for field in ["priority", "preemptionPolicy"] {
            let kept = old.pointer("/spec").and_then(|s| s.get(field)).filter(|v| !v.is_null());
            if let (Some(v), Some(spec)) = (kept, obj.get_mut("spec").and_then(Value::as_object_mut)) {
                if spec.get(field).is_none_or(Value::is_null) {
                    spec.insert(field.into(), v.clone());
                }
            }
        }
    }

    fn prepare_for_status_update(&self, obj: &mut Value, old: &Value) {
        super::keep_all_but_status(obj, old);
        // Owner references stay as they were: old agents are known to corrupt them.
        match old.pointer("/metadata/ownerReferences") {
            Some(r) => obj["metadata"]["ownerReferences"] = r.clone(),
            None => {
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("ownerReferences");
                }
            }
        }
        // The QoS class is fixed at creation.
        if obj.pointer("/status/qosClass").and_then(Value::as_str).is_none_or(str::is_empty) {
            if let Some(q) = old.pointer("/status/qosClass").cloned() {
                ensure_object(obj, "/status");
                obj["status"]["qosClass"] = q;
            }
        }
    }

    fn prepare_for_ephemeral_update(&self, obj: &mut Value, old: &Value) {
        let ephemeral = obj.pointer("/spec/ephemeralContainers").cloned();
        *obj = old.clone();
        match ephemeral {
            Some(e) => obj["spec"]["ephemeralContainers"] = e,
            None => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("ephemeralContainers");
                }
            }
        }
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        check_pod_spec(spec, "spec", &mut causes);
        check_ephemeral_containers(spec, old.and_then(|o| o.get("spec")), &mut causes);
        if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
            let field = |s: &Value, f: &str| s.get(f).filter(|v| !v.is_null()).cloned();
            if PRIORITY_FIELDS.iter().any(|f| field(spec, f) != field(old_spec, f)) {
                causes.push(Cause::forbidden("spec", POD_UPDATE_FORBIDDEN));
            }
        }
        causes
    }

    fn admission(&self) -> Option<&'static dyn Admission> {
        Some(&PodAdmission)
    }

    fn grace_period(&self, obj: &Value, asked: Option<i64>) -> Option<i64> {
        let mut period = asked.or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64));
        let scheduled = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
        if !scheduled || finished {
            period = Some(0);
        }
        // A negative period asks for the shortest one a node can honour.
        Some(match period.unwrap_or(0) {
            p if p < 0 => 1,
            p => p,
        })
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [SelectableField] {
        FIELDS
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Ready", "string", 0, ready),
            Column::new("Status", "string", 0, |o| json!(display_status(o))),
            Column::new("Restarts", "string", 0, restarts),
            AGE,
            Column::new("IP", "string", 1, |o| or_none(s(o, "/status/podIP"))),
            Column::new("Node", "string", 1, |o| or_none(s(o, "/spec/nodeName"))),
            Column::new("Nominated Node", "string", 1, |o| or_none(s(o, "/status/nominatedNodeName"))),
            Column::new("Readiness Gates", "string", 1, |o| {
                let gates = count(o, "/spec/readinessGates");
                if gates == 0 {
                    return json!("<none>");
                }
                let met = o
                    .pointer("/spec/readinessGates")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|g| g["conditionType"].as_str().is_some_and(|t| condition_true(o, t)))
                    .count();
                json!(format!("{met}/{gates}"))
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_tolerate_not_ready_and_unreachable_nodes_for_300_seconds_unless_they_say() {
        let keys = |obj: &Value| -> Vec<(String, Option<i64>)> {
            obj["spec"]["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| (t["key"].as_str().unwrap_or("").to_string(), t["tolerationSeconds"].as_i64()))
                .collect()
        };
        let mut plain = json!({"spec": {"containers": []}});
        default_toleration_seconds(&mut plain);
        assert_eq!(
            keys(&plain),
            vec![
                ("node.kubernetes.io/not-ready".into(), Some(300)),
                ("node.kubernetes.io/unreachable".into(), Some(300))
            ]
        );
        let mut own = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]}});
        default_toleration_seconds(&mut own);
        assert_eq!(
            keys(&own),
            vec![
                ("node.kubernetes.io/unreachable".into(), Some(2)),
                ("node.kubernetes.io/not-ready".into(), Some(300))
            ]
        );
        // Tolerating everything (an empty key with Exists) needs nothing more.
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_toleration_seconds(&mut all);
        assert_eq!(keys(&all).len(), 1);
        // A NoSchedule toleration does not tolerate NoExecute.
        let mut other = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}]}});
        default_toleration_seconds(&mut other);
        assert_eq!(keys(&other).len(), 3);
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let pod = |resources: Value| json!({"containers": [{"name": "a", "image": "x", "resources": resources}]});
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(qos_class(&pod(json!({"limits": {"cpu": "500m", "memory": "1Gi"}}))), "Guaranteed");
        assert_eq!(
            qos_class(&pod(
                json!({"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(qos_class(&pod(json!({"requests": {"cpu": "100m"}}))), "Burstable");
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m", "memory": "1Gi"}}))),
            "Burstable"
        );
    }

    #[test]
    fn status_column_reads_like_kubectl() {
        let with = |status: Value| json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}, {"name": "j"}]}, "status": status});
        assert_eq!(display_status(&with(json!({"phase": "Pending"}))), "Pending");
        let creating = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i", "state": {"terminated": {"exitCode": 0}}},
            {"name": "j", "state": {"running": {}}}]});
        assert_eq!(display_status(&with(creating)), "Init:1/2");
        let init_crash = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        assert_eq!(display_status(&with(init_crash)), "Init:CrashLoopBackOff");
        let crash = json!({"phase": "Running", "containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        let plain = |status: Value| json!({"spec": {"containers": [{"name": "a"}]}, "status": status});
        assert_eq!(display_status(&plain(crash)), "CrashLoopBackOff");
        let creating = json!({"phase": "Pending", "containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}]});
        assert_eq!(display_status(&plain(creating)), "ContainerCreating");
        let done = json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
        assert_eq!(display_status(&plain(done)), "Completed");
        let killed = json!({"phase": "Failed", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]});
        assert_eq!(display_status(&plain(killed)), "Signal:9");
        let mut deleting = plain(json!({"phase": "Running"}));
        deleting["metadata"] = json!({"deletionTimestamp": "2026-01-01T00:00:00Z"});
        assert_eq!(display_status(&deleting), "Terminating");
    }

    #[test]
    fn every_container_list_probe_and_volume_is_defaulted() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox:1"}],
            "ephemeralContainers": [{"name": "e", "image": "busybox"}],
            "containers": [{"name": "a", "image": "x:1", "readinessProbe": {"httpGet": {"port": 80}},
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
            "volumes": [{"name": "s", "secret": {"secretName": "s"}}, {"name": "c", "configMap": {"name": "c", "defaultMode": 256}}]}});
        PodStrategy.defaults(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["ephemeralContainers"][0]["terminationMessagePolicy"], "File");
        assert_eq!(spec["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(spec["containers"][0]["readinessProbe"]["failureThreshold"], 3);
        assert_eq!(spec["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][1]["configMap"]["defaultMode"], 256);
        assert_eq!(spec["enableServiceLinks"], true);
    }
}
