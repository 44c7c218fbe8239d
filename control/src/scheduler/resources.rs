//! Resource quantities as the scheduler counts them: Kubernetes' quantity strings parsed to
//! integers (cpu in millicores, the rest in units, rounded up as Kubernetes rounds), and a pod's
//! requests computed as kube-scheduler computes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Kubernetes' defaults for a container that requests no cpu or memory, used in scoring only.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST_BYTES: i64 = 200 * 1024 * 1024;

/// An amount of every resource the scheduler counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Only meaningful for a node: how many pods it accepts.
    pub allowed_pod_number: i64,
    /// Extended resources (e.g. `example.com/gpu`) and hugepages, in units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// A node's allocatable resources (`status.allocatable`).
    pub fn allocatable(node: &Node) -> Resources {
        let mut r = Resources::default();
        if let Some(list) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
            for (name, q) in list {
                r.set(name, q);
            }
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = milli_value(&q.0).unwrap_or(0),
            "memory" => self.memory = value(&q.0).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = value(&q.0).unwrap_or(0),
            "pods" => self.allowed_pod_number = value(&q.0).unwrap_or(0),
            other if is_scalar(other) => {
                self.scalar.insert(other.to_string(), value(&q.0).unwrap_or(0));
            }
            _ => {}
        }
    }

    fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            r.set(name, q);
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.allowed_pod_number += o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.allowed_pod_number -= o.allowed_pod_number;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each field the larger of the two.
    pub fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// A named resource's amount (cpu in millicores).
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.allowed_pod_number,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }
}

/// Extended resources (a domain-qualified name outside `kubernetes.io/`, or `requests.`-less
/// `*.kubernetes.io/...` is not one), hugepages and attachable volumes are counted as scalars.
pub fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests."))
}

/// A pod's requests as kube-scheduler counts them: the sum over containers, against the largest
/// init container (plus the restartable "sidecar" init containers started before it), plus
/// overhead. The second value applies the default cpu and memory to containers that request none.
pub fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = &pod.spec else { return Default::default() };
    let mut reqs = Resources::default();
    let mut non_zero = Resources::default();
    for c in &spec.containers {
        let (r, nz) = container_requests(c);
        reqs.add(&r);
        non_zero.add(&nz);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_nz = Resources::default();
    let mut init_max = Resources::default();
    let mut init_max_nz = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let (r, nz) = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            non_zero.add(&nz);
            sidecars.add(&r);
            sidecars_nz.add(&nz);
        } else {
            let mut with = r;
            with.add(&sidecars);
            init_max.max_with(&with);
            let mut with_nz = nz;
            with_nz.add(&sidecars_nz);
            init_max_nz.max_with(&with_nz);
        }
    }
    reqs.max_with(&init_max);
    non_zero.max_with(&init_max_nz);
    if let Some(overhead) = &spec.overhead {
        let o = Resources::from_list(Some(overhead));
        reqs.add(&o);
        non_zero.add(&o);
    }
    (reqs, non_zero)
}

fn container_requests(c: &Container) -> (Resources, Resources) {
    // A limit without a request defaults the request (the API server does this on create; a pod
    // written by another client may not have been defaulted).
    let res = c.resources.as_ref();
    let mut r = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    r.allowed_pod_number = 0;
    let requests = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let explicit = res.and_then(|r| r.requests.as_ref());
    let has = |name: &str| explicit.is_some_and(|m| m.contains_key(name));
    if has("cpu") || r.milli_cpu == 0 {
        r.milli_cpu = requests.milli_cpu;
    }
    if has("memory") || r.memory == 0 {
        r.memory = requests.memory;
    }
    if has("ephemeral-storage") || r.ephemeral_storage == 0 {
        r.ephemeral_storage = requests.ephemeral_storage;
    }
    for (k, v) in requests.scalar {
        r.scalar.insert(k, v);
    }
    let mut nz = r.clone();
    if nz.milli_cpu == 0 && !has("cpu") {
        nz.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if nz.memory == 0 && !has("memory") {
        nz.memory = DEFAULT_MEMORY_REQUEST_BYTES;
    }
    (r, nz)
}

/// A quantity in its own unit, rounded up (Kubernetes' `Value()`).
pub fn value(s: &str) -> Option<i64> {
    scaled(s, 0)
}

/// A quantity in thousandths, rounded up (Kubernetes' `MilliValue()`).
pub fn milli_value(s: &str) -> Option<i64> {
    scaled(s, 3)
}

/// Parses a Kubernetes quantity and returns it times 10^`decimals`, rounded up.
fn scaled(s: &str, decimals: i32) -> Option<i64> {
    let s = s.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    // value = mantissa * 10^exp10 * 2^exp2
    let mut exp10 = -(frac_part.len() as i32) + decimals;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => {
            let exp = other.strip_prefix('e').or_else(|| other.strip_prefix('E'))?;
            exp10 += exp.parse::<i32>().ok()?;
        }
    }
    let mut v = mantissa.checked_mul(1i128.checked_shl(exp2 as u32)?)?;
    if exp10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-exp10) as u32).unwrap_or(i128::MAX);
        v = (v + d - 1) / d;
    }
    let v = if negative { -v } else { v };
    i64::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_and_round_up_as_kubernetes_does() {
        let cases: &[(&str, Option<i64>, Option<i64>)] = &[
            ("1", Some(1), Some(1000)),
            ("100m", Some(1), Some(100)),
            ("1.5", Some(2), Some(1500)),
            ("0.1", Some(1), Some(100)),
            ("1Ki", Some(1024), Some(1_024_000)),
            ("32Gi", Some(32 << 30), Some((32i64 << 30) * 1000)),
            ("1k", Some(1000), Some(1_000_000)),
            ("1e3", Some(1000), Some(1_000_000)),
            ("1n", Some(1), Some(1)),
            ("250u", Some(1), Some(1)),
            ("", None, None),
            ("abc", None, None),
            ("1X", None, None),
            ("1.2.3", None, None),
        ];
        for (s, v, m) in cases {
            assert_eq!(value(s), *v, "value({s:?})");
            assert_eq!(milli_value(s), *m, "milli_value({s:?})");
        }
    }

    #[test]
    fn pod_requests_count_init_containers_sidecars_and_overhead() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "200m"}}},
                    {"name": "c", "resources": {"limits": {"cpu": "50m", "example.com/gpu": "1"}}}
                ],
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "10m"}}},
                    {"name": "big", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}}
                ],
                "overhead": {"cpu": "5m"}
            }
        }))
        .unwrap();
        let (r, nz) = pod_requests(&pod);
        // containers 350m + sidecar 10m = 360m; init 1000m + sidecar 10m = 1010m wins; + 5m.
        assert_eq!(r.milli_cpu, 1015);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.scalar.get("example.com/gpu"), Some(&1));
        // b, c and the sidecar request no memory: 200Mi each by default in the non-zero count.
        assert_eq!(nz.memory, (1 << 30) + 3 * DEFAULT_MEMORY_REQUEST_BYTES);
        assert_eq!(nz.milli_cpu, 1015);
    }

    #[test]
    fn an_empty_pod_counts_defaults_only_for_scoring() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [{"name": "a"}]}})).unwrap();
        let (r, nz) = pod_requests(&pod);
        assert_eq!(r, Resources::default());
        assert_eq!((nz.milli_cpu, nz.memory), (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST_BYTES));
    }
}
