//! The OpenAPI documents kubectl downloads before it validates a manifest. They name no schemas
//! yet: kubectl's client-side validation then has no type to check a manifest against and leaves
//! it to the server, whose own decoding and validation (`objects.rs`) refuse what is invalid.
//! `/openapi/v2` is served as JSON, or as the protocol-buffer encoding kubectl asks for.

use serde_json::{json, Value};

/// Whether an Accept header asks for the protocol-buffer encoding (kubectl asks for
/// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`; the answer is sent as
/// `application/octet-stream`, as Kubernetes does).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.contains("protobuf")
}

const TITLE: &str = "Keelson";
const VERSION: &str = "v1.33.0";

/// OpenAPI v2's document, as far as Keelson fills it (field numbers of the OpenAPI v2 protobuf
/// schema kubectl decodes).
#[derive(Clone, PartialEq, prost::Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Paths {}

pub fn v2_json() -> Value {
    json!({"swagger": "2.0", "info": {"title": TITLE, "version": VERSION}, "paths": {}, "definitions": {}})
}

pub fn v2_protobuf() -> Vec<u8> {
    use prost::Message;
    let doc = Document {
        swagger: "2.0".into(),
        info: Some(Info { title: TITLE.into(), version: VERSION.into() }),
        paths: Some(Paths {}),
    };
    doc.encode_to_vec()
}

/// `/openapi/v3`: the index of per-group-version documents, none of which is served yet.
pub fn v3_root() -> Value {
    json!({"paths": {}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protobuf_document_carries_the_swagger_version_and_info() {
        use prost::Message;
        let bytes = v2_protobuf();
        // Field 1, length-delimited, "2.0".
        assert_eq!(&bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
        let back = Document::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.info.unwrap().title, TITLE);
        assert_eq!(v2_json()["swagger"], "2.0");
    }
}
