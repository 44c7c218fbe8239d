//! Every failure the API reports is a Kubernetes `Status` with a code, a reason and a message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One invalid field, as a `Status`'s `details.causes` names it.
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, why: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {}", json!(value.to_string()), why.into()),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Self {
        Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {}", why.into()) }
    }

    /// A value outside a fixed set, the set listed as Kubernetes lists it.
    pub fn not_supported(field: impl Into<String>, value: impl std::fmt::Display, supported: &[&str]) -> Self {
        let listed: Vec<String> = supported.iter().map(|s| json!(s).to_string()).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                json!(value.to_string()),
                listed.join(", ")
            ),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", json!(value.to_string())),
        }
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(kind_plural: &str, group: &str, name: &str) -> Self {
        let what = qualified(kind_plural, group);
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{what} \"{name}\" not found"),
            details: Some(json!({"name": name, "group": group, "kind": kind_plural})),
        }
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(plural, group)),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    pub fn conflict(plural: &str, group: &str, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                qualified(plural, group)
            ),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    /// 403 for a request Kubernetes refuses whoever asks, naming the object and why.
    pub fn forbidden(plural: &str, group: &str, name: &str, why: &str) -> Self {
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("{} \"{name}\" is forbidden: {why}", qualified(plural, group)),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }

    /// 403 for new content in a namespace being deleted, with the cause clients look for.
    pub fn namespace_terminating(plural: &str, group: &str, name: &str, ns: &str) -> Self {
        let mut e = Self::forbidden(
            plural,
            group,
            name,
            &format!("unable to create new content in namespace {ns} because it is being terminated"),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": plural, "causes": [{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace",
        }]}));
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 422 Invalid, naming every bad field.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let what = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let message = if summary.len() == 1 {
            format!("{what} \"{name}\" is invalid: {}", summary[0])
        } else {
            format!("{what} \"{name}\" is invalid: [{}]", summary.join(", "))
        };
        let causes: Vec<Value> =
            causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        }
    }

    /// 504 for a resourceVersion the store has not reached (Kubernetes' TooLargeResourceVersion),
    /// which a client retries.
    pub fn too_large_resource_version(asked: Option<i64>, current: Option<i64>) -> Self {
        let message = match (asked, current) {
            (Some(a), Some(c)) => format!("Too large resource version: {a}, current: {c}"),
            _ => "Too large resource version".to_string(),
        };
        ApiError {
            code: 504,
            reason: "Timeout",
            message,
            details: Some(
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1}),
            ),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted => {
                ApiError::gone("The resourceVersion for the provided list is too old.".to_string())
            }
            StoreError::FutureRevision => ApiError::too_large_resource_version(None, None),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store call failed");
                ApiError::new(503, "ServiceUnavailable", format!("storage unavailable: {m}"))
            }
            e @ StoreError::Undecryptable { .. } => {
                tracing::error!(error = %e, "a stored value could not be decrypted");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        super::json_response(code, &self.status())
    }
}
