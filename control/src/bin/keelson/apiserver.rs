//! `keelson apiserver`: an API replica over existing store endpoints (and the API half of
//! `keelson server`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use control::apiserver::{self as api, store::Store, Api};
use control::process::{parse_duration, stop_signal};

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Address the Kubernetes API is served on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_listen: String,
    /// Write a kubeconfig for kubectl naming this API server to this file (mode 0600: with
    /// `keelson server` it holds the admin's credentials).
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// The range services' cluster IPs are allocated from (the same on every API replica).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The range services' node ports are allocated from (the same on every API replica).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// How long events are kept after their last write (Kubernetes' --event-ttl), as 1h, 30m,
    /// 90s, 1h30m or plain seconds.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: std::time::Duration,
    /// The API's serving certificate (PEM, intermediates after it). `keelson server` makes one
    /// from its cluster CA when none is given; `keelson apiserver` without one serves plain HTTP.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Clients presenting a certificate this CA (PEM) signed are authenticated as the user its
    /// common name names, in the groups its organizations name. `keelson server` trusts its own
    /// client CA as well.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Further DNS names and IP addresses the serving certificate `keelson server` makes names,
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1, YAML or JSON): the resources
    /// whose objects are encrypted in the store, and the providers and keys that do it
    /// (aescbc, aesgcm, secretbox, identity; the first writes, any of them reads).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// The address pods reach this API server at, listed in the `default/kubernetes` Service's
    /// endpoints; by default the listen address, or the host's for a wildcard one (a loopback
    /// one is not listed: pods cannot reach it).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Reads served at once; more wait briefly in a bounded queue, then get 429 (Kubernetes'
    /// flag; the privileged group, health checks and watches are exempt).
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Writes served at once, likewise.
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// Watches one user may hold open at once; more get 429 (the privileged group is exempt).
    #[arg(long, default_value_t = 1_000)]
    max_watches_per_user: usize,
    /// The private key (PEM, ECDSA P-256) service-account tokens are signed with; `keelson
    /// server` uses its cluster's (`<cert-dir>/service-account.key`) unless one is given.
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// Further keys (PEM, public or private) whose service-account tokens are accepted; repeat
    /// the flag for several files.
    #[arg(long)]
    service_account_key_file: Vec<PathBuf>,
    /// The issuer service-account tokens name, and that they must name.
    #[arg(long, default_value = api::tokens::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// The audiences a token must be meant for (comma-separated; the issuer when none).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// An audit Policy (audit.k8s.io/v1): which requests are recorded, at which level and stages.
    #[arg(long, requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events go, one JSON line each (`-`: standard output).
    #[arg(long, requires = "audit_policy_file")]
    audit_log_path: Option<PathBuf>,
    /// Rotate the audit log once it reaches this many megabytes (0: never).
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept at most (0: all).
    #[arg(long, default_value_t = 10)]
    audit_log_maxbackup: usize,
    /// Rotated audit logs older than this many days are removed (0: kept whatever their age).
    #[arg(long, default_value_t = 0)]
    audit_log_maxage: u64,
}

/// How the API is served: plain HTTP (every client trusted), or TLS.
pub enum Serving {
    Plain,
    Tls {
        files: api::serving::TlsFiles,
        /// The CA clients are to trust and the admin's credentials, for the kubeconfig written.
        admin: Option<(String, control::pki::Pem)>,
    },
}

impl Serving {
    fn scheme(&self) -> &'static str {
        match self {
            Serving::Plain => "http",
            Serving::Tls { .. } => "https",
        }
    }
}

fn read(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("--{flag} {}", path.display()))
}

impl ApiArgs {
    pub fn service_cluster_ip_range(&self) -> &str {
        &self.service_cluster_ip_range
    }

    pub fn api_listen(&self) -> &str {
        &self.api_listen
    }

    /// The URL a client in this process reaches the API at (loopback for a wildcard address).
    pub fn local_url(&self, serving: &Serving) -> String {
        let addr = self.api_listen.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
        format!("{}://{addr}", serving.scheme())
    }

