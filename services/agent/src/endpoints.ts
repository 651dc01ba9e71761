/**
 * Which URL to use for a registry. Discovery publishes each registry's endpoints (mirrors for a zone or
 * region, a registry instance's VPC and internet endpoints) with their health; this node orders them by
 * its own zone and region, puts the ones it recently failed with last, and always keeps the URL from its
 * own configuration as a last resort. A request that fails on one endpoint moves on to the next.
 */
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  buckets,
  decode,
  type EndpointCandidate,
  endpointKeyToRegistry,
  type EndpointRecord,
  endpointRecord,
  type Logger,
  topologyRecord,
  type MeshConnection,
  watchBucket,
} from '@shoal/mesh';

export interface RegistryTarget {
  /** The name clients use for the registry: the `ns` query parameter containerd sends. */
  name: string;
  /** The URL from this agent's configuration; '' for a registry known only from discovery. */
  url: string;
}

export function parseRegistries(entries: readonly string[]): RegistryTarget[] {
  return entries.map((entry) => {
    const eq = entry.indexOf('=');
    const url = (eq === -1 ? entry : entry.slice(eq + 1)).replace(/\/+$/, '');
    const name = eq === -1 ? new URL(url).host : entry.slice(0, eq);
    return { name, url };
  });
}

export interface Placement {
  zone: string;
  region: string;
}

export interface EndpointSwitch {
  registry: string;
  from: string;
  to: string;
  reason: string;
}

export interface EndpointHooks {
  onSwitch?: (change: EndpointSwitch) => void;
  onFailure?: (registry: string, url: string, reason: string) => void;
  /** Discovery's endpoints for a registry changed: how many there are now (0 when it was removed). */
  onUpdate?: (registry: string, endpoints: number) => void;
}

interface Failure {
  at: number;
  reason: string;
}

/** Lower ranks first: a mirror for this zone, then endpoints for anywhere, then another zone's mirror. */
function rank(candidate: EndpointCandidate, self: Placement): number {
  if (candidate.zone !== undefined && candidate.zone !== '') return candidate.zone === self.zone ? 0 : 2;
  return 1;
}

/** An endpoint meant for another region is not reachable from here; one for no region or ours is. */
function reachable(candidate: EndpointCandidate, self: Placement): boolean {
  return !candidate.region || !self.region || candidate.region === self.region;
}

export class RegistryEndpoints {
  private readonly configured = new Map<string, RegistryTarget>();
  private readonly published = new Map<string, EndpointRecord>();
  private readonly failures = new Map<string, Failure>();
  /** The URL each registry was last reached at, to notice a switch. */
  private readonly current = new Map<string, string>();

  private self: Placement;

  constructor(
    configured: readonly RegistryTarget[],
    private readonly configuredPlacement: Placement,
    private readonly cooldownMs: number,
    private readonly hooks: EndpointHooks = {},
    private readonly now: () => number = Date.now,
  ) {
    for (const target of configured) this.configured.set(target.name, target);
    this.self = { ...configuredPlacement };
  }

  /**
   * Where this node stands as the cluster says (discovery's topology from node labels); what the agent's
   * own configuration sets wins.
   */
  place(learned: Partial<Placement>): void {
    this.self = {
      zone: this.configuredPlacement.zone || learned.zone || '',
      region: this.configuredPlacement.region || learned.region || '',
    };
  }

  get placement(): Placement {
    return { ...this.self };
  }

  /** The registry requests name none of go to: the first configured one. */
  get first(): RegistryTarget | undefined {
    return this.configured.values().next().value;
  }

  lookup(name: string): RegistryTarget | undefined {
    return this.configured.get(name) ?? (this.published.has(name) ? { name, url: '' } : undefined);
  }

  /** Applies discovery's record for a registry; undefined when it was removed. */
  update(registry: string, record: EndpointRecord | undefined): void {
    if (record) this.published.set(registry, record);
    else this.published.delete(registry);
    this.hooks.onUpdate?.(registry, record?.endpoints.length ?? 0);
  }

  /** Base URLs to try for a registry, best first. */
  order(target: RegistryTarget): string[] {
    const record = this.published.get(target.name);
    const candidates = (record?.endpoints ?? [])
      .map((candidate, index) => ({ candidate, index }))
      .filter(({ candidate }) => reachable(candidate, this.self))
      .sort(
        (a, b) =>
          rank(a.candidate, this.self) - rank(b.candidate, this.self) ||
          Number(b.candidate.healthy) - Number(a.candidate.healthy) ||
          a.index - b.index,
      )
      .map(({ candidate }) => candidate.url);
    if (target.url && !candidates.includes(target.url)) candidates.push(target.url);
    if (candidates.length < 2) return candidates;
    // Endpoints this node failed with lately go last, the least recently failed first among them.
    const now = this.now();
    const fresh = candidates.filter((url) => !this.coolingDown(target.name, url, now));
    const cooling = candidates
      .filter((url) => this.coolingDown(target.name, url, now))
      .sort((a, b) => this.failedAt(target.name, a) - this.failedAt(target.name, b));
    return [...fresh, ...cooling];
  }

