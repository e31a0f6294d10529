//! Prometheus metrics for the whole process, served at `/metrics`.
//!
//! One registry holds every metric. Hot paths never look labels up: a model's scheduler and a
//! route resolve their labelled series once ([`ModelMetrics`], [`RouteMetrics`]) and keep the
//! handles. Names are prefixed `edge_infer_` and carry their unit.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, exponential_buckets,
};

/// Every metric of the process.
struct Families {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    route_instances_in_use: IntGaugeVec,
    route_instances_capacity: IntGaugeVec,
    route_queue_depth: IntGaugeVec,
    guest_traps: IntCounterVec,
    instantiation_duration: HistogramVec,
    ready_instance_hits: IntCounterVec,
    guest_log_dropped: IntCounterVec,
    model_requests: IntCounterVec,
    model_executions: IntCounterVec,
    model_inferences: IntCounterVec,
    model_batch_size: HistogramVec,
    model_queue_duration: HistogramVec,
    model_compute_duration: HistogramVec,
    model_pending: IntGaugeVec,
    model_max_batch: IntGaugeVec,
    model_input_elements: IntCounterVec,
    model_queue_delay: GaugeVec,
    model_backend: IntGaugeVec,
    model_loads: IntCounterVec,
    model_evictions: IntCounterVec,
    model_resident_bytes: IntGaugeVec,
    model_memory_budget: IntGauge,
    model_memory_resident: IntGauge,
    deploys: IntCounterVec,
    inference_requests: IntCounterVec,
    gpu_memory_used: IntGaugeVec,
    gpu_memory_total: IntGaugeVec,
    model_cache: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_closed: IntCounterVec,
    memory_budget: IntGauge,
    memory_in_use: IntGauge,
    memory_peak: IntGauge,
    memory_refusals: IntCounterVec,
    tenant_requests: IntCounterVec,
    tenant_refusals: IntCounterVec,
    tenant_in_flight: IntGaugeVec,
    unauthenticated: IntCounter,
}

/// Latency buckets from 50 µs to about 26 s.
fn seconds_buckets() -> Vec<f64> {
    exponential_buckets(50e-6, 2.0, 20).expect("valid buckets")
}

