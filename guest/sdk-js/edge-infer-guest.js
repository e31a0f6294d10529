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
//   chunks(request): the body as it arrives, in Uint8Array pieces (for await ... of);
//   json(value, status): a JSON Response.
// - Tensors of every wasi:nn type: tensorF16, tensorBF16, tensorF32, tensorF64, tensorU8,
//   tensorI32, tensorI64 (or tensorOf(type, dims, values)), read back with toF16 ... toI64 or
//   valuesOf(tensor); and infer(model, {input: tensor}) whose result gives outputs by name
//   (outputs.f32('probabilities'), outputs.values(name)).

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

/** The request body as it arrives: `for await (const piece of chunks(request))` gives
 * Uint8Arrays, so a guest can act on a body before it has all arrived. StarlingMonkey keeps
 * the pieces (and a host handle for each) until its garbage collector runs, so the body's
 * memory is not yet bounded below its size. The body can be read once, by this or by
 * readJson/text(). */
export async function* chunks(request) {
  if (!request.body) return;
  const reader = request.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    throw new HttpError(400, `reading the request body failed: ${error?.message ?? error}`);
  } finally {
    reader.releaseLock();
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

// Bits of a float32, to convert to and from FP16 and BF16.
const F32 = new Float32Array(1);
const F32_BITS = new Uint32Array(F32.buffer);

/** The half-precision (FP16) value nearest `value` (ties to even), as its bits. */
export function f16Bits(value) {
  F32[0] = value;
  const bits = F32_BITS[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >>> 13) : 0);
  const half = exponent - 127 + 15;
  if (half >= 0x1f) return sign | 0x7c00;
  if (half <= 0) {
    if (half < -10) return sign;
    const full = mantissa | 0x800000;
    const shift = 14 - half;
    return sign | Math.floor((full + 2 ** (shift - 1) - 1 + (Math.floor(full / 2 ** shift) & 1)) / 2 ** shift);
  }
  const kept = mantissa >>> 13;
  const rest = mantissa & 0x1fff;
  let result = sign | (half << 10) | kept;
  if (rest > 0x1000 || (rest === 0x1000 && (kept & 1) === 1)) result += 1;
  return result;
}

/** The value of FP16 bits. */
export function fromF16Bits(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** The bfloat16 value nearest `value` (ties to even), as its bits. */
export function bf16Bits(value) {
  F32[0] = value;
  const bits = F32_BITS[0];
  if (Number.isNaN(value)) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) / 0x10000) & 0xffff;
}

/** The value of BF16 bits. */
export function fromBF16Bits(bits) {
  F32_BITS[0] = bits << 16;
  return F32[0];
}

// Each tensor type: its typed array, and how a value goes in and comes out.
const TYPES = {
  FP16: { array: Uint16Array, put: f16Bits, get: fromF16Bits },
  BF16: { array: Uint16Array, put: bf16Bits, get: fromBF16Bits },
  FP32: { array: Float32Array },
  FP64: { array: Float64Array },
  U8: { array: Uint8Array },
  I32: { array: Int32Array },
  I64: { array: BigInt64Array, put: (value) => BigInt(value), get: Number },
};

/** A tensor of `type` ('FP16', 'BF16', 'FP32', 'FP64', 'U8', 'I32', 'I64') and dimensions
 * `dims` (e.g. [1, 64]) holding `values` (numbers, BigInts for I64, or a typed array) in
 * row-major order. */
export function tensorOf(type, dims, values) {
  const kind = TYPES[type];
  if (!kind) throw new Error(`no tensor type ${type}`);
  const data = kind.put ? kind.array.from(values, kind.put) : kind.array.from(values);
  return new Tensor(checkedDims(dims, data.length), type, new Uint8Array(data.buffer));
}

/** The values of `tensor` as a flat Array of numbers (I64 exact up to 2^53); with `type`, a
 * tensor of another type throws HttpError 500. */
export function valuesOf(tensor, type, what = 'the tensor') {
  const actual = tensor.ty();
  if (type && actual !== type) throw new HttpError(500, `${what} is ${actual}, not ${type}`);
  const kind = TYPES[actual];
  const bytes = tensor.data().slice(); // a copy, aligned for the typed array
  const typed = new kind.array(bytes.buffer, 0, bytes.byteLength / kind.array.BYTES_PER_ELEMENT);
  return kind.get ? Array.from(typed, kind.get) : Array.from(typed);
}

export const tensorF16 = (dims, values) => tensorOf('FP16', dims, values);
export const tensorBF16 = (dims, values) => tensorOf('BF16', dims, values);
/** An FP32 tensor of dimensions `dims` (e.g. [1, 64]) holding `values` in row-major order. */
export const tensorF32 = (dims, values) => tensorOf('FP32', dims, values);
export const tensorF64 = (dims, values) => tensorOf('FP64', dims, values);
export const tensorU8 = (dims, values) => tensorOf('U8', dims, values);
export const tensorI32 = (dims, values) => tensorOf('I32', dims, values);
/** An I64 tensor (token ids, masks for text models) holding `values` (numbers or BigInts). */
export const tensorI64 = (dims, values) => tensorOf('I64', dims, values);

export const toF16 = (tensor, what) => valuesOf(tensor, 'FP16', what);
export const toBF16 = (tensor, what) => valuesOf(tensor, 'BF16', what);
/** The values of an FP32 tensor as a flat Array of numbers (another type throws 500). */
export const toF32 = (tensor, what) => valuesOf(tensor, 'FP32', what);
export const toF64 = (tensor, what) => valuesOf(tensor, 'FP64', what);
export const toU8 = (tensor, what) => valuesOf(tensor, 'U8', what);
export const toI32 = (tensor, what) => valuesOf(tensor, 'I32', what);
/** The values of an I64 tensor as a flat Array of numbers (exact up to 2^53; another type throws 500). */
export const toI64 = (tensor, what) => valuesOf(tensor, 'I64', what);

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

  /** The values of output `name`, whatever its type. */
  values(name) {
    return valuesOf(this.get(name), undefined, `output ${name} of model ${this.model}`);
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
