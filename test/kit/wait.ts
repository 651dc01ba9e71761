import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitForOptions {
  /** How long to keep trying before failing; 10 s unless given. */
  timeoutMs?: number;
  /** Pause between attempts; 50 ms unless given. */
  intervalMs?: number;
  /** What is being waited for, used in the timeout message so a failure says what never happened. */
  what?: string;
}

/**
 * Calls `fn` until it returns a truthy value and resolves with that value. A thrown error counts as
 * "not yet" so probes can be written naively; the last error is quoted in the timeout message
 * because it is usually the explanation of why the condition never became true.
 */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  options: WaitForOptions = {},
): Promise<NonNullable<T>> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 50;
  const what = options.what ?? 'condition';
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const reason = lastError === undefined ? '' : `; last error: ${describeError(lastError)}`;
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${reason}`);
    }
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
}

export interface WaitForHttpOptions {
  /** Which status codes mean "ready"; any status below 500 unless given, since 401 still proves the server answers. */
  accept?: (status: number) => boolean;
  intervalMs?: number;
}

/** Polls `url` with GET until the server answers with an accepted status; resolves with that status. */
export async function waitForHttp(
  url: string,
  timeoutMs = 10_000,
  options: WaitForHttpOptions = {},
): Promise<number> {
  const accept = options.accept ?? ((status: number) => status < 500);
  return await waitFor(
    async () => {
      const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      // The body is drained so the connection is released instead of lingering until GC.
      await response.arrayBuffer();
      if (!accept(response.status)) throw new Error(`HTTP ${response.status}`);
      return response.status;
    },
    { timeoutMs, intervalMs: options.intervalMs ?? 50, what: `HTTP ${url}` },
  );
}

/** Resolves once something accepts TCP connections on host:port (127.0.0.1 unless given). */
export async function waitForTcp(port: number, timeoutMs = 10_000, host = '127.0.0.1'): Promise<void> {
  await waitFor(() => tcpProbe(host, port), { timeoutMs, what: `TCP ${host}:${port}` });
}

/** Returns whether a TCP connection to host:port succeeds right now. */
export async function tcpProbe(host: string, port: number): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export function describeError(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? ` (cause: ${err.cause.message})` : '';
    return `${err.message}${cause}`;
  }
  return String(err);
}
