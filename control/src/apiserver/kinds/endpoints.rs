//! Endpoints: written by the endpoints controller, read by service proxies.

use k8s_openapi::api::core::v1::Endpoints;
use serde_json::{json, Value};

use super::super::objects::typed;
use super::super::resources::Resource;
use super::super::table::{Column, AGE, NAME};
use super::Strategy;

pub static RESOURCE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    strategy: &EndpointsStrategy,
};

struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        typed::<Endpoints>(body)
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, Column::new("Endpoints", "string", 0, |o| json!(format_endpoints(o))), AGE]
    }
}

/// Up to three `ip:port` pairs and how many more, as kubectl prints endpoints.
fn format_endpoints(o: &Value) -> String {
    const SHOWN_MAX: usize = 3;
    let mut all = Vec::new();
    for subset in o["subsets"].as_array().into_iter().flatten() {
        let addresses: Vec<&str> =
            subset["addresses"].as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str()).collect();
        match subset["ports"].as_array().filter(|p| !p.is_empty()) {
            Some(ports) => {
                for port in ports {
                    for ip in &addresses {
                        all.push(format!("{ip}:{}", port["port"]));
                    }
                }
            }
            None => all.extend(addresses.iter().map(|ip| ip.to_string())),
        }
    }
    if all.is_empty() {
        return "<none>".into();
    }
    let more = all.len().saturating_sub(SHOWN_MAX);
    let shown = all[..all.len().min(SHOWN_MAX)].join(",");
    if more > 0 {
        format!("{shown} + {more} more...")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_as_kubectl_prints_them() {
        let o = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(format_endpoints(&o), "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...");
        assert_eq!(format_endpoints(&json!({})), "<none>");
        assert_eq!(format_endpoints(&json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]})), "10.0.0.1");
    }
}