/// Registers a series without labels and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry.register(Box::new(metric.clone())).expect("unique metric");
        metric
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry.register(Box::new(metric.clone())).expect("unique metric");
        metric
    };
    let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
        let metric =
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
        registry.register(Box::new(metric.clone())).expect("unique metric");
        metric
    };
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("unique metric");
    Families {
        requests: counter(
            "edge_infer_requests_total",
            "HTTP requests by route and outcome (success, invalid, rejected, timeout, error)",
            &["route", "outcome"],
        ),
        request_duration: histogram(
            "edge_infer_request_duration_seconds",
            "Time from request arrival to response head, by route",
            &["route"],
            seconds_buckets(),
        ),
        route_instances_in_use: gauge(
            "edge_infer_route_instances_in_use",
            "Guest instances running now",
            &["route"],
        ),
        route_instances_capacity: gauge(
            "edge_infer_route_instances_capacity",
            "Guest instances the route may run at once (max_concurrency)",
            &["route"],
        ),
        route_queue_depth: gauge(
            "edge_infer_route_queue_depth",
            "Requests waiting for an instance",
            &["route"],
        ),
        guest_traps: counter("edge_infer_guest_traps_total", "Guest instances that trapped", &["route"]),
        instantiation_duration: histogram(
            "edge_infer_instance_creation_duration_seconds",
            "Time to make a fresh guest instance, for a request or ahead of one",
            &["route"],
            seconds_buckets(),
        ),
        ready_instance_hits: counter(
            "edge_infer_ready_instance_hits_total",
            "Requests that found an instance made ahead of them (ready_instances); the others made theirs on arrival",
            &["route"],
        ),
        guest_log_dropped: counter(
            "edge_infer_guest_log_lines_dropped_total",
            "Guest stderr lines not logged (over the per-request or per-route limit)",
            &["route"],
        ),
        model_requests: counter(
            "edge_infer_model_requests_total",
            "Compute requests by model and outcome (success, cache_hit, stale_hit, rejected, expired, cancelled, invalid, error)",
            &["model", "outcome"],
        ),
        model_executions: counter(
            "edge_infer_model_executions_total",
            "Model runs (a batch counts once)",
            &["model"],
        ),
        model_inferences: counter(
            "edge_infer_model_inferences_total",
            "Items inferred (every item of a batch counts)",
            &["model"],
        ),
        model_batch_size: histogram(
            "edge_infer_model_batch_size",
            "Items per model run",
            &["model"],
            exponential_buckets(1.0, 2.0, 11).expect("valid buckets"),
        ),
        model_queue_duration: histogram(
            "edge_infer_model_queue_duration_seconds",
            "Time a compute request waited in the model's queue",
            &["model"],
            seconds_buckets(),
        ),
        model_compute_duration: histogram(
            "edge_infer_model_compute_duration_seconds",
            "Time of one model run (one batch)",
            &["model"],
            seconds_buckets(),
        ),
        model_pending: gauge(
            "edge_infer_model_pending_requests",
            "Compute requests waiting in the model's queue",
            &["model"],
        ),
        model_max_batch: gauge(
            "edge_infer_model_max_batch_size",
            "Most items the batcher puts in one run, as configured or chosen at start-up (1: no batching)",
            &["model"],
        ),
        model_input_elements: counter(
            "edge_infer_model_input_elements_total",
            "Elements of the model's inputs by kind: real (from requests) or padding (added to batch requests of different lengths)",
            &["model", "kind"],
        ),
        model_queue_delay: {
            let metric = GaugeVec::new(
                Opts::new(
                    "edge_infer_model_queue_delay_seconds",
                    "How long the first request of a batch may now wait for more (adaptive: 0 without load; at most max_queue_delay_us and a recent run's time)",
                ),
                &["model"],
            )
            .expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        },
        model_backend: gauge(
            "edge_infer_model_backend_info",
            "1 for the backend that runs the model (tract, ort, ort-cuda)",
            &["model", "backend"],
        ),
        model_loads: counter(
            "edge_infer_model_loads_total",
            "Times the model was loaded (its engine and executors started): at start-up, in the background, or on first use after an eviction",
            &["model"],
        ),
        model_evictions: counter(
            "edge_infer_model_evictions_total",
            "Times the model was evicted (unloaded, idle, least recently used) to make room under server.model_memory_mib",
            &["model"],
        ),
        model_resident_bytes: gauge(
            "edge_infer_model_resident_bytes",
            "Memory the model holds while loaded (weights, sessions, arenas: the process's resident memory grew by this much when it loaded); 0 when not loaded",
            &["model"],
        ),
        model_memory_budget: registered(
            &registry,
            IntGauge::new(
                "edge_infer_model_memory_budget_bytes",
                "The node's memory budget for loaded models (server.model_memory_mib; 0: none)",
            ),
        ),
        model_memory_resident: registered(
            &registry,
            IntGauge::new(
                "edge_infer_model_memory_resident_bytes",
                "Memory the loaded models hold now, together",
            ),
        ),
        inference_requests: counter(
            "edge_infer_inference_requests_total",
            "Open Inference Protocol infer requests by protocol (rest, grpc) and outcome (success, invalid, rejected, timeout, error)",
            &["protocol", "outcome"],
        ),
        deploys: counter(
            "edge_infer_deploys_total",
            "Changes to what the node serves (deploys, rollbacks, deletes, model loads, the config file), by outcome (applied, unchanged, refused)",
            &["outcome"],
        ),
        gpu_memory_used: gauge(
            "edge_infer_gpu_memory_used_bytes",
            "Device memory in use on a GPU (all processes), from NVML",
            &["device", "name"],
        ),
        gpu_memory_total: gauge(
            "edge_infer_gpu_memory_total_bytes",
            "Device memory of a GPU, from NVML",
            &["device", "name"],
        ),
        model_cache: counter(
            "edge_infer_model_cache_lookups_total",
            "Result cache lookups by model and result (hit, miss)",
            &["model", "result"],
        ),
        connections_open: gauge(
            "edge_infer_http_connections_open",
            "Client connections open now, by listener (public, admin, grpc)",
            &["listener"],
        ),
        connections_closed: counter(
            "edge_infer_http_connections_closed_total",
            "Connections the node closed or refused, by listener and reason (header_timeout, idle, send_timeout, keepalive_timeout, per_address)",
            &["listener", "reason"],
        ),
        memory_budget: registered(
            &registry,
            IntGauge::new(
                "edge_infer_memory_budget_bytes",
                "The node's memory budget for requests (server.memory_budget_mib)",
            ),
        ),
        memory_in_use: registered(
            &registry,
            IntGauge::new(
                "edge_infer_memory_in_use_bytes",
                "Bytes requests hold against the memory budget now",
            ),
        ),
        memory_peak: registered(
            &registry,
            IntGauge::new(
                "edge_infer_memory_peak_bytes",
                "The most bytes requests held against the memory budget at once",
            ),
        ),
        memory_refusals: counter(
            "edge_infer_memory_refusals_total",
            "Requests refused because the memory budget was full, by where (rest, grpc, guest)",
            &["protocol"],
        ),
        tenant_requests: counter(
            "edge_infer_tenant_requests_total",
            "Requests admitted, by tenant",
            &["tenant"],
        ),
        tenant_refusals: counter(
            "edge_infer_tenant_refusals_total",
            "Requests refused with 429 by their tenant's own limits, by tenant and reason (concurrency, rate)",
            &["tenant", "reason"],
        ),
        tenant_in_flight: gauge(
            "edge_infer_tenant_requests_in_flight",
            "Requests in flight now, by tenant",
            &["tenant"],
        ),
        unauthenticated: registered(
            &registry,
            IntCounter::new(
                "edge_infer_unauthenticated_requests_total",
                "Requests refused with 401: no credentials where they are required",
            ),
        ),
        registry,
    }
});

