"""A Python web application with its own routes, written for any `wasi:http/proxy` 0.2 host
and built without the edge-infer helper:
`componentize-py -d wit -w wasi:http/proxy@0.2.12 componentize app`. A test fixture for mount
points (`tests/mounts.rs`): it dispatches on the path it is handed, as if served at `/`.

- `GET /`: a greeting;
- `GET /items/<id>`: `{"item": id, "query": "..."}`;
- anything else: its own 404, `not found by the app: <path>`.
"""

import json

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import types


def route(path_with_query):
    path, _, query = path_with_query.partition("?")
    if path == "/":
        return 200, "text/plain", b"hello from python"
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "items":
        return 200, "application/json", json.dumps({"item": parts[1], "query": query}).encode()
    return 404, "text/plain", f"not found by the app: {path}".encode()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        status, content_type, body_bytes = route(request.path_with_query() or "/")
        response = types.OutgoingResponse(types.Fields.from_list([("content-type", content_type.encode())]))
        response.set_status_code(status)
        body = response.body()
        types.ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(body_bytes)
        types.OutgoingBody.finish(body, None)
