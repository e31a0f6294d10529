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
//! - `/test/nn/zeros/MODEL/INPUT/DIMS`: runs model MODEL on one float32 input named INPUT
//!   of shape DIMS (e.g. `4x256`) filled with zeros, and answers `{"dims": [..]}`, or the
//!   `wasi:nn` error with its fitting status (tests and benchmarks drive models with it);
//! - `/test/log/N`: writes N numbered lines to stderr and answers `{"logged": N}`;
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
                let result = graph::load(&[bytes], graph::GraphEncoding::Onnx, graph::ExecutionTarget::Cpu);
                respond_json(out, 200, &outcome(result.map(|_| ())));
            }
            "/nn/bad-input" => respond_json(out, 200, &bad_inputs()),
            other => {
                if let Some(name) = other.strip_prefix("/nn/load-by-name/") {
                    respond_json(out, 200, &outcome(graph::load_by_name(name).map(|_| ())));
                } else if let Some(spec) = other.strip_prefix("/nn/zeros/") {
                    match ZerosRequest::parse(spec) {
                        Some(request) => match request.run() {
                            Ok(()) => respond_json(out, 200, &json!({ "dims": request.dims })),
                            Err(error) => respond_nn_error(out, request.model, &error),
                        },
                        None => respond_error(out, 400, "expected /nn/zeros/MODEL/INPUT/DIMS"),
                    }
                } else if let Some(lines) = other.strip_prefix("/log/").and_then(|n| n.parse::<u32>().ok()) {
                    for line in 0..lines {
                        eprintln!("guest line {line}");
                    }
                    respond_json(out, 200, &json!({ "logged": lines }));
                } else if let Some(millis) = other.strip_prefix("/sleep/").and_then(|m| m.parse::<u64>().ok())
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

/// A model run on zeros: `MODEL/INPUT/DIMS`, DIMS like `4x256`.
struct ZerosRequest<'a> {
    model: &'a str,
    input: &'a str,
    dims: Vec<u32>,
}

impl<'a> ZerosRequest<'a> {
    fn parse(spec: &'a str) -> Option<ZerosRequest<'a>> {
        let mut parts = spec.split('/');
        let (model, input, dims) = (parts.next()?, parts.next()?, parts.next()?);
        let dims = dims.split('x').map(|d| d.parse().ok()).collect::<Option<Vec<u32>>>()?;
        Some(ZerosRequest { model, input, dims })
    }

    fn run(&self) -> Result<(), errors::Error> {
        let model = graph::load_by_name(self.model)?;
        let context = model.init_execution_context()?;
        let bytes = 4 * self.dims.iter().map(|&d| d as usize).product::<usize>();
        let input = tensor::Tensor::new(&self.dims, tensor::TensorType::Fp32, &vec![0u8; bytes]);
        context.compute(vec![(self.input.to_string(), input)]).map(|_| ())
    }
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