/// The current value of every metric, in Prometheus text format.
pub fn render() -> String {
    let mut text = Vec::new();
    TextEncoder::new().encode(&FAMILIES.registry.gather(), &mut text).expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}

/// Why the node closed (or refused) a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionClosed {
    /// No TLS handshake, or no request head, within the header read timeout.
    HeaderTimeout,
    /// Nothing in flight and no request started for the header read timeout.
    Idle,
    /// A response waited for the client to take it for the send timeout.
    SendTimeout,
    /// An HTTP/2 keepalive ping went unanswered.
    KeepaliveTimeout,
    /// Refused at accept: its address had as many connections as allowed.
    PerAddress,
}

impl ConnectionClosed {
    fn label(self) -> &'static str {
        match self {
            ConnectionClosed::HeaderTimeout => "header_timeout",
            ConnectionClosed::Idle => "idle",
            ConnectionClosed::SendTimeout => "send_timeout",
            ConnectionClosed::KeepaliveTimeout => "keepalive_timeout",
            ConnectionClosed::PerAddress => "per_address",
        }
    }
}

/// One listener's series: connections open now, and those closed by the node, by reason.
pub struct ConnectionMetrics {
    listener: &'static str,
    pub open: IntGauge,
}

impl ConnectionMetrics {
    pub fn new(listener: &'static str) -> ConnectionMetrics {
        ConnectionMetrics { listener, open: FAMILIES.connections_open.with_label_values(&[listener]) }
    }

    /// Counts a connection the node closed or refused.
    pub fn closed(&self, reason: ConnectionClosed) {
        FAMILIES.connections_closed.with_label_values(&[self.listener, reason.label()]).inc();
    }
}

