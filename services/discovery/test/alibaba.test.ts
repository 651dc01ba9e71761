import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isShoalError } from '@shoal/mesh';
import { crClient, instanceEndpoints, type CrClient } from '../src/alibaba/cr.js';
import {
  cached,
  ecsRamRole,
  metadataInfo,
  rrsa,
  staticAccessKey,
  type CredentialProvider,
  type Credentials,
  type RrsaOptions,
} from '../src/alibaba/credentials.js';
import { AliyunApiError, percentEncode, rpcCall, rpcSignature } from '../src/alibaba/signer.js';
import {
  fakeKeyStore,
  startFakeCr,
  startFakeMetadata,
  startFakeSts,
  type FakeInstance,
  type FakeKeyStore,
} from './fake-alibaba.js';

const REGION = 'cn-hangzhou';
const INSTANCE = 'cri-shoaltest';
const NODE_VPC = 'vpc-node';
const OIDC_PROVIDER = 'acs:ram::1111111111111111:oidc-provider/ack-rrsa-c0ffee';
const RRSA_ROLE = 'acs:ram::1111111111111111:role/shoal-p2p';
const CHAINED_ROLE = 'acs:ram::2222222222222222:role/shoal-registry-reader';
const TIMEOUT_MS = 2000;
const MINUTE = 60_000;

const INTERNET_DOMAIN = 'shoaltest-registry.cn-hangzhou.cr.aliyuncs.com';
const USER_DOMAIN = 'registry.example.com';
const VPC_DOMAIN = 'shoaltest-registry-vpc.cn-hangzhou.cr.aliyuncs.com';

function instance(overrides: Partial<FakeInstance> = {}): FakeInstance {
  return {
    internet: { enable: true, domains: [INTERNET_DOMAIN], userDomains: [USER_DOMAIN] },
    vpc: {
      domains: [VPC_DOMAIN],
      links: [
        { vpcId: 'vpc-other', status: 'RUNNING' },
        { vpcId: NODE_VPC, status: 'RUNNING' },
      ],
    },
    ...overrides,
  };
}

/** Fresh fakes, token file and keys for one test, stopped and removed when it finishes. */
async function world() {
  const keys = fakeKeyStore();
  const oidcToken = `eyJhbGciOiJSUzI1NiJ9.${percentEncode('initial')}.sig+/=`;
  const [metadata, sts, cr, dir] = await Promise.all([
    startFakeMetadata({ keys, regionId: REGION, vpcId: NODE_VPC }),
    startFakeSts({
      keys,
      oidcProviderArn: OIDC_PROVIDER,
      roleArn: RRSA_ROLE,
      oidcToken,
      chainedRoleArn: CHAINED_ROLE,
    }),
    startFakeCr({ keys, instances: { [INSTANCE]: instance() } }),
    mkdtemp(join(tmpdir(), 'shoal-rrsa-')),
  ]);
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, `${oidcToken}\n`);
  onTestFinished(async () => {
    await Promise.all([metadata.close(), sts.close(), cr.close()]);
    await rm(dir, { recursive: true, force: true });
  });
  const client = (credentials: CredentialProvider): CrClient =>
    crClient({ region: REGION, endpoint: cr.url, credentials, timeoutMs: TIMEOUT_MS });
  const rrsaOptions = (extra: Partial<RrsaOptions> = {}): RrsaOptions => ({
    tokenFile,
    oidcProviderArn: OIDC_PROVIDER,
    roleArn: RRSA_ROLE,
    sessionName: 'shoal-test',
    durationSeconds: 3600,
    stsEndpoint: sts.url,
    timeoutMs: TIMEOUT_MS,
    ...extra,
  });
  return { keys, metadata, sts, cr, tokenFile, client, rrsaOptions };
}

/** No secret handed out by the fakes may appear in an error, its stack or its causes, in any encoding. */
function expectNoSecret(err: unknown, keys: FakeKeyStore): void {
  const texts: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = e.cause) texts.push(e.message, e.stack ?? '');
  expect(texts.length).toBeGreaterThan(0);
  for (const secret of keys.secrets()) {
    for (const text of texts) {
      expect(text, 'an error leaks a secret').not.toContain(secret);
      expect(text, 'an error leaks an encoded secret').not.toContain(percentEncode(secret));
    }
  }
}

