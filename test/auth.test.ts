/**
 * Pulls through the agent from registries that require authentication: docker-registry with basic
 * auth (htpasswd) and with bearer tokens from a real token server. The agent passes challenges through
 * unchanged, serves a layer only to clients the registry itself would serve, and never writes a
 * password or a token to its log.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  basicAuth,
  buildAndPushImage,
  type BuiltImage,
  type Containerd,
  fetchRegistryToken,
  makeTempDir,
  MANIFEST_ACCEPT,
  type NatsServer,
  type Registry,
  removeTempDir,
  runChecked,
  startContainerd,
  startNats,
  startRegistry,
  startTokenServer,
  type TokenServer,
  waitFor,
  writeHostsToml,
} from './kit/index.js';
import { metricSum, type ShoalService, startAgent } from './support/shoal.js';

const MiB = 1024 * 1024;
const USER = 'alice';
const PASSWORD = 'secret';
/** Distinctive strings, so finding one in a log can only mean it was copied there. */
const WRONG_PASSWORD = 'wrong-Pw-7f3a9c';
const BOB_PASSWORD = 'bob-Pw-c41d0e';
/** No NATS listens here: the basic-auth agent runs without a control plane and fetches from the registry itself. */
const NO_CONTROL_PLANE = 'nats://127.0.0.1:1';

interface BlobAnswer {
  status: number;
  headers: Headers;
  body: Buffer;
}

/** Requests a blob the way containerd does through a hosts.toml mirror (with `?ns=<registry host>`). */
async function agentBlob(
  agent: ShoalService,
  registry: Registry,
  repo: string,
  digest: string,
  authorization?: string,
  init: { method?: 'GET' | 'HEAD'; range?: string } = {},
): Promise<BlobAnswer> {
  const url = `${agent.url}/v2/${repo}/blobs/${digest}?ns=${encodeURIComponent(registry.host)}`;
  return await request(url, authorization, init);
}

/** The same request sent straight to docker-registry, to compare the agent's answer with the origin's. */
async function registryBlob(
  registry: Registry,
  repo: string,
  digest: string,
  authorization?: string,
  init: { method?: 'GET' | 'HEAD'; range?: string } = {},
): Promise<BlobAnswer> {
  return await request(`${registry.backendUrl}/v2/${repo}/blobs/${digest}`, authorization, init);
}

async function request(
  url: string,
  authorization: string | undefined,
  init: { method?: 'GET' | 'HEAD'; range?: string },
): Promise<BlobAnswer> {
  const headers: Record<string, string> = {};
  if (authorization !== undefined) headers['authorization'] = authorization;
  if (init.range !== undefined) headers['range'] = init.range;
  const response = await fetch(url, {
    method: init.method ?? 'GET',
    headers,
    redirect: 'manual',
    signal: AbortSignal.timeout(15_000),
  });
  return {
    status: response.status,
    headers: response.headers,
    body: Buffer.from(await response.arrayBuffer()),
  };
}

/**
 * Asserts that a refused answer leaks nothing: the status and challenge are exactly the registry's own
 * for the same credentials, and the body is a short error without any of the layer's bytes.
 */
function expectRefusedLikeRegistry(
  agentAnswer: BlobAnswer,
  origin: BlobAnswer,
  layer: Buffer,
  what: string,
): void {
  expect([401, 403], `${what}: status`).toContain(agentAnswer.status);
  expect(agentAnswer.status, `${what}: status matches the registry's`).toBe(origin.status);
  expect(agentAnswer.headers.get('www-authenticate'), `${what}: challenge passed through unchanged`).toBe(
    origin.headers.get('www-authenticate'),
  );
  expectNoLayerBytes(agentAnswer, layer, what);
}

