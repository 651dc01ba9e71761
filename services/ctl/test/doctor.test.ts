import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EndpointRecord, NodeRecord } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import {
  type AgentProbe,
  clockReadings,
  judgeAgentClocks,
  judgeAgentHealth,
  mapLimit,
  probeAgent,
  skewFromDate,
} from '../src/doctor/agents.js';
import {
  type Check,
  checkOf,
  formatChecklist,
  NotChecked,
  runChecks,
  summarise,
} from '../src/doctor/checklist.js';
import {
  judgeAnnouncer,
  judgeDiscovery,
  judgeJetStream,
  judgeScheduler,
  judgeStreams,
} from '../src/doctor/mesh.js';
import { registryOfEntry } from '../src/doctor/plan.js';
import { judgeRegistry, probeEndpoint } from '../src/doctor/registries.js';
import {
  judgeConfigPath,
  judgeHostsToml,
  parseContainerdConfig,
  parseHostsToml,
} from '../src/doctor/runtime.js';

const now = 1_700_000_000_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const node = (id: string, extra: Partial<NodeRecord> = {}): NodeRecord => ({
  id,
  url: `http://${id}:65001`,
  zone: 'zone-a',
  vswitch: 'vsw-1',
  pool: '',
  startedAt: now - 3_600_000,
  seenAt: now - 500,
  ...extra,
});

describe('the checklist', () => {
  const check = (id: string, run: () => Promise<unknown>): Check => ({
    id,
    section: 'S',
    title: id,
    run: async () => {
      await run();
      return checkOf(id, 'S', id).ok('fine');
    },
  });

  it('lists results in declaration order however long each check takes', async () => {
    const results = await runChecks(
      [check('slow', () => sleep(60)), check('fast', () => sleep(1)), check('middle', () => sleep(30))],
      1_000,
    );
    expect(results.map((r) => r.id)).toEqual(['slow', 'fast', 'middle']);
  });

  it('runs checks at once, fails one that misses its deadline, and skips one missing a prerequisite', async () => {
    const began = performance.now();
    const results = await runChecks(
      [
        check('hangs', () => new Promise(() => undefined)),
        check('throws', () => Promise.reject(new Error('boom'))),
        check('unchecked', () => Promise.reject(new NotChecked('not checked: NATS is unreachable'))),
        check('waits', () => sleep(80)),
      ],
      100,
    );
    expect(performance.now() - began).toBeLessThan(400);
    expect(results.map((r) => [r.id, r.status, r.detail])).toEqual([
      ['hangs', 'fail', 'hangs: no answer within 0.1s'],
      ['throws', 'fail', 'boom'],
      ['unchecked', 'skip', 'not checked: NATS is unreachable'],
      ['waits', 'ok', 'fine'],
    ]);
    expect(results[0]?.fix).toMatch(/raise --timeout/);
  });

  it('prints each section with a symbol per check and, under each problem, what to do', () => {
    const nats = checkOf('nats', 'NATS', 'NATS reachable');
    const scheduler = checkOf('scheduler', 'Control services', 'scheduler');
    const announcer = checkOf('announcer', 'Control services', 'announcer');
    const clocks = checkOf('clocks', 'Agents', 'agent clocks');
    const results = [
      nats.ok('nats://127.0.0.1:4222 (nats-server 2.10.0)'),
      scheduler.fail('no scheduler is running', 'start the scheduler'),
      announcer.warn('falling behind', 'add replicas'),
      clocks.skip('no agent to compare clocks with'),
    ];
    expect(formatChecklist(results).split('\n')).toEqual([
      'NATS',
      '  ✓ NATS reachable  nats://127.0.0.1:4222 (nats-server 2.10.0)',
      '',
      'Control services',
      '  ✗ scheduler       no scheduler is running',
      '      fix: start the scheduler',
      '  ! announcer       falling behind',
      '      fix: add replicas',
      '',
      'Agents',
      '  - agent clocks    no agent to compare clocks with',
      '',
      '4 checks: 1 passed, 1 warning, 1 failed, 1 not checked',
    ]);
    expect(summarise(results)).toEqual({ passed: 1, warnings: 1, failed: 1, skipped: 1 });
  });

  it('keeps every line of a result on one line', () => {
    expect(checkOf('x', 'S', 'x').fail('two\n  lines', 'do\nthis')).toMatchObject({
      detail: 'two lines',
      fix: 'do this',
    });
  });
});

