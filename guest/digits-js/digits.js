// POST /digits-js: the digits guest in JavaScript, built into a component by componentize-js.
//
// Same contract as the Rust guest (guest/digits): {"pixels": [64 numbers 0..16]} answers
// {"label": n, "probabilities": [10]}; {"images": [[64 numbers], ...]} answers a list of
// those; malformed input gets 400 with the reason. HTTP comes through StarlingMonkey's fetch
// event; the model runs through wasi:nn.

import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';

const PIXELS = 64;
const MAX_PIXEL = 16;
const CLASSES = 10;
const MAX_IMAGES = 1024;

class BadRequest extends Error {}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  if (request.method !== 'POST') {
    return json(405, { error: 'use POST with a JSON body' });
  }
  let images, single;
  try {
    [images, single] = parseRequest(await request.text());
  } catch (error) {
    if (error instanceof BadRequest) return json(400, { error: error.message });
    throw error;
  }
  let probabilities;
  try {
    probabilities = classify(images);
  } catch (error) {
    const nnError = error.payload;
    if (!nnError) throw error;
    return json(nnStatus(nnError.code()), { error: `digits model: ${nnError.data()}` });
  }
  const predictions = [];
  for (let start = 0; start < probabilities.length; start += CLASSES) {
    predictions.push(prediction(probabilities.slice(start, start + CLASSES)));
  }
  return json(200, single ? predictions[0] : predictions);
}

function parseRequest(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${error.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new BadRequest('expected a JSON object with "pixels" or "images"');
  }
  if (('pixels' in value) === ('images' in value)) {
    throw new BadRequest('expected exactly one of "pixels" or "images"');
  }
  if ('pixels' in value) return [parseImage(value.pixels, 'pixels'), true];
  const images = value.images;
  if (!Array.isArray(images)) throw new BadRequest('"images" must be an array of images');
  if (images.length < 1 || images.length > MAX_IMAGES) {
    throw new BadRequest(`"images" must hold 1 to ${MAX_IMAGES} images, got ${images.length}`);
  }
  return [images.flatMap((image, index) => parseImage(image, `images[${index}]`)), false];
}

function parseImage(value, field) {
  if (!Array.isArray(value)) throw new BadRequest(`${field} must be an array of ${PIXELS} numbers`);
  if (value.length !== PIXELS) throw new BadRequest(`${field} must hold ${PIXELS} numbers, got ${value.length}`);
  value.forEach((item, index) => {
    if (typeof item !== 'number') throw new BadRequest(`${field}[${index}] is not a number`);
    if (item < 0 || item > MAX_PIXEL) throw new BadRequest(`${field}[${index}] = ${item} is outside 0..${MAX_PIXEL}`);
  });
  return value;
}

function classify(images) {
  const count = images.length / PIXELS;
  const data = new Uint8Array(new Float32Array(images).buffer);
  const pixels = new Tensor(new Uint32Array([count, PIXELS]), 'FP32', data);
  const context = loadByName('digits').initExecutionContext();
  for (const [name, output] of context.compute([['pixels', pixels]])) {
    if (name === 'probabilities') {
      const bytes = output.data();
      return Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
    }
  }
  throw new Error('the digits model gave no probabilities');
}

function prediction(probabilities) {
  let label = 0;
  probabilities.forEach((p, i) => { if (p > probabilities[label]) label = i; });
  return { label, probabilities };
}

function nnStatus(code) {
  const statuses = {
    'invalid-argument': 422,
    'invalid-encoding': 422,
    'not-found': 404,
    'too-large': 413,
    timeout: 504,
    security: 403,
  };
  return statuses[code] ?? 500;
}

function json(status, value) {
  return new Response(JSON.stringify(value), { status, headers: { 'content-type': 'application/json' } });
}
