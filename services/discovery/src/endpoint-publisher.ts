/**
 * Keeps the endpoints bucket true: the static registries plus whatever the providers (a registry
 * instance's API) report, health-checked on a timer. A provider that fails is asked again with backoff
 * while its last good endpoints stay published; endpoints no source names any more are removed once every
 * source has answered.
 */
import type { KV } from '@nats-io/kv';
import {
  bucketKeys,
  encode,
  endpointKey,
  endpointKeyToRegistry,
  type EndpointRecord,
  type EventPublisher,
  type Logger,
} from '@shoal/mesh';
import { type CandidateTarget, checkTarget, type EndpointTarget } from './endpoints.js';
import type { DiscoveryMetrics } from './metrics.js';

const kindRank: Record<CandidateTarget['kind'], number> = { mirror: 0, vpc: 1, registry: 2, internet: 2 };

export interface EndpointProvider {
  /** For logs and metrics, e.g. `instance cri-abc`. */
  name: string;
  /** The provider's current endpoints; throws when it cannot tell (its last good answer is kept). */
  fetch(): Promise<EndpointTarget[]>;
  /** How long a good answer holds before the provider is asked again. */
  refreshMs: number;
}

export interface EndpointPublisherOptions {
  kv: () => KV | undefined;
  static: EndpointTarget[];
  providers: EndpointProvider[];
  intervalMs: number;
  timeoutMs: number;
  /** First retry delay after a provider failure; doubles up to the provider's refreshMs. */
  retryMs?: number;
  events: EventPublisher;
  metrics: DiscoveryMetrics;
  log: Logger;
  now?: () => number;
}

export interface EndpointPublisher {
  /** Asks every provider once (failures are retried in the background) and publishes a first check. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Health-checks every endpoint now and publishes the results; one check runs at a time. */
  check(): Promise<EndpointRecord[]>;
  /** Whether each registry has a healthy endpoint, as last checked. */
  health(): Record<string, boolean>;
}

interface ProviderState {
  provider: EndpointProvider;
  /** The last good answer; undefined until the first one. */
  targets: EndpointTarget[] | undefined;
  failures: number;
  timer: NodeJS.Timeout | undefined;
}

