//! Load generation against any HTTP endpoint: `edge-infer bench` and the benchmark harness
//! use it.
//!
//! Two shapes of load:
//! - closed loop: `concurrency` clients each send a request, wait for the whole answer, and
//!   send the next;
//! - open loop: requests start at a fixed rate (evenly spaced, or as a Poisson process), at
//!   most `concurrency` in flight. Latency is measured from when a request was *due*, not
//!   when it could be sent, so a slow server cannot hide its queueing (no coordinated
//!   omission).
//!
//! Requests take their bodies in turn from a list (one body, or a corpus such as texts of
//! varied lengths); recorded requests start again from the first body, so two runs of a
//! whole number of passes over the list measure exactly the same requests. Each run has an
//! unrecorded warm-up, then stops after `duration` or after `requests`
//! recorded requests, whichever comes first. Latencies go into an HDR histogram (µs);
//! statuses and transport errors are counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Latencies above this are recorded as this (60 s, in µs).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// An open-loop request rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    /// Exponential gaps between requests (a Poisson process) instead of even ones.
    pub poisson: bool,
}

/// What to send, how hard, and for how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub url: Uri,
    pub method: Method,
    /// Request bodies, used in turn (one empty body for none).
    pub bodies: Vec<Bytes>,
    pub content_type: Option<String>,
    /// More headers on every request (credentials, priorities).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Closed loop: the number of clients. Open loop: the most requests in flight.
    pub concurrency: usize,
    /// `None` for a closed loop.
    pub rate: Option<Rate>,
    pub warm_up: Duration,
    pub duration: Duration,
    /// Stop after this many recorded requests, if that comes before `duration`.
    pub requests: Option<u64>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    /// gRPC calls (over HTTP/2): a request succeeds when its `grpc-status` trailer is 0.
    pub grpc: bool,
}

impl Load {
    /// A closed loop of `concurrency` clients for `duration`, after `warm_up`.
    pub fn closed(url: Uri, concurrency: usize, warm_up: Duration, duration: Duration) -> Load {
        Load {
            url,
            method: Method::GET,
            bodies: vec![Bytes::new()],
            content_type: None,
            headers: Vec::new(),
            concurrency,
            rate: None,
            warm_up,
            duration,
            requests: None,
            http2: false,
            grpc: false,
        }
    }

    /// How the load is described in reports: `c=16`, or `rate=500/s` (`poisson` if so).
    pub fn label(&self) -> String {
        match self.rate {
            None => format!("c={}", self.concurrency),
            Some(Rate { per_second, poisson }) => {
                format!("rate={per_second}/s{}", if poisson { " poisson" } else { "" })
            }
        }
    }
}

/// What one run measured.
#[derive(Clone)]
pub struct Report {
    pub load: String,
    /// How long the recorded part of the run lasted.
    pub elapsed: Duration,
    /// Microseconds from a request being due to having its whole answer.
    pub latencies: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
}

impl Report {
    /// Answered requests per second (any status).
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at `quantile` (0..=1), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latencies.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Answers with a 2xx status.
    pub fn successes(&self) -> u64 {
        self.statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
    }

    /// The column names of [`Report::row`].
    pub const HEADER: &'static str =
        "load                   req/s    p50 ms    p90 ms    p99 ms    max ms  statuses";

