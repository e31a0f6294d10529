//! The front door of every listener: the public one (guest routes, the Open Inference Protocol,
//! health, metrics), the admin API and gRPC all accept connections here, and every one of
//! them is held to the same rules before a request reaches a handler:
//!
//! - **Connections are bounded.** At most `max_connections` are open (the listener waits for
//!   one to close when full), and at most `max_connections_per_ip` from one client address
//!   (an IPv6 client's /64); one more from that address is closed at once.
//! - **Presence is not progress.** A client gets `header_read_timeout` to finish the TLS
//!   handshake and to start each request; a connection with nothing in flight, nothing being
//!   written and no request started for that long is closed (HTTP/1.1 keep-alive and idle
//!   HTTP/2 alike). The connection's writes are watched: one that waits for room (the client
//!   does not read: a full TCP window) for `send_timeout`, or a response that waits for the
//!   client to open its HTTP/2 window while the connection writes nothing for that long, has
//!   the connection closed, freeing its slot and whatever the response held. A slow client
//!   that keeps reading is not cut. Responses hand the connection at most 64 KiB at a time,
//!   so what they hold (memory charges, the tenant's place) is held until their last piece
//!   is in the connection's hands. HTTP/2 connections are pinged; one that does not answer
//!   within the keepalive timeout is closed. Request bodies are bounded by each request's
//!   deadline.
//! - **Requests are bounded.** Request heads are capped in size and HTTP/2 streams in number.
//! - **Shutdown drains.** When `shutdown` completes, the listener closes, every connection is
//!   told to finish its in-flight requests (HTTP/2: GOAWAY), and the server waits for them up
//!   to the grace period.
//!
//! Each request carries the [`Client`] it came from (its address, and the tenant its TLS
//! client certificate names) in its extensions, for the handlers' tenancy checks.

mod activity;
mod policy;
mod slots;

pub use self::activity::MAX_FRAME_BYTES;
pub use self::policy::{ListenerPolicy, Service, fit_to_descriptor_limit};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::activity::{Activity, Watched};
use self::slots::{OpenConnection, PerAddress};
use crate::http::client::Client;
use crate::http::response::Body;
use crate::http::{admin, grpc, router};
use crate::node::Node;
use crate::request::tenant::Tenant;
use crate::telemetry::metrics::{ConnectionClosed, ConnectionMetrics};

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `service` of `node` on `listener` (over TLS if `tls` is given) until `shutdown`
/// completes, then drains for up to the grace period.
pub async fn serve(
    service: Service,
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
    policy: ListenerPolicy,
    tls: Option<TlsAcceptor>,
) {
    let http = policy.http(service);
    let metrics = Arc::new(ConnectionMetrics::new(service.name()));
    let slots = Arc::new(Semaphore::new(policy.max_connections));
    let addresses = Arc::new(PerAddress::new(policy.max_connections_per_ip));
    let handler = Handler::new(service, &node);
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, slot) = tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(listener = service.name(), "accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(address_slot) = addresses.enter(peer.ip()) else {
            debug!(%peer, listener = service.name(), "too many connections from this address; closing");
            metrics.closed(ConnectionClosed::PerAddress);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(slot, address_slot, metrics.clone());
        let connection = Connection {
            handler: handler.clone(),
            http: http.clone(),
            watcher: connections.watcher(),
            node: node.clone(),
            peer,
            policy,
        };
        match &tls {
            None => drop(tokio::spawn(connection.serve(stream, None, open))),
            Some(tls) => drop(tokio::spawn(connection.serve_tls(tls.clone(), stream, open))),
        }
    }

    drop(listener);
    if service == Service::Public {
        node.start_draining();
    }
    info!(listener = service.name(), "shutting down: finishing in-flight requests");
    tokio::select! {
        () = connections.shutdown() => info!(listener = service.name(), "all connections closed"),
        () = tokio::time::sleep(policy.grace) => {
            warn!(listener = service.name(), "grace period over; closing the remaining connections");
        }
    }
}

