//! Who a request is for: its tenant, named by the credentials it carried (an API key or a
//! client certificate), or the anonymous tenant for requests that carried none.
//!
//! A tenant's identity travels with the request down to the model queues, which share their
//! work between tenants by weight (the fair queues beside this module); the priorities a
//! tenant may ask for are its right, set by the operator, not a header anyone may send. The
//! [`TenantDirectory`] finds a request's tenant and holds each tenant to its limits: requests
//! in flight at once, and a sustained rate with a burst above it (a token bucket).
//!
//! Credentials are kept as SHA-256 digests only: the node never holds a key it could leak.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::request::Priority;

/// The name of the tenant of requests without credentials.
pub const ANONYMOUS: &str = "anonymous";

/// One tenant, as the queues and limits see it.
#[derive(Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its index in the node's tenant table: the key the queues share work by.
    pub index: usize,
    /// Its name in the config, metrics and logs.
    pub name: String,
    /// Its share of a contended queue against the other tenants queued there (at least 1).
    pub weight: u32,
    /// The highest priority its requests may ask for; a header asking for more gets this.
    pub max_priority: Priority,
}

impl Tenant {
    /// The anonymous tenant of a node configured with no tenants: weight 1, normal priority
    /// at most.
    pub fn anonymous() -> Arc<Tenant> {
        static ANONYMOUS_TENANT: LazyLock<Arc<Tenant>> = LazyLock::new(|| {
            Arc::new(Tenant { index: 0, name: ANONYMOUS.into(), weight: 1, max_priority: Priority::Normal })
        });
        ANONYMOUS_TENANT.clone()
    }

    /// `asked`, lowered to this tenant's highest priority if it asks for more.
    pub fn allowed_priority(&self, asked: Priority) -> Priority {
        // Higher priorities order first (`High < Normal`): the allowed one is the later.
        asked.max(self.max_priority)
    }
}

/// A SHA-256 digest, of an API key or of a client certificate (its DER bytes).
pub type CredentialDigest = [u8; 32];

/// The digest a credential is kept as.
pub fn credential_digest(credential: &[u8]) -> CredentialDigest {
    Sha256::digest(credential).into()
}

/// A sustained rate of requests, with a burst above it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    /// Requests that may come at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// What the operator allows one tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantPolicy {
    pub name: String,
    pub weight: u32,
    pub max_priority: Priority,
    /// Requests in flight at once on this node, over every listener; `None`: no cap.
    pub max_concurrency: Option<usize>,
    /// `None`: no rate limit.
    pub rate: Option<Rate>,
    /// Digests of the API keys that name it.
    pub api_keys: Vec<CredentialDigest>,
    /// Digests of the client certificates that name it.
    pub client_certificates: Vec<CredentialDigest>,
}

impl TenantPolicy {
    /// The anonymous tenant's policy when the config gives none: weight 1, normal priority
    /// at most, no caps of its own.
    pub fn anonymous() -> TenantPolicy {
        TenantPolicy {
            name: ANONYMOUS.into(),
            weight: 1,
            max_priority: Priority::Normal,
            max_concurrency: None,
            rate: None,
            api_keys: Vec::new(),
            client_certificates: Vec::new(),
        }
    }
}

/// Why a tenant's request was refused by the tenant's own limits; answered 429.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TenantRefusal {
    #[error("tenant {tenant:?} has {limit} requests in flight, its max_concurrency")]
    Concurrency { tenant: String, limit: usize },
    #[error("tenant {tenant:?} is over its rate of {per_second} requests a second")]
    Rate { tenant: String, per_second: f64, retry_after: Duration },
}

impl TenantRefusal {
    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            TenantRefusal::Concurrency { .. } => Duration::from_secs(1),
            TenantRefusal::Rate { retry_after, .. } => *retry_after,
        }
    }
}

/// The node's tenants: who credentials name, and what each may use.
pub struct TenantDirectory {
    /// By tenant index; the anonymous tenant is index 0.
    members: Vec<Arc<Member>>,
    by_api_key: HashMap<CredentialDigest, usize>,
    by_certificate: HashMap<CredentialDigest, usize>,
    /// Whether requests without credentials are served (as the anonymous tenant).
    anonymous_allowed: bool,
}

/// One tenant and its live counts.
struct Member {
    tenant: Arc<Tenant>,
    max_concurrency: Option<usize>,
    in_flight: AtomicUsize,
    bucket: Option<Mutex<Bucket>>,
}

/// A token bucket: a token a request, refilled at the rate up to the burst.
struct Bucket {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

/// A request counted in flight for its tenant, until dropped.
#[derive(Debug)]
pub struct TenantPermit {
    member: Arc<Member>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("tenant", &self.tenant.name).finish_non_exhaustive()
    }
}

impl TenantDirectory {
    /// The tenants of `policies`; one named [`ANONYMOUS`] sets the anonymous tenant's (it has
    /// no credentials), else it gets [`TenantPolicy::anonymous`]. With `require_credentials`,
    /// requests without credentials are refused.
    pub fn new(policies: Vec<TenantPolicy>, require_credentials: bool) -> TenantDirectory {
        let (mut anonymous, named): (Vec<_>, Vec<_>) =
            policies.into_iter().partition(|policy| policy.name == ANONYMOUS);
        let anonymous = anonymous.pop().unwrap_or_else(TenantPolicy::anonymous);
        let mut directory = TenantDirectory {
            members: Vec::new(),
            by_api_key: HashMap::new(),
            by_certificate: HashMap::new(),
            anonymous_allowed: !require_credentials,
        };
        for policy in std::iter::once(anonymous).chain(named) {
            let index = directory.members.len();
            for key in &policy.api_keys {
                directory.by_api_key.insert(*key, index);
            }
            for certificate in &policy.client_certificates {
                directory.by_certificate.insert(*certificate, index);
            }
            let tenant = Arc::new(Tenant {
                index,
                name: policy.name.clone(),
                weight: policy.weight.max(1),
                max_priority: policy.max_priority,
            });
            let bucket = policy.rate.map(|rate| {
                Mutex::new(Bucket { rate, tokens: f64::from(rate.burst.max(1)), refilled: Instant::now() })
            });
            directory.members.push(Arc::new(Member {
                tenant,
                max_concurrency: policy.max_concurrency,
                in_flight: AtomicUsize::new(0),
                bucket,
            }));
        }
        directory
    }

