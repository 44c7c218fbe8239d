//! Services: a cluster IP and node ports from the configured ranges (see `alloc.rs`), an empty
//! load-balancer status from birth, and the deleted service in a delete's answer.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use super::super::errors::{ApiError, Cause};
use super::super::objects::{check_ports, typed};
use super::super::resources::Resource;
use super::super::store::Also;
use super::super::table::{label_map, or_none, s, Column, AGE, NAME};
use super::super::{alloc, Api};
use super::{set_default, Allocator, NameRule, Strategy};

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &ServiceStrategy,
};

struct ServiceStrategy;

struct ServiceAllocator;

impl Allocator for ServiceAllocator {
    fn prepare(&self, api: &Api, old: Option<&Value>, obj: &mut Value) -> Vec<Cause> {
        alloc::prepare(&api.ranges, old, obj)
    }

    fn claim<'a>(
        &'a self,
        api: &'a Api,
        old: Option<&'a Value>,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Vec<Also>, ApiError>> {
        Box::pin(alloc::claim(api, old, obj))
    }

    fn release(&self, obj: &Value) -> Vec<Also> {
        alloc::release(obj)
    }
}

fn ports(o: &Value) -> Value {
    let ports: Vec<String> = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{node}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    or_none(ports.join(","))
}

/// What kubectl prints as EXTERNAL-IP: the external name, external IPs or the load balancer's.
fn external_ip(o: &Value) -> Value {
    let strings = |p: &str| -> Vec<String> {
        o.pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    match s(o, "/spec/type").as_str() {
        "ExternalName" => json!(s(o, "/spec/externalName")),
        "LoadBalancer" => {
            let mut ips: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()).map(String::from))
                .collect();
            ips.extend(strings("/spec/externalIPs"));
            json!(if ips.is_empty() { "<pending>".to_string() } else { ips.join(",") })
        }
        _ => or_none(strings("/spec/externalIPs").join(",")),
    }
}

impl Strategy for ServiceStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Service>(body)
    }

    fn defaults(&self, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        set_default(obj, "/spec/type", json!("ClusterIP"));
        set_default(obj, "/spec/sessionAffinity", json!("None"));
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                p.entry("targetPort").or_insert(port);
            }
        }
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        super::keep_status(obj, old);
    }

    fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        check_ports(obj.pointer("/spec/ports"), "port", "spec.ports", &mut causes);
        causes
    }

    fn allocator(&self) -> Option<&'static dyn Allocator> {
        Some(&ServiceAllocator)
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Type", "string", 0, |o| json!(s(o, "/spec/type"))),
            Column::new("Cluster-IP", "string", 0, |o| or_none(s(o, "/spec/clusterIP"))),
            Column::new("External-IP", "string", 0, external_ip),
            Column::new("Port(s)", "string", 0, ports),
            AGE,
            Column::new("Selector", "string", 1, |o| label_map(o, "/spec/selector")),
        ]
    }
}
