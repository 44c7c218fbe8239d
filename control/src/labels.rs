//! Label selectors (metav1.LabelSelector) matched against labels, as Kubernetes matches them.
//!
//! Scheduling plugins match one selector against thousands of pods per cycle, so a selector is
//! parsed (and validated) once into a [`Selector`] and then matched without allocating.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `sel`: every matchLabels pair and every matchExpression. An empty
/// selector matches everything; one Kubernetes would refuse to parse (an unknown operator, `In`
/// without values, a malformed key) matches nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::parse(sel).is_ok_and(|s| s.matches(labels))
}

/// A parsed label selector (Kubernetes' `labels.Selector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// `None`: matches nothing (what a nil `*LabelSelector` becomes). Empty: matches everything.
    requirements: Option<Vec<Requirement>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Sorted and deduplicated, for binary search.
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Kubernetes' `LabelSelectorAsSelector` for a present selector: `{}` matches everything.
    pub fn parse(sel: &LabelSelector) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            validate_key(key)?;
            validate_value(value)?;
            requirements.push(Requirement { key: key.clone(), op: Op::In(vec![value.clone()]) });
        }
        for expr in sel.match_expressions.iter().flatten() {
            validate_key(&expr.key)?;
            let values = expr.values.as_deref().unwrap_or_default();
            let op = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(format!(
                            "key {:?}: values set can't be empty for operator {}",
                            expr.key, expr.operator
                        ));
                    }
                    for v in values {
                        validate_value(v)?;
                    }
                    let mut set = values.to_vec();
                    set.sort_unstable();
                    set.dedup();
                    if expr.operator == "In" {
                        Op::In(set)
                    } else {
                        Op::NotIn(set)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(format!(
                            "key {:?}: values set must be empty for operator {}",
                            expr.key, expr.operator
                        ));
                    }
                    if expr.operator == "Exists" {
                        Op::Exists
                    } else {
                        Op::DoesNotExist
                    }
                }
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            requirements.push(Requirement { key: expr.key.clone(), op });
        }
        Ok(Selector { requirements: Some(requirements) })
    }

    /// Kubernetes' `LabelSelectorAsSelector` including its nil case: an absent selector matches
    /// nothing.
    pub fn parse_opt(sel: Option<&LabelSelector>) -> Result<Selector, String> {
        sel.map_or_else(|| Ok(Selector::nothing()), Selector::parse)
    }

    pub fn everything() -> Selector {
        Selector { requirements: Some(Vec::new()) }
    }

    pub fn nothing() -> Selector {
        Selector { requirements: None }
    }

    /// Equality on every pair of `set` (Kubernetes' `SelectorFromSet`).
    pub fn from_set(set: &BTreeMap<String, String>) -> Selector {
        let mut s = Selector::everything();
        for (k, v) in set {
            s.add_equals(k, v);
        }
        s
    }

    /// Kubernetes' `Selector.Empty()`: the selector places no requirement (matches everything).
    /// A nothing-selector is not empty.
    pub fn is_empty(&self) -> bool {
        self.requirements.as_ref().is_some_and(|r| r.is_empty())
    }

    /// Whether the selector matches nothing at all (a nil selector).
    pub fn is_nothing(&self) -> bool {
        self.requirements.is_none()
    }

    /// Adds `key == value` (a no-op on a nothing-selector, as in Kubernetes).
    pub fn add_equals(&mut self, key: &str, value: &str) {
        if let Some(r) = &mut self.requirements {
            r.push(Requirement { key: key.to_string(), op: Op::In(vec![value.to_string()]) });
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let Some(reqs) = &self.requirements else { return false };
        reqs.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Op::In(set) => value.is_some_and(|v| set.binary_search(v).is_ok()),
                Op::NotIn(set) => value.is_none_or(|v| set.binary_search(v).is_err()),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }
}

fn validate_key(key: &str) -> Result<(), String> {
    if is_qualified_name(key) {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}: must be a qualified name ([prefix/]name)"))
    }
}

fn validate_value(value: &str) -> Result<(), String> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"))
    }
}