function expectNoLayerBytes(answer: BlobAnswer, layer: Buffer, what: string): void {
  expect(answer.body.length, `${what}: body is a short error`).toBeLessThan(1024);
  // Any 32-byte window of the incompressible layer would be a leak; the first and last suffice for a short body.
  expect(answer.body.includes(layer.subarray(0, 32)), `${what}: body holds the layer's first bytes`).toBe(
    false,
  );
  expect(
    answer.body.includes(layer.subarray(layer.length - 32)),
    `${what}: body holds the layer's last bytes`,
  ).toBe(false);
}

/** Blob downloads the registry served to containerd itself, i.e. a fallback that bypassed the agent. */
function directBlobGets(registry: Registry): number {
  return registry.blobGets().filter((r) => (r.userAgent ?? '').includes('containerd')).length;
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

describe('pulls through the agent from registries that require authentication', () => {
  let dir: string;
  let nats: NatsServer;
  /** A plain subscriber on every subject, so the test sees whatever the mesh publishes. */
  let wiretap: NatsConnection;
  const published: string[] = [];
  let containerd: Containerd;
  let tokens: TokenServer;
  let basicRegistry: Registry;
  let tokenRegistry: Registry;
  let image: BuiltImage;
  /** Layer bytes as the registry stores them, by digest, read directly from the origin. */
  const layerBytes = new Map<string, Buffer>();
  let basicAgent: ShoalService;
  let tokenAgent: ShoalService;
  let basicHosts: string;
  let tokenHosts: string;

  const layer = (digest: string): Buffer => {
    const bytes = layerBytes.get(digest);
    if (bytes === undefined) throw new Error(`no bytes recorded for ${digest}`);
    return bytes;
  };

  beforeAll(async () => {
    dir = await makeTempDir('auth');
    // allSettled rather than all: when one server fails to start, the others are still assigned, so
    // afterAll stops them instead of leaving them running.
    const started = await Promise.allSettled([
      startNats(),
      startContainerd(),
      startRegistry({ name: 'registry-basic', auth: { users: { [USER]: PASSWORD } } }),
      startTokenServer({
        users: {
          [USER]: { password: PASSWORD, actions: ['pull', 'push'] },
          // Bob is a real user, but only of another repository: his valid tokens must not open team/app.
          bob: { password: BOB_PASSWORD, repositories: ['team/other'], actions: ['pull'] },
        },
      }),
    ]);
    if (started[0].status === 'fulfilled') nats = started[0].value;
    if (started[1].status === 'fulfilled') containerd = started[1].value;
    if (started[2].status === 'fulfilled') basicRegistry = started[2].value;
    if (started[3].status === 'fulfilled') tokens = started[3].value;
    for (const result of started) if (result.status === 'rejected') throw result.reason;
    tokenRegistry = await startRegistry({
      name: 'registry-token',
      tokenAuth: {
        realm: tokens.realm,
        service: tokens.service,
        issuer: tokens.issuer,
        rootCertBundlePath: tokens.rootCertBundlePath,
      },
    });
    image = await buildAndPushImage({
      registry: basicRegistry,
      repo: 'team/app',
      tag: 'v1',
      layers: 2,
      layerSize: 2 * MiB,
    });
    // buildAndPushImage reads the manifest back with Basic credentials, which a token registry refuses,
    // so the same image is copied over with skopeo, which does the token dance itself. Both sides are
    // the backends, so the copy does not appear in the counting proxies' logs.
    const backendHost = (r: Registry): string => new URL(r.backendUrl).host;
    await runChecked('skopeo', [
      '--insecure-policy',
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      '--src-creds',
      `${USER}:${PASSWORD}`,
      '--dest-creds',
      `${USER}:${PASSWORD}`,
      `docker://${backendHost(basicRegistry)}/team/app:v1`,
      `docker://${backendHost(tokenRegistry)}/team/app:v1`,
    ]);

    // The copy must be byte-identical, or the bearer half would pull a different image than it checks.
    const appToken = await fetchRegistryToken({
      realm: tokens.realm,
      service: tokens.service,
      scopes: ['repository:team/app:pull'],
      username: USER,
      password: PASSWORD,
    });
    const copied = await fetch(`${tokenRegistry.backendUrl}/v2/team/app/manifests/v1`, {
      method: 'HEAD',
      headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${appToken}` },
      signal: AbortSignal.timeout(10_000),
    });
    expect(copied.status).toBe(200);
    expect(copied.headers.get('docker-content-digest')).toBe(image.manifestDigest);

    for (const l of image.layers) {
      const answer = await registryBlob(basicRegistry, 'team/app', l.digest, basicAuth(USER, PASSWORD));
      expect(answer.status).toBe(200);
      expect(sha256(answer.body)).toBe(l.digest);
      layerBytes.set(l.digest, answer.body);
    }

    wiretap = await connect({ servers: nats.url });
    wiretap.subscribe('>', {
      callback: (_err, msg) => {
        const headers =
          msg.headers === undefined ? [] : [...msg.headers].map(([k, v]) => `${k}: ${v.join(', ')}`);
        published.push([msg.subject, ...headers, msg.string()].join('\n'));
      },
    });
    // The agents cover both modes: the basic-auth one without NATS, the token one connected to NATS,
    // where it publishes heartbeats, announcements and events (no scheduler answers, so it still
    // fetches from the registry itself; the control-plane services are not needed to test auth).
    // Debug logging gives a careless credential the most chances to reach the checked log.
    const agents = await Promise.allSettled([
      startAgent({
        id: 'basic',
        natsUrl: NO_CONTROL_PLANE,
        registries: [basicRegistry.url],
        dir,
        extraArgs: ['--log-level=debug'],
      }),
      startAgent({
        id: 'token',
        natsUrl: nats.url,
        registries: [tokenRegistry.url],
        dir,
        extraArgs: ['--log-level=debug'],
      }),
    ]);
    if (agents[0].status === 'fulfilled') basicAgent = agents[0].value;
    if (agents[1].status === 'fulfilled') tokenAgent = agents[1].value;
    for (const result of agents) if (result.status === 'rejected') throw result.reason;
    basicHosts = join(dir, 'hosts-basic');
    tokenHosts = join(dir, 'hosts-token');
    await writeHostsToml(basicHosts, basicRegistry.host, basicAgent.url);
    await writeHostsToml(tokenHosts, tokenRegistry.host, tokenAgent.url);
    basicRegistry.clearRequests();
    tokenRegistry.clearRequests();
  });

  afterAll(async () => {
    await Promise.allSettled([basicAgent?.stop(), tokenAgent?.stop()]);
    await wiretap?.close();
    await Promise.allSettled([
      nats?.stop(),
      containerd?.stop(),
      basicRegistry?.stop(),
      tokenRegistry?.stop(),
      tokens?.stop(),
    ]);
    if (dir !== undefined) await removeTempDir(dir);
  });

  describe('basic auth (htpasswd)', () => {
    it('pulls with the right credentials, every layer served by the agent', async () => {
      const pull = await containerd.pull({
        ref: image.ref,
        hostsDir: basicHosts,
        namespace: containerd.newNamespace('basic-ok'),
        user: `${USER}:${PASSWORD}`,
      });
      expect(pull.ok, pull.stderr).toBe(true);
      // hosts.toml falls back to the registry, so success alone would not prove the agent served the layers.
      expect(metricSum(await basicAgent.metrics(), 'shoal_agent_client_bytes_total')).toBeGreaterThanOrEqual(
        image.layersSize,
      );
      expect(directBlobGets(basicRegistry)).toBe(0);
    });

    it('refuses a pull without credentials', async () => {
      const pull = await containerd.pull({
        ref: image.ref,
        hostsDir: basicHosts,
        namespace: containerd.newNamespace('basic-anon'),
        timeoutMs: 30_000,
      });
      expect(pull.ok).toBe(false);
      expect(`${pull.stderr}${pull.stdout}`).toMatch(/401|unauthorized/i);
    });

    it('answers 401 to wrong credentials for a cached layer, and the exact bytes to the right ones', async () => {
      const wrong = basicAuth(USER, WRONG_PASSWORD);
      const right = basicAuth(USER, PASSWORD);
      for (const l of image.layers) {
        const bytes = layer(l.digest);
        const before = basicRegistry.blobGets(l.digest).length;
        for (const [what, authorization] of [
          ['wrong password', wrong],
          ['no credentials', undefined],
        ] as const) {
          const origin = await registryBlob(basicRegistry, 'team/app', l.digest, authorization);
          const viaAgent = await agentBlob(basicAgent, basicRegistry, 'team/app', l.digest, authorization);
          expectRefusedLikeRegistry(viaAgent, origin, bytes, `${what}, GET ${l.digest}`);
          const ranged = await agentBlob(basicAgent, basicRegistry, 'team/app', l.digest, authorization, {
            range: 'bytes=0-1023',
          });
          expectRefusedLikeRegistry(ranged, origin, bytes, `${what}, ranged GET ${l.digest}`);
        }

        const ok = await agentBlob(basicAgent, basicRegistry, 'team/app', l.digest, right);
        expect(ok.status).toBe(200);
        expect(ok.body.equals(bytes), `bytes of ${l.digest}`).toBe(true);
        // No new download from the registry: the bytes came from the agent's cache, the layer is cached.
        expect(basicRegistry.blobGets(l.digest).length).toBe(before);

        // The right credential's approval is now cached by the agent; it must not carry over to another one.
        const again = await agentBlob(basicAgent, basicRegistry, 'team/app', l.digest, wrong);
        const origin = await registryBlob(basicRegistry, 'team/app', l.digest, wrong);
        expectRefusedLikeRegistry(again, origin, bytes, `wrong password after a good one, GET ${l.digest}`);
      }
    });
  });

  describe('bearer tokens', () => {
    it('pulls with the right credentials through the token dance, every layer served by the agent', async () => {
      const pull = await containerd.pull({
        ref: image.ref.replace(basicRegistry.host, tokenRegistry.host),
        hostsDir: tokenHosts,
        namespace: containerd.newNamespace('token-ok'),
        user: `${USER}:${PASSWORD}`,
      });
      expect(pull.ok, pull.stderr).toBe(true);
      // containerd only knows the realm from the agent's passed-through challenge, so a token for alice
      // on team/app proves the challenge reached it intact.
      const granted = tokens
        .requests()
        .filter((r) => r.method === 'GET' && r.user === USER && r.outcome === 'issued')
        .flatMap((r) => r.access);
      expect(granted).toContainEqual({ type: 'repository', name: 'team/app', actions: ['pull'] });
      expect(metricSum(await tokenAgent.metrics(), 'shoal_agent_client_bytes_total')).toBeGreaterThanOrEqual(
        image.layersSize,
      );
      expect(directBlobGets(tokenRegistry)).toBe(0);
    });

    it('refuses a pull without credentials', async () => {
      const anonymousBefore = tokens
        .requests()
        .filter((r) => r.user === undefined && r.outcome === 'issued').length;
      const pull = await containerd.pull({
        ref: image.ref.replace(basicRegistry.host, tokenRegistry.host),
        hostsDir: tokenHosts,
        namespace: containerd.newNamespace('token-anon'),
        timeoutMs: 30_000,
      });
      expect(pull.ok).toBe(false);
      expect(`${pull.stderr}${pull.stdout}`).toMatch(/401|unauthorized|denied/i);
      // containerd did follow the challenge, and got the anonymous token that grants nothing.
      const anonymous = tokens.requests().filter((r) => r.user === undefined && r.outcome === 'issued');
      expect(anonymous.length).toBeGreaterThan(anonymousBefore);
      for (const r of anonymous) expect(r.access).toEqual([]);
    });

    it('refuses tokens that do not grant pull on the repository, even for a cached layer', async () => {
      const token = async (scope: string, username?: string, password?: string): Promise<string> =>
        await fetchRegistryToken({
          realm: tokens.realm,
          service: tokens.service,
          scopes: [scope],
          ...(username === undefined ? {} : { username, password }),
        });
      const aliceOther = await token('repository:team/other:pull', USER, PASSWORD);
      const bobOther = await token('repository:team/other:pull', 'bob', BOB_PASSWORD);
      const bobApp = await token('repository:team/app:pull', 'bob', BOB_PASSWORD);
      const anonymousApp = await token('repository:team/app:pull');
      const aliceApp = await token('repository:team/app:pull', USER, PASSWORD);
      // Bob's token with its claims rewritten to grant team/app: the signature no longer matches.
      const [header, , signature] = bobOther.split('.');
      const forgedClaims = {
        ...(JSON.parse(Buffer.from(bobOther.split('.')[1] ?? '', 'base64url').toString('utf8')) as object),
        access: [{ type: 'repository', name: 'team/app', actions: ['pull'] }],
      };
      const forged = `${header}.${Buffer.from(JSON.stringify(forgedClaims)).toString('base64url')}.${signature}`;

      for (const l of image.layers) {
        const bytes = layer(l.digest);
        const before = tokenRegistry.blobGets(l.digest).length;
        for (const [what, authorization] of [
          ['alice, token for team/other', `Bearer ${aliceOther}`],
          ['bob, token for team/other', `Bearer ${bobOther}`],
          ['bob, token for team/app without access', `Bearer ${bobApp}`],
          ['anonymous token', `Bearer ${anonymousApp}`],
          ['forged token', `Bearer ${forged}`],
          ['no credentials', undefined],
          ['basic credentials', basicAuth(USER, PASSWORD)],
        ] as const) {
          const origin = await registryBlob(tokenRegistry, 'team/app', l.digest, authorization);
          const viaAgent = await agentBlob(tokenAgent, tokenRegistry, 'team/app', l.digest, authorization);
          expectRefusedLikeRegistry(viaAgent, origin, bytes, `${what}, GET ${l.digest}`);
          const head = await agentBlob(tokenAgent, tokenRegistry, 'team/app', l.digest, authorization, {
            method: 'HEAD',
          });
          expect([401, 403], `${what}, HEAD ${l.digest}`).toContain(head.status);
        }
        if (l === image.layers[0]) {
          const challenge = (await agentBlob(tokenAgent, tokenRegistry, 'team/app', l.digest)).headers.get(
            'www-authenticate',
          );
          expect(challenge).toMatch(/^Bearer /);
          expect(challenge).toContain(`realm="${tokens.realm}"`);
        }

        // The agent's cache is keyed by digest alone; a valid token for another repository must not reach
        // the layer through that repository's path, where the registry does not link it.
        const otherPath = await agentBlob(
          tokenAgent,
          tokenRegistry,
          'team/other',
          l.digest,
          `Bearer ${bobOther}`,
        );
        const otherOrigin = await registryBlob(tokenRegistry, 'team/other', l.digest, `Bearer ${bobOther}`);
        expect(otherOrigin.status).not.toBe(200);
        expect(otherPath.status, `team/other path, GET ${l.digest}`).toBe(otherOrigin.status);
        expectNoLayerBytes(otherPath, bytes, `team/other path, GET ${l.digest}`);

        const ok = await agentBlob(tokenAgent, tokenRegistry, 'team/app', l.digest, `Bearer ${aliceApp}`);
        expect(ok.status).toBe(200);
        expect(ok.body.equals(bytes), `bytes of ${l.digest}`).toBe(true);
        // The layer was served from the agent's cache: no new download from the registry.
        expect(tokenRegistry.blobGets(l.digest).length).toBe(before);
      }
    });
  });

  describe('private layers on the peer API', () => {
    it('does not hand cached chunks of a private layer to a caller without credentials', async () => {
      // The peer API is how agents share chunks; a caller that is no agent and presents nothing must
      // not be able to read a private layer the mirror API just refused it.
      for (const l of image.layers) {
        const bytes = layer(l.digest);
        const answer = await request(
          `${tokenAgent.url}/peer/v1/blobs/sha256/${l.digest.slice('sha256:'.length)}/chunks/0`,
          undefined,
          {},
        );
        expect(answer.status, `peer chunk 0 of ${l.digest}`).not.toBe(200);
        expectNoLayerBytes(answer, bytes, `peer chunk 0 of ${l.digest}`);
      }
    });
  });

  describe('credentials stay secret', () => {
    /** Every password the test used and every token the token server issued, with a label for messages. */
    const credentialStrings = (): [label: string, value: string][] => {
      const issued = tokens.issuedTokens();
      // Without tokens the checks would pass vacuously.
      expect(issued.length).toBeGreaterThan(0);
      const basic = (user: string, password: string): string =>
        basicAuth(user, password).slice('Basic '.length);
      return [
        ["alice's password", PASSWORD],
        ['the wrong password', WRONG_PASSWORD],
        ["bob's password", BOB_PASSWORD],
        ["alice's Basic credentials", basic(USER, PASSWORD)],
        ['the wrong Basic credentials', basic(USER, WRONG_PASSWORD)],
        ["bob's Basic credentials", basic('bob', BOB_PASSWORD)],
        ...issued.map((t, i): [string, string] => [`issued token #${i}`, t]),
        // A token cut short by a log line would still carry its signature, the part that is secret.
        ...issued.map((t, i): [string, string] => [
          `the signature of issued token #${i}`,
          t.split('.')[2] ?? t,
        ]),
      ];
    };

    it('are never published on NATS', () => {
      // The token agent is connected to NATS and did publish: an empty capture would prove nothing.
      expect(published.length).toBeGreaterThan(0);
      const all = published.join('\n');
      for (const [label, secret] of credentialStrings()) {
        expect(all.includes(secret), `a NATS message contains ${label}`).toBe(false);
      }
    });

    it("are never written to the agents' logs or cache directories", async () => {
      const secrets = credentialStrings();
      for (const agent of [basicAgent, tokenAgent]) {
        // Stopping first makes the log complete: everything the process ever wrote is in the file.
        await agent.stop();
        const proc = agent.process;
        const logFile = proc.logFile;
        if (logFile === undefined) throw new Error(`${agent.name} has no log file`);
        const lastLine = proc.lines().at(-1);
        const content = await waitFor(
          async () => {
            const text = await readFile(logFile, 'utf8');
            return lastLine === undefined || text.includes(lastLine) ? text : undefined;
          },
          { timeoutMs: 5_000, what: `${agent.name}'s log file flushed` },
        );
        expect(content.length, `${agent.name} wrote a log`).toBeGreaterThan(0);
        for (const [label, secret] of secrets) {
          expect(content.includes(secret), `${agent.name}'s log contains ${label}`).toBe(false);
        }

        // startAgent puts the cache (chunks and their metadata) under <dir>/<node id>.
        const home = join(dir, agent.name.replace(/^agent-/, ''));
        const files = (await readdir(home, { recursive: true, withFileTypes: true })).filter((e) =>
          e.isFile(),
        );
        expect(files.length, `${agent.name} cached something`).toBeGreaterThan(0);
        for (const file of files) {
          const bytes = await readFile(join(file.parentPath, file.name));
          for (const [label, secret] of secrets) {
            expect(bytes.includes(secret), `${join(file.parentPath, file.name)} contains ${label}`).toBe(
              false,
            );
          }
        }
      }
    });
  });
});
