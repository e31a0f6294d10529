//! Closed-loop load generation against any HTTP endpoint: `edge-infer bench` and the
//! benchmark harness use it.
//!
//! `concurrency` clients each send a request, wait for the whole answer, and send the next,
//! for a warm-up period (not recorded) and then the measured duration. Latencies go into an
//! HDR histogram (microsecond resolution); statuses and transport errors are counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Latencies above this are recorded as this (60 s, in µs).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// What to send, how hard, and for how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub url: Uri,
    pub method: Method,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub concurrency: usize,
    pub warm_up: Duration,
    pub duration: Duration,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

/// What one run measured.
#[derive(Clone)]
pub struct Report {
    pub concurrency: usize,
    pub elapsed: Duration,
    /// Microseconds from sending a request to having its whole answer.
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

    /// The column names of [`Report::row`].
    pub const HEADER: &'static str = "clients      req/s    p50 ms    p90 ms    p99 ms    max ms  statuses";

    /// One line of a results table.
    pub fn row(&self) -> String {
        let statuses: Vec<String> = self.statuses.iter().map(|(status, n)| format!("{status}:{n}")).collect();
        let errors = if self.errors > 0 { format!(" errors:{}", self.errors) } else { String::new() };
        format!(
            "{:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {}{errors}",
            self.concurrency,
            self.throughput(),
            self.latency_ms(0.50),
            self.latency_ms(0.90),
            self.latency_ms(0.99),
            self.latencies.max() as f64 / 1000.0,
            statuses.join(" "),
        )
    }

    /// Answers with a 2xx status.
    pub fn successes(&self) -> u64 {
        self.statuses.iter().filter(|(status, _)| (200..300).contains(*status)).map(|(_, n)| n).sum()
    }
}

/// Runs `load` and reports what it measured.
pub async fn run(load: &Load) -> anyhow::Result<Report> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(load.http2)
        .pool_max_idle_per_host(load.concurrency)
        .build_http::<Full<Bytes>>();
    let started = Instant::now();
    let record_from = started + load.warm_up;
    let stop_at = record_from + load.duration;
    let totals = Arc::new(Mutex::new(Totals::new()?));
    let clients: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let (client, load, totals) = (client.clone(), load.clone(), totals.clone());
            tokio::spawn(async move {
                let mut mine = Totals::new().expect("a valid histogram");
                while Instant::now() < stop_at {
                    let sent = Instant::now();
                    let outcome = send(&client, &load).await;
                    if sent >= record_from {
                        mine.record(outcome, sent.elapsed());
                    }
                }
                totals.lock().unwrap().merge(mine);
            })
        })
        .collect();
    for client in clients {
        client.await?;
    }
    let totals = Arc::try_unwrap(totals).ok().expect("every client is done").into_inner().unwrap();
    Ok(Report {
        concurrency: load.concurrency,
        elapsed: load.duration,
        latencies: totals.latencies,
        statuses: totals.statuses,
        errors: totals.errors,
    })
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
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    load: &Load,
) -> Option<u16> {
    let mut request = Request::builder().method(load.method.clone()).uri(load.url.clone());
    if let Some(content_type) = &load.content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let request = request.body(Full::new(load.body.clone())).ok()?;
    let response = client.request(request).await.ok()?;
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}
