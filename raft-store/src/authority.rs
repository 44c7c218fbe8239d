//! A relay in front of the client gRPC server that repairs URL-shaped HTTP/2 authorities.
//!
//! etcd 3.4's client sends, on the per-endpoint connections of `etcdctl endpoint status` and
//! `endpoint health --cluster`, the endpoint URL itself (`http://127.0.0.1:2379`) as the
//! `:authority` pseudo-header. The Rust HTTP/2 server rejects such a request with
//! PROTOCOL_ERROR, where etcd's own server accepts it. This relay reads the client's frames,
//! decodes each header block (HPACK), and rewrites such an authority to its `host:port`; every
//! other frame passes through untouched.
//!
//! A connection whose first request carries an ordinary authority (every other client) is not
//! relayed: the server reads the socket directly (see [`ClientStream`]).
//!
//! HPACK is stateful per connection. Header blocks pass through as received until the first one
//! that needs repair; from then on the relay re-encodes every block with its own encoder, and the
//! first re-encoded block starts by emptying the server's dynamic table so that both tables agree.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames of this size; re-encoded blocks are split to fit it.
const FRAME_PAYLOAD_BYTES_MIN_MAX: usize = 16_384;
/// Largest header block (all its frames) the relay accepts, as the server's own limit.
const HEADER_BLOCK_BYTES_MAX: usize = 1024 * 1024;
/// Largest frame payload the relay reads at once (HTTP/2's upper bound for SETTINGS_MAX_FRAME_SIZE).
const FRAME_PAYLOAD_BYTES_MAX: usize = (1 << 24) - 1;
/// The HPACK dynamic table size both ends use unless told otherwise (RFC 7541).
const HPACK_TABLE_BYTES: usize = 4096;

/// The authority a client meant when it sent a URL: `http://host:port/...` → `host:port`.
pub fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let (_, rest) = text.split_once("://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    Some(host.as_bytes().to_vec())
}

/// Copies client bytes to the server, repairing authorities; returns when the client stops
/// sending or either side fails.
pub async fn relay_client_to_server<R, W>(mut client: R, mut server: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    let n = read_full(&mut client, &mut preface).await?;
    server.write_all(&preface[..n]).await?;
    if n < PREFACE.len() || &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: nothing to repair.
        tokio::io::copy(&mut client, &mut server).await?;
        return server.shutdown().await;
    }
    let mut relay = Relay { decoder: loona_hpack::Decoder::new(), encoder: None };
    relay.decoder.set_max_allowed_table_size(HPACK_TABLE_BYTES);
    let mut block: Vec<u8> = Vec::new();
    let mut pending: Vec<u8> = Vec::new(); // the original frames of the block being collected
    let mut block_start: Option<(u8, u32, Vec<u8>)> = None; // flags, stream, priority bytes
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if read_full(&mut client, &mut header).await? < FRAME_HEADER_BYTES {
            break;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let kind = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "oversized HTTP/2 frame"));
        }
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await?;

        let in_block = block_start.is_some();
        if kind == FRAME_HEADERS && !in_block {
            let (fragment, priority) = header_fragment(flags, &payload)?;
            let priority = priority.to_vec();
            block.extend_from_slice(fragment);
            pending.extend_from_slice(&header);
            pending.extend_from_slice(&payload);
            block_start = Some((flags, stream, priority));
        } else if kind == FRAME_CONTINUATION && in_block {
            block.extend_from_slice(&payload);
            pending.extend_from_slice(&header);
            pending.extend_from_slice(&payload);
        } else {
            server.write_all(&header).await?;
            server.write_all(&payload).await?;
            continue;
        }
        if block.len() > HEADER_BLOCK_BYTES_MAX {
            return bad("header block too large");
        }
        if flags & FLAG_END_HEADERS != 0 {
            let (first_flags, stream, priority) = block_start.take().expect("set when the block began");
            match relay.rewrite(&block)? {
                None => server.write_all(&pending).await?,
                Some(encoded) => write_block(&mut server, first_flags, stream, &priority, &encoded).await?,
            }
            block.clear();
            pending.clear();
        }
    }
    server.shutdown().await
}

