// Builds digits.js into a component: node build.mjs OUT.wasm (run from this folder).
//
// StarlingMonkey (the JS engine inside componentize-js) implements wasi:http 0.2.10, while
// the repo's WIT is 0.2.12. The build targets a copy of the WIT labelled 0.2.10; the host
// serves any wasi:http 0.2.x guest, so the component runs unchanged.
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { componentize } from '@bytecodealliance/componentize-js';

const STARLINGMONKEY_WASI = '0.2.10';
const out = process.argv[2] ?? 'digits-js.wasm';

const wit = await mkdtemp('wit-');
await cp('../../wit', wit, { recursive: true });
for (const file of [join(wit, 'world.wit'), ...(await readdir(join(wit, 'deps'))).map((f) => join(wit, 'deps', f))]) {
  const text = await readFile(file, 'utf8');
  await writeFile(file, text.replaceAll(/@0\.2\.12\b/g, `@${STARLINGMONKEY_WASI}`).replaceAll(/@since\(version = 0\.2\.1[12]\)/g, `@since(version = ${STARLINGMONKEY_WASI})`));
}
let component;
try {
  ({ component } = await componentize({
    sourcePath: 'digits.js',
    witPath: wit,
    worldName: 'edge-infer:guest/inference',
  }));
} finally {
  await rm(wit, { recursive: true });
}
await writeFile(out, component);
console.log(`wrote ${out} (${component.byteLength} bytes)`);
