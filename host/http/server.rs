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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::http::response::Body;
use crate::http::{admin, grpc, router};
use crate::node::Node;
use crate::node::config::{DEFAULT_ADMIN_CONNECTIONS, ListenerSettings, ServerConfig};
use crate::request::tenant::Tenant;
use crate::telemetry::metrics::{ConnectionClosed, ConnectionMetrics};

/// How long to pause accepting after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// The shortest interval at which a connection checks its timeouts.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Guest routes, the Open Inference Protocol, health and metrics (`router`).
    Public,
    /// The admin API (`admin`).
    Admin,
    /// The Open Inference Protocol over gRPC (`grpc`), HTTP/2 only.
    Grpc,
}

impl Service {
    /// The listener's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Public => "public",
            Service::Admin => "admin",
            Service::Grpc => "grpc",
        }
    }
}

/// What a listener allows each client.
#[derive(Clone, Copy, Debug)]
pub struct ListenerPolicy {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    /// How long a response may wait for the client to take its next bytes.
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 pings: how often, and how long one may go unanswered.
    pub http2_keepalive: Option<(Duration, Duration)>,
    /// How long in-flight requests may finish at shutdown.
    pub grace: Duration,
}

impl ListenerPolicy {
    /// The policy of `service`'s listener: `[server]`'s settings, with those its own table
    /// (`[server.grpc]`, `[server.admin]`) gives instead.
    pub fn for_listener(server: &ServerConfig, service: Service) -> ListenerPolicy {
        let own = match service {
            Service::Public => &ListenerSettings::default(),
            Service::Grpc => &server.grpc,
            Service::Admin => &server.admin,
        };
        let default_connections =
            if service == Service::Admin { DEFAULT_ADMIN_CONNECTIONS } else { server.max_connections };
        let keepalive = (server.http2_keepalive_interval_ms > 0).then(|| {
            (
                Duration::from_millis(server.http2_keepalive_interval_ms),
                Duration::from_millis(server.http2_keepalive_timeout_ms),
            )
        });
        ListenerPolicy {
            max_connections: own.max_connections.unwrap_or(default_connections),
            max_connections_per_ip: own.max_connections_per_ip.unwrap_or(server.max_connections_per_ip),
            header_read_timeout: Duration::from_millis(
                own.header_read_timeout_ms.unwrap_or(server.header_read_timeout_ms),
            ),
            send_timeout: Duration::from_millis(own.send_timeout_ms.unwrap_or(server.send_timeout_ms)),
            max_header_bytes: server.max_header_bytes,
            http2_max_concurrent_streams: own
                .http2_max_concurrent_streams
                .unwrap_or(server.http2_max_concurrent_streams),
            http2_keepalive: keepalive,
            grace: Duration::from_millis(server.shutdown_grace_ms),
        }
    }

    fn http(&self, service: Service) -> auto::Builder<TokioExecutor> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(self.http2_keepalive.map(|(interval, _)| interval));
        if let Some((_, timeout)) = self.http2_keepalive {
            http.http2().keep_alive_timeout(timeout);
        }
        match service {
            Service::Grpc => http.http2_only(),
            Service::Public | Service::Admin => http,
        }
    }

    /// How often a connection checks its timeouts.
    fn check_interval(&self) -> Duration {
        (self.header_read_timeout.min(self.send_timeout) / 4).max(MIN_CHECK_INTERVAL)
    }
}

/// Where a request came from, in its extensions: the client's address, and the tenant its TLS
/// client certificate names, if it showed one that does.
#[derive(Clone, Debug)]
pub struct Client {
    pub address: SocketAddr,
    pub certificate_tenant: Option<Arc<Tenant>>,
}

