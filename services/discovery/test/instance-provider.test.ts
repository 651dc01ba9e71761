/**
 * The registry-instance provider as discovery's configuration sets it up, against fake metadata, STS and
 * container-registry APIs over real HTTP.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, loadConfig, memoryEventPublisher } from '@shoal/mesh';
import { Registry } from 'prom-client';
import { describe, expect, it, onTestFinished } from 'vitest';
import { discoverySpec, type InstanceSettings } from '../src/config.js';
import { createEndpointPublisher } from '../src/endpoint-publisher.js';
import { credentialsFromConfig, instanceProviders } from '../src/instance-provider.js';
import { createDiscoveryMetrics } from '../src/metrics.js';
import { fakeKeyStore, startFakeCr, startFakeMetadata, startFakeSts } from './fake-alibaba.js';

const log = createLogger('test', 'silent');
const OIDC = 'acs:ram::1111111111111111:oidc-provider/ack-rrsa-c0ffee';
const ROLE = 'acs:ram::1111111111111111:role/shoal-p2p';
const CHAINED = 'acs:ram::2222222222222222:role/registry-reader';
// Health checks go to these: addresses on this machine where nothing listens, so no traffic leaves it.
const INTERNET = '127.0.0.1:9';
const VPC = '127.0.0.1:10';

function settings(argv: string[], env: Record<string, string> = {}): InstanceSettings {
  return loadConfig(discoverySpec, { argv, env, command: 'shoal discovery' }).config;
}

async function world() {
  const keys = fakeKeyStore();
  const token = 'eyJhbGciOiJSUzI1NiJ9.payload.sig';
  const [metadata, sts, cr, dir] = await Promise.all([
    startFakeMetadata({ keys, regionId: 'cn-hangzhou', vpcId: 'vpc-nodes' }),
    startFakeSts({ keys, oidcProviderArn: OIDC, roleArn: ROLE, oidcToken: token, chainedRoleArn: CHAINED }),
    startFakeCr({
      keys,
      instances: {
        'cri-one': {
          internet: { enable: true, domains: [INTERNET] },
          vpc: { domains: [VPC], links: [{ vpcId: 'vpc-nodes', status: 'RUNNING' }] },
        },
      },
    }),
    mkdtemp(join(tmpdir(), 'shoal-instance-')),
  ]);
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, token);
  onTestFinished(async () => {
    await Promise.all([metadata.close(), sts.close(), cr.close()]);
    await rm(dir, { recursive: true, force: true });
  });
  const base = [
    '--instances',
    'cri-one',
    '--instances-api',
    cr.url,
    '--credentials-metadata-url',
    metadata.url,
  ];
  return { keys, metadata, sts, cr, tokenFile, base };
}

function providersOf(config: InstanceSettings) {
  return instanceProviders({ config, credentials: credentialsFromConfig(config, log), log });
}

describe('registry-instance provider', () => {
  it('publishes every domain of the instance, VPC endpoint first, region and VPC from instance metadata', async () => {
    const w = await world();
    const [provider] = providersOf(settings(w.base));
    expect(provider?.name).toBe('instance cri-one');
    const targets = await provider!.fetch();
    const candidates = [
      { url: `https://${VPC}`, kind: 'vpc' },
      { url: `https://${INTERNET}`, kind: 'internet' },
    ];
    expect(targets).toEqual([
      { registry: INTERNET, source: 'instance:cri-one', candidates },
      { registry: VPC, source: 'instance:cri-one', candidates },
    ]);
    // The node's RAM role, from the metadata service: the default method.
    expect(w.metadata.calls).toMatchObject({ credentials: 1 });
    expect(w.cr.calls).toMatchObject({ ListInstanceEndpoint: 1, GetInstanceVpcEndpoint: 1 });
  });

  it('uses the internet endpoint when the configured VPC is not linked', async () => {
    const w = await world();
    const [provider] = providersOf(
      settings([...w.base, '--region', 'cn-hangzhou', '--vpc-id', 'vpc-elsewhere']),
    );
    expect((await provider!.fetch())[0]?.candidates).toEqual([
      { url: `https://${INTERNET}`, kind: 'internet' },
    ]);
  });

  it('assumes the RRSA role, chained into another account, and keeps the session between reads', async () => {
    const w = await world();
    w.cr.allowedPrincipals = [`role:${CHAINED}`];
    const config = settings([
      ...w.base,
      '--region=cn-hangzhou',
      `--rrsa-token-file=${w.tokenFile}`,
      `--rrsa-oidc-provider-arn=${OIDC}`,
      `--rrsa-role-arn=${ROLE}`,
      `--rrsa-assume-role-arn=${CHAINED}`,
      `--rrsa-sts-endpoint=${w.sts.url}`,
      '--rrsa-session-duration=2h',
    ]);
    const [provider] = providersOf(config);
    await provider!.fetch();
    await provider!.fetch();
    expect(w.sts.calls).toMatchObject({ AssumeRoleWithOIDC: 1, AssumeRole: 1 });
    expect(w.sts.lastParams?.DurationSeconds).toBe('7200');
    expect(w.cr.lastPrincipal).toBe(`role:${CHAINED}`);
  });

  it('says what to check when the credentials are refused, without the secret', async () => {
    const w = await world();
    const key = w.keys.addAccessKey('user:ci');
    const secret = 'not-the-real-secret-at-all';
    const [provider] = providersOf(
      settings([...w.base, '--region=cn-hangzhou', '--vpc-id=vpc-nodes'], {
        SHOAL_CREDENTIALS_ACCESS_KEY_ID: key.accessKeyId,
        SHOAL_CREDENTIALS_ACCESS_KEY_SECRET: secret,
      }),
    );
    const err = await provider!.fetch().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/SignatureDoesNotMatch/);
    expect(err?.message).toMatch(
      /credentials from access key \S+\*\*\*\* were refused: check credentials\.method/,
    );
    expect(err?.message).toContain('cr:ListInstanceEndpoint');
    expect(err?.message).not.toContain(secret);
    expect(err?.message).not.toContain(key.accessKeySecret);
  });

  it('asks for the region when neither configuration nor instance metadata gives it', async () => {
    const w = await world();
    await w.metadata.close();
    const [provider] = providersOf(
      settings(w.base, {
        SHOAL_CREDENTIALS_METHOD: 'access-key',
        SHOAL_CREDENTIALS_ACCESS_KEY_ID: 'LTAIexample',
        SHOAL_CREDENTIALS_ACCESS_KEY_SECRET: 'x',
      }),
    );
    await expect(provider!.fetch()).rejects.toThrow(
      /^region is not set and the instance metadata service could not tell it .*: set region \(and vpcId\)$/,
    );
  });

  it.each([
    [
      ['--credentials-method=access-key'],
      /^credentials\.accessKeyId and credentials\.accessKeySecret are both needed/,
    ],
    [
      ['--credentials-method=rrsa', '--rrsa-role-arn', ROLE],
      /^rrsa\.roleArn and rrsa\.oidcProviderArn are both needed/,
    ],
  ])('refuses incomplete credentials %j naming the keys', (argv, message) => {
    expect(() => credentialsFromConfig(settings(['--instances=cri-one', ...argv]), log)).toThrow(message);
  });

  it('refuses an RRSA session outside 1h–12h naming the key', () => {
    expect(() => settings(['--rrsa-session-duration=30m'])).toThrow(
      /--rrsa-session-duration: 30m is below the minimum 1h$/,
    );
    expect(() => settings(['--rrsa-session-duration=13h'])).toThrow(
      /--rrsa-session-duration: 13h is above the maximum 12h$/,
    );
  });

  it('keeps the last good endpoints published while the API fails, and retries', async () => {
    const w = await world();
    const [provider] = providersOf(settings([...w.base, '--instances-refresh=1s']));
    const published: string[] = [];
    const publisher = createEndpointPublisher({
      kv: () => undefined,
      static: [],
      providers: [provider!],
      intervalMs: 60_000,
      timeoutMs: 200,
      retryMs: 20,
      events: memoryEventPublisher('test'),
      metrics: createDiscoveryMetrics(new Registry(), () => 0),
      log,
    });
    await publisher.start();
    try {
      published.push(...Object.keys(publisher.health()));
      expect(published.sort()).toEqual([INTERNET, VPC].sort());
      // Each read makes two calls at once: six failures fail three reads.
      w.cr.failNext(6, 'ServiceUnavailable');
      const before = w.cr.calls.ListInstanceEndpoint ?? 0;
      await new Promise((r) => setTimeout(r, 1_600));
      // The refresh at 1 s failed, then retries after about 20 and 40 ms failed, and the next one answered.
      expect((w.cr.calls.ListInstanceEndpoint ?? 0) - before).toBeGreaterThanOrEqual(4);
      const records = await publisher.check();
      expect(records.map((r) => r.registry).sort()).toEqual([INTERNET, VPC].sort());
    } finally {
      await publisher.stop();
    }
  });
});