  /** A request to this endpoint failed in a way another endpoint might not (refused, timed out, 5xx). */
  failed(registry: string, url: string, reason: string): void {
    this.failures.set(`${registry} ${url}`, { at: this.now(), reason });
    this.hooks.onFailure?.(registry, url, reason);
  }

  /** A request to this endpoint got an answer; reports a switch when the registry was reached elsewhere before. */
  succeeded(registry: string, url: string): void {
    this.failures.delete(`${registry} ${url}`);
    const before = this.current.get(registry);
    this.current.set(registry, url);
    if (before !== undefined && before !== url) {
      const failure = this.failures.get(`${registry} ${before}`);
      this.hooks.onSwitch?.({
        registry,
        from: before,
        to: url,
        reason: failure ? `${before} failed: ${failure.reason}` : 'a better endpoint is available',
      });
    }
  }

  /** For status pages: where each registry was last reached. */
  active(): Record<string, string> {
    return Object.fromEntries(this.current);
  }

  private coolingDown(registry: string, url: string, now: number): boolean {
    const failure = this.failures.get(`${registry} ${url}`);
    return failure !== undefined && now - failure.at < this.cooldownMs;
  }

  private failedAt(registry: string, url: string): number {
    return this.failures.get(`${registry} ${url}`)?.at ?? 0;
  }
}

/**
 * Runs `watch` once NATS is connected, at most one at a time, again after every reconnect if the last
 * one ended, and again a few seconds later if it could not start (its bucket not created yet: discovery
 * creates the buckets, so that they get its replica count; agents only bind to them).
 */
function keepWatching(
  mesh: MeshConnection,
  log: Logger,
  what: string,
  watch: (nc: NatsConnection) => Promise<{ stop(): void; ended: Promise<void> }>,
): { stop(): Promise<void> } {
  let current: { stop(): void; ended: Promise<void> } | undefined;
  let starting = false;
  let stopped = false;
  let retry: NodeJS.Timeout | undefined;
  const start = (nc: NatsConnection) => {
    if (current || starting || stopped || nc.isClosed()) return;
    starting = true;
    void watch(nc)
      .then((started) => {
        if (stopped) {
          started.stop();
          return;
        }
        current = started;
        void started.ended.then(() => {
          if (current === started) current = undefined;
        });
      })
      .catch((err: unknown) => {
        log.debug({ err }, `cannot follow ${what} yet; trying again shortly`);
        retry = setTimeout(() => {
          const now = mesh.connection();
          if (now) start(now);
        }, 5_000);
        retry.unref();
      })
      .finally(() => (starting = false));
  };
  mesh.onConnect(start);
  return {
    async stop() {
      stopped = true;
      clearTimeout(retry);
      current?.stop();
      await current?.ended;
    },
  };
}

/**
 * Learns this node's zone and region from discovery's topology record for it (Kubernetes mode, where the
 * agent cannot read its node's labels itself), for the ones its configuration leaves empty.
 */
export function followOwnTopology(
  mesh: MeshConnection,
  nodeId: string,
  endpoints: RegistryEndpoints,
  log: Logger,
): { stop(): Promise<void> } {
  return keepWatching(mesh, log, 'this node’s topology', async (nc) => {
    const kv = await new Kvm(nc).open(buckets.topology);
    await kv.status();
    const iterator = await kv.watch({ key: nodeId });
    const ended = (async () => {
      for await (const entry of iterator) {
        if (entry.operation !== 'PUT') continue;
        try {
          const record = decode(topologyRecord, entry.value, `topology of ${nodeId}`);
          endpoints.place({ zone: record.zone, region: record.region });
          log.debug({ placement: endpoints.placement }, 'placement from the cluster');
        } catch (err) {
          log.warn({ err }, 'unreadable topology record for this node');
        }
      }
    })().catch(() => undefined);
    return { stop: () => iterator.stop(), ended };
  });
}

/**
 * Keeps `endpoints` in step with discovery's endpoints bucket, from every (re)connect on. Without NATS
 * the agent simply keeps what it last saw, and its configured URLs.
 */
export function followPublishedEndpoints(
  mesh: MeshConnection,
  endpoints: RegistryEndpoints,
  log: Logger,
): { stop(): Promise<void> } {
  return keepWatching(mesh, log, 'registry endpoints', async (nc) => {
    const kv = await new Kvm(nc).open(buckets.endpoints);
    return watchBucket(kv, (entry) => {
      const registry = endpointKeyToRegistry(entry.key);
      if (entry.operation !== 'PUT') {
        endpoints.update(registry, undefined);
        return;
      }
      try {
        endpoints.update(registry, decode(endpointRecord, entry.value, `endpoints of ${registry}`));
      } catch (err) {
        log.warn({ err, registry }, 'unreadable registry endpoint record; keeping the previous one');
      }
    });
  });
}
