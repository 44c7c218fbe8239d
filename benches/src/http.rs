//! HTTP/1 calls to the Kubernetes API for the API benchmarks (over TLS with the credentials of a
//! kubeconfig a server wrote, or plain): JSON in, bytes out, and watch streams read line by line,
//! with as little work on the client as the measurement allows (it shares the machine's CPUs with
//! the servers).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

pub type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that keeps up to `idle_per_host` connections open to each server, for `http://`
/// URLs, and for `https://` ones with the CA and client certificate of `kubeconfig` (a
/// kubeconfig's text).
pub fn client(idle_per_host: usize, kubeconfig: Option<&str>) -> Result<Http> {
    let tls = tls_config(kubeconfig)?;
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(idle_per_host).build(connector))
}

/// Waits until the file at `path` (a kubeconfig a server writes once it serves) exists; its text.
pub async fn wait_kubeconfig(path: &std::path::Path, within: std::time::Duration) -> Result<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.is_empty() => return Ok(text),
            _ if std::time::Instant::now() > deadline => bail!("no kubeconfig at {} after {within:?}", path.display()),
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[allow(deprecated)] // ring, the provider Keelson's servers and kube-rs use (see control::pki).
fn tls_config(kubeconfig: Option<&str>) -> Result<rustls::ClientConfig> {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let decode = |b64: &str| base64::engine::general_purpose::STANDARD.decode(b64).context("not base64");
    let mut roots = rustls::RootCertStore::empty();
    let mut credentials = None;
    if let Some(text) = kubeconfig {
        let parsed = kube::config::Kubeconfig::from_yaml(text).context("not a kubeconfig")?;
        let cluster = parsed.clusters.first().and_then(|c| c.cluster.clone()).context("no cluster")?;
        if let Some(ca) = cluster.certificate_authority_data {
            for cert in CertificateDer::pem_slice_iter(&decode(&ca)?) {
                roots.add(cert.context("the CA is not PEM")?)?;
            }
        }
        let user = parsed.auth_infos.first().and_then(|a| a.auth_info.clone()).unwrap_or_default();
        if let (Some(cert), Some(key)) = (user.client_certificate_data, user.client_key_data) {
            use secrecy::ExposeSecret;
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&decode(&cert)?).collect::<Result<_, _>>().context("not PEM")?;
            let key = PrivateKeyDer::from_pem_slice(&decode(key.expose_secret())?).context("not a PEM key")?;
            credentials = Some((chain, key));
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    Ok(match credentials {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

pub async fn call(http: &Http, method: &str, url: String, content_type: &str, body: Vec<u8>) -> Result<Bytes> {
    let req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = http.request(req).await.with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{method} {url}: {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(bytes)
}

/// `call`, tried again while the API answers 503 or 429 or the connection fails (a replica
/// whose store connection broke answers 503 until it has a new one), up to `attempts` times. A
/// create retried after its first attempt went through meets 409 AlreadyExists: that is success.
/// A JSON request (a null body sends none) and its JSON answer.
pub async fn call_json(http: &Http, method: &str, url: String, body: serde_json::Value) -> Result<serde_json::Value> {
    let bytes =
        call(http, method, url, "application/json", if body.is_null() { vec![] } else { serde_json::to_vec(&body)? })
            .await?;
    Ok(serde_json::from_slice(&bytes)?)
}

pub async fn call_retrying(
    http: &Http,
    method: &str,
    url: String,
    content_type: &str,
    body: Vec<u8>,
    attempts: u32,
) -> Result<Bytes> {
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        match call(http, method, url.clone(), content_type, body.clone()).await {
            Ok(b) => return Ok(b),
            Err(e) => {
                let text = format!("{e:#}");
                if attempt > 0 && method == "POST" && text.contains(": 409 Conflict") && text.contains("AlreadyExists")
                {
                    return Ok(Bytes::new());
                }
                let transient = text.contains(": 503 ") || text.contains(": 429 ") || !text.contains(": ");
                let transient = transient || text.contains("connection") || text.contains("transport");
                if !transient {
                    return Err(e);
                }
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt.min(4))).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{method} {url}: no attempt made")))
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Opens a watch at `url` and hands every event line to `on_line` until the stream ends.
pub async fn watch_lines(http: &Http, url: &str, mut on_line: impl FnMut(&[u8])) -> Result<()> {
    let req = http::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = http.request(req).await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("watch {url}: {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &pending[start..]) {
            on_line(&pending[start..start + nl]);
            start += nl + 1;
        }
        pending.drain(..start);
    }
    Ok(())
}

/// Waits until every base URL serves the API's default namespace.
pub async fn wait_serving(http: &Http, bases: &[String], within: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    for base in bases {
        while call(http, "GET", format!("{base}/api/v1/namespaces/default"), "application/json", vec![]).await.is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("{base} does not serve the API");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Follows the collection at `url` forever: each listed object, then each watched one that is
/// not a deletion, is given to `on`; a broken watch lists again.
pub async fn follow(http: &Http, url: &str, mut on: impl FnMut(&serde_json::Value)) {
    loop {
        let listed = match call(http, "GET", url.to_string(), "", vec![]).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("listing {url}: {e:#}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&listed) else { continue };
        for item in list["items"].as_array().into_iter().flatten() {
            on(item);
        }
        let rv = list.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).unwrap_or("0").to_string();
        let r = watch_lines(http, &format!("{url}?watch=1&resourceVersion={rv}"), |line| {
            if let Ok(l) = serde_json::from_slice::<serde_json::Value>(line) {
                if l["type"] != "DELETED" {
                    on(&l["object"]);
                }
            }
        })
        .await;
        if let Err(e) = r {
            eprintln!("watch of {url} ended: {e:#}; listing again");
        }
    }
}
