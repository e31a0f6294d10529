//! A misbehaving guest for the integration tests: one action per path suffix.
//!
//! It is a test fixture, not an example. Mounted at `/test`, it does:
//! - `/test/spin`: loops forever (the host must cut it off at the route's deadline);
//! - `/test/trap`: traps (the host must answer 500 and keep serving);
//! - `/test/oom`: allocates until its memory limit stops it;
//! - `/test/hoard`: makes 1 MiB `wasi:nn` tensors and keeps them, until the host stops it;
//! - `/test/many-dims`: makes a tensor with a million dimensions and no data;
//! - `/test/handles`: makes `wasi:http` fields and keeps them, until the host stops it;
//! - `/test/header-hoard`: makes `wasi:http` fields of 120 KB of headers each and keeps them,
//!   until the host stops it;
//! - `/test/recurse`: recurses until the stack overflows;
//! - `/test/trap-mid-body`: sends the head and part of a chunked body, then traps;
//! - `/test/stream-forever`: sends a chunk every 10 ms until its deadline stops it;
//! - `/test/bytes/N`: answers N bytes (with a `content-length`);
//! - `/test/no-response`: returns without answering;
//! - `/test/storm`: runs the `digits` model on zeros in a loop until its deadline stops it;
//! - `/test/huge-header`: tries to set a 1 MiB response header (over wasi:http's field size
//!   limit: the host stops it), answering what happened if it gets the chance;
//! - `/test/nn/load-by-name/NAME`: loads model NAME and answers the outcome;
//! - `/test/nn/load-raw`: tries to load raw ONNX bytes (refused unless the route allows it);
//! - `/test/nn/bad-input`: sends the `digits` model a tensor of the wrong shape, of the wrong
//!   type, with the wrong name and with too few bytes, and answers the four error codes;
//! - `/test/nn/zeros/MODEL/INPUT/DIMS`: runs model MODEL on one float32 input named INPUT
//!   of shape DIMS (e.g. `4x256`) filled with zeros, and answers `{"dims": [..]}`, or the
//!   `wasi:nn` error with its fitting status (tests and benchmarks drive models with it);
//! - `/test/log/N`: writes N numbered lines to stderr and answers `{"logged": N}`;
//! - `/test/sleep/MS`: sleeps MS milliseconds (a host clock wait, not a busy loop), then
//!   answers `{"slept_ms": MS}`;
//! - `/test/body-ends`: reads the request body as a stream, holding 4 KiB at a time, and
//!   answers `{"bytes": N, "head": [first 8 bytes], "tail": [last 8 bytes]}`;
//! - `/test/credentials`: answers the tenant and credential headers it was given
//!   (`x-edge-tenant`, `x-api-key`, `authorization`), `null` for those it was not.
//!
//! `wasi:nn` outcomes are answered as `{"ok": bool, "code": "...", "message": "..."}`.

use edge_infer_guest::nn::{errors, graph, tensor};
use edge_infer_guest::{Error, Handler, Request, Response, nn_error_name};
use serde_json::{Value, json};
use wasip2::http::types::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

struct Testing;

wasip2::http::proxy::export!(Testing);

impl wasip2::exports::http::incoming_handler::Guest for Testing {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match request.path_with_query().as_deref() {
            Some("/test/trap-mid-body") => stream_chunks(out, Some(3)),
            Some("/test/stream-forever") => stream_chunks(out, None),
            Some("/test/no-response") => drop(out),
            _ => edge_infer_guest::serve::<Testing>(request, out),
        }
    }
}

/// Sends a head, then chunks every 10 ms: `limit` of them and a trap, or until stopped.
fn stream_chunks(out: ResponseOutparam, limit: Option<u32>) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("a new body has a stream");
    for chunk in 0.. {
        if limit == Some(chunk) {
            panic!("trapping mid-body after {chunk} chunks");
        }
        stream
            .blocking_write_and_flush(b"a chunk of a body that will not end well\n")
            .expect("the client is there");
        wasip2::clocks::monotonic_clock::subscribe_duration(10_000_000).block();
    }
}

