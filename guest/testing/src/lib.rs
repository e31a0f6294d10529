//! A misbehaving guest for the integration tests: one action per path suffix.
//!
//! It is a test fixture, not an example. Mounted at `/test`, it does:
//! - `/test/spin`: loops forever (the host must cut it off at the route's deadline);
//! - `/test/trap`: traps (the host must answer 500 and keep serving);
//! - `/test/oom`: allocates until its memory limit stops it;
//! - `/test/nn/load-by-name/NAME`: loads model NAME and answers the outcome;
//! - `/test/nn/load-raw`: tries to load raw ONNX bytes (refused unless the route allows it);
//! - `/test/nn/bad-input`: sends the `digits` model a tensor of the wrong shape, of the wrong
//!   type, with the wrong name and with too few bytes, and answers the four error codes;
//! - `/test/nn/slow/ROWS`: runs the `slow` model (tests/models/slow.onnx) on ROWS rows of
//!   zeros and answers `{"rows": ROWS}`, or the `wasi:nn` error with its fitting status;
//! - `/test/sleep/MS`: sleeps MS milliseconds (a host clock wait, not a busy loop), then
//!   answers `{"slept_ms": MS}`.
//!
//! `wasi:nn` outcomes are answered as `{"ok": bool, "code": "...", "message": "..."}`.

use edge_infer_guest::nn::{errors, graph, tensor};
use edge_infer_guest::{nn_error_name, respond_error, respond_json, respond_nn_error};
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Testing;

wasip2::http::proxy::export!(Testing);

impl wasip2::exports::http::incoming_handler::Guest for Testing {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let action = path.strip_prefix("/test").unwrap_or(&path);
        match action {
            "/spin" => spin(),
            "/trap" => panic!("trapping on purpose"),
            "/oom" => exhaust_memory(),
            "/nn/load-raw" => {
                let bytes = b"not really a model".to_vec();
                let result = graph::load(
                    &[bytes],
                    graph::GraphEncoding::Onnx,
                    graph::ExecutionTarget::Cpu,
                );
                respond_json(out, 200, &outcome(result.map(|_| ())));
            }
            "/nn/bad-input" => respond_json(out, 200, &bad_inputs()),
            other => {
                if let Some(name) = other.strip_prefix("/nn/load-by-name/") {
                    respond_json(out, 200, &outcome(graph::load_by_name(name).map(|_| ())));
                } else if let Some(rows) =
                    other.strip_prefix("/nn/slow/").and_then(|r| r.parse().ok())
                {
                    match run_slow(rows) {
                        Ok(()) => respond_json(out, 200, &json!({ "rows": rows })),
                        Err(error) => respond_nn_error(out, "slow model", &error),
                    }
                } else if let Some(millis) = other
                    .strip_prefix("/sleep/")
                    .and_then(|m| m.parse::<u64>().ok())
                {
                    wasip2::clocks::monotonic_clock::subscribe_duration(millis * 1_000_000).block();
                    respond_json(out, 200, &json!({ "slept_ms": millis }));
                } else {
                    respond_error(out, 404, &format!("no test action {other}"));
                }
            }
        }
    }
}

fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

/// Width of the `slow` model's rows.
const SLOW_WIDTH: u32 = 256;

fn run_slow(rows: u32) -> Result<(), errors::Error> {
    let model = graph::load_by_name("slow")?;
    let context = model.init_execution_context()?;
    let zeros = vec![0u8; (rows * SLOW_WIDTH * 4) as usize];
    let input = tensor::Tensor::new(&[rows, SLOW_WIDTH], tensor::TensorType::Fp32, &zeros);
    context.compute(vec![("x".to_string(), input)]).map(|_| ())
}

fn bad_inputs() -> Value {
    let Ok(model) = graph::load_by_name("digits") else {
        return json!({ "error": "the digits model is not granted to this route" });
    };
    let run = |name: &str, dims: &[u32], ty: tensor::TensorType, data: Vec<u8>| {
        let context = model.init_execution_context()?;
        let input = tensor::Tensor::new(dims, ty, &data);
        context.compute(vec![(name.to_string(), input)]).map(|_| ())
    };
    json!({
        "wrong_shape": outcome(run("pixels", &[1, 63], tensor::TensorType::Fp32, vec![0; 63 * 4])),
        "wrong_type": outcome(run("pixels", &[1, 64], tensor::TensorType::I32, vec![0; 64 * 4])),
        "wrong_name": outcome(run("image", &[1, 64], tensor::TensorType::Fp32, vec![0; 64 * 4])),
        "wrong_length": outcome(run("pixels", &[1, 64], tensor::TensorType::Fp32, vec![0; 10])),
    })
}

fn outcome(result: Result<(), errors::Error>) -> Value {
    match result {
        Ok(()) => json!({ "ok": true }),
        Err(error) => json!({
            "ok": false,
            "code": nn_error_name(error.code()),
            "message": error.data(),
        }),
    }
}
