//! Which tenant a data-plane request is for, and whether that tenant's limits let it in.
//!
//! A request names its tenant by a client certificate (mTLS, see `server.tls_client_ca`), or
//! by an API key in `x-api-key: KEY` or `authorization: Bearer KEY`. A key that names no
//! tenant is not a credential: the request is anonymous (the header may be the guest's own),
//! unless credentials are required, when it is refused (401). A guest sees its request's
//! tenant in `x-edge-tenant` (whatever the client sent there is replaced), and never the key
//! that named it.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::http::client::Client;
use crate::http::credentials::bearer_token;
use crate::node::Node;
use crate::request::tenant::{Tenant, TenantPermit, TenantRefusal};
use crate::telemetry::metrics;

/// The header that carries an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The header a guest finds its request's tenant in.
pub const TENANT_HEADER: &str = "x-edge-tenant";

/// Why a request was not let in (401, or 429 with when to retry: see `protocol::failure`).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this node serves requests with credentials only: send x-api-key or authorization: Bearer")]
    Unauthenticated,
    #[error(transparent)]
    Tenant(#[from] TenantRefusal),
}

/// A request let in: its tenant, its place under the tenant's limits, and the header that
/// carried its key, if a key named it.
pub struct Admitted {
    pub tenant: Arc<Tenant>,
    pub permit: TenantPermit,
    pub key_header: Option<HeaderName>,
}

/// Finds the tenant of a request with `headers` from `client`, and counts it in flight
/// under its tenant's limits.
pub fn admit(
    node: &Node,
    headers: &HeaderMap,
    client: Option<&Client>,
) -> Result<(Arc<Tenant>, TenantPermit), Refusal> {
    admit_naming(node, headers, client).map(|admitted| (admitted.tenant, admitted.permit))
}

/// As [`admit`], saying which header's key named the tenant.
pub fn admit_naming(node: &Node, headers: &HeaderMap, client: Option<&Client>) -> Result<Admitted, Refusal> {
    let tenants = node.tenants();
    // The first presented key that names a tenant (the other header may be the guest's own).
    let by_key =
        presented_keys(headers).into_iter().find_map(|(name, key)| Some((tenants.by_api_key(&key)?, name)));
    let certificate = client.and_then(|client| client.certificate_tenant.clone());
    let (tenant, key_header) = match (certificate, by_key) {
        // A certificate is the stronger credential: it names the tenant.
        (Some(tenant), by_key) => (tenant, by_key.map(|(_, header)| header)),
        (None, Some((tenant, header))) => (tenant, Some(header)),
        (None, None) => match tenants.anonymous() {
            Some(anonymous) => (anonymous, None),
            None => {
                metrics::unauthenticated();
                return Err(Refusal::Unauthenticated);
            }
        },
    };
    let series = node.tenant_metrics(tenant.index);
    match tenants.admit(&tenant) {
        Ok(permit) => {
            series.requests.inc();
            Ok(Admitted { tenant, permit, key_header })
        }
        Err(refusal) => {
            match refusal {
                TenantRefusal::Concurrency { .. } => series.refused_concurrency.inc(),
                TenantRefusal::Rate { .. } => series.refused_rate.inc(),
            }
            Err(refusal.into())
        }
    }
}

/// The API keys a request presents (`x-api-key`, then a bearer token), with the header each
/// came in.
fn presented_keys(headers: &HeaderMap) -> Vec<(HeaderName, Vec<u8>)> {
    let api_key = headers
        .get(API_KEY_HEADER)
        .map(|key| (HeaderName::from_static(API_KEY_HEADER), key.as_bytes().trim_ascii().to_vec()));
    let bearer = bearer_token(headers).map(|token| (header::AUTHORIZATION, token.to_vec()));
    api_key.into_iter().chain(bearer).collect()
}

/// Shows a guest who its request is for: `x-edge-tenant` set to the tenant, and the key that
/// named it removed.
pub fn present_to_guest(headers: &mut HeaderMap, admitted: &Admitted) {
    if let Some(key_header) = &admitted.key_header {
        headers.remove(key_header);
    }
    match HeaderValue::from_str(&admitted.tenant.name) {
        Ok(name) => drop(headers.insert(TENANT_HEADER, name)),
        Err(_) => drop(headers.remove(TENANT_HEADER)),
    }
}
