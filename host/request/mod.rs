//! What the host knows about one request beyond its HTTP content: its id, deadline,
//! priority and tenant, from the route's limits, the credentials it carried and the
//! `x-request-id`, `x-edge-deadline-ms` and `x-edge-priority` headers. They travel with the
//! request down to the model's queue, and [`RequestStats`] collects on the way what the
//! access log reports.
//!
//! Beside the context: `tenant` (who a request is for), `fair` (the queues tenants share by
//! weight) and `memory` (the node's byte budget every request's memory is charged to).

pub mod fair;
pub mod memory;
pub mod tenant;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use self::tenant::Tenant;

/// Header carrying the request's id, accepted from the client and echoed in the response.
pub const ID_HEADER: &str = "x-request-id";
/// Longest client-given request id accepted; longer ones are replaced.
const MAX_ID_LENGTH: usize = 128;
/// Header giving the request's deadline, in milliseconds from arrival.
pub const DEADLINE_HEADER: &str = "x-edge-deadline-ms";
/// Header giving the request's priority: `high`, `normal` or `low` (at most the tenant's).
pub const PRIORITY_HEADER: &str = "x-edge-priority";

/// A request header the host reads that the client got wrong; answered 400.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum HeaderError {
    /// The header's value is not visible ASCII.
    #[error("{0} is not text")]
    NotText(&'static str),
    /// The deadline header is not a whole number of milliseconds.
    #[error("{DEADLINE_HEADER} must be a whole number of milliseconds, got {0:?}")]
    Deadline(String),
    /// The priority header is none of the three priorities.
    #[error("{PRIORITY_HEADER} must be high, normal or low, got {0:?}")]
    Priority(String),
}

/// Queue order within a tenant: higher priorities are served first; equal priorities in
/// arrival order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    High = 0,
    #[default]
    Normal = 1,
    Low = 2,
}

impl Priority {
    /// The number of priority levels.
    pub const LEVELS: usize = 3;
}

/// A request's id, deadline, priority, tenant, and what it has used so far.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub deadline: Instant,
    pub priority: Priority,
    pub tenant: Arc<Tenant>,
    pub stats: Arc<Mutex<RequestStats>>,
}

/// What a request used, for the access log.
#[derive(Clone, Debug, Default)]
pub struct RequestStats {
    /// Models it ran (once per compute call).
    pub models: Vec<String>,
    /// Time its compute calls waited in model queues.
    pub model_queue: Duration,
    /// Time the model runs serving it took.
    pub model_compute: Duration,
}

impl RequestContext {
    /// A context with a fresh id, for the anonymous tenant, at `priority` as given: for work
    /// the host starts itself (requests from outside get theirs from [`Self::from_headers`]).
    pub fn new(deadline: Instant, priority: Priority) -> RequestContext {
        let tenant = Tenant::anonymous();
        RequestContext { id: new_id().into(), deadline, priority, tenant, stats: Default::default() }
    }

    /// A context with a fresh id, for `tenant`, at `priority` or the tenant's highest.
    pub fn for_tenant(deadline: Instant, priority: Priority, tenant: Arc<Tenant>) -> RequestContext {
        let priority = tenant.allowed_priority(priority);
        RequestContext { id: new_id().into(), deadline, priority, tenant, stats: Default::default() }
    }

    /// Notes one compute call on `model`.
    pub fn record_model(&self, model: &str, queued: Duration, computed: Duration) {
        let mut stats = self.stats.lock().unwrap();
        stats.models.push(model.to_string());
        stats.model_queue += queued;
        stats.model_compute += computed;
    }

