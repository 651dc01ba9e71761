/* global process, setTimeout, fetch */
// Samples agents' counters during the swarm benchmark's limits scenario, run inside the registry host's
// namespace (which reaches every node): every `intervalMs` it reads each agent's /metrics and appends one
// JSON line per agent to `out`: {"t": ms since the epoch, "node": i, "values": {wanted: value}} for each
// wanted series in `names`: a metric name, summed over all its series, or `name{label="value",...}`,
// summed over the series that carry those labels (among others). Stops on SIGTERM. Plain JavaScript so
// that it runs on bare node in a namespace.
import { appendFileSync } from 'node:fs';

const { urls, names, intervalMs, out } = JSON.parse(process.argv[2] ?? '{}');
let running = true;
process.once('SIGTERM', () => {
  running = false;
});

/** A wanted series as its metric name and the label pairs it requires, e.g. ['source="origin"']. */
const wants = names.map((wanted) => {
  const brace = wanted.indexOf('{');
  if (brace === -1) return { wanted, name: wanted, labels: [] };
  const labels = wanted.slice(brace + 1, -1).match(/[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"/g) ?? [];
  return { wanted, name: wanted.slice(0, brace), labels };
});

function pick(text) {
  const values = {};
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    const series = line.slice(0, space);
    const value = Number(line.slice(space + 1));
    const brace = series.indexOf('{');
    const name = brace === -1 ? series : series.slice(0, brace);
    const labels = brace === -1 ? '' : series.slice(brace);
    for (const want of wants) {
      if (want.name === name && want.labels.every((pair) => labels.includes(pair)))
        values[want.wanted] = (values[want.wanted] ?? 0) + value;
    }
  }
  return values;
}

while (running) {
  const next = Date.now() + intervalMs;
  const lines = await Promise.all(
    urls.map(async (url, node) => {
      try {
        const t = Date.now();
        const res = await fetch(url);
        const values = pick(await res.text());
        // The moment the agent answered is closer to when it read its counters than the moment asked.
        return JSON.stringify({ t: (t + Date.now()) / 2, node, values });
      } catch {
        return undefined;
      }
    }),
  );
  appendFileSync(
    out,
    lines
      .filter((l) => l !== undefined)
      .map((l) => `${l}\n`)
      .join(''),
  );
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, next - Date.now())));
}
