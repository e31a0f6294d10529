//! What a guest is told about where its route is mounted: `x-edge-mount` (the route's path,
//! `/` for the root route) and `x-edge-path-info` (the path below it), set on every request
//! a route serves, and, on a route with `strip_mount`, the request's path itself made the
//! path below the mount, its query kept. Headers of these names that a client sent are
//! removed first, so a guest can trust them.

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};

use crate::http::protocol::{Failure, FailureKind};
use crate::node::config::path_below_mount;

/// The route's path, as the guest is told it.
pub const MOUNT_HEADER: HeaderName = HeaderName::from_static("x-edge-mount");
/// The request's path below the route's path (without the query), as the guest is told it.
pub const PATH_INFO_HEADER: HeaderName = HeaderName::from_static("x-edge-path-info");

/// Tells the guest of the route at `mount` where it is mounted, and hands it the path below
/// the mount if `strip` is set. A path that is no valid header value (it cannot be: the URI
/// parser allows only visible ASCII) is a 400.
pub fn present_to_guest(parts: &mut Parts, mount: &str, strip: bool) -> Result<(), Failure> {
    let below = path_below_mount(parts.uri.path(), mount).to_string();
    let invalid = |_| Failure::new(FailureKind::BadRequest, "the request's path is not valid in a header");
    parts.headers.insert(MOUNT_HEADER, HeaderValue::from_str(mount).map_err(invalid)?);
    parts.headers.insert(PATH_INFO_HEADER, HeaderValue::from_str(&below).map_err(invalid)?);
    if strip && below != parts.uri.path() {
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{below}?{query}"),
            None => below,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query =
            Some(PathAndQuery::try_from(path_and_query).map_err(|_| {
                Failure::new(FailureKind::BadRequest, "the request's path cannot be rewritten")
            })?);
        parts.uri = Uri::from_parts(uri)
            .map_err(|_| Failure::new(FailureKind::BadRequest, "the request's path cannot be rewritten"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        let mut request = http::Request::get(uri).body(()).unwrap();
        request.headers_mut().insert(MOUNT_HEADER, HeaderValue::from_static("/forged"));
        request.into_parts().0
    }

    #[test]
    fn a_stripping_route_hands_the_path_below_its_mount_and_keeps_the_query() {
        let mut stripped = parts("/app/echo/hi?loud=1");
        present_to_guest(&mut stripped, "/app", true).unwrap();
        assert_eq!(stripped.uri.path_and_query().unwrap().as_str(), "/echo/hi?loud=1");
        assert_eq!(stripped.headers[MOUNT_HEADER], "/app");
        assert_eq!(stripped.headers[PATH_INFO_HEADER], "/echo/hi");

        let mut mount_itself = parts("/app");
        present_to_guest(&mut mount_itself, "/app", true).unwrap();
        assert_eq!(mount_itself.uri.path(), "/");
    }

    #[test]
    fn a_full_path_route_and_the_root_route_keep_the_path() {
        let mut full = parts("/app/echo");
        present_to_guest(&mut full, "/app", false).unwrap();
        assert_eq!(
            (full.uri.path(), &full.headers[PATH_INFO_HEADER]),
            ("/app/echo", &HeaderValue::from_static("/echo"))
        );
        let mut root = parts("/echo?x");
        present_to_guest(&mut root, "/", true).unwrap();
        assert_eq!(root.uri.path_and_query().unwrap().as_str(), "/echo?x");
        assert_eq!(
            (&root.headers[MOUNT_HEADER], &root.headers[PATH_INFO_HEADER]),
            (&HeaderValue::from_static("/"), &HeaderValue::from_static("/echo"))
        );
    }
}
