/**
 * Configuration. Each key is defined once, with its flag, environment variable, default and help; values
 * come from (highest first) command-line flags, SHOAL_* environment variables, a YAML file, defaults.
 * Units are converted at load ("250ms" → 250, "4MiB" → 4194304); unknown keys and bad values are errors
 * that name the key; the result is frozen and passed down. Nothing else reads process.env.
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ShoalError } from './errors.js';
import { formatBytes, parseBytes, parseDurationMs } from './units.js';

type Raw = string | number | boolean | string[] | null;

export interface OptionSpec<T> {
  /** Dotted key as written in YAML, e.g. "cache.dir". */
  readonly key: string;
  readonly help: string;
  readonly default: T;
  /** What the value looks like, for --help and the configuration reference. */
  readonly type: string;
  /** Never printed: --help and the reference show only whether it is set. */
  readonly secret?: boolean;
  parse(raw: Raw, source: string): T;
}

export type ConfigSpec = Record<string, OptionSpec<unknown>>;
export type ConfigOf<S extends ConfigSpec> = {
  readonly [K in keyof S]: S[K] extends OptionSpec<infer T> ? T : never;
};

export function envName(key: string): string {
  return `SHOAL_${key
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[.-]/g, '_')
    .toUpperCase()}`;
}

export function flagName(key: string): string {
  return `--${key
    .replace(/([a-z0-9])([A-Z])/g, '$1-$2')
    .replace(/\./g, '-')
    .toLowerCase()}`;
}

function bad(source: string, message: string): ShoalError {
  return new ShoalError('SHOAL_ERR_CONFIG', `${source}: ${message}`, { details: { source } });
}

/** A limit in the largest unit that writes it exactly, as a person would type it: 1h, 90s, 250ms. */
function asWritten(ms: number): string {
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

function asText(raw: Raw, source: string): string {
  if (raw === null || Array.isArray(raw)) throw bad(source, 'expected a single value');
  return String(raw);
}

export const opt = {
  string(
    key: string,
    def: string,
    help: string,
    extra: { secret?: boolean; pattern?: RegExp; hint?: string } = {},
  ) {
    return {
      key,
      help,
      default: def,
      type: extra.hint ?? 'string',
      ...(extra.secret ? { secret: true } : {}),
      parse(raw: Raw, source: string) {
        const text = asText(raw, source);
        if (extra.pattern && !extra.pattern.test(text)) {
          throw bad(source, `"${extra.secret ? '***' : text}" is not a valid ${extra.hint ?? 'value'}`);
        }
        return text;
      },
    } satisfies OptionSpec<string>;
  },
  int(key: string, def: number, help: string, range: { min?: number; max?: number } = {}) {
    return {
      key,
      help,
      default: def,
      type: `integer${range.min !== undefined ? ` ≥ ${range.min}` : ''}${range.max !== undefined ? `, ≤ ${range.max}` : ''}`,
      parse(raw: Raw, source: string) {
        const text = asText(raw, source).trim();
        const value = Number(text);
        if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(value))
          throw bad(source, `"${text}" is not an integer`);
        if (range.min !== undefined && value < range.min)
          throw bad(source, `${value} is below the minimum ${range.min}`);
        if (range.max !== undefined && value > range.max)
          throw bad(source, `${value} is above the maximum ${range.max}`);
        return value;
      },
    } satisfies OptionSpec<number>;
  },
  bool(key: string, def: boolean, help: string) {
    return {
      key,
      help,
      default: def,
      type: 'boolean',
      parse(raw: Raw, source: string) {
        if (typeof raw === 'boolean') return raw;
        const text = asText(raw, source).toLowerCase();
        if (['true', '1', 'yes', 'on'].includes(text)) return true;
        if (['false', '0', 'no', 'off'].includes(text)) return false;
        throw bad(source, `"${text}" is not a boolean (true/false)`);
      },
    } satisfies OptionSpec<boolean>;
  },
  /** A duration; the parsed value is in milliseconds. */
  duration(key: string, def: string, help: string, range: { minMs?: number; maxMs?: number } = {}) {
    const parse = (raw: Raw, source: string) => {
      const text = asText(raw, source);
      const ms = parseDurationMs(text);
      if (ms === undefined) throw bad(source, `"${text}" is not a duration (e.g. 250ms, 5s, 2m)`);
      if (range.minMs !== undefined && ms < range.minMs)
        throw bad(source, `${text} is below the minimum ${asWritten(range.minMs)}`);
      if (range.maxMs !== undefined && ms > range.maxMs)
        throw bad(source, `${text} is above the maximum ${asWritten(range.maxMs)}`);
      return ms;
    };
    return {
      key,
      help,
      default: parse(def, 'default'),
      type: `duration (default ${def})`,
      parse,
    } satisfies OptionSpec<number>;
  },
  /** A size; the parsed value is in bytes. */
  bytes(key: string, def: string, help: string, range: { min?: number; max?: number } = {}) {
    const parse = (raw: Raw, source: string) => {
      const text = asText(raw, source);
      const bytes = parseBytes(text);
      if (bytes === undefined) throw bad(source, `"${text}" is not a size (e.g. 4MiB, 10GiB)`);
      if (range.min !== undefined && bytes < range.min && bytes !== 0) {
        throw bad(source, `${text} is below the minimum ${formatBytes(range.min)}`);
      }
      if (range.max !== undefined && bytes > range.max)
        throw bad(source, `${text} is above the maximum ${formatBytes(range.max)}`);
      return bytes;
    };
    return {
      key,
      help,
      default: parse(def, 'default'),
      type: `size (default ${def})`,
      parse,
    } satisfies OptionSpec<number>;
  },
  /** A list, written comma-separated in flags and environment, or as a YAML sequence. */
  list(key: string, def: string[], help: string, item?: { pattern: RegExp; hint: string }) {
    return {
      key,
      help,
      default: def,
      type: `comma-separated list${item ? ` of ${item.hint}` : ''}`,
      parse(raw: Raw, source: string) {
        const items = Array.isArray(raw)
          ? raw.map(String)
          : raw === null
            ? []
            : String(raw)
                .split(',')
                .map((s) => s.trim())
                .filter((s) => s.length > 0);
        if (item) {
          for (const value of items) {
            if (!item.pattern.test(value)) throw bad(source, `"${value}" is not a valid ${item.hint}`);
          }
        }
        return items;
      },
    } satisfies OptionSpec<string[]>;
  },
  oneOf<const V extends string>(key: string, values: readonly V[], def: V, help: string) {
    return {
      key,
      help,
      default: def,
      type: values.join(' | '),
      parse(raw: Raw, source: string): V {
        const text = asText(raw, source);
        if (!(values as readonly string[]).includes(text))
          throw bad(source, `"${text}" is not one of ${values.join(', ')}`);
        return text as V;
      },
    } satisfies OptionSpec<V>;
  },
};