async function failure(promise: Promise<unknown>, keys: FakeKeyStore): Promise<Error> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(outcome instanceof Error)) throw new Error('expected the call to fail');
  expectNoSecret(outcome, keys);
  return outcome;
}

async function apiFailure(promise: Promise<unknown>, keys: FakeKeyStore): Promise<AliyunApiError> {
  const err = await failure(promise, keys);
  expect(err).toBeInstanceOf(AliyunApiError);
  return err as AliyunApiError;
}

function expectShoalError(err: Error): void {
  expect(isShoalError(err)).toBe(true);
}

describe('request signing', () => {
  it("reproduces the signature of Alibaba's documented example", () => {
    const params = {
      AccessKeyId: 'testid',
      Action: 'DescribeRegions',
      Format: 'XML',
      SignatureMethod: 'HMAC-SHA1',
      SignatureNonce: '3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf',
      SignatureVersion: '1.0',
      Timestamp: '2016-02-23T12:46:24Z',
      Version: '2014-05-26',
    };
    expect(rpcSignature('GET', params, 'testsecret')).toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
    expect(percentEncode("a b*c~d!'()+/é")).toBe('a%20b%2Ac~d%21%27%28%29%2B%2F%C3%A9');
  });

  it("POSTs requests that Alibaba's own library verifies, awkward characters included", async () => {
    const w = await world();
    const key = w.keys.addAccessKey('user:ci');
    const awkwardId = "cri-a b*c~d!'()+&=/é中😀";
    w.cr.instances[awkwardId] = instance();
    const note = 'spaces  and *stars* ~tilde~ 100% +plus+ & = ? # ünïcödé 中文 😀';

    const answer = await rpcCall(
      w.cr.url,
      'ListInstanceEndpoint',
      '2018-12-01',
      { InstanceId: awkwardId, ModuleName: 'Registry', Note: note },
      key,
      { timeoutMs: TIMEOUT_MS },
    );

    expect(answer.IsSuccess).toBe(true);
    const request = w.cr.lastRequest!;
    expect(request.method).toBe('POST');
    // Everything, the signature and any token included, travels in the body, never in the URL.
    expect(request.query).toBe('');
    expect(request.params).toMatchObject({ InstanceId: awkwardId, Note: note, AccessKeyId: key.accessKeyId });
    expect(request.params.Timestamp).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
  });

  it('signs with temporary credentials, sending the security token', async () => {
    const w = await world();
    const key = w.keys.issue('role:ci', 10 * MINUTE);

    await w.client(staticLike(key)).listInstanceEndpoint(INSTANCE);

    expect(w.cr.lastRequest!.params.SecurityToken).toBe(key.securityToken);
    expect(w.cr.lastPrincipal).toBe('role:ci');
  });

  it('reports a wrong secret as SignatureDoesNotMatch, not retryable, with no secret in the message', async () => {
    const w = await world();
    const key = w.keys.issue('role:ci', 10 * MINUTE);
    const wrongSecret = `${key.accessKeySecret.slice(0, -4)}abcd`;
    w.keys.remember(wrongSecret);

    const err = await apiFailure(
      rpcCall(
        w.cr.url,
        'ListInstanceEndpoint',
        '2018-12-01',
        { InstanceId: INSTANCE, ModuleName: 'Registry' },
        { ...key, accessKeySecret: wrongSecret },
        { timeoutMs: TIMEOUT_MS },
      ),
      w.keys,
    );

    expect(err).toMatchObject({ code: 'SignatureDoesNotMatch', status: 400, retryable: false });
    expect(err.requestId).toMatch(/^[0-9A-F-]{36}$/);
    // The real API quotes its string to sign, security token included; the token is blanked out.
    expect(err.message).toMatch(
      new RegExp(
        `^${w.cr.host.replace(/\./g, '\\.')} ListInstanceEndpoint: SignatureDoesNotMatch: Specified signature is not matched with our calculation\\. server string to sign is:POST&%2F&.*SecurityToken%3D\\*\\*\\*%26.* \\(request ${err.requestId}\\)$`,
      ),
    );
  });

  it('names the API, action, code, message and request of an unknown access key', async () => {
    const w = await world();

    const err = await apiFailure(
      w.client(staticAccessKey('LTAInotknown', 'not-a-real-secret')).listInstanceEndpoint(INSTANCE),
      w.keys,
    );

    expect(err.message).toBe(
      `${w.cr.host} ListInstanceEndpoint: InvalidAccessKeyId.NotFound: Specified access key is not found. (request ${err.requestId})`,
    );
    expect(err).toMatchObject({ code: 'InvalidAccessKeyId.NotFound', status: 404, retryable: false });
    expect(err.message).not.toContain('not-a-real-secret');
  });

  it('is refused once the security token has expired or the timestamp is far off', async () => {
    const w = await world();
    const expired = w.keys.issue('role:ci', -MINUTE);
    const err = await apiFailure(w.client(staticLike(expired)).listInstanceEndpoint(INSTANCE), w.keys);
    expect(err).toMatchObject({ code: 'InvalidSecurityToken.Expired', retryable: false });

    const key = w.keys.addAccessKey('user:ci');
    const skewed = await apiFailure(
      rpcCall(
        w.cr.url,
        'ListInstanceEndpoint',
        '2018-12-01',
        { InstanceId: INSTANCE, ModuleName: 'Registry' },
        key,
        {
          timeoutMs: TIMEOUT_MS,
          now: () => Date.now() - 20 * MINUTE,
        },
      ),
      w.keys,
    );
    expect(skewed).toMatchObject({ code: 'InvalidTimeStamp.Expired', retryable: false });
  });

  it('treats an answer with IsSuccess false as an error even on HTTP 200', async () => {
    const w = await world();
    const client = w.client(staticLike(w.keys.addAccessKey('user:ci')));

    const err = await apiFailure(client.listInstanceEndpoint('cri-missing'), w.keys);

    expect(err).toMatchObject({ code: 'INSTANCE_NOT_EXIST', status: 200, retryable: false });
    expect(err.message).toContain('ListInstanceEndpoint: INSTANCE_NOT_EXIST: instance not exist (request ');
  });

  it('marks server errors, throttling, timeouts and lost connections as retryable', async () => {
    const w = await world();
    const client = w.client(staticLike(w.keys.addAccessKey('user:ci')));

    w.cr.failNext(1, 'ServiceUnavailable');
    w.cr.failNext(1, 'Throttling.User');
    w.cr.failNext(1, 'InternalError');
    const unavailable = await apiFailure(client.listInstanceEndpoint(INSTANCE), w.keys);
    const throttled = await apiFailure(client.getInstanceVpcEndpoint(INSTANCE), w.keys);
    const internal = await apiFailure(client.listInstanceEndpoint(INSTANCE), w.keys);
    expect(unavailable).toMatchObject({ code: 'ServiceUnavailable', status: 503, retryable: true });
    expect(throttled).toMatchObject({ code: 'Throttling.User', status: 400, retryable: true });
    expect(internal).toMatchObject({ code: 'InternalError', status: 500, retryable: true });
    await expect(client.listInstanceEndpoint(INSTANCE)).resolves.toBeDefined();

    w.cr.delayMs = 5000;
    const slow = crClient({
      region: REGION,
      endpoint: w.cr.url,
      credentials: staticLike(w.keys.addAccessKey('user:ci')),
      timeoutMs: 100,
    });
    const timedOut = await apiFailure(slow.listInstanceEndpoint(INSTANCE), w.keys);
    expect(timedOut).toMatchObject({ code: 'Timeout', status: undefined, retryable: true });
    expect(timedOut.message).toBe(`${w.cr.host} ListInstanceEndpoint: Timeout: no answer within 100 ms`);

    // A port nothing listens on any more, and that no pooled connection leads to.
    const gone = await startFakeCr({ keys: w.keys });
    await gone.close();
    const unreachable = crClient({
      region: REGION,
      endpoint: gone.url,
      credentials: staticLike(w.keys.addAccessKey('user:ci')),
      timeoutMs: TIMEOUT_MS,
    });
    const refused = await apiFailure(unreachable.listInstanceEndpoint(INSTANCE), w.keys);
    expect(refused).toMatchObject({ code: 'NetworkError', status: undefined, retryable: true });
    expect(refused.message).toBe(
      `${gone.host} ListInstanceEndpoint: NetworkError: request failed: ECONNREFUSED`,
    );
  });
});

