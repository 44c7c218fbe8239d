//! Decoding JSON into a typed value with an error that names where it failed
//! (`spec.containers[0].image: invalid type: ...`), for what clients and configuration files send.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes `value` as `T`; the error names the path of the field that failed.
pub fn with_path<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}
