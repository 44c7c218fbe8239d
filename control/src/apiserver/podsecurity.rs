//! Pod Security admission, as Kubernetes' PodSecurity plugin: a namespace's
//! `pod-security.kubernetes.io/<mode>` labels (`enforce`, `warn`, `audit`) name a level of the Pod
//! Security Standards (`privileged`, `baseline`, `restricted`); a new pod that breaks the
//! `enforce` level is refused with Kubernetes' 403, and one (or a workload's pod template) that
//! breaks the `warn` level is admitted with Kubernetes' warning. Every version label is read as
//! `latest`. Checks, their order (by Kubernetes' check IDs) and their words are Kubernetes'.

use serde_json::Value;

use super::errors::ApiError;
use super::kinds;
use super::resources::Resource;
use super::Api;

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
const LEVELS: &[&str] = &["privileged", "baseline", "restricted"];
/// Capabilities a baseline container may add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const RESTRICTED_VOLUME_TYPES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(text: &str) -> Option<Level> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        LEVELS[self as usize]
    }
}

/// A broken check: its reason and what breaks it.
#[derive(Debug, PartialEq)]
pub struct Violation {
    pub reason: &'static str,
    pub detail: String,
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let noun = if names.len() == 1 { "container" } else { "containers" };
    format!("{noun} {}", quoted.join(", "))
}

fn quoted(list: &[String]) -> String {
    list.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// The containers of a pod spec, init containers first (as Kubernetes visits them), with their
/// security contexts.
fn containers(spec: &Value) -> Vec<(String, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c))
        .collect()
}

fn sc<'a>(c: &'a Value, field: &str) -> &'a Value {
    c.pointer(&format!("/securityContext/{field}")).unwrap_or(&Value::Null)
}

