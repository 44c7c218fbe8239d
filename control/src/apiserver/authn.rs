//! Authentication: who a request comes from. A client certificate the client CA signed names its
//! user and groups (see `crate::pki`); a request with no credentials is anonymous, and reaches
//! only the health and version endpoints (Kubernetes' `system:public-info-viewer`), every other
//! path answering 401 as Kubernetes does.

use axum::http::Request;

use super::errors::ApiError;
use super::serving::Peer;
use crate::pki::Identity;

/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// Who a request to a plain-HTTP API acts as (as Kubernetes' former insecure port named it).
pub const UNSECURED_USER: &str = "system:unsecured";

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Every request is trusted as it comes (a plain-HTTP API on a trusted network).
    None,
    /// Client certificates; anonymous requests reach only the public paths.
    Certificates,
}

/// The user a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    fn authenticated(identity: &Identity) -> Self {
        let mut groups = identity.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        User { name: identity.user.clone(), groups }
    }

    fn unsecured() -> Self {
        User {
            name: UNSECURED_USER.to_string(),
            groups: vec![crate::pki::MASTERS_GROUP.to_string(), AUTHENTICATED_GROUP.to_string()],
        }
    }

    fn anonymous() -> Self {
        User { name: ANONYMOUS_USER.to_string(), groups: vec![UNAUTHENTICATED_GROUP.to_string()] }
    }
}

/// Paths anonymous clients may read.
fn public(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// The user `req` acts as, or the 401 it gets.
pub fn authenticate<B>(mode: Authentication, req: &Request<B>) -> Result<User, ApiError> {
    if mode == Authentication::None {
        return Ok(User::unsecured());
    }
    let peer = req.extensions().get::<Peer>();
    if let Some(identity) = peer.and_then(|p| p.certificate.as_ref()) {
        return Ok(User::authenticated(identity));
    }
    if public(req.uri().path()) {
        return Ok(User::anonymous());
    }
    Err(ApiError::new(401, "Unauthorized", "Unauthorized"))
}

/// What a request presents to authenticate with.
pub enum Credentials {
    /// Decided already: a client certificate, anonymity, or no authentication at all.
    Decided(Result<User, ApiError>),
    /// A bearer token (`Authorization: Bearer <token>`) to check.
    Token(String),
}

/// What `req` authenticates with: a client certificate first, then a bearer token (a token that
/// does not authenticate is a 401 wherever it is sent), else anonymity.
pub fn credentials<B>(mode: Authentication, req: &Request<B>) -> Credentials {
    let certified = req.extensions().get::<Peer>().is_some_and(|p| p.certificate.is_some());
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    match token {
        Some(token) if mode == Authentication::Certificates && !certified => Credentials::Token(token.to_string()),
        _ => Credentials::Decided(authenticate(mode, req)),
    }
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl auth whoami`): the
/// request's own user, as Kubernetes answers it.
pub fn self_subject_review(user: &User) -> serde_json::Value {
    serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, certificate: Option<Identity>) -> Request<()> {
        let mut req = Request::builder().uri(path).body(()).unwrap();
        req.extensions_mut().insert(Peer { remote: "127.0.0.1:1".parse().unwrap(), certificate });
        req
    }

    #[test]
    fn a_certificate_names_the_user_and_its_groups() {
        let jane = Identity::new("jane", &["dev"]);
        let user = authenticate(Authentication::Certificates, &request("/api/v1/pods", Some(jane))).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, vec!["dev", AUTHENTICATED_GROUP]);
    }

    #[test]
    fn anonymous_requests_reach_only_health_and_version() {
        for path in ["/healthz", "/livez", "/readyz", "/readyz/ping", "/version", "/version/"] {
            let user = authenticate(Authentication::Certificates, &request(path, None)).unwrap();
            assert_eq!(user.name, ANONYMOUS_USER, "{path}");
        }
        for path in ["/api", "/api/v1/namespaces/default/secrets", "/metrics", "/versions", "/healthzz", "/"] {
            let e = authenticate(Authentication::Certificates, &request(path, None)).unwrap_err();
            assert_eq!((e.code, e.reason), (401, "Unauthorized"), "{path}");
        }
    }

    #[test]
    fn without_authentication_every_request_is_the_unsecured_master() {
        let user = authenticate(Authentication::None, &request("/api", None)).unwrap();
        assert_eq!(user.name, UNSECURED_USER);
        assert!(user.groups.iter().any(|g| g == crate::pki::MASTERS_GROUP));
    }
}
