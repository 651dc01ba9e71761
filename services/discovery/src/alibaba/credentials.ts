/**
 * Where Alibaba Cloud credentials come from: a RAM user's access key, the ECS instance's RAM role (read
 * from the instance metadata service) or RRSA (a pod's projected service-account token exchanged at STS,
 * optionally chained into a role of another account). cached() sits in front of the temporary kinds.
 */
import { readFile } from 'node:fs/promises';
import { ShoalError } from '@shoal/mesh';
import { anonymousRpcCall, maskAccessKeyId, rpcCall, type Credentials } from './signer.js';

export type { Credentials } from './signer.js';

export interface CredentialProvider {
  /** Where the credentials come from, fit for logs: never a secret, the access key ID only masked. */
  describe(): string;
  get(): Promise<Credentials>;
}

export const DEFAULT_METADATA_URL = 'http://100.100.100.200';
export const STS_API_VERSION = '2015-04-01';
/** The session lengths the RRSA parameters allow, in seconds. */
export const RRSA_DURATION_RANGE = { min: 3600, max: 43200 } as const;

const METADATA_TOKEN_TTL_SECONDS = 21600;
const CREDENTIALS_PATH = '/latest/meta-data/ram/security-credentials/';

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function staticAccessKey(accessKeyId: string, accessKeySecret: string): CredentialProvider {
  if (accessKeyId.trim() === '' || accessKeySecret.trim() === '') {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      'access key: both the AccessKeyId and the AccessKeySecret are needed',
    );
  }
  const credentials: Credentials = { accessKeyId, accessKeySecret };
  return {
    describe: () => `access key ${maskAccessKeyId(accessKeyId)}`,
    get: async () => credentials,
  };
}

/**
 * Reads temporary credentials from an API answer (STS or instance metadata). Errors name the missing
 * field, never a value.
 */
function parseTemporaryCredentials(value: unknown, source: string): Credentials {
  if (!isRecord(value)) throw new ShoalError('SHOAL_ERR_UPSTREAM', `${source}: answer holds no credentials`);
  const fields = ['AccessKeyId', 'AccessKeySecret', 'SecurityToken', 'Expiration'] as const;
  for (const field of fields) {
    const v = value[field];
    if (typeof v !== 'string' || v === '') {
      throw new ShoalError('SHOAL_ERR_UPSTREAM', `${source}: answer has no ${field}`);
    }
  }
  const { AccessKeyId, AccessKeySecret, SecurityToken, Expiration } = value as Record<
    (typeof fields)[number],
    string
  >;
  const expiration = Date.parse(Expiration);
  if (Number.isNaN(expiration)) {
    throw new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `${source}: Expiration ${JSON.stringify(Expiration)} is not a time`,
    );
  }
  return {
    accessKeyId: AccessKeyId,
    accessKeySecret: AccessKeySecret,
    securityToken: SecurityToken,
    expiration,
  };
}

export interface MetadataOptions {
  /** The instance metadata service; only tests point it elsewhere. */
  metadataUrl?: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}

interface MetadataAnswer {
  status: number;
  text: string;
}

type MetadataReader = (path: string) => Promise<MetadataAnswer>;

/**
 * The ECS instance metadata service. Each session first asks for an IMDSv2 token (PUT /latest/api/token)
 * and sends it with its reads, because instances may be set to refuse anything else; a metadata service
 * that does not offer tokens (404, 403, 405) is read without one.
 */