/// Kubernetes' `IsQualifiedName`: an optional DNS-subdomain prefix and '/', then a name of at
/// most 63 characters, alphanumeric at both ends with '-', '_' or '.' inside.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return false;
        }
    }
    !name.is_empty() && is_label_value(name)
}

/// Kubernetes' `IsValidLabelValue`: empty, or at most 63 characters, alphanumeric at both ends
/// with '-', '_' or '.' inside.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated lowercase labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn selectors_match_as_kubernetes_matches_them() {
        let cases = [
            // (selector, labels, matches)
            (json!({}), json!({}), true),
            (json!({}), json!({"a": "1"}), true),
            (json!({"matchLabels": {"a": "1"}}), json!({"a": "1", "b": "2"}), true),
            (json!({"matchLabels": {"a": "1"}}), json!({"a": "2"}), false),
            (json!({"matchLabels": {"a": "1"}}), json!({}), false),
            (json!({"matchLabels": {"a": "1", "b": "2"}}), json!({"a": "1"}), false),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}),
                json!({"a": "2"}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}),
                json!({"a": "3"}),
                false,
            ),
            (json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}), json!({}), false),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
                json!({"a": "2"}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
                json!({"a": "1"}),
                false,
            ),
            // NotIn holds for a missing label.
            (json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}), json!({}), true),
            (json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}), json!({"a": ""}), true),
            (json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}), json!({"b": "1"}), false),
            (json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}), json!({"b": "1"}), true),
            (json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}), json!({"a": "1"}), false),
            // Labels and expressions are ANDed.
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}),
                json!({"app": "web", "tier": "db"}),
                false,
            ),
            (
                json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}),
                json!({"app": "web", "tier": "fe"}),
                true,
            ),
            // Invalid selectors match nothing, not even labels that would satisfy the rest.
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["1"]}]}),
                json!({"a": "1"}),
                false,
            ),
            (json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}), json!({"a": "1"}), false),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["1"]}]}),
                json!({"a": "1"}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["1"]}]}),
                json!({}),
                false,
            ),
            (json!({"matchLabels": {"bad key": "1"}}), json!({"bad key": "1"}), false),
            (json!({"matchLabels": {"a": "-x"}}), json!({"a": "-x"}), false),
        ];
        for (sel, l, want) in cases {
            let s: LabelSelector = serde_json::from_value(sel.clone()).unwrap();
            assert_eq!(selector_matches(&s, &labels(l.clone())), want, "selector {sel} labels {l}");
        }
    }

    #[test]
    fn parsed_selectors_keep_kubernetes_empty_and_nothing_cases() {
        let everything = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(everything.is_empty() && everything.matches(&BTreeMap::new()));
        let nothing = Selector::parse_opt(None).unwrap();
        assert!(!nothing.is_empty() && nothing.is_nothing() && !nothing.matches(&BTreeMap::new()));
        let mut n = Selector::nothing();
        n.add_equals("a", "1");
        assert!(!n.matches(&labels(json!({"a": "1"}))), "adding to nothing stays nothing");
        let mut e = Selector::everything();
        e.add_equals("a", "1");
        assert!(!e.is_empty() && e.matches(&labels(json!({"a": "1"}))) && !e.matches(&labels(json!({"a": "2"}))));
        assert_eq!(Selector::from_set(&labels(json!({"a": "1"}))), e);
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}))
                .unwrap();
        assert!(Selector::parse(&bad).unwrap_err().contains("Gt"));
    }

    #[test]
    fn qualified_names() {
        let cases = [
            ("app", true),
            ("kubernetes.io/hostname", true),
            ("topology.kubernetes.io/zone", true),
            ("a_b.c-d", true),
            ("", false),
            ("/a", false),
            ("a/", false),
            ("a/b/c", false),
            ("Upper.Example/a", false),
            ("-a", false),
            (&"x".repeat(64), false),
        ];
        for (s, ok) in cases {
            assert_eq!(is_qualified_name(s), ok, "{s:?}");
        }
    }
}
