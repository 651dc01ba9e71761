/**
 * Static registry endpoints: each configured registry is health-checked with GET /v2/, the one request
 * every OCI registry answers. 200 (open) and 401 (asks for credentials) both prove a live registry;
 * anything else, a timeout or a refused connection does not.
 */
import type { EndpointRecord } from '@shoal/mesh';

export interface EndpointTarget {
  /** The registry's key as image references name it: host[:port]. */
  registry: string;
  /** Base URL without a trailing slash. */
  url: string;
}

export function endpointTarget(raw: string): EndpointTarget {
  const parsed = new URL(raw);
  return { registry: parsed.host, url: `${parsed.protocol}//${parsed.host}` };
}

export async function checkEndpoint(
  target: EndpointTarget,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<EndpointRecord> {
  let healthy = false;
  try {
    const response = await fetch(`${target.url}/v2/`, {
      redirect: 'manual',
      signal: AbortSignal.timeout(timeoutMs),
    });
    healthy = response.status === 200 || response.status === 401;
    // The body is not needed, but reading it lets the connection be reused or closed cleanly.
    await response.arrayBuffer().catch(() => undefined);
  } catch {
    healthy = false;
  }
  return { registry: target.registry, url: target.url, healthy, checkedAt: now(), source: 'static' };
}