/// What `spec` (a pod's spec) breaks of `level`, in Kubernetes' order of checks.
pub fn violations(spec: &Value, level: Level) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let restricted = level == Level::Restricted;
    let all = containers(spec);
    let pod_sc = spec.get("securityContext").unwrap_or(&Value::Null);
    let named = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        all.iter().filter(|(_, c)| pred(c)).map(|(n, _)| n.clone()).collect()
    };

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad = named(&|c| sc(c, "allowPrivilegeEscalation") != &Value::Bool(false));
        if !bad.is_empty() {
            out.push(Violation {
                reason: "allowPrivilegeEscalation != false",
                detail: format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&bad)),
            });
        }
    }
    // appArmorProfile
    let unconfined_apparmor = pod_sc.pointer("/appArmorProfile/type") == Some(&Value::from("Unconfined"))
        || all.iter().any(|(_, c)| sc(c, "appArmorProfile").get("type") == Some(&Value::from("Unconfined")));
    if unconfined_apparmor {
        out.push(Violation {
            reason: "forbidden AppArmor profile",
            detail: "appArmorProfile.type \"Unconfined\"".to_string(),
        });
    }
    // capabilities: restricted's check replaces baseline's.
    let added = |c: &Value| -> Vec<String> {
        sc(c, "capabilities")
            .get("add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    if restricted {
        let mut details = Vec::new();
        let no_drop = named(&|c| {
            !sc(c, "capabilities").get("drop").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "ALL"))
        });
        if !no_drop.is_empty() {
            details
                .push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&no_drop)));
        }
        for (name, c) in &all {
            let bad: Vec<String> = added(c).into_iter().filter(|a| a != "NET_BIND_SERVICE").collect();
            if !bad.is_empty() {
                details.push(format!(
                    "container {name:?} must not include {} in securityContext.capabilities.add",
                    quoted(&bad)
                ));
            }
        }
        if !details.is_empty() {
            out.push(Violation { reason: "unrestricted capabilities", detail: details.join("; ") });
        }
    } else {
        let mut details = Vec::new();
        for (name, c) in &all {
            let bad: Vec<String> =
                added(c).into_iter().filter(|a| !BASELINE_CAPABILITIES.contains(&a.as_str())).collect();
            if !bad.is_empty() {
                details.push(format!(
                    "container {name:?} must not include {} in securityContext.capabilities.add",
                    quoted(&bad)
                ));
            }
        }
        if !details.is_empty() {
            out.push(Violation { reason: "non-default capabilities", detail: details.join("; ") });
        }
    }
    // hostNamespaces
    let hosts: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec.get(**f) == Some(&Value::Bool(true)))
        .map(|f| format!("{f}=true"))
        .collect();
    if !hosts.is_empty() {
        out.push(Violation { reason: "host namespaces", detail: hosts.join(", ") });
    }
    let volumes: Vec<&Value> = spec.get("volumes").and_then(Value::as_array).into_iter().flatten().collect();
    // hostPathVolumes
    let host_paths: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| v["name"].as_str().unwrap_or("").to_string())
        .collect();
    if !host_paths.is_empty() {
        let noun = if host_paths.len() == 1 { "volume" } else { "volumes" };
        out.push(Violation { reason: "hostPath volumes", detail: format!("{noun} {}", quoted(&host_paths)) });
    }
    // hostPorts
    let mut port_users = Vec::new();
    let mut ports = Vec::new();
    for (name, c) in &all {
        let mine: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64).filter(|p| *p != 0))
            .map(|p| p.to_string())
            .collect();
        if !mine.is_empty() {
            port_users.push(name.clone());
            ports.extend(mine);
        }
    }
    if !port_users.is_empty() {
        let (verb, noun) = if port_users.len() == 1 { ("uses", "hostPort") } else { ("use", "hostPorts") };
        let noun = if ports.len() > 1 { "hostPorts" } else { noun };
        out.push(Violation {
            reason: "hostPort",
            detail: format!("{} {verb} {noun} {}", containers_phrase(&port_users), ports.join(", ")),
        });
    }
    // privileged
    let privileged = named(&|c| sc(c, "privileged") == &Value::Bool(true));
    if !privileged.is_empty() {
        out.push(Violation {
            reason: "privileged",
            detail: format!("{} must not set securityContext.privileged=true", containers_phrase(&privileged)),
        });
    }
    // procMount
    let unmasked = named(&|c| sc(c, "procMount").as_str().is_some_and(|m| m != "Default"));
    if !unmasked.is_empty() {
        out.push(Violation {
            reason: "procMount",
            detail: format!("{} must not set securityContext.procMount to \"Unmasked\"", containers_phrase(&unmasked)),
        });
    }
    // restrictedVolumes
    if restricted {
        let mut names = Vec::new();
        let mut kinds: Vec<String> = Vec::new();
        for v in &volumes {
            let kind = v.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).find(|k| *k != "name");
            if let Some(kind) = kind.filter(|k| !RESTRICTED_VOLUME_TYPES.contains(k)) {
                names.push(v["name"].as_str().unwrap_or("").to_string());
                if !kinds.iter().any(|k| k == kind) {
                    kinds.push(kind.to_string());
                }
            }
        }
        if !names.is_empty() {
            let (noun, verb, types) =
                if names.len() == 1 { ("volume", "uses", "type") } else { ("volumes", "use", "types") };
            let types = if kinds.len() > 1 { "types" } else { types };
            out.push(Violation {
                reason: "restricted volume types",
                detail: format!("{noun} {} {verb} restricted volume {types} {}", quoted(&names), quoted(&kinds)),
            });
        }
    }
    // runAsNonRoot (restricted)
    if restricted {
        let pod_choice = pod_sc.get("runAsNonRoot").and_then(Value::as_bool);
        let mut details = Vec::new();
        if pod_choice == Some(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let set_false = named(&|c| sc(c, "runAsNonRoot") == &Value::Bool(false));
        if !set_false.is_empty() {
            details.push(format!("{} must not set securityContext.runAsNonRoot=false", containers_phrase(&set_false)));
        }
        if pod_choice.is_none() {
            let unset = named(&|c| sc(c, "runAsNonRoot").is_null());
            if !unset.is_empty() {
                details
                    .push(format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&unset)));
            }
        }
        if !details.is_empty() {
            out.push(Violation { reason: "runAsNonRoot != true", detail: details.join("; ") });
        }
        // runAsUser
        let mut details = Vec::new();
        if pod_sc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
            details.push("pod must not set runAsUser=0".to_string());
        }
        let root = named(&|c| sc(c, "runAsUser").as_i64() == Some(0));
        if !root.is_empty() {
            details.push(format!("{} must not set runAsUser=0", containers_phrase(&root)));
        }
        if !details.is_empty() {
            out.push(Violation { reason: "runAsUser=0", detail: details.join("; ") });
        }
    }
    // seLinuxOptions
    let selinux_bad = |o: &Value| {
        !o.is_null()
            && (!SELINUX_TYPES.contains(&o.get("type").and_then(Value::as_str).unwrap_or(""))
                || o.get("user").and_then(Value::as_str).is_some_and(|u| !u.is_empty())
                || o.get("role").and_then(Value::as_str).is_some_and(|r| !r.is_empty()))
    };
    let selinux_containers = named(&|c| selinux_bad(sc(c, "seLinuxOptions")));
    if selinux_bad(pod_sc.get("seLinuxOptions").unwrap_or(&Value::Null)) || !selinux_containers.is_empty() {
        let mut who = Vec::new();
        if selinux_bad(pod_sc.get("seLinuxOptions").unwrap_or(&Value::Null)) {
            who.push("pod".to_string());
        }
        if !selinux_containers.is_empty() {
            who.push(containers_phrase(&selinux_containers));
        }
        out.push(Violation {
            reason: "seLinuxOptions",
            detail: format!("{} set forbidden securityContext.seLinuxOptions", who.join(" and ")),
        });
    }
    // seccompProfile: restricted's check replaces baseline's.
    let profile = |v: &Value| v.pointer("/seccompProfile/type").and_then(Value::as_str).map(String::from);
    let pod_profile = profile(pod_sc);
    let mut details = Vec::new();
    if pod_profile.as_deref() == Some("Unconfined") {
        details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
    }
    let unconfined =
        named(&|c| profile(c.get("securityContext").unwrap_or(&Value::Null)).as_deref() == Some("Unconfined"));
    if !unconfined.is_empty() {
        details.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&unconfined)
        ));
    }
    if restricted && pod_profile.is_none() {
        let unset = named(&|c| profile(c.get("securityContext").unwrap_or(&Value::Null)).is_none());
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset)
            ));
        }
    }
    if !details.is_empty() {
        out.push(Violation { reason: "seccompProfile", detail: details.join("; ") });
    }
    // sysctls
    let forbidden: Vec<String> = pod_sc
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(String::from)
        .collect();
    if !forbidden.is_empty() {
        out.push(Violation { reason: "forbidden sysctls", detail: forbidden.join(", ") });
    }
    out
}