    /// `keelson apiserver`: TLS with the given files, else plain HTTP.
    fn given_serving(&self) -> anyhow::Result<Serving> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_private_key_file) else {
            if self.client_ca_file.is_some() {
                anyhow::bail!("--client-ca-file needs --tls-cert-file and --tls-private-key-file");
            }
            return Ok(Serving::Plain);
        };
        let client_ca = self.client_ca_file.as_ref().map(|p| read(p, "client-ca-file")).transpose()?;
        let files = api::serving::TlsFiles {
            cert: read(cert, "tls-cert-file")?,
            key: read(key, "tls-private-key-file")?,
            client_ca,
        };
        Ok(Serving::Tls { files, admin: None })
    }

    /// `keelson server`: TLS with the given serving certificate or one made from `pki` for
    /// `names` and --tls-san's; clients of the PKI's client CA (and --client-ca-file's)
    /// authenticate.
    pub fn server_serving(&self, pki: &control::pki::Pki, names: &[String]) -> anyhow::Result<Serving> {
        let mut client_ca = pki.client_ca().to_string();
        if let Some(path) = &self.client_ca_file {
            client_ca.push('\n');
            client_ca.push_str(&read(path, "client-ca-file")?);
        }
        let (cert, key) = match (&self.tls_cert_file, &self.tls_private_key_file) {
            (Some(cert), Some(key)) => (read(cert, "tls-cert-file")?, read(key, "tls-private-key-file")?),
            _ => {
                let mut names = names.to_vec();
                names.extend(self.tls_san.iter().cloned());
                names.sort();
                names.dedup();
                let pem = pki.serving("kube-apiserver", &names)?;
                (pem.cert, pem.key)
            }
        };
        let admin =
            pki.client(&control::pki::Identity::new(control::pki::ADMIN_USER, &[control::pki::MASTERS_GROUP]))?;
        Ok(Serving::Tls {
            files: api::serving::TlsFiles { cert, key, client_ca: Some(client_ca) },
            admin: Some((pki.server_ca().to_string(), admin)),
        })
    }
}