/** A provider that hands out given credentials as they are. */
function staticLike(credentials: Credentials): CredentialProvider {
  return { describe: () => 'fixed credentials', get: async () => credentials };
}

describe('credential providers', () => {
  it('uses a RAM user access key and shows its ID only masked', async () => {
    const w = await world();
    const key = w.keys.addAccessKey('user:ci');
    const provider = staticAccessKey(key.accessKeyId, key.accessKeySecret);

    const answer = await w.client(provider).listInstanceEndpoint(INSTANCE);

    expect(answer.endpoints.map((e) => e.endpointType)).toEqual(['internet', 'vpc']);
    expect(w.cr.lastPrincipal).toBe('user:ci');
    expect(provider.describe()).toBe('access key LTAI****');
    expect(() => staticAccessKey('LTAIx', '')).toThrow(
      'both the AccessKeyId and the AccessKeySecret are needed',
    );
  });

  it("uses the ECS instance's RAM role through IMDSv2 when the metadata service requires tokens", async () => {
    const w = await world();
    w.metadata.tokens = 'required';
    const provider = ecsRamRole({ metadataUrl: w.metadata.url, timeoutMs: TIMEOUT_MS });

    const answer = await w.client(provider).listInstanceEndpoint(INSTANCE);

    expect(answer.requestId).not.toBe('');
    expect(w.cr.lastPrincipal).toBe('role:shoal-node-role');
    expect(w.metadata.calls).toMatchObject({ token: 1, roles: 1, credentials: 1 });
    expect(w.metadata.readsWithToken).toEqual([true, true]);
    expect(provider.describe()).toBe('ECS RAM role (instance metadata)');
    const credentials = await provider.get();
    expect(credentials.expiration).toBe(w.metadata.lastIssued!.expiration);
  });

  it('reads the RAM role without a token where IMDSv2 is not offered', async () => {
    const w = await world();
    w.metadata.tokens = 'unsupported';
    const provider = ecsRamRole({
      metadataUrl: w.metadata.url,
      roleName: 'shoal-node-role',
      timeoutMs: TIMEOUT_MS,
    });

    await w.client(provider).listInstanceEndpoint(INSTANCE);

    expect(w.metadata.calls.roles).toBeUndefined();
    expect(w.metadata.readsWithToken).toEqual([false]);
    expect(provider.describe()).toBe('ECS RAM role shoal-node-role (instance metadata)');
  });

  it('fails clearly when the metadata service has no usable role credentials', async () => {
    const w = await world();
    const provider = ecsRamRole({ metadataUrl: w.metadata.url, timeoutMs: TIMEOUT_MS });

    w.metadata.credentialsCode = 'Failed';
    const failed = await failure(provider.get(), w.keys);
    expect(failed.message).toBe(
      `ECS RAM role shoal-node-role: instance metadata ${w.metadata.url}/latest/meta-data/ram/security-credentials/shoal-node-role: answered Code Failed instead of Success`,
    );

    w.metadata.credentialsCode = 'Success';
    w.metadata.credentialsStatus = 500;
    expect((await failure(provider.get(), w.keys)).message).toMatch(/shoal-node-role: HTTP 500$/);

    w.metadata.roleName = undefined;
    const none = await failure(provider.get(), w.keys);
    expect(none.message).toContain('no RAM role is attached to this ECS instance (HTTP 404)');
    expectShoalError(none);
  });

  it('reads the region and VPC of the node from instance metadata', async () => {
    const w = await world();
    w.metadata.tokens = 'required';

    await expect(metadataInfo({ metadataUrl: w.metadata.url, timeoutMs: TIMEOUT_MS })).resolves.toEqual({
      region: REGION,
      vpcId: NODE_VPC,
    });

    await w.metadata.close();
    const err = await failure(metadataInfo({ metadataUrl: w.metadata.url, timeoutMs: TIMEOUT_MS }), w.keys);
    expect(err.message).toContain('(is this an Alibaba Cloud ECS instance?)');
  });

  it('exchanges the RRSA token for the role at STS', async () => {
    const w = await world();
    w.cr.allowedPrincipals = [`role:${RRSA_ROLE}`];
    const provider = rrsa(w.rrsaOptions());

    await w.client(provider).listInstanceEndpoint(INSTANCE);

    expect(w.sts.calls).toEqual({ AssumeRoleWithOIDC: 1 });
    expect(w.sts.lastParams).toMatchObject({
      OIDCProviderArn: OIDC_PROVIDER,
      RoleArn: RRSA_ROLE,
      RoleSessionName: 'shoal-test',
      DurationSeconds: '3600',
      Format: 'JSON',
    });
    expect(w.sts.lastParams!.Signature).toBeUndefined();
    expect(provider.describe()).toBe(`RRSA role ${RRSA_ROLE}`);
  });

  it('chains the RRSA role into the role of the account that owns the registry', async () => {
    const w = await world();
    w.cr.allowedPrincipals = [`role:${CHAINED_ROLE}`];

    const direct = await apiFailure(w.client(rrsa(w.rrsaOptions())).listInstanceEndpoint(INSTANCE), w.keys);
    expect(direct.code).toBe('Forbidden.RAM');

    const provider = rrsa(w.rrsaOptions({ assumeRoleArn: CHAINED_ROLE, durationSeconds: 7200 }));
    await w.client(provider).listInstanceEndpoint(INSTANCE);

    expect(w.sts.calls).toEqual({ AssumeRoleWithOIDC: 2, AssumeRole: 1 });
    expect(w.sts.lastParams).toMatchObject({
      Action: 'AssumeRole',
      RoleArn: CHAINED_ROLE,
      DurationSeconds: '7200',
    });
    expect(w.cr.lastPrincipal).toBe(`role:${CHAINED_ROLE}`);
    expect(provider.describe()).toBe(`RRSA role ${RRSA_ROLE} then role ${CHAINED_ROLE}`);
  });

  it('re-reads the rotated token file on every exchange', async () => {
    const w = await world();
    const provider = rrsa(w.rrsaOptions());
    await provider.get();

    const rotated = 'eyJhbGciOiJSUzI1NiJ9.rotated.sig';
    w.sts.rotate(rotated);
    await writeFile(w.tokenFile, rotated);
    await expect(provider.get()).resolves.toMatchObject({
      accessKeyId: expect.stringMatching(/^STS\./) as unknown,
    });
    expect(w.sts.lastParams!.OIDCToken).toBe(rotated);

    // STS has moved on but the file has not: STS answers that the token expired, and the token it quotes
    // is kept out of the error.
    w.sts.rotate('eyJhbGciOiJSUzI1NiJ9.newer.sig');
    const err = await apiFailure(provider.get(), w.keys);
    expect(err).toMatchObject({
      code: 'AuthenticationFail.OIDCToken.Expired',
      status: 400,
      retryable: false,
    });
    expect(err.message).toBe(
      `${w.sts.host} AssumeRoleWithOIDC: AuthenticationFail.OIDCToken.Expired: The OIDC token *** has expired. (request ${err.requestId})`,
    );

    await rm(w.tokenFile);
    const missing = await failure(provider.get(), w.keys);
    expect(missing.message).toBe(`RRSA token file ${w.tokenFile} cannot be read: ENOENT`);
  });

  it('rejects RRSA settings out of range, naming the bad value', async () => {
    const w = await world();
    for (const bad of [900, 43201, 3600.5]) {
      expect(() => rrsa(w.rrsaOptions({ durationSeconds: bad }))).toThrow(
        `RRSA: durationSeconds ${bad} is out of range: must be a whole number of seconds from 3600 to 43200`,
      );
    }
    expect(() => rrsa(w.rrsaOptions({ durationSeconds: 43200 }))).not.toThrow();
    expect(() => rrsa(w.rrsaOptions({ roleArn: 'shoal-p2p' }))).toThrow(
      'RRSA: roleArn "shoal-p2p" is not a RAM ARN',
    );
    expect(() => rrsa(w.rrsaOptions({ stsEndpoint: undefined }))).toThrow(
      'RRSA: either region or stsEndpoint is needed to reach STS',
    );
  });

  it('reaches the regional STS endpoint, or its VPC variant', async () => {
    const w = await world();
    const seen: string[] = [];
    const answer = JSON.stringify({
      RequestId: 'R1',
      Credentials: {
        AccessKeyId: 'STS.x',
        AccessKeySecret: 'y',
        SecurityToken: 'z',
        Expiration: '2030-01-01T00:00:00Z',
      },
    });
    const recordingFetch: typeof fetch = async (input) => {
      seen.push(input instanceof Request ? input.url : input.toString());
      return new Response(answer, { status: 200, headers: { 'content-type': 'application/json' } });
    };
    const base = w.rrsaOptions({ stsEndpoint: undefined, region: 'cn-shanghai', fetch: recordingFetch });

    await rrsa(base).get();
    await expect(rrsa({ ...base, vpc: true }).get()).resolves.toMatchObject({
      expiration: Date.parse('2030-01-01T00:00:00Z'),
    });

    expect(seen).toEqual([
      'https://sts.cn-shanghai.aliyuncs.com/',
      'https://sts-vpc.cn-shanghai.aliyuncs.com/',
    ]);
  });
});