/// A HEADERS frame's header block fragment and its priority bytes (empty when absent).
fn header_fragment(flags: u8, payload: &[u8]) -> std::io::Result<(&[u8], &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let Some((&p, rest)) = body.split_first() else { return bad("short padded frame") };
        pad = p as usize;
        body = rest;
    }
    let mut priority: &[u8] = &[];
    if flags & FLAG_PRIORITY != 0 {
        if body.len() < 5 {
            return bad("short priority frame");
        }
        (priority, body) = body.split_at(5);
    }
    if pad > body.len() {
        return bad("padding exceeds frame");
    }
    Ok((&body[..body.len() - pad], priority))
}

/// Most bytes read ahead of a connection's first header block before giving it the relay anyway.
const SNIFF_BYTES_MAX: usize = HEADER_BLOCK_BYTES_MAX + 64 * 1024;

/// Reads a connection's opening bytes up to the end of its first header block; returns them and
/// whether the connection needs the relay (its first request has a URL-shaped authority, or its
/// opening could not be judged). A client keeps one authority for a connection, so a connection
/// whose first request is fine is served directly.
async fn sniff<R: AsyncRead + Unpin>(mut client: R) -> std::io::Result<(Vec<u8>, bool, R)> {
    let mut seen = vec![0u8; PREFACE.len()];
    let n = read_full(&mut client, &mut seen).await?;
    seen.truncate(n);
    if seen != PREFACE {
        // Not HTTP/2 with prior knowledge (or closed early): the server answers it.
        return Ok((seen, false, client));
    }
    let mut block = Vec::new();
    loop {
        let at = seen.len();
        seen.resize(at + FRAME_HEADER_BYTES, 0);
        if read_full(&mut client, &mut seen[at..]).await? < FRAME_HEADER_BYTES {
            return Ok((seen, false, client));
        }
        let h = &seen[at..];
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        if seen.len() + len > SNIFF_BYTES_MAX {
            return Ok((seen, true, client));
        }
        let start = seen.len();
        seen.resize(start + len, 0);
        client.read_exact(&mut seen[start..]).await?;
        let payload = &seen[start..];
        match kind {
            FRAME_HEADERS if block.is_empty() => block.extend_from_slice(header_fragment(flags, payload)?.0),
            FRAME_CONTINUATION => block.extend_from_slice(payload),
            _ => continue,
        }
        if flags & FLAG_END_HEADERS != 0 {
            let mut decoder = loona_hpack::Decoder::new();
            decoder.set_max_allowed_table_size(HPACK_TABLE_BYTES);
            let needs_repair = match decoder.decode(&block) {
                Ok(headers) => headers.iter().any(|(n, v)| n == b":authority" && repair_authority(v).is_some()),
                // Let the relay report it.
                Err(_) => true,
            };
            return Ok((seen, needs_repair, client));
        }
    }
}

type Sniffing = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::io::Result<(Vec<u8>, bool, tokio::net::tcp::OwnedReadHalf)>> + Send>,
>;

enum ReadSide {
    Sniffing(Sniffing),
    Direct(std::io::Cursor<Vec<u8>>, tokio::net::tcp::OwnedReadHalf),
    Relayed(tokio::io::DuplexStream),
    Failed(Option<std::io::Error>),
}

/// Capacity of the in-memory pipe between the relay and the gRPC server, in bytes.
const RELAY_BUFFER_BYTES: usize = 256 * 1024;

/// A client connection as the gRPC server sees it. The server writes straight to the socket from
/// the start (so that a client waiting for the server's SETTINGS goes on to send its first
/// request); what it reads is the client's bytes as they are, or, when the first request needs
/// repair, the relay's output.
pub struct ClientStream {
    read: ReadSide,
    write: tokio::net::tcp::OwnedWriteHalf,
    /// Whether the write under way has already let the other ready tasks run once (see
    /// [`ClientStream::poll_write`]).
    write_yielded: bool,
    info: tonic::transport::server::TcpConnectInfo,
}

impl ClientStream {
    pub fn new(socket: tokio::net::TcpStream) -> Self {
        let info = tonic::transport::server::TcpConnectInfo {
            local_addr: socket.local_addr().ok(),
            remote_addr: socket.peer_addr().ok(),
        };
        let (read, write) = socket.into_split();
        Self { read: ReadSide::Sniffing(Box::pin(sniff(read))), write, write_yielded: false, info }
    }
}