function metadataClient(options: MetadataOptions): { session(): Promise<MetadataReader> } {
  const base = options.metadataUrl ?? DEFAULT_METADATA_URL;
  const doFetch = options.fetch ?? fetch;

  const request = async (path: string, init: RequestInit): Promise<MetadataAnswer> => {
    const url = new URL(path, base).href;
    try {
      const response = await doFetch(url, {
        ...init,
        redirect: 'error',
        signal: AbortSignal.timeout(options.timeoutMs),
      });
      return { status: response.status, text: await response.text() };
    } catch (err) {
      const detail =
        err instanceof Error && err.name === 'TimeoutError'
          ? `no answer within ${options.timeoutMs} ms`
          : 'no answer';
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `instance metadata ${url}: ${detail} (is this an Alibaba Cloud ECS instance?)`,
        { cause: err },
      );
    }
  };

  const sessionToken = async (): Promise<string | undefined> => {
    const answer = await request('/latest/api/token', {
      method: 'PUT',
      headers: { 'X-aliyun-ecs-metadata-token-ttl-seconds': String(METADATA_TOKEN_TTL_SECONDS) },
    });
    if (answer.status === 200 && answer.text.trim() !== '') return answer.text.trim();
    if (answer.status === 403 || answer.status === 404 || answer.status === 405) return undefined;
    throw new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `instance metadata ${new URL('/latest/api/token', base).href}: HTTP ${answer.status}`,
    );
  };

  return {
    async session() {
      const token = await sessionToken();
      const headers: Record<string, string> =
        token === undefined ? {} : { 'X-aliyun-ecs-metadata-token': token };
      return (path) => request(path, { method: 'GET', headers });
    },
  };
}

export interface EcsRamRoleOptions extends MetadataOptions {
  /** The RAM role attached to the instance; asked of the metadata service when absent. */
  roleName?: string;
}

export function ecsRamRole(options: EcsRamRoleOptions): CredentialProvider {
  const metadata = metadataClient(options);
  const base = options.metadataUrl ?? DEFAULT_METADATA_URL;
  const where = (path: string): string => `instance metadata ${new URL(path, base).href}`;

  const attachedRole = async (read: MetadataReader): Promise<string> => {
    const answer = await read(CREDENTIALS_PATH);
    const role = answer.status === 200 ? answer.text.split('\n')[0]?.trim() : undefined;
    if (role === undefined || role === '') {
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `${where(CREDENTIALS_PATH)}: no RAM role is attached to this ECS instance (HTTP ${answer.status})`,
      );
    }
    return role;
  };

  return {
    describe: () =>
      options.roleName === undefined
        ? 'ECS RAM role (instance metadata)'
        : `ECS RAM role ${options.roleName} (instance metadata)`,
    async get() {
      const read = await metadata.session();
      const role = options.roleName ?? (await attachedRole(read));
      const path = `${CREDENTIALS_PATH}${encodeURIComponent(role)}`;
      const source = `ECS RAM role ${role}: ${where(path)}`;
      const answer = await read(path);
      if (answer.status === 404) {
        throw new ShoalError('SHOAL_ERR_UPSTREAM', `${source}: no such role is attached to this instance`);
      }
      if (answer.status !== 200)
        throw new ShoalError('SHOAL_ERR_UPSTREAM', `${source}: HTTP ${answer.status}`);
      let body: unknown;
      try {
        body = JSON.parse(answer.text);
      } catch {
        throw new ShoalError('SHOAL_ERR_UPSTREAM', `${source}: answer is not JSON`);
      }
      // The body may hold credentials, so only its Code is ever quoted.
      const code = isRecord(body) ? body.Code : undefined;
      if (code !== 'Success') {
        throw new ShoalError(
          'SHOAL_ERR_UPSTREAM',
          `${source}: answered Code ${typeof code === 'string' ? code : 'missing'} instead of Success`,
        );
      }
      return parseTemporaryCredentials(body, source);
    },
  };
}

export interface NodeLocation {
  region: string;
  vpcId: string;
}

