//! The API's listener: each connection, plain or TLS (HTTP/1.1 and HTTP/2, upgrades allowed),
//! served by the router with the connection's peer — its address and, for a client certificate
//! the client CA signed, the identity it names — on every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::pki::Identity;

/// Connections in their TLS handshake at once; more wait in the listen backlog until one ends
/// (a flood of handshakes must not take every worker, nor be turned away).
const TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 512;
/// How long a client has to finish its TLS handshake, in milliseconds.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// What is read of a plain HTTP request to the HTTPS port before it is answered, in bytes, and
/// how long that read may take, in milliseconds.
const PLAIN_REQUEST_READ_BYTES_MAX: usize = 8 * 1024;
const PLAIN_REQUEST_READ_MS: u64 = 1_000;
/// Pause after a failed accept (out of file descriptors, say) before the next, in milliseconds.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// Who is on the other end of a request's connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The identity of the verified client certificate the connection presented, if any.
    pub certificate: Option<Identity>,
}

/// What the API serves TLS with.
#[derive(Clone)]
pub struct TlsFiles {
    /// The serving certificate (and any intermediates), PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
    /// The CA whose client certificates authenticate their clients, PEM; without one no client
    /// certificate is asked for.
    pub client_ca: Option<String>,
}

/// A rustls server configuration for `tls`: client certificates are asked for, verified against
/// the client CA when they are given, and optional (a client may authenticate otherwise, or
/// reach what anonymous clients may).
pub fn server_config(tls: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(crate::pki::crypto_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the serving certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the serving certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes())
        .map_err(|e| format!("the serving key is not a PEM private key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.map_err(|e| format!("the client CA is not PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("the client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("the client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("the serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes; then the
/// connections still open finish what they are doing (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(TLS_HANDSHAKES_IN_FLIGHT_MAX));
    tokio::pin!(shutdown);
    loop {
        // Behind TLS, a connection is accepted only when a handshake may start: past the limit,
        // clients wait in the listen backlog rather than being turned away.
        let permit = match &acceptor {
            Some(_) => tokio::select! {
                permit = handshakes.clone().acquire_owned() => Some(permit.expect("the semaphore is never closed")),
                _ = &mut shutdown => break,
            },
            None => None,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (router, watcher) = (router.clone(), graceful.watcher());
        match &acceptor {
            None => {
                let peer = Peer { remote, certificate: None };
                tokio::spawn(serve_connection(TokioIo::new(tcp), peer, router, watcher));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let mut tcp = tcp;
                tokio::spawn(async move {
                    if !speaks_tls(&mut tcp).await {
                        return;
                    }
                    let handshake =
                        tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), acceptor.accept(tcp))
                            .await;
                    drop(permit);
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| crate::pki::identity_of(leaf));
                    let peer = Peer { remote, certificate };
                    serve_connection(TokioIo::new(stream), peer, router, watcher).await;
                });
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// Whether a connection opens with a TLS handshake record; one that opens with anything else (a
/// plain HTTP request to the HTTPS port) is told so, as Go's servers tell it, and closed.
async fn speaks_tls(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    const HANDSHAKE_RECORD: u8 = 0x16;
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == HANDSHAKE_RECORD => true,
        Ok(Ok(1)) => {
            use tokio::io::AsyncReadExt;
            // The request is read first: closing with it unread would reset the connection
            // before the client reads the answer.
            let mut request = [0u8; PLAIN_REQUEST_READ_BYTES_MAX];
            let _ = tokio::time::timeout(Duration::from_millis(PLAIN_REQUEST_READ_MS), tcp.read(&mut request)).await;
            let answer = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
            let _ = tcp.write_all(answer).await;
            let _ = tcp.shutdown().await;
            false
        }
        _ => false,
    }
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: Peer,
    router: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req).await }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
