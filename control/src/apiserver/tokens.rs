//! ServiceAccount tokens: JWTs signed (ES256) with the cluster's service-account key and
//! carrying Kubernetes' claims (issuer, audiences, expiry, `system:serviceaccount:<ns>:<name>`,
//! and under `kubernetes.io` the account and the pod the token is bound to). The TokenRequest
//! API (`serviceaccounts/<name>/token`) issues them; the authenticator accepts one while it is
//! unexpired, meant for this API's audiences, and its account and pod still exist as they were.

use base64::Engine;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

use super::authn::{User, AUTHENTICATED_GROUP};
use super::errors::{ApiError, Cause};
use super::kinds;
use super::Api;

/// The issuer Kubernetes' clusters name by default (`--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// A requested token's lifetime unless it names one, and the bounds of what it may name.
const EXPIRATION_SECONDS_DEFAULT: i64 = 3_600;
const EXPIRATION_SECONDS_MIN: i64 = 600;
const EXPIRATION_SECONDS_MAX: i64 = 1 << 32;
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|e| format!("not base64url: {e}"))
}

/// The key ID Kubernetes gives a public key: the SHA-256 of its DER form, base64url.
fn key_id(spki_der: &[u8]) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref())
}

/// Who a valid token names.
#[derive(Debug, PartialEq)]
pub struct Claims {
    pub namespace: String,
    pub name: String,
    /// The account's uid, when the token carries it.
    pub uid: Option<String>,
    /// The pod the token is bound to: name and uid.
    pub pod: Option<(String, String)>,
}

/// Issues and checks service-account tokens.
pub struct TokenAuthority {
    signer: Option<(String, EcdsaKeyPair)>,
    /// Keys that verify: key ID and the public point.
    keys: Vec<(String, Vec<u8>)>,
    issuer: String,
    audiences: Vec<String>,
    rng: ring::rand::SystemRandom,
}

impl TokenAuthority {
    /// `signing_key`: a PEM private key (ECDSA P-256) tokens are signed with, whose public half
    /// verifies too; `verifying`: further PEM keys (public or private) whose tokens are accepted.
    pub fn new(
        signing_key: Option<&str>,
        verifying: &[String],
        issuer: &str,
        audiences: &[String],
    ) -> Result<TokenAuthority, String> {
        let rng = ring::rand::SystemRandom::new();
        let mut keys = Vec::new();
        let signer = match signing_key {
            Some(pem) => {
                let (der, spki) = private_key(pem)?;
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                    .map_err(|e| format!("the signing key is not an ECDSA P-256 key: {e}"))?;
                let id = key_id(&spki);
                keys.push((id.clone(), pair.public_key().as_ref().to_vec()));
                Some((id, pair))
            }
            None => None,
        };
        for pem in verifying {
            for (id, point) in public_keys(pem)? {
                if !keys.iter().any(|(k, _)| *k == id) {
                    keys.push((id, point));
                }
            }
        }
        if keys.is_empty() {
            return Err("no service-account key given".into());
        }
        let audiences = if audiences.is_empty() { vec![issuer.to_string()] } else { audiences.to_vec() };
        Ok(TokenAuthority { signer, keys, issuer: issuer.to_string(), audiences, rng })
    }

    fn sign(&self, claims: &Value) -> Result<String, ApiError> {
        let Some((kid, pair)) = &self.signer else {
            return Err(ApiError::internal("this API server has no service-account signing key"));
        };
        let header = json!({"alg": "ES256", "kid": kid});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature =
            pair.sign(&self.rng, input.as_bytes()).map_err(|_| ApiError::internal("signing a token failed"))?;
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }

    /// The claims of a token this authority accepts at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let head: Value = serde_json::from_slice(&unb64(header)?).map_err(|e| format!("header: {e}"))?;
        if head["alg"] != "ES256" {
            return Err(format!("unsupported signing algorithm {}", head["alg"]));
        }
        let signature = unb64(signature)?;
        let signed = format!("{header}.{payload}");
        let kid = head["kid"].as_str();
        let verified = self.keys.iter().filter(|(id, _)| kid.is_none_or(|k| k == id)).any(|(_, point)| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(signed.as_bytes(), &signature).is_ok()
        });
        if !verified {
            return Err("invalid signature".into());
        }
        let claims: Value = serde_json::from_slice(&unb64(payload)?).map_err(|e| format!("claims: {e}"))?;
        if claims["iss"] != self.issuer.as_str() {
            return Err(format!("issuer {} is not {}", claims["iss"], self.issuer));
        }
        let audiences: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| self.audiences.iter().any(|mine| mine == a)) {
            return Err("token audiences do not match the API's".into());
        }
        let exp = claims["exp"].as_i64().ok_or("no expiry")?;
        if exp <= now {
            return Err("token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now) {
            return Err("token is not valid yet".into());
        }
        let sub = claims["sub"].as_str().unwrap_or_default();
        let Some((namespace, name)) = sub.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|r| r.split_once(':')) else {
            return Err(format!("subject {sub:?} is not a service account"));
        };
        let k8s = &claims["kubernetes.io"];
        let pod =
            match (k8s.pointer("/pod/name").and_then(Value::as_str), k8s.pointer("/pod/uid").and_then(Value::as_str)) {
                (Some(n), Some(u)) => Some((n.to_string(), u.to_string())),
                _ => None,
            };
        Ok(Claims {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: k8s.pointer("/serviceaccount/uid").and_then(Value::as_str).map(String::from),
            pod,
        })
    }
}

