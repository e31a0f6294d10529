"""Helpers for edge-infer guests written in Python and built with componentize-py.

A guest is a `wasi:http` handler that may run models through `wasi:nn`. This module hides
the WASI plumbing that every guest repeats:

- `Handler`: the exported `incoming-handler`. Subclass it as `IncomingHandler` in your app
  module and write `respond(self, request) -> Response` (or return any JSON-able value):
  the body is read for you, and the response written in chunks the output stream accepts.
- `Request` (method, path, headers, body, `.json()`, and `.chunks()` to read the body as it
  arrives instead of whole) and `Response` (`Response.json(...)`, or
  `Response(status, content_type, body)`).
- Errors become JSON bodies `{"error": "..."}` like every other edge-infer error:
  `HttpError(status, message)` gives that status; a `wasi:nn` error the same status as the
  Rust SDK (`invalid-argument`/`invalid-encoding` 422, `not-found` 404, `too-large` 413,
  `timeout` 504, `security` 403, others 500); any other exception 500 (traceback on stderr,
  which the host logs).
- Tensors of every `wasi:nn` type: `tensor_f16`, `tensor_bf16`, `tensor_f32`, `tensor_f64`,
  `tensor_u8`, `tensor_i32`, `tensor_i64` (or `tensor_of(type, dims, values)`), read back with
  `to_f16` ... `to_i64` or `values_of(tensor)`; and `infer(model, {input: tensor})` whose
  result gives outputs by name (`outputs.f32("probabilities")`, `outputs.values("name")`).

Build with `componentize-py -d WIT -w edge-infer:guest/inference componentize -p . -p
/path/to/edge-infer/guest/sdk-py app -o app.wasm`; see guest/README.md.
"""

import json
import struct
import sys

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import errors, graph, streams, tensor, types

__all__ = [
    "Handler", "Request", "Response", "HttpError", "NnError", "Outputs",
    "infer", "tensor_of", "values_of", "nn_status", "nn_error_name",
    "tensor_f16", "tensor_bf16", "tensor_f32", "tensor_f64", "tensor_u8", "tensor_i32", "tensor_i64",
    "to_f16", "to_bf16", "to_f32", "to_f64", "to_u8", "to_i32", "to_i64",
]

# The most the request body reader asks for at once, and the most one
# `blocking-write-and-flush` may take (the WASI output stream accepts up to 4096 bytes).
READ_CHUNK = 65536
WRITE_CHUNK = 4096

_NN_STATUS = {
    errors.ErrorCode.INVALID_ARGUMENT: 422,
    errors.ErrorCode.INVALID_ENCODING: 422,
    errors.ErrorCode.NOT_FOUND: 404,
    errors.ErrorCode.TOO_LARGE: 413,
    errors.ErrorCode.TIMEOUT: 504,
    errors.ErrorCode.SECURITY: 403,
}


class HttpError(Exception):
    """Raise to answer with `status` and the body `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class NnError(HttpError):
    """A `wasi:nn` error, raised by `infer`: `code` is the WIT name (e.g. `not-found`),
    `data` the host's message; the status follows `nn_status`."""

    def __init__(self, code: errors.ErrorCode, data: str, context: str = ""):
        super().__init__(nn_status(code), f"{context}: {data}" if context else data)
        self.code = nn_error_name(code)
        self.data = data


def nn_status(code: errors.ErrorCode) -> int:
    """The HTTP status that fits a `wasi:nn` error code (the Rust SDK's table)."""
    return _NN_STATUS.get(code, 500)


def nn_error_name(code: errors.ErrorCode) -> str:
    """The WIT name of a `wasi:nn` error code, e.g. `invalid-argument`."""
    return code.name.lower().replace("_", "-")


def _nn_error(failure: BaseException):
    """The `wasi:nn` error inside `failure`, or None."""
    if isinstance(failure, Err) and isinstance(failure.value, errors.Error):
        return failure.value
    return None