impl tonic::transport::server::Connected for ClientStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            match &mut self.read {
                ReadSide::Sniffing(sniffing) => {
                    let next = match std::task::ready!(sniffing.as_mut().poll(cx)) {
                        Ok((seen, false, rest)) => ReadSide::Direct(std::io::Cursor::new(seen), rest),
                        Ok((seen, true, rest)) => {
                            let (ours, theirs) = tokio::io::duplex(RELAY_BUFFER_BYTES);
                            tokio::spawn(async move {
                                let client = AsyncReadExt::chain(std::io::Cursor::new(seen), rest);
                                if let Err(e) = relay_client_to_server(client, ours).await {
                                    tracing::debug!(error = %e, "client connection ended with an error");
                                }
                            });
                            ReadSide::Relayed(theirs)
                        }
                        Err(e) => ReadSide::Failed(Some(e)),
                    };
                    self.read = next;
                }
                ReadSide::Direct(seen, rest) => {
                    if (seen.position() as usize) < seen.get_ref().len() {
                        return std::pin::Pin::new(seen).poll_read(cx, buf);
                    }
                    return std::pin::Pin::new(rest).poll_read(cx, buf);
                }
                ReadSide::Relayed(relayed) => return std::pin::Pin::new(relayed).poll_read(cx, buf),
                ReadSide::Failed(e) => {
                    return Poll::Ready(match e.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    })
                }
            }
        }
    }
}

/// Writes are deferred once per flush: the connection's task goes to the back of the run queue
/// before it writes, so that the responses other tasks produce meanwhile (a revision's events on
/// every watch stream, the answers of many concurrent requests) leave in one write instead of one
/// each. The HTTP/2 codec copies frames under 1 KiB into its buffer only when the transport does
/// not take vectored writes, hence `is_write_vectored` is false.
impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.write_yielded {
            self.write_yielded = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::task::ready!(std::pin::Pin::new(&mut self.write).poll_flush(cx));
        self.write_yielded = false;
        std::task::Poll::Ready(flushed)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

struct Relay<'a> {
    decoder: loona_hpack::Decoder<'a>,
    /// Present once the relay re-encodes blocks itself.
    encoder: Option<loona_hpack::Encoder<'a>>,
}

impl Relay<'_> {
    /// The block to send instead of the client's, or None to send the client's as it is.
    fn rewrite(&mut self, block: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let mut headers = self
            .decoder
            .decode(block)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
        let mut repaired = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                if let Some(fixed) = repair_authority(value) {
                    *value = fixed;
                    repaired = true;
                }
            }
        }
        if !repaired && self.encoder.is_none() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(block.len() + 8);
        if self.encoder.is_none() {
            // Empty the server's dynamic table, then restore its size: the relay's encoder
            // starts from an empty table too.
            let mut zero = loona_hpack::encoder::encode_integer(0, 5);
            zero[0] |= 0x20;
            out.extend(zero);
            let mut size = loona_hpack::encoder::encode_integer(HPACK_TABLE_BYTES, 5);
            size[0] |= 0x20;
            out.extend(size);
            let mut encoder = loona_hpack::Encoder::new();
            encoder.set_max_table_size(HPACK_TABLE_BYTES);
            self.encoder = Some(encoder);
        }
        let encoder = self.encoder.as_mut().expect("set above");
        encoder.encode_into(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())), &mut out)?;
        Ok(Some(out))
    }
}

