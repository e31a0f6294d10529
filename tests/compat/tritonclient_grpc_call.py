"""Send one inference of zeros over gRPC with tritonclient[grpc] and print how it ended: `OK`,
or the gRPC status code (e.g. `StatusCode.DEADLINE_EXCEEDED`).

Run: python tests/compat/tritonclient_grpc_call.py HOST:PORT MODEL INPUT ROWSxCOLUMNS [TIMEOUT_S]
"""

import sys

import numpy as np
import tritonclient.grpc as grpc_client


def main():
    url, model, input_name, shape = sys.argv[1:5]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else None
    rows, columns = (int(n) for n in shape.split("x"))
    client = grpc_client.InferenceServerClient(url=url)
    tensor = grpc_client.InferInput(input_name, [rows, columns], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, columns), dtype=np.float32))
    try:
        client.infer(model, inputs=[tensor], client_timeout=timeout)
        print("OK")
    except grpc_client.InferenceServerException as error:
        print(error.status())


if __name__ == "__main__":
    main()
