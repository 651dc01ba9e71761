/**
 * Property-based fuzzing of the agent's HTTP APIs (mirror and peer): names, digests, ranges, query
 * strings and headers of every shape, huge and malformed ones included. Whatever comes in, the agent
 * answers (never crashes, never hangs), refuses bad input with a 4xx in the OCI error format, and writes
 * nothing outside its cache directory.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { createLogger, loadConfig } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import { type FakeRegistry, randomBlob, startFakeRegistry } from './fake-registry.js';

const RUNS = 300;

/** Everything under a directory, as relative paths. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    out.push(join(entry.parentPath, entry.name).slice(dir.length));
  }
  return out.sort();
}

describe('fuzzing the agent APIs', () => {
  let dir: string;
  let registry: FakeRegistry;
  let agent: Agent;
  let digest: string;
  let cases = 0;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-fuzz-'));
    registry = await startFakeRegistry();
    digest = registry.addBlob(randomBlob(300_000));
    const { config } = loadConfig(agentSpec, {
      argv: [
        '--node-id=fuzz',
        `--cache-dir=${join(dir, 'cache')}`,
        `--registries=${registry.url}`,
        '--nats-servers=nats://127.0.0.1:1',
        '--log-level=silent',
        '--peer-secret=fuzz-secret',
        '--upstream-timeout=2s',
      ],
      env: {},
      command: 'test',
    });
    agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
    await agent.start();
    // A blob in the cache, so that range and peer requests reach code that reads files.
    const warm = await agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${digest}` });
    expect(warm.statusCode).toBe(200);
  });

  afterAll(async () => {
    await agent?.stop();
    await registry?.close();
    await rm(dir, { recursive: true, force: true });
    console.log(`fuzz cases run without a crash: ${cases}`);
  });

  /** The inputs, made once the blob's digest is known: the awkward values a name or digest should never hold. */
  function arbitraries() {
    const segment = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.constantFrom(
        '..',
        '.',
        '%2e%2e',
        '%2F',
        '%00',
        '%',
        '%zz',
        '\\',
        '//',
        'sha256:',
        digest,
        digest.toUpperCase(),
      ),
      fc.stringMatching(/^[a-z0-9._\-/]{1,300}$/),
      fc.string({ unit: 'binary', maxLength: 30 }).map((s) => encodeURIComponent(s)),
    );
    const digestLike = fc.oneof(
      fc.constant(digest),
      fc.stringMatching(/^sha256:[a-f0-9]{0,70}$/),
      fc.stringMatching(/^(sha512|md5|sha256):[A-Za-z0-9+/=]{0,90}$/),
      segment,
    );
    const rangeHeader = fc.oneof(
      fc.constantFrom(
        'bytes=0-0',
        'bytes=-1',
        'bytes=299999-',
        'bytes=0-9999999999',
        'bytes=5-4',
        'bytes=a-b',
        'bytes=0-1,5-6',
        'items=0-1',
      ),
      fc
        .tuple(fc.bigInt({ min: -10n, max: 2n ** 70n }), fc.bigInt({ min: -10n, max: 2n ** 70n }))
        .map(([a, b]) => `bytes=${a}-${b}`),
      fc.string({ maxLength: 60 }),
    );
    const headerValue = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.constantFrom('Basic', 'Bearer', 'Basic !!!', 'Shoal x.y.z', 'Bearer ' + 'a'.repeat(9000)),
    );
    const method = fc.constantFrom('GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS');
    return { segment, digestLike, rangeHeader, headerValue, method };
  }

  async function expectSane(
    res: { statusCode: number; headers: Record<string, unknown>; payload: string },
    what: string,
  ) {
    cases++;
    expect(res.statusCode, what).toBeGreaterThanOrEqual(200);
    expect(res.statusCode, what).toBeLessThan(600);
    if (res.statusCode >= 400 && res.statusCode < 500 && res.payload) {
      const body = JSON.parse(res.payload) as { errors?: { code: string; message: string }[] };
      expect(body.errors?.[0]?.code, what).toMatch(/^[A-Z_]+$/);
    }
    // The agent is still there and well.
    const health = await agent.app.inject({ method: 'GET', url: '/healthz' });
    expect(health.statusCode, `after ${what}`).toBe(200);
  }

  it('answers any blob request with a sane status, and refuses bad input in the OCI format', async () => {
    const { method, segment, digestLike, rangeHeader } = arbitraries();
    await fc.assert(
      fc.asyncProperty(
        method,
        fc.array(segment, { minLength: 1, maxLength: 4 }),
        digestLike,
        fc.option(rangeHeader),
        async (m, repo, d, range) => {
          const url = `/v2/${repo.join('/')}/blobs/${d}`;
          const res = await agent.app.inject({
            method: m as 'GET',
            url,
            ...(range === null ? {} : { headers: { range } }),
          });
          await expectSane(res, `${m} ${url} range=${String(range)}`);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('answers manifests, tags and referrers with any name, reference and query', async () => {
    const { segment } = arbitraries();
    await fc.assert(
      fc.asyncProperty(
        fc.array(segment, { minLength: 1, maxLength: 3 }),
        fc.constantFrom('manifests', 'tags/list', 'referrers', 'blobs/uploads', 'other'),
        segment,
        fc.option(fc.oneof(segment, fc.constant(registry.host), fc.string({ maxLength: 300 }))),
        async (repo, kind, ref, ns) => {
          const query = ns === null ? '' : `?ns=${encodeURIComponent(ns)}&n=${encodeURIComponent(ref)}`;
          const url = `/v2/${repo.join('/')}/${kind}/${ref}${query}`;
          const res = await agent.app.inject({ method: 'GET', url });
          await expectSane(res, `GET ${url}`);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('refuses peer requests without a valid mesh token, and bad indexes, whatever they look like', async () => {
    const { segment, headerValue } = arbitraries();
    const hex = digest.slice('sha256:'.length);
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.constant(hex), segment),
        fc.oneof(fc.nat({ max: 5 }).map(String), segment, fc.constant('99999999999')),
        fc.option(headerValue),
        async (h, index, authorization) => {
          const url = `/peer/v1/blobs/sha256/${h}/chunks/${index}`;
          const res = await agent.app.inject({
            method: 'GET',
            url,
            ...(authorization === null ? {} : { headers: { authorization } }),
          });
          await expectSane(res, `GET ${url}`);
          // Nothing is served without the mesh's credential.
          expect(res.statusCode, url).not.toBe(200);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('survives huge and malformed headers on every route', async () => {
    const { headerValue } = arbitraries();
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(
          `/v2/team/app/blobs/${digest}`,
          '/v2/',
          `/peer/v1/blobs/sha256/${digest.slice(7)}/chunks/0`,
          '/healthz',
        ),
        fc.dictionary(
          fc.constantFrom(
            'authorization',
            'range',
            'accept',
            'if-none-match',
            'x-forwarded-for',
            'host',
            'content-length',
          ),
          headerValue,
          { maxKeys: 4 },
        ),
        async (url, headers) => {
          let res;
          try {
            res = await agent.app.inject({ method: 'GET', url, headers });
          } catch (err) {
            // The injector itself refuses some header values (as Node's HTTP parser would): not the agent's doing.
            expect(String(err)).toMatch(/Invalid character|header/i);
            return;
          }
          await expectSane(res, `GET ${url} ${JSON.stringify(headers).slice(0, 200)}`);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('wrote nothing outside its cache directory', async () => {
    const files = await tree(dir);
    expect(files.filter((f) => !f.startsWith('/cache'))).toEqual([]);
  });
});
