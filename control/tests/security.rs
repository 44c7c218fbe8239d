//! The API over TLS: who may reach what without credentials, what a client certificate
//! authenticates as, and what a client of another cluster's CAs gets.

mod common;

use std::os::unix::fs::PermissionsExt;

use control::pki::{Identity, Pki};
use serde_json::Value;

use common::api::{send_once as send, ApiProcess};
use common::kubectl::{kubectl_binary, Kubectl, TapMkdir};

/// `server`'s client configuration with `credentials` in place of the admin's.
fn as_user(server: &ApiProcess, credentials: Option<&control::pki::Pem>) -> kube::Config {
    let mut config = server.config();
    config.auth_info = Default::default();
    if let Some(pem) = credentials {
        config.auth_info.client_certificate_data = Some(base64(&pem.cert));
        config.auth_info.client_key_data = Some(base64(&pem.key).into());
    }
    config
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn whoami() -> Value {
    serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_and_anonymous_clients_reach_only_health_and_version() {
    let server = ApiProcess::server().await;
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let mode = std::fs::metadata(server.kubeconfig()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin kubeconfig is readable by others");

    // No credentials: 401 with Kubernetes' Status, except for the public paths.
    let anonymous = as_user(&server, None);
    for path in ["/api", "/api/v1/namespaces/default/secrets", "/apis", "/metrics", "/openapi/v2"] {
        let (code, body) = send(anonymous.clone(), "GET", path, None).await.unwrap();
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!((body["kind"].as_str(), body["reason"].as_str()), (Some("Status"), Some("Unauthorized")), "{body}");
    }
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, _) = send(anonymous.clone(), "GET", path, None).await.unwrap();
        assert_eq!(code, 200, "{path}");
    }

    // A certificate of the cluster's client CA names its user and group.
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let jane = pki.client(&Identity::new("jane", &["dev"])).unwrap();
    let (code, review) = send(
        as_user(&server, Some(&jane)),
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(whoami()),
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{review}");
    assert_eq!(review["status"]["userInfo"]["username"], "jane");
    assert_eq!(review["status"]["userInfo"]["groups"], serde_json::json!(["dev", "system:authenticated"]));

    // Another cluster's CAs: its client certificate is refused in the handshake, and a client
    // that trusts only its server CA refuses this server.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = Pki::open(elsewhere.path()).unwrap();
    let stranger = other.client(&Identity::new("system:admin", &["system:masters"])).unwrap();
    let refused = send(as_user(&server, Some(&stranger)), "GET", "/api", None).await;
    assert!(refused.is_err(), "a certificate of another CA got {refused:?}");
    let mut wrong_ca = server.config();
    wrong_ca.root_cert = Some(vec![pem_der(other.server_ca())]);
    let refused = send(wrong_ca, "GET", "/version", None).await;
    assert!(refused.is_err(), "a client trusting another CA got {refused:?}");

    // Plain HTTP to the HTTPS port is told what it did.
    let answer = plain_get(server.api_port).await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("Client sent an HTTP request to an HTTPS server."), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kubectls_use_the_admin_kubeconfig_over_tls() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let debian = Kubectl::new(dir.path(), server.kubeconfig());
    debian.run(&["create", "configmap", "over-tls", "--from-literal=a=b"]);
    let current = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    assert!(current.run(&["get", "configmap", "over-tls", "-o", "name"]).contains("configmap/over-tls"));
    let me: Value = serde_json::from_str(&current.run(&["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(me["status"]["userInfo"]["username"], "system:admin", "{me}");
    let groups = me["status"]["userInfo"]["groups"].as_array().cloned().unwrap_or_default();
    assert!(groups.contains(&"system:masters".into()) && groups.contains(&"system:authenticated".into()), "{me}");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

async fn plain_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// A kubeconfig file under `dir` for `who`, with a client certificate from `server`'s CA.
fn kubeconfig_for(server: &ApiProcess, dir: &std::path::Path, who: &Identity) -> std::path::PathBuf {
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let path = dir.join(format!("{}.kubeconfig", who.user.replace(':', "-")));
    control::pki::write_private(&path, &pki.kubeconfig(&server.url(), who).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_bound_to_view_reads_but_may_not_write_and_kubectl_auth_can_i_says_so() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("admin").tap_mkdir(),
        server.kubeconfig(),
    );
    admin.run(&["create", "namespace", "team"]);
    admin.run(&["-n", "team", "create", "configmap", "settings", "--from-literal=a=b"]);
    admin.run(&["-n", "team", "create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane"]);

    let jane_config = kubeconfig_for(&server, dir.path(), &Identity::new("jane", &[]));
    for (var, sub) in [("KEELSON_KUBECTL_CURRENT", "current"), ("KEELSON_KUBECTL", "debian")] {
        let jane = Kubectl::with_binary(kubectl_binary(var), &dir.path().join(sub).tap_mkdir(), &jane_config);
        // The binding reaches the authorizer through its cache: wait until it has.
        common::wait_until(
            "jane may read configmaps in team",
            common::within(std::time::Duration::from_secs(10)),
            || {
                let ok = jane.try_run(&["-n", "team", "get", "configmap", "settings", "-o", "name"], None);
                async move {
                    if ok.0 {
                        Ok(())
                    } else {
                        Err(ok.2)
                    }
                }
            },
        )
        .await;
        let (ok, _, err) = jane.try_run(&["-n", "team", "create", "configmap", "mine", "--from-literal=a=b"], None);
        assert!(!ok, "jane created a configmap");
        assert!(
            err.contains(r#"configmaps is forbidden: User "jane" cannot create resource "configmaps" in API group "" in the namespace "team""#),
            "{err}"
        );
        let (ok, _, err) = jane.try_run(&["-n", "default", "get", "configmaps"], None);
        assert!(!ok && err.contains(r#"in the namespace "default""#), "{err}");
        assert!(!jane.try_run(&["-n", "team", "get", "secrets"], None).0, "view reads secrets");
        // kubectl auth can-i, answered by the same authorizer.
        assert_eq!(jane.try_run(&["auth", "can-i", "list", "pods", "-n", "team"], None).1.trim(), "yes");
        assert_eq!(jane.try_run(&["auth", "can-i", "create", "deployments.apps", "-n", "team"], None).1.trim(), "no");
        assert_eq!(jane.try_run(&["auth", "can-i", "get", "configmaps", "-n", "default"], None).1.trim(), "no");
        // Everything jane may do in team: view's rules, and what every authenticated user holds.
        let listed = jane.run(&["auth", "can-i", "--list", "-n", "team"]);
        let configmaps = listed.lines().find(|l| l.starts_with("configmaps ")).unwrap_or_else(|| panic!("{listed}"));
        assert!(configmaps.contains("[get list watch]"), "{listed}");
        assert!(!listed.lines().any(|l| l.starts_with("secrets ")), "{listed}");
        assert!(listed.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{listed}");
    }
    assert_eq!(admin.try_run(&["auth", "can-i", "create", "deployments.apps", "-n", "team"], None).1.trim(), "yes");

    // Impersonation: the admin acts as jane and gets jane's answers; jane may not act as anyone.
    admin.run(&["--as", "jane", "-n", "team", "get", "configmap", "settings"]);
    let (ok, _, err) = admin.try_run(&["--as", "jane", "-n", "team", "delete", "configmap", "settings"], None);
    assert!(!ok && err.contains(r#"User "jane" cannot delete resource "configmaps""#), "{err}");
    assert_eq!(admin.try_run(&["--as", "jane", "auth", "can-i", "list", "pods", "-n", "team"], None).1.trim(), "yes");
    assert_eq!(admin.try_run(&["--as", "jane", "auth", "can-i", "list", "pods", "-n", "default"], None).1.trim(), "no");
    let me: Value =
        serde_json::from_str(&admin.run(&["--as", "joe", "--as-group", "dev", "auth", "whoami", "-o", "json"]))
            .unwrap();
    assert_eq!(me["status"]["userInfo"]["username"], "joe", "{me}");
    assert_eq!(me["status"]["userInfo"]["groups"], serde_json::json!(["dev", "system:authenticated"]), "{me}");
    let jane = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("current").tap_mkdir(),
        &jane_config,
    );
    let (ok, _, err) = jane.try_run(&["--as", "system:admin", "get", "nodes"], None);
    assert!(
        !ok && err.contains(r#"users "system:admin" is forbidden: User "jane" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );

    // The bootstrap roles are there, and a binding may not change its role.
    let roles = admin.run(&["get", "clusterroles", "-o", "name"]);
    for role in ["cluster-admin", "admin", "edit", "view", "system:kube-scheduler", "system:node"] {
        assert!(roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")), "{role}: {roles}");
    }
    let (ok, _, err) = admin.try_run(
        &["-n", "team", "patch", "rolebinding", "jane-view", "--type=merge", "-p", r#"{"roleRef":{"name":"edit"}}"#],
        None,
    );
    assert!(!ok && err.contains("cannot change roleRef"), "{err}");
}

/// The value under `key` as the store holds it, read with etcdctl from the server's client port.
fn raw_value(server: &ApiProcess, key: &str) -> Vec<u8> {
    let etcdctl = common::find_on_path("etcdctl", "reading the store raw needs etcdctl (Debian: etcd-client)");
    let endpoint = format!("http://127.0.0.1:{}", server.store_port.expect("keelson server has a store port"));
    let out = std::process::Command::new(etcdctl)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "get", key, "--print-value-only"])
        .output()
        .expect("etcdctl runs");
    assert!(out.status.success(), "etcdctl get {key}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn encryption_config(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n{providers}"
    )
}

fn key_provider(provider: &str, name: &str, fill: u8) -> String {
    format!(
        "  - {provider}:\n      keys:\n      - name: {name}\n        secret: {}\n",
        base64(&String::from_utf8(vec![fill; 32]).unwrap())
    )
}

/// Goal: with an EncryptionConfiguration, a secret is ciphertext in the store in Kubernetes'
/// format (a raw etcdctl read shows no plaintext) while kubectl reads it as written; after a key
/// rotation (new key first, old one kept, every secret replaced) the store holds the new key's
/// ciphertext and the old key can go; a store value no configured key reads is a 500 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_ciphertext_in_the_store_and_survive_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("encryption.yaml");
    std::fs::write(
        &config,
        encryption_config(&format!("{}  - identity: {{}}\n", key_provider("aescbc", "key1", b'a'))),
    )
    .unwrap();
    let mut server = ApiProcess::server_with(&["--encryption-provider-config", config.to_str().unwrap()]).await;
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    kubectl.run(&["create", "secret", "generic", "db", "--from-literal=password=hunter2-plain"]);
    kubectl.run(&["create", "configmap", "settings", "--from-literal=mode=visible-plain"]);
    let password = || kubectl.run(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    let key = "/registry/secrets/default/db";

    let stored = raw_value(&server, key);
    assert!(stored.starts_with(b"k8s:enc:aescbc:v1:key1:"), "{}", String::from_utf8_lossy(&stored));
    assert!(!contains(&stored, "hunter2") && !contains(&stored, &base64("hunter2-plain")), "plaintext in the store");
    assert!(contains(&raw_value(&server, "/registry/configmaps/default/settings"), "visible-plain"));
    assert_eq!(password(), base64("hunter2-plain"));

    // Rotation: the new key writes, the old one still reads; replacing every secret re-encrypts
    // even though nothing in them changed.
    std::fs::write(
        &config,
        encryption_config(&format!(
            "{}{}  - identity: {{}}\n",
            key_provider("aesgcm", "key2", b'b'),
            key_provider("aescbc", "key1", b'a')
        )),
    )
    .unwrap();
    server.restart().await;
    assert_eq!(password(), base64("hunter2-plain"));
    assert!(raw_value(&server, key).starts_with(b"k8s:enc:aescbc:v1:key1:"), "rewritten before any write");
    let all = kubectl.run(&["get", "secrets", "-A", "-o", "json"]);
    kubectl.run_with_input(&["replace", "-f", "-"], Some(&all));
    let stored = raw_value(&server, key);
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key2:"), "{}", String::from_utf8_lossy(&stored));

    // The old key gone, everything still reads.
    std::fs::write(&config, encryption_config(&key_provider("aesgcm", "key2", b'b'))).unwrap();
    server.restart().await;
    assert_eq!(password(), base64("hunter2-plain"));
    kubectl.run(&["create", "secret", "generic", "later", "--from-literal=k=v"]);
    assert!(raw_value(&server, "/registry/secrets/default/later").starts_with(b"k8s:enc:aesgcm:v1:key2:"));

    // A configuration that cannot read what is stored: an error that names the key, no junk.
    std::fs::write(&config, encryption_config(&key_provider("secretbox", "key3", b'c'))).unwrap();
    server.restart().await;
    let (ok, _, err) = kubectl.try_run(&["get", "secret", "db"], None);
    assert!(!ok);
    assert!(
        err.contains("unable to transform key \"/registry/secrets/default/db\"")
            && err.contains("no matching prefix found"),
        "{err}"
    );
}

/// The audit log's events, parsed, once `condition` holds for them (the writer runs behind a
/// queue).
async fn audit_events(log: &std::path::Path, what: &str, condition: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    common::wait_until(what, common::within(std::time::Duration::from_secs(10)), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let events: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("an audit line is JSON")).collect();
        let found = condition(&events);
        async move {
            if found {
                Ok(events)
            } else {
                let seen: Vec<String> = events
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} {} {}",
                            e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"], e["stage"]
                        )
                    })
                    .collect();
                Err(format!("{} events: {seen:?}", events.len()))
            }
        }
    })
    .await
}

fn find<'a>(events: &'a [Value], verb: &str, resource: &str, name: &str, stage: &str) -> Option<&'a Value> {
    events.iter().find(|e| {
        let named = if name.is_empty() { e["objectRef"]["name"].is_null() } else { e["objectRef"]["name"] == name };
        e["verb"] == verb && e["objectRef"]["resource"] == resource && named && e["stage"] == stage
    })
}

/// Goal: with an audit policy, requests are recorded as Kubernetes' `audit.k8s.io/v1` Events in
/// JSON lines — the level of the first matching rule (bodies at Request and RequestResponse, never
/// a secret's at Metadata), the stages it keeps (a watch's ResponseStarted and, once it ends,
/// ResponseComplete), who asked and as whom, the authorizer's decision and the answer's status —
/// and the response carries the Audit-Id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_written_to_the_audit_log_as_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: None\n  nonResourceURLs: ['/healthz*', /version, '/api*', /openapi*]\n\
         - level: None\n  users: [system:kube-controller-manager, system:kube-scheduler]\n\
         - level: Metadata\n  resources: [{group: '', resources: [secrets]}]\n\
         - level: RequestResponse\n  resources: [{group: '', resources: [configmaps]}]\n  omitManagedFields: true\n\
         - level: Request\n  verbs: [create, update, patch, delete]\n\
         - level: Metadata\n",
    )
    .unwrap();
    let log = dir.path().join("logs/audit.log");
    let server = ApiProcess::server_with(&[
        "--audit-policy-file",
        policy.to_str().unwrap(),
        "--audit-log-path",
        log.to_str().unwrap(),
    ])
    .await;
    let admin = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("admin").tap_mkdir(),
        server.kubeconfig(),
    );
    admin.run(&["create", "configmap", "settings", "--from-literal=mode=fast"]);
    admin.run(&["create", "secret", "generic", "db", "--from-literal=password=hunter2-plain"]);
    admin.run(&["create", "namespace", "team"]);
    let jane_config = kubeconfig_for(&server, dir.path(), &Identity::new("jane", &["dev"]));
    let jane = Kubectl::with_binary(
        kubectl_binary("KEELSON_KUBECTL_CURRENT"),
        &dir.path().join("jane").tap_mkdir(),
        &jane_config,
    );
    assert!(!jane.try_run(&["delete", "configmap", "settings"], None).0, "jane deleted a configmap");
    admin.try_run(&["--as", "jane", "get", "secret", "db"], None);
    // A watch that ends on its own (timeoutSeconds): started, then complete.
    let (code, _) = send(server.config(), "GET", "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1", None)
        .await
        .unwrap();
    assert_eq!(code, 200);

    let events = audit_events(&log, "every request is in the audit log", |events| {
        find(events, "watch", "pods", "", "ResponseComplete").is_some()
            && find(events, "get", "secrets", "db", "ResponseComplete").is_some()
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hunter2") && !text.contains(&base64("hunter2-plain")), "a secret's data in the audit log");
    assert!(events.iter().all(|e| e["kind"] == "Event" && e["apiVersion"] == "audit.k8s.io/v1"), "{text}");
    assert!(!events.iter().any(|e| e["stage"] == "RequestReceived"), "an omitted stage was written");
    assert!(!events.iter().any(|e| e["requestURI"].as_str().is_some_and(|u| u.starts_with("/version") || u == "/api")));
    assert!(!events.iter().any(|e| e["user"]["username"] == "system:kube-controller-manager"));

    // The configmap at RequestResponse: both bodies, without managed fields.
    let created =
        find(&events, "create", "configmaps", "settings", "ResponseComplete").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(created["level"], "RequestResponse");
    assert_eq!(created["requestObject"]["data"]["mode"], "fast", "{created}");
    assert_eq!(created["responseObject"]["metadata"]["name"], "settings", "{created}");
    assert!(created["responseObject"]["metadata"].get("managedFields").is_none(), "{created}");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["user"]["username"], "system:admin");
    assert_eq!(created["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert!(created["userAgent"].as_str().unwrap().starts_with("kubectl"), "{created}");
    assert_eq!(created["annotations"]["authorization.k8s.io/decision"], "allow");
    for field in ["auditID", "requestReceivedTimestamp", "stageTimestamp"] {
        assert!(created[field].is_string(), "{field}: {created}");
    }
    // The secret at Metadata: no bodies at all, the name taken from the answer.
    let secret = find(&events, "create", "secrets", "db", "ResponseComplete").unwrap();
    assert_eq!(secret["level"], "Metadata");
    assert!(secret.get("requestObject").is_none() && secret.get("responseObject").is_none(), "{secret}");
    // A namespace (Request level for create): the request body, not the response's.
    let ns = find(&events, "create", "namespaces", "team", "ResponseComplete").unwrap();
    assert_eq!(
        (ns["level"].as_str(), ns["requestObject"]["metadata"]["name"].as_str()),
        (Some("Request"), Some("team"))
    );
    assert!(ns.get("responseObject").is_none(), "{ns}");
    // jane's refused delete: the decision and the 403 Status.
    let refused = find(&events, "delete", "configmaps", "settings", "ResponseComplete").unwrap();
    assert_eq!(refused["user"]["username"], "jane");
    assert_eq!(refused["user"]["groups"], serde_json::json!(["dev", "system:authenticated"]));
    assert_eq!(refused["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(
        (refused["responseStatus"]["code"].as_i64(), refused["responseStatus"]["reason"].as_str()),
        (Some(403), Some("Forbidden"))
    );
    // The admin acting as jane: who asked, and as whom.
    let impersonated = find(&events, "get", "secrets", "db", "ResponseComplete").unwrap();
    assert_eq!(impersonated["user"]["username"], "system:admin");
    assert_eq!(impersonated["impersonatedUser"]["username"], "jane");
    // The watch: started, then complete, one audit ID.
    let started = find(&events, "watch", "pods", "", "ResponseStarted").unwrap_or_else(|| panic!("{text}"));
    let complete = find(&events, "watch", "pods", "", "ResponseComplete").unwrap();
    assert_eq!(started["auditID"], complete["auditID"]);

    // Every response names its event.
    let (code, _, headers) =
        common::api::send_with_headers(server.config(), "GET", "/api/v1/namespaces/default/configmaps/settings", None)
            .await
            .unwrap();
    assert_eq!(code, 200);
    let id = headers.get("audit-id").expect("an Audit-Id header").to_str().unwrap().to_string();
    audit_events(&log, "the get's event", |events| events.iter().any(|e| e["auditID"] == id.as_str())).await;
}

/// Goal: a node's agent reads only what the pods bound to it use (their secrets, configmaps,
/// claims), one object at a time, and writes only its own Node and Lease and the pods bound to
/// it, with Kubernetes' Node authorizer and NodeRestriction messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reaches_only_what_its_own_pods_use() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let server = ApiProcess::server().await;
    let admin = server.client();
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let n1 = kube::Client::try_from(as_user(&server, Some(&pki.client(&Identity::node("n1")).unwrap()))).unwrap();

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["mine", "theirs", "fresh"] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": {"k": "v"}}))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "settings"}, "data": {"k": "v"}})).unwrap(),
        )
        .await
        .unwrap();
    for name in ["n1", "n2"] {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let pod = |name: &str, node: &str, secret: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "web", "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}]}],
                "volumes": [{"name": "s", "secret": {"secretName": secret}}]
            }
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("on-n1", "n1", "mine")).await.unwrap();
    pods.create(&PostParams::default(), &pod("on-n2", "n2", "theirs")).await.unwrap();

    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected a 403, got {other:?}"),
    };
    let node_secrets: Api<Secret> = Api::namespaced(n1.clone(), "default");
    node_secrets.get("mine").await.expect("n1 reads its pod's secret");
    Api::<ConfigMap>::namespaced(n1.clone(), "default").get("settings").await.expect("n1 reads its pod's configmap");
    let message = refused(node_secrets.get("theirs").await.unwrap_err());
    assert_eq!(
        message,
        r#"secrets "theirs" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#
    );
    let message = refused(node_secrets.list(&Default::default()).await.unwrap_err());
    assert!(message.ends_with("can only read individual secrets"), "{message}");
    // A pod bound a moment ago counts at once.
    pods.create(&PostParams::default(), &pod("new-on-n1", "n1", "fresh")).await.unwrap();
    node_secrets.get("fresh").await.expect("n1 reads the secret of a pod just bound to it");

    // Writes: its own pods' status, not another node's pods; its own Node and Lease only.
    let node_pods: Api<Pod> = Api::namespaced(n1.clone(), "default");
    let status = Patch::Merge(serde_json::json!({"status": {"phase": "Running"}}));
    node_pods.patch_status("on-n1", &PatchParams::default(), &status).await.expect("n1 writes its pod's status");
    let message = refused(node_pods.patch_status("on-n2", &PatchParams::default(), &status).await.unwrap_err());
    assert_eq!(message, r#"node "n1" can only update pod status for pods with spec.nodeName set to itself"#);
    let message = refused(node_pods.delete("on-n2", &Default::default()).await.unwrap_err());
    assert_eq!(message, r#"node "n1" can only delete pods with spec.nodeName set to itself"#);
    let message =
        refused(node_pods.create(&PostParams::default(), &pod("made-by-n1", "n1", "mine")).await.unwrap_err());
    assert!(message.contains("can only create mirror pods"), "{message}");
    let node_nodes: Api<Node> = Api::all(n1.clone());
    let label = Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));
    node_nodes.patch("n1", &PatchParams::default(), &label).await.expect("n1 labels itself");
    let message = refused(node_nodes.patch("n2", &PatchParams::default(), &label).await.unwrap_err());
    assert_eq!(message, r#"node "n1" is not allowed to modify node "n2""#);
    let leases: Api<Lease> = Api::namespaced(n1.clone(), "kube-node-lease");
    let lease = |name: &str| -> Lease {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"holderIdentity": name}}))
            .unwrap()
    };
    leases.create(&PostParams::default(), &lease("n1")).await.expect("n1 makes its own lease");
    let message = refused(leases.create(&PostParams::default(), &lease("n2")).await.unwrap_err());
    assert!(message.contains("can only access node lease with the same name as the requesting node"), "{message}");
    assert!(refused(leases.get("n2").await.unwrap_err()).contains("same name"));

    // Tokens: only for the accounts of its pods, bound to one of them.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .unwrap();
    let token_request = |pod: Option<&str>| {
        let bound = pod.map(|p| serde_json::json!({"kind": "Pod", "apiVersion": "v1", "name": p}));
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"boundObjectRef": bound}})
    };
    let as_n1 = as_user(&server, Some(&pki.client(&Identity::node("n1")).unwrap()));
    let path = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let (code, body) = send(as_n1.clone(), "POST", path, Some(token_request(Some("on-n1")))).await.unwrap();
    assert_eq!(code, 201, "{body}");
    let (code, body) = send(as_n1.clone(), "POST", path, Some(token_request(Some("on-n2")))).await.unwrap();
    assert_eq!(
        (code, body["message"].as_str()),
        (403, Some(r#"node "n1" requested a token bound to a pod scheduled on a different node"#)),
        "{body}"
    );
    let (code, body) = send(as_n1, "POST", path, Some(token_request(None))).await.unwrap();
    assert_eq!(
        (code, body["message"].as_str()),
        (403, Some(r#"node "n1" requested a token not bound to a pod"#)),
        "{body}"
    );
}

/// Goal: a new pod runs as its namespace's `default` account unless it names one, and gets the
/// projected credentials volume (a bound token, the cluster's CA, its namespace) mounted where
/// Kubernetes mounts it, unless it or its account turns that off; the root CA publisher gives
/// every namespace the `kube-root-ca.crt` ConfigMap those volumes read, and puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_service_account_credentials_and_namespaces_the_cluster_ca() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Api, PostParams};

    let server = ApiProcess::server_full(&[
        "--disable",
        "scheduler,cluster-dns",
        "--controllers",
        "serviceaccount,root-ca-cert-publisher",
    ])
    .await;
    let client = server.client();
    let kubectl = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig()).run(args)
    };
    kubectl(&["create", "namespace", "team"]);
    let ca = std::fs::read_to_string(server.cert_dir().join("server-ca.crt")).unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let published = || async {
        match configmaps.get("kube-root-ca.crt").await {
            Ok(cm) if cm.data.as_ref().and_then(|d| d.get("ca.crt")) == Some(&ca) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    common::wait_until("team has the cluster's CA", common::within(std::time::Duration::from_secs(10)), published)
        .await;
    configmaps.delete("kube-root-ca.crt", &Default::default()).await.unwrap();
    common::wait_until("the CA is published again", common::within(std::time::Duration::from_secs(10)), published)
        .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let pod = |name: &str, extra: Value| -> Pod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "web"}], "initContainers": [{"name": "i", "image": "web"}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let made = pods.create(&PostParams::default(), &pod("plain", serde_json::json!({}))).await.unwrap();
    let spec = serde_json::to_value(made.spec.unwrap()).unwrap();
    assert_eq!(spec["serviceAccountName"], "default");
    let volume = &spec["volumes"][0];
    let name = volume["name"].as_str().unwrap();
    assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
    assert_eq!(
        volume["projected"]["sources"],
        serde_json::json!([
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ])
    );
    for list in ["containers", "initContainers"] {
        assert_eq!(
            spec[list][0]["volumeMounts"],
            serde_json::json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
            "{list}"
        );
    }
    // Turned off by the pod, or by its account.
    let off = pods
        .create(&PostParams::default(), &pod("off", serde_json::json!({"automountServiceAccountToken": false})))
        .await
        .unwrap();
    assert!(off.spec.unwrap().volumes.unwrap_or_default().is_empty());
    kubectl(&["-n", "team", "create", "serviceaccount", "quiet"]);
    kubectl(&["-n", "team", "patch", "serviceaccount", "quiet", "-p", r#"{"automountServiceAccountToken": false}"#]);
    let quiet = common::wait_until(
        "the account's choice reaches admission",
        common::within(std::time::Duration::from_secs(10)),
        || {
            let pods = pods.clone();
            let body = pod("", serde_json::json!({"serviceAccountName": "quiet"}));
            async move {
                let mut body = body;
                body.metadata.name = None;
                body.metadata.generate_name = Some("quiet-".into());
                let made = pods.create(&PostParams::default(), &body).await.map_err(|e| e.to_string())?;
                let spec = made.spec.unwrap();
                if spec.volumes.unwrap_or_default().is_empty() {
                    Ok(spec.service_account_name)
                } else {
                    Err("a volume was added".to_string())
                }
            }
        },
    )
    .await;
    assert_eq!(quiet.as_deref(), Some("quiet"));
}

/// `server`'s client configuration with a bearer token in place of the admin's certificate.
fn with_token(server: &ApiProcess, token: &str) -> kube::Config {
    let mut config = as_user(server, None);
    config.auth_info.token = Some(token.to_string().into());
    config
}

/// Goal: `kubectl create token` issues a service account's token through the TokenRequest API;
/// it authenticates as `system:serviceaccount:<ns>:<name>` in Kubernetes' groups and RBAC
/// applies to it; a token bound to a pod stops authenticating once the pod is gone, and one
/// issued to an account that was since recreated too; a forged token is a 401; bad requests get
/// Kubernetes' answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_and_rbac_applies_to_them() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    kubectl.run(&["create", "serviceaccount", "builder"]);
    let token = kubectl.run(&["create", "token", "builder"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let (code, me) =
        send(with_token(&server, &token), "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some(whoami()))
            .await
            .unwrap();
    assert_eq!(code, 201, "{me}");
    assert_eq!(me["status"]["userInfo"]["username"], "system:serviceaccount:default:builder");
    assert_eq!(
        me["status"]["userInfo"]["groups"],
        serde_json::json!(["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"])
    );
    let pods = "/api/v1/namespaces/default/pods";
    let (code, body) = send(with_token(&server, &token), "GET", pods, None).await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        r#"pods is forbidden: User "system:serviceaccount:default:builder" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    kubectl.run(&["create", "rolebinding", "builder-view", "--clusterrole=view", "--serviceaccount=default:builder"]);
    common::wait_until(
        "the binding reaches the authorizer",
        common::within(std::time::Duration::from_secs(10)),
        || {
            let config = with_token(&server, &token);
            async move {
                match send(config, "GET", pods, None).await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    // Bound to a pod: valid while the pod is there.
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
        "spec": {"serviceAccountName": "builder", "containers": [{"name": "c", "image": "web"}]}});
    kubectl.run_with_input(&["create", "-f", "-"], Some(&pod.to_string()));
    let bound =
        kubectl.run(&["create", "token", "builder", "--bound-object-kind", "Pod", "--bound-object-name", "worker"]);
    let bound = bound.trim();
    assert_eq!(send(with_token(&server, bound), "GET", pods, None).await.unwrap().0, 200);
    kubectl.run(&["delete", "pod", "worker", "--grace-period=0", "--force"]);
    let (code, body) = send(with_token(&server, bound), "GET", pods, None).await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")), "{body}");

    // Forged: the claims changed under the same signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_claims = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = serde_json::json!("system:serviceaccount:kube-system:default");
        engine.encode(claims.to_string())
    };
    parts[1] = &forged_claims;
    assert_eq!(send(with_token(&server, &parts.join(".")), "GET", pods, None).await.unwrap().0, 401);

    // The account recreated: the old token named the old one.
    kubectl.run(&["delete", "serviceaccount", "builder"]);
    kubectl.run(&["create", "serviceaccount", "builder"]);
    assert_eq!(send(with_token(&server, &token), "GET", pods, None).await.unwrap().0, 401);

    // Requests the API refuses.
    let request = |seconds: i64| serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}});
    let (code, body) =
        send(server.config(), "POST", "/api/v1/namespaces/default/serviceaccounts/builder/token", Some(request(599)))
            .await
            .unwrap();
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["message"],
        r#"TokenRequest.authentication.k8s.io "builder" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"#
    );
    let (code, body) =
        send(server.config(), "POST", "/api/v1/namespaces/default/serviceaccounts/nobody/token", Some(request(600)))
            .await
            .unwrap();
    assert_eq!((code, body["message"].as_str()), (404, Some(r#"serviceaccounts "nobody" not found"#)), "{body}");
    let (code, body) =
        send(server.config(), "POST", "/api/v1/namespaces/default/serviceaccounts/builder/token", Some(request(600)))
            .await
            .unwrap();
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["kind"], "TokenRequest");
    assert!(body["status"]["expirationTimestamp"].is_string(), "{body}");
}

/// Goal: a namespace labelled `pod-security.kubernetes.io/enforce=restricted` refuses a
/// privileged pod with Kubernetes' PodSecurity message, admits a hardened one, and `warn`
/// labels give kubectl Kubernetes' warning for a workload's template; a label naming no level is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_restricted_refuses_a_privileged_pod_with_kubernetes_message() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    kubectl.run(&["create", "namespace", "secure"]);
    kubectl.run(&["label", "namespace", "secure", "pod-security.kubernetes.io/enforce=restricted"]);
    let privileged = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv", "namespace": "secure"},
        "spec": {"containers": [{"name": "priv", "image": "web", "securityContext": {"privileged": true}}]}}"#;
    let (ok, _, err) = kubectl.try_run(&["create", "-f", "-"], Some(privileged));
    assert!(!ok, "a privileged pod was admitted");
    assert!(
        err.contains(r#"pods "priv" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "priv" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "priv" must set securityContext.capabilities.drop=["ALL"]), privileged (container "priv" must not set securityContext.privileged=true), runAsNonRoot != true (pod or container "priv" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "priv" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{err}"
    );
    let hardened = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hardened", "namespace": "secure"},
        "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "c", "image": "web", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}"#;
    kubectl.run_with_input(&["create", "-f", "-"], Some(hardened));

    // warn: admitted, with the warning.
    kubectl.run(&["create", "namespace", "lenient"]);
    kubectl.run(&["label", "namespace", "lenient", "pod-security.kubernetes.io/warn=baseline"]);
    let (ok, _, err) =
        kubectl.try_run(&["-n", "lenient", "create", "deployment", "web", "--image=web", "--port=80"], None);
    assert!(ok, "{err}");
    assert!(!err.contains("would violate"), "a baseline-clean template was warned about: {err}");
    let host = r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "host", "namespace": "lenient"},
        "spec": {"selector": {"matchLabels": {"app": "host"}}, "template": {"metadata": {"labels": {"app": "host"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "web"}]}}}}"#;
    let (ok, _, err) = kubectl.try_run(&["create", "-f", "-"], Some(host));
    assert!(ok, "{err}");
    assert!(
        err.contains(r#"Warning: would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#),
        "{err}"
    );

    let (ok, _, err) =
        kubectl.try_run(&["label", "namespace", "lenient", "pod-security.kubernetes.io/enforce=strict"], None);
    assert!(!ok && err.contains(r#"Unsupported value: "strict""#), "{err}");
}

/// A TLS connection to `server` presenting `credentials`, as a hand-written client makes it.
async fn tls_connection(
    server: &ApiProcess,
    credentials: &control::pki::Pem,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_der(pki.server_ca()))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(control::pki::crypto_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(pem_der(&credentials.cert))],
            PrivateKeyDer::from_pem_slice(credentials.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.api_port)).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Goal: an API server at its limit of requests in flight sheds more as Kubernetes does — 429
/// `TooManyRequests` with `Retry-After` after a short, bounded wait — while reads keep their own
/// seats, the privileged group is exempt, and a seat given back serves again; a user holds at
/// most its share of watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_at_its_limit_answers_429_with_retry_after() {
    use tokio::io::AsyncWriteExt;
    let server = ApiProcess::server_with(&[
        "--max-requests-inflight",
        "1",
        "--max-mutating-requests-inflight",
        "1",
        "--max-watches-per-user",
        "2",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    admin.run(&["create", "rolebinding", "jane-edit", "--clusterrole=edit", "--user=jane"]);
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let jane = pki.client(&Identity::new("jane", &[])).unwrap();
    let configmap =
        |name: &str| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let path = "/api/v1/namespaces/default/configmaps";
    common::wait_until("jane may create configmaps", common::within(std::time::Duration::from_secs(10)), || {
        let config = as_user(&server, Some(&jane));
        async move {
            match send(config, "POST", path, Some(configmap("first"))).await {
                Ok((201, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // The only write seat, held by a create whose body never finishes arriving.
    let mut stalled = tls_connection(&server, &jane).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.flush().await.unwrap();
    let (headers, body) =
        common::wait_until("a second write is refused", common::within(std::time::Duration::from_secs(10)), || {
            let config = as_user(&server, Some(&jane));
            async move {
                match common::api::send_with_headers(config, "POST", path, Some(configmap("second"))).await {
                    Ok((429, body, headers)) => Ok((headers, body)),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(
        (body["reason"].as_str(), body["message"].as_str()),
        (Some("TooManyRequests"), Some("Too many requests, please try again later."))
    );
    // Reads have seats of their own; the admin needs none.
    assert_eq!(send(as_user(&server, Some(&jane)), "GET", path, None).await.unwrap().0, 200);
    assert_eq!(send(server.config(), "POST", path, Some(configmap("admins"))).await.unwrap().0, 201);
    // The seat given back serves the next write.
    drop(stalled);
    common::wait_until("writes are served again", common::within(std::time::Duration::from_secs(10)), || {
        let config = as_user(&server, Some(&jane));
        async move {
            match send(config, "POST", path, Some(configmap("third"))).await {
                Ok((201, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Watches: two open at once for jane, a third refused until one closes.
    let mut open = Vec::new();
    for _ in 0..2 {
        use tokio::io::AsyncReadExt;
        let mut watch = tls_connection(&server, &jane).await;
        let request = format!("GET {path}?watch=true HTTP/1.1\r\nHost: localhost\r\n\r\n");
        watch.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 64];
        let n = watch.read(&mut head).await.unwrap();
        assert!(
            String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head[..n])
        );
        open.push(watch);
    }
    let short_watch = format!("{path}?watch=true&timeoutSeconds=1");
    let (code, body) = send(as_user(&server, Some(&jane)), "GET", &short_watch, None).await.unwrap();
    assert_eq!((code, body["reason"].as_str()), (429, Some("TooManyRequests")), "{body}");
    drop(open.pop());
    // The server learns the connection is gone when it next writes to it: an event.
    assert_eq!(send(server.config(), "POST", path, Some(configmap("event"))).await.unwrap().0, 201);
    common::wait_until("a watch seat is free again", common::within(std::time::Duration::from_secs(10)), || {
        let (config, short_watch) = (as_user(&server, Some(&jane)), short_watch.clone());
        async move {
            match send(config, "GET", &short_watch, None).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

/// Goal: SubjectAccessReview and LocalSubjectAccessReview answer for another user as the
/// authorizer decides for it (the Node authorizer's refusals say why), and only for those
/// allowed to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_access_reviews_answer_for_another_user() {
    let server = ApiProcess::server().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    admin.run(&["create", "namespace", "team"]);
    let review = |user: &str, groups: &[&str], ns: &str, resource: &str| {
        serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": {"namespace": ns, "verb": "get", "resource": resource, "name": "x"}}})
    };
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (code, answer) =
        send(server.config(), "POST", path, Some(review("jane", &[], "team", "configmaps"))).await.unwrap();
    assert_eq!(
        (code, answer["kind"].as_str(), answer["status"]["allowed"].as_bool()),
        (201, Some("SubjectAccessReview"), Some(false)),
        "{answer}"
    );
    admin.run(&["-n", "team", "create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane"]);
    common::wait_until("the review sees jane's binding", common::within(std::time::Duration::from_secs(10)), || {
        let config = server.config();
        async move {
            let (_, answer) = send(config, "POST", path, Some(review("jane", &[], "team", "configmaps"))).await?;
            if answer["status"]["allowed"] == true {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        }
    })
    .await;
    // A node asking for a secret none of its pods uses: denied, and why.
    let (_, answer) =
        send(server.config(), "POST", path, Some(review("system:node:n1", &["system:nodes"], "team", "secrets")))
            .await
            .unwrap();
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    assert_eq!(answer["status"]["denied"], true, "{answer}");
    assert_eq!(answer["status"]["reason"], "no relationship found between node 'n1' and this object", "{answer}");
    // Local: the path's namespace, which the spec may not contradict.
    let local = "/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews";
    let mut body = review("jane", &[], "", "configmaps");
    body["kind"] = serde_json::json!("LocalSubjectAccessReview");
    let (code, answer) = send(server.config(), "POST", local, Some(body.clone())).await.unwrap();
    assert_eq!((code, answer["status"]["allowed"].as_bool()), (201, Some(true)), "{answer}");
    body["spec"]["resourceAttributes"]["namespace"] = serde_json::json!("other");
    let (code, answer) = send(server.config(), "POST", local, Some(body)).await.unwrap();
    assert_eq!(code, 422, "{answer}");
    // jane may not ask about others.
    let pki = Pki::open(&server.cert_dir()).unwrap();
    let jane = pki.client(&Identity::new("jane", &[])).unwrap();
    let (code, answer) =
        send(as_user(&server, Some(&jane)), "POST", path, Some(review("bob", &[], "team", "pods"))).await.unwrap();
    assert_eq!(code, 403, "{answer}");
}

/// Goal: a ClusterRole labelled `rbac.authorization.k8s.io/aggregate-to-view: "true"` adds its
/// rules to `view`, and through view's own label to `edit` and `admin`, as Kubernetes'
/// aggregation controller does; removing it takes them away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_roles_aggregate_into_view_edit_and_admin() {
    let server =
        ApiProcess::server_full(&["--disable", "scheduler,cluster-dns", "--controllers", "clusterrole-aggregation"])
            .await;
    let dir = tempfile::tempdir().unwrap();
    let admin = Kubectl::with_binary(kubectl_binary("KEELSON_KUBECTL_CURRENT"), dir.path(), server.kubeconfig());
    let extra = r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widgets-reader", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]}]}"#;
    admin.run_with_input(&["create", "-f", "-"], Some(extra));
    let holds = |role: &'static str, wanted: bool| {
        let admin = &admin;
        async move {
            let rules = admin.run(&["get", "clusterrole", role, "-o", "jsonpath={.rules}"]);
            if rules.contains("widgets") == wanted {
                Ok(())
            } else {
                Err(rules)
            }
        }
    };
    for role in ["view", "edit", "admin"] {
        common::wait_until(
            &format!("{role} holds the widgets rule"),
            common::within(std::time::Duration::from_secs(10)),
            || holds(role, true),
        )
        .await;
    }
    // The bootstrap rules stay.
    assert!(admin.run(&["get", "clusterrole", "view", "-o", "jsonpath={.rules}"]).contains("configmaps"));
    admin.run(&["delete", "clusterrole", "widgets-reader"]);
    for role in ["view", "edit", "admin"] {
        common::wait_until(
            &format!("{role} no longer holds it"),
            common::within(std::time::Duration::from_secs(10)),
            || holds(role, false),
        )
        .await;
    }
}
