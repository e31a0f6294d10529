//! The edge-infer guest SDK: an HTTP handler that returns `Result`, and models through
//! `wasi:nn` in a few calls.
//!
//! A guest is a `wasi:http/proxy` component that may call models through `wasi:nn`. With this
//! crate it is a type that implements [`Handler`], exported with [`export!`] (or, for a
//! `wasi:http` 0.3 guest with an async handler and streamed bodies, `p3::Handler` and
//! `export_p3!`, with the feature `p3`):
//!
//! ```no_run
//! use edge_infer_guest::{Error, Handler, Request, Response, Tensor, TensorExt, infer};
//!
//! struct Digits;
//! edge_infer_guest::export!(Digits);
//!
//! impl Handler for Digits {
//!     fn handle(request: Request) -> Result<Response, Error> {
//!         let pixels: Vec<f32> = request.json()?; // malformed JSON: 400
//!         if pixels.len() != 64 {
//!             return Err(Error::bad_request("expected 64 numbers"));
//!         }
//!         let outputs = infer("digits", [("pixels", Tensor::from_f32(&[1, 64], &pixels))])?;
//!         Response::json(&outputs.f32("probabilities")?)
//!     }
//! }
//! ```
//!
//! - [`Request`]: method, path, headers and the whole body (read when first asked for),
//!   with [`Request::json`], or the body as a stream ([`Request::body_reader`]);
//! - [`Response`]: a status, a content type and a body; [`Response::json`] for JSON;
//! - [`Error`]: a status and a message, answered as `{"error": "..."}` like every other
//!   edge-infer error. A `wasi:nn` error converts with `?` into the status that fits it
//!   ([`nn_error_status`]);
//! - [`infer`] / [`Model`]: load a model the route grants and run it; [`Outputs`] finds an
//!   output by name; [`TensorExt`] builds tensors of every `wasi:nn` type from slices of
//!   its [`Element`]s (`f32`, `f64`, [`F16`], [`Bf16`], `u8`, `i32`, `i64`) and reads them back;
//! - [`nn`]: the raw `wasi:nn@0.2.0-rc-2024-10-28` bindings, generated from the WIT vendored
//!   in this crate (`wit/nn.wit`), so the crate builds wherever it is.

use std::cell::OnceCell;
use std::fmt;
use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// `wasi:nn` bindings: `nn::graph`, `nn::tensor`, `nn::inference`, `nn::errors`.
pub mod nn {
    wit_bindgen::generate!({
        path: "wit/nn.wit",
        world: "ml",
    });
    pub use self::wasi::nn::*;
}

pub use nn::tensor::{Tensor, TensorType};

#[cfg(feature = "p3")]
pub mod p3;

/// The name of a `wasi:http` method (0.2's and 0.3's enums have the same cases), upper case.
macro_rules! method_name {
    ($method:expr, $enum:path) => {{
        use $enum as Method;
        match $method {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other,
        }
    }};
}
pub(crate) use method_name;

/// A guest's request handler. A fresh instance serves each request, so it keeps no state.
pub trait Handler {
    /// Answers one request; an `Err` is answered with its status and `{"error": message}`.
    fn handle(request: Request) -> Result<Response, Error>;
}

/// Exports a [`Handler`] as the component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! export {
    ($handler:ident) => {
        impl $crate::__private::IncomingHandler for $handler {
            fn handle(request: $crate::__private::IncomingRequest, out: $crate::__private::ResponseOutparam) {
                $crate::serve::<$handler>(request, out)
            }
        }
        $crate::__private::wasip2::http::proxy::export!($handler);
    };
}

/// What [`export!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wasip2;
    pub use wasip2::exports::http::incoming_handler::Guest as IncomingHandler;
    pub use wasip2::http::types::{IncomingRequest, ResponseOutparam};
}

/// Answers one request with `H`: what [`export!`] does for every request. A guest that
/// answers some requests itself (to stream a body, say) exports its own handler and hands
/// the others to this.
pub fn serve<H: Handler>(request: IncomingRequest, out: ResponseOutparam) {
    let response = H::handle(Request::new(request)).unwrap_or_else(Error::into_response);
    response.send(out);
}

