"""A test fixture for tests/languages.rs: reads the body with `request.chunks()` and answers its
length and ends, with tensors of five wasi:nn types made and read back through the host."""

from edge_infer_guest import (
    Handler, tensor_bf16, tensor_f16, tensor_f64, tensor_i32, tensor_u8, to_bf16, to_f16, to_f64, to_i32, to_u8,
)


class IncomingHandler(Handler):
    def respond(self, request):
        total, head, tail = 0, b"", b""
        for piece in request.chunks(4096):
            total += len(piece)
            if len(head) < 8:
                head += piece[: 8 - len(head)]
            tail = (tail + piece)[-8:]
        types = {
            "i32": to_i32(tensor_i32([2], [7, -9])),
            "u8": to_u8(tensor_u8([3], b"abc")),
            "f16": to_f16(tensor_f16([2], [0.5, 65504])),
            "bf16": to_bf16(tensor_bf16([1], [-3.0])),
            "f64": to_f64(tensor_f64([1], [0.1])),
        }
        return {"bytes": total, "head": list(head), "tail": list(tail), "types": types}