/** A provider whose answers the test decides, one call at a time. */
function scriptedProvider(): {
  provider: CredentialProvider;
  calls: number;
  next: (answer: Credentials | Error) => void;
  pending: () => number;
} {
  const waiting: ((answer: Credentials | Error) => void)[] = [];
  const queued: (Credentials | Error)[] = [];
  const state = {
    calls: 0,
    provider: {
      describe: () => 'scripted provider',
      get: () => {
        state.calls += 1;
        return new Promise<Credentials>((resolve, reject) => {
          const settle = (answer: Credentials | Error): void =>
            answer instanceof Error ? reject(answer) : resolve(answer);
          const ready = queued.shift();
          if (ready === undefined) waiting.push(settle);
          else settle(ready);
        });
      },
    },
    next(answer: Credentials | Error) {
      const settle = waiting.shift();
      if (settle === undefined) queued.push(answer);
      else settle(answer);
    },
    pending: () => waiting.length,
  };
  return state;
}

describe('cached credentials', () => {
  it('refreshes RRSA credentials once fewer than five minutes remain, not before', async () => {
    const w = await world();
    w.sts.lifetimeMs = 10 * MINUTE;
    let offset = 0;
    const provider = cached(rrsa(w.rrsaOptions()), { now: () => Date.now() + offset });

    const first = await provider.get();
    offset = 4 * MINUTE;
    expect(await provider.get()).toBe(first);
    expect(w.sts.calls.AssumeRoleWithOIDC).toBe(1);

    offset = 5 * MINUTE + 30_000;
    const second = await provider.get();
    expect(second.accessKeyId).not.toBe(first.accessKeyId);
    expect(w.sts.calls.AssumeRoleWithOIDC).toBe(2);
    await expect(w.client(provider).listInstanceEndpoint(INSTANCE)).resolves.toBeDefined();
    expect(provider.describe()).toBe(`RRSA role ${RRSA_ROLE}`);
  });

  it('shares one refresh among concurrent callers', async () => {
    const scripted = scriptedProvider();
    const provider = cached(scripted.provider, { now: () => 0 });

    const callers = Array.from({ length: 5 }, () => provider.get());
    await vi.waitFor(() => expect(scripted.pending()).toBe(1));
    const credentials = {
      accessKeyId: 'STS.a',
      accessKeySecret: 's',
      securityToken: 't',
      expiration: 60 * MINUTE,
    };
    scripted.next(credentials);

    const results = await Promise.all(callers);
    expect(results.every((r) => r === credentials)).toBe(true);
    expect(scripted.calls).toBe(1);
    expect(await provider.get()).toBe(credentials);
    expect(scripted.calls).toBe(1);
  });

  it('keeps using valid credentials when a refresh fails, says so once, and fails clearly once they expire', async () => {
    const w = await world();
    w.sts.lifetimeMs = 10 * MINUTE;
    let offset = 0;
    const reported: Error[] = [];
    const provider = cached(rrsa(w.rrsaOptions()), {
      now: () => Date.now() + offset,
      onError: (err) => reported.push(err),
    });
    const first = await provider.get();

    offset = 6 * MINUTE;
    w.sts.failNext(2, 'ServiceUnavailable');
    expect(await provider.get()).toBe(first);
    expect(await provider.get()).toBe(first);
    expect(w.sts.calls.AssumeRoleWithOIDC).toBe(3);
    expect(reported).toHaveLength(1);
    expect(reported[0]!.message).toMatch(
      new RegExp(
        `^credentials from RRSA role ${RRSA_ROLE}: could not refresh, using the current ones until \\S+Z: ${w.sts.host} AssumeRoleWithOIDC: ServiceUnavailable: `,
      ),
    );
    expectNoSecret(reported[0], w.keys);

    offset = 11 * MINUTE;
    w.sts.failNext(1, 'Throttling.User');
    const err = await failure(provider.get(), w.keys);
    expectShoalError(err);
    expect(err.message).toMatch(
      new RegExp(
        `^credentials from RRSA role ${RRSA_ROLE}: could not refresh: ${w.sts.host} AssumeRoleWithOIDC: Throttling\\.User: Request was denied due to user flow control\\. \\(request `,
      ),
    );
    expect(err.cause).toBeInstanceOf(AliyunApiError);

    // Once STS answers again, the next get() recovers.
    w.sts.lifetimeMs = 60 * MINUTE;
    const recovered = await provider.get();
    expect(recovered.accessKeyId).not.toBe(first.accessKeyId);
  });

  it('says it could not get credentials when there were none yet', async () => {
    const scripted = scriptedProvider();
    const provider = cached(scripted.provider);
    scripted.next(new Error('metadata service unreachable'));

    await expect(provider.get()).rejects.toThrow(
      'credentials from scripted provider: could not get: metadata service unreachable',
    );
  });

  it('never refreshes credentials without an expiration', async () => {
    const scripted = scriptedProvider();
    const provider = cached(scripted.provider, { now: () => Number.MAX_SAFE_INTEGER });
    scripted.next({ accessKeyId: 'LTAIx', accessKeySecret: 's' });

    const first = await provider.get();
    expect(await provider.get()).toBe(first);
    expect(scripted.calls).toBe(1);
  });
});

