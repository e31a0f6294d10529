//! What a listener allows its clients: which service it serves, its caps and timeouts
//! (`[server]` and its per-listener tables), and the open-file limit fitted to them all.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tracing::warn;

use crate::node::config::{DEFAULT_ADMIN_CONNECTIONS, ListenerSettings, ServerConfig};

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

    /// The HTTP/1.1 and HTTP/2 settings of `service`'s connections.
    pub(super) fn http(&self, service: Service) -> auto::Builder<TokioExecutor> {
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
    pub(super) fn check_interval(&self) -> Duration {
        (self.header_read_timeout.min(self.send_timeout) / 4).max(MIN_CHECK_INTERVAL)
    }
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
