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

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::http::response::Body;
use crate::http::{admin, router};
use crate::node::Node;
use crate::node::config::ServerConfig;
use crate::telemetry::metrics::ConnectionMetrics;

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Guest routes, the Open Inference Protocol, health and metrics (`router`).
    Public,
    /// The admin API (`admin`).
    Admin,
}

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

/// Serves `service` of `node` on `listener` (over TLS if `tls` is given) until `shutdown`
/// completes, then drains for up to the grace period.
pub async fn serve(
    service: Service,
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
            service,
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
    if service == Service::Public {
        node.start_draining();
    }
    info!("shutting down: finishing in-flight requests");
    tokio::select! {
        () = connections.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(limits.grace) => warn!("grace period over; closing the remaining connections"),
    }
}

/// One accepted connection, to be served.
struct Connection {
    service: Service,
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
        let Connection { service: which, http, watcher, node, peer, limits } = self;
        let activity = Arc::new(Activity::default());
        let tracked = activity.clone();
        let service = service_fn(move |request| {
            let (node, guard) = (node.clone(), tracked.begin());
            async move {
                let response = match which {
                    Service::Public => router::dispatch(node, request).await,
                    Service::Admin => admin::dispatch(node, request).await,
                };
                // The request counts as in flight until its body is sent (or dropped).
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _guard: guard }.boxed_unsync()))
            }
        });
        let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service).into_owned());
        tokio::pin!(connection);
        // A connection with nothing in flight that starts no request for a whole timeout is
        // closed (dropped): a new one that never sends a request, and an idle one, HTTP/2
        // included (hyper closes idle HTTP/1.1 connections itself, at the same timeout).
        let mut started_before = 0;
        loop {
            tokio::select! {
                ended = &mut connection => return note_end(peer, ended, &open.metrics),
                () = tokio::time::sleep(limits.header_read_timeout) => {
                    let started = activity.started.load(Ordering::Relaxed);
                    if started == started_before && activity.in_flight.load(Ordering::Relaxed) == 0 {
                        debug!(%peer, "no request within the header read timeout; closing");
                        open.metrics.timed_out.inc();
                        return;
                    }
                    started_before = started;
                }
            }
        }
    }
}

/// A connection's requests: how many have started, and how many are still in flight.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight while it is sent.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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