describe('instance endpoints', () => {
  async function endpointsWorld(spec: FakeInstance) {
    const w = await world();
    w.cr.instances[INSTANCE] = spec;
    const client = w.client(staticAccessKey(...accessKey(w.keys)));
    return { ...w, crc: client };
  }

  function accessKey(keys: FakeKeyStore): [string, string] {
    const key = keys.addAccessKey('user:ci');
    return [key.accessKeyId, key.accessKeySecret];
  }

  it('puts the VPC endpoint first when the node VPC is linked and running', async () => {
    const w = await endpointsWorld(instance());

    const result = await instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC, region: REGION });

    expect(result).toEqual({
      instanceId: INSTANCE,
      registries: [INTERNET_DOMAIN, USER_DOMAIN, VPC_DOMAIN],
      candidates: [
        { url: `https://${VPC_DOMAIN}`, kind: 'vpc', vpc: NODE_VPC, region: REGION },
        { url: `https://${INTERNET_DOMAIN}`, kind: 'internet', region: REGION },
        { url: `https://${USER_DOMAIN}`, kind: 'internet', region: REGION },
      ],
      notes: [],
    });
  });

  it('uses the internet endpoint when the link is not running yet', async () => {
    const w = await endpointsWorld(
      instance({ vpc: { domains: [VPC_DOMAIN], links: [{ vpcId: NODE_VPC, status: 'CREATING' }] } }),
    );

    const result = await instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC });

    expect(result.candidates.map((c) => c.kind)).toEqual(['internet', 'internet']);
    expect(result.notes).toEqual([
      `VPC ${NODE_VPC} is linked to instance ${INSTANCE} but the link is CREATING, not RUNNING`,
    ]);
  });

  it('uses the internet endpoint when the node VPC is not linked, and lists the linked ones', async () => {
    const w = await endpointsWorld(
      instance({
        vpc: {
          domains: [VPC_DOMAIN],
          links: [
            { vpcId: 'vpc-a', status: 'RUNNING' },
            { vpcId: 'vpc-b', status: 'RUNNING' },
          ],
        },
      }),
    );

    const result = await instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC });

    expect(result.candidates.map((c) => c.url)).toEqual([
      `https://${INTERNET_DOMAIN}`,
      `https://${USER_DOMAIN}`,
    ]);
    expect(result.registries).toContain(VPC_DOMAIN);
    expect(result.notes).toEqual([
      `VPC ${NODE_VPC} is not linked to instance ${INSTANCE} (linked: vpc-a, vpc-b)`,
    ]);
  });

  it('leaves VPC endpoints out, without asking for them, when the node VPC is unknown', async () => {
    const w = await endpointsWorld(instance());

    const result = await instanceEndpoints(w.crc, INSTANCE, {});

    expect(result.candidates.map((c) => c.kind)).toEqual(['internet', 'internet']);
    expect(result.notes).toEqual(['no VPC ID configured or known for this node: VPC endpoints not used']);
    expect(w.cr.calls).toEqual({ ListInstanceEndpoint: 1 });
  });

  it('uses only the VPC endpoint when the internet endpoint is disabled', async () => {
    const w = await endpointsWorld(instance({ internet: { enable: false, domains: [INTERNET_DOMAIN] } }));

    const result = await instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC });

    expect(result.candidates).toEqual([{ url: `https://${VPC_DOMAIN}`, kind: 'vpc', vpc: NODE_VPC }]);
    expect(result.registries).toEqual([INTERNET_DOMAIN, VPC_DOMAIN]);
    expect(result.notes).toEqual(['internet endpoint disabled']);
  });

  it('fails naming the instance and the reasons when no endpoint is usable', async () => {
    const w = await endpointsWorld(
      instance({
        internet: { enable: false, domains: [INTERNET_DOMAIN] },
        vpc: { domains: [VPC_DOMAIN], links: [{ vpcId: 'vpc-a', status: 'RUNNING' }] },
      }),
    );

    const err = await failure(instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC }), w.keys);

    expectShoalError(err);
    expect(err.message).toBe(
      `registry instance ${INSTANCE} has no endpoint this node can use: VPC ${NODE_VPC} is not linked to instance ${INSTANCE} (linked: vpc-a); internet endpoint disabled`,
    );
  });

  it('rejects malformed answers clearly', async () => {
    const w = await endpointsWorld({
      rawList: {
        Code: 'success',
        IsSuccess: true,
        RequestId: 'R-1',
        Endpoints: [{ EndpointType: 'internet', Enable: true, Status: 'RUNNING', Domains: 'oops' }],
      },
      rawVpc: { Code: 'success', IsSuccess: true, RequestId: 'R-2', Domains: [VPC_DOMAIN], LinkedVpcs: [{}] },
    });

    const list = await apiFailure(w.crc.listInstanceEndpoint(INSTANCE), w.keys);
    expect(list.message).toBe(
      `${w.cr.host} ListInstanceEndpoint: MalformedAnswer: unexpected answer for instance ${INSTANCE}: Endpoints[0].Domains is not an array (request R-1)`,
    );
    expect(list.retryable).toBe(false);

    const vpc = await apiFailure(w.crc.getInstanceVpcEndpoint(INSTANCE), w.keys);
    expect(vpc.message).toContain('LinkedVpcs[0].VpcId is missing (request R-2)');
  });

  it('passes on retryable API failures instead of guessing', async () => {
    const w = await endpointsWorld(instance());
    w.cr.failNext(1, 'Throttling.User');

    const err = await apiFailure(instanceEndpoints(w.crc, INSTANCE, { vpcId: NODE_VPC }), w.keys);

    expect(err.retryable).toBe(true);
  });
});
