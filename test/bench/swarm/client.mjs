/* global process, setTimeout, performance, fetch */
// One node's pull in the swarm benchmark, run inside the node's network namespace: waits `delayMs`,
// then GETs every URL at once (as a runtime fetches an image's layers), reads each body to the end, and
// prints {"ms", "bytes", "failed"} as JSON. Plain JavaScript so that it runs on bare node in a namespace.
const { urls, delayMs } = JSON.parse(process.argv[2] ?? '{}');
await new Promise((resolve) => setTimeout(resolve, delayMs ?? 0));
const started = performance.now();
let bytes = 0;
let failed = 0;
await Promise.all(
  urls.map(async (url) => {
    try {
      const res = await fetch(url);
      if (res.status !== 200 || !res.body) throw new Error(`${url}: ${res.status}`);
      for await (const piece of res.body) bytes += piece.length;
    } catch (err) {
      failed++;
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    }
  }),
);
process.stdout.write(`${JSON.stringify({ ms: performance.now() - started, bytes, failed })}\n`);
