//! Pods as informers read them: decoded without `metadata.managedFields`, which no informer here
//! reads and which on a running pod is half its JSON and more than half its decoding (a tree of
//! small maps built and freed for every event).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A pod read without its managed fields; the API it is listed and watched from is the pods'.
#[derive(Clone, Debug)]
pub struct LeanPod(pub Pod);

impl kube::Resource for LeanPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl<'de> Deserialize<'de> for LeanPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pod::deserialize(Filter { inner: d, level: Level::Top }).map(LeanPod)
    }
}

/// Where in the object a map is: the top (whose `metadata` is filtered) or `metadata` (whose
/// `managedFields` is passed over).
#[derive(Clone, Copy, PartialEq)]
enum Level {
    Top,
    Meta,
}

struct Filter<D> {
    inner: D,
    level: Level,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Filter<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(FilterVisitor { inner: visitor, level: self.level })
    }
    // The hints the pod's and the metadata's decoders give are passed on (an optional field
    // must be read as an option).
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_option(FilterVisitor { inner: visitor, level: self.level })
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(FilterVisitor { inner: visitor, level: self.level })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(name, fields, FilterVisitor { inner: visitor, level: self.level })
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(name, FilterVisitor { inner: visitor, level: self.level })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

struct FilterVisitor<V> {
    inner: V,
    level: Level,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FilterVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.inner.expecting(f)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Filter { inner: d, level: self.level })
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Filter { inner: d, level: self.level })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(FilterMap { inner: map, level: self.level, metadata_next: false })
    }
}

struct FilterMap<A> {
    inner: A,
    level: Level,
    /// The value about to be read is the top level's `metadata`.
    metadata_next: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilterMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else { return Ok(None) };
            if self.level == Level::Meta && key == "managedFields" {
                self.inner.next_value::<IgnoredAny>()?;
                continue;
            }
            self.metadata_next = self.level == Level::Top && key == "metadata";
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        if std::mem::take(&mut self.metadata_next) {
            self.inner.next_value_seed(FilterSeed { inner: seed })
        } else {
            self.inner.next_value_seed(seed)
        }
    }
}

/// `metadata`'s value, read through a filter.
struct FilterSeed<S> {
    inner: S,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for FilterSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Filter { inner: d, level: Level::Meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A lean pod is the pod without its managed fields, whatever the order of the keys, and a
    /// malformed pod is refused as the pod's own decoding refuses it.
    #[test]
    fn lean_pods_are_pods_without_managed_fields() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"a": "b"}, "resourceVersion": "7",
                "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:phase": {}}}}],
                "deletionTimestamp": null},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let lean: LeanPod = serde_json::from_value(pod.clone()).unwrap();
        let mut expected: Pod = serde_json::from_value(pod.clone()).unwrap();
        expected.metadata.managed_fields = None;
        assert_eq!(lean.0, expected);
        // From bytes too (as watch events are read), metadata last.
        let text = r#"{"status": {"phase": "Pending"}, "spec": {"containers": []}, "metadata": {"managedFields": [], "name": "q"}}"#;
        let lean: LeanPod = serde_json::from_str(text).unwrap();
        assert_eq!(lean.0.metadata.name.as_deref(), Some("q"));
        assert!(lean.0.metadata.managed_fields.is_none());
        assert_eq!(lean.0.status.unwrap().phase.as_deref(), Some("Pending"));
        // Errors are the pod's.
        let bad = json!({"metadata": {"name": 3}});
        assert!(serde_json::from_value::<LeanPod>(bad.clone()).is_err());
        assert!(serde_json::from_value::<Pod>(bad).is_err());
    }
}
