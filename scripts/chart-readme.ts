/**
 * Writes the chart's README.md from README.md.tmpl and values.yaml: the `<!-- values -->` marker becomes a
 * table of every value with its default and the `# --` comment above it, so the documentation cannot
 * drift from the values. With --check it only compares, and exits 1 (saying what to run) when the README
 * is out of date. A value without a `# --` comment is an error.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';

export const chartDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'deploy', 'helm', 'shoal');

export interface ValueDoc {
  key: string;
  default: string;
  description: string;
}

/**
 * The documented values of a values.yaml, in file order. A key with a `# --` comment is one value (its
 * default is whatever it holds, nested or not); a key without one must have documented keys below it.
 */
export function documentedValues(text: string): ValueDoc[] {
  const lines = text.split('\n');
  const docs: ValueDoc[] = [];
  const path: { indent: number; key: string }[] = [];
  let comment: string[] | undefined;
  /** While inside a documented block, lines indented deeper than this belong to its default. */
  let skipDeeperThan = -1;
  const undocumented: string[] = [];
  const sections = new Set<string>();

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    const indent = line.length - line.trimStart().length;
    const trimmed = line.trim();
    if (skipDeeperThan >= 0) {
      if (
        trimmed === '' ||
        indent > skipDeeperThan ||
        (trimmed.startsWith('- ') && indent === skipDeeperThan)
      )
        continue;
      skipDeeperThan = -1;
    }
    if (trimmed.startsWith('# --')) {
      comment = [trimmed.slice(4).trim()];
      continue;
    }
    if (trimmed.startsWith('#') || trimmed === '') {
      if (comment && trimmed.startsWith('#') && !trimmed.startsWith('#  '))
        comment.push(trimmed.slice(1).trim());
      continue;
    }
    const match = /^([A-Za-z0-9_.-]+):(.*)$/.exec(trimmed);
    if (!match) continue;
    const [, key = '', rest = ''] = match;
    while (path.length && (path.at(-1)?.indent ?? 0) >= indent) path.pop();
    const full = [...path.map((p) => p.key), key].join('.');
    const inline = rest.trim();
    if (comment) {
      let value: unknown;
      if (inline !== '') value = YAML.parse(inline);
      else {
        // A nested default: every following line indented deeper than this key.
        const block: string[] = [];
        for (let j = i + 1; j < lines.length; j++) {
          const next = lines[j] ?? '';
          const nextIndent = next.length - next.trimStart().length;
          if (
            next.trim() !== '' &&
            nextIndent <= indent &&
            !(next.trim().startsWith('- ') && nextIndent === indent)
          )
            break;
          block.push(next);
        }
        value = YAML.parse(block.join('\n')) ?? {};
        skipDeeperThan = indent;
      }
      docs.push({ key: full, default: JSON.stringify(value), description: comment.join(' ') });
      comment = undefined;
      continue;
    }
    if (inline === '') {
      path.push({ indent, key });
      sections.add(full);
    } else undocumented.push(full);
  }
  const emptySections = [...sections].filter((s) => !docs.some((d) => d.key.startsWith(`${s}.`)));
  const missing = [...undocumented, ...emptySections];
  if (missing.length) throw new Error(`values without a "# --" comment: ${missing.join(', ')}`);
  return docs;
}

const cell = (text: string) => text.replace(/\|/g, '\\|');

export function renderReadme(template: string, values: ValueDoc[]): string {
  const table = [
    '| Key | Default | Description |',
    '| --- | --- | --- |',
    ...values.map((v) => `| \`${v.key}\` | \`${cell(v.default)}\` | ${cell(v.description)} |`),
  ].join('\n');
  if (!template.includes('<!-- values -->')) throw new Error('README.md.tmpl has no <!-- values --> marker');
  return template.replace('<!-- values -->', table);
}

function main(): void {
  const check = process.argv.includes('--check');
  const values = documentedValues(readFileSync(join(chartDir, 'values.yaml'), 'utf8'));
  const readme = renderReadme(readFileSync(join(chartDir, 'README.md.tmpl'), 'utf8'), values);
  const target = join(chartDir, 'README.md');
  if (check) {
    if (readFileSync(target, 'utf8') !== readme) {
      console.error('deploy/helm/shoal/README.md is out of date: run npm run chart:readme');
      process.exit(1);
    }
    return;
  }
  writeFileSync(target, readme);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main();