describe('NATS and the control services', () => {
  it('names missing streams and buckets', () => {
    const all = ['SHOAL_ANNOUNCE', 'SHOAL_EVENTS', 'KV_shoal_nodes', 'KV_shoal_chunks', 'KV_shoal_grants'];
    const [streamsCheck, bucketsCheck] = judgeStreams(
      new Set([...all, 'KV_shoal_endpoints', 'KV_shoal_topology']),
    );
    expect([streamsCheck?.status, bucketsCheck?.status]).toEqual(['ok', 'ok']);
    const missing = judgeStreams(new Set(all.filter((s) => s !== 'SHOAL_EVENTS')));
    expect(missing.map((r) => [r.status, r.detail])).toEqual([
      ['fail', 'missing: SHOAL_EVENTS'],
      ['fail', 'missing: shoal_endpoints, shoal_topology'],
    ]);
    expect(missing[0]?.fix).toMatch(/start discovery, announcer and scheduler/);
  });

  it('fails when JetStream does not answer', () => {
    const jetstream = judgeJetStream({ error: 'jetstream not enabled' });
    expect(jetstream.status).toBe('fail');
    expect(jetstream.fix).toMatch(/JetStream on/);
  });

  it('judges discovery by the heartbeats it records', () => {
    const fresh = judgeDiscovery(
      [node('n1', { seenAt: now - 2_000 }), node('n2', { seenAt: now - 500 })],
      [],
      now,
    );
    expect(fresh).toMatchObject({
      status: 'ok',
      detail: '2 nodes registered, latest heartbeat recorded 0.5s ago',
    });
    const stale = judgeDiscovery([node('n1', { seenAt: now - 300_000 })], [], now);
    expect(stale.status).toBe('fail');
    expect(stale.detail).toMatch(/no heartbeat recorded for 5m00s.*discovery is not running/);
    const none = judgeDiscovery([], [{ checkedAt: now - 4_000 } as EndpointRecord], now);
    expect(none.status).toBe('warn');
    expect(none.detail).toMatch(/no agents registered.*registry endpoints last checked 4.0s ago/);
  });

  it('judges the scheduler by its answer to an empty request', () => {
    expect(
      judgeScheduler({
        kind: 'reply',
        ms: 3,
        reply: { ok: true, chunkSize: 1, assignments: [], scheduler: 's1' },
      }),
    ).toMatchObject({ status: 'ok', detail: 'answered a schedule request in 3 ms (s1)' });
    const none = judgeScheduler({ kind: 'no-responders' });
    expect(none.status).toBe('fail');
    expect(none.detail).toMatch(/^no scheduler is running/);
    expect(none.fix).toMatch(/start the scheduler/);
    const slow = judgeScheduler({ kind: 'timeout', ms: 3_000 });
    expect(slow.status).toBe('fail');
    expect(slow.detail).toMatch(/did not answer within 3s/);
    expect(
      judgeScheduler({
        kind: 'reply',
        ms: 3,
        reply: { ok: false, error: { code: 'SHOAL_ERR_INTERNAL', message: 'not ready' } },
      }).status,
    ).toBe('warn');
  });

  it('judges the announcer by its consumer', () => {
    expect(judgeAnnouncer({ kind: 'missing' })).toMatchObject({ status: 'fail' });
    expect(judgeAnnouncer({ kind: 'consumer', pending: 0, ackPending: 0, waiting: 1 }).status).toBe('ok');
    const behind = judgeAnnouncer({ kind: 'consumer', pending: 5_000, ackPending: 100, waiting: 1 });
    expect(behind.status).toBe('warn');
    expect(behind.detail).toMatch(/^5000 announcements waiting.*falling behind/);
    const idle = judgeAnnouncer({ kind: 'consumer', pending: 5, ackPending: 0, waiting: 0 });
    expect(idle.status).toBe('fail');
    expect(idle.detail).toMatch(/no announcer is pulling them/);
  });
});