    /// One line of a results table.
    pub fn row(&self) -> String {
        let statuses: Vec<String> = self.statuses.iter().map(|(status, n)| format!("{status}:{n}")).collect();
        let errors = if self.errors > 0 { format!(" errors:{}", self.errors) } else { String::new() };
        format!(
            "{:<18} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {}{errors}",
            self.load,
            self.throughput(),
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.99),
            self.latencies.max() as f64 / 1000.0,
            statuses.join(" "),
        )
    }

    /// The column names of [`Report::csv_row`].
    pub const CSV_HEADER: &'static str =
        "load,requests,errors,seconds,req_per_s,p50_ms,p90_ms,p99_ms,max_ms,successes";

    /// One CSV line.
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{:.3},{:.1},{:.3},{:.3},{:.3},{:.3},{}",
            self.load,
            self.latencies.len(),
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.99),
            self.latencies.max() as f64 / 1000.0,
            self.successes(),
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "load": self.load,
            "requests": self.latencies.len(),
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "req_per_s": self.throughput(),
            "latency_ms": {
                "p50": self.latency_ms(0.50),
                "p90": self.latency_ms(0.90),
                "p99": self.latency_ms(0.99),
                "max": self.latencies.max() as f64 / 1000.0,
            },
            "statuses": self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The run's shared state: when recording starts and stops, the budget of recorded requests,
/// and the totals.
struct Run {
    load: Load,
    client: Client<HttpConnector, Full<Bytes>>,
    record_from: Instant,
    stop_at: Instant,
    /// Recorded requests still allowed (`u64::MAX` without a request limit).
    tickets: AtomicU64,
    totals: Mutex<Totals>,
    /// Requests answered so far, for progress displays.
    answered: Arc<AtomicU64>,
    /// Which body the next warm-up request takes (recorded ones take their ticket's).
    next_warm_up_body: AtomicUsize,
}

impl Run {
    /// Whether a request due at `due` may start (before the end, and within the budget), and
    /// if so, which body it sends: recorded requests take the bodies in order from the first.
    fn may_start(&self, due: Instant) -> Option<usize> {
        if due >= self.stop_at {
            return None;
        }
        if due < self.record_from {
            return Some(self.next_warm_up_body.fetch_add(1, Ordering::Relaxed));
        }
        let left =
            self.tickets.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).ok()?;
        let budget = self.load.requests.unwrap_or(u64::MAX);
        Some((budget - left) as usize)
    }

    /// Sends one request due at `due` with body number `body`, and records it if it counts.
    async fn request(&self, due: Instant, body: usize, mine: &mut Totals) {
        let bodies = &self.load.bodies;
        let body = if bodies.is_empty() { Bytes::new() } else { bodies[body % bodies.len()].clone() };
        let outcome = send(&self.client, &self.load, body).await;
        self.answered.fetch_add(1, Ordering::Relaxed);
        if due >= self.record_from {
            mine.record(outcome, due.elapsed());
        }
    }
}

/// Runs `load` and reports what it measured.
pub async fn run(load: &Load) -> anyhow::Result<Report> {
    run_counting(load, &Arc::new(AtomicU64::new(0))).await
}

/// Like [`run`], counting answered requests (warm-up included) in `answered` as it goes, for
/// a progress display.
pub async fn run_counting(load: &Load, answered: &Arc<AtomicU64>) -> anyhow::Result<Report> {
    // Requests go out at once: HTTP/2 writes a request in several pieces, which Nagle's
    // algorithm would otherwise hold back until the server's delayed acknowledgement.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(load.http2)
        .pool_max_idle_per_host(load.concurrency)
        .build::<_, Full<Bytes>>(connector);
    let started = Instant::now();
    let record_from = started + load.warm_up;
    let run = Arc::new(Run {
        load: load.clone(),
        client,
        record_from,
        stop_at: record_from + load.duration,
        tickets: AtomicU64::new(load.requests.unwrap_or(u64::MAX)),
        totals: Mutex::new(Totals::new()?),
        answered: answered.clone(),
        next_warm_up_body: AtomicUsize::new(0),
    });
    match load.rate {
        None => closed_loop(&run).await?,
        Some(rate) => open_loop(&run, rate).await?,
    }
    let elapsed = Instant::now().min(run.stop_at).saturating_duration_since(record_from);
    let totals = std::mem::replace(&mut *run.totals.lock().unwrap(), Totals::new()?);
    Ok(Report {
        load: load.label(),
        elapsed,
        latencies: totals.latencies,
        statuses: totals.statuses,
        errors: totals.errors,
    })
}

