//! The pod subresources a node serves: `pods/log` (streamed from the agent, `follow` included)
//! and `pods/exec`, `pods/attach`, `pods/portforward` (upgraded connections relayed to the
//! agent, which relays them to the runtime). The API server checks the pod and the container
//! first, with Kubernetes' messages, and finds the agent by the node's InternalIP and its
//! `daemonEndpoints.kubeletEndpoint.port`.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::errors::ApiError;
use super::{resources, verbs, Api};

/// The subresources proxied to the pod's node.
pub fn is_node_subresource(sub: &str) -> bool {
    matches!(sub, "log" | "exec" | "attach" | "portforward")
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(|l| l.as_array())
        .map(|a| a.iter().filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(String::from)).collect())
        .unwrap_or_default()
}

/// The container a request names, or the pod's only one; Kubernetes' errors otherwise.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let spec = pod.get("spec");
    let app = names(spec.and_then(|s| s.get("containers")));
    let init = names(spec.and_then(|s| s.get("initContainers")));
    let ephemeral = names(spec.and_then(|s| s.get("ephemeralContainers")));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if app.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if app.len() == 1 => Ok(app[0].clone()),
        None => {
            let mut message =
                format!("a container name must be specified for pod {name}, choose one of: [{}]", app.join(" "));
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The address of the agent of the node the pod is bound to.
async fn agent_of(api: &Api, pod: &Value, name: &str) -> Result<String, ApiError> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("no nodes resource"))?;
    let (node, _) = verbs::get(api, nodes, None, node_name).await?;
    let addresses = node.pointer("/status/addresses").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let address = ["InternalIP", "ExternalIP", "Hostname"].iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a.get("type").and_then(|t| t.as_str()) == Some(kind))
            .and_then(|a| a.get("address"))
            .and_then(|a| a.as_str())
    });
    let address = address.ok_or_else(|| ApiError::internal(format!("node {node_name} reports no address")))?;
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(|p| p.as_u64()).unwrap_or(10250);
    Ok(if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") })
}

/// The query without `container` (the container is in the agent's path).
fn query_without_container(query: &str) -> String {
    query.split('&').filter(|p| !p.is_empty() && !p.starts_with("container=")).collect::<Vec<_>>().join("&")
}

fn asked_container(query: &str) -> Option<String> {
    agent::logs::form_pairs(query).into_iter().find(|(k, _)| k == "container").map(|(_, v)| v)
}

/// Serves `pods/<sub>` of pod `name` by the agent of its node.
pub async fn serve(api: &Api, req: Request, ns: &str, name: &str, sub: &str) -> Result<Response, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods resource"))?;
    let (pod, _) = verbs::get(api, pods, Some(ns), name).await?;
    let query = req.uri().query().unwrap_or("").to_string();
    let agent = agent_of(api, &pod, name).await?;
    let rest = query_without_container(&query);
    let path = match sub {
        "portforward" => format!("/portForward/{ns}/{name}?{rest}"),
        _ => {
            let container = container_of(&pod, name, asked_container(&query).as_deref())?;
            let what = match sub {
                "log" => "containerLogs",
                "exec" => "exec",
                _ => "attach",
            };
            format!("/{what}/{ns}/{name}/{container}?{rest}")
        }
    };
    if sub == "log" {
        return get_streamed(&agent, &path).await;
    }
    let answer = agent::upgrade::relay(req, &agent, &path).await.map_err(|e| {
        ApiError::new(502, "InternalError", format!("error dialing the node's agent at {agent}: {e:#}"))
    })?;
    Ok(answer.map(Body::from).into_response())
}

/// A GET to the agent whose answer's body is passed on as it arrives (`kubectl logs -f`).
async fn get_streamed(agent: &str, path: &str) -> Result<Response, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::new(502, "InternalError", format!("error dialing the node's agent at {agent}: {e}"))
    };
    let stream = tokio::net::TcpStream::connect(agent).await.map_err(|e| unreachable(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a connection to an agent ended");
        }
    });
    let req = http::Request::get(path)
        .header("host", agent)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let answer = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
    Ok(answer.map(Body::new).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let pod = serde_json::json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(container_of(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(container_of(&pod, "p", Some("i")).unwrap(), "i");
        let e = container_of(&pod, "p", None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        let e = container_of(&pod, "p", Some("z")).unwrap_err();
        assert_eq!(e.message, "container z is not valid for pod p");
        let single = serde_json::json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&single, "p", None).unwrap(), "only");
        assert_eq!(query_without_container("container=a&follow=true"), "follow=true");
    }
}
