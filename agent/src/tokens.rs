//! Service-account tokens for projected volumes, as kubelet's token manager keeps them: asked of
//! the TokenRequest API bound to the pod, kept per pod, account, audience and lifetime, and asked
//! again once 80% of a token's life (or a day) has passed, so the file a pod reads is always
//! valid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

/// Tokens kept at most; past it, those whose pods have not asked for the longest go.
const TOKENS_KEPT_MAX: usize = 10_000;
/// A token is renewed once this share of its life has passed (kubelet's 80%)…
const RENEW_AT_LIFE_PERCENT: u32 = 80;
/// …or once it is this old, whatever its lifetime.
const RENEW_AFTER: Duration = Duration::from_secs(24 * 3_600);

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    account: String,
    pod_uid: String,
    audience: String,
    expiration_seconds: i64,
}

struct Kept {
    token: String,
    renew_at: Instant,
    used: Instant,
}

/// The node's tokens.
#[derive(Default)]
pub struct TokenManager {
    kept: Mutex<HashMap<Key, Kept>>,
}

/// What a projection asks for.
pub struct Wanted<'a> {
    pub namespace: &'a str,
    pub account: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
    /// Empty: the API's own audiences.
    pub audience: &'a str,
    pub expiration_seconds: i64,
}

impl TokenManager {
    /// A valid token for `wanted`: the one kept, or a new one from the API.
    pub async fn token(&self, client: &kube::Client, wanted: &Wanted<'_>) -> Result<String, kube::Error> {
        let key = Key {
            namespace: wanted.namespace.to_string(),
            account: wanted.account.to_string(),
            pod_uid: wanted.pod_uid.to_string(),
            audience: wanted.audience.to_string(),
            expiration_seconds: wanted.expiration_seconds,
        };
        let now = Instant::now();
        if let Some(kept) = self.kept.lock().expect("not poisoned").get_mut(&key) {
            if now < kept.renew_at {
                kept.used = now;
                return Ok(kept.token.clone());
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if wanted.audience.is_empty() { Vec::new() } else { vec![wanted.audience.to_string()] },
                expiration_seconds: Some(wanted.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(wanted.pod_name.to_string()),
                    uid: Some(wanted.pod_uid.to_string()),
                }),
            },
            ..Default::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), wanted.namespace);
        let answer: TokenRequest =
            accounts.create_subresource("token", wanted.account, &PostParams::default(), &request).await?;
        let token = answer.status.map(|s| s.token).unwrap_or_default();
        let life = Duration::from_secs(wanted.expiration_seconds.max(1) as u64);
        let renew_at = now + (life * RENEW_AT_LIFE_PERCENT / 100).min(RENEW_AFTER);
        let mut kept = self.kept.lock().expect("not poisoned");
        if kept.len() >= TOKENS_KEPT_MAX {
            // Tokens of pods gone from the node are asked for no more: the least used go first.
            let mut by_use: Vec<(Instant, Key)> = kept.iter().map(|(k, v)| (v.used, k.clone())).collect();
            by_use.sort_by_key(|(used, _)| *used);
            for (_, k) in by_use.into_iter().take(TOKENS_KEPT_MAX / 10) {
                kept.remove(&k);
            }
        }
        kept.insert(key, Kept { token: token.clone(), renew_at, used: now });
        Ok(token)
    }

    /// Forgets the tokens of a pod that left the node.
    pub fn forget_pod(&self, pod_uid: &str) {
        self.kept.lock().expect("not poisoned").retain(|k, _| k.pod_uid != pod_uid);
    }
}