/// An HTTP request. Its headers and body are read from the host when first asked for, so a
/// handler that needs neither pays for neither.
pub struct Request {
    incoming: IncomingRequest,
    method: String,
    path: String,
    headers: OnceCell<Vec<(String, Vec<u8>)>>,
    body: OnceCell<Vec<u8>>,
}

/// The first value of header `name` (case-insensitive) among `headers`, if it is UTF-8.
fn first_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

impl Request {
    fn new(incoming: IncomingRequest) -> Request {
        let method = method_name!(incoming.method(), Method);
        let path = incoming.path_with_query().unwrap_or_else(|| "/".to_string());
        Request { incoming, method, path, headers: OnceCell::new(), body: OnceCell::new() }
    }

    /// The method, upper case: `GET`, `POST`, ...
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path with its query, as the route hands it: the whole path, or the path below the
    /// route's mount with its `strip_mount`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The first value of header `name` (case-insensitive), if it is present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(self.headers.get_or_init(|| self.incoming.headers().entries()), name)
    }

    /// The whole body; one that cannot be read is a 400.
    pub fn body(&self) -> Result<&[u8], Error> {
        if let Some(body) = self.body.get() {
            return Ok(body);
        }
        let mut bytes = Vec::new();
        self.body_reader()?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::bad_request(format!("reading the request body: {e}")))?;
        Ok(self.body.get_or_init(|| bytes))
    }

    /// The body as a stream ([`std::io::Read`]), read as the handler asks for it: a body too
    /// large for the guest's memory, or one it needs only parts of, need never be held whole.
    /// The body can be taken once, by this or by [`Request::body`].
    pub fn body_reader(&self) -> Result<BodyReader, Error> {
        let body =
            self.incoming.consume().map_err(|()| Error::bad_request("request body already consumed"))?;
        let stream = body.stream().map_err(|()| Error::bad_request("request body stream unavailable"))?;
        Ok(BodyReader { stream, _body: body })
    }

    /// The body parsed as JSON; malformed JSON is a 400 saying what is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.body()?).map_err(|e| Error::bad_request(format!("malformed JSON: {e}")))
    }

    /// `Ok` if the method is `method`, else a 405 with `hint` as its message.
    pub fn expect_method(&self, method: &str, hint: &str) -> Result<(), Error> {
        if self.method == method { Ok(()) } else { Err(Error::new(405, hint)) }
    }
}

/// A request body being read as a stream: see [`Request::body_reader`].
pub struct BodyReader {
    // Declared first so it is dropped before the body it belongs to.
    stream: wasip2::io::streams::InputStream,
    _body: wasip2::http::types::IncomingBody,
}

impl Read for BodyReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        Read::read(&mut self.stream, buffer)
    }
}