/// A PEM private key (PKCS#8, as `keelson server` writes it): its DER and its public key's.
fn private_key(pem: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    use rcgen::PublicKeyData;
    let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| format!("not a private key: {e}"))?;
    Ok((pair.serialize_der(), pair.subject_public_key_info()))
}

/// Every key in a PEM file of public keys (or private ones, whose public halves count): key ID
/// and public point.
fn public_keys(pem: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        let spki = match block.label.as_str() {
            "PUBLIC KEY" => block.contents.clone(),
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                let text = format!(
                    "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n",
                    block.label,
                    base64::engine::general_purpose::STANDARD.encode(&block.contents)
                );
                private_key(&text)?.1
            }
            other => return Err(format!("a PEM block of {other:?}, not a key")),
        };
        let (_, info) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&spki)
            .map_err(|e| format!("not a public key: {e}"))?;
        out.push((key_id(&spki), info.subject_public_key.data.to_vec()));
    }
    if out.is_empty() {
        return Err("no key in the PEM text".into());
    }
    Ok(out)
}

/// The user a service account's token authenticates as.
pub fn user_of(namespace: &str, name: &str) -> User {
    User {
        name: format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
            AUTHENTICATED_GROUP.to_string(),
        ],
    }
}

fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

/// The user a bearer token names, if this API accepts it: signed, unexpired, for its
/// audiences, and its account and bound pod still the objects it was issued for.
pub async fn authenticate(api: &Api, token: &str) -> Result<Option<User>, ApiError> {
    let Some(authority) = api.tokens.get() else { return Ok(None) };
    let now = chrono::Utc::now().timestamp();
    let claims = match authority.verify(token, now) {
        Ok(c) => c,
        Err(why) => {
            tracing::debug!(why, "a bearer token was refused");
            return Ok(None);
        }
    };
    let Some(account) = api.current(&kinds::serviceaccount::RESOURCE, Some(&claims.namespace), &claims.name).await?
    else {
        return Ok(None);
    };
    if claims.uid.as_deref().is_some_and(|uid| uid != uid_of(&account)) {
        return Ok(None);
    }
    if let Some((pod, uid)) = &claims.pod {
        match api.current(&kinds::pod::RESOURCE, Some(&claims.namespace), pod).await? {
            Some(found) if uid_of(&found) == uid => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(user_of(&claims.namespace, &claims.name)))
}

fn invalid(name: &str, field: &str, value: Value, why: &str) -> ApiError {
    // The value as Kubernetes prints it: numbers bare, strings quoted.
    let cause = Cause {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        message: format!("Invalid value: {value}: {why}"),
    };
    ApiError::invalid("TokenRequest", "authentication.k8s.io", name, vec![cause])
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: a TokenRequest answered with
/// a token for the account, bound to the pod it names.
pub async fn request(api: &Api, ns: &str, name: &str, body: Value) -> Result<Value, ApiError> {
    let Some(authority) = api.tokens.get() else {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource (no service-account signing key)",
        ));
    };
    let Some(account) = api.current(&kinds::serviceaccount::RESOURCE, Some(ns), name).await? else {
        return Err(ApiError::not_found("serviceaccounts", "", name));
    };
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => EXPIRATION_SECONDS_DEFAULT,
        Some(v) => {
            v.as_i64().ok_or_else(|| invalid(name, "spec.expirationSeconds", v.clone(), "must be an integer"))?
        }
    };
    if expiration < EXPIRATION_SECONDS_MIN {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > EXPIRATION_SECONDS_MAX {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => authority.audiences.clone(),
    };
    let now = chrono::Utc::now().timestamp();
    let mut private = json!({
        "namespace": ns,
        "serviceaccount": {"name": name, "uid": uid_of(&account)},
    });
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null()).cloned();
    if let Some(reference) = &bound {
        let kind = reference["kind"].as_str().unwrap_or_default();
        if kind != "Pod" {
            return Err(ApiError::invalid(
                "TokenRequest",
                "authentication.k8s.io",
                name,
                vec![Cause::not_supported("spec.boundObjectRef.kind", kind, &["Pod"])],
            ));
        }
        let pod_name = reference["name"].as_str().unwrap_or_default();
        let Some(pod) = api.current(&kinds::pod::RESOURCE, Some(ns), pod_name).await? else {
            return Err(ApiError::not_found("pods", "", pod_name));
        };
        if let Some(uid) = reference["uid"].as_str().filter(|u| !u.is_empty()) {
            if uid != uid_of(&pod) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on Pod {pod_name:?}: the UID in the bound object reference ({uid}) \
                         does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
        }
        let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
        if runs_as != name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
            )));
        }
        private["pod"] = json!({"name": pod_name, "uid": uid_of(&pod)});
        if let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            private["node"] = json!({"name": node});
        }
    }
    let claims = json!({
        "aud": audiences,
        "exp": now + expiration,
        "iat": now,
        "nbf": now,
        "iss": authority.issuer,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"),
        "kubernetes.io": private,
    });
    let token = authority.sign(&claims)?;
    let expires = chrono::DateTime::from_timestamp(now + expiration, 0).unwrap_or_default();
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(b) = bound {
        spec_out["boundObjectRef"] = b;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> (TokenAuthority, String) {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        (TokenAuthority::new(Some(&key), &[], DEFAULT_ISSUER, &[]).unwrap(), key)
    }

    fn claims(exp: i64) -> Value {
        json!({
            "aud": [DEFAULT_ISSUER], "exp": exp, "iat": 100, "nbf": 100, "iss": DEFAULT_ISSUER,
            "sub": "system:serviceaccount:team:builder",
            "kubernetes.io": {"namespace": "team", "serviceaccount": {"name": "builder", "uid": "u1"}, "pod": {"name": "p", "uid": "u2"}},
        })
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let (a, _) = authority();
        let token = a.sign(&claims(1_000)).unwrap();
        let c = a.verify(&token, 500).unwrap();
        assert_eq!(
            c,
            Claims {
                namespace: "team".into(),
                name: "builder".into(),
                uid: Some("u1".into()),
                pod: Some(("p".into(), "u2".into()))
            }
        );
        assert_eq!(a.verify(&token, 1_000).unwrap_err(), "token has expired");
        assert_eq!(a.verify(&token, 50).unwrap_err(), "token is not valid yet");
    }

    #[test]
    fn tampered_foreign_and_misaddressed_tokens_are_refused() {
        let (a, _) = authority();
        let token = a.sign(&claims(1_000)).unwrap();
        // Another subject under the same signature.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = claims(1_000);
        forged["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = b64(forged.to_string().as_bytes());
        assert_eq!(a.verify(&parts.join("."), 500).unwrap_err(), "invalid signature");
        // Another cluster's key.
        let (other, _) = authority();
        assert_eq!(a.verify(&other.sign(&claims(1_000)).unwrap(), 500).unwrap_err(), "invalid signature");
        // Another audience or issuer.
        let mut elsewhere = claims(1_000);
        elsewhere["aud"] = json!("vault");
        assert!(a.verify(&a.sign(&elsewhere).unwrap(), 500).unwrap_err().contains("audiences"));
        let mut issuer = claims(1_000);
        issuer["iss"] = json!("https://elsewhere");
        assert!(a.verify(&a.sign(&issuer).unwrap(), 500).unwrap_err().contains("issuer"));
        assert_eq!(a.verify("a.b", 500).unwrap_err(), "not a JWT");
    }

    #[test]
    fn verifying_keys_come_from_public_and_private_pem() {
        let (signer, key) = authority();
        let token = signer.sign(&claims(1_000)).unwrap();
        let public = rcgen::KeyPair::from_pem(&key).unwrap().public_key_pem();
        for pem in [public, key] {
            let verifier = TokenAuthority::new(None, &[pem], DEFAULT_ISSUER, &[]).unwrap();
            assert_eq!(verifier.verify(&token, 500).unwrap().name, "builder");
            assert!(verifier.sign(&claims(1_000)).is_err(), "a verifier without the private key signed");
        }
        assert!(TokenAuthority::new(None, &["not pem".into()], DEFAULT_ISSUER, &[]).is_err());
    }
}
