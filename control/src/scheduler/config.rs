//! The scheduler's configuration file, shaped like Kubernetes' KubeSchedulerConfiguration
//! (`kubescheduler.config.k8s.io/v1`): profiles, each with a `schedulerName`, the plugins enabled
//! or disabled per extension point (and `multiPoint`), score weights, and `pluginConfig` args.
//! A file that cannot be used is refused at start with the path of the field at fault.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::framework::Plugin;
use super::plugins::{
    self, balanced_allocation, inter_pod_affinity, node_affinity, node_resources_fit, pod_topology_spread,
    taint_toleration,
};

/// The scheduler name pods get by default.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Plugins with no code of their own here: their behaviour is the scheduler's built-in one
/// (queue order by priority, binding through the API, preemption).
const BUILT_IN: &[&str] = &["PrioritySort", "DefaultBinder", "DefaultPreemption"];

/// In-tree Kubernetes plugins Keelson does not have; disabling them is accepted and changes
/// nothing, enabling them is refused.
const ABSENT: &[&str] = &[
    "ImageLocality",
    "VolumeBinding",
    "VolumeRestrictions",
    "VolumeZone",
    "NodeVolumeLimits",
    "EBSLimits",
    "GCEPDLimits",
    "AzureDiskLimits",
    "CinderLimits",
    "SchedulingGates",
    "DynamicResources",
    "DefaultPodTopologySpread",
];

/// The default score plugins and their weights (Kubernetes' defaults).
const DEFAULT_SCORES: &[(&str, i64)] = &[
    (taint_toleration::NAME, 3),
    (node_affinity::NAME, 2),
    (node_resources_fit::NAME, 1),
    (pod_topology_spread::NAME, 2),
    (inter_pod_affinity::NAME, 2),
    (balanced_allocation::NAME, 1),
];

/// The plugins that take part in Filter (in order) — every known one but the balanced allocation.
fn is_filter(name: &str) -> bool {
    plugins::KNOWN.contains(&name) && name != balanced_allocation::NAME
}

fn is_score(name: &str) -> bool {
    DEFAULT_SCORES.iter().any(|(n, _)| *n == name)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub percentage_of_nodes_to_score: Option<u32>,
    pub pod_initial_backoff_seconds: Option<u64>,
    pub pod_max_backoff_seconds: Option<u64>,
    pub parallelism: Option<u32>,
    pub leader_election: Option<LeaderElectionConfiguration>,
    pub client_connection: Option<Value>,
    pub delay_cache_until_active: Option<bool>,
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
}