    /// The tenant an API key names.
    pub fn by_api_key(&self, key: &[u8]) -> Option<Arc<Tenant>> {
        self.by_api_key.get(&credential_digest(key)).map(|&index| self.members[index].tenant.clone())
    }

    /// The tenant a client certificate (DER) names.
    pub fn by_certificate(&self, der: &[u8]) -> Option<Arc<Tenant>> {
        self.by_certificate.get(&credential_digest(der)).map(|&index| self.members[index].tenant.clone())
    }

    /// The tenant of requests without credentials; `None` when credentials are required.
    pub fn anonymous(&self) -> Option<Arc<Tenant>> {
        self.anonymous_allowed.then(|| self.members[0].tenant.clone())
    }

    /// Whether any tenant has credentials (so requests may name one).
    pub fn has_credentials(&self) -> bool {
        !self.by_api_key.is_empty() || !self.by_certificate.is_empty()
    }

    /// Every tenant, by index.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.members.iter().map(|member| &member.tenant)
    }

    /// Requests in flight for the tenant of index `index`.
    pub fn in_flight(&self, index: usize) -> usize {
        self.members.get(index).map_or(0, |member| member.in_flight.load(Ordering::Relaxed))
    }

    /// Counts a request of `tenant` in flight, unless that is over its concurrency cap or its
    /// rate. A request refused takes no token and no place.
    pub fn admit(&self, tenant: &Tenant) -> Result<TenantPermit, TenantRefusal> {
        let member = &self.members[tenant.index];
        let in_flight = member.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = TenantPermit { member: member.clone() };
        if let Some(limit) = member.max_concurrency
            && in_flight >= limit
        {
            return Err(TenantRefusal::Concurrency { tenant: tenant.name.clone(), limit });
        }
        if let Some(bucket) = &member.bucket {
            let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(retry_after) = bucket.take(Instant::now()) {
                let per_second = bucket.rate.per_second;
                return Err(TenantRefusal::Rate { tenant: tenant.name.clone(), per_second, retry_after });
            }
        }
        Ok(permit)
    }
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // A rate so slow the wait overflows is a wait of "as long as it takes".
            let wait = (1.0 - self.tokens) / self.rate.per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        self.member.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_at_most_its_own_priority() {
        let anonymous = Tenant::anonymous();
        assert_eq!(anonymous.allowed_priority(Priority::High), Priority::Normal);
        assert_eq!(anonymous.allowed_priority(Priority::Low), Priority::Low);
        let trusted = Tenant { index: 1, name: "ops".into(), weight: 1, max_priority: Priority::High };
        assert_eq!(trusted.allowed_priority(Priority::High), Priority::High);
    }

    fn policy(name: &str, key: &[u8]) -> TenantPolicy {
        TenantPolicy {
            name: name.into(),
            api_keys: vec![credential_digest(key)],
            ..TenantPolicy::anonymous()
        }
    }

    #[test]
    fn keys_name_tenants_and_anonymous_is_index_zero() {
        let directory = TenantDirectory::new(vec![policy("acme", b"acme-key")], false);
        assert_eq!(directory.by_api_key(b"acme-key").unwrap().name, "acme");
        assert!(directory.by_api_key(b"other").is_none());
        assert_eq!(directory.anonymous().unwrap().index, 0);
        let strict = TenantDirectory::new(vec![policy("acme", b"acme-key")], true);
        assert!(strict.anonymous().is_none());
    }

    #[test]
    fn concurrency_and_rate_are_held_and_a_refusal_takes_nothing() {
        let limited = TenantPolicy {
            max_concurrency: Some(2),
            rate: Some(Rate { per_second: 1.0, burst: 3 }),
            ..policy("acme", b"k")
        };
        let directory = TenantDirectory::new(vec![limited], false);
        let acme = directory.by_api_key(b"k").unwrap();
        let first = directory.admit(&acme).unwrap();
        let _second = directory.admit(&acme).unwrap();
        let refused = directory.admit(&acme).unwrap_err();
        assert!(matches!(refused, TenantRefusal::Concurrency { limit: 2, .. }), "{refused:?}");
        assert_eq!(directory.in_flight(acme.index), 2, "the refused one is not counted");
        drop(first);
        let _third = directory.admit(&acme).unwrap();
        drop(_third);
        // Three tokens of the burst are spent: the next waits about a second.
        match directory.admit(&acme).unwrap_err() {
            TenantRefusal::Rate { retry_after, .. } => {
                assert!(retry_after > Duration::from_millis(900) && retry_after <= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        let mut bucket =
            Bucket { rate: Rate { per_second: 10.0, burst: 1 }, tokens: 0.0, refilled: Instant::now() };
        let later = bucket.refilled + Duration::from_millis(150);
        assert!(bucket.take(later).is_ok(), "refilled at the rate");
    }
}