async fn closed_loop(run: &Arc<Run>) -> anyhow::Result<()> {
    let clients: Vec<_> = (0..run.load.concurrency)
        .map(|_| {
            let run = run.clone();
            tokio::spawn(async move {
                let mut mine = Totals::new().expect("a valid histogram");
                loop {
                    let due = Instant::now();
                    let Some(body) = run.may_start(due) else { break };
                    run.request(due, body, &mut mine).await;
                }
                run.totals.lock().unwrap().merge(mine);
            })
        })
        .collect();
    for client in clients {
        client.await?;
    }
    Ok(())
}

async fn open_loop(run: &Arc<Run>, rate: Rate) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(run.load.concurrency));
    let mut random = XorShift::seeded();
    let mut due = Instant::now();
    let mut requests = Vec::new();
    while let Some(body) = run.may_start(due) {
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let run = run.clone();
        requests.push(tokio::spawn(async move {
            let mut mine = Totals::new().expect("a valid histogram");
            run.request(due, body, &mut mine).await;
            run.totals.lock().unwrap().merge(mine);
            drop(permit);
        }));
        let gap = if rate.poisson { -random.unit().ln() / rate.per_second } else { 1.0 / rate.per_second };
        due += Duration::from_secs_f64(gap);
    }
    for request in requests {
        request.await?;
    }
    Ok(())
}

/// A small pseudo-random generator for Poisson gaps (statistical quality is all it needs).
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        XorShift(nanos.as_nanos() as u64 | 1)
    }

    /// A number in (0, 1].
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// One client's (or all clients') counts.
struct Totals {
    latencies: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Totals {
    fn new() -> anyhow::Result<Totals> {
        Ok(Totals {
            latencies: Histogram::new_with_max(MAX_LATENCY_MICROS, 3)?,
            statuses: BTreeMap::new(),
            errors: 0,
        })
    }

    fn record(&mut self, outcome: Option<u16>, latency: Duration) {
        match outcome {
            Some(status) => {
                *self.statuses.entry(status).or_default() += 1;
                self.latencies.saturating_record(latency.as_micros() as u64);
            }
            None => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Totals) {
        self.latencies.add(&other.latencies).expect("histograms of the same bounds");
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.errors += other.errors;
    }
}

/// Sends one request and reads the whole answer; `None` on a transport error.
async fn send(client: &Client<HttpConnector, Full<Bytes>>, load: &Load, body: Bytes) -> Option<u16> {
    let mut request = Request::builder().method(load.method.clone()).uri(load.url.clone());
    if let Some(content_type) = &load.content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if load.grpc {
        request = request.header(header::TE, "trailers");
    }
    for (name, value) in &load.headers {
        request = request.header(name, value);
    }
    let request = request.body(Full::new(body)).ok()?;
    let response = client.request(request).await.ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let answered = response.into_body().collect().await.ok()?;
    if load.grpc && status == 200 {
        // The outcome is in the trailers (or, for an immediate error, in the headers).
        let grpc_status =
            answered.trailers().and_then(|t| t.get("grpc-status")).or(headers.get("grpc-status"));
        return Some(crate::grpc::status_of(grpc_status.map(|value| value.as_bytes())));
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_one_over_the_rate() {
        let mut random = XorShift(12345);
        let mean = (0..100_000).map(|_| -random.unit().ln()).sum::<f64>() / 100_000.0;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }

    #[test]
    fn labels_say_the_shape_of_the_load() {
        let mut load = Load::closed("http://x/".parse().unwrap(), 16, Duration::ZERO, Duration::ZERO);
        assert_eq!(load.label(), "c=16");
        load.rate = Some(Rate { per_second: 500.0, poisson: true });
        assert_eq!(load.label(), "rate=500/s poisson");
    }
}
