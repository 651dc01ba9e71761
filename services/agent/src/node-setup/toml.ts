/**
 * A small TOML reader, enough for the runtime configuration files `shoal node-setup` has to understand
 * (containerd's config.toml, registries.conf): tables, arrays of tables, dotted keys, basic and literal
 * strings (also multi-line), numbers, booleans, arrays and inline tables. Dates and times are kept as
 * their text. It reads and never writes: node-setup does not edit these files.
 */

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

export class TomlError extends Error {
  constructor(
    message: string,
    readonly line: number,
  ) {
    super(`line ${line}: ${message}`);
    this.name = 'TomlError';
  }
}

const BARE_KEY = /[A-Za-z0-9_-]/;
const ESCAPES: Record<string, string> = {
  b: '\b',
  t: '\t',
  n: '\n',
  f: '\f',
  r: '\r',
  e: '\x1b',
  '"': '"',
  '\\': '\\',
};

function isTable(value: TomlValue | undefined): value is TomlTable {
  return typeof value === 'object' && !Array.isArray(value);
}

class Parser {
  private pos = 0;

  constructor(private readonly text: string) {}

  parse(): TomlTable {
    const root: TomlTable = {};
    let current = root;
    for (;;) {
      this.skipBlank();
      if (this.pos >= this.text.length) return root;
      if (this.text.startsWith('[[', this.pos)) {
        this.pos += 2;
        const path = this.keyPath();
        this.expect(']]');
        current = this.arrayTable(root, path);
      } else if (this.text[this.pos] === '[') {
        this.pos += 1;
        const path = this.keyPath();
        this.expect(']');
        current = this.table(root, path);
      } else {
        this.keyValue(current);
      }
      this.endOfLine();
    }
  }

  private line(): number {
    let line = 1;
    for (let i = 0; i < this.pos && i < this.text.length; i++) if (this.text[i] === '\n') line++;
    return line;
  }

  private fail(message: string): never {
    throw new TomlError(message, this.line());
  }

  private expect(token: string): void {
    this.skipSpaces();
    if (!this.text.startsWith(token, this.pos)) this.fail(`expected "${token}"`);
    this.pos += token.length;
  }

  private skipSpaces(): void {
    while (this.text[this.pos] === ' ' || this.text[this.pos] === '\t') this.pos++;
  }

  /** Spaces, newlines and comments. */
  private skipBlank(): void {
    for (;;) {
      const c = this.text[this.pos];
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r') this.pos++;
      else if (c === '#') this.skipComment();
      else return;
    }
  }

  private skipComment(): void {
    while (this.pos < this.text.length && this.text[this.pos] !== '\n') this.pos++;
  }

  private endOfLine(): void {
    this.skipSpaces();
    if (this.text[this.pos] === '#') this.skipComment();
    if (this.text.startsWith('\r\n', this.pos)) this.pos += 2;
    else if (this.text[this.pos] === '\n') this.pos += 1;
    else if (this.pos < this.text.length) this.fail('expected the end of the line');
  }

  private key(): string {
    this.skipSpaces();
    const c = this.text[this.pos];
    if (c === '"') return this.basicString();
    if (c === "'") return this.literalString();
    const start = this.pos;
    while (this.pos < this.text.length && BARE_KEY.test(this.text[this.pos] ?? '')) this.pos++;
    if (this.pos === start) this.fail('expected a key');
    return this.text.slice(start, this.pos);
  }

  private keyPath(): string[] {
    const path = [this.key()];
    for (;;) {
      this.skipSpaces();
      if (this.text[this.pos] !== '.') return path;
      this.pos++;
      path.push(this.key());
    }
  }

  private keyValue(target: TomlTable): void {
    const path = this.keyPath();
    this.expect('=');
    this.skipSpaces();
    const value = this.value();
    const last = path.pop() ?? '';
    this.table(target, path)[last] = value;
  }

  /** The table at `path` below `from`, created when missing; an array of tables yields its last element. */
  private table(from: TomlTable, path: readonly string[]): TomlTable {
    let node = from;
    for (const key of path) {
      let next = node[key];
      if (Array.isArray(next)) next = next[next.length - 1];
      if (next === undefined) {
        next = {};
        node[key] = next;
      }
      if (!isTable(next)) this.fail(`"${key}" is a value, not a table`);
      node = next;
    }
    return node;
  }

  private arrayTable(root: TomlTable, path: string[]): TomlTable {
    const last = path.pop() ?? '';
    const parent = this.table(root, path);
    const existing = parent[last];
    const entry: TomlTable = {};
    if (existing === undefined) parent[last] = [entry];
    else if (Array.isArray(existing)) existing.push(entry);
    else this.fail(`"${last}" is not an array of tables`);
    return entry;
  }

