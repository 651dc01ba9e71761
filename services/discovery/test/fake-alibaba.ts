/**
 * Fakes of the Alibaba Cloud services the registry-instance endpoint provider talks to, served over real
 * HTTP on 127.0.0.1: the ECS instance metadata service, STS and the Container Registry API. Signatures are
 * checked with Alibaba's own @alicloud/openapi-util rather than with the code under test, so a mistake
 * shared by signer and checker cannot hide. Switches on each fake make it fail the way the real service
 * does.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import openApiUtilModule from '@alicloud/openapi-util';

type OpenApiUtil = typeof openApiUtilModule.default;

// Node's own loader hands an ES module the CommonJS module.exports ({ default: Client }), while vitest
// unwraps the default itself; either way the class is what is needed.
const openApiUtil: OpenApiUtil =
  'getRPCSignature' in openApiUtilModule
    ? (openApiUtilModule as unknown as OpenApiUtil)
    : openApiUtilModule.default;

/** How far a request's Timestamp may be from the server's clock, as the real APIs allow. */
export const TIMESTAMP_SKEW_MS = 15 * 60_000;

// ---------------------------------------------------------------------------------------------------------
// Keys

export interface FakeKey {
  accessKeyId: string;
  accessKeySecret: string;
  /** Who the key acts for: 'user:<name>' or 'role:<role name or ARN>'. */
  principal: string;
  securityToken?: string;
  /** ms since the epoch, whole seconds like the APIs' Expiration fields. */
  expiration?: number;
}

export interface FakeKeyStore {
  /** The servers' clock. */
  now: () => number;
  /** A long-lived RAM user access key. */
  addAccessKey(principal: string): FakeKey;
  /** Temporary credentials, as STS and the metadata service hand out. */
  issue(principal: string, lifetimeMs: number): Required<FakeKey>;
  find(accessKeyId: string): FakeKey | undefined;
  /** Records a secret that is not a key (an OIDC token) so that leak checks look for it too. */
  remember(secret: string): void;
  /** Every secret and token ever handed out, to assert that none leaks into an error message. */
  secrets(): string[];
}

/** Base64 with + / = forced in, so that percent-encoding changes it and redaction must cope. */
function secretText(bytes: number): string {
  return `${randomBytes(bytes).toString('base64')}+/=`;
}

