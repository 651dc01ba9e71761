import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentError, type PreheatAgent, type PreheatJobView } from '../src/preheat/agents.js';
import { credentialsFromDockerConfig, readDockerCredentials } from '../src/preheat/docker-config.js';
import { formatSummary, LiveProgress, progressBar } from '../src/preheat/progress.js';
import { parseImageReference, registryBaseUrl } from '../src/preheat/reference.js';
import { parseWwwAuthenticate, RegistryClient, resolveImage } from '../src/preheat/registry.js';
import { runPreheat } from '../src/preheat/run.js';
import { apportion, parseSelector, type PlacedNode, selectNodes } from '../src/preheat/select.js';

const hex = (c: string) => c.repeat(64);
const digest = (c: string) => `sha256:${hex(c)}`;

describe('image references', () => {
  it('finds the registry, repository, tag and digest', () => {
    expect(parseImageReference('registry.example.com:5000/team/app:v1')).toEqual({
      registry: 'registry.example.com:5000',
      repository: 'team/app',
      tag: 'v1',
      reference: 'v1',
    });
    expect(parseImageReference(`127.0.0.1:5000/team/app@${digest('a')}`)).toEqual({
      registry: '127.0.0.1:5000',
      repository: 'team/app',
      digest: digest('a'),
      reference: digest('a'),
    });
    // With both, the digest is what is pulled.
    expect(parseImageReference(`localhost/app:v2@${digest('b')}`)).toMatchObject({
      registry: 'localhost',
      repository: 'app',
      tag: 'v2',
      reference: digest('b'),
    });
    expect(parseImageReference('localhost:5000/app')).toMatchObject({
      registry: 'localhost:5000',
      repository: 'app',
      reference: 'latest',
    });
  });

  it('reads a first component without a dot, port or localhost as part of a Docker Hub repository', () => {
    expect(parseImageReference('team/app:1.0')).toMatchObject({
      registry: 'docker.io',
      repository: 'team/app',
      tag: '1.0',
    });
    expect(parseImageReference('busybox')).toMatchObject({
      registry: 'docker.io',
      repository: 'library/busybox',
      reference: 'latest',
    });
    expect(parseImageReference('index.docker.io/library/alpine:3')).toMatchObject({ registry: 'docker.io' });
  });

  it('refuses what is not a reference, saying how to write one', () => {
    for (const bad of [
      '',
      'Registry.example.com/Team/App',
      'host:5000/app@sha256:12',
      'host/app:-bad',
      'host/',
    ]) {
      expect(() => parseImageReference(bad), bad).toThrow(/not an image reference.*registry\/repository:tag/);
    }
  });

  it('speaks HTTP to loopback registries and when told to', () => {
    expect(registryBaseUrl('127.0.0.1:5000', false)).toBe('http://127.0.0.1:5000');
    expect(registryBaseUrl('localhost', false)).toBe('http://localhost');
    expect(registryBaseUrl('registry.example.com', false)).toBe('https://registry.example.com');
    expect(registryBaseUrl('registry.example.com', true)).toBe('http://registry.example.com');
    expect(registryBaseUrl('docker.io', false)).toBe('https://registry-1.docker.io');
  });
});

