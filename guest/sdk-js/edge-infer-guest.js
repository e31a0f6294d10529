// Helpers for edge-infer guests written in JavaScript and built with componentize-js.
//
// A guest is a wasi:http handler that may run models through wasi:nn. Import this module as
// 'edge-infer-guest' and build with `node /path/to/edge-infer/guest/sdk-js/build.mjs app.js
// app.wasm`, which bundles it in (see guest/README.md). It offers:
//
// - serve(handler): answers each request with `await handler(request)` (a fetch-API Request):
//   a Response, or any other value to answer as JSON with 200.
// - Errors become JSON bodies {"error": "..."} like every other edge-infer error: a thrown
//   HttpError(status, message) gives that status; a wasi:nn error the same status as the Rust
//   SDK (invalid-argument/invalid-encoding 422, not-found 404, too-large 413, timeout 504,
//   security 403, others 500); anything else 500 (the stack goes to stderr, which the host
//   logs).
// - readJson(request): the body as JSON, or HttpError 400 "malformed JSON: ...";
//   json(value, status): a JSON Response.
// - Tensors: tensorF32, tensorI64, toF32, toI64, and infer(model, {input: tensor}) whose
//   result gives outputs by name (outputs.f32('probabilities')).

import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';

const NN_STATUS = {
  'invalid-argument': 422,
  'invalid-encoding': 422,
  'not-found': 404,
  'too-large': 413,
  timeout: 504,
  security: 403,
};

/** Throw to answer with `status` and the body {"error": message}. */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
  }
}

/** A wasi:nn error, thrown by infer(): `code` is its WIT name (e.g. 'not-found'), `data` the
 * host's message; the status follows nnStatus(code). */
export class NnError extends HttpError {
  constructor(code, data, context) {
    super(nnStatus(code), context ? `${context}: ${data}` : data);
    this.name = 'NnError';
    this.code = code;
    this.data = data;
  }
}

/** The HTTP status that fits a wasi:nn error code (the Rust SDK's table). */
export function nnStatus(code) {
  return NN_STATUS[code] ?? 500;
}

// The wasi:nn error a binding call threw (componentize-js puts it in `payload`), or null.
function nnErrorOf(error) {
  const payload = error?.payload;
  return payload && typeof payload.code === 'function' && typeof payload.data === 'function' ? payload : null;
}

/** A Response with `value` as JSON. */
export function json(value, status = 200) {
  return new Response(JSON.stringify(value), { status, headers: { 'content-type': 'application/json' } });
}

/** The request body parsed as JSON; malformed JSON throws HttpError 400 "malformed JSON: ...". */
export async function readJson(request) {
  try {
    return JSON.parse(await request.text()); // text() throws on invalid UTF-8
  } catch (error) {
    throw new HttpError(400, `malformed JSON: ${error.message}`);
  }
}

function errorResponse(error) {
  if (error instanceof HttpError) return json({ error: error.message }, error.status);
  const nnError = nnErrorOf(error);
  if (nnError) return json({ error: nnError.data() }, nnStatus(nnError.code()));
  console.error(error?.stack ? `${error}\n${error.stack}` : String(error));
  return json({ error: String(error) }, 500);
}

/** Registers `handler` for every request: `handler(request)` returns (or resolves to) a
 * Response, or any other value to answer as JSON with 200; what it throws becomes an error
 * response. Call it once, at the top level of the guest. */
export function serve(handler) {
  addEventListener('fetch', (event) => {
    event.respondWith(
      (async () => {
        try {
          const answer = await handler(event.request);
          return answer instanceof Response ? answer : json(answer);
        } catch (error) {
          return errorResponse(error);
        }
      })(),
    );
  });
}

function count(dims) {
  return dims.reduce((product, dim) => product * dim, 1);
}

function checkedDims(dims, length) {
  if (length !== count(dims)) {
    throw new Error(`a tensor of dimensions [${dims}] needs ${count(dims)} values, got ${length}`);
  }
  return new Uint32Array(dims);
}

/** An FP32 tensor of dimensions `dims` (e.g. [1, 64]) holding `values` (numbers) in row-major order. */
export function tensorF32(dims, values) {
  const data = Float32Array.from(values);
  return new Tensor(checkedDims(dims, data.length), 'FP32', new Uint8Array(data.buffer));
}

/** An I64 tensor (token ids, masks for text models) holding `values` (numbers or BigInts). */
export function tensorI64(dims, values) {
  const data = BigInt64Array.from(values, (value) => BigInt(value));
  return new Tensor(checkedDims(dims, data.length), 'I64', new Uint8Array(data.buffer));
}

function values(tensor, type, ArrayType, what) {
  const actual = tensor.ty();
  if (actual !== type) throw new HttpError(500, `${what} is ${actual}, not ${type}`);
  const bytes = tensor.data().slice(); // a copy, aligned for the typed array
  return new ArrayType(bytes.buffer, 0, bytes.byteLength / ArrayType.BYTES_PER_ELEMENT);
}

/** The values of an FP32 tensor as a flat Array of numbers (another type throws 500). */
export function toF32(tensor, what = 'the tensor') {
  return Array.from(values(tensor, 'FP32', Float32Array, what));
}

/** The values of an I64 tensor as a flat Array of numbers (exact up to 2^53; another type throws 500). */
export function toI64(tensor, what = 'the tensor') {
  return Array.from(values(tensor, 'I64', BigInt64Array, what), Number);
}

/** A model's outputs by name. A name the model did not give throws
 * HttpError 500 "model X gave no output named Y". */
export class Outputs {
  constructor(model, named) {
    this.model = model;
    this.tensors = new Map(named);
  }

  /** The output names, in the model's order. */
  get names() {
    return [...this.tensors.keys()];
  }

  has(name) {
    return this.tensors.has(name);
  }

  /** The output tensor `name`. */
  get(name) {
    const tensor = this.tensors.get(name);
    if (!tensor) throw new HttpError(500, `model ${this.model} gave no output named ${name}`);
    return tensor;
  }

  dims(name) {
    return Array.from(this.get(name).dimensions());
  }

  f32(name) {
    return toF32(this.get(name), `output ${name} of model ${this.model}`);
  }

  i64(name) {
    return toI64(this.get(name), `output ${name} of model ${this.model}`);
  }
}

/** Runs the model the route grants as `model` on {inputName: tensor}. A wasi:nn error throws
 * NnError (an HttpError) with the message "<model> model: ..." and the status of nnStatus
 * (e.g. 404 for a model the route does not grant, 422 for inputs that do not fit it). */
export function infer(model, inputs) {
  try {
    const context = loadByName(model).initExecutionContext();
    return new Outputs(model, context.compute(Object.entries(inputs)));
  } catch (error) {
    const nnError = nnErrorOf(error);
    if (!nnError) throw error;
    throw new NnError(nnError.code(), nnError.data(), `${model} model`);
  }
}