export interface LoadOptions {
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  /** The command name, for messages: "shoal agent". */
  command: string;
}

export interface Loaded<S extends ConfigSpec> {
  config: ConfigOf<S>;
  /** Positional arguments left after the flags. */
  args: string[];
  help: boolean;
}

/** Flattens a parsed YAML document into dotted keys; arrays and scalars are leaves. */
function flatten(value: unknown, prefix: string, out: Map<string, Raw>): void {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value as Record<string, unknown>))
      flatten(v, prefix ? `${prefix}.${k}` : k, out);
    return;
  }
  out.set(prefix, (Array.isArray(value) ? value.map(String) : value) as Raw);
}

export function loadConfig<S extends ConfigSpec>(spec: S, options: LoadOptions): Loaded<S> {
  const byKey = new Map<string, [string, OptionSpec<unknown>]>();
  const byFlag = new Map<string, [string, OptionSpec<unknown>]>();
  for (const [prop, option] of Object.entries(spec)) {
    byKey.set(option.key, [prop, option]);
    byFlag.set(flagName(option.key), [prop, option]);
  }
  const values: Record<string, unknown> = {};
  for (const [prop, option] of Object.entries(spec)) values[prop] = option.default;
  const hint = `run "${options.command} --help" for the list of options`;

  // Flags first, to find --config and --help; they are applied last so that they win.
  const flags: [string, OptionSpec<unknown>, Raw, string][] = [];
  const args: string[] = [];
  let configFile = options.env.SHOAL_CONFIG;
  let help = false;
  for (let i = 0; i < options.argv.length; i++) {
    const arg = options.argv[i] ?? '';
    if (arg === '--help' || arg === '-h') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      args.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    let name = eq === -1 ? arg : arg.slice(0, eq);
    let inline: string | undefined = eq === -1 ? undefined : arg.slice(eq + 1);
    if (name === '--config') {
      configFile = inline ?? options.argv[++i];
      if (configFile === undefined) throw bad('--config', `needs a file path; ${hint}`);
      continue;
    }
    let negated = false;
    if (
      !byFlag.has(name) &&
      name.startsWith('--no-') &&
      byFlag.get(`--${name.slice(5)}`)?.[1].type === 'boolean'
    ) {
      name = `--${name.slice(5)}`;
      negated = true;
    }
    const entry = byFlag.get(name);
    if (!entry) throw bad(name, `unknown option; ${hint}`);
    const [prop, option] = entry;
    if (option.type === 'boolean' && inline === undefined) {
      const next = options.argv[i + 1];
      if (next !== undefined && /^(true|false)$/i.test(next)) {
        inline = next;
        i++;
      } else {
        inline = negated ? 'false' : 'true';
      }
    }
    if (inline === undefined) {
      inline = options.argv[++i];
      if (inline === undefined) throw bad(name, `needs a value; ${hint}`);
    }
    flags.push([prop, option, inline, name]);
  }

  if (configFile) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(configFile, 'utf8'));
    } catch (cause) {
      // The YAML parser's message ends with a picture of the line; the first line says what and where.
      const first = ((cause as Error).message.split('\n')[0] ?? '').replace(/:$/, '');
      throw new ShoalError('SHOAL_ERR_CONFIG', `config file ${configFile}: ${first}`, { cause });
    }
    const flat = new Map<string, Raw>();
    if (doc !== null && doc !== undefined) flatten(doc, '', flat);
    for (const [key, raw] of flat) {
      const entry = byKey.get(key);
      if (!entry) throw bad(`${configFile}: ${key}`, `unknown key; ${hint}`);
      values[entry[0]] = entry[1].parse(raw, `${configFile}: ${key}`);
    }
  }

  for (const [prop, option] of Object.entries(spec)) {
    const name = envName(option.key);
    const raw = options.env[name];
    if (raw !== undefined && raw !== '') values[prop] = option.parse(raw, name);
  }

  for (const [prop, option, raw, name] of flags) values[prop] = option.parse(raw, name);

  return { config: Object.freeze(values) as ConfigOf<S>, args, help };
}