/// Sets the memory budget's gauges: its size, what is held now, the most ever held.
pub fn memory_budget(limit: usize, in_use: usize, peak: usize) {
    FAMILIES.memory_budget.set(limit as i64);
    FAMILIES.memory_in_use.set(in_use as i64);
    FAMILIES.memory_peak.set(peak as i64);
}

/// Counts a request refused because the memory budget was full, by where it was refused:
/// `rest`, `grpc` or `guest`.
pub fn memory_refused(place: &'static str) {
    FAMILIES.memory_refusals.with_label_values(&[place]).inc();
}

/// One tenant's series, resolved once.
pub struct TenantMetrics {
    /// Requests let in.
    pub requests: IntCounter,
    /// Requests refused by its `max_concurrency`, and by its rate.
    pub refused_concurrency: IntCounter,
    pub refused_rate: IntCounter,
    /// Requests in flight now (set when metrics are read).
    pub in_flight: IntGauge,
}

impl TenantMetrics {
    pub fn new(tenant: &str) -> TenantMetrics {
        TenantMetrics {
            requests: FAMILIES.tenant_requests.with_label_values(&[tenant]),
            refused_concurrency: FAMILIES.tenant_refusals.with_label_values(&[tenant, "concurrency"]),
            refused_rate: FAMILIES.tenant_refusals.with_label_values(&[tenant, "rate"]),
            in_flight: FAMILIES.tenant_in_flight.with_label_values(&[tenant]),
        }
    }
}

/// Counts a request refused for want of credentials.
pub fn unauthenticated() {
    FAMILIES.unauthenticated.inc();
}

/// Records which backend runs `model`.
pub fn model_backend(model: &str, backend: &str) {
    FAMILIES.model_backend.with_label_values(&[model, backend]).set(1);
}

/// Records the model memory budget (0: none) and what loaded models hold now.
pub fn model_memory(budget: u64, resident: u64) {
    FAMILIES.model_memory_budget.set(i64::try_from(budget).unwrap_or(i64::MAX));
    FAMILIES.model_memory_resident.set(i64::try_from(resident).unwrap_or(i64::MAX));
}

/// Counts one change to what the node serves: `applied`, `unchanged` or `refused`.
pub fn deploy(outcome: &str) {
    FAMILIES.deploys.with_label_values(&[outcome]).inc();
}

/// Records one GPU's memory.
pub fn gpu_memory(device: u32, name: &str, used: u64, total: u64) {
    let device = device.to_string();
    FAMILIES.gpu_memory_used.with_label_values(&[&device, name]).set(used as i64);
    FAMILIES.gpu_memory_total.with_label_values(&[&device, name]).set(total as i64);
}

/// How a compute request to a model ended.
#[derive(Clone, Copy, Debug)]
pub enum ModelOutcome {
    Success,
    CacheHit,
    StaleHit,
    Rejected,
    Expired,
    Cancelled,
    Invalid,
    Error,
}

/// One model's series.
#[derive(Clone)]
pub struct ModelMetrics {
    outcomes: [IntCounter; 8],
    pub executions: IntCounter,
    pub inferences: IntCounter,
    pub batch_size: prometheus::Histogram,
    pub queue_duration: prometheus::Histogram,
    pub compute_duration: prometheus::Histogram,
    pub pending: IntGauge,
    pub max_batch_size: IntGauge,
    pub real_elements: IntCounter,
    pub padding_elements: IntCounter,
    pub queue_delay: Gauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub loads: IntCounter,
    pub evictions: IntCounter,
    pub resident_bytes: IntGauge,
}