/// Kubernetes' words for a list of violations.
fn summary(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{} ({})", v.reason, v.detail)).collect::<Vec<_>>().join(", ")
}

/// Where the pod spec of an object of `res` is.
fn pod_spec_of<'a>(res: &Resource, obj: &'a Value) -> Option<&'a Value> {
    match (res.group, res.plural) {
        ("", "pods") => obj.get("spec"),
        ("batch", "cronjobs") => obj.pointer("/spec/jobTemplate/spec/template/spec"),
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs")
        | ("", "replicationcontrollers") => obj.pointer("/spec/template/spec"),
        _ => None,
    }
}

/// The levels a namespace's labels set, by mode.
async fn namespace_levels(api: &Api, namespace: &str) -> Result<Vec<(String, Level)>, ApiError> {
    let labels = api
        .current(&kinds::namespace::RESOURCE, None, namespace)
        .await?
        .map(|o| o.pointer("/metadata/labels").cloned().unwrap_or(Value::Null));
    let Some(labels) = labels else { return Ok(Vec::new()) };
    Ok(["enforce", "warn", "audit"]
        .iter()
        .filter_map(|mode| {
            let level = labels.get(format!("{LABEL_PREFIX}{mode}"))?.as_str().and_then(Level::parse)?;
            Some((mode.to_string(), level))
        })
        .collect())
}

