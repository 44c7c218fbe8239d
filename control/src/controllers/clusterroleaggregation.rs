//! Kubernetes' ClusterRole aggregation controller (`clusterrole-aggregation`): a ClusterRole
//! with an `aggregationRule` holds the rules of every other ClusterRole its
//! `clusterRoleSelectors` match (in name order, each rule once), written back whenever one of
//! them changes — how `admin`, `edit` and `view` take in the roles labelled
//! `rbac.authorization.k8s.io/aggregate-to-<role>: "true"`.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, PostParams};

use super::informer::{Change, Informer};
use super::queue::WorkQueue;
use super::{Controller, Manager};

pub struct AggregationController {
    client: kube::Client,
    roles: Arc<Informer<ClusterRole>>,
    queue: WorkQueue,
}

impl AggregationController {
    pub fn new(m: &Manager) -> Arc<AggregationController> {
        let c = Arc::new(AggregationController {
            client: m.client.clone(),
            roles: m.informers.clusterroles(),
            queue: WorkQueue::new(),
        });
        let weak = Arc::downgrade(&c);
        c.roles.on(move |_change: &Change<'_, ClusterRole>| {
            let Some(c) = weak.upgrade() else { return };
            // Any change may concern a role an aggregated role selects (or no longer selects).
            for role in c.roles.list() {
                if role.aggregation_rule.is_some() {
                    c.queue.add(role.metadata.name.as_deref().unwrap_or(""));
                }
            }
        });
        c
    }
}

/// The rules `role` aggregates from `all`: those of every other role a selector matches, in
/// name order, each once.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Vec<PolicyRule> {
    let Some(rule) = &role.aggregation_rule else { return role.rules.clone().unwrap_or_default() };
    let selectors: Vec<crate::labels::Selector> =
        rule.cluster_role_selectors.iter().flatten().filter_map(|s| crate::labels::Selector::parse(s).ok()).collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.metadata.name != role.metadata.name)
        .filter(|r| {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| !s.is_empty() && s.matches(&labels))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for source in sources {
        for r in source.rules.iter().flatten() {
            if !rules.contains(r) {
                rules.push(r.clone());
            }
        }
    }
    rules
}

impl Controller for AggregationController {
    const NAME: &'static str = "clusterrole-aggregation";

    fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    async fn sync(&self, name: &str) -> anyhow::Result<()> {
        let Some(role) = self.roles.get("", name) else { return Ok(()) };
        if role.aggregation_rule.is_none() {
            return Ok(());
        }
        let rules = aggregated_rules(&role, &self.roles.list());
        if role.rules.clone().unwrap_or_default() == rules {
            return Ok(());
        }
        let mut updated = (*role).clone();
        updated.rules = Some(rules);
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        match api.replace(name, &PostParams::default(), &updated).await {
            Ok(_) => Ok(()),
            // Changed meanwhile: its watch brings it back here.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: &[(&str, &str)], verbs: &[&str], aggregate: Option<&str>) -> Arc<ClusterRole> {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}],
        });
        if let Some(label) = aggregate {
            v["aggregationRule"] = serde_json::json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn an_aggregated_role_holds_the_rules_of_the_roles_it_selects_once_each_in_name_order() {
        let view = role("view", &[], &["get"], Some("aggregate-to-view"));
        let all = vec![
            view.clone(),
            role("b-extra", &[("aggregate-to-view", "true")], &["list"], None),
            role("a-extra", &[("aggregate-to-view", "true")], &["watch"], None),
            role("same", &[("aggregate-to-view", "true")], &["watch"], None),
            role("unrelated", &[("other", "true")], &["delete"], None),
        ];
        let verbs: Vec<Vec<String>> = aggregated_rules(&view, &all).into_iter().map(|r| r.verbs).collect();
        assert_eq!(verbs, vec![vec!["watch".to_string()], vec!["list".to_string()]]);
        // A role without selectors keeps its own rules.
        assert_eq!(aggregated_rules(&all[4], &all), all[4].rules.clone().unwrap());
    }
}