/** The region and VPC of the ECS instance this runs on, so that neither has to be configured there. */
export async function metadataInfo(options: MetadataOptions): Promise<NodeLocation> {
  const read = await metadataClient(options).session();
  const base = options.metadataUrl ?? DEFAULT_METADATA_URL;
  const value = async (path: string): Promise<string> => {
    const answer = await read(path);
    const text = answer.text.trim();
    if (answer.status !== 200 || text === '') {
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `instance metadata ${new URL(path, base).href}: HTTP ${answer.status}${text === '' ? ', empty' : ''}`,
      );
    }
    return text;
  };
  const [region, vpcId] = await Promise.all([
    value('/latest/meta-data/region-id'),
    value('/latest/meta-data/vpc-id'),
  ]);
  return { region, vpcId };
}

export interface RrsaOptions {
  /** The projected service-account token (ALIBABA_CLOUD_OIDC_TOKEN_FILE); re-read on every refresh. */
  tokenFile: string;
  oidcProviderArn: string;
  roleArn: string;
  /** A role to assume with the RRSA role's credentials, typically in the account that owns the registry. */
  assumeRoleArn?: string;
  sessionName?: string;
  /** Session length in seconds, from 3600 to 43200; 3600 by default. */
  durationSeconds?: number;
  /** Builds the default STS endpoint; required unless stsEndpoint is given. */
  region?: string;
  /** Use the VPC STS endpoint (sts-vpc.<region>.aliyuncs.com). */
  vpc?: boolean;
  stsEndpoint?: string;
  timeoutMs: number;
  fetch?: typeof fetch;
}

const ARN_PATTERN = /^acs:ram::[^:]+:[^:]+$/;
const SESSION_NAME_PATTERN = /^[A-Za-z0-9._@-]{2,64}$/;

function checkRrsaOptions(options: RrsaOptions): void {
  const bad = (text: string): ShoalError => new ShoalError('SHOAL_ERR_CONFIG', `RRSA: ${text}`);
  const duration = options.durationSeconds;
  if (
    duration !== undefined &&
    !(
      Number.isInteger(duration) &&
      duration >= RRSA_DURATION_RANGE.min &&
      duration <= RRSA_DURATION_RANGE.max
    )
  ) {
    throw bad(
      `durationSeconds ${duration} is out of range: must be a whole number of seconds from ${RRSA_DURATION_RANGE.min} to ${RRSA_DURATION_RANGE.max}`,
    );
  }
  const arns = [
    ['oidcProviderArn', options.oidcProviderArn],
    ['roleArn', options.roleArn],
    ['assumeRoleArn', options.assumeRoleArn],
  ] as const;
  for (const [name, arn] of arns) {
    if (arn !== undefined && !ARN_PATTERN.test(arn)) {
      throw bad(`${name} ${JSON.stringify(arn)} is not a RAM ARN like acs:ram::<account>:role/<name>`);
    }
  }
  if (options.sessionName !== undefined && !SESSION_NAME_PATTERN.test(options.sessionName)) {
    throw bad(
      `sessionName ${JSON.stringify(options.sessionName)} must be 2 to 64 letters, digits or . _ @ -`,
    );
  }
  if (options.tokenFile.trim() === '') throw bad('tokenFile is empty');
  if (options.stsEndpoint === undefined && (options.region === undefined || options.region === '')) {
    throw bad('either region or stsEndpoint is needed to reach STS');
  }
}

export function stsEndpointFor(region: string, vpc = false): string {
  return `https://${vpc ? 'sts-vpc' : 'sts'}.${region}.aliyuncs.com`;
}