impl Handler for Testing {
    fn handle(request: Request) -> Result<Response, Error> {
        let action = request.path().strip_prefix("/test").unwrap_or(request.path());
        match action {
            "/spin" => spin(),
            "/trap" => panic!("trapping on purpose"),
            "/oom" => exhaust_memory(),
            "/hoard" => hoard_tensors(),
            "/handles" => hoard_handles(),
            "/header-hoard" => hoard_headers(),
            "/many-dims" => {
                let tensor = tensor::Tensor::new(&vec![1; 1 << 20], tensor::TensorType::U8, &[]);
                Response::json(&json!({ "dimensions": tensor.dimensions().len() }))
            }
            "/recurse" => Response::json(&recurse(0)),
            "/storm" => compute_storm(),
            "/huge-header" => Response::json(&huge_header()),
            "/nn/load-raw" => {
                let bytes = b"not really a model".to_vec();
                let result = graph::load(&[bytes], graph::GraphEncoding::Onnx, graph::ExecutionTarget::Cpu);
                Response::json(&outcome(result.map(|_| ())))
            }
            "/nn/bad-input" => Response::json(&bad_inputs()),
            "/body-ends" => body_ends(&request),
            "/credentials" => Response::json(&json!({
                "tenant": request.header("x-edge-tenant"),
                "api_key": request.header("x-api-key"),
                "authorization": request.header("authorization"),
            })),
            other => {
                if let Some(name) = other.strip_prefix("/nn/load-by-name/") {
                    Response::json(&outcome(graph::load_by_name(name).map(|_| ())))
                } else if let Some(spec) = other.strip_prefix("/nn/zeros/") {
                    let request = ZerosRequest::parse(spec)
                        .ok_or(Error::bad_request("expected /nn/zeros/MODEL/INPUT/DIMS"))?;
                    request.run().map_err(|error| Error::from(error).context(request.model))?;
                    Response::json(&json!({ "dims": request.dims }))
                } else if let Some(lines) = other.strip_prefix("/log/").and_then(|n| n.parse::<u32>().ok()) {
                    for line in 0..lines {
                        eprintln!("guest line {line}");
                    }
                    Response::json(&json!({ "logged": lines }))
                } else if let Some(count) =
                    other.strip_prefix("/bytes/").and_then(|n| n.parse::<usize>().ok())
                {
                    Ok(Response::new(200, "application/octet-stream", vec![b'x'; count]))
                } else if let Some(millis) = other.strip_prefix("/sleep/").and_then(|m| m.parse::<u64>().ok())
                {
                    wasip2::clocks::monotonic_clock::subscribe_duration(millis * 1_000_000).block();
                    Response::json(&json!({ "slept_ms": millis }))
                } else {
                    Err(Error::new(404, format!("no test action {other}")))
                }
            }
        }
    }
}

/// The length and the first and last 8 bytes of the body, read 4 KiB at a time.
fn body_ends(request: &Request) -> Result<Response, Error> {
    let mut reader = request.body_reader()?;
    let mut buffer = [0u8; 4096];
    let (mut head, mut tail, mut total) = (Vec::<u8>::new(), Vec::<u8>::new(), 0usize);
    loop {
        let read =
            std::io::Read::read(&mut reader, &mut buffer).map_err(|e| Error::bad_request(e.to_string()))?;
        if read == 0 {
            break;
        }
        total += read;
        let piece = &buffer[..read];
        head.extend(piece.iter().take(8 - head.len()));
        tail.extend_from_slice(&piece[piece.len().saturating_sub(8)..]);
        tail.drain(..tail.len().saturating_sub(8));
    }
    Response::json(&json!({ "bytes": total, "head": head, "tail": tail }))
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

fn hoard_tensors() -> ! {
    let mut kept = Vec::new();
    let megabyte = vec![0u8; 1 << 20];
    loop {
        kept.push(tensor::Tensor::new(&[1 << 18], tensor::TensorType::Fp32, &megabyte));
    }
}

fn hoard_handles() -> ! {
    let mut kept = Vec::new();
    loop {
        kept.push(wasip2::http::types::Fields::new());
    }
}

fn hoard_headers() -> ! {
    let mut kept = Vec::new();
    let value = vec![b'x'; 60_000];
    loop {
        let fields = wasip2::http::types::Fields::new();
        // Each within wasi:http's limit for one `fields`; together, as much as it may hold.
        let _ = fields.append("x-hoard-1", &value);
        let _ = fields.append("x-hoard-2", &value);
        kept.push(fields);
    }
}

fn compute_storm() -> ! {
    let model = edge_infer_guest::Model::load("digits").expect("the digits model is granted");
    loop {
        let zeros = <tensor::Tensor as edge_infer_guest::TensorExt>::from_f32(&[64, 64], &[0.0; 64 * 64]);
        // Errors (a full queue ends the request; a deadline is a timeout) are the host's to give.
        let _ = model.compute([("pixels", zeros)]);
    }
}

fn huge_header() -> Value {
    let headers = Fields::new();
    match headers.append("x-huge", &vec![b'h'; 1 << 20]) {
        Ok(()) => json!({ "refused": false }),
        Err(error) => json!({ "refused": true, "error": format!("{error:?}") }),
    }
}

fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 32]);
    if depth == u64::MAX { frame[0] } else { recurse(depth + 1).wrapping_add(frame[31]) }
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