function describeDefault(option: OptionSpec<unknown>): string {
  if (option.secret) return '(unset)';
  const value = option.default;
  if (Array.isArray(value)) return value.length ? value.join(',') : '(empty)';
  if (value === '') return '(empty)';
  if (option.type.startsWith('duration') || option.type.startsWith('size')) {
    return option.type.replace(/^.*\(default (.*)\)$/, '$1');
  }
  return String(value);
}

/** The text printed by `--help`. */
export function renderHelp(command: string, summary: string, spec: ConfigSpec): string {
  const lines = [
    `Usage: ${command} [options]`,
    '',
    summary,
    '',
    'Options (flag, environment variable, default):',
    '',
  ];
  for (const option of Object.values(spec)) {
    lines.push(`  ${flagName(option.key)} <${option.type.replace(/ \(default.*\)$/, '')}>`);
    lines.push(`      ${option.help}`);
    lines.push(
      `      env ${envName(option.key)}, YAML key ${option.key}, default ${describeDefault(option)}`,
    );
  }
  lines.push(
    '',
    '  --config <file>',
    '      Read options from a YAML file (env SHOAL_CONFIG). Flags override env, env overrides the file.',
  );
  lines.push('  --help', '      Show this text.');
  return lines.join('\n');
}

/** The configuration reference (docs/configuration.md), generated so it cannot drift from the code. */
export function renderReference(
  sections: { command: string; summary: string; spec: ConfigSpec }[],
  options: { header?: boolean } = {},
): string {
  const header = [
    '# Configuration reference',
    '',
    '<!-- Generated by `npm run docs:config` from the option definitions; do not edit by hand. -->',
    '',
    'Every service reads its options once at start, from (highest first) command-line flags, `SHOAL_*`',
    'environment variables, a YAML file given with `--config FILE` (or `SHOAL_CONFIG`), and defaults. In the',
    'YAML file, dotted keys are nested maps (`cache.dir` is `cache: { dir: … }`). Durations take `ms`, `s`, `m`,',
    '`h`, `d`; sizes take `KiB`, `MiB`, `GiB` (or `KB`, `MB`, `GB`). An unknown key or a bad value stops the',
    'service with a one-line error that names the key.',
    '',
  ];
  const out = options.header === false ? [] : header;
  for (const section of sections) {
    out.push(
      `## \`${section.command}\``,
      '',
      section.summary,
      '',
      '| key | flag | environment | type | default | description |',
    );
    out.push('|---|---|---|---|---|---|');
    for (const option of Object.values(section.spec)) {
      // A pipe inside a cell (an enum's `table | json`) would end the cell.
      const cell = (text: string) => text.replace(/\|/g, '\\|');
      const type = cell(option.type.replace(/ \(default.*\)$/, ''));
      out.push(
        `| \`${option.key}\` | \`${flagName(option.key)}\` | \`${envName(option.key)}\` | ${type} | \`${cell(describeDefault(option))}\` | ${cell(option.help)} |`,
      );
    }
    out.push('');
  }
  return out.join('\n');
}
