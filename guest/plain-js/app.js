// A standard wasi:http/proxy component in JavaScript, built without the edge-infer helper:
// componentize-js for the world wasi:http/proxy@0.2.10 (StarlingMonkey's). A test fixture:
// it calls out over HTTP and answers what happened: {"outbound": "..."}.
addEventListener('fetch', (event) => event.respondWith(handle()));

async function handle() {
  let outbound;
  try {
    const response = await fetch('http://example.com/');
    outbound = `reached: ${response.status}`;
  } catch (error) {
    outbound = `refused: ${error}`;
  }
  return new Response(JSON.stringify({ outbound }), { headers: { 'content-type': 'application/json' } });
}
