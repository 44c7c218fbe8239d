//! `keelson agent`: a node agent (kubelet). With `--runtime hollow` it runs any number of hollow
//! nodes in one process, for scale tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use agent::hollow::HollowNodes;
use agent::AgentOptions;
use anyhow::Context;
use clap::{Args, ValueEnum};
use control::process::{parse_duration, stop_signal};
use k8s_openapi::api::core::v1::Taint;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Runtime {
    /// Pods run in memory, without containers (thousands of nodes per process).
    Hollow,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The Kubernetes API's URL, e.g. http://127.0.0.1:6443.
    #[arg(long, conflicts_with = "kubeconfig")]
    server: Option<String>,
    /// A kubeconfig file to reach the Kubernetes API with.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (one node); defaults to the host's name.
    #[arg(long)]
    node_name: Option<String>,
    /// What runs the pods.
    #[arg(long, value_enum, default_value = "hollow")]
    runtime: Runtime,
    /// Hollow nodes this process runs.
    #[arg(long, default_value_t = 1)]
    hollow_nodes: usize,
    /// Names of hollow nodes: this prefix and the node's index.
    #[arg(long, default_value = "hollow-")]
    hollow_node_prefix: String,
    /// Zones the hollow nodes are spread over (label topology.kubernetes.io/zone=zone-N).
    #[arg(long, default_value_t = 1)]
    hollow_zones: usize,
    /// Each hollow node's cpu capacity.
    #[arg(long, default_value = "8")]
    hollow_cpu: String,
    /// Each hollow node's memory capacity.
    #[arg(long, default_value = "32Gi")]
    hollow_memory: String,
    /// Pods each hollow node accepts.
    #[arg(long, default_value_t = 110)]
    hollow_pods: u32,
    /// Each hollow node's ephemeral storage.
    #[arg(long, default_value = "100Gi")]
    hollow_ephemeral_storage: String,
    /// Labels to register the nodes with: key=value,…
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints to register the nodes with: key[=value]:Effect,…
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// The node lease's duration, in seconds (kubelet's flag).
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u32,
    /// How often the node lease is renewed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    node_lease_renew_interval: std::time::Duration,
    /// How often an unchanged node status is reported anyway (kubelet's flag).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    node_status_report_frequency: std::time::Duration,
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (k, v) = item.split_once('=').with_context(|| format!("--node-labels: {item:?} is not key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn parse_taints(items: &[String]) -> anyhow::Result<Vec<Taint>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (kv, effect) = item.rsplit_once(':').with_context(|| format!("--register-with-taints: {item:?} is not key[=value]:Effect"))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                anyhow::bail!("--register-with-taints: {item:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
            }
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (kv, None),
            };
            if key.is_empty() {
                anyhow::bail!("--register-with-taints: {item:?} has no key");
            }
            Ok(Taint { key: key.into(), value, effect: effect.into(), time_added: None })
        })
        .collect()
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let client = agent::client::connect(args.server.as_deref(), args.kubeconfig.as_deref()).await?;
    let name = args.node_name.clone().or_else(|| {
        if args.hollow_nodes == 1 {
            control::process::hostname()
        } else {
            None
        }
    });
    let options = AgentOptions {
        lease_duration: std::time::Duration::from_secs(args.node_lease_duration_seconds.into()),
        lease_renew_interval: args.node_lease_renew_interval,
        status_report_frequency: args.node_status_report_frequency,
        ..AgentOptions::default()
    };
    match args.runtime {
        Runtime::Hollow => {
            let nodes = HollowNodes {
                prefix: args.hollow_node_prefix,
                name,
                count: args.hollow_nodes,
                zones: args.hollow_zones,
                cpu: args.hollow_cpu,
                memory: args.hollow_memory,
                pods: args.hollow_pods,
                ephemeral_storage: args.hollow_ephemeral_storage,
                labels: parse_labels(&args.node_labels)?,
                taints: parse_taints(&args.register_with_taints)?,
            }
            .build()
            .map_err(anyhow::Error::msg)?;
            agent::run(client, nodes, options, stop_signal()).await
        }
    }
}
