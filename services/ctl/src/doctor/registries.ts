/**
 * Whether the registry endpoints discovery publishes answer from this machine: GET /v2/, where 200
 * (open) and 401 (asks for credentials) both prove a live registry, as in discovery's own checks.
 */
import type { EndpointCandidate, EndpointRecord } from '@shoal/mesh';
import { describeFetchError, listSome } from './agents.js';
import { checkOf, type CheckResult } from './checklist.js';
import { sections } from './mesh.js';

export interface EndpointProbe {
  url: string;
  status?: number;
  ms: number;
  error?: string;
}

export async function probeEndpoint(url: string, timeoutMs: number): Promise<EndpointProbe> {
  const started = performance.now();
  try {
    const response = await fetch(`${url.replace(/\/+$/, '')}/v2/`, {
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    await response.arrayBuffer().catch(() => undefined);
    return { url, status: response.status, ms: Math.round(performance.now() - started) };
  } catch (err) {
    return { url, ms: Math.round(performance.now() - started), error: describeFetchError(err, timeoutMs) };
  }
}

const healthy = (p: EndpointProbe) => p.status === 200 || p.status === 401;

function scopeOf(candidate: EndpointCandidate | undefined): string {
  if (candidate?.zone) return `, for zone ${candidate.zone}`;
  if (candidate?.region) return `, for region ${candidate.region}`;
  return '';
}

export function judgeRegistry(record: EndpointRecord, probes: readonly EndpointProbe[]): CheckResult {
  const check = checkOf(`registry:${record.registry}`, sections.registries, record.registry);
  const candidate = (url: string) => record.endpoints.find((e) => e.url === url);
  const describe = (p: EndpointProbe) =>
    `${p.url}${scopeOf(candidate(p.url))} (${p.error ?? `answered ${p.status}`})`;
  const good = probes.filter(healthy);
  const bad = probes.filter((p) => !healthy(p));
  if (probes.length === 0) {
    return check.warn(
      'discovery publishes no endpoint for it',
      "check discovery's registries and instances settings and read its log",
    );
  }
  if (good.length === 0) {
    return check.fail(
      `no endpoint answers GET /v2/ from here: ${listSome(bad.map(describe), 3)}; discovery last found it ${record.healthy ? 'healthy' : 'unhealthy'}`,
      'check the network path from this machine to the registry (DNS, firewall, proxy) and that the registry runs',
    );
  }
  const first = good[0] as EndpointProbe;
  const answered = `${first.url} answered ${first.status} in ${first.ms} ms`;
  if (bad.length) {
    return check.warn(
      `${answered}, but ${listSome(bad.map(describe), 3)} did not`,
      'if this machine is meant to use those (its zone or region), check the network path to them; agents move on to the next endpoint meanwhile',
    );
  }
  return check.ok(probes.length === 1 ? answered : `${probes.length} endpoints answered (${answered})`);
}
