"""POST /digits-py: the digits guest in Python, built into a component by componentize-py.

Same contract as the Rust guest (`guest/digits`): `{"pixels": [64 numbers 0..16]}` answers
`{"label": n, "probabilities": [10]}`; `{"images": [[64 numbers], ...]}` answers a list of
those; malformed input gets 400 with the reason. The model runs through wasi:nn.
"""

import json
import struct

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import errors, graph, streams, tensor, types

PIXELS = 64
MAX_PIXEL = 16.0
CLASSES = 10
MAX_IMAGES = 1024
# Largest write the WASI output stream takes at once.
WRITE_CHUNK = 4096


class BadRequest(Exception):
    pass


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
        if not isinstance(request.method(), types.Method_Post):
            return respond(response_out, 405, {"error": "use POST with a JSON body"})
        try:
            images, single = parse_request(read_body(request))
        except BadRequest as error:
            return respond(response_out, 400, {"error": str(error)})
        try:
            probabilities = classify(images)
        except Err as failure:
            error = failure.value
            return respond(response_out, nn_status(error.code()), {"error": f"digits model: {error.data()}"})
        predictions = [prediction(probabilities[i:i + CLASSES]) for i in range(0, len(probabilities), CLASSES)]
        respond(response_out, 200, predictions[0] if single else predictions)


def read_body(request: types.IncomingRequest) -> bytes:
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err as error:
                if isinstance(error.value, streams.StreamError_Closed):
                    break
                raise BadRequest("reading the request body failed")
    return b"".join(chunks)


def parse_request(body: bytes):
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"malformed JSON: {error}")
    if not isinstance(value, dict):
        raise BadRequest('expected a JSON object with "pixels" or "images"')
    if ("pixels" in value) == ("images" in value):
        raise BadRequest('expected exactly one of "pixels" or "images"')
    if "pixels" in value:
        return parse_image(value["pixels"], "pixels"), True
    images = value["images"]
    if not isinstance(images, list):
        raise BadRequest('"images" must be an array of images')
    if not 1 <= len(images) <= MAX_IMAGES:
        raise BadRequest(f'"images" must hold 1 to {MAX_IMAGES} images, got {len(images)}')
    flat = []
    for index, image in enumerate(images):
        flat.extend(parse_image(image, f"images[{index}]"))
    return flat, False


def parse_image(value, field: str):
    if not isinstance(value, list):
        raise BadRequest(f"{field} must be an array of {PIXELS} numbers")
    if len(value) != PIXELS:
        raise BadRequest(f"{field} must hold {PIXELS} numbers, got {len(value)}")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise BadRequest(f"{field}[{index}] is not a number")
        if not 0 <= item <= MAX_PIXEL:
            raise BadRequest(f"{field}[{index}] = {item} is outside 0..{MAX_PIXEL:g}")
    return [float(item) for item in value]


def classify(images):
    count = len(images) // PIXELS
    data = struct.pack(f"<{len(images)}f", *images)
    pixels = tensor.Tensor([count, PIXELS], tensor.TensorType.FP32, data)
    model = graph.load_by_name("digits")
    context = model.init_execution_context()
    for name, output in context.compute([("pixels", pixels)]):
        if name == "probabilities":
            raw = output.data()
            return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    raise BadRequest("the digits model gave no probabilities")


def prediction(probabilities):
    label = max(range(len(probabilities)), key=lambda i: probabilities[i])
    return {"label": label, "probabilities": probabilities}


def nn_status(code: errors.ErrorCode) -> int:
    return {
        errors.ErrorCode.INVALID_ARGUMENT: 422,
        errors.ErrorCode.INVALID_ENCODING: 422,
        errors.ErrorCode.NOT_FOUND: 404,
        errors.ErrorCode.TOO_LARGE: 413,
        errors.ErrorCode.TIMEOUT: 504,
        errors.ErrorCode.SECURITY: 403,
    }.get(code, 500)


def respond(response_out: types.ResponseOutparam, status: int, value) -> None:
    body = json.dumps(value, separators=(",", ":")).encode()
    headers = types.Fields.from_list([("content-type", b"application/json"), ("content-length", str(len(body)).encode())])
    response = types.OutgoingResponse(headers)
    response.set_status_code(status)
    outgoing = response.body()
    types.ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(body), WRITE_CHUNK):
            stream.blocking_write_and_flush(body[start:start + WRITE_CHUNK])
    types.OutgoingBody.finish(outgoing, None)
