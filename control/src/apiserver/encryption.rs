//! Encryption at rest, configured as Kubernetes' `EncryptionConfiguration`
//! (`--encryption-provider-config`): for each listed resource, the providers that write (the
//! first) and read (any of them) its stored values, in Kubernetes' stored format
//! `k8s:enc:<provider>:v1:<key name>:<bytes>`, so that an etcd holding a Kubernetes cluster's
//! encrypted objects and one holding Keelson's look alike. The store client (`store.rs`) applies it
//! to every value it writes and reads, so nothing above it sees ciphertext.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use cbc::cipher::{block_padding::Pkcs7, BlockCipher, BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use rand::RngCore;
use serde::Deserialize;

/// What every encrypted value starts with; a value without it was stored in the clear.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AES_BLOCK_BYTES: usize = 16;
const GCM_NONCE_BYTES: usize = 12;
const SECRETBOX_NONCE_BYTES: usize = 24;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    kind: String,
    api_version: String,
    #[serde(default)]
    resources: Vec<ResourceRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceRule {
    resources: Vec<String>,
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderConfig {
    aescbc: Option<KeysConfig>,
    aesgcm: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysConfig {
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    name: String,
    secret: String,
}

enum Cipher {
    Cbc128(aes::Aes128),
    Cbc192(aes::Aes192),
    Cbc256(aes::Aes256),
    Gcm128(Box<aes_gcm::Aes128Gcm>),
    Gcm192(Box<aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>>),
    Gcm256(Box<aes_gcm::Aes256Gcm>),
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
}

/// One key of one provider, with the prefix its values carry.
struct Key {
    prefix: Vec<u8>,
    cipher: Cipher,
}

enum Provider {
    Identity,
    Keys(Vec<Key>),
}

/// The providers of one resource rule, in the configured order.
pub struct Providers {
    list: Vec<Provider>,
}

/// The value read back, and whether it should be written again: it was stored by a provider
/// or key other than the one that writes now (key rotation rewrites such objects).
pub struct Read {
    pub value: Vec<u8>,
    pub stale: bool,
}

fn cbc_encrypt<C: BlockCipher + BlockEncryptMut + Clone>(cipher: &C, plain: &[u8]) -> Vec<u8> {
    let mut iv = [0u8; AES_BLOCK_BYTES];
    rand::thread_rng().fill_bytes(&mut iv);
    let encryptor = cbc::Encryptor::<C>::inner_iv_slice_init(cipher.clone(), &iv).expect("a block-sized IV");
    let mut out = iv.to_vec();
    out.extend_from_slice(&encryptor.encrypt_padded_vec_mut::<Pkcs7>(plain));
    out
}

fn cbc_decrypt<C: BlockCipher + BlockDecryptMut + Clone>(cipher: &C, data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < 2 * AES_BLOCK_BYTES || !data.len().is_multiple_of(AES_BLOCK_BYTES) {
        return Err("the stored data is not a whole number of blocks".into());
    }
    let (iv, body) = data.split_at(AES_BLOCK_BYTES);
    let decryptor = cbc::Decryptor::<C>::inner_iv_slice_init(cipher.clone(), iv).expect("a block-sized IV");
    decryptor.decrypt_padded_vec_mut::<Pkcs7>(body).map_err(|_| "invalid padding on input".to_string())
}

fn aead_encrypt(cipher: &impl Aead, nonce_bytes: usize, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = vec![0u8; nonce_bytes];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(nonce.as_slice().into(), Payload { msg: plain, aad })
        .expect("sealing cannot fail below the AEAD's length limit");
    nonce.extend_from_slice(&sealed);
    nonce
}

fn aead_decrypt(cipher: &impl Aead, nonce_bytes: usize, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < nonce_bytes {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(nonce_bytes);
    cipher.decrypt(nonce.into(), Payload { msg: sealed, aad }).map_err(|_| "message authentication failed".into())
}

impl Key {
    fn new(provider: &str, name: &str, secret: &str) -> Result<Key, String> {
        if name.is_empty() {
            return Err(format!("{provider}: a key's name is required"));
        }
        if name.contains(':') {
            return Err(format!("{provider}: key name {name:?}: may not contain ':'"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|e| format!("{provider}: key {name:?}: the secret is not base64: {e}"))?;
        let cipher = match (provider, bytes.len()) {
            ("aescbc", 16) => Cipher::Cbc128(aes::Aes128::new_from_slice(&bytes).expect("16 bytes")),
            ("aescbc", 24) => Cipher::Cbc192(aes::Aes192::new_from_slice(&bytes).expect("24 bytes")),
            ("aescbc", 32) => Cipher::Cbc256(aes::Aes256::new_from_slice(&bytes).expect("32 bytes")),
            ("aesgcm", 16) => Cipher::Gcm128(Box::new(aes_gcm::Aes128Gcm::new_from_slice(&bytes).expect("16 bytes"))),
            ("aesgcm", 24) => Cipher::Gcm192(Box::new(
                aes_gcm::AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(&bytes).expect("24 bytes"),
            )),
            ("aesgcm", 32) => Cipher::Gcm256(Box::new(aes_gcm::Aes256Gcm::new_from_slice(&bytes).expect("32 bytes"))),
            ("secretbox", 32) => Cipher::Secretbox(Box::new(
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(&bytes).expect("32 bytes"),
            )),
            ("secretbox", n) => {
                return Err(format!(
                    "{provider}: key {name:?}: secret is not of the expected length, got {n}, expected 32"
                ))
            }
            (_, n) => {
                return Err(format!(
                "{provider}: key {name:?}: secret is not of the expected length, got {n}, expected one of [16 24 32]"
            ))
            }
        };
        Ok(Key { prefix: format!("k8s:enc:{provider}:v1:{name}:").into_bytes(), cipher })
    }

    /// `aad` is the value's store key: GCM binds the ciphertext to it, as Kubernetes does, so a
    /// value copied under another key does not decrypt.
    fn encrypt(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let body = match &self.cipher {
            Cipher::Cbc128(c) => cbc_encrypt(c, plain),
            Cipher::Cbc192(c) => cbc_encrypt(c, plain),
            Cipher::Cbc256(c) => cbc_encrypt(c, plain),
            Cipher::Gcm128(c) => aead_encrypt(c.as_ref(), GCM_NONCE_BYTES, plain, aad),
            Cipher::Gcm192(c) => aead_encrypt(c.as_ref(), GCM_NONCE_BYTES, plain, aad),
            Cipher::Gcm256(c) => aead_encrypt(c.as_ref(), GCM_NONCE_BYTES, plain, aad),
            Cipher::Secretbox(c) => aead_encrypt(c.as_ref(), SECRETBOX_NONCE_BYTES, plain, &[]),
        };
        let mut out = Vec::with_capacity(self.prefix.len() + body.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&body);
        out
    }

    fn decrypt(&self, body: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        match &self.cipher {
            Cipher::Cbc128(c) => cbc_decrypt(c, body),
            Cipher::Cbc192(c) => cbc_decrypt(c, body),
            Cipher::Cbc256(c) => cbc_decrypt(c, body),
            Cipher::Gcm128(c) => aead_decrypt(c.as_ref(), GCM_NONCE_BYTES, body, aad),
            Cipher::Gcm192(c) => aead_decrypt(c.as_ref(), GCM_NONCE_BYTES, body, aad),
            Cipher::Gcm256(c) => aead_decrypt(c.as_ref(), GCM_NONCE_BYTES, body, aad),
            Cipher::Secretbox(c) => aead_decrypt(c.as_ref(), SECRETBOX_NONCE_BYTES, body, &[]),
        }
    }
}

impl Providers {
    /// The stored form of `plain` under `key`: the first provider's first key writes.
    pub fn encrypt(&self, plain: &[u8], key: &[u8]) -> Vec<u8> {
        match &self.list[0] {
            Provider::Identity => plain.to_vec(),
            Provider::Keys(keys) => keys[0].encrypt(plain, key),
        }
    }

    /// The value stored under `key`, decrypted by whichever configured key made it.
    pub fn decrypt(&self, stored: &[u8], key: &[u8]) -> Result<Read, String> {
        let mut first = true;
        let mut errors = Vec::new();
        for provider in &self.list {
            match provider {
                Provider::Identity => {
                    if !stored.starts_with(ENCRYPTED_PREFIX) {
                        return Ok(Read { value: stored.to_vec(), stale: !first });
                    }
                    first = false;
                }
                Provider::Keys(keys) => {
                    for k in keys {
                        if let Some(body) = stored.strip_prefix(k.prefix.as_slice()) {
                            match k.decrypt(body, key) {
                                Ok(value) => return Ok(Read { value, stale: !first }),
                                Err(e) => errors.push(e),
                            }
                        }
                        first = false;
                    }
                }
            }
        }
        Err(match errors.is_empty() {
            true if stored.starts_with(ENCRYPTED_PREFIX) => "no matching prefix found".to_string(),
            true => "identity transformer was not configured to read unencrypted data".to_string(),
            false => errors.join("; "),
        })
    }
}

/// The configured providers of each resource's store prefix.
pub struct Encryption {
    /// By resource plural, which names its key prefix (`/registry/<plural>/`).
    by_plural: HashMap<String, Arc<Providers>>,
}

impl Encryption {
    /// Reads an EncryptionConfiguration (YAML or JSON) for the resources `served` lists as
    /// (group, plural).
    pub fn from_file(path: &std::path::Path, served: &[(&str, &str)]) -> Result<Encryption, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, served).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, served: &[(&str, &str)]) -> Result<Encryption, String> {
        let config: FileConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if config.kind != "EncryptionConfiguration" {
            return Err(format!("kind {:?}: expected EncryptionConfiguration", config.kind));
        }
        if config.api_version != "apiserver.config.k8s.io/v1" {
            return Err(format!("apiVersion {:?}: expected apiserver.config.k8s.io/v1", config.api_version));
        }
        let mut by_plural: HashMap<String, Arc<Providers>> = HashMap::new();
        let mut named: Vec<String> = Vec::new();
        for (i, rule) in config.resources.iter().enumerate() {
            if rule.resources.is_empty() {
                return Err(format!("resources[{i}].resources: Required value"));
            }
            if rule.providers.is_empty() {
                return Err(format!("resources[{i}].providers: Required value"));
            }
            let providers = Arc::new(Providers {
                list: rule
                    .providers
                    .iter()
                    .enumerate()
                    .map(|(j, p)| provider(p).map_err(|e| format!("resources[{i}].providers[{j}]: {e}")))
                    .collect::<Result<_, _>>()?,
            });
            for (j, pattern) in rule.resources.iter().enumerate() {
                if named.contains(pattern) {
                    return Err(format!("resources[{i}].resources[{j}]: Duplicate value: {pattern:?}"));
                }
                named.push(pattern.clone());
                let (resource, group) = match pattern.split_once('.') {
                    Some((r, g)) => (r, g),
                    None => (pattern.as_str(), ""),
                };
                if resource.is_empty() || (resource == "*" && pattern == "*") {
                    return Err(format!(
                        "resources[{i}].resources[{j}]: Invalid value: {pattern:?}: use '*.' for all core resources \
                         and '*.*' for all resources"
                    ));
                }
                let mut matched = false;
                for (g, plural) in served {
                    let group_matches = group == "*" || group == *g;
                    if group_matches && (resource == "*" || resource == *plural) {
                        matched = true;
                        // An earlier rule that names a resource decides it.
                        by_plural.entry(plural.to_string()).or_insert_with(|| providers.clone());
                    }
                }
                if !matched && resource != "*" {
                    tracing::warn!(resource = %pattern, "the encryption configuration names a resource not served");
                }
            }
        }
        Ok(Encryption { by_plural })
    }

    /// The providers for the value under `key`, if its resource is configured.
    pub fn for_key(&self, key: &[u8]) -> Option<&Providers> {
        let rest = key.strip_prefix(b"/registry/")?;
        let end = rest.iter().position(|b| *b == b'/')?;
        let plural = std::str::from_utf8(&rest[..end]).ok()?;
        self.by_plural.get(plural).map(Arc::as_ref)
    }

    /// The configured resource plurals, for the log.
    pub fn resources(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.by_plural.keys().map(String::as_str).collect();
        all.sort();
        all
    }
}

fn provider(p: &ProviderConfig) -> Result<Provider, String> {
    let set = [p.aescbc.is_some(), p.aesgcm.is_some(), p.secretbox.is_some(), p.identity.is_some(), p.kms.is_some()];
    match set.iter().filter(|s| **s).count() {
        1 => {}
        0 => {
            return Err(
                "provider does not contain any of the expected providers: aescbc, aesgcm, secretbox, identity".into()
            )
        }
        _ => {
            return Err(
                "more than one provider specified in a single element, should split into different list elements"
                    .into(),
            )
        }
    }
    if p.kms.is_some() {
        return Err("kms: KMS providers are not supported".into());
    }
    if p.identity.is_some() {
        return Ok(Provider::Identity);
    }
    let (name, keys) = [("aescbc", &p.aescbc), ("aesgcm", &p.aesgcm), ("secretbox", &p.secretbox)]
        .into_iter()
        .find_map(|(n, k)| k.as_ref().map(|k| (n, k)))
        .expect("one provider is set");
    if keys.keys.is_empty() {
        return Err(format!("{name}.keys: Required value"));
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for k in &keys.keys {
        if seen.contains(&&k.name) {
            return Err(format!("{name}.keys: Duplicate value: {:?}", k.name));
        }
        seen.push(&k.name);
        out.push(Key::new(name, &k.name, &k.secret)?);
    }
    Ok(Provider::Keys(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: &[(&str, &str)] = &[("", "secrets"), ("", "configmaps"), ("apps", "deployments")];
    const KEY: &[u8] = b"/registry/secrets/default/s";

    fn secret(n: usize, fill: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![fill; n])
    }

    fn config(providers: &str) -> Encryption {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        );
        Encryption::parse(&text, SERVED).unwrap()
    }

    fn keys(provider: &str, name: &str, secret: &str) -> String {
        format!("  - {provider}:\n      keys:\n      - name: {name}\n        secret: {secret}\n")
    }

    #[test]
    fn every_provider_and_key_size_round_trips_in_kubernetes_format() {
        for (provider, sizes) in [("aescbc", &[16, 24, 32][..]), ("aesgcm", &[16, 24, 32]), ("secretbox", &[32])] {
            for &n in sizes {
                let enc = config(&keys(provider, "k1", &secret(n, 7)));
                let p = enc.for_key(KEY).unwrap();
                let stored = p.encrypt(b"{\"data\":\"plain\"}", KEY);
                let prefix = format!("k8s:enc:{provider}:v1:k1:");
                assert!(stored.starts_with(prefix.as_bytes()), "{provider}/{n}");
                assert!(!stored.windows(5).any(|w| w == b"plain"), "{provider}/{n}: plaintext in the stored bytes");
                let read = p.decrypt(&stored, KEY).unwrap();
                assert_eq!(read.value, b"{\"data\":\"plain\"}");
                assert!(!read.stale);
                // Two writes of the same value differ (random IV or nonce).
                assert_ne!(stored, p.encrypt(b"{\"data\":\"plain\"}", KEY));
            }
        }
    }

    #[test]
    fn gcm_binds_a_value_to_its_key() {
        let enc = config(&keys("aesgcm", "k1", &secret(32, 1)));
        let p = enc.for_key(KEY).unwrap();
        let stored = p.encrypt(b"x", KEY);
        let err = p.decrypt(&stored, b"/registry/secrets/default/other").err().unwrap();
        assert!(err.contains("authentication failed"), "{err}");
    }

    #[test]
    fn reads_try_every_key_and_mark_what_an_older_one_wrote_as_stale() {
        let old = config(&keys("aescbc", "old", &secret(32, 1)));
        let stored = old.for_key(KEY).unwrap().encrypt(b"v", KEY);
        let plain = b"{\"kind\":\"Secret\"}".to_vec();
        let rotated = config(&format!(
            "{}{}  - identity: {{}}\n",
            keys("aesgcm", "new", &secret(32, 2)),
            keys("aescbc", "old", &secret(32, 1))
        ));
        let p = rotated.for_key(KEY).unwrap();
        let read = p.decrypt(&stored, KEY).unwrap();
        assert_eq!((read.value.as_slice(), read.stale), (&b"v"[..], true));
        let read = p.decrypt(&plain, KEY).unwrap();
        assert_eq!((read.value, read.stale), (plain.clone(), true));
        let fresh = p.encrypt(b"v", KEY);
        assert!(fresh.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        assert!(!p.decrypt(&fresh, KEY).unwrap().stale);
        // Without identity, a value in the clear is refused; without the key, a value of it too.
        let strict = config(&keys("aesgcm", "new", &secret(32, 2)));
        let p = strict.for_key(KEY).unwrap();
        assert!(p.decrypt(&plain, KEY).err().unwrap().contains("identity"));
        assert_eq!(p.decrypt(&stored, KEY).err().unwrap(), "no matching prefix found");
        // A key of the same name but another secret fails authentication rather than yielding junk.
        let wrong = config(&keys("aescbc", "old", &secret(32, 9)));
        assert!(wrong.for_key(KEY).unwrap().decrypt(&stored, KEY).is_err());
    }

    #[test]
    fn identity_first_writes_in_the_clear() {
        let enc = config(&format!("  - identity: {{}}\n{}", keys("aescbc", "k", &secret(16, 3))));
        let p = enc.for_key(KEY).unwrap();
        assert_eq!(p.encrypt(b"v", KEY), b"v");
        let sealed = config(&keys("aescbc", "k", &secret(16, 3))).for_key(KEY).unwrap().encrypt(b"v", KEY);
        assert_eq!(p.decrypt(&sealed, KEY).unwrap().value, b"v");
    }

    #[test]
    fn resources_resolve_by_group_and_wildcards() {
        let text = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
                    - resources: [deployments.apps]\n  providers: [{identity: {}}]\n\
                    - resources: ['*.*']\n  providers: [{secretbox: {keys: [{name: a, secret: "
            .to_string()
            + &secret(32, 4)
            + "}]}}]\n";
        let enc = Encryption::parse(&text, SERVED).unwrap();
        assert_eq!(enc.resources(), ["configmaps", "deployments", "secrets"]);
        let deployments = enc.for_key(b"/registry/deployments/default/web").unwrap();
        assert_eq!(deployments.encrypt(b"v", b"k"), b"v");
        assert!(enc
            .for_key(b"/registry/configmaps/default/c")
            .unwrap()
            .encrypt(b"v", b"k")
            .starts_with(b"k8s:enc:secretbox:v1:a:"));
        assert!(enc.for_key(b"/registry/pods/default/p").is_none());
        let core = Encryption::parse(&text.replace("'*.*'", "'*.'"), SERVED).unwrap();
        assert_eq!(core.resources(), ["configmaps", "deployments", "secrets"]);
    }

    #[test]
    fn bad_configurations_are_refused_with_the_place_named() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n";
        for (providers, expected) in [
            (
                keys("aescbc", "k", &secret(20, 1)),
                "resources[0].providers[0]: aescbc: key \"k\": secret is not of the expected length, got 20",
            ),
            (keys("secretbox", "k", &secret(16, 1)), "expected 32"),
            (keys("aesgcm", "k", "not base64!"), "not base64"),
            (keys("aesgcm", "", &secret(16, 1)), "name is required"),
            ("  - kms: {name: x}\n".to_string(), "not supported"),
            ("  - {}\n".to_string(), "does not contain any"),
            (
                format!("  - identity: {{}}\n    aescbc: {{keys: [{{name: k, secret: {}}}]}}\n", secret(16, 1)),
                "more than one",
            ),
        ] {
            let err = Encryption::parse(&format!("{head}{providers}"), SERVED).err().unwrap();
            assert!(err.contains(expected), "{err} does not say {expected}");
        }
        let err = Encryption::parse("apiVersion: v1\nkind: EncryptionConfiguration\n", SERVED).err().unwrap();
        assert!(err.contains("apiVersion"), "{err}");
        let err = Encryption::parse(
            &format!("{head}  - identity: {{}}\n- resources: [secrets]\n  providers: [{{identity: {{}}}}]\n"),
            SERVED,
        )
        .err()
        .unwrap();
        assert!(err.contains("resources[1].resources[0]: Duplicate value"), "{err}");
    }
}