export function createEndpointPublisher(options: EndpointPublisherOptions): EndpointPublisher {
  const { log, metrics, events } = options;
  const now = options.now ?? Date.now;
  const retryMs = options.retryMs ?? 1_000;
  const states: ProviderState[] = options.providers.map((provider) => ({
    provider,
    targets: undefined,
    failures: 0,
    timer: undefined,
  }));
  const last = new Map<string, EndpointRecord>();
  let checking: Promise<EndpointRecord[]> | undefined;
  let interval: NodeJS.Timeout | undefined;
  let stopped = false;
  const inflight = new Set<Promise<unknown>>();

  function track<T>(promise: Promise<T>): Promise<T> {
    inflight.add(promise);
    void promise.finally(() => inflight.delete(promise)).catch(() => undefined);
    return promise;
  }

  /**
   * Every source's endpoints merged per registry. Configured mirrors come first, then VPC endpoints,
   * then the public ones (a registry's own URL, an instance's internet endpoint); within a kind, static
   * before providers, in configured order.
   */
  function targets(): EndpointTarget[] {
    const merged = new Map<string, EndpointTarget>();
    for (const target of [...options.static, ...states.flatMap((s) => s.targets ?? [])]) {
      const current = merged.get(target.registry);
      if (!current) {
        merged.set(target.registry, { ...target, candidates: [...target.candidates] });
        continue;
      }
      const seen = new Set(current.candidates.map((c) => c.url));
      current.candidates.push(...target.candidates.filter((c: CandidateTarget) => !seen.has(c.url)));
    }
    for (const target of merged.values()) {
      target.candidates = target.candidates
        .map((candidate, index) => ({ candidate, index }))
        .sort((a, b) => kindRank[a.candidate.kind] - kindRank[b.candidate.kind] || a.index - b.index)
        .map(({ candidate }) => candidate);
    }
    return [...merged.values()];
  }

  async function refresh(state: ProviderState): Promise<void> {
    const { provider } = state;
    let delay: number;
    try {
      const answer = await provider.fetch();
      if (state.failures > 0) log.info({ provider: provider.name }, 'endpoint provider answers again');
      state.targets = answer;
      state.failures = 0;
      metrics.providerLastSuccess.set({ provider: provider.name }, now() / 1000);
      delay = provider.refreshMs;
    } catch (err) {
      state.failures++;
      metrics.providerErrors.inc({ provider: provider.name });
      // Backoff with jitter, never longer than a normal refresh: the last good endpoints stay published.
      const base = Math.min(provider.refreshMs, retryMs * 2 ** Math.min(state.failures - 1, 20));
      delay = Math.round(base * (0.8 + Math.random() * 0.4));
      log.warn(
        {
          provider: provider.name,
          failures: state.failures,
          retryInMs: delay,
          kept: state.targets?.map((t) => t.registry) ?? [],
          err: err instanceof Error ? err.message : String(err),
        },
        'endpoint provider failed; keeping its last good endpoints',
      );
    }
    if (stopped) return;
    state.timer = setTimeout(() => {
      void track(refresh(state).then(() => check()));
    }, delay);
    state.timer.unref();
  }

  function noteChanges(record: EndpointRecord): void {
    const before = last.get(record.registry);
    const previous = new Map(before?.endpoints.map((e) => [e.url, e]) ?? []);
    for (const endpoint of record.endpoints) {
      const was = previous.get(endpoint.url);
      previous.delete(endpoint.url);
      if (was ? was.healthy === endpoint.healthy : endpoint.healthy) continue;
      const reason = endpoint.healthy
        ? was
          ? 'answers again'
          : 'new endpoint'
        : `unhealthy: ${endpoint.error ?? 'no answer'}`;
      log.info(
        { registry: record.registry, url: endpoint.url, healthy: endpoint.healthy, reason },
        'registry endpoint changed',
      );
      events.publish({
        type: 'endpoint_changed',
        registry: record.registry,
        url: endpoint.url,
        healthy: endpoint.healthy,
        reason,
      });
    }
    for (const gone of previous.values()) {
      log.info({ registry: record.registry, url: gone.url }, 'registry endpoint removed');
      events.publish({
        type: 'endpoint_changed',
        registry: record.registry,
        url: gone.url,
        healthy: false,
        reason: 'no longer listed',
      });
    }
  }

  /** Removes published registries that no source names, once every source has answered at least once. */
  async function prune(kv: KV, current: Set<string>): Promise<void> {
    if (states.some((s) => s.targets === undefined)) return;
    for (const key of await bucketKeys(kv, (key) => !current.has(endpointKeyToRegistry(key)))) {
      const registry = endpointKeyToRegistry(key);
      await kv.delete(key);
      last.delete(registry);
      metrics.endpointHealthy.remove({ registry });
      log.info({ registry }, 'registry no longer published');
    }
  }

  async function checkOnce(): Promise<EndpointRecord[]> {
    const list = targets();
    const records = await Promise.all(list.map((t) => checkTarget(t, options.timeoutMs, now)));
    const kv = options.kv();
    for (const record of records) {
      noteChanges(record);
      last.set(record.registry, record);
      metrics.endpointHealthy.set({ registry: record.registry }, record.healthy ? 1 : 0);
      try {
        await kv?.put(endpointKey(record.registry), encode(record));
      } catch (err) {
        log.warn({ err, registry: record.registry }, 'could not publish a registry endpoint');
      }
    }
    if (kv) {
      await prune(kv, new Set(list.map((t) => t.registry))).catch((err: unknown) =>
        log.warn({ err }, 'could not remove registries no longer configured'),
      );
    }
    return records;
  }

  const check = () => (checking ??= track(checkOnce()).finally(() => (checking = undefined)));

  return {
    async start() {
      await Promise.all(states.map((state) => track(refresh(state))));
      if (options.static.length || states.length) {
        await check();
        interval = setInterval(() => {
          check().catch((err: unknown) => log.error({ err }, 'endpoint check failed'));
        }, options.intervalMs);
        interval.unref();
      }
    },
    async stop() {
      stopped = true;
      clearInterval(interval);
      for (const state of states) clearTimeout(state.timer);
      await Promise.allSettled([...inflight]);
    },
    check,
    health: () => Object.fromEntries([...last].map(([registry, record]) => [registry, record.healthy])),
  };
}