_METHODS = {
    types.Method_Get: "GET", types.Method_Head: "HEAD", types.Method_Post: "POST",
    types.Method_Put: "PUT", types.Method_Delete: "DELETE", types.Method_Connect: "CONNECT",
    types.Method_Options: "OPTIONS", types.Method_Trace: "TRACE", types.Method_Patch: "PATCH",
}


class Request:
    """An incoming request.

    `method` ("POST"), `path` (with the query, e.g. "/digits?x=1"), `headers` (a dict of
    lower-case names; repeated headers joined with ", "), `body` (bytes: the whole body, read
    when first asked for), or `chunks()` to read the body as it arrives."""

    def __init__(self, method: str, path: str, incoming: types.IncomingRequest):
        self.method = method
        self.path = path
        self._incoming = incoming
        self._headers = None
        self._body = None
        self._body_taken = False

    @property
    def headers(self) -> dict:
        if self._headers is None:
            headers: dict = {}
            for key, value in self._incoming.headers().entries():
                key, text = key.lower(), value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return self._headers

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.chunks())
        return self._body

    def chunks(self, size: int = READ_CHUNK):
        """The body as it arrives, in pieces of at most `size` bytes, so a body too large for
        the guest's memory, or one it needs only parts of, need never be held whole. The body
        can be read once, by this or by `body`; a body that cannot be read raises
        `HttpError(400, ...)`."""
        if self._body_taken:
            raise HttpError(400, "the request body was already read")
        self._body_taken = True
        body = self._incoming.consume()
        with body.stream() as stream:
            while True:
                try:
                    yield stream.blocking_read(size)
                except Err as error:
                    if isinstance(error.value, streams.StreamError_Closed):
                        return
                    raise HttpError(400, "reading the request body failed") from None

    def json(self):
        """The body parsed as JSON; malformed JSON raises `HttpError(400, "malformed JSON: ...")`."""
        try:
            return json.loads(self.body)
        except ValueError as error:  # UnicodeDecodeError is a ValueError too
            raise HttpError(400, f"malformed JSON: {error}") from None

    def text(self) -> str:
        """The body decoded as UTF-8; invalid UTF-8 raises `HttpError(400, ...)`."""
        try:
            return self.body.decode()
        except UnicodeDecodeError as error:
            raise HttpError(400, f"the body is not UTF-8: {error}") from None


