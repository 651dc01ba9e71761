/**
 * Which nodes a preheat warms: named ones (`n1,n2`), those matching every `zone=`/`vswitch=`/`pool=`
 * term, and of those a share spread over zones and vSwitches, so that as many zones and vSwitches as the
 * share allows hold the image and the rest of a rollout finds it nearby.
 */
import { ShoalError } from '@shoal/mesh';

export interface PlacedNode {
  id: string;
  zone: string;
  vswitch: string;
  pool: string;
}

export const SelectorKeys = ['zone', 'vswitch', 'pool'] as const;
export type SelectorKey = (typeof SelectorKeys)[number];

export type Selector =
  { kind: 'ids'; ids: string[] } | { kind: 'terms'; terms: { key: SelectorKey; value: string }[] };

const usage = 'write node IDs (n1,n2) or zone=Z, vswitch=V, pool=P terms (zone=a,pool=p)';

/** Parses `--nodes`; undefined for an empty selector (every node). */
export function parseSelector(text: string): Selector | undefined {
  const parts = text
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  if (parts.length === 0) return undefined;
  const withTerm = parts.filter((p) => p.includes('='));
  if (withTerm.length === 0) return { kind: 'ids', ids: [...new Set(parts)] };
  if (withTerm.length !== parts.length) {
    throw new ShoalError('SHOAL_ERR_CONFIG', `--nodes "${text}" mixes node IDs and terms: ${usage}`);
  }
  const terms = parts.map((part) => {
    const eq = part.indexOf('=');
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    if (!(SelectorKeys as readonly string[]).includes(key) || value === '') {
      throw new ShoalError('SHOAL_ERR_CONFIG', `--nodes: "${part}" is not a term: ${usage}`);
    }
    return { key: key as SelectorKey, value };
  });
  return { kind: 'terms', terms };
}

const list = (values: Iterable<string>, max = 20): string => {
  const all = [...new Set(values)].sort();
  const shown = all.slice(0, max).map((v) => v || '(none)');
  return all.length > max ? `${shown.join(', ')} and ${all.length - max} more` : shown.join(', ');
};

/** One line naming the zones, vSwitches (and pools, if any) there are, for "nothing matched" errors. */
function whatExists(nodes: readonly PlacedNode[]): string {
  const pools = nodes.map((n) => n.pool).filter((p) => p !== '');
  return (
    `zones: ${list(nodes.map((n) => n.zone))}; vSwitches: ${list(nodes.map((n) => `${n.zone || '-'}/${n.vswitch || '-'}`))}` +
    (pools.length ? `; pools: ${list(pools)}` : '')
  );
}

export function matchSelector<N extends PlacedNode>(
  nodes: readonly N[],
  selector: Selector | undefined,
): N[] {
  if (nodes.length === 0) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      'no nodes are registered in the mesh: are discovery and the agents running? (shoalctl nodes lists them)',
    );
  }
  if (!selector) return [...nodes];
  if (selector.kind === 'ids') {
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const missing = selector.ids.filter((id) => !byId.has(id));
    if (missing.length > 0) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        `no node ${missing.join(', ')} in the mesh; its nodes are ${list(byId.keys())}`,
      );
    }
    return selector.ids.map((id) => byId.get(id) as N);
  }
  const matched = nodes.filter((n) => selector.terms.every((t) => n[t.key] === t.value));
  if (matched.length === 0) {
    const terms = selector.terms.map((t) => `${t.key}=${t.value}`).join(',');
    throw new ShoalError('SHOAL_ERR_CONFIG', `no node matches ${terms}; ${whatExists(nodes)}`);
  }
  return matched;
}

/**
 * Shares `seats` among groups of the given sizes: each group gets one while seats last (the larger
 * groups first), the rest in proportion to the groups' sizes (largest remainder), never more than a
 * group holds.
 */
export function apportion(seats: number, sizes: readonly number[]): number[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  const given = sizes.map(() => 0);
  const quota = sizes.map((size) => (total === 0 ? 0 : (seats * size) / total));
  for (let seat = 0; seat < Math.min(seats, total); seat++) {
    let best = -1;
    for (let i = 0; i < sizes.length; i++) {
      if ((given[i] ?? 0) >= (sizes[i] ?? 0)) continue;
      if (best === -1) {
        best = i;
        continue;
      }
      const [gi, gb] = [given[i] ?? 0, given[best] ?? 0];
      // A group without a seat comes first; then the one furthest below its share; then the larger.
      const better =
        gi === 0 && gb !== 0
          ? true
          : gi !== 0 && gb === 0
            ? false
            : (quota[i] ?? 0) - gi !== (quota[best] ?? 0) - gb
              ? (quota[i] ?? 0) - gi > (quota[best] ?? 0) - gb
              : (sizes[i] ?? 0) > (sizes[best] ?? 0);
      if (better) best = i;
    }
    if (best === -1) break;
    given[best] = (given[best] ?? 0) + 1;
  }
  return given;
}

function groupBy<T>(items: readonly T[], key: (item: T) => string): [string, T[]][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k) ?? [];
    group.push(item);
    groups.set(k, group);
  }
  return [...groups].sort(([a], [b]) => a.localeCompare(b));
}

/**
 * `percent` of the nodes (rounded up, at least one), spread over zones and then, within each zone, over
 * its vSwitches; within a vSwitch the lowest IDs, so the same mesh gives the same choice.
 */
export function spreadPercent<N extends PlacedNode>(nodes: readonly N[], percent: number): N[] {
  if (percent >= 100) return [...nodes];
  const count = Math.min(nodes.length, Math.max(1, Math.ceil((nodes.length * percent) / 100)));
  const zones = groupBy(nodes, (n) => n.zone);
  const perZone = apportion(
    count,
    zones.map(([, members]) => members.length),
  );
  const chosen: N[] = [];
  zones.forEach(([, members], z) => {
    const vswitches = groupBy(members, (n) => n.vswitch);
    const perVswitch = apportion(
      perZone[z] ?? 0,
      vswitches.map(([, m]) => m.length),
    );
    vswitches.forEach(([, m], v) => {
      const sorted = [...m].sort((a, b) => a.id.localeCompare(b.id));
      chosen.push(...sorted.slice(0, perVswitch[v] ?? 0));
    });
  });
  return chosen;
}

/** The nodes `--nodes` and `--percent` pick out of the mesh's. */
export function selectNodes<N extends PlacedNode>(
  nodes: readonly N[],
  selector: Selector | undefined,
  percent: number,
): N[] {
  return spreadPercent(matchSelector(nodes, selector), percent);
}