export function rrsa(options: RrsaOptions): CredentialProvider {
  checkRrsaOptions(options);
  const endpoint = options.stsEndpoint ?? stsEndpointFor(options.region ?? '', options.vpc);
  const sessionName = options.sessionName ?? 'shoal-discovery';
  const durationSeconds = String(options.durationSeconds ?? RRSA_DURATION_RANGE.min);
  const rpcOptions = { timeoutMs: options.timeoutMs, ...(options.fetch ? { fetch: options.fetch } : {}) };

  // The kubelet rotates the projected token, so it is read afresh for every exchange.
  const readToken = async (): Promise<string> => {
    let token: string;
    try {
      token = (await readFile(options.tokenFile, 'utf8')).trim();
    } catch (err) {
      const code = isRecord(err) && typeof err.code === 'string' ? err.code : message(err);
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        `RRSA token file ${options.tokenFile} cannot be read: ${code}`,
        {
          cause: err,
        },
      );
    }
    if (token === '')
      throw new ShoalError('SHOAL_ERR_CONFIG', `RRSA token file ${options.tokenFile} is empty`);
    return token;
  };

  return {
    describe: () =>
      options.assumeRoleArn === undefined
        ? `RRSA role ${options.roleArn}`
        : `RRSA role ${options.roleArn} then role ${options.assumeRoleArn}`,
    async get() {
      const token = await readToken();
      const oidcAnswer = await anonymousRpcCall(
        endpoint,
        'AssumeRoleWithOIDC',
        STS_API_VERSION,
        {
          OIDCProviderArn: options.oidcProviderArn,
          RoleArn: options.roleArn,
          OIDCToken: token,
          RoleSessionName: sessionName,
          DurationSeconds: durationSeconds,
        },
        { ...rpcOptions, redact: [token] },
      );
      const roleCredentials = parseTemporaryCredentials(
        oidcAnswer.Credentials,
        `STS AssumeRoleWithOIDC ${options.roleArn}`,
      );
      if (options.assumeRoleArn === undefined) return roleCredentials;

      const chainedAnswer = await rpcCall(
        endpoint,
        'AssumeRole',
        STS_API_VERSION,
        { RoleArn: options.assumeRoleArn, RoleSessionName: sessionName, DurationSeconds: durationSeconds },
        roleCredentials,
        rpcOptions,
      );
      return parseTemporaryCredentials(chainedAnswer.Credentials, `STS AssumeRole ${options.assumeRoleArn}`);
    },
  };
}

export interface CachedOptions {
  /** Fetch new credentials when fewer than this many milliseconds remain; 5 minutes by default. */
  refreshBeforeMs?: number;
  now?: () => number;
  /** Told once per run of failed refreshes that the current credentials are still in use. */
  onError?: (error: Error) => void;
}

/**
 * Holds credentials until they are about to expire. Callers arriving during a refresh share it; a refresh
 * that fails while the held credentials are still valid leaves them in use, and only expired credentials
 * make get() fail.
 */
export function cached(provider: CredentialProvider, options: CachedOptions = {}): CredentialProvider {
  const refreshBeforeMs = options.refreshBeforeMs ?? 5 * 60_000;
  const now = options.now ?? Date.now;
  let current: Credentials | undefined;
  let refreshing: Promise<Credentials> | undefined;
  let reported = false;

  const fresh = (credentials: Credentials): boolean =>
    credentials.expiration === undefined || credentials.expiration - now() > refreshBeforeMs;

  const refresh = (): Promise<Credentials> => {
    refreshing ??= Promise.resolve()
      .then(() => provider.get())
      .then((credentials) => {
        current = credentials;
        reported = false;
        return credentials;
      })
      .finally(() => {
        refreshing = undefined;
      });
    return refreshing;
  };

  return {
    describe: () => provider.describe(),
    async get() {
      if (current !== undefined && fresh(current)) return current;
      const had = current !== undefined;
      try {
        return await refresh();
      } catch (err) {
        const held = current;
        if (held?.expiration !== undefined && held.expiration > now()) {
          if (!reported) {
            reported = true;
            options.onError?.(
              new ShoalError(
                'SHOAL_ERR_UPSTREAM',
                `credentials from ${provider.describe()}: could not refresh, using the current ones until ${new Date(held.expiration).toISOString()}: ${message(err)}`,
                { cause: err },
              ),
            );
          }
          return held;
        }
        throw new ShoalError(
          'SHOAL_ERR_UPSTREAM',
          `credentials from ${provider.describe()}: could not ${had ? 'refresh' : 'get'}: ${message(err)}`,
          { cause: err },
        );
      }
    },
  };
}
