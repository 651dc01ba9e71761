/**
 * A completion-time CDF as a standalone SVG: for each scenario, the share of nodes done by each second,
 * with the bound T_min marked. No dependencies; opens in any browser.
 */

export interface CdfSeries {
  name: string;
  /** Seconds per node; NaN for a node that never finished (the curve then stops short of 100%). */
  values: number[];
}

const COLOURS = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

/** A round tick step giving about `target` ticks over `span`: 1, 2 or 5 times a power of ten. */
function tickStep(span: number, target: number): number {
  const raw = span / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw) ?? 10 * power;
}

const escape = (text: string) =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

export function cdfChart(
  series: CdfSeries[],
  options: { tMin: number; title: string; width?: number; height?: number },
): string {
  const width = options.width ?? 760;
  const height = options.height ?? 420;
  const margin = { left: 56, right: 20, top: 40, bottom: 48 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const finite = series.flatMap((s) => s.values.filter((v) => Number.isFinite(v)));
  const xMax = Math.max(options.tMin, ...finite, 1) * 1.05;
  const x = (seconds: number) => margin.left + (seconds / xMax) * plotW;
  const y = (share: number) => margin.top + (1 - share) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="14">${escape(options.title)}</text>`,
  ];
  const step = tickStep(xMax, 8);
  for (let t = 0; t <= xMax; t += step) {
    out.push(
      `<line x1="${x(t)}" y1="${margin.top}" x2="${x(t)}" y2="${margin.top + plotH}" stroke="#eee"/>`,
      `<text x="${x(t)}" y="${margin.top + plotH + 16}" text-anchor="middle">${Number(t.toFixed(6))}</text>`,
    );
  }
  for (let share = 0; share <= 1.0001; share += 0.25) {
    out.push(
      `<line x1="${margin.left}" y1="${y(share)}" x2="${margin.left + plotW}" y2="${y(share)}" stroke="#eee"/>`,
      `<text x="${margin.left - 6}" y="${y(share) + 4}" text-anchor="end">${Math.round(share * 100)}%</text>`,
    );
  }
  out.push(
    `<rect x="${margin.left}" y="${margin.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#999"/>`,
    `<text x="${margin.left + plotW / 2}" y="${height - 10}" text-anchor="middle">seconds from the node's start</text>`,
    `<text transform="translate(14 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">nodes done</text>`,
    `<line x1="${x(options.tMin)}" y1="${margin.top}" x2="${x(options.tMin)}" y2="${margin.top + plotH}" stroke="#000" stroke-dasharray="5 4"/>`,
    `<text x="${x(options.tMin) + 4}" y="${margin.top + 14}">T_min ${options.tMin.toFixed(1)} s</text>`,
  );
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length] ?? '#000';
    const done = s.values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
    const total = s.values.length || 1;
    // A step curve: flat at the share done so far, rising at each node's completion.
    const points = [`${x(0)},${y(0)}`];
    done.forEach((v, k) => points.push(`${x(v)},${y(k / total)}`, `${x(v)},${y((k + 1) / total)}`));
    if (done.length > 0) points.push(`${x(xMax)},${y(done.length / total)}`);
    out.push(
      `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points.join(' ')}"/>`,
      `<rect x="${margin.left + 12}" y="${margin.top + 24 + i * 18}" width="14" height="3" fill="${colour}"/>`,
      `<text x="${margin.left + 32}" y="${margin.top + 29 + i * 18}">${escape(s.name)}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
