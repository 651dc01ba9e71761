/**
 * Checks of the agents: each answers GET /healthz within the timeout, and its clock agrees with this
 * machine's (from the Date header of its answer) and with discovery's (its heartbeat's sentAt against
 * discovery's seenAt).
 */
import type { NodeRecord } from '@shoal/mesh';
import { checkOf, type CheckResult, formatSeconds } from './checklist.js';
import { sections } from './mesh.js';

export interface AgentProbe {
  node: NodeRecord;
  /** This machine's clock when the request was sent and when its answer arrived. */
  sentAt: number;
  receivedAt?: number;
  status?: number;
  /** The answer's Date header. */
  date?: string;
  /** What the agent says of its NATS connection in /healthz, when it says. */
  nats?: boolean;
  error?: string;
}

/** GETs <url>/healthz; never throws: a failure is described in `error`. */
export async function probeAgent(
  node: NodeRecord,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<AgentProbe> {
  const sentAt = now();
  try {
    const response = await fetch(new URL('/healthz', node.url), { signal: AbortSignal.timeout(timeoutMs) });
    const body: unknown = await response.json().catch(() => undefined);
    const receivedAt = now();
    const nats =
      typeof body === 'object' && body !== null && 'nats' in body && typeof body.nats === 'boolean'
        ? body.nats
        : undefined;
    const date = response.headers.get('date');
    return {
      node,
      sentAt,
      receivedAt,
      status: response.status,
      ...(date ? { date } : {}),
      ...(nats === undefined ? {} : { nats }),
    };
  } catch (err) {
    return { node, sentAt, error: describeFetchError(err, timeoutMs) };
  }
}

/** The reason a fetch failed, as a person wants it: "connect ECONNREFUSED 10.0.0.5:65001", "timeout after 3s". */
export function describeFetchError(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return `no answer within ${formatSeconds(timeoutMs)}`;
  }
  const cause = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  return cause instanceof Error ? cause.message : String(cause);
}

/** Runs `work` on every item, at most `limit` at once, keeping the items' order in the results. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Names a few items and counts the rest, so a line stays readable on a large cluster. */
export function listSome(items: readonly string[], max = 5): string {
  return items.length <= max
    ? items.join(', ')
    : `${items.slice(0, max).join(', ')} and ${items.length - max} more`;
}

/**
 * Whether the agents answer /healthz: `only` names the node asked for with --node, which fails when
 * the node registry does not list it.
 */
export function judgeAgentHealth(probes: readonly AgentProbe[], only?: string): CheckResult {
  const check = checkOf(
    'agents',
    sections.agents,
    only ? `agent ${only} answers /healthz` : 'agents answer /healthz',
  );
  if (only && probes.length === 0) {
    return check.fail(
      `node ${only} is not in the node registry: its agent is not running or does not reach NATS and discovery`,
      `check that the agent runs with --node-id ${only} and read its log; \`shoalctl nodes\` lists the registered nodes`,
    );
  }
  if (probes.length === 0) {
    return check.warn(
      'no agents registered',
      "start the agents (the chart's DaemonSet); `shoalctl nodes` shows what discovery knows",
    );
  }
  const broken = probes.filter((p) => p.error !== undefined || p.status !== 200);
  if (broken.length) {
    const what = broken.map((p) => `${p.node.id} (${p.node.url}: ${p.error ?? `answered ${p.status}`})`);
    return check.fail(
      `${broken.length} of ${probes.length} unreachable or unhealthy: ${listSome(what, 3)}`,
      "read those agents' logs, and check that this machine reaches their address (the agent's advertise.url) on the agent port",
    );
  }
  const offline = probes.filter((p) => p.nats === false).map((p) => p.node.id);
  if (offline.length) {
    return check.warn(
      `${offline.length} of ${probes.length} say they are not connected to NATS: ${listSome(offline)}; they pull everything from the registry`,
      "check those agents' NATS settings (nats.servers, credentials, TLS) and read their logs",
    );
  }
  const slowest = probes.reduce((a, b) =>
    (b.receivedAt ?? 0) - b.sentAt > (a.receivedAt ?? 0) - a.sentAt ? b : a,
  );
  const ms = (slowest.receivedAt ?? slowest.sentAt) - slowest.sentAt;
  return check.ok(
    only
      ? `answered in ${ms} ms`
      : `${probes.length} of ${probes.length} answered (slowest: ${slowest.node.id}, ${ms} ms)`,
  );
}

