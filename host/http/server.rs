//! The HTTP listener: accepts connections, speaks HTTP/1.1 and HTTP/2 (cleartext with prior
//! knowledge, detected per connection, or over TLS chosen by ALPN), and hands each request to
//! the router.
//!
//! Connections are bounded: at most `max_connections` are open (the listener waits for one
//! to close when full); a client gets `header_read_timeout` to send each request head on
//! HTTP/1.1 (which also closes idle keep-alive connections) and its first request on
//! HTTP/2 (and for the TLS handshake); request heads are capped in size and HTTP/2 streams
//! in number.
//!
//! Shutdown is graceful: when the `shutdown` future completes, the listener closes, every
//! connection is told to finish its in-flight requests, and the server waits for them up to
//! the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::http::router;
use crate::node::Node;
use crate::node::config::ServerConfig;
use crate::telemetry::metrics::ConnectionMetrics;

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What the listener allows each client.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    /// How long in-flight requests may finish at shutdown.
    pub grace: Duration,
}

impl ConnectionLimits {
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: server.max_connections,
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            max_header_bytes: server.max_header_bytes,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            grace: Duration::from_millis(server.shutdown_grace_ms),
        }
    }

    fn http(&self) -> auto::Builder<TokioExecutor> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        http
    }
}

/// Serves `node` on `listener` (over TLS if `tls` is given) until `shutdown` completes, then
/// drains for up to the grace period.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) {
    let http = limits.http();
    let metrics = Arc::new(ConnectionMetrics::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, slot) = tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(slot, metrics.clone());
        let connection = Connection {
            http: http.clone(),
            watcher: connections.watcher(),
            node: node.clone(),
            peer,
            limits,
        };
        match &tls {
            None => drop(tokio::spawn(connection.serve(stream, open))),
            Some(tls) => drop(tokio::spawn(connection.serve_tls(tls.clone(), stream, open))),
        }
    }

    drop(listener);
    node.start_draining();
    info!("shutting down: finishing in-flight requests");
    tokio::select! {
        () = connections.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(limits.grace) => warn!("grace period over; closing the remaining connections"),
    }
}

/// One accepted connection, to be served.
struct Connection {
    http: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    node: Arc<Node>,
    peer: std::net::SocketAddr,
    limits: ConnectionLimits,
}

impl Connection {
    /// Completes the TLS handshake (within the header read timeout), then serves.
    async fn serve_tls(self, tls: TlsAcceptor, stream: TcpStream, open: OpenConnection) {
        match tokio::time::timeout(self.limits.header_read_timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.serve(stream, open).await,
            Ok(Err(e)) => debug!(peer = %self.peer, "TLS handshake failed: {e}"),
            Err(_) => {
                debug!(peer = %self.peer, "no TLS handshake within the header read timeout; closing");
                open.metrics.timed_out.inc();
            }
        }
    }

    /// Serves requests until the client leaves, the server shuts down, or no first request
    /// comes within the header read timeout.
    async fn serve(self, io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, open: OpenConnection) {
        let Connection { http, watcher, node, peer, limits } = self;
        let first_request = Arc::new(Notify::new());
        let request_seen = first_request.clone();
        let service = service_fn(move |request| {
            request_seen.notify_one();
            let node = node.clone();
            async move { Ok::<_, Infallible>(router::dispatch(node, request).await) }
        });
        let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service).into_owned());
        tokio::pin!(connection);
        // A connection that sends no complete request in time is closed (dropped).
        let first_in_time = tokio::time::timeout(limits.header_read_timeout, first_request.notified());
        tokio::select! {
            ended = &mut connection => return note_end(peer, ended, &open.metrics),
            arrived = first_in_time => if arrived.is_err() {
                debug!(%peer, "no request within the header read timeout; closing");
                open.metrics.timed_out.inc();
                return;
            },
        }
        note_end(peer, connection.await, &open.metrics);
    }
}

/// A connection's slot under `max_connections`, and its place in the open-connections gauge,
/// both given back when the connection ends.
struct OpenConnection {
    _slot: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<ConnectionMetrics>,
}

impl OpenConnection {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, metrics: Arc<ConnectionMetrics>) -> OpenConnection {
        metrics.open.inc();
        OpenConnection { _slot: slot, metrics }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

/// Logs how a connection ended, counting those hyper closed at the header read timeout.
fn note_end(peer: std::net::SocketAddr, ended: Result<(), BoxError>, metrics: &ConnectionMetrics) {
    if let Err(e) = ended {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            metrics.timed_out.inc();
        }
        debug!(%peer, "connection ended with an error: {e}");
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