describe('Docker config credentials', () => {
  const auth = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString('base64');
  const config = JSON.stringify({
    auths: {
      'registry.example.com:5000': { auth: auth('alice', 'pa:ss') },
      'https://other.example.com/v1/': { auth: auth('bob', 'b-pw') },
      'https://index.docker.io/v1/': { auth: auth('hub', 'h-pw') },
      'split.example.com': { username: 'carol', password: 'c-pw' },
      'broken.example.com': { auth: Buffer.from('no-colon').toString('base64') },
    },
    credsStore: 'desktop',
  });

  it('finds an entry by host, by URL, and Docker Hub by any of its names', () => {
    const find = (registry: string) => credentialsFromDockerConfig(config, registry, 'config.json');
    // The password keeps everything after the first colon.
    expect(find('registry.example.com:5000')).toEqual({ username: 'alice', password: 'pa:ss' });
    expect(find('other.example.com')).toEqual({ username: 'bob', password: 'b-pw' });
    expect(find('docker.io')).toEqual({ username: 'hub', password: 'h-pw' });
    expect(find('split.example.com')).toEqual({ username: 'carol', password: 'c-pw' });
    expect(find('registry.example.com')).toBeUndefined();
    expect(find('unknown.example.com')).toBeUndefined();
    expect(() => find('broken.example.com')).toThrow(/not base64 of user:password; run docker login/);
  });

  it('reads the file, treats a missing default file as empty and names a broken one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-docker-config-'));
    try {
      const file = join(dir, 'config.json');
      await writeFile(file, config);
      expect(await readDockerCredentials(file, 'other.example.com')).toEqual({
        username: 'bob',
        password: 'b-pw',
      });
      await writeFile(file, '{ not json');
      await expect(readDockerCredentials(file, 'other.example.com')).rejects.toThrow(
        `${file} is not valid JSON`,
      );
      await expect(readDockerCredentials(join(dir, 'missing.json'), 'x.example.com')).rejects.toThrow(
        /cannot read the Docker config .*ENOENT.*--docker-config/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('WWW-Authenticate', () => {
  it('parses Bearer and Basic challenges with quoted and plain values', () => {
    expect(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:pull,push"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.example.com/token',
          service: 'registry.example.com',
          scope: 'repository:team/app:pull,push',
        },
      },
    ]);
    expect(parseWwwAuthenticate('Basic realm="shoal-test"')).toEqual([
      { scheme: 'basic', params: { realm: 'shoal-test' } },
    ]);
    expect(parseWwwAuthenticate('BASIC Realm = "a \\"quoted\\" realm" , charset=UTF-8')).toEqual([
      { scheme: 'basic', params: { realm: 'a "quoted" realm', charset: 'UTF-8' } },
    ]);
  });

  it('splits several challenges in one header', () => {
    expect(parseWwwAuthenticate('Basic realm="r1", Bearer realm="https://t/x",service=s')).toEqual([
      { scheme: 'basic', params: { realm: 'r1' } },
      { scheme: 'bearer', params: { realm: 'https://t/x', service: 's' } },
    ]);
    expect(parseWwwAuthenticate('')).toEqual([]);
    expect(parseWwwAuthenticate('Negotiate')).toEqual([{ scheme: 'negotiate', params: {} }]);
  });
});

const node = (id: string, zone: string, vswitch: string, pool = ''): PlacedNode => ({
  id,
  zone,
  vswitch,
  pool,
});

