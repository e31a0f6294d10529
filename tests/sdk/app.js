// A test fixture for tests/languages.rs: reads the body with chunks(request) and answers its
// length and ends, with tensors of five wasi:nn types made and read back through the host.

import { chunks, serve, tensorI32, toI32, tensorF16, toF16, tensorBF16, toBF16, tensorU8, toU8, tensorF64, toF64 } from 'edge-infer-guest';

serve(async (request) => {
  let total = 0;
  let head = [];
  let tail = [];
  for await (const piece of chunks(request)) {
    total += piece.length;
    for (const byte of piece.subarray(0, 8 - head.length)) head.push(byte);
    tail = tail.concat(Array.from(piece.subarray(Math.max(0, piece.length - 8)))).slice(-8);
  }
  const types = {
    i32: toI32(tensorI32([2], [7, -9])),
    u8: toU8(tensorU8([3], [97, 98, 99])),
    f16: toF16(tensorF16([2], [0.5, 65504])),
    bf16: toBF16(tensorBF16([1], [-3])),
    f64: toF64(tensorF64([1], [0.1])),
  };
  return { bytes: total, head, tail, types };
});
