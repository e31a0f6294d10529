//! What the host knows about one request beyond its HTTP content: its deadline and priority,
//! from the route's limits and the `x-edge-deadline-ms` / `x-edge-priority` headers. They
//! travel with the request down to the model's queue.

use std::time::{Duration, Instant};

use http::HeaderMap;

/// Header giving the request's deadline, in milliseconds from arrival.
pub const DEADLINE_HEADER: &str = "x-edge-deadline-ms";
/// Header giving the request's priority: `high`, `normal` or `low`.
pub const PRIORITY_HEADER: &str = "x-edge-priority";

/// Queue order: higher priorities are served first; equal priorities in arrival order.
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

/// A request's deadline and priority.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext {
    pub deadline: Instant,
    pub priority: Priority,
}

impl RequestContext {
    /// Reads the deadline and priority headers. The deadline is the earlier of the header's
    /// and `route_timeout` from `arrival`. A malformed header is an error naming it.
    pub fn from_headers(
        headers: &HeaderMap,
        arrival: Instant,
        route_timeout: Duration,
    ) -> Result<RequestContext, String> {
        let header = |name: &str| -> Result<Option<&str>, String> {
            headers
                .get(name)
                .map(|value| value.to_str().map_err(|_| format!("{name} is not text")))
                .transpose()
        };
        let timeout = match header(DEADLINE_HEADER)? {
            None => route_timeout,
            Some(text) => {
                let millis: u64 = text.trim().parse().map_err(|_| {
                    format!(
                        "{DEADLINE_HEADER} must be a whole number of milliseconds, got {text:?}"
                    )
                })?;
                route_timeout.min(Duration::from_millis(millis))
            }
        };
        let priority = match header(PRIORITY_HEADER)?.map(|p| p.trim().to_ascii_lowercase()) {
            None => Priority::Normal,
            Some(p) if p == "high" => Priority::High,
            Some(p) if p == "normal" => Priority::Normal,
            Some(p) if p == "low" => Priority::Low,
            Some(p) => {
                return Err(format!(
                    "{PRIORITY_HEADER} must be high, normal or low, got {p:?}"
                ));
            }
        };
        Ok(RequestContext {
            deadline: arrival + timeout,
            priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&'static str, &'static str)]) -> Result<RequestContext, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        RequestContext::from_headers(&headers, Instant::now(), Duration::from_secs(10))
    }

    #[test]
    fn the_header_can_only_shorten_the_route_deadline() {
        let now = Instant::now();
        let short = context(&[(DEADLINE_HEADER, "50")]).unwrap();
        assert!(short.deadline <= now + Duration::from_millis(60));
        let long = context(&[(DEADLINE_HEADER, "999999")]).unwrap();
        assert!(long.deadline <= Instant::now() + Duration::from_secs(10));
        assert!(
            context(&[(DEADLINE_HEADER, "soon")])
                .unwrap_err()
                .contains(DEADLINE_HEADER)
        );
    }

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!(context(&[]).unwrap().priority, Priority::Normal);
        assert_eq!(
            context(&[(PRIORITY_HEADER, "HIGH")]).unwrap().priority,
            Priority::High
        );
        assert!(
            context(&[(PRIORITY_HEADER, "urgent")])
                .unwrap_err()
                .contains("high, normal or low")
        );
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
    }
}
