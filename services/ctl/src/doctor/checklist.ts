/**
 * The doctor's checklist: what a check found, how the list is printed, and how checks run: all at once,
 * each within a deadline, their results listed in the order the checks were declared however long each
 * one takes.
 */
export const CheckStatuses = { ok: 'ok', warn: 'warn', fail: 'fail', skip: 'skip' } as const;
export type CheckStatus = (typeof CheckStatuses)[keyof typeof CheckStatuses];

export interface CheckResult {
  /** Stable name, for scripts reading --output json: e.g. `nats`, `scheduler`, `hosts-toml:<registry>`. */
  id: string;
  /** The heading it is printed under. */
  section: string;
  title: string;
  status: CheckStatus;
  /** What was found, on one line. */
  detail: string;
  /** What to do about a warning or failure, on one line. */
  fix?: string;
}

export const symbols: Record<CheckStatus, string> = { ok: '✓', warn: '!', fail: '✗', skip: '-' };

/** Builds results of one check: `ok(...)`, `warn(..., fix)`, `fail(..., fix)`, `skip(...)`. */
export function checkOf(id: string, section: string, title: string) {
  const result = (status: CheckStatus, detail: string, fix?: string): CheckResult => ({
    id,
    section,
    title,
    status,
    detail: oneLine(detail),
    ...(fix === undefined ? {} : { fix: oneLine(fix) }),
  });
  return {
    ok: (detail: string) => result('ok', detail),
    warn: (detail: string, fix: string) => result('warn', detail, fix),
    fail: (detail: string, fix: string) => result('fail', detail, fix),
    skip: (detail: string) => result('skip', detail),
  };
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

export interface CheckSummary {
  passed: number;
  warnings: number;
  failed: number;
  skipped: number;
}

export function summarise(results: readonly CheckResult[]): CheckSummary {
  const count = (status: CheckStatus) => results.filter((r) => r.status === status).length;
  return { passed: count('ok'), warnings: count('warn'), failed: count('fail'), skipped: count('skip') };
}

export function formatSummary(results: readonly CheckResult[]): string {
  const { passed, warnings, failed, skipped } = summarise(results);
  const parts = [
    `${passed} passed`,
    `${warnings} warning${warnings === 1 ? '' : 's'}`,
    `${failed} failed`,
    ...(skipped ? [`${skipped} not checked`] : []),
  ];
  return `${results.length} check${results.length === 1 ? '' : 's'}: ${parts.join(', ')}`;
}

/**
 * One section's results: a heading, then a line per check (symbol, title, what was found) and, under
 * each warning or failure, what to do. Titles are padded to `width` so that sections line up.
 */
export function formatSection(section: string, results: readonly CheckResult[], width: number): string {
  const lines = [section];
  for (const result of results) {
    lines.push(`  ${symbols[result.status]} ${result.title.padEnd(width)}  ${result.detail}`.trimEnd());
    if (result.fix && (result.status === 'warn' || result.status === 'fail')) {
      lines.push(`      fix: ${result.fix}`);
    }
  }
  return lines.join('\n');
}

/** Every result, grouped under its section in the order sections first appear. */
export function formatChecklist(results: readonly CheckResult[]): string {
  const width = Math.max(0, ...results.map((r) => r.title.length));
  const sections = [...new Set(results.map((r) => r.section))];
  return [
    ...sections.map((s) =>
      formatSection(
        s,
        results.filter((r) => r.section === s),
        width,
      ),
    ),
    formatSummary(results),
  ].join('\n\n');
}

export interface Check {
  /** What is reported if the check throws or misses its deadline. */
  id: string;
  section: string;
  title: string;
  /** Overrides the runner's deadline, for a check that makes many requests of its own, each bounded. */
  deadlineMs?: number;
  run(): Promise<CheckResult | CheckResult[]>;
}

/** Thrown by a check whose prerequisite is missing (NATS unreachable, say): it is listed as not checked. */
export class NotChecked extends Error {}

class DeadlineError extends Error {}

/** A promise that settles with `work`, or rejects once `ms` have passed. */
export async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  if (!Number.isFinite(ms)) return await work;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(`${what}: no answer within ${formatSeconds(ms)}`)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${(ms / 1000).toFixed(1)}s`;
}

/**
 * Runs every check at once and lists their results in declaration order, whatever order they finish
 * in. A check that throws, or misses `deadlineMs`, fails with the reason.
 */
export async function runChecks(checks: readonly Check[], deadlineMs: number): Promise<CheckResult[]> {
  const results = await Promise.all(
    checks.map(async (check): Promise<CheckResult[]> => {
      try {
        const found = await within(check.deadlineMs ?? deadlineMs, check.title, check.run());
        return Array.isArray(found) ? found : [found];
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        const result = checkOf(check.id, check.section, check.title);
        if (err instanceof NotChecked) return [result.skip(message)];
        return [
          err instanceof DeadlineError
            ? result.fail(
                message,
                'raise --timeout if this machine or its network is slow; otherwise find what hangs',
              )
            : result.fail(
                message,
                'an unexpected error in the check: run doctor again, and report it if it stays',
              ),
        ];
      }
    }),
  );
  return results.flat();
}