/// Checks a new object of `res` in `namespace`: the 403 when a pod breaks the namespace's
/// `enforce` level, else the warnings its `warn` level gives.
pub async fn admit(
    api: &Api,
    res: &Resource,
    namespace: Option<&str>,
    name: &str,
    obj: &Value,
) -> Result<Vec<String>, ApiError> {
    let (Some(namespace), Some(spec)) = (namespace, pod_spec_of(res, obj)) else { return Ok(Vec::new()) };
    let levels = namespace_levels(api, namespace).await?;
    let mut warnings = Vec::new();
    for (mode, level) in levels {
        let found = violations(spec, level);
        if found.is_empty() {
            continue;
        }
        let policy = format!("{}:latest", level.name());
        match mode.as_str() {
            "enforce" if res.plural == "pods" => {
                return Err(ApiError::forbidden(
                    res.plural,
                    res.group,
                    name,
                    &format!("violates PodSecurity {policy:?}: {}", summary(&found)),
                ));
            }
            "warn" => warnings.push(format!("would violate PodSecurity {policy:?}: {}", summary(&found))),
            _ => {}
        }
    }
    Ok(warnings)
}

/// The namespace labels' values, checked: a level or version Kubernetes would not take is a
/// field error.
pub fn check_labels(labels: &Value) -> Vec<super::errors::Cause> {
    let mut causes = Vec::new();
    for (key, value) in labels.as_object().into_iter().flatten() {
        let Some(mode) = key.strip_prefix(LABEL_PREFIX) else { continue };
        let value = value.as_str().unwrap_or_default();
        let field = format!("metadata.labels[{key}]");
        match mode {
            "enforce" | "warn" | "audit" if Level::parse(value).is_none() => {
                causes.push(super::errors::Cause::not_supported(field, value, LEVELS));
            }
            "enforce-version" | "warn-version" | "audit-version" => {
                let valid = value == "latest"
                    || value
                        .strip_prefix("v1.")
                        .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()));
                if !valid {
                    causes.push(super::errors::Cause::invalid(field, value, "must be \"latest\" or \"v1.x\""));
                }
            }
            _ => {}
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary_of(spec: Value, level: Level) -> String {
        summary(&violations(&spec, level))
    }

    #[test]
    fn a_plain_pod_breaks_restricted_as_kubernetes_words_it() {
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx"}]});
        assert_eq!(
            summary_of(spec.clone(), Level::Restricted),
            r#"allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        );
        assert!(violations(&spec, Level::Baseline).is_empty());
        assert!(violations(&spec, Level::Privileged).is_empty());
    }

    #[test]
    fn a_hardened_pod_passes_restricted() {
        let spec = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "configMap": {"name": "x"}}, {"name": "t", "projected": {"sources": []}}],
        });
        assert_eq!(violations(&spec, Level::Restricted), vec![]);
    }

    #[test]
    fn baseline_refuses_what_opens_the_host() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true}},
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        });
        assert_eq!(
            summary_of(spec, Level::Baseline),
            r#"non-default capabilities (container "a" must not include "SYS_ADMIN" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume "root"), hostPort (container "a" uses hostPort 8080), privileged (containers "a", "b" must not set securityContext.privileged=true), forbidden sysctls (kernel.msgmax)"#
        );
    }

    #[test]
    fn namespace_labels_name_known_levels() {
        assert!(check_labels(&json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn-version": "v1.33", "other": "x"})).is_empty());
        let causes = check_labels(
            &json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/audit-version": "1.2"}),
        );
        assert_eq!(causes.len(), 2);
        let enforce = causes.iter().find(|c| c.field.ends_with("enforce]")).unwrap();
        assert!(
            enforce.message.contains("supported values: \"privileged\", \"baseline\", \"restricted\""),
            "{}",
            enforce.message
        );
    }
}