    /// Reads the deadline and priority headers for a request of `tenant`. The deadline is
    /// the earlier of the header's and `route_timeout` from `arrival`; the priority is at most
    /// the tenant's. A malformed header is an error naming it.
    pub fn from_headers(
        headers: &HeaderMap,
        arrival: Instant,
        route_timeout: Duration,
        tenant: Arc<Tenant>,
    ) -> Result<RequestContext, HeaderError> {
        let header = |name: &'static str| -> Result<Option<&str>, HeaderError> {
            headers.get(name).map(|value| value.to_str().map_err(|_| HeaderError::NotText(name))).transpose()
        };
        let timeout = match header(DEADLINE_HEADER)? {
            None => route_timeout,
            Some(text) => {
                let millis: u64 = text.trim().parse().map_err(|_| HeaderError::Deadline(text.to_string()))?;
                route_timeout.min(Duration::from_millis(millis))
            }
        };
        let priority = match header(PRIORITY_HEADER)?.map(|p| p.trim().to_ascii_lowercase()) {
            None => Priority::Normal,
            Some(p) if p == "high" => Priority::High,
            Some(p) if p == "normal" => Priority::Normal,
            Some(p) if p == "low" => Priority::Low,
            Some(p) => return Err(HeaderError::Priority(p)),
        };
        let given_id = header(ID_HEADER)?.filter(|id| {
            !id.is_empty() && id.len() <= MAX_ID_LENGTH && id.bytes().all(|b| b.is_ascii_graphic())
        });
        let mut context = RequestContext::for_tenant(arrival + timeout, priority, tenant);
        if let Some(id) = given_id {
            context.id = id.into();
        }
        Ok(context)
    }
}

/// A new request id: unique in this process, and unlikely to repeat across restarts.
fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<u32> = std::sync::LazyLock::new(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (now.as_nanos() as u32) ^ std::process::id().rotate_left(16)
    });
    format!("{:08x}-{:x}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&'static str, &'static str)]) -> Result<RequestContext, HeaderError> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        let trusted = Tenant { index: 1, name: "ops".into(), weight: 1, max_priority: Priority::High };
        RequestContext::from_headers(&headers, Instant::now(), Duration::from_secs(10), Arc::new(trusted))
    }

    #[test]
    fn the_header_can_only_shorten_the_route_deadline() {
        let now = Instant::now();
        let short = context(&[(DEADLINE_HEADER, "50")]).unwrap();
        assert!(short.deadline <= now + Duration::from_millis(60));
        let long = context(&[(DEADLINE_HEADER, "999999")]).unwrap();
        assert!(long.deadline <= Instant::now() + Duration::from_secs(10));
        let error = context(&[(DEADLINE_HEADER, "soon")]).unwrap_err();
        assert_eq!(error, HeaderError::Deadline("soon".into()));
        assert!(error.to_string().contains(DEADLINE_HEADER));
    }

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!(context(&[]).unwrap().priority, Priority::Normal);
        assert_eq!(context(&[(PRIORITY_HEADER, "HIGH")]).unwrap().priority, Priority::High);
        let error = context(&[(PRIORITY_HEADER, "urgent")]).unwrap_err();
        assert!(error.to_string().contains("high, normal or low"), "{error}");
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
        let mut headers = HeaderMap::new();
        headers.insert(PRIORITY_HEADER, "high".parse().unwrap());
        let anonymous = RequestContext::from_headers(
            &headers,
            Instant::now(),
            Duration::from_secs(1),
            Tenant::anonymous(),
        );
        assert_eq!(anonymous.unwrap().priority, Priority::Normal, "high is a tenant's right");
    }

    #[test]
    fn request_ids_are_taken_from_the_client_or_made_unique() {
        assert_eq!(&*context(&[(ID_HEADER, "abc-123")]).unwrap().id, "abc-123");
        let (a, b) = (context(&[]).unwrap().id, context(&[]).unwrap().id);
        assert_ne!(a, b);
        assert_ne!(&*context(&[(ID_HEADER, "has space")]).unwrap().id, "has space");
    }
}

/// Fuzzing the request headers the host reads: any value of the deadline, priority and id
/// headers gives a context or a `HeaderError`, never a panic; a deadline never extends the
/// route's, and a kept id is short visible ASCII.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            "[0-9]{0,25}".prop_map(String::into_bytes),
            "(?i)(high|normal|low| HIGH |urgent)".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn any_header_values(deadline in prop::option::of(value()), priority in prop::option::of(value()), id in prop::option::of(value())) {
            let mut headers = HeaderMap::new();
            for (name, value) in [(DEADLINE_HEADER, deadline), (PRIORITY_HEADER, priority), (ID_HEADER, id)] {
                // Values hyper itself would refuse never reach the host.
                if let Some(value) = value.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
                    headers.insert(name, value);
                }
            }
            let arrival = Instant::now();
            let route_timeout = Duration::from_secs(10);
            if let Ok(context) = RequestContext::from_headers(&headers, arrival, route_timeout, Tenant::anonymous()) {
                prop_assert!(context.deadline <= arrival + route_timeout);
                prop_assert!(context.id.len() <= MAX_ID_LENGTH.max(32));
                prop_assert!(context.id.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