#[derive(Args, Debug)]
pub struct ApiserverArgs {
    /// Comma-separated client URLs of the store (Keelson's or etcd's).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    store_endpoints: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// How long requests under way may take to finish once the API server is asked to stop, in
/// milliseconds.
const SHUTDOWN_GRACE_MS: u64 = 3_000;

/// How long the API replica keeps trying to create the system objects (namespaces, priority
/// classes) while the store comes up.
const STORE_READY_TIMEOUT_MS: u64 = 60_000;

pub async fn run_api(
    args: &ApiArgs,
    serving: Serving,
    signing_key: Option<String>,
    store: Store,
    store_name: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ranges = api::alloc::Ranges::parse(&args.service_cluster_ip_range, &args.service_node_port_range)
        .map_err(|e| anyhow::anyhow!(e))?;
    let (tls, authentication) = match &serving {
        Serving::Plain => {
            tracing::warn!("serving plain HTTP: every client that reaches the API acts as it pleases");
            (None, api::authn::Authentication::None)
        }
        Serving::Tls { files, .. } => {
            let config = api::serving::server_config(files).map_err(anyhow::Error::msg)?;
            let authentication = match files.client_ca {
                Some(_) => api::authn::Authentication::Certificates,
                None => {
                    tracing::warn!("no --client-ca-file: every client that reaches the API acts as it pleases");
                    api::authn::Authentication::None
                }
            };
            (Some(config), authentication)
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.api_listen))?;
    let address = listener.local_addr()?;
    let store = match &args.encryption_provider_config {
        Some(path) => {
            let served: Vec<(&str, &str)> = api::resources::RESOURCES.iter().map(|r| (r.group, r.plural)).collect();
            let encryption = api::encryption::Encryption::from_file(path, &served)
                .map_err(|e| anyhow::anyhow!("--encryption-provider-config: {e}"))?;
            tracing::info!(resources = ?encryption.resources(), "encrypting objects at rest");
            store.with_encryption(encryption)
        }
        None => store,
    };
    let api = Api::new(store, ranges, args.event_ttl, authentication);
    let _ = api.limits.set(api::limits::Limits::new(
        args.max_requests_inflight,
        args.max_mutating_requests_inflight,
        args.max_watches_per_user,
    ));
    let signing_key = match &args.service_account_signing_key_file {
        Some(path) => Some(read(path, "service-account-signing-key-file")?),
        None => signing_key,
    };
    let verifying = args
        .service_account_key_file
        .iter()
        .map(|p| read(p, "service-account-key-file"))
        .collect::<Result<Vec<_>, _>>()?;
    if signing_key.is_some() || !verifying.is_empty() {
        let authority = api::tokens::TokenAuthority::new(
            signing_key.as_deref(),
            &verifying,
            &args.service_account_issuer,
            &args.api_audiences,
        )
        .map_err(|e| anyhow::anyhow!("service-account keys: {e}"))?;
        let _ = api.tokens.set(authority);
    } else {
        tracing::warn!("no service-account key: tokens are neither issued nor accepted");
    }
    if let (Some(policy), Some(path)) = (&args.audit_policy_file, &args.audit_log_path) {
        let log = api::audit::LogOptions {
            path: path.clone(),
            max_size_bytes: args.audit_log_maxsize * 1024 * 1024,
            max_backups: args.audit_log_maxbackup,
            max_age_days: args.audit_log_maxage,
        };
        let auditor =
            api::audit::Auditor::start(policy, log).map_err(|e| anyhow::anyhow!("--audit-policy-file: {e}"))?;
        let _ = api.audit.set(auditor);
        tracing::info!(log = %path.display(), "auditing requests");
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(STORE_READY_TIMEOUT_MS);
    // Asked to stop while still waiting for the store: nothing to serve.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    loop {
        if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
            return Ok(());
        }
        let ready = async {
            api.ensure_system_objects().await?;
            api.detect_store().await
        };
        match ready.await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e.message, "waiting for the store");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = shutdown.clone() => return Ok(()),
                }
            }
            Err(e) => anyhow::bail!("the store at {store_name} is not usable: {}", e.message),
        }
    }
    if let Some(path) = &args.write_kubeconfig {
        let url = format!("{}://{address}", serving.scheme());
        let kubeconfig = match &serving {
            Serving::Tls { admin: Some((ca, admin)), .. } => control::pki::kubeconfig(&url, Some(ca), Some(admin)),
            _ => control::pki::kubeconfig(&url, None, None),
        };
        control::pki::write_private(path, &kubeconfig)
            .with_context(|| format!("cannot write the kubeconfig to {}", path.display()))?;
    }
    tracing::info!(%address, scheme = serving.scheme(), store = store_name, "serving the Kubernetes API");
    let advertise = args.advertise_address.or(match address.ip() {
        ip if ip.is_loopback() => None,
        ip if ip.is_unspecified() => agent::machine::default_address().parse().ok(),
        ip => Some(ip),
    });
    let kubernetes_ip =
        control::dns::service_range_address(&args.service_cluster_ip_range, 1).context("--service-cluster-ip-range")?;
    tokio::spawn(api::endpoints_reconciler::run(
        api.clone(),
        advertise,
        kubernetes_ip.into(),
        address.port(),
        shutdown.clone(),
    ));
    // Once asked to stop, requests under way get a grace period; watches never end on their own,
    // so whatever is still open after it is closed.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = api::serving::serve(listener, tls, api::router(api), async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    tokio::pin!(serving);
    let grace_over = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = &mut serving => served.context("the API server failed"),
        _ = grace_over => {
            tracing::info!(grace_ms = SHUTDOWN_GRACE_MS, "closing the connections still open");
            Ok(())
        }
    }
}

pub async fn apiserver(args: ApiserverArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> =
        args.store_endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let store = Store::connect(&endpoints)?;
    let serving = args.api.given_serving()?;
    run_api(&args.api, serving, None, store, &endpoints.join(","), stop_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