/**
 * How far the agent's clock is ahead of this machine's (negative: behind), from the Date header of an
 * answer. The header has whole seconds, so the agent's clock read somewhere in [date, date + 1 s)
 * while this machine's read somewhere in [sentAt, receivedAt]: the skew is the value of that range
 * closest to zero, which is 0 when the clocks may agree.
 */
export function skewFromDate(date: string, sentAt: number, receivedAt: number): number | undefined {
  const agent = Date.parse(date);
  if (Number.isNaN(agent)) return undefined;
  const lowest = agent - receivedAt;
  const highest = agent + 1000 - sentAt;
  if (lowest > 0) return lowest;
  if (highest < 0) return highest;
  return 0;
}

/** How far the agent's clock is ahead of discovery's, from its last heartbeat; undefined for older agents. */
export function skewFromHeartbeat(node: NodeRecord): number | undefined {
  return node.sentAt === undefined ? undefined : node.sentAt - node.seenAt;
}

export interface ClockReading {
  node: string;
  /** Ahead of this machine, from the Date header. */
  local?: number;
  /** Ahead of discovery, from the heartbeat. */
  discovery?: number;
}

export function clockReadings(probes: readonly AgentProbe[]): ClockReading[] {
  return probes.map((p) => {
    const local =
      p.date !== undefined && p.receivedAt !== undefined
        ? skewFromDate(p.date, p.sentAt, p.receivedAt)
        : undefined;
    const discovery = skewFromHeartbeat(p.node);
    return {
      node: p.node.id,
      ...(local === undefined ? {} : { local }),
      ...(discovery === undefined ? {} : { discovery }),
    };
  });
}

/** "n1 45s ahead of this machine and 44.9s ahead of discovery"; tenths of a second, so ms of latency vanish. */
function describeSkew(reading: ClockReading): string {
  const parts: string[] = [];
  const say = (ms: number | undefined, than: string) => {
    const tenths = Math.round((ms ?? 0) / 100);
    if (tenths !== 0)
      parts.push(`${formatSeconds(Math.abs(tenths) * 100)} ${tenths > 0 ? 'ahead of' : 'behind'} ${than}`);
  };
  say(reading.local, 'this machine');
  say(reading.discovery, 'discovery');
  return parts.length ? `${reading.node} ${parts.join(' and ')}` : '';
}

const largest = (r: ClockReading) => Math.max(Math.abs(r.local ?? 0), Math.abs(r.discovery ?? 0));

/** Warns above `warnMs` of skew, fails above `failMs`, naming the agents out of step. */
export function judgeAgentClocks(
  readings: readonly ClockReading[],
  only?: string,
  warnMs = 2_000,
  failMs = 30_000,
): CheckResult {
  const check = checkOf('clocks', sections.agents, only ? `agent ${only} clock` : 'agent clocks');
  const measured = readings.filter((r) => r.local !== undefined || r.discovery !== undefined);
  if (measured.length === 0) {
    return check.skip(
      readings.length === 0
        ? 'no agent to compare clocks with'
        : 'no agent answered with a Date header or sent its clock in a heartbeat',
    );
  }
  const sorted = [...measured].sort((a, b) => largest(b) - largest(a));
  const fix =
    'synchronise the clocks (chrony or systemd-timesyncd) of the machines named: event timelines, heartbeat ages and lease expiry assume clocks that agree';
  const failing = sorted.filter((r) => largest(r) > failMs);
  if (failing.length) {
    return check.fail(
      `more than ${formatSeconds(failMs)} off: ${listSome(failing.map(describeSkew), 3)}`,
      fix,
    );
  }
  const warning = sorted.filter((r) => largest(r) > warnMs);
  if (warning.length) {
    return check.warn(
      `more than ${formatSeconds(warnMs)} off: ${listSome(warning.map(describeSkew), 3)}`,
      fix,
    );
  }
  const top = describeSkew(sorted[0] as ClockReading);
  const within = `within ${formatSeconds(warnMs)} of this machine's and discovery's`;
  const n = measured.length;
  const whose = only ? 'clock' : n === 1 ? "1 agent's clock" : `${n} agents' clocks`;
  return check.ok(`${whose} ${within}${top ? ` (largest: ${top})` : ''}`);
}
