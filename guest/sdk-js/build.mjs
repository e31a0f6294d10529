// Builds a JavaScript guest into a component: node /path/to/edge-infer/guest/sdk-js/build.mjs SOURCE.js OUT.wasm [WORLD]
// (paths relative to the current folder; run `npm install` in this folder once first: it
// installs what package-lock.json pins. Not `npm ci`: the lock lacks other platforms' optional
// native packages, which `npm ci` refuses.)
//
// 1. Bundles SOURCE.js and what it imports into one module (componentize-js takes one),
//    with rolldown: the import 'edge-infer-guest' is this folder's edge-infer-guest.js, and
//    the `wasi:*` imports stay imports (the component's).
// 2. Targets a copy of the repo's wit/ relabelled: StarlingMonkey (the JS engine inside
//    componentize-js) implements wasi:http 0.2.10, the repo's WIT says 0.2.12. The host
//    serves any wasi:http 0.2.x guest, so the component runs unchanged.
// 3. componentize-js builds the component for the world edge-infer:guest/inference, or WORLD
//    (e.g. wasi:http/proxy@0.2.10 for a plain HTTP component without wasi:nn).
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const STARLINGMONKEY_WASI = '0.2.10';
const here = dirname(fileURLToPath(import.meta.url));
const [source, out] = process.argv.slice(2, 4).map((path) => resolve(path));
const worldName = process.argv[4] ?? 'edge-infer:guest/inference';
if (!source || !out) {
  console.error('usage: node build.mjs SOURCE.js OUT.wasm [WORLD]');
  process.exit(2);
}

let componentize, rolldown;
try {
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
  ({ rolldown } = await import('rolldown'));
} catch (error) {
  console.error(`${error.message}\nInstall the build tools first: (cd ${here} && npm install)`);
  process.exit(1);
}

const work = await mkdtemp(join(tmpdir(), 'edge-infer-js-'));
const startedIn = process.cwd();
try {
  const bundle = await rolldown({
    input: source,
    platform: 'neutral',
    external: [/^wasi:/],
    resolve: { alias: { 'edge-infer-guest': join(here, 'edge-infer-guest.js') } },
    logLevel: 'warn',
  });
  const { output } = await bundle.generate({ format: 'esm', codeSplitting: false });
  await bundle.close();
  const bundled = join(work, basename(source));
  await writeFile(bundled, output[0].code);

  const wit = join(work, 'wit');
  await cp(join(here, '..', '..', 'wit'), wit, { recursive: true });
  const deps = (await readdir(join(wit, 'deps'))).map((file) => join(wit, 'deps', file));
  for (const file of [join(wit, 'world.wit'), ...deps]) {
    const text = await readFile(file, 'utf8');
    await writeFile(
      file,
      text
        .replaceAll(/@0\.2\.12\b/g, `@${STARLINGMONKEY_WASI}`)
        .replaceAll(/@since\(version = 0\.2\.1[12]\)/g, `@since(version = ${STARLINGMONKEY_WASI})`),
    );
  }

  // componentize-js maps the current folder into the engine when the source is below it;
  // building from the work folder keeps that mapping to the bundle alone.
  process.chdir(work);
  const { component } = await componentize({
    sourcePath: bundled,
    witPath: wit,
    worldName,
  });
  await writeFile(out, component);
  console.log(`wrote ${out} (${component.byteLength} bytes)`);
} finally {
  process.chdir(startedIn);
  await rm(work, { recursive: true, force: true });
}