impl ModelMetrics {
    pub fn new(model: &str) -> ModelMetrics {
        let f = &*FAMILIES;
        let outcome = |name| f.model_requests.with_label_values(&[model, name]);
        ModelMetrics {
            outcomes: [
                outcome("success"),
                outcome("cache_hit"),
                outcome("stale_hit"),
                outcome("rejected"),
                outcome("expired"),
                outcome("cancelled"),
                outcome("invalid"),
                outcome("error"),
            ],
            executions: f.model_executions.with_label_values(&[model]),
            inferences: f.model_inferences.with_label_values(&[model]),
            batch_size: f.model_batch_size.with_label_values(&[model]),
            queue_duration: f.model_queue_duration.with_label_values(&[model]),
            compute_duration: f.model_compute_duration.with_label_values(&[model]),
            pending: f.model_pending.with_label_values(&[model]),
            max_batch_size: f.model_max_batch.with_label_values(&[model]),
            real_elements: f.model_input_elements.with_label_values(&[model, "real"]),
            padding_elements: f.model_input_elements.with_label_values(&[model, "padding"]),
            queue_delay: f.model_queue_delay.with_label_values(&[model]),
            cache_hits: f.model_cache.with_label_values(&[model, "hit"]),
            cache_misses: f.model_cache.with_label_values(&[model, "miss"]),
            loads: f.model_loads.with_label_values(&[model]),
            evictions: f.model_evictions.with_label_values(&[model]),
            resident_bytes: f.model_resident_bytes.with_label_values(&[model]),
        }
    }

    /// Counts one compute request's outcome.
    pub fn outcome(&self, outcome: ModelOutcome) {
        self.outcomes[outcome as usize].inc();
    }
}

/// How an HTTP request to a route ended, from its status.
/// The outcomes a request is counted under, in the order of [`request_outcome`]'s indices.
const REQUEST_OUTCOMES: [&str; 5] = ["success", "invalid", "rejected", "timeout", "error"];

/// Which of [`REQUEST_OUTCOMES`] a status counts as.
fn request_outcome(status: u16) -> usize {
    match status {
        // Refused for load (the node's, or the tenant's own limits): rejected.
        429 | 503 => 2,
        504 => 3,
        400..=499 => 1,
        500..=599 => 4,
        _ => 0,
    }
}

/// The protocols the Open Inference Protocol is served over.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    Rest,
    Grpc,
}

/// Infer requests by protocol and outcome, resolved once.
static PROTOCOL_OUTCOMES: LazyLock<[[IntCounter; 5]; 2]> = LazyLock::new(|| {
    ["rest", "grpc"].map(|protocol| {
        REQUEST_OUTCOMES.map(|outcome| FAMILIES.inference_requests.with_label_values(&[protocol, outcome]))
    })
});

/// Counts one Open Inference Protocol infer request of `protocol` by its (HTTP) status.
pub fn inference_request(protocol: Protocol, status: u16) {
    PROTOCOL_OUTCOMES[protocol as usize][request_outcome(status)].inc();
}

/// One route's series.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Requests by outcome, resolved once (see [`REQUEST_OUTCOMES`]).
    outcomes: [IntCounter; 5],
    pub duration: prometheus::Histogram,
    pub traps: IntCounter,
    pub instantiation: prometheus::Histogram,
    pub ready_instance_hits: IntCounter,
    pub log_lines_dropped: IntCounter,
    pub instances_in_use: IntGauge,
    pub instances_capacity: IntGauge,
    pub queue_depth: IntGauge,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let f = &*FAMILIES;
        RouteMetrics {
            outcomes: REQUEST_OUTCOMES.map(|outcome| f.requests.with_label_values(&[route, outcome])),
            duration: f.request_duration.with_label_values(&[route]),
            traps: f.guest_traps.with_label_values(&[route]),
            instantiation: f.instantiation_duration.with_label_values(&[route]),
            ready_instance_hits: f.ready_instance_hits.with_label_values(&[route]),
            log_lines_dropped: f.guest_log_dropped.with_label_values(&[route]),
            instances_in_use: f.route_instances_in_use.with_label_values(&[route]),
            instances_capacity: f.route_instances_capacity.with_label_values(&[route]),
            queue_depth: f.route_queue_depth.with_label_values(&[route]),
        }
    }

    /// Counts a finished request by its status.
    pub fn request(&self, status: u16) {
        self.outcomes[request_outcome(status)].inc();
    }
}