  private value(): TomlValue {
    const rest = this.text.slice(this.pos, this.pos + 3);
    if (rest === '"""') return this.multilineBasic();
    if (rest === "'''") return this.multilineLiteral();
    const c = this.text[this.pos];
    if (c === '"') return this.basicString();
    if (c === "'") return this.literalString();
    if (c === '[') return this.array();
    if (c === '{') return this.inlineTable();
    const match = /^[^\s,\]}#]+/.exec(this.text.slice(this.pos));
    if (!match) this.fail('expected a value');
    const token = match[0];
    this.pos += token.length;
    if (token === 'true') return true;
    if (token === 'false') return false;
    const number = Number(token.replace(/_/g, ''));
    if (/^[+-]?(\d|0x|0o|0b|inf|nan)/.test(token) && !Number.isNaN(number) && !/^\d{4}-/.test(token))
      return number;
    return token;
  }

  private escape(): string {
    const c = this.text[this.pos + 1] ?? '';
    if (c === 'u' || c === 'U') {
      const length = c === 'u' ? 4 : 8;
      const hex = this.text.slice(this.pos + 2, this.pos + 2 + length);
      if (!/^[0-9A-Fa-f]+$/.test(hex) || hex.length !== length) this.fail('bad unicode escape');
      this.pos += 2 + length;
      return String.fromCodePoint(parseInt(hex, 16));
    }
    const decoded = ESCAPES[c];
    if (decoded === undefined) this.fail(`bad escape "\\${c}"`);
    this.pos += 2;
    return decoded;
  }

  private basicString(): string {
    this.pos++;
    let out = '';
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined || c === '\n') this.fail('unterminated string');
      if (c === '"') {
        this.pos++;
        return out;
      }
      if (c === '\\') out += this.escape();
      else {
        out += c;
        this.pos++;
      }
    }
  }

  private literalString(): string {
    const end = this.text.indexOf("'", this.pos + 1);
    const newline = this.text.indexOf('\n', this.pos + 1);
    if (end === -1 || (newline !== -1 && newline < end)) this.fail('unterminated string');
    const out = this.text.slice(this.pos + 1, end);
    this.pos = end + 1;
    return out;
  }

  private skipFirstNewline(): void {
    if (this.text.startsWith('\r\n', this.pos)) this.pos += 2;
    else if (this.text[this.pos] === '\n') this.pos += 1;
  }

  private multilineBasic(): string {
    this.pos += 3;
    this.skipFirstNewline();
    let out = '';
    for (;;) {
      if (this.pos >= this.text.length) this.fail('unterminated string');
      if (this.text.startsWith('"""', this.pos)) {
        // Up to two quotes right before the closing delimiter belong to the string.
        let extra = 0;
        while (extra < 2 && this.text[this.pos + 3 + extra] === '"') extra++;
        out += '"'.repeat(extra);
        this.pos += 3 + extra;
        return out;
      }
      const c = this.text[this.pos] ?? '';
      if (c === '\\' && /^\\[ \t]*\r?\n/.test(this.text.slice(this.pos))) {
        // A line-ending backslash removes the newline and the whitespace that follows it.
        this.pos++;
        while (/[ \t\r\n]/.test(this.text[this.pos] ?? '')) this.pos++;
      } else if (c === '\\') out += this.escape();
      else {
        out += c;
        this.pos++;
      }
    }
  }

  private multilineLiteral(): string {
    this.pos += 3;
    this.skipFirstNewline();
    const end = this.text.indexOf("'''", this.pos);
    if (end === -1) this.fail('unterminated string');
    let close = end;
    while (close - end < 2 && this.text[close + 3] === "'") close++;
    const out = this.text.slice(this.pos, close);
    this.pos = close + 3;
    return out;
  }

  private array(): TomlValue[] {
    this.pos++;
    const out: TomlValue[] = [];
    for (;;) {
      this.skipBlank();
      if (this.text[this.pos] === ']') {
        this.pos++;
        return out;
      }
      out.push(this.value());
      this.skipBlank();
      if (this.text[this.pos] === ',') this.pos++;
      else if (this.text[this.pos] !== ']') this.fail('expected "," or "]" in an array');
    }
  }

  private inlineTable(): TomlTable {
    this.pos++;
    const out: TomlTable = {};
    this.skipSpaces();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.keyValue(out);
      this.skipSpaces();
      const c = this.text[this.pos];
      this.pos++;
      if (c === '}') return out;
      if (c !== ',') this.fail('expected "," or "}" in an inline table');
    }
  }
}

/** Parses a TOML document; a syntax error is a TomlError naming the line. */
export function parseToml(text: string): TomlTable {
  return new Parser(text.startsWith('\ufeff') ? text.slice(1) : text).parse();
}

/** The value at a path of keys, or undefined. */
export function tomlGet(doc: TomlTable, path: readonly string[]): TomlValue | undefined {
  let node: TomlValue | undefined = doc;
  for (const key of path) {
    if (!isTable(node)) return undefined;
    node = node[key];
  }
  return node;
}

/** A TOML key path as written in a table header: bare keys where allowed, quoted otherwise. */
export function tomlKeyPath(path: readonly string[]): string {
  return path.map((key) => (/^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key))).join('.');
}