/// Raises this process's open-file limit to its hard limit, and lowers each listener's
/// `max_connections` (in proportion) if even that cannot hold them all beside `reserved`
/// descriptors for everything else; says so in the log.
pub fn fit_to_descriptor_limit(policies: &mut [&mut ListenerPolicy], reserved: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let available = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let wanted: u64 = policies.iter().map(|policy| policy.max_connections as u64).sum();
    let room = available.saturating_sub(reserved);
    if wanted <= room {
        return;
    }
    for policy in policies.iter_mut() {
        let fitted = (policy.max_connections as u64 * room / wanted.max(1)).max(1);
        policy.max_connections = usize::try_from(fitted).unwrap_or(usize::MAX);
    }
    let fitted: Vec<usize> = policies.iter().map(|policy| policy.max_connections).collect();
    warn!(
        open_files = available,
        wanted,
        ?fitted,
        "the open-file limit cannot hold max_connections on every listener: lowered (raise `ulimit -n` to serve them all)"
    );
}

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
    let addresses = Arc::new(PerAddress { limit: policy.max_connections_per_ip, open: Mutex::default() });
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
            request.extensions_mut().insert(client.clone());
            async move {
                let response = handler.answer(node, request).await;
                // The request counts as in flight until its body is sent (or dropped), and
                // the body's progress is watched meanwhile.
                Ok::<_, Infallible>(response.map(|body| started.track(body).boxed_unsync()))
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

/// A connection's requests: how many are in flight, when one last started or ended, and how
/// each response in flight is getting on.
struct Activity {
    /// What the timestamps count from.
    epoch: Instant,
    /// Requests started on it.
    started: AtomicU64,
    in_flight: AtomicU64,
    /// When a request last started or ended, in ms since `epoch`.
    changed_ms: AtomicU64,
    /// When the connection last wrote more than a control frame's worth to the client.
    wrote_ms: AtomicU64,
    /// Since when a write to the client has waited for room (the client is not reading), or
    /// [`NOT_WAITING`].
    write_blocked_since_ms: AtomicU64,
    /// One entry per response that has been in flight at once; an entry is reused once its
    /// response is done, so an HTTP/1.1 connection keeps one.
    responses: Mutex<Vec<Arc<Progress>>>,
}

/// How one response in flight is getting on: since when it has waited for the client to take
/// its next bytes.
struct Progress {
    /// Whether a response holds this entry now.
    taken: std::sync::atomic::AtomicBool,
    /// ms since the connection's epoch, or [`NOT_WAITING`] while the response waits for its
    /// own source (a guest still writing) or is done.
    waiting_since_ms: AtomicU64,
}

/// `Progress::waiting_since_ms` of a response not waiting for the client.
const NOT_WAITING: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            changed_ms: AtomicU64::new(0),
            wrote_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(NOT_WAITING),
            responses: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request starts.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed_ms.store(self.now_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// An entry for a response that is `waiting` from now (see [`Progress`]).
    fn progress(&self, waiting: u64) -> Arc<Progress> {
        let mut responses = self.responses.lock().unwrap_or_else(PoisonError::into_inner);
        let free = responses.iter().find(|entry| !entry.taken.load(Ordering::Acquire));
        let entry = match free {
            Some(entry) => entry.clone(),
            None => {
                let entry = Arc::new(Progress {
                    taken: std::sync::atomic::AtomicBool::new(false),
                    waiting_since_ms: AtomicU64::new(NOT_WAITING),
                });
                responses.push(entry.clone());
                entry
            }
        };
        entry.waiting_since_ms.store(waiting, Ordering::Relaxed);
        entry.taken.store(true, Ordering::Release);
        entry
    }

    /// Why the connection must be closed now, if it must.
    fn overdue(&self, policy: &ListenerPolicy) -> Option<ConnectionClosed> {
        let now = self.now_ms();
        let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let wrote = self.wrote_ms.load(Ordering::Relaxed);
        // Bytes the client does not take: whatever answer they belong to, finished or not.
        let blocked = self.write_blocked_since_ms.load(Ordering::Relaxed);
        if blocked != NOT_WAITING && since(blocked) >= policy.send_timeout {
            return Some(ConnectionClosed::SendTimeout);
        }
        // Nothing in flight, nothing being written, nothing asked: idle.
        let changed = self.changed_ms.load(Ordering::Relaxed).max(wrote);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && blocked == NOT_WAITING
            && since(changed) >= policy.header_read_timeout
        {
            // One that never started a request is a client that never sent one.
            let never_asked = self.started.load(Ordering::Relaxed) == 0;
            return Some(if never_asked { ConnectionClosed::HeaderTimeout } else { ConnectionClosed::Idle });
        }
        // A response waiting for the client (an HTTP/2 window held shut) while the
        // connection writes nothing.
        let responses = self.responses.lock().unwrap_or_else(PoisonError::into_inner);
        let stalled = responses.iter().any(|entry| {
            let waiting = entry.waiting_since_ms.load(Ordering::Relaxed);
            entry.taken.load(Ordering::Acquire)
                && waiting != NOT_WAITING
                && since(waiting.max(wrote)) >= policy.send_timeout
        });
        stalled.then_some(ConnectionClosed::SendTimeout)
    }

    /// Notes how a write (or flush) to the client went: `None` if it waits for room, else the
    /// bytes it wrote.
    fn note_write(&self, written: Option<usize>) {
        match written {
            None => {
                let now = self.now_ms();
                let _ = self.write_blocked_since_ms.compare_exchange(
                    NOT_WAITING,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Some(bytes) => {
                self.write_blocked_since_ms.store(NOT_WAITING, Ordering::Relaxed);
                if bytes > CONTROL_FRAME_BYTES {
                    self.wrote_ms.store(self.now_ms(), Ordering::Relaxed);
                }
            }
        }
    }
}

/// Writes this small are not progress: HTTP/2 pings, window updates and settings (a client
/// that answers pings but takes no data is still stalled).
const CONTROL_FRAME_BYTES: usize = 32;

/// A connection's IO, noting in its [`Activity`] when writes to the client go through and
/// when they wait for room.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// What a write's outcome says to [`Activity::note_write`].
fn written(poll: &Poll<std::io::Result<usize>>) -> Option<usize> {
    match poll {
        Poll::Pending => None,
        Poll::Ready(result) => Some(*result.as_ref().unwrap_or(&0)),
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.note_write(written(&poll));
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.note_write(written(&poll));
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.activity.note_write(if poll.is_pending() { None } else { Some(0) });
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    /// Watches `body`'s progress for as long as the request is in flight.
    fn track(self, body: Body) -> Tracked {
        // Until hyper takes its first frame, the response waits for the client (an HTTP/2
        // window at zero is never opened); one with nothing to send waits for nobody.
        let waiting = if http_body::Body::is_end_stream(&body) { NOT_WAITING } else { self.0.now_ms() };
        let progress = self.0.progress(waiting);
        Tracked { body, rest: None, progress, request: self }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changed_ms.store(self.0.now_ms(), Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight while it is sent, and notes
/// whether it is waiting for the client (hyper holds a frame it gave and has not come back for
/// the next) or for its own source.
struct Tracked {
    body: Body,
    /// What is left of a data frame larger than [`MAX_FRAME_BYTES`], handed out in pieces.
    rest: Option<bytes::Bytes>,
    progress: Arc<Progress>,
    request: InFlight,
}

/// The most a response hands the connection at once: what is still being sent when the
/// answer's body (and what it holds: memory charges, the tenant's place) is let go.
pub const MAX_FRAME_BYTES: usize = 64 << 10;

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(http_body::Frame::data(rest)))),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        // Large frames go out in pieces, so the body is held until the last is handed over.
        let polled = polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_data() {
                    Ok(mut data) if data.len() > MAX_FRAME_BYTES => {
                        this.rest = Some(data.split_off(MAX_FRAME_BYTES));
                        http_body::Frame::data(data)
                    }
                    Ok(data) => http_body::Frame::data(data),
                    Err(other) => other,
                })
            })
        });
        let waiting = match &polled {
            // hyper has a frame to send: until it asks for the next, the client is taking it.
            Poll::Ready(Some(Ok(_))) => this.request.0.now_ms(),
            Poll::Ready(_) | Poll::Pending => NOT_WAITING,
        };
        this.progress.waiting_since_ms.store(waiting, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.as_ref().map_or(0, |rest| rest.len() as u64);
        let inner = self.body.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Its entry is free for the connection's next response.
        self.progress.waiting_since_ms.store(NOT_WAITING, Ordering::Relaxed);
        self.progress.taken.store(false, Ordering::Release);
    }
}

