// POST /digits-js: the digits guest in JavaScript, built into a component by componentize-js
// (guest/sdk-js/build.mjs digits.js OUT.wasm).
//
// Same contract as the Rust guest (guest/digits): {"pixels": [64 numbers 0..16]} answers
// {"label": n, "probabilities": [10]}; {"images": [[64 numbers], ...]} answers a list of
// those; malformed input gets 400 with the reason. The model runs through wasi:nn; the HTTP
// plumbing and error answers come from guest/sdk-js/edge-infer-guest.js.

import { HttpError, infer, readJson, serve, tensorF32 } from 'edge-infer-guest';

const PIXELS = 64;
const MAX_PIXEL = 16;
const CLASSES = 10;
const MAX_IMAGES = 1024;

serve(async (request) => {
  if (request.method !== 'POST') throw new HttpError(405, 'use POST with a JSON body');
  const [images, single] = parseRequest(await readJson(request));
  const outputs = infer('digits', { pixels: tensorF32([images.length / PIXELS, PIXELS], images) });
  const probabilities = outputs.f32('probabilities');
  const predictions = [];
  for (let start = 0; start < probabilities.length; start += CLASSES) {
    predictions.push(prediction(probabilities.slice(start, start + CLASSES)));
  }
  return single ? predictions[0] : predictions;
});

function badRequest(message) {
  return new HttpError(400, message);
}

function parseRequest(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw badRequest('expected a JSON object with "pixels" or "images"');
  }
  if (('pixels' in value) === ('images' in value)) {
    throw badRequest('expected exactly one of "pixels" or "images"');
  }
  if ('pixels' in value) return [parseImage(value.pixels, 'pixels'), true];
  const images = value.images;
  if (!Array.isArray(images)) throw badRequest('"images" must be an array of images');
  if (images.length < 1 || images.length > MAX_IMAGES) {
    throw badRequest(`"images" must hold 1 to ${MAX_IMAGES} images, got ${images.length}`);
  }
  return [images.flatMap((image, index) => parseImage(image, `images[${index}]`)), false];
}

function parseImage(value, field) {
  if (!Array.isArray(value)) throw badRequest(`${field} must be an array of ${PIXELS} numbers`);
  if (value.length !== PIXELS) throw badRequest(`${field} must hold ${PIXELS} numbers, got ${value.length}`);
  value.forEach((item, index) => {
    if (typeof item !== 'number') throw badRequest(`${field}[${index}] is not a number`);
    if (item < 0 || item > MAX_PIXEL) throw badRequest(`${field}[${index}] = ${item} is outside 0..${MAX_PIXEL}`);
  });
  return value;
}

function prediction(probabilities) {
  let label = 0;
  probabilities.forEach((p, i) => {
    if (p > probabilities[label]) label = i;
  });
  return { label, probabilities };
}
