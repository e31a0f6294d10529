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
    /// Hosts the guest may send HTTP requests to: `host` (any port) or `host:port`.
    pub outbound_http: Arc<[String]>,
    /// Folders the guest may read: (path in the guest, folder on the host).
    pub read_only_dirs: Arc<[(String, PathBuf)]>,
}

impl Capabilities {
    /// Opens the read-only folders in a new instance's WASI context.
    pub fn preopen(&self, wasi: &mut WasiCtxBuilder) -> wasmtime::Result<()> {
        for (guest, host) in self.read_only_dirs.iter() {
            wasi.preopened_dir(host, guest, FsPerms::ReadOnly)?;
        }
        Ok(())
    }

    /// Whether a request to `authority` (`host` or `host:port`) may go out.
    fn allows(&self, authority: &str) -> bool {
        let host = authority.rsplit_once(':').map_or(authority, |(host, _port)| host);
        self.outbound_http.iter().any(|allowed| allowed == authority || allowed == host)
    }
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
        let allowed = request.uri().authority().is_some_and(|authority| self.0.allows(authority.as_str()));
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
        let capabilities = Capabilities {
            outbound_http: vec!["api.example.com".to_string(), "127.0.0.1:8080".to_string()].into(),
            ..Capabilities::default()
        };
        assert!(capabilities.allows("api.example.com"));
        assert!(capabilities.allows("api.example.com:443"));
        assert!(capabilities.allows("127.0.0.1:8080"));
        assert!(!capabilities.allows("127.0.0.1:8081"));
        assert!(!capabilities.allows("example.com"));
        assert!(!capabilities.allows("api.example.com.evil.net"));
    }
}