/// What answers a listener's requests.
#[derive(Clone)]
enum Handler {
    Public,
    Admin,
    Grpc(grpc::Front),
}

impl Handler {
    fn new(service: Service, node: &Arc<Node>) -> Handler {
        match service {
            Service::Public => Handler::Public,
            Service::Admin => Handler::Admin,
            Service::Grpc => Handler::Grpc(grpc::Front::new(node.clone())),
        }
    }

    async fn answer(
        &self,
        node: Arc<Node>,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Body> {
        match self {
            Handler::Public => router::dispatch(node, request).await,
            Handler::Admin => admin::dispatch(node, request).await,
            Handler::Grpc(front) => front.dispatch(request).await,
        }
    }
}

/// One accepted connection, to be served.
struct Connection {
    handler: Handler,
    http: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    node: Arc<Node>,
    peer: SocketAddr,
    policy: ListenerPolicy,
}

impl Connection {
    /// Completes the TLS handshake (within the header read timeout), then serves.
    async fn serve_tls(self, tls: TlsAcceptor, stream: TcpStream, open: OpenConnection) {
        match tokio::time::timeout(self.policy.header_read_timeout, tls.accept(stream)).await {
            Ok(Ok(stream)) => {
                let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                let tenant = certificate.and_then(|der| self.node.tenants().by_certificate(der));
                self.serve(stream, tenant, open).await
            }
            Ok(Err(e)) => debug!(peer = %self.peer, "TLS handshake failed: {e}"),
            Err(_) => {
                debug!(peer = %self.peer, "no TLS handshake within the header read timeout; closing");
                open.metrics.closed(ConnectionClosed::HeaderTimeout);
            }
        }
    }

    /// Serves requests until the client leaves, the server shuts down, or a timeout closes
    /// the connection (see the module's documentation).
    async fn serve(
        self,
        io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        certificate_tenant: Option<Arc<Tenant>>,
        open: OpenConnection,
    ) {
        let Connection { handler, http, watcher, node, peer, policy } = self;
        let activity = Arc::new(Activity::new());
        let tracked = activity.clone();
        let client = Client { address: peer, certificate_tenant };
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let (node, handler, started) = (node.clone(), handler.clone(), tracked.begin());
            let multiplexed = request.version() == hyper::Version::HTTP_2;
            request.extensions_mut().insert(client.clone());
            async move {
                let response = handler.answer(node, request).await;
                // The request counts as in flight until its body is sent (or dropped), and
                // the body's progress is watched meanwhile.
                Ok::<_, Infallible>(response.map(|body| started.track(body, multiplexed).boxed_unsync()))
            }
        });
        let io = Watched { io, activity: activity.clone() };
        let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service).into_owned());
        tokio::pin!(connection);
        let mut checks = tokio::time::interval(policy.check_interval());
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ended = &mut connection => return note_end(peer, ended, &open.metrics),
                _ = checks.tick() => {
                    if let Some(reason) = activity.overdue(&policy) {
                        debug!(%peer, ?reason, "closing the connection");
                        open.metrics.closed(reason);
                        return;
                    }
                }
            }
        }
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

/// Logs how a connection ended, counting those hyper closed at a timeout of its own (the
/// header read timeout, an unanswered keepalive ping).
fn note_end(peer: SocketAddr, ended: Result<(), BoxError>, metrics: &ConnectionMetrics) {
    if let Err(e) = ended {
        // hyper's keepalive error is a timeout too: tell it apart by its own words first.
        if is_keepalive_timeout(e.as_ref()) {
            metrics.closed(ConnectionClosed::KeepaliveTimeout);
        } else if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
            metrics.closed(ConnectionClosed::HeaderTimeout);
        }
        debug!(%peer, "connection ended with an error: {e}");
    }
}

/// Whether `error` is hyper's HTTP/2 keepalive ping going unanswered (its type is private:
/// known by its message).
fn is_keepalive_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.to_string().contains("keep-alive timed out") {
            return true;
        }
        source = error.source();
    }
    false
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