export function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function fakeKeyStore(now: () => number = Date.now): FakeKeyStore {
  const keys = new Map<string, FakeKey>();
  const extra: string[] = [];
  return {
    now,
    addAccessKey(principal) {
      const key: FakeKey = {
        accessKeyId: `LTAI${randomBytes(10).toString('hex')}`,
        accessKeySecret: secretText(22),
        principal,
      };
      keys.set(key.accessKeyId, key);
      return key;
    },
    issue(principal, lifetimeMs) {
      const key: Required<FakeKey> = {
        accessKeyId: `STS.${randomBytes(12).toString('hex')}`,
        accessKeySecret: secretText(22),
        principal,
        securityToken: `CAIS${secretText(60)}`,
        expiration: Math.floor((now() + lifetimeMs) / 1000) * 1000,
      };
      keys.set(key.accessKeyId, key);
      return key;
    },
    find: (accessKeyId) => keys.get(accessKeyId),
    remember(secret) {
      extra.push(secret);
    },
    secrets() {
      const all = [...extra];
      for (const key of keys.values()) {
        all.push(key.accessKeySecret);
        if (key.securityToken !== undefined) all.push(key.securityToken);
      }
      return all;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// HTTP plumbing

interface Reply {
  status: number;
  json?: unknown;
  text?: string;
}

interface FakeRequest {
  method: string;
  path: string;
  /** The raw query string, without '?'. */
  query: string;
  headers: IncomingMessage['headers'];
  body: string;
  /** Query and form-body parameters together. */
  params: Record<string, string>;
}

interface Listening {
  url: string;
  host: string;
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function listen(
  handle: (request: FakeRequest) => Reply | Promise<Reply>,
  delayMs: () => number = () => 0,
): Promise<Listening> {
  const timers = new Set<NodeJS.Timeout>();
  const respond = (res: ServerResponse, reply: Reply): void => {
    const body = reply.json === undefined ? (reply.text ?? '') : JSON.stringify(reply.json);
    const type = reply.json === undefined ? 'text/plain' : 'application/json;charset=utf-8';
    res.writeHead(reply.status, { 'content-type': type }).end(body);
  };
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://fake');
      const body = await readBody(req);
      const params: Record<string, string> = Object.fromEntries(url.searchParams);
      if ((req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
        Object.assign(params, Object.fromEntries(new URLSearchParams(body)));
      }
      const reply = await handle({
        method: req.method ?? 'GET',
        path: url.pathname,
        query: url.search.slice(1),
        headers: req.headers,
        body,
        params,
      });
      const delay = delayMs();
      if (delay <= 0) return respond(res, reply);
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (!res.destroyed) respond(res, reply);
      }, delay);
      timers.add(timer);
    })().catch((err: unknown) => {
      if (!res.headersSent) respond(res, { status: 500, text: String(err) });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer);
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function apiError(status: number, code: string, message: string): Reply {
  return {
    status,
    json: { RequestId: randomUUID().toUpperCase(), HostId: 'fake', Code: code, Message: message },
  };
}

/** Failures the fakes can be told to answer the next calls with, as the real APIs word them. */
export const INJECTABLE_FAILURES = {
  ServiceUnavailable: {
    status: 503,
    message: 'The request has failed due to a temporary failure of the server.',
  },
  'Throttling.User': { status: 400, message: 'Request was denied due to user flow control.' },
  InternalError: { status: 500, message: 'The request processing has failed due to some unknown error.' },
} as const;
export type InjectableFailure = keyof typeof INJECTABLE_FAILURES;

function failureQueue(): {
  failNext(count: number, code: InjectableFailure): void;
  take(): Reply | undefined;
} {
  const queue: InjectableFailure[] = [];
  return {
    failNext(count, code) {
      for (let i = 0; i < count; i++) queue.push(code);
    },
    take() {
      const code = queue.shift();
      if (code === undefined) return undefined;
      const failure = INJECTABLE_FAILURES[code];
      return apiError(failure.status, code, failure.message);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Signature checking, independent of the signer under test

/** The server's own string to sign, quoted in SignatureDoesNotMatch answers as the real APIs do. */
function serverStringToSign(method: string, params: Record<string, string>): string {
  const encode = (s: string): string =>
    encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const canonical = Object.keys(params)
    .sort()
    .map((k) => `${encode(k)}=${encode(params[k] ?? '')}`)
    .join('&');
  return `${method}&${encode('/')}&${encode(canonical)}`;
}

type Verdict = { ok: true; key: FakeKey } | { ok: false; reply: Reply };

const SIGNED_PARAMS = [
  'Action',
  'Version',
  'Format',
  'AccessKeyId',
  'SignatureMethod',
  'SignatureVersion',
  'SignatureNonce',
  'Timestamp',
  'Signature',
] as const;

function verifySigned(keys: FakeKeyStore, request: FakeRequest, nonces: Set<string>): Verdict {
  const params = request.params;
  const fail = (status: number, code: string, message: string): Verdict => ({
    ok: false,
    reply: apiError(status, code, message),
  });
  for (const name of SIGNED_PARAMS) {
    if (params[name] === undefined || params[name] === '') {
      return fail(400, `Missing${name}`, `${name} is mandatory for this action.`);
    }
  }
  if (params.SignatureMethod !== 'HMAC-SHA1' || params.SignatureVersion !== '1.0') {
    return fail(400, 'InvalidSignatureMethod', 'Specified signature method or version is not supported.');
  }
  const timestamp = params.Timestamp ?? '';
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/.test(timestamp)) {
    return fail(400, 'InvalidTimeStamp.Format', 'Specified time stamp or date value is not well formatted.');
  }
  if (Math.abs(Date.parse(timestamp) - keys.now()) > TIMESTAMP_SKEW_MS) {
    return fail(400, 'InvalidTimeStamp.Expired', 'Specified time stamp or date value is expired.');
  }
  const key = keys.find(params.AccessKeyId ?? '');
  if (key === undefined)
    return fail(404, 'InvalidAccessKeyId.NotFound', 'Specified access key is not found.');
  if (key.securityToken !== undefined) {
    if (params.SecurityToken === undefined) {
      return fail(400, 'MissingSecurityToken', 'SecurityToken is mandatory for this access key.');
    }
    if (params.SecurityToken !== key.securityToken) {
      return fail(
        400,
        'InvalidSecurityToken.MismatchWithAccessKey',
        'Specified SecurityToken mismatch with the AccessKey.',
      );
    }
    if ((key.expiration ?? 0) <= keys.now()) {
      return fail(400, 'InvalidSecurityToken.Expired', 'Specified SecurityToken is expired.');
    }
  } else if (params.SecurityToken !== undefined) {
    return fail(400, 'InvalidSecurityToken.Malformed', 'Specified SecurityToken is malformed.');
  }
  const { Signature: signature, ...signed } = params;
  const expected = openApiUtil.getRPCSignature(signed, request.method, key.accessKeySecret);
  if (signature !== expected) {
    return fail(
      400,
      'SignatureDoesNotMatch',
      `Specified signature is not matched with our calculation. server string to sign is:${serverStringToSign(request.method, signed)}`,
    );
  }
  const nonce = params.SignatureNonce ?? '';
  if (nonces.has(nonce))
    return fail(400, 'SignatureNonceUsed', 'Specified signature nonce was used already.');
  nonces.add(nonce);
  return { ok: true, key };
}

function count(calls: Record<string, number>, name: string): void {
  calls[name] = (calls[name] ?? 0) + 1;
}

// ---------------------------------------------------------------------------------------------------------
// ECS instance metadata service

export interface FakeMetadataOptions {
  keys: FakeKeyStore;
  roleName?: string;
  regionId?: string;
  vpcId?: string;
  lifetimeMs?: number;
}

export interface FakeMetadata {
  url: string;
  /**
   * optional: IMDSv2 tokens are offered, plain reads also work. required: reads without a valid token get
   * 403 (hardened mode). unsupported: the token PUT answers 404, as before IMDSv2.
   */
  tokens: 'optional' | 'required' | 'unsupported';
  /** The attached role; undefined when none is attached. */
  roleName: string | undefined;
  /** The Code of the credentials answer; anything but Success is a failure. */
  credentialsCode: string;
  /** When set, the credentials document answers with this HTTP status. */
  credentialsStatus: number | undefined;
  lifetimeMs: number;
  regionId: string;
  vpcId: string;
  calls: Record<string, number>;
  /** Whether each read after the token PUT carried a token. */
  readsWithToken: boolean[];
  lastIssued: FakeKey | undefined;
  close(): Promise<void>;
}

export async function startFakeMetadata(options: FakeMetadataOptions): Promise<FakeMetadata> {
  const tokens = new Set<string>();
  const state: Omit<FakeMetadata, 'url' | 'close'> = {
    tokens: 'optional',
    roleName: options.roleName ?? 'shoal-node-role',
    credentialsCode: 'Success',
    credentialsStatus: undefined,
    lifetimeMs: options.lifetimeMs ?? 6 * 3600_000,
    regionId: options.regionId ?? 'cn-hangzhou',
    vpcId: options.vpcId ?? 'vpc-node',
    calls: {},
    readsWithToken: [],
    lastIssued: undefined,
  };
  const credentialsPrefix = '/latest/meta-data/ram/security-credentials/';

  const handle = (request: FakeRequest): Reply => {
    if (request.path === '/latest/api/token') {
      count(state.calls, 'token');
      if (state.tokens === 'unsupported' || request.method !== 'PUT')
        return { status: 404, text: 'Not Found' };
      const ttl = Number(request.headers['x-aliyun-ecs-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) return { status: 400, text: 'Bad Request' };
      const token = randomBytes(24).toString('base64url');
      tokens.add(token);
      options.keys.remember(token);
      return { status: 200, text: token };
    }
    if (request.method !== 'GET') return { status: 405, text: 'Method Not Allowed' };
    const presented = request.headers['x-aliyun-ecs-metadata-token'];
    state.readsWithToken.push(presented !== undefined);
    if (presented !== undefined && (typeof presented !== 'string' || !tokens.has(presented))) {
      return { status: 401, text: 'Unauthorized' };
    }
    if (presented === undefined && state.tokens === 'required') return { status: 403, text: 'Forbidden' };

    if (request.path === '/latest/meta-data/region-id') {
      count(state.calls, 'region-id');
      return { status: 200, text: state.regionId };
    }
    if (request.path === '/latest/meta-data/vpc-id') {
      count(state.calls, 'vpc-id');
      return { status: 200, text: state.vpcId };
    }
    if (request.path === credentialsPrefix) {
      count(state.calls, 'roles');
      return state.roleName === undefined
        ? { status: 404, text: 'Not Found' }
        : { status: 200, text: state.roleName };
    }
    if (request.path.startsWith(credentialsPrefix)) {
      count(state.calls, 'credentials');
      const role = decodeURIComponent(request.path.slice(credentialsPrefix.length));
      if (state.credentialsStatus !== undefined) return { status: state.credentialsStatus, text: 'error' };
      if (role !== state.roleName) return { status: 404, text: 'Not Found' };
      const updated = isoSeconds(options.keys.now());
      if (state.credentialsCode !== 'Success') {
        return { status: 200, json: { Code: state.credentialsCode, LastUpdated: updated } };
      }
      const key = options.keys.issue(`role:${role}`, state.lifetimeMs);
      state.lastIssued = key;
      return {
        status: 200,
        json: {
          AccessKeyId: key.accessKeyId,
          AccessKeySecret: key.accessKeySecret,
          Expiration: isoSeconds(key.expiration),
          SecurityToken: key.securityToken,
          LastUpdated: updated,
          Code: 'Success',
        },
      };
    }
    return { status: 404, text: 'Not Found' };
  };

  const listening = await listen(handle);
  return Object.assign(state, { url: listening.url, close: listening.close });
}

// ---------------------------------------------------------------------------------------------------------
// STS

export interface FakeStsOptions {
  keys: FakeKeyStore;
  oidcProviderArn: string;
  /** The RRSA role the OIDC token may assume. */
  roleArn: string;
  /** The OIDC token currently valid. */
  oidcToken: string;
  /** A role the RRSA role may assume in turn (cross-account). */
  chainedRoleArn?: string;
}

export interface FakeSts {
  url: string;
  host: string;
  /** The OIDC token currently valid; the previous ones answer AuthenticationFail.OIDCToken.Expired. */
  oidcToken: string;
  rotate(next: string): void;
  /** Overrides DurationSeconds for the lifetime of issued credentials. */
  lifetimeMs: number | undefined;
  calls: Record<string, number>;
  lastParams: Record<string, string> | undefined;
  failNext(count: number, code: InjectableFailure): void;
  close(): Promise<void>;
}

export async function startFakeSts(options: FakeStsOptions): Promise<FakeSts> {
  const { keys } = options;
  const retired = new Set<string>();
  const nonces = new Set<string>();
  const failures = failureQueue();
  keys.remember(options.oidcToken);

  const credentialsAnswer = (roleArn: string, session: string, durationSeconds: number): Reply => {
    const lifetime = sts.lifetimeMs ?? durationSeconds * 1000;
    const key = keys.issue(`role:${roleArn}`, lifetime);
    return {
      status: 200,
      json: {
        RequestId: randomUUID().toUpperCase(),
        AssumedRoleUser: { Arn: `${roleArn}/${session}`, AssumedRoleId: `3000:${session}` },
        Credentials: {
          AccessKeyId: key.accessKeyId,
          AccessKeySecret: key.accessKeySecret,
          SecurityToken: key.securityToken,
          Expiration: isoSeconds(key.expiration),
        },
      },
    };
  };

  const duration = (params: Record<string, string>): number | Reply => {
    const value = Number(params.DurationSeconds ?? '3600');
    if (!Number.isInteger(value) || value < 900 || value > 43200) {
      return apiError(400, 'InvalidParameter.DurationSeconds', 'The parameter DurationSeconds is invalid.');
    }
    return value;
  };

  const handle = (request: FakeRequest): Reply => {
    const params = request.params;
    sts.lastParams = params;
    const action = params.Action ?? '';
    count(sts.calls, action);
    const injected = failures.take();
    if (injected !== undefined) return injected;
    if (params.Version !== '2015-04-01') {
      return apiError(400, 'InvalidVersion', 'Specified parameter Version is not valid.');
    }
    if (action === 'AssumeRoleWithOIDC') {
      for (const name of ['OIDCProviderArn', 'RoleArn', 'OIDCToken', 'RoleSessionName', 'Timestamp']) {
        if ((params[name] ?? '') === '') return apiError(400, `Missing${name}`, `${name} is mandatory.`);
      }
      if (params.OIDCProviderArn !== options.oidcProviderArn) {
        return apiError(404, 'EntityNotExist.OIDCProvider', 'The specified OIDC provider does not exist.');
      }
      if (params.RoleArn !== options.roleArn) {
        return apiError(404, 'EntityNotExist.Role', 'The specified role does not exist.');
      }
      const token = params.OIDCToken ?? '';
      if (token !== sts.oidcToken) {
        // The fake quotes the rejected token so that tests prove the client keeps it out of its errors.
        return retired.has(token)
          ? apiError(400, 'AuthenticationFail.OIDCToken.Expired', `The OIDC token ${token} has expired.`)
          : apiError(400, 'AuthenticationFail.OIDCToken.Invalid', `The OIDC token ${token} is invalid.`);
      }
      const seconds = duration(params);
      if (typeof seconds !== 'number') return seconds;
      return credentialsAnswer(options.roleArn, params.RoleSessionName ?? '', seconds);
    }
    if (action === 'AssumeRole') {
      const verdict = verifySigned(keys, request, nonces);
      if (!verdict.ok) return verdict.reply;
      if (verdict.key.principal !== `role:${options.roleArn}`) {
        return apiError(403, 'NoPermission', 'You are not authorized to do this action.');
      }
      if (options.chainedRoleArn === undefined || params.RoleArn !== options.chainedRoleArn) {
        return apiError(404, 'EntityNotExist.Role', 'The specified role does not exist.');
      }
      const seconds = duration(params);
      if (typeof seconds !== 'number') return seconds;
      return credentialsAnswer(options.chainedRoleArn, params.RoleSessionName ?? '', seconds);
    }
    return apiError(404, 'InvalidAction.NotFound', `Specified api is not found.`);
  };

  const listening = await listen(handle);
  const sts: FakeSts = {
    url: listening.url,
    host: listening.host,
    oidcToken: options.oidcToken,
    rotate(next) {
      retired.add(sts.oidcToken);
      sts.oidcToken = next;
      keys.remember(next);
    },
    lifetimeMs: undefined,
    calls: {},
    lastParams: undefined,
    failNext: failures.failNext,
    close: listening.close,
  };
  return sts;
}

// ---------------------------------------------------------------------------------------------------------
// Container Registry

export interface FakeInstance {
  internet?: { enable: boolean; status?: string; domains: string[]; userDomains?: string[] };
  vpc?: {
    enable?: boolean;
    domains: string[];
    userDomains?: string[];
    links: { vpcId: string; status: string; issue?: string }[];
  };
  /** Sent instead of the ListInstanceEndpoint answer built from the fields above. */
  rawList?: Record<string, unknown>;
  /** Sent instead of the GetInstanceVpcEndpoint answer built from the fields above. */
  rawVpc?: Record<string, unknown>;
}

export interface FakeCrOptions {
  keys: FakeKeyStore;
  instances?: Record<string, FakeInstance>;
}

export interface FakeCr {
  url: string;
  host: string;
  instances: Record<string, FakeInstance>;
  /** When set, only keys acting for these principals may call; others get Forbidden.RAM. */
  allowedPrincipals: string[] | undefined;
  /** Holds every answer back this long. */
  delayMs: number;
  calls: Record<string, number>;
  lastRequest: FakeRequest | undefined;
  /** The principal of the last key accepted. */
  lastPrincipal: string | undefined;
  failNext(count: number, code: InjectableFailure): void;
  close(): Promise<void>;
}

function domainsOf(system: string[], user: string[] = []): { Domain: string; Type: string }[] {
  return [
    ...system.map((Domain) => ({ Domain, Type: 'SYSTEM' })),
    ...user.map((Domain) => ({ Domain, Type: 'USER' })),
  ];
}

function listAnswer(instance: FakeInstance): Record<string, unknown> {
  const endpoints: Record<string, unknown>[] = [];
  if (instance.internet) {
    endpoints.push({
      EndpointType: 'internet',
      Enable: instance.internet.enable,
      Status: instance.internet.status ?? 'RUNNING',
      Domains: domainsOf(instance.internet.domains, instance.internet.userDomains),
      LinkedVpcs: [],
      AclEnable: false,
      AclEntries: [],
    });
  }
  if (instance.vpc) {
    endpoints.push({
      EndpointType: 'vpc',
      Enable: instance.vpc.enable ?? true,
      Status: 'RUNNING',
      Domains: domainsOf(instance.vpc.domains, instance.vpc.userDomains),
      LinkedVpcs: instance.vpc.links.map((l) => ({ VpcId: l.vpcId })),
      AclEnable: false,
      AclEntries: [],
    });
  }
  return { Code: 'success', IsSuccess: true, RequestId: randomUUID().toUpperCase(), Endpoints: endpoints };
}

function vpcAnswer(instance: FakeInstance): Record<string, unknown> {
  const vpc = instance.vpc;
  return {
    Code: 'success',
    IsSuccess: true,
    RequestId: randomUUID().toUpperCase(),
    Enable: vpc !== undefined,
    Domains: vpc === undefined ? [] : [...vpc.domains, ...(vpc.userDomains ?? [])],
    LinkedVpcs: (vpc?.links ?? []).map((l, i) => ({
      VpcId: l.vpcId,
      VswitchId: `vsw-${i}`,
      Ip: `192.168.0.${10 + i}`,
      Status: l.status,
      DefaultAccess: i === 0,
      ...(l.issue === undefined ? {} : { Issue: l.issue }),
    })),
  };
}

export async function startFakeCr(options: FakeCrOptions): Promise<FakeCr> {
  const nonces = new Set<string>();
  const failures = failureQueue();

  const handle = (request: FakeRequest): Reply => {
    const params = request.params;
    cr.lastRequest = request;
    const action = params.Action ?? '';
    count(cr.calls, action);
    const injected = failures.take();
    if (injected !== undefined) return injected;
    const verdict = verifySigned(options.keys, request, nonces);
    if (!verdict.ok) return verdict.reply;
    cr.lastPrincipal = verdict.key.principal;
    if (cr.allowedPrincipals !== undefined && !cr.allowedPrincipals.includes(verdict.key.principal)) {
      return apiError(403, 'Forbidden.RAM', 'User not authorized to operate on the specified resource.');
    }
    if (params.Version !== '2018-12-01') {
      return apiError(400, 'InvalidVersion', 'Specified parameter Version is not valid.');
    }
    if (action !== 'ListInstanceEndpoint' && action !== 'GetInstanceVpcEndpoint') {
      return apiError(404, 'InvalidAction.NotFound', 'Specified api is not found.');
    }
    if (params.ModuleName !== 'Registry') {
      return apiError(400, 'PARAM_INVALID', 'ModuleName is invalid.');
    }
    const instance = cr.instances[params.InstanceId ?? ''];
    if (instance === undefined) {
      return {
        status: 200,
        json: {
          Code: 'INSTANCE_NOT_EXIST',
          IsSuccess: false,
          Message: 'instance not exist',
          RequestId: randomUUID().toUpperCase(),
        },
      };
    }
    if (action === 'ListInstanceEndpoint')
      return { status: 200, json: instance.rawList ?? listAnswer(instance) };
    return { status: 200, json: instance.rawVpc ?? vpcAnswer(instance) };
  };

  const listening = await listen(handle, () => cr.delayMs);
  const cr: FakeCr = {
    url: listening.url,
    host: listening.host,
    instances: { ...options.instances },
    allowedPrincipals: undefined,
    delayMs: 0,
    calls: {},
    lastRequest: undefined,
    lastPrincipal: undefined,
    failNext: failures.failNext,
    close: listening.close,
  };
  return cr;
}
