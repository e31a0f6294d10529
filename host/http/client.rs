//! Who is calling: what the front door knows of a request's client (its address, and the
//! tenant its TLS client certificate names), put in each request's extensions for the
//! handlers' tenancy checks.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::request::tenant::Tenant;

/// Where a request came from, in its extensions: the client's address, and the tenant its TLS
/// client certificate names, if it showed one that does.
#[derive(Clone, Debug)]
pub struct Client {
    pub address: SocketAddr,
    pub certificate_tenant: Option<Arc<Tenant>>,
}
