//! The HTTP/2 connection that carries the gRPC calls to Cerbos, held directly with `h2`.
//!
//! tonic's `Channel` put three task hops between a check and the socket (its `Buffer` worker,
//! hyper's client task, hyper's connection task) and hyper sent a request's message in a later
//! poll than its headers: on loopback every wake-up and every write also runs the other
//! side's work, and that was most of agent-authz's own cost of an uncached check. Here the
//! calling task opens the stream itself: headers and the whole message (flagged end-of-stream)
//! are queued together, and the one connection task writes them in one system call.
//!
//! tonic still does the gRPC part (framing, status, codecs) through [`tower_service::Service`].
//! What `Channel` did besides is kept: the connection is made on first use (the service starts
//! while Cerbos is down), within `cerbos.timeout`, with `TCP_NODELAY`, TLS with the system roots
//! for `https://`, a keep-alive PING every 30 s (closing a connection whose peer stopped
//! answering), and a new connection when the old one has failed or closed (a Cerbos restart).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream};
use http::Uri;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tower_service::Service;

use super::deferred_pong::DeferredPong;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often an established connection is probed, busy or idle.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a probe may wait for its answer before the connection is given up.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection to one Cerbos address; clones share it.
#[derive(Clone)]
pub struct CerbosConnection(Arc<Shared>);

struct Shared {
    origin: Uri,
    /// `host:port` to connect to, and the host alone (the TLS server name).
    target: (String, String),
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    /// The open connection, if any: connecting holds the lock, so concurrent calls wait for
    /// one attempt instead of each opening a connection.
    current: Mutex<Option<Current>>,
}

struct Current {
    sender: SendRequest<Bytes>,
    /// Tells this connection from its successors (to forget only the one that failed).
    generation: u64,
}

impl CerbosConnection {
    /// Checks the address and prepares TLS; connects on the first call.
    pub fn new(address: &str, connect_timeout: Duration) -> Result<Self, String> {
        let origin: Uri = address
            .parse()
            .map_err(|e| format!("cerbos.address: {e}"))?;
        let tls = match origin.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tls_connector()?),
            _ => return Err("cerbos.address: must start with http:// or https://".to_owned()),
        };
        let Some(host) = origin.host().filter(|h| !h.is_empty()) else {
            return Err("cerbos.address: no host".to_owned());
        };
        let port = origin
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let target = (
            format!("{host}:{port}"),
            host.trim_matches(['[', ']']).to_owned(),
        );
        Ok(Self(Arc::new(Shared {
            origin,
            target,
            tls,
            connect_timeout,
            current: Mutex::new(None),
        })))
    }

    /// The address's scheme and authority, which tonic puts on every request's URI.
    pub fn origin(&self) -> Uri {
        self.0.origin.clone()
    }
}

/// TLS verified against the system's roots, offering HTTP/2 by ALPN (as gRPC requires).
fn tls_connector() -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "cerbos.address: https needs the system's root certificates, none loaded ({:?})",
            found.errors
        ));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cerbos.address: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

impl Shared {
    /// A handle ready to open a stream: the current connection's while it works, else a new
    /// connection's.
    async fn sender(&self) -> Result<(SendRequest<Bytes>, u64), BoxError> {
        let mut current = self.current.lock().await;
        let generation = match current.as_ref() {
            Some(open) => {
                // A fresh clone is ready at once unless the connection has failed or closed.
                if let Ok(ready) = open.sender.clone().ready().await {
                    return Ok((ready, open.generation));
                }
                open.generation + 1
            }
            None => 0,
        };
        *current = None;
        let sender = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| format!("connecting timed out after {:?}", self.connect_timeout))??;
        let ready = sender.clone().ready().await?;
        *current = Some(Current { sender, generation });
        Ok((ready, generation))
    }

    /// Forgets the connection `generation` (the next call connects anew).
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, BoxError> {
        let (address, host) = &self.target;
        let tcp = TcpStream::connect(address.as_str()).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => handshake(DeferredPong::new(tcp)).await,
            Some(tls) => {
                let name = ServerName::try_from(host.clone())?;
                let stream = tls.connect(name, tcp).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the TLS server did not accept HTTP/2 (ALPN h2)".into());
                }
                handshake(DeferredPong::new(stream)).await
            }
        }
    }

    /// One unary gRPC call: the request's headers and its whole message sent together.
    async fn send(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<Answer>, BoxError> {
        let (parts, body) = request.into_parts();
        // A unary request's body is already encoded in memory: collecting it only waits for
        // the encoder, it does not copy the message.
        let message = body.collect().await?.to_bytes();
        let (mut sender, generation) = self.sender().await?;
        let sent = sender
            .send_request(http::Request::from_parts(parts, ()), false)
            .and_then(|(answer, mut stream)| stream.send_data(message, true).map(|()| answer));
        let answer = match sent {
            Ok(answer) => answer.await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) => Ok(answer.map(Answer::new)),
            Err(e) => {
                // A reset stream leaves the connection usable; anything else (GOAWAY, I/O,
                // protocol errors) means the next call should start a new one.
                if !e.is_reset() {
                    self.forget(generation).await;
                }
                Err(e.into())
            }
        }
    }
}

/// Starts HTTP/2 on `io` and hands the connection to its own task.
async fn handshake<T>(io: T) -> Result<SendRequest<Bytes>, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::handshake(io).await?;
    let pings = connection.ping_pong();
    tokio::spawn(async move {
        let ended = tokio::select! {
            ended = connection => ended.err().map(|e| e.to_string()),
            gone = keep_alive(pings) => Some(gone.to_owned()),
        };
        tracing::debug!(error = ?ended, "Cerbos connection closed");
    });
    Ok(sender)
}

/// Returns (to close the connection) when the peer stops answering PINGs.
async fn keep_alive(pings: Option<PingPong>) -> &'static str {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return "keep-alive PING failed",
            Err(_) => return "keep-alive PING unanswered",
        }
    }
}

impl Service<http::Request<tonic::body::Body>> for CerbosConnection {
    type Response = http::Response<Answer>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready: calls queue on the connection (HTTP/2 limits concurrent streams itself).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move { shared.send(request).await })
    }
}

/// A gRPC answer's body: its messages, then its trailers (where the gRPC status is).
pub struct Answer {
    stream: RecvStream,
    trailers_read: bool,
}

impl Answer {
    fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            trailers_read: false,
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.trailers_read {
            return Poll::Ready(None);
        }
        match ready!(self.stream.poll_data(cx)) {
            Some(Ok(data)) => {
                // The data is read as it comes: its share of the window goes back at once.
                let _ = self.stream.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {}
        }
        let trailers = ready!(self.stream.poll_trailers(cx));
        self.trailers_read = true;
        Poll::Ready(trailers.transpose().map(|t| t.map(Frame::trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_read || self.stream.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_a_scheme_and_host() {
        let plain = CerbosConnection::new("http://127.0.0.1:3593", Duration::from_secs(1)).unwrap();
        assert_eq!(plain.origin(), "http://127.0.0.1:3593");
        assert_eq!(plain.0.target.0, "127.0.0.1:3593");
        let v6 = CerbosConnection::new("http://[::1]", Duration::from_secs(1)).unwrap();
        assert_eq!(v6.0.target, ("[::1]:80".to_owned(), "::1".to_owned()));
        for bad in ["grpc://cerbos:3593", "cerbos:3593", "http://"] {
            assert!(
                CerbosConnection::new(bad, Duration::from_secs(1)).is_err(),
                "{bad} accepted"
            );
        }
    }
}