/// componentbaseconfig's LeaderElectionConfiguration; flags given on the command line win.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionConfiguration {
    pub leader_elect: Option<bool>,
    pub lease_duration: Option<String>,
    pub renew_deadline: Option<String>,
    pub retry_period: Option<String>,
    pub resource_lock: Option<String>,
    pub resource_name: Option<String>,
    pub resource_namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileConfig {
    pub scheduler_name: Option<String>,
    pub percentage_of_nodes_to_score: Option<u32>,
    pub plugins: Option<PluginsConfig>,
    #[serde(default)]
    pub plugin_config: Vec<PluginArgs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginsConfig {
    pub pre_enqueue: Option<PluginSet>,
    pub queue_sort: Option<PluginSet>,
    pub pre_filter: Option<PluginSet>,
    pub filter: Option<PluginSet>,
    pub post_filter: Option<PluginSet>,
    pub pre_score: Option<PluginSet>,
    pub score: Option<PluginSet>,
    pub reserve: Option<PluginSet>,
    pub permit: Option<PluginSet>,
    pub pre_bind: Option<PluginSet>,
    pub bind: Option<PluginSet>,
    pub post_bind: Option<PluginSet>,
    pub multi_point: Option<PluginSet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSet {
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginArgs {
    pub name: String,
    pub args: Option<Value>,
}

/// One profile, ready to schedule with.
pub struct Profile {
    pub scheduler_name: String,
    /// Filter plugins in order (their PreFilter runs first).
    pub filters: Vec<Arc<dyn Plugin>>,
    /// Score plugins with their weights.
    pub scores: Vec<(Arc<dyn Plugin>, i64)>,
    pub percentage_of_nodes_to_score: Option<u32>,
    pub preemption: bool,
}

impl SchedulerConfiguration {
    /// Reads a configuration file (YAML or JSON).
    pub fn from_file(path: &std::path::Path) -> Result<SchedulerConfiguration, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<SchedulerConfiguration, String> {
        let value: Value = serde_norway::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
        let config: SchedulerConfiguration = plugins::decode_args(Some(&value))?;
        if let Some(v) = &config.api_version {
            if v != "kubescheduler.config.k8s.io/v1" {
                return Err(format!(
                    "apiVersion: unsupported value {v:?} (expected \"kubescheduler.config.k8s.io/v1\")"
                ));
            }
        }
        if let Some(k) = &config.kind {
            if k != "KubeSchedulerConfiguration" {
                return Err(format!("kind: unsupported value {k:?} (expected \"KubeSchedulerConfiguration\")"));
            }
        }
        if let Some(p) = config.percentage_of_nodes_to_score {
            if p > 100 {
                return Err(format!("percentageOfNodesToScore: Invalid value: {p}: not in valid range [0-100]"));
            }
        }
        config.profiles()?;
        Ok(config)
    }

    /// Builds every profile (one default profile when the file names none).
    pub fn profiles(&self) -> Result<Vec<Profile>, String> {
        let default = [ProfileConfig::default()];
        let configs: &[ProfileConfig] = if self.profiles.is_empty() { &default } else { &self.profiles };
        let mut out: Vec<Profile> = Vec::new();
        for (i, p) in configs.iter().enumerate() {
            let profile =
                build_profile(p, self.percentage_of_nodes_to_score).map_err(|e| format!("profiles[{i}].{e}"))?;
            if out.iter().any(|o| o.scheduler_name == profile.scheduler_name) {
                return Err(format!("profiles[{i}].schedulerName: Duplicate value: {:?}", profile.scheduler_name));
            }
            out.push(profile);
        }
        Ok(out)
    }
}

fn check_name(name: &str, enabling: bool) -> Result<(), String> {
    if plugins::KNOWN.contains(&name) || BUILT_IN.contains(&name) {
        return Ok(());
    }
    if ABSENT.contains(&name) && !enabling {
        return Ok(());
    }
    Err(format!("unknown plugin {name:?} (known: {}, {})", plugins::KNOWN.join(", "), BUILT_IN.join(", ")))
}

/// Applies one extension point's set to `list` (Kubernetes' merge: "*" disables every default,
/// disabled names are removed, enabled ones are appended or get their weight set).
fn apply(
    list: &mut Vec<(String, i64)>,
    set: Option<&PluginSet>,
    point: &str,
    eligible: fn(&str) -> bool,
) -> Result<(), String> {
    let Some(set) = set else { return Ok(()) };
    for (j, d) in set.disabled.iter().enumerate() {
        if d.name == "*" {
            list.clear();
            continue;
        }
        check_name(&d.name, false).map_err(|e| format!("plugins.{point}.disabled[{j}].name: {e}"))?;
        list.retain(|(n, _)| *n != d.name);
    }
    for (j, e) in set.enabled.iter().enumerate() {
        check_name(&e.name, true).map_err(|err| format!("plugins.{point}.enabled[{j}].name: {err}"))?;
        if let Some(w) = e.weight {
            if w < 0 {
                return Err(format!("plugins.{point}.enabled[{j}].weight: Invalid value: {w}: must be 0 or more"));
            }
        }
        if !eligible(&e.name) && point != "multiPoint" {
            if BUILT_IN.contains(&e.name.as_str()) {
                continue;
            }
            return Err(format!("plugins.{point}.enabled[{j}].name: {:?} does not implement {point}", e.name));
        }
        if !eligible(&e.name) {
            continue;
        }
        let default_weight = DEFAULT_SCORES.iter().find(|(n, _)| *n == e.name).map(|(_, w)| *w).unwrap_or(1);
        let weight = e.weight.filter(|w| *w > 0).unwrap_or(default_weight);
        match list.iter_mut().find(|(n, _)| *n == e.name) {
            Some(entry) => entry.1 = weight,
            None => list.push((e.name.clone(), weight)),
        }
    }
    Ok(())
}

fn build_profile(p: &ProfileConfig, global_percentage: Option<u32>) -> Result<Profile, String> {
    let mut filters: Vec<(String, i64)> =
        plugins::KNOWN.iter().filter(|n| is_filter(n)).map(|n| (n.to_string(), 0)).collect();
    let mut scores: Vec<(String, i64)> = DEFAULT_SCORES.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    let mut preemption = true;
    if let Some(plugins) = &p.plugins {
        // multiPoint first, then the specific extension points override it.
        if let Some(mp) = &plugins.multi_point {
            apply(&mut filters, Some(mp), "multiPoint", is_filter)?;
            apply(&mut scores, Some(mp), "multiPoint", is_score)?;
            if mp.disabled.iter().any(|d| d.name == "*" || d.name == "DefaultPreemption") {
                preemption = false;
            }
            if mp.enabled.iter().any(|e| e.name == "DefaultPreemption") {
                preemption = true;
            }
        }
        // A PreFilter set acts on the filter plugins, as every filter here has its PreFilter.
        apply(&mut filters, plugins.pre_filter.as_ref(), "preFilter", is_filter)?;
        apply(&mut filters, plugins.filter.as_ref(), "filter", is_filter)?;
        apply(&mut scores, plugins.pre_score.as_ref(), "preScore", is_score)?;
        apply(&mut scores, plugins.score.as_ref(), "score", is_score)?;
        if let Some(pf) = &plugins.post_filter {
            for (j, d) in pf.disabled.iter().enumerate() {
                match d.name.as_str() {
                    "*" | "DefaultPreemption" => preemption = false,
                    other => {
                        check_name(other, false).map_err(|e| format!("plugins.postFilter.disabled[{j}].name: {e}"))?
                    }
                }
            }
            for (j, e) in pf.enabled.iter().enumerate() {
                match e.name.as_str() {
                    "DefaultPreemption" => preemption = true,
                    other => {
                        return Err(format!(
                            "plugins.postFilter.enabled[{j}].name: {other:?} does not implement postFilter"
                        ))
                    }
                }
            }
        }
    }
    let mut args: HashMap<&str, Option<&Value>> = HashMap::new();
    for (j, a) in p.plugin_config.iter().enumerate() {
        check_name(&a.name, true).map_err(|e| format!("pluginConfig[{j}].name: {e}"))?;
        if args.insert(a.name.as_str(), a.args.as_ref()).is_some() {
            return Err(format!("pluginConfig[{j}].name: Duplicate value: {:?}", a.name));
        }
    }
    let mut built: HashMap<String, Arc<dyn Plugin>> = HashMap::new();
    let mut get = |name: &str| -> Result<Arc<dyn Plugin>, String> {
        if let Some(p) = built.get(name) {
            return Ok(p.clone());
        }
        let a = args.get(name).copied().flatten();
        let plugin = plugins::build(name, a).map_err(|e| {
            let j = p.plugin_config.iter().position(|c| c.name == name).unwrap_or(0);
            format!("pluginConfig[{j}].args: {e}")
        })?;
        built.insert(name.to_string(), plugin.clone());
        Ok(plugin)
    };
    let filters = filters.iter().map(|(n, _)| get(n)).collect::<Result<Vec<_>, _>>()?;
    let scores = scores.iter().map(|(n, w)| get(n).map(|p| (p, *w))).collect::<Result<Vec<_>, _>>()?;
    // Args for a plugin that is not enabled are still checked.
    for name in args.keys() {
        if plugins::KNOWN.contains(name) {
            get(name)?;
        }
    }
    let percentage = p.percentage_of_nodes_to_score.or(global_percentage);
    if let Some(pct) = p.percentage_of_nodes_to_score {
        if pct > 100 {
            return Err(format!("percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"));
        }
    }
    Ok(Profile {
        scheduler_name: p.scheduler_name.clone().unwrap_or_else(|| DEFAULT_SCHEDULER_NAME.to_string()),
        filters,
        scores,
        percentage_of_nodes_to_score: percentage,
        preemption,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Profile) -> (Vec<&'static str>, Vec<(&'static str, i64)>) {
        (p.filters.iter().map(|f| f.name()).collect(), p.scores.iter().map(|(s, w)| (s.name(), *w)).collect())
    }

    #[test]
    fn no_file_means_kubernetes_defaults() {
        let c = SchedulerConfiguration::parse("{}").unwrap();
        let profiles = c.profiles().unwrap();
        assert_eq!(profiles.len(), 1);
        let (filters, scores) = names(&profiles[0]);
        assert_eq!(profiles[0].scheduler_name, DEFAULT_SCHEDULER_NAME);
        assert!(filters.contains(&"NodeResourcesFit") && !filters.contains(&"NodeResourcesBalancedAllocation"));
        assert!(scores.contains(&("TaintToleration", 3)) && scores.contains(&("NodeResourcesBalancedAllocation", 1)));
        assert!(profiles[0].preemption);
    }

    #[test]
    fn profiles_enable_disable_and_weigh_plugins() {
        let c = SchedulerConfiguration::parse(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 50
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      disabled: [{name: "*"}]
      enabled: [{name: NodeResourcesFit, weight: 5}]
    filter:
      disabled: [{name: NodePorts}]
    postFilter:
      disabled: [{name: DefaultPreemption}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
"#,
        )
        .unwrap();
        let profiles = c.profiles().unwrap();
        assert_eq!(profiles.len(), 2);
        let (filters, scores) = names(&profiles[1]);
        assert_eq!(profiles[1].scheduler_name, "packer");
        assert!(!filters.contains(&"NodePorts"));
        assert_eq!(scores, vec![("NodeResourcesFit", 5)]);
        assert!(!profiles[1].preemption);
        assert_eq!(profiles[1].percentage_of_nodes_to_score, Some(50));
    }

    #[test]
    fn malformed_files_are_refused_naming_the_field() {
        let cases = [
            ("profiles: [{schedulerNam: x}]", "profiles[0]"),
            ("profiles: [{plugins: {score: {enabled: [{name: Nope}]}}}]", "profiles[0].plugins.score.enabled[0].name"),
            (
                "profiles: [{plugins: {score: {enabled: [{name: NodeName}]}}}]",
                "profiles[0].plugins.score.enabled[0].name",
            ),
            (
                "profiles: [{plugins: {score: {enabled: [{name: NodeResourcesFit, weight: -1}]}}}]",
                "profiles[0].plugins.score.enabled[0].weight",
            ),
            ("profiles: [{}, {}]", "profiles[1].schedulerName"),
            ("percentageOfNodesToScore: 101", "percentageOfNodesToScore"),
            ("apiVersion: kubescheduler.config.k8s.io/v1beta9", "apiVersion"),
            (
                "profiles: [{pluginConfig: [{name: NodeResourcesFit, args: {scoringStrategy: {type: Bogus}}}]}]",
                "profiles[0].pluginConfig[0].args",
            ),
            ("profiles: [{pluginConfig: [{name: A}, {name: A}]}]", "profiles[0].pluginConfig[0].name"),
            ("percentageOfNodesToScore: lots", "percentageOfNodesToScore"),
            ("[", "not YAML"),
        ];
        for (text, want) in cases {
            let err = SchedulerConfiguration::parse(text).err().unwrap_or_else(|| panic!("{text} was accepted"));
            assert!(err.contains(want), "{text}: {err} should name {want}");
        }
        // Disabling an in-tree plugin Keelson does not have is fine.
        assert!(SchedulerConfiguration::parse("profiles: [{plugins: {score: {disabled: [{name: ImageLocality}]}}}]")
            .is_ok());
    }
}