async fn write_block<W: AsyncWrite + Unpin>(
    server: &mut W,
    first_flags: u8,
    stream: u32,
    priority: &[u8],
    block: &[u8],
) -> std::io::Result<()> {
    let room = FRAME_PAYLOAD_BYTES_MIN_MAX - priority.len();
    let first_len = block.len().min(room);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = first_flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame(server, FRAME_HEADERS, flags, stream, &[priority, first].concat()).await?;
    while !rest.is_empty() {
        let n = rest.len().min(FRAME_PAYLOAD_BYTES_MIN_MAX);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(server, FRAME_CONTINUATION, flags, stream, chunk).await?;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = (payload.len() as u32).to_be_bytes();
    let s = stream.to_be_bytes();
    let header = [len[1], len[2], len[3], kind, flags, s[0], s[1], s[2], s[3]];
    w.write_all(&header).await?;
    w.write_all(payload).await
}

fn bad<T>(what: &str) -> std::io::Result<T> {
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = r.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_authorities_become_host_port() {
        assert_eq!(repair_authority(b"http://127.0.0.1:2379").unwrap(), b"127.0.0.1:2379");
        assert_eq!(repair_authority(b"http://localhost:2379/").unwrap(), b"localhost:2379");
        assert_eq!(repair_authority(b"127.0.0.1:2379"), None);
    }

    fn frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
        let len = (block.len() as u32).to_be_bytes();
        let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
        let mut out = vec![len[1], len[2], len[3], FRAME_HEADERS, flags];
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    /// Decodes what the relay sent with a fresh decoder, as the server would.
    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let mut out = Vec::new();
        let mut at = 24;
        let mut block = Vec::new();
        while at < bytes.len() {
            let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let payload = &bytes[at + 9..at + 9 + len];
            at += 9 + len;
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    out.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn relay_repairs_authorities_and_keeps_hpack_state_consistent() {
        let mut client_enc = loona_hpack::Encoder::new();
        let good: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b":authority", b"127.0.0.1:2379"), (b":path", b"/a")];
        let url: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b":authority", b"http://127.0.0.1:2379"), (b":path", b"/b")];
        let mut input = PREFACE.to_vec();
        input.extend(frames(1, &client_enc.encode(good.clone()), false));
        // A DATA frame passes through untouched.
        input.extend([0, 0, 2, 0, 1, 0, 0, 0, 1, 7, 7]);
        input.extend(frames(3, &client_enc.encode(url.clone()), true));
        input.extend(frames(5, &client_enc.encode(good.clone()), true));
        input.extend(frames(7, &client_enc.encode(url.clone()), true));

        let mut output = Vec::new();
        relay_client_to_server(&input[..], &mut output).await.unwrap();
        let blocks = decode_all(&output);
        let authorities: Vec<&[u8]> = blocks
            .iter()
            .map(|b| b.iter().find(|(n, _)| n == b":authority").map(|(_, v)| v.as_slice()).unwrap())
            .collect();
        assert_eq!(authorities, vec![&b"127.0.0.1:2379"[..]; 4]);
        let paths: Vec<&[u8]> =
            blocks.iter().map(|b| b.iter().find(|(n, _)| n == b":path").map(|(_, v)| v.as_slice()).unwrap()).collect();
        assert_eq!(paths, vec![&b"/a"[..], b"/b", b"/a", b"/b"]);
        assert!(output.windows(11).any(|w| w == [0, 0, 2, 0, 1, 0, 0, 0, 1, 7, 7]), "DATA frame kept");
    }

    #[tokio::test]
    async fn only_a_url_authority_in_the_first_request_sends_a_connection_to_the_relay() {
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        for (authority, relayed) in [(&b"127.0.0.1:2379"[..], false), (b"http://127.0.0.1:2379", true)] {
            let mut input = PREFACE.to_vec();
            input.extend(settings);
            let block = loona_hpack::Encoder::new().encode(vec![(&b":authority"[..], authority), (b":path", b"/a")]);
            input.extend(frames(1, &block, true));
            let opening = input.len();
            input.extend([0, 0, 2, 0, 1, 0, 0, 0, 1, 7, 7]);
            let (seen, needs_relay, mut rest) = sniff(&input[..]).await.unwrap();
            assert_eq!(needs_relay, relayed, "authority {:?}", String::from_utf8_lossy(authority));
            assert_eq!(seen, input[..opening], "reads up to the end of the first header block");
            let mut after = Vec::new();
            rest.read_to_end(&mut after).await.unwrap();
            assert_eq!(after, input[opening..]);
        }
        let (seen, needs_relay, _) = sniff(&b"GET / HTTP/1.1\r\n\r\n"[..]).await.unwrap();
        assert!(!needs_relay);
        assert_eq!(seen, b"GET / HTTP/1.1\r\n\r\n", "passed on as read");
    }

    #[tokio::test]
    async fn non_http2_input_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut output = Vec::new();
        relay_client_to_server(&input[..], &mut output).await.unwrap();
        assert_eq!(output, input);
    }
}