describe('node selection', () => {
  const nodes = [
    node('a1', 'zone-a', 'vsw-1', 'general'),
    node('a2', 'zone-a', 'vsw-1', 'gpu'),
    node('a3', 'zone-a', 'vsw-2', 'general'),
    node('b1', 'zone-b', 'vsw-3', 'general'),
    node('b2', 'zone-b', 'vsw-3', 'gpu'),
  ];
  const ids = (list: PlacedNode[]) => list.map((n) => n.id);

  it('takes named nodes, or those matching every term', () => {
    expect(ids(selectNodes(nodes, parseSelector('b1, a2'), 100))).toEqual(['b1', 'a2']);
    expect(ids(selectNodes(nodes, parseSelector('zone=zone-a'), 100))).toEqual(['a1', 'a2', 'a3']);
    expect(ids(selectNodes(nodes, parseSelector('zone=zone-a,pool=general'), 100))).toEqual(['a1', 'a3']);
    expect(ids(selectNodes(nodes, parseSelector('vswitch=vsw-3'), 100))).toEqual(['b1', 'b2']);
    expect(ids(selectNodes(nodes, parseSelector(''), 100))).toEqual(ids(nodes));
  });

  it('says what exists when nothing matches', () => {
    expect(() => selectNodes(nodes, parseSelector('zone=zone-x'), 100)).toThrow(
      'no node matches zone=zone-x; zones: zone-a, zone-b; vSwitches: zone-a/vsw-1, zone-a/vsw-2, zone-b/vsw-3; pools: general, gpu',
    );
    expect(() => selectNodes(nodes, parseSelector('a1,z9'), 100)).toThrow(
      'no node z9 in the mesh; its nodes are a1, a2, a3, b1, b2',
    );
    expect(() => selectNodes([], undefined, 100)).toThrow(/no nodes are registered/);
  });

  it('refuses selectors it cannot read', () => {
    expect(() => parseSelector('a1,zone=x')).toThrow(/mixes node IDs and terms/);
    expect(() => parseSelector('rack=r1')).toThrow(/"rack=r1" is not a term/);
    expect(() => parseSelector('zone=')).toThrow(/"zone=" is not a term/);
  });

  it('spreads a share over zones, then over vSwitches within a zone', () => {
    // 40% of 5 is 2: one per zone.
    expect(ids(selectNodes(nodes, undefined, 40))).toEqual(['a1', 'b1']);
    // 60% of 5 is 3: zone-a (3 nodes) gets 2, one on each of its vSwitches.
    expect(ids(selectNodes(nodes, undefined, 60))).toEqual(['a1', 'a3', 'b1']);
    // Rounded up, at least one.
    expect(ids(selectNodes(nodes, undefined, 1))).toEqual(['a1']);
    expect(ids(selectNodes(nodes, undefined, 100))).toEqual(ids(nodes));
    // A share of what the selector matched.
    expect(ids(selectNodes(nodes, parseSelector('pool=general'), 50))).toEqual(['a1', 'b1']);
  });

  it('gives every zone and vSwitch a node while there are enough, the rest in proportion', () => {
    const big: PlacedNode[] = [];
    for (let i = 0; i < 80; i++) big.push(node(`a${String(i).padStart(2, '0')}`, 'zone-a', `vsw-${i % 4}`));
    for (let i = 0; i < 20; i++) big.push(node(`b${String(i).padStart(2, '0')}`, 'zone-b', 'vsw-9'));
    const chosen = selectNodes(big, undefined, 10);
    expect(chosen).toHaveLength(10);
    expect(chosen.filter((n) => n.zone === 'zone-a')).toHaveLength(8);
    expect(chosen.filter((n) => n.zone === 'zone-b')).toHaveLength(2);
    const perVswitch = new Map<string, number>();
    for (const n of chosen) perVswitch.set(n.vswitch, (perVswitch.get(n.vswitch) ?? 0) + 1);
    expect(Object.fromEntries(perVswitch)).toEqual({
      'vsw-0': 2,
      'vsw-1': 2,
      'vsw-2': 2,
      'vsw-3': 2,
      'vsw-9': 2,
    });
    // A small zone still gets one node when the share alone would leave it none.
    const lopsided = [...big.slice(0, 80), node('c0', 'zone-c', 'vsw-c')];
    expect(selectNodes(lopsided, undefined, 3).map((n) => n.zone)).toEqual(['zone-a', 'zone-a', 'zone-c']);
  });

  it('apportions seats: one per group first, the rest by largest remainder, never beyond a group', () => {
    expect(apportion(2, [90, 10])).toEqual([1, 1]);
    expect(apportion(10, [90, 10])).toEqual([9, 1]);
    expect(apportion(1, [3, 5, 2])).toEqual([0, 1, 0]);
    expect(apportion(6, [1, 1, 10])).toEqual([1, 1, 4]);
    expect(apportion(20, [2, 3])).toEqual([2, 3]);
    expect(apportion(0, [4, 4])).toEqual([0, 0]);
  });
});

