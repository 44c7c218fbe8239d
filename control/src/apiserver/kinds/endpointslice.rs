//! discovery.k8s.io EndpointSlices: written by the endpointslice controller, read by service
//! proxies and DNS. The address type is fixed at creation, as Kubernetes fixes it.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::super::errors::Cause;
use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{count, s, Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &EndpointSliceStrategy,
};

struct EndpointSliceStrategy;

const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];

impl Strategy for EndpointSliceStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<EndpointSlice>(body)
    }

    fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        let kind = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
        if kind.is_empty() {
            causes.push(Cause::required("addressType"));
        } else if !ADDRESS_TYPES.contains(&kind) {
            causes.push(Cause::not_supported("addressType", kind, ADDRESS_TYPES));
        }
        if let Some(old) = old {
            if old.get("addressType") != obj.get("addressType") {
                causes.push(Cause::invalid("addressType", kind, "field is immutable"));
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("AddressType", "string", 0, |o| json!(s(o, "/addressType"))),
            Column::new("Ports", "string", 0, |o| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64())
                    .map(|p| p.to_string())
                    .collect();
                json!(if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") })
            }),
            Column::new("Endpoints", "string", 0, |o| json!(count(o, "/endpoints"))),
            AGE,
        ]
    }
}
