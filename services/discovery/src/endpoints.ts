/**
 * Registry endpoints. A registry (the name images use, host[:port]) may be reachable several ways: the
 * registry itself, mirrors meant for one zone or region, or a cloud registry instance's VPC and internet
 * endpoints. Each is health-checked with GET /v2/, the one request every OCI registry answers: 200 (open)
 * and 401 (asks for credentials) both prove a live registry; anything else, a timeout or a refused
 * connection does not.
 */
import { type EndpointCandidate, type EndpointRecord, ShoalError } from '@shoal/mesh';

export type CandidateTarget = Omit<EndpointCandidate, 'healthy' | 'latencyMs' | 'error'>;

export interface EndpointTarget {
  /** The registry's name as image references give it: host[:port]. */
  registry: string;
  /** `static`, or `instance:<id>`. */
  source: string;
  /** In the order to try them, before agents apply their own zone and region. */
  candidates: CandidateTarget[];
}

const urlPattern = /^https?:\/\/[^\s/?#@]+\/?$/;

function configError(key: string, message: string): ShoalError {
  return new ShoalError('SHOAL_ERR_CONFIG', `${key}: ${message}`, { details: { key } });
}

function baseUrl(raw: string, key: string, entry: string): string {
  if (!urlPattern.test(raw)) {
    throw configError(key, `"${entry}": "${raw}" is not an http(s)://host[:port] URL`);
  }
  const parsed = new URL(raw);
  return `${parsed.protocol}//${parsed.host}`;
}

/**
 * The static provider: `registries` entries are `[name=]URL` (the name defaults to the URL's host), and
 * `mirrors` entries are `name[@zone:Z|@region:R]=URL`, each naming a registry from `registries`. A
 * registry's own URL is tried after its mirrors: mirrors exist to keep traffic off it.
 */
export function staticTargets(registries: readonly string[], mirrors: readonly string[]): EndpointTarget[] {
  const targets = new Map<string, EndpointTarget>();
  for (const entry of registries) {
    const eq = entry.indexOf('=');
    const url = baseUrl(eq === -1 ? entry : entry.slice(eq + 1), 'registries', entry);
    const name = eq === -1 ? new URL(url).host : entry.slice(0, eq);
    if (!name || /[\s/@=]/.test(name)) throw configError('registries', `"${entry}": bad registry name`);
    if (targets.has(name)) throw configError('registries', `"${name}" is listed twice`);
    targets.set(name, { registry: name, source: 'static', candidates: [{ url, kind: 'registry' }] });
  }
  const mirrorsOf = new Map<string, CandidateTarget[]>();
  for (const entry of mirrors) {
    const match = /^([^@=\s]+)(?:@(zone|region):([^=\s]+))?=(.+)$/.exec(entry);
    if (!match) {
      throw configError(
        'mirrors',
        `"${entry}" is not name[@zone:Z|@region:R]=URL (e.g. registry.example.com@zone:cn-hangzhou-h=http://10.0.1.5:5000)`,
      );
    }
    const [, name = '', scope, place, rawUrl = ''] = match;
    if (!targets.has(name)) {
      throw configError('mirrors', `"${entry}" names registry "${name}", which is not in registries`);
    }
    const candidate: CandidateTarget = { url: baseUrl(rawUrl, 'mirrors', entry), kind: 'mirror' };
    if (scope === 'zone') candidate.zone = place;
    if (scope === 'region') candidate.region = place;
    mirrorsOf.set(name, [...(mirrorsOf.get(name) ?? []), candidate]);
  }
  for (const [name, list] of mirrorsOf) {
    const target = targets.get(name);
    if (target) target.candidates = [...list, ...target.candidates];
  }
  return [...targets.values()];
}

export async function checkCandidate(
  candidate: CandidateTarget,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<EndpointCandidate> {
  const started = now();
  let healthy = false;
  let error: string | undefined;
  try {
    const response = await fetch(`${candidate.url}/v2/`, {
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    healthy = response.status === 200 || response.status === 401;
    if (!healthy) error = `GET /v2/ answered ${response.status}`;
    // The body is not needed, but reading it lets the connection be reused or closed cleanly.
    await response.arrayBuffer().catch(() => undefined);
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause : err;
    error =
      cause instanceof Error
        ? `${cause.name === 'TimeoutError' ? 'timeout: ' : ''}${cause.message}`
        : String(cause);
  }
  return {
    ...candidate,
    healthy,
    latencyMs: Math.max(0, now() - started),
    ...(error === undefined ? {} : { error: error.slice(0, 512) }),
  };
}

/** Checks every endpoint of a registry at once and summarises them in one record. */
export async function checkTarget(
  target: EndpointTarget,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<EndpointRecord> {
  const endpoints = await Promise.all(target.candidates.map((c) => checkCandidate(c, timeoutMs, now)));
  const best = endpoints.find((e) => e.healthy) ?? endpoints[0];
  if (!best) throw new Error(`registry ${target.registry} has no endpoints`);
  return {
    registry: target.registry,
    url: best.url,
    healthy: best.healthy,
    checkedAt: now(),
    source: target.source,
    endpoints,
  };
}
