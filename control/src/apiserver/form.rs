//! The form an answer takes, as the client's `Accept` header asks for it (Kubernetes' content
//! negotiation): the object itself, a Table of kubectl's columns, or only its metadata
//! (`PartialObjectMetadata`, which metadata informers and kube-rs's `metadata_watcher` ask for).

use serde_json::{json, Value};

use super::errors::ApiError;
use super::resources::Resource;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    Object,
    /// `as=Table`; the flag says whether rows carry whole objects (`includeObject=Object`).
    Table(bool),
    /// `as=PartialObjectMetadata` (and its List form).
    Metadata,
}

/// The first media range of `accept` this server can answer in JSON; a header that names only
/// forms it cannot produce is 406, as in Kubernetes. Protocol-buffer ranges are passed over
/// (clients that send them list JSON after them).
pub fn negotiate(accept: &str, include_object: bool) -> Result<Form, ApiError> {
    if accept.trim().is_empty() {
        return Ok(Form::Object);
    }
    for range in media_ranges(accept) {
        if !matches!(range.media.as_str(), "application/json" | "application/*" | "*/*" | "application/yaml") {
            continue;
        }
        let (as_, group, version) = (range.as_, range.group, range.version);
        let meta_group = group.is_empty() || group == "meta.k8s.io";
        let meta_version = matches!(version, "" | "v1" | "v1beta1");
        match as_ {
            "" => return Ok(Form::Object),
            "Table" if meta_group && meta_version => return Ok(Form::Table(include_object)),
            "PartialObjectMetadata" | "PartialObjectMetadataList" if meta_group && meta_version => {
                return Ok(Form::Metadata)
            }
            _ => continue,
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json, application/json;as=Table;g=meta.k8s.io;v=v1, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1 (asked: {accept})"),
    ))
}

/// One media range of an `Accept` header, with the parameters Kubernetes reads from it.
pub struct MediaRange<'a> {
    /// Lowercase type/subtype.
    pub media: String,
    pub as_: &'a str,
    pub group: &'a str,
    pub version: &'a str,
}

/// The media ranges of an `Accept` header, in the client's order.
pub fn media_ranges(accept: &str) -> impl Iterator<Item = MediaRange<'_>> {
    accept.split(',').map(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut r = MediaRange { media, as_: "", group: "", version: "" };
        for p in parts {
            match p.split_once('=') {
                Some(("as", v)) => r.as_ = v,
                Some(("g", v)) => r.group = v,
                Some(("v", v)) => r.version = v,
                _ => {}
            }
        }
        r
    })
}

/// An object as `PartialObjectMetadata`: its metadata alone.
pub fn metadata_of(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// One object in the form asked for (a Table of one row for `as=Table`).
pub fn object(form: Form, res: &Resource, obj: Value) -> Value {
    match form {
        Form::Object => obj,
        Form::Metadata => metadata_of(&obj),
        Form::Table(include_object) => {
            let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            super::table::table(res, &[obj], json!({"resourceVersion": rv}), include_object)
        }
    }
}

/// A list (`{"metadata": …, "items": […]}`) in the form asked for.
pub fn list(form: Form, res: &Resource, list: Value) -> Value {
    match form {
        Form::Object => list,
        Form::Table(include_object) => {
            let items = list["items"].as_array().cloned().unwrap_or_default();
            super::table::table(res, &items, list["metadata"].clone(), include_object)
        }
        Form::Metadata => {
            let items: Vec<Value> = list["items"].as_array().into_iter().flatten().map(metadata_of).collect();
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": list["metadata"], "items": items})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_form_this_server_can_produce_wins() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(kubectl, false).unwrap(), Form::Table(false));
        let informer = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(negotiate(informer, false).unwrap(), Form::Metadata);
        assert_eq!(
            negotiate("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1", true).unwrap(),
            Form::Metadata
        );
        assert_eq!(negotiate("*/*", false).unwrap(), Form::Object);
        assert_eq!(negotiate("", false).unwrap(), Form::Object);
        assert_eq!(negotiate("application/json;as=Unknown;g=x;v=v9", false).unwrap_err().code, 406);
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(discovery, false).unwrap(), Form::Object);
    }
}