/// Connections open per client address, capped.
struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under its address's cap, given back when dropped.
struct AddressSlot {
    addresses: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `address`, unless it has as many as allowed.
    fn enter(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let key = address_key(address);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot { addresses: self.clone(), key })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.addresses.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key connections are counted under: an IPv4 address (or an IPv4-mapped one) as it is,
/// an IPv6 address by its /64, which one client usually holds whole.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// A connection's slot under `max_connections` and under its address's cap, and its place in
/// the open-connections gauge, all given back when the connection ends.
struct OpenConnection {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _address: AddressSlot,
    metrics: Arc<ConnectionMetrics>,
}

impl OpenConnection {
    fn new(
        slot: tokio::sync::OwnedSemaphorePermit,
        address: AddressSlot,
        metrics: Arc<ConnectionMetrics>,
    ) -> OpenConnection {
        metrics.open.inc();
        OpenConnection { _slot: slot, _address: address, metrics }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_count_by_ipv4_address_and_ipv6_slash_64() {
        let v6 = |text: &str| address_key(text.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), v6("10.0.0.1"));
        let addresses = Arc::new(PerAddress { limit: 2, open: Mutex::default() });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, _b) = (addresses.enter(ip).unwrap(), addresses.enter(ip).unwrap());
        assert!(addresses.enter(ip).is_none(), "the third from one address");
        assert!(addresses.enter("10.0.0.2".parse().unwrap()).is_some(), "another address");
        drop(a);
        assert!(addresses.enter(ip).is_some(), "a closed connection gives its place back");
    }