/// An HTTP response: status, content type, other headers and body.
pub struct Response {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status`, a content type and a body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type: content_type.to_string(), headers: Vec::new(), body: body.into() }
    }

    /// A 200 with `value` serialised as JSON.
    pub fn json(value: &impl Serialize) -> Result<Response, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::new(500, format!("serialising the response: {e}")))?;
        Ok(Response::new(200, "application/json", body))
    }

    /// The same response with another status.
    pub fn with_status(self, status: u16) -> Response {
        Response { status, ..self }
    }

    /// The same response with one more header. A name or value that HTTP does not allow
    /// makes the host answer 500 instead.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn send(self, out: ResponseOutparam) {
        let headers = Fields::new();
        // Both header values are valid by construction, so `append` cannot fail here.
        let _ = headers.append("content-type", self.content_type.as_bytes());
        let _ = headers.append("content-length", self.body.len().to_string().as_bytes());
        for (name, value) in &self.headers {
            if headers.append(name, value.as_bytes()).is_err() {
                let message = format!("the guest set a header HTTP does not allow: {name:?}");
                return Response::new(
                    500,
                    "application/json",
                    serde_json::json!({ "error": message }).to_string(),
                )
                .send(out);
            }
        }
        let response = OutgoingResponse::new(headers);
        // A status outside 100..=999 is refused; the host then answers 500.
        let _ = response.set_status_code(self.status);
        let outgoing = response.body().expect("a new response has a body");
        ResponseOutparam::set(out, Ok(response));
        {
            let mut stream = outgoing.write().expect("a new body has a stream");
            // A failed write means the client went away: nothing is left to tell it.
            let _ = stream.write_all(&self.body).and_then(|()| Write::flush(&mut stream));
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// A failed request: answered with `status` and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error answered with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    /// A 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(400, message)
    }

    /// The status it is answered with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, its message prefixed with `context: `.
    pub fn context(self, context: &str) -> Error {
        Error { message: format!("{context}: {}", self.message), ..self }
    }

    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        Response::new(self.status, "application/json", body)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for Error {}

impl From<nn::errors::Error> for Error {
    fn from(error: nn::errors::Error) -> Error {
        Error::new(nn_error_status(error.code()), error.data())
    }
}

/// The HTTP status that fits a `wasi:nn` error returned by the host.
pub fn nn_error_status(code: nn::errors::ErrorCode) -> u16 {
    use nn::errors::ErrorCode;
    match code {
        ErrorCode::InvalidArgument | ErrorCode::InvalidEncoding => 422,
        ErrorCode::NotFound => 404,
        ErrorCode::TooLarge => 413,
        ErrorCode::Timeout => 504,
        ErrorCode::Security => 403,
        ErrorCode::RuntimeError | ErrorCode::UnsupportedOperation | ErrorCode::Unknown => 500,
    }
}

/// The WIT name of a `wasi:nn` error code, e.g. `invalid-argument`.
pub fn nn_error_name(code: nn::errors::ErrorCode) -> &'static str {
    use nn::errors::ErrorCode;
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

/// Loads model `model` and runs it once on `inputs` (input name, tensor).
///
/// Errors carry the model's name: `digits model: ...`.
pub fn infer<'a>(model: &str, inputs: impl IntoIterator<Item = (&'a str, Tensor)>) -> Result<Outputs, Error> {
    Model::load(model)?.compute(inputs)
}

/// A model the route grants, with an execution context to run it (several times if needed).
pub struct Model {
    name: String,
    // Declared first so it is dropped before the graph it belongs to.
    context: nn::inference::GraphExecutionContext,
    _graph: nn::graph::Graph,
}

impl Model {
    /// Loads model `name`; a model the route does not grant is a 404.
    pub fn load(name: &str) -> Result<Model, Error> {
        let in_context = |error: nn::errors::Error| Error::from(error).context(&format!("{name} model"));
        let graph = nn::graph::load_by_name(name).map_err(in_context)?;
        let context = graph.init_execution_context().map_err(in_context)?;
        Ok(Model { name: name.to_string(), context, _graph: graph })
    }

    /// Runs the model on `inputs` (input name, tensor) and returns its outputs.
    pub fn compute<'a>(&self, inputs: impl IntoIterator<Item = (&'a str, Tensor)>) -> Result<Outputs, Error> {
        let inputs = inputs.into_iter().map(|(name, tensor)| (name.to_string(), tensor)).collect();
        match self.context.compute(inputs) {
            Ok(outputs) => Ok(Outputs { model: self.name.clone(), outputs }),
            Err(error) => Err(Error::from(error).context(&format!("{} model", self.name))),
        }
    }
}

/// A model's outputs, found by name.
pub struct Outputs {
    model: String,
    outputs: Vec<(String, Tensor)>,
}

impl Outputs {
    /// The output named `name`; a model without it is a 500 naming the outputs it has.
    pub fn get(&self, name: &str) -> Result<&Tensor, Error> {
        self.outputs.iter().find(|(output, _)| output == name).map(|(_, tensor)| tensor).ok_or_else(|| {
            let names: Vec<&str> = self.outputs.iter().map(|(output, _)| output.as_str()).collect();
            Error::new(
                500,
                format!("model {} gave no output named {name} (it gave {})", self.model, names.join(", ")),
            )
        })
    }

    /// The `f32` values of output `name`.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        self.get(name)?.to_f32()
    }

    /// The `i64` values of output `name`.
    pub fn i64(&self, name: &str) -> Result<Vec<i64>, Error> {
        self.get(name)?.to_i64()
    }

    /// The values of output `name` as `T`, any [`Element`] (`i32`, `u8`, `f64`, [`F16`], ...).
    pub fn values<T: Element>(&self, name: &str) -> Result<Vec<T>, Error> {
        self.get(name)?.to_values()
    }
}

/// A Rust type a `wasi:nn` tensor can hold: `f32` (`FP32`), `f64` (`FP64`), [`F16`] (`FP16`),
/// [`Bf16`] (`BF16`), `u8` (`U8`), `i32` (`I32`) and `i64` (`I64`), one for each tensor type.
pub trait Element: Copy {
    /// The tensor type of its values.
    const TYPE: TensorType;
    /// Bytes per value.
    const SIZE: usize;
    /// Appends the value's little-endian bytes.
    fn put(self, bytes: &mut Vec<u8>);
    /// The value of `SIZE` little-endian bytes.
    fn take(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($rust:ty, $type:ident) => {
        impl Element for $rust {
            const TYPE: TensorType = TensorType::$type;
            const SIZE: usize = std::mem::size_of::<$rust>();
            fn put(self, bytes: &mut Vec<u8>) {
                bytes.extend_from_slice(&self.to_le_bytes());
            }
            fn take(bytes: &[u8]) -> Self {
                <$rust>::from_le_bytes(bytes.try_into().expect("SIZE bytes"))
            }
        }
    };
}
element!(f32, Fp32);
element!(f64, Fp64);
element!(u8, U8);
element!(i32, I32);
element!(i64, I64);
element!(F16, Fp16);
element!(Bf16, Bf16);

/// An IEEE 754 half-precision value (`FP16`), as its bits; converts from and to `f32`
/// (rounding to the nearest, ties to even).
///
/// ```
/// use edge_infer_guest::F16;
/// assert_eq!(F16::from(1.0).0, 0x3c00);
/// assert_eq!(F16::from(-2.0).0, 0xc000);
/// assert_eq!(F16::from(65504.0).0, 0x7bff); // the largest half
/// assert_eq!(F16::from(65520.0).0, 0x7c00); // halfway to the next: rounds to infinity
/// assert_eq!(F16::from(5.960_464_5e-8).0, 0x0001); // the least subnormal
/// assert_eq!(F16::from(1.0 + 1.0 / 2048.0).0, 0x3c00); // a tie rounds to even
/// assert!(f32::from(F16::from(f32::NAN)).is_nan());
/// // Every finite half survives the round trip through f32.
/// for bits in (0..0x7c00u16).chain(0x8000..0xfc00) {
///     assert_eq!(F16::from(f32::from(F16(bits))).0, bits);
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct F16(pub u16);

/// A bfloat16 value (`BF16`: the top half of an `f32`), as its bits; converts from and to
/// `f32` (rounding to the nearest, ties to even).
///
/// ```
/// use edge_infer_guest::Bf16;
/// assert_eq!(Bf16::from(1.0).0, 0x3f80);
/// assert_eq!(f32::from(Bf16(0xc040)), -3.0);
/// assert_eq!(Bf16::from(f32::from_bits(0x3f80_8000)).0, 0x3f80); // a tie rounds to even
/// assert_eq!(Bf16::from(f32::from_bits(0x3f81_8000)).0, 0x3f82);
/// assert!(f32::from(Bf16::from(f32::NAN)).is_nan());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bf16(pub u16);

impl F16 {
    fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }
    fn from_le_bytes(bytes: [u8; 2]) -> F16 {
        F16(u16::from_le_bytes(bytes))
    }
}