class Response:
    """A response: `Response(status, content_type, body_bytes)` or `Response.json(value)`."""

    def __init__(self, status: int = 200, content_type: str = "application/octet-stream",
                 body: bytes = b"", headers: dict | None = None):
        self.status = status
        self.content_type = content_type
        self.body = body
        self.headers = dict(headers or {})

    @classmethod
    def json(cls, value, status: int = 200) -> "Response":
        """`value` serialised as compact JSON."""
        return cls(status, "application/json", json.dumps(value, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str) -> "Response":
        """The body `{"error": message}`, as every edge-infer error is shaped."""
        return cls.json({"error": message}, status)


class Handler(exports.IncomingHandler):
    """The exported HTTP handler. In the app module:

        class IncomingHandler(Handler):
            def respond(self, request):
                return Response.json(...)

    (componentize-py looks for a class named `IncomingHandler` there.)"""

    def respond(self, request: Request):
        """Answer one request: a `Response`, or any value to answer as JSON with 200."""
        raise HttpError(501, "this guest does not implement respond()")

    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        try:
            answer = self.respond(_read_request(request))
            if not isinstance(answer, Response):
                answer = Response.json(answer)
        except HttpError as error:
            answer = Response.error(error.status, error.message)
        except Exception as failure:  # noqa: BLE001 - every failure must become a response
            nn_error = _nn_error(failure)
            if nn_error is not None:
                answer = Response.error(nn_status(nn_error.code()), nn_error.data())
            else:
                _log_exception(failure)
                answer = Response.error(500, f"{type(failure).__name__}: {failure}")
        _write_response(response_out, answer)


def _log_exception(failure: BaseException) -> None:
    """Writes the exception and where it was raised to stderr (the host's log). The
    `traceback` module would do it, but it is not in the component unless imported up
    front, and importing it adds most of a megabyte."""
    frames = []
    tb = failure.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    lines = ["Traceback (most recent call last):", *frames, f"{type(failure).__name__}: {failure}"]
    print("\n".join(lines), file=sys.stderr)


def _read_request(request: types.IncomingRequest) -> Request:
    method = request.method()
    name = method.value if isinstance(method, types.Method_Other) else _METHODS[type(method)]
    return Request(name, request.path_with_query() or "/", request)


def _write_response(response_out: types.ResponseOutparam, answer: Response) -> None:
    body = answer.body
    entries = [("content-type", answer.content_type.encode()), ("content-length", str(len(body)).encode())]
    entries += [(key, str(value).encode()) for key, value in answer.headers.items()]
    response = types.OutgoingResponse(types.Fields.from_list(entries))
    response.set_status_code(answer.status)
    outgoing = response.body()
    types.ResponseOutparam.set(response_out, Ok(response))
    try:
        with outgoing.write() as stream:
            for start in range(0, len(body), WRITE_CHUNK):
                stream.blocking_write_and_flush(body[start:start + WRITE_CHUNK])
    except Err:
        return  # the client went away: nothing is left to tell it
    types.OutgoingBody.finish(outgoing, None)


def _count(dims) -> int:
    count = 1
    for dim in dims:
        count *= dim
    return count


# How each tensor type's values are packed (little-endian `struct` codes); BF16 has none.
_CODES = {
    tensor.TensorType.FP16: "e", tensor.TensorType.FP32: "f", tensor.TensorType.FP64: "d",
    tensor.TensorType.U8: "B", tensor.TensorType.I32: "i", tensor.TensorType.I64: "q",
}
_SIZES = {
    tensor.TensorType.FP16: 2, tensor.TensorType.BF16: 2, tensor.TensorType.FP32: 4,
    tensor.TensorType.FP64: 8, tensor.TensorType.U8: 1, tensor.TensorType.I32: 4, tensor.TensorType.I64: 8,
}


def _bf16_bits(value: float) -> int:
    """The bfloat16 nearest `value` (ties to even), as its bits."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    if value != value:  # NaN stays a quiet NaN
        return (bits >> 16) | 0x40
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def tensor_of(ty: tensor.TensorType, dims, values) -> tensor.Tensor:
    """A tensor of type `ty` and dimensions `dims` (e.g. `[1, 64]`) holding `values` in
    row-major order: numbers, or the tensor's little-endian bytes as they are (`bytes`,
    `bytearray`, `memoryview`)."""
    dims = [int(dim) for dim in dims]
    count, size = _count(dims), _SIZES[ty]
    if isinstance(values, (bytes, bytearray, memoryview)):
        data = bytes(values)
        if len(data) != count * size:
            raise ValueError(f"a {ty.name} tensor of dimensions {dims} needs {count * size} bytes, got {len(data)}")
        return tensor.Tensor(dims, ty, data)
    values = list(values)
    if len(values) != count:
        raise ValueError(f"a tensor of dimensions {dims} needs {count} values, got {len(values)}")
    if ty == tensor.TensorType.BF16:
        data = struct.pack(f"<{count}H", *[_bf16_bits(float(v)) for v in values])
    elif ty in (tensor.TensorType.FP16, tensor.TensorType.FP32, tensor.TensorType.FP64):
        data = struct.pack(f"<{count}{_CODES[ty]}", *[float(v) for v in values])
    else:
        data = struct.pack(f"<{count}{_CODES[ty]}", *[int(v) for v in values])
    return tensor.Tensor(dims, ty, data)


def values_of(t: tensor.Tensor, ty: tensor.TensorType | None = None, what: str = "the tensor") -> list:
    """The values of tensor `t` as a flat list (floats or ints, by its type); with `ty`, a
    tensor of another type raises `HttpError(500, ...)`."""
    actual = t.ty()
    if ty is not None and actual != ty:
        raise HttpError(500, f"{what} is {actual.name}, not {ty.name}")
    raw = t.data()
    count = len(raw) // _SIZES[actual]
    if actual == tensor.TensorType.BF16:
        return [struct.unpack("<f", struct.pack("<I", bits << 16))[0] for bits in struct.unpack(f"<{count}H", raw)]
    return list(struct.unpack(f"<{count}{_CODES[actual]}", raw))


def tensor_f16(dims, values) -> tensor.Tensor:
    """An FP16 tensor (half precision; values rounded to the nearest half)."""
    return tensor_of(tensor.TensorType.FP16, dims, values)


def tensor_bf16(dims, values) -> tensor.Tensor:
    """A BF16 tensor (bfloat16; values rounded to the nearest)."""
    return tensor_of(tensor.TensorType.BF16, dims, values)


def tensor_f32(dims, values) -> tensor.Tensor:
    """An FP32 tensor of dimensions `dims` (e.g. `[1, 64]`) holding `values` in row-major order."""
    return tensor_of(tensor.TensorType.FP32, dims, values)


def tensor_f64(dims, values) -> tensor.Tensor:
    """An FP64 tensor."""
    return tensor_of(tensor.TensorType.FP64, dims, values)


def tensor_u8(dims, values) -> tensor.Tensor:
    """A U8 tensor (image bytes, for instance: pass `bytes` to use them as they are)."""
    return tensor_of(tensor.TensorType.U8, dims, values)


def tensor_i32(dims, values) -> tensor.Tensor:
    """An I32 tensor."""
    return tensor_of(tensor.TensorType.I32, dims, values)


def tensor_i64(dims, values) -> tensor.Tensor:
    """An I64 tensor (token ids, masks for text models) holding `values` in row-major order."""
    return tensor_of(tensor.TensorType.I64, dims, values)


def to_f16(t: tensor.Tensor, what: str = "the tensor") -> list:
    """The values of an FP16 tensor as floats (another type raises 500); `to_bf16`, `to_f32`,
    `to_f64`, `to_u8`, `to_i32` and `to_i64` likewise for theirs."""
    return values_of(t, tensor.TensorType.FP16, what)


def to_bf16(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.BF16, what)


def to_f32(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.FP32, what)


def to_f64(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.FP64, what)


def to_u8(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.U8, what)


def to_i32(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.I32, what)


def to_i64(t: tensor.Tensor, what: str = "the tensor") -> list:
    return values_of(t, tensor.TensorType.I64, what)


class Outputs:
    """A model's outputs by name: `outputs["name"]` (the tensor), `outputs.f32("name")`,
    `outputs.i64("name")`, `outputs.values("name")` (any type, as its type gives),
    `outputs.dims("name")`, `outputs.names()`. A name the model did
    not give raises `HttpError(500, "model X gave no output named Y")`."""

    def __init__(self, model: str, named):
        self.model = model
        self._tensors = dict(named)

    def names(self) -> list:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __getitem__(self, name: str) -> tensor.Tensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise HttpError(500, f"model {self.model} gave no output named {name}") from None

    def dims(self, name: str) -> list:
        return list(self[name].dimensions())

    def f32(self, name: str) -> list:
        return to_f32(self[name], f"output {name} of model {self.model}")

    def i64(self, name: str) -> list:
        return to_i64(self[name], f"output {name} of model {self.model}")

    def values(self, name: str) -> list:
        return values_of(self[name], None, f"output {name} of model {self.model}")


def infer(model: str, inputs: dict) -> Outputs:
    """Runs the model the route grants as `model` on `{input_name: tensor}`.

    A `wasi:nn` error raises `NnError` (an `HttpError`) with the message "`model` model: ..."
    and the status of `nn_status` (e.g. 404 for a model the route does not grant, 422 for
    inputs that do not fit the model)."""
    try:
        context = graph.load_by_name(model).init_execution_context()
        return Outputs(model, context.compute(list(inputs.items())))
    except Err as failure:
        nn_error = _nn_error(failure)
        if nn_error is None:
            raise
        raise NnError(nn_error.code(), nn_error.data(), f"{model} model") from None

