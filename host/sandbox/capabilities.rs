//! What a route opens to its guests beyond the closed sandbox: outgoing HTTP to listed
//! hosts, and folders to read. Everything else stays shut: a request to another host is
//! `HTTP-request-denied`, and no other folder exists for the guest.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// A route's openings, shared by all of its instances.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// Hosts the guest may send HTTP requests to, parsed once from `host` (any port) or
    /// `host:port` entries.
    outbound_http: Arc<[Target]>,
    /// Folders the guest may read: (path in the guest, folder on the host).
    read_only_dirs: Arc<[(String, PathBuf)]>,
}

impl Capabilities {
    /// A route's openings: `outbound_http` entries (invalid ones, which the config refuses,
    /// open nothing) and read-only folders by guest path.
    pub fn new(
        outbound_http: &[String],
        read_only_dirs: impl IntoIterator<Item = (String, PathBuf)>,
    ) -> Capabilities {
        Capabilities {
            outbound_http: outbound_http.iter().filter_map(|entry| Target::parse_entry(entry)).collect(),
            read_only_dirs: read_only_dirs.into_iter().collect(),
        }
    }

    /// Opens the read-only folders in a new instance's WASI context.
    pub fn preopen(&self, wasi: &mut WasiCtxBuilder) -> wasmtime::Result<()> {
        for (guest, host) in self.read_only_dirs.iter() {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
        }
        Ok(())
    }

    /// Whether a request to `authority` may go out: no user info, a numeric port if any, and
    /// a listed `host` (any port) or `host:port`, compared without case or a trailing dot.
    fn allows(&self, authority: &http::uri::Authority) -> bool {
        if authority.as_str().contains('@') {
            return false;
        }
        let Some(target) = Target::parse(authority) else { return false };
        self.outbound_http.iter().any(|allowed| {
            allowed.host == target.host && (allowed.port.is_none() || allowed.port == target.port)
        })
    }
}

/// A host and maybe a port, normalised for comparison.
#[derive(Debug, PartialEq)]
struct Target {
    host: String,
    port: Option<u16>,
}

impl Target {
    fn parse(authority: &http::uri::Authority) -> Option<Target> {
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        // A port that is there but not a number (`host:x.evil.net`) is refused outright.
        let port =
            match authority.as_str().strip_prefix(authority.host()).and_then(|rest| rest.strip_prefix(':')) {
                None => None,
                Some(_) => Some(authority.port_u16()?),
            };
        (!host.is_empty()).then_some(Target { host, port })
    }

    /// An `outbound_http` entry: `host` or `host:port`, nothing more.
    fn parse_entry(entry: &str) -> Option<Target> {
        if entry.contains('@') {
            return None;
        }
        entry.parse::<http::uri::Authority>().ok().as_ref().and_then(Target::parse)
    }
}

/// Whether `entry` is a valid `outbound_http` entry: `host` or `host:port`, nothing more.
pub fn is_outbound_entry(entry: &str) -> bool {
    Target::parse_entry(entry).is_some()
}

/// The `wasi:http` hooks of a guest: requests to the route's listed hosts go out, every
/// other one is denied.
pub struct OutgoingHttp(pub Capabilities);

/// What `send_request` returns: the response, and a future reporting the request's end.
type Sent = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _sent: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let allowed = request.uri().authority().is_some_and(|authority| self.0.allows(authority));
        Box::new(async move {
            if !allowed {
                return Err(Error::HttpRequestDenied);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let response =
                response.map(|body| -> HyperOutgoingBody { http_body_util::BodyExt::boxed_unsync(body) });
            Ok((response, Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_with_or_without_their_port() {
        let capabilities =
            Capabilities::new(&["api.example.com".to_string(), "127.0.0.1:8080".to_string()], []);
        let allows = |authority: &str| capabilities.allows(&authority.parse().unwrap());
        assert!(allows("api.example.com"));
        assert!(allows("API.Example.com.:443"));
        assert!(allows("127.0.0.1:8080"));
        assert!(!allows("127.0.0.1:8081"));
        assert!(!allows("127.0.0.1"), "the listed port only");
        assert!(!allows("example.com"));
        assert!(!allows("api.example.com.evil.net"));
        // What only looks like the listed host: a non-numeric port, user info.
        assert!(!allows("api.example.com:x.y.attacker.com"));
        assert!(!allows("api.example.com:x@y.attacker.com"));
        assert!(!allows("api.example.com@attacker.com"));
        assert!(is_outbound_entry("api.example.com") && is_outbound_entry("[::1]:8080"));
        assert!(!is_outbound_entry("https://api.example.com") && !is_outbound_entry("a@b"));
    }
}