impl Bf16 {
    fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }
    fn from_le_bytes(bytes: [u8; 2]) -> Bf16 {
        Bf16(u16::from_le_bytes(bytes))
    }
}

impl From<f32> for F16 {
    fn from(value: f32) -> F16 {
        let bits = value.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exponent = ((bits >> 23) & 0xff) as i32;
        let mantissa = bits & 0x7f_ffff;
        if exponent == 0xff {
            // Infinity stays infinity; a NaN stays a (quiet) NaN.
            let nan = if mantissa != 0 { 0x200 | (mantissa >> 13) as u16 } else { 0 };
            return F16(sign | 0x7c00 | nan);
        }
        let half_exponent = exponent - 127 + 15;
        if half_exponent >= 0x1f {
            return F16(sign | 0x7c00);
        }
        if half_exponent <= 0 {
            // A subnormal half, or zero: the value in units of 2^-24, rounded.
            if half_exponent < -10 {
                return F16(sign);
            }
            let full = mantissa | 0x80_0000;
            let shift = (14 - half_exponent) as u32;
            let rounded = (full + (1 << (shift - 1)) - 1 + ((full >> shift) & 1)) >> shift;
            return F16(sign | rounded as u16);
        }
        let kept = mantissa >> 13;
        let rest = mantissa & 0x1fff;
        let mut half = u32::from(sign) | ((half_exponent as u32) << 10) | kept;
        // Rounding up may carry into the exponent: the next power of two, or infinity.
        if rest > 0x1000 || (rest == 0x1000 && kept & 1 == 1) {
            half += 1;
        }
        F16(half as u16)
    }
}