describe('agents', () => {
  const answered = (id: string, extra: Partial<AgentProbe> = {}): AgentProbe => ({
    node: node(id),
    sentAt: now,
    receivedAt: now + 4,
    status: 200,
    date: new Date(now).toUTCString(),
    nats: true,
    ...extra,
  });

  it('names the agents that do not answer /healthz', () => {
    expect(judgeAgentHealth([answered('n1'), answered('n2', { receivedAt: now + 12 })])).toMatchObject({
      status: 'ok',
      detail: '2 of 2 answered (slowest: n2, 12 ms)',
    });
    const broken = judgeAgentHealth([
      answered('n1'),
      { node: node('n2'), sentAt: now, error: 'connect ECONNREFUSED 10.0.0.2:65001' },
      answered('n3', { status: 503 }),
    ]);
    expect(broken.status).toBe('fail');
    expect(broken.detail).toBe(
      '2 of 3 unreachable or unhealthy: n2 (http://n2:65001: connect ECONNREFUSED 10.0.0.2:65001), n3 (http://n3:65001: answered 503)',
    );
    expect(judgeAgentHealth([answered('n1', { nats: false })]).status).toBe('warn');
    const unknown = judgeAgentHealth([], 'n9');
    expect(unknown).toMatchObject({ status: 'fail', title: 'agent n9 answers /healthz' });
    expect(unknown.detail).toMatch(/not in the node registry/);
    expect(judgeAgentHealth([]).status).toBe('warn');
  });

  it('reads clock skew from a Date header, allowing for its whole seconds', () => {
    const second = Math.floor(now / 1000) * 1000;
    // The agent's clock read somewhere in [date, date + 1 s): agreeing clocks give no skew.
    expect(skewFromDate(new Date(second).toUTCString(), second + 300, second + 310)).toBe(0);
    expect(skewFromDate(new Date(second + 45_000).toUTCString(), second + 300, second + 310)).toBe(44_690);
    expect(skewFromDate(new Date(second - 10_000).toUTCString(), second + 300, second + 310)).toBe(-9_300);
    expect(skewFromDate('not a date', second, second)).toBeUndefined();
  });

  it('warns above 2 s of skew and fails above 30 s, from answers and from heartbeats', () => {
    const ok = judgeAgentClocks(clockReadings([answered('n1'), answered('n2')]));
    expect(ok).toMatchObject({
      status: 'ok',
      detail: "2 agents' clocks within 2s of this machine's and discovery's",
    });
    const drifting = answered('n2', { node: node('n2', { sentAt: now - 500 + 3_000 }) });
    expect(judgeAgentClocks(clockReadings([answered('n1'), drifting]))).toMatchObject({
      status: 'warn',
      detail: 'more than 2s off: n2 3s ahead of discovery',
    });
    const far = answered('n3', { date: new Date(now - 60_000).toUTCString() });
    const result = judgeAgentClocks(clockReadings([answered('n1'), drifting, far]));
    expect(result).toMatchObject({ status: 'fail', detail: 'more than 30s off: n3 59s behind this machine' });
    expect(result.fix).toMatch(/synchronise the clocks/);
    expect(judgeAgentClocks(clockReadings([{ node: node('n1'), sentAt: now, error: 'down' }])).status).toBe(
      'skip',
    );
  });

  it('probes /healthz over HTTP, keeping the Date header and the NATS state', async () => {
    const server = createServer((req, res) => {
      res.writeHead(req.url === '/healthz' ? 200 : 404, {
        'content-type': 'application/json',
        date: new Date(Date.now() + 45_000).toUTCString(),
      });
      res.end(JSON.stringify({ ok: true, nats: false }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const probe = await probeAgent(node('n1', { url }), 2_000);
      expect(probe).toMatchObject({ status: 200, nats: false });
      const [reading] = clockReadings([probe]);
      expect(reading?.local).toBeGreaterThan(43_000);
      expect(reading?.local).toBeLessThan(46_000);
      expect(await probeEndpoint(url, 2_000)).toMatchObject({ url, status: 404 });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const down = await probeAgent(node('n1', { url }), 2_000);
    expect(typeof down.error).toBe('string');
    expect(down.status).toBeUndefined();
  });

  it('maps with a limit, keeping order', async () => {
    let running = 0;
    let most = 0;
    const out = await mapLimit([5, 1, 3, 2, 4], 2, async (n) => {
      most = Math.max(most, ++running);
      await sleep(n * 3);
      running--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 30, 20, 40]);
    expect(most).toBe(2);
  });
});

describe("this machine's containerd", () => {
  const agentUrl = 'http://127.0.0.1:65001';
  const path = '/host/etc/containerd/certs.d/reg.example.com/hosts.toml';
  const setupCommand = 'shoal node-setup --registries=reg.example.com=https://reg.example.com';
  // As `shoal node-setup` writes it.
  const written = (mirror: string) =>
    [
      '# Written by Shoal (shoal node-setup): containerd pulls reg.example.com through the Shoal agent on this',
      '# node and falls back to the registry by itself when the agent cannot serve a request. Undo with',
      '# `shoal node-setup --node-setup-action=uninstall`, which puts back any hosts.toml this file replaced.',
      'server = "https://reg.example.com"',
      '',
      `[host.${JSON.stringify(mirror)}]`,
      '  capabilities = ["pull", "resolve"]',
      '',
    ].join('\n');
  const judge = (text: string | undefined) =>
    judgeHostsToml({ registry: 'reg.example.com', path, text, agentUrl, setupCommand });

  it('reads the server and the mirrors of a hosts.toml', () => {
    expect(parseHostsToml(written(agentUrl))).toEqual({
      ownedByShoal: true,
      server: { url: 'https://reg.example.com', line: 4 },
      hosts: [{ url: agentUrl, line: 6 }],
    });
    const other = parseHostsToml(
      "server = 'https://r'\n[host.'http://a:1']\n[host.\"http://b:2\".header]\n  x = ['1']\n[host.\"http://c:3\"] # c\n",
    );
    expect(other).toEqual({
      ownedByShoal: false,
      server: { url: 'https://r', line: 1 },
      hosts: [
        { url: 'http://a:1', line: 2 },
        { url: 'http://c:3', line: 5 },
      ],
    });
  });

  it('passes a hosts.toml that names the agent first', () => {
    expect(judge(written(agentUrl))).toMatchObject({
      id: 'hosts-toml:reg.example.com',
      status: 'ok',
      detail: `${path} mirrors reg.example.com through ${agentUrl} (line 6)`,
    });
    expect(judge(written(`${agentUrl}/`)).status).toBe('ok');
  });

  it('fails a missing file or one pointing elsewhere, naming the file, the line and the fix', () => {
    const missing = judge(undefined);
    expect(missing.status).toBe('fail');
    expect(missing.detail).toContain(`${path} does not exist`);
    expect(missing.fix).toContain(`run \`${setupCommand}\``);

    const elsewhere = judge(written('http://127.0.0.1:6000'));
    expect(elsewhere.status).toBe('fail');
    expect(elsewhere.detail).toBe(
      `${path} sends reg.example.com to http://127.0.0.1:6000 (line 6), not to the agent at ${agentUrl}`,
    );
    expect(elsewhere.fix).toMatch(
      /rewrites its own file; or change line 6 to \[host\."http:\/\/127\.0\.0\.1:65001"\]/,
    );

    const foreign = judge('server = "https://reg.example.com"\n[host."http://mirror:5000"]\n');
    expect(foreign.fix).toMatch(/^change line 2 of .* to \[host\."http:\/\/127\.0\.0\.1:65001"\]/);

    const direct = judge('server = "https://reg.example.com"\n');
    expect(direct).toMatchObject({
      status: 'fail',
      detail: `${path} names no mirror: containerd pulls reg.example.com from https://reg.example.com directly`,
    });
  });

  it('warns when containerd tries another host before the agent', () => {
    const result = judge(`[host."http://mirror:5000"]\n[host."${agentUrl}"]\n`);
    expect(result).toMatchObject({
      status: 'warn',
      detail: `${path}: containerd tries http://mirror:5000 (line 1) before the agent (line 2)`,
    });
  });

  it("finds containerd's registry config_path in each config version's layout", () => {
    expect(
      parseContainerdConfig(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
      ),
    ).toEqual({ version: 2, imports: false, configPath: { value: '/etc/containerd/certs.d', line: 3 } });
    expect(
      parseContainerdConfig(
        "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n[plugins.'io.containerd.cri.v1.images']\n  registry.config_path = '/a:/b'\n",
      ),
    ).toEqual({ version: 3, imports: true, configPath: { value: '/a:/b', line: 4 } });
    expect(parseContainerdConfig('[plugins.cri.registry]\nconfig_path = "/x"\n').configPath?.value).toBe(
      '/x',
    );
    expect(parseContainerdConfig('[plugins.other]\nconfig_path = "/x"\n').configPath).toBeUndefined();
  });

  it('warns when config_path does not cover the certs dir', () => {
    const certsDir = '/etc/containerd/certs.d';
    const judgeConfig = (text: string | undefined) => judgeConfigPath({ path: '/c.toml', text, certsDir });
    const table = '[plugins."io.containerd.grpc.v1.cri".registry]\n';
    expect(
      judgeConfig(`version = 2\n${table}  config_path = "/etc/docker/certs.d:${certsDir}/"\n`).status,
    ).toBe('ok');
    const other = judgeConfig(`version = 2\n${table}  config_path = "/etc/docker/certs.d"\n`);
    expect(other).toMatchObject({ status: 'warn' });
    expect(other.fix).toBe(
      'change line 3 of /c.toml to config_path = "/etc/containerd/certs.d:/etc/docker/certs.d", then restart containerd (systemctl restart containerd)',
    );
    expect(judgeConfig('version = 2\n').fix).toMatch(
      /^add config_path = .* to the \[plugins\."io\.containerd\.grpc/,
    );
    const absent = judgeConfig(undefined);
    expect(absent.status).toBe('warn');
    expect(absent.detail).toMatch(/does not exist/);
  });

  it('reads --registries entries as node-setup takes them', () => {
    expect(registryOfEntry('reg.example.com')).toEqual({ name: 'reg.example.com' });
    expect(registryOfEntry('http://127.0.0.1:5000')).toEqual({
      name: '127.0.0.1:5000',
      url: 'http://127.0.0.1:5000',
    });
    expect(registryOfEntry('r.io=https://mirror.r.io')).toEqual({ name: 'r.io', url: 'https://mirror.r.io' });
  });
});

describe('registry endpoints', () => {
  const record: EndpointRecord = {
    registry: 'reg.example.com',
    url: 'http://10.0.0.9:5000',
    healthy: true,
    checkedAt: now,
    source: 'static',
    endpoints: [
      { url: 'http://10.0.0.9:5000', kind: 'mirror', zone: 'zone-b', healthy: true },
      { url: 'https://reg.example.com', kind: 'registry', healthy: true },
    ],
  };

  it('passes when every endpoint answers 200 or 401, warns when some do not, fails when none do', () => {
    const good = judgeRegistry(record, [
      { url: 'http://10.0.0.9:5000', status: 401, ms: 3 },
      { url: 'https://reg.example.com', status: 200, ms: 40 },
    ]);
    expect(good).toMatchObject({
      status: 'ok',
      detail: '2 endpoints answered (http://10.0.0.9:5000 answered 401 in 3 ms)',
    });
    const partly = judgeRegistry(record, [
      { url: 'http://10.0.0.9:5000', ms: 3_000, error: 'no answer within 3s' },
      { url: 'https://reg.example.com', status: 200, ms: 40 },
    ]);
    expect(partly).toMatchObject({
      status: 'warn',
      detail:
        'https://reg.example.com answered 200 in 40 ms, but http://10.0.0.9:5000, for zone zone-b (no answer within 3s) did not',
    });
    const none = judgeRegistry(record, [
      { url: 'http://10.0.0.9:5000', status: 503, ms: 3 },
      { url: 'https://reg.example.com', ms: 1, error: 'getaddrinfo ENOTFOUND reg.example.com' },
    ]);
    expect(none.status).toBe('fail');
    expect(none.detail).toMatch(/^no endpoint answers GET \/v2\/ from here/);
  });
});