    #[test]
    fn a_response_the_client_does_not_take_is_overdue_after_the_send_timeout() {
        let policy = ListenerPolicy {
            max_connections: 1,
            max_connections_per_ip: 1,
            header_read_timeout: Duration::from_secs(3600),
            send_timeout: Duration::ZERO,
            max_header_bytes: 8192,
            http2_max_concurrent_streams: 1,
            http2_keepalive: None,
            grace: Duration::ZERO,
        };
        let activity = Arc::new(Activity::new());
        let empty = crate::http::response::text(http::StatusCode::OK, "text/plain", "").into_body();
        let done = activity.begin().track(empty);
        assert_eq!(activity.overdue(&policy), None, "an empty body waits for nobody");
        let full = crate::http::response::text(http::StatusCode::OK, "text/plain", "x").into_body();
        let stalled = activity.begin().track(full);
        assert_eq!(activity.overdue(&policy), Some(ConnectionClosed::SendTimeout));
        drop((done, stalled));
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        let patient = ListenerPolicy { send_timeout: Duration::from_secs(1), ..policy };
        assert_eq!(activity.overdue(&patient), None);
        // The last bytes of an answer whose body is gone, waiting for room: still the client's.
        activity.note_write(None);
        assert_eq!(activity.overdue(&policy), Some(ConnectionClosed::SendTimeout));
        activity.note_write(Some(4096));
        assert_eq!(activity.overdue(&policy), None, "the client took them");
    }

    #[tokio::test]
    async fn large_frames_are_handed_over_in_pieces() {
        let activity = Arc::new(Activity::new());
        let big = vec![7u8; 3 * MAX_FRAME_BYTES + 1];
        let big = crate::http::response::text(http::StatusCode::OK, "text/plain", big);
        let mut tracked = activity.begin().track(big.into_body());
        let mut sizes = Vec::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut tracked).await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [MAX_FRAME_BYTES, MAX_FRAME_BYTES, MAX_FRAME_BYTES, 1]);
    }
}