impl From<F16> for f32 {
    fn from(value: F16) -> f32 {
        let sign = u32::from(value.0 & 0x8000) << 16;
        let exponent = u32::from((value.0 >> 10) & 0x1f);
        let mantissa = u32::from(value.0 & 0x3ff);
        match exponent {
            0 => {
                let magnitude = mantissa as f32 / (1u32 << 24) as f32;
                if sign == 0 { magnitude } else { -magnitude }
            }
            0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
            _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
        }
    }
}

impl From<f32> for Bf16 {
    fn from(value: f32) -> Bf16 {
        let bits = value.to_bits();
        if value.is_nan() {
            return Bf16((bits >> 16) as u16 | 0x40);
        }
        let rounding = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(rounding) >> 16) as u16)
    }
}

impl From<Bf16> for f32 {
    fn from(value: Bf16) -> f32 {
        f32::from_bits(u32::from(value.0) << 16)
    }
}

/// Tensors from and to Rust slices: row-major, little-endian, as `wasi:nn` exchanges them.
pub trait TensorExt: Sized {
    /// A tensor of shape `dims` holding `values`, of the tensor type of `T` (any [`Element`]).
    fn from_values<T: Element>(dims: &[u32], values: &[T]) -> Self;
    /// The values of a tensor of `T`'s tensor type; another type is a 500.
    fn to_values<T: Element>(&self) -> Result<Vec<T>, Error>;
    /// A `fp32` tensor of shape `dims` holding `values`.
    fn from_f32(dims: &[u32], values: &[f32]) -> Self {
        Self::from_values(dims, values)
    }
    /// An `i64` tensor of shape `dims` holding `values`.
    fn from_i64(dims: &[u32], values: &[i64]) -> Self {
        Self::from_values(dims, values)
    }
    /// The values of a `fp32` tensor; another type is a 500.
    fn to_f32(&self) -> Result<Vec<f32>, Error> {
        self.to_values()
    }
    /// The values of an `i64` tensor; another type is a 500.
    fn to_i64(&self) -> Result<Vec<i64>, Error> {
        self.to_values()
    }
}

impl TensorExt for Tensor {
    fn from_values<T: Element>(dims: &[u32], values: &[T]) -> Tensor {
        let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
        for value in values {
            value.put(&mut bytes);
        }
        Tensor::new(dims, T::TYPE, &bytes)
    }

    fn to_values<T: Element>(&self) -> Result<Vec<T>, Error> {
        expect_type(self, T::TYPE)?;
        Ok(self.data().chunks_exact(T::SIZE).map(T::take).collect())
    }
}

fn expect_type(tensor: &Tensor, expected: TensorType) -> Result<(), Error> {
    let actual = tensor.ty();
    if actual == expected {
        Ok(())
    } else {
        Err(Error::new(500, format!("expected a {expected:?} tensor, the model gave {actual:?}")))
    }
}
