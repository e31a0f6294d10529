"""A standard `wasi:http/proxy` component in Python, built without the edge-infer helper:
`componentize-py -d wit -w wasi:http/proxy@0.2.12 componentize app`. A test fixture: it tries
to read a file, read the environment and call out over HTTP, and answers what happened:
`{"env_vars": n, "file": "...", "outbound": "..."}`.
"""

import json
import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, types


def read_file():
    try:
        with open("/etc/hostname") as file:
            return f"read {len(file.read())} bytes"
    except OSError as error:
        return f"refused: {error}"


def outbound():
    request = types.OutgoingRequest(types.Fields())
    request.set_scheme(types.Scheme_Http())
    request.set_authority("example.com")
    request.set_path_with_query("/")
    try:
        pending = outgoing_handler.handle(request, None)
    except Err as error:
        return f"refused: {error.value}"
    pending.subscribe().block()
    result = pending.get()
    if isinstance(result, Ok) and isinstance(result.value, Ok):
        return f"reached: {result.value.value.status()}"
    return f"refused: {result}"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        answer = {"env_vars": len(os.environ), "file": read_file(), "outbound": outbound()}
        response = types.OutgoingResponse(types.Fields.from_list([("content-type", b"application/json")]))
        body = response.body()
        types.ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(json.dumps(answer).encode())
        types.OutgoingBody.finish(body, None)
