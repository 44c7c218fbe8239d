//! Relaying an upgraded connection (SPDY or WebSocket: exec, attach, port-forward) one hop
//! further: the request's head is sent to the next server, its answer comes back, and after a
//! `101 Switching Protocols` the bytes flow both ways untouched. The API server relays a client to
//! the node's agent this way, and the agent relays it to the runtime's streaming server, as the
//! Kubernetes API server and kubelet do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted from the next hop.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest body of a refusal (an answer other than 101) passed back.
const REFUSAL_BYTES_MAX: usize = 1024 * 1024;
/// How long the next hop may take to answer the upgrade.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Headers that belong to one hop and are not passed on (besides `Connection`'s own list, which
/// is kept: the upgrade needs it).
fn hop_only(name: &str) -> bool {
    matches!(
        name,
        "host" | "content-length" | "transfer-encoding" | "keep-alive" | "proxy-connection" | "te" | "trailer"
    )
}

/// Where a URL of the form `http://host:port/path?query` points, and its path with the query.
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_string(), path.to_string()))
}

/// Sends `req`'s head (method, `path`, its headers) to `target` and returns the answer. After a
/// 101, a task joins the client's upgraded connection to the target's; any other answer is
/// passed back as it came (the next hop's own error).
pub async fn relay<B>(mut req: http::Request<B>, target: &str, path: &str) -> anyhow::Result<http::Response<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let addr: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(target).await?.next().with_context(|| format!("{target} has no address"))?,
    };
    let mut upstream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {target}"))?;
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method(), path, target);
    for (name, value) in req.headers() {
        if hop_only(name.as_str()) {
            continue;
        }
        let value = value.to_str().with_context(|| format!("header {name} is not text"))?;
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    upstream.write_all(head.as_bytes()).await?;

    let mut buf = Vec::with_capacity(1024);
    let end = tokio::time::timeout(ANSWER_WITHIN, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return anyhow::Ok(i + 4);
            }
            if buf.len() > HEAD_BYTES_MAX {
                bail!("the answer's head is larger than {HEAD_BYTES_MAX} bytes");
            }
            let mut chunk = [0u8; 4096];
            let n = upstream.read(&mut chunk).await?;
            if n == 0 {
                bail!("{target} closed the connection before answering");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .with_context(|| format!("{target} did not answer within {ANSWER_WITHIN:?}"))??;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed.parse(&buf[..end]).context("the answer's head")?;
    let status = parsed.code.context("the answer has no status")?;
    let mut answer = http::Response::builder().status(status);
    let mut length = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        }
        if hop_only(&h.name.to_ascii_lowercase()) {
            continue;
        }
        answer = answer.header(h.name, h.value);
    }
    let rest = buf[end..].to_vec();
    if status != 101 {
        // A refusal: its body, up to its length or the end of the connection.
        let mut body = rest;
        let want = length.unwrap_or(REFUSAL_BYTES_MAX).min(REFUSAL_BYTES_MAX);
        let _ = tokio::time::timeout(ANSWER_WITHIN, async {
            let mut chunk = [0u8; 4096];
            while body.len() < want {
                match upstream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        body.truncate(want);
        if length.is_some() {
            answer = answer.header("content-length", body.len());
        }
        return Ok(answer.body(Bytes::from(body))?);
    }
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "the client's connection did not upgrade");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return;
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "a relayed stream ended");
        }
    });
    Ok(answer.body(Bytes::new())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:4000/exec/abc?x=1").unwrap(),
            ("127.0.0.1:4000".into(), "/exec/abc?x=1".into())
        );
        assert_eq!(split_url("http://[::1]:4000").unwrap(), ("[::1]:4000".into(), "/".into()));
        assert!(split_url("https://h/x").is_err());
    }
}