describe('reading an image from a registry with the Bearer token flow', () => {
  it('gets a pull token with the credentials, picks the platform from an index, and lists its blobs', async () => {
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest('c'), size: 300 },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest('1'), size: 1000 },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest('2'), size: 2000 },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digest('1'), size: 1000 },
        ],
      }),
    );
    const manifestDigest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
    const index = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { digest: digest('9'), size: 10, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        { digest: manifestDigest, size: manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
      ],
    });
    const seen: { path: string; authorization?: string }[] = [];
    let base = '';
    const server: Server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      seen.push({
        path: `${url.pathname}${url.search}`,
        ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
      });
      if (url.pathname === '/token') {
        const good = `Basic ${Buffer.from('alice:pw').toString('base64')}`;
        if (req.headers.authorization !== good) return void res.writeHead(401).end();
        res.writeHead(200, { 'content-type': 'application/json' });
        return void res.end(JSON.stringify({ token: `tok-${url.searchParams.get('scope')}` }));
      }
      if (req.headers.authorization !== 'Bearer tok-repository:team/app:pull') {
        res.writeHead(401, {
          'www-authenticate': `Bearer realm="${base}/token",service="fake",scope="repository:team/app:pull"`,
        });
        return void res.end();
      }
      if (url.pathname === '/v2/team/app/manifests/v1') {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
        return void res.end(index);
      }
      if (url.pathname === `/v2/team/app/manifests/${manifestDigest}`) {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
        return void res.end(manifest);
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const image = { display: 'x/team/app:v1', registry: 'x', repository: 'team/app', reference: 'v1' };
    const client = (password: string) =>
      new RegistryClient({
        registry: 'x',
        baseUrl: base,
        repository: 'team/app',
        credentials: { username: 'alice', password },
        timeoutMs: 5_000,
      });
    try {
      const good = client('pw');
      const resolved = await resolveImage(good, image, 'linux/amd64');
      expect(resolved).toEqual({
        manifestDigest,
        blobs: [
          { digest: digest('c'), size: 300, kind: 'config' },
          { digest: digest('1'), size: 1000, kind: 'layer' },
          { digest: digest('2'), size: 2000, kind: 'layer' },
        ],
      });
      // The agents get the same token, good for pulling this repository.
      expect(good.credential).toBe('Bearer tok-repository:team/app:pull');
      expect(seen.filter((r) => r.path.startsWith('/token'))).toEqual([
        {
          path: '/token?service=fake&scope=repository%3Ateam%2Fapp%3Apull',
          authorization: `Basic ${Buffer.from('alice:pw').toString('base64')}`,
        },
      ]);
      await expect(resolveImage(client('pw'), image, 'linux/s390x')).rejects.toThrow(
        'image x/team/app:v1 has no linux/s390x variant (it has linux/arm64/v8, linux/amd64): pass --platform',
      );
      await expect(resolveImage(client('wrong'), image, 'linux/amd64')).rejects.toThrow(
        /^registry x refused the credentials of alice for team\/app \(401\)/,
      );
      await expect(
        resolveImage(client('pw'), { ...image, reference: 'v2', display: 'x/team/app:v2' }, 'linux/amd64'),
      ).rejects.toThrow('image x/team/app:v2 not found');
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

/** An agent that reports scripted views, one per poll, the last repeated. */
function scriptedAgent(
  id: string,
  views: PreheatJobView['blobs'][],
  options: { start?: Error; poll?: Error } = {},
): PreheatAgent & { cancelled: string[] } {
  let polls = 0;
  const cancelled: string[] = [];
  return {
    node: { id, url: `http://${id}:65001` },
    cancelled,
    async start() {
      if (options.start) throw options.start;
      return `job-${id}`;
    },
    async status(job) {
      if (options.poll) throw options.poll;
      const blobs = views[Math.min(polls++, views.length - 1)] ?? [];
      return { id: job, blobs };
    },
    async cancel(job) {
      cancelled.push(job);
    },
  };
}

describe('running a preheat over agents', () => {
  const blobs = [
    { digest: digest('c'), size: 100, kind: 'config' as const },
    { digest: digest('1'), size: 1000, kind: 'layer' as const },
  ];
  const copy = (
    d: string,
    state: 'queued' | 'fetching' | 'done' | 'failed',
    bytes: number,
    error?: string,
  ) => ({
    digest: d,
    size: d === digest('c') ? 100 : 1000,
    bytes,
    state,
    ...(error ? { error } : {}),
  });
  const base = {
    request: { repository: 'team/app', digests: blobs.map((b) => b.digest) },
    authorization: 'Bearer t',
    blobs,
    pollMs: 5,
    unreachableAfterMs: 50,
  };

  it('sums bytes over nodes, and reports each layer once every node has settled it', async () => {
    const a = scriptedAgent('a', [
      [copy(digest('c'), 'done', 100), copy(digest('1'), 'fetching', 500)],
      [copy(digest('c'), 'done', 100), copy(digest('1'), 'done', 1000)],
    ]);
    const b = scriptedAgent('b', [
      [copy(digest('c'), 'fetching', 0), copy(digest('1'), 'queued', 0)],
      [
        copy(digest('c'), 'done', 100),
        copy(digest('1'), 'failed', 0, 'registry answered 401: the credential was refused'),
      ],
    ]);
    const progress: number[] = [];
    const settled: string[] = [];
    const report = await runPreheat({
      ...base,
      agents: [a, b],
      signal: new AbortController().signal,
      onProgress: (layers) => progress.push(layers[1]!.bytes),
      onLayerSettled: (layer) => settled.push(`${layer.kind}:${layer.done}/${layer.failed}`),
    });
    expect(progress).toEqual([0, 500, 1000]);
    expect(settled).toEqual(['config:2/0', 'layer:1/1']);
    expect(report.cancelled).toBe(false);
    expect(report.layers[1]).toMatchObject({
      nodes: 2,
      done: 1,
      failed: 1,
      failures: [{ node: 'b', error: 'registry answered 401: the credential was refused' }],
    });
    const summary = formatSummary('reg/team/app:v1', report);
    expect(summary).toMatch(/^LAYER\s+KIND\s+SIZE\s+DONE\s+FAILED\s+TIME$/m);
    expect(summary).toMatch(/^sha256:111111111111…\s+layer\s+1000 B\s+1\/2\s+1\s+\d+ ms$/m);
    expect(summary).toContain('  b: registry answered 401: the credential was refused');
  });

  it('counts an agent that cannot be reached as failed, and keeps the others going', async () => {
    const down = scriptedAgent('down', [], {
      start: new AgentError('unreachable', 'agent down at http://down:65001 is unreachable (ECONNREFUSED)'),
    });
    const flaky = scriptedAgent('flaky', [], {
      poll: new AgentError('unreachable', 'agent flaky at http://flaky:65001 is unreachable (ETIMEDOUT)'),
    });
    const ok = scriptedAgent('ok', [[copy(digest('c'), 'done', 100), copy(digest('1'), 'done', 1000)]]);
    const report = await runPreheat({
      ...base,
      agents: [down, flaky, ok],
      signal: new AbortController().signal,
    });
    expect(report.layers.map((l) => [l.done, l.failed])).toEqual([
      [1, 2],
      [1, 2],
    ]);
    expect(report.nodeFailures).toEqual(
      new Map([
        ['down', 'agent down at http://down:65001 is unreachable (ECONNREFUSED)'],
        ['flaky', 'agent flaky at http://flaky:65001 is unreachable (ETIMEDOUT)'],
      ]),
    );
  });

  it('cancels the job on every agent when stopped', async () => {
    const a = scriptedAgent('a', [[copy(digest('c'), 'done', 100), copy(digest('1'), 'fetching', 10)]]);
    const b = scriptedAgent('b', [[copy(digest('c'), 'fetching', 10), copy(digest('1'), 'queued', 0)]]);
    const stop = new AbortController();
    setTimeout(() => stop.abort(), 50);
    const report = await runPreheat({ ...base, agents: [a, b], signal: stop.signal });
    expect(report.cancelled).toBe(true);
    expect(a.cancelled).toEqual(['job-a']);
    expect(b.cancelled).toEqual(['job-b']);
    expect(report.layers.map((l) => [l.done, l.failed])).toEqual([
      [1, 1],
      [0, 2],
    ]);
    expect(report.layers[1]!.failures).toEqual([
      { node: 'a', error: 'cancelled' },
      { node: 'b', error: 'cancelled' },
    ]);
  });

  it('draws a bar of the right length', () => {
    expect(progressBar(0, 10)).toBe('[----------]');
    expect(progressBar(0.5, 10)).toBe('[#####-----]');
    expect(progressBar(2, 10)).toBe('[##########]');
  });
});

describe('live progress on a terminal', () => {
  it('redraws the bars in place', () => {
    const printed: string[] = [];
    const live = new LiveProgress((text) => printed.push(text));
    const layer = (bytes: number, done: number) => ({
      digest: digest('1'),
      size: 1000,
      kind: 'layer' as const,
      nodes: 2,
      bytes,
      done,
      failed: 0,
      failures: [],
    });
    live.draw([layer(0, 0), layer(500, 0)]);
    live.draw([layer(1000, 1), layer(2000, 2)]);
    expect(printed).toEqual([
      '\x1b[2Ksha256:111111111111… layer  [------------------------]   0%  0 B / 2.0 KiB  0/2 nodes\n' +
        '\x1b[2Ksha256:111111111111… layer  [######------------------]  25%  500 B / 2.0 KiB  0/2 nodes',
      // Back up over the two lines drawn before, each cleared as it is written again.
      '\x1b[2A\x1b[2Ksha256:111111111111… layer  [############------------]  50%  1000 B / 2.0 KiB  1/2 nodes\n' +
        '\x1b[2Ksha256:111111111111… layer  [########################] 100%  2.0 KiB / 2.0 KiB  2/2 nodes',
    ]);
  });
});
