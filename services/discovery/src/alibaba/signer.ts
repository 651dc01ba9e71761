/**
 * Alibaba Cloud RPC-style API calls, the scheme Container Registry and STS speak: every parameter travels
 * as a form field, signed with signature version 1.0 (HMAC-SHA1 over the sorted, percent-encoded
 * parameters). Requests are POSTed rather than sent as GET query strings so that security tokens never
 * appear in a URL, where proxies and access logs would keep them.
 */
import { createHmac, randomUUID } from 'node:crypto';

export interface Credentials {
  accessKeyId: string;
  accessKeySecret: string;
  /** Present for temporary credentials issued by STS or the instance metadata service. */
  securityToken?: string;
  /** When temporary credentials stop working, in milliseconds since the epoch. */
  expiration?: number;
}

export interface RpcOptions {
  timeoutMs: number;
  fetch?: typeof fetch;
  /** The clock that stamps requests (milliseconds since the epoch). */
  now?: () => number;
  /** Values to strip from error messages besides the request's own secret and token, e.g. an OIDC token. */
  redact?: readonly string[];
}

/** The only form in which an access key ID may appear in logs and errors. */
export function maskAccessKeyId(accessKeyId: string): string {
  return `${accessKeyId.slice(0, 4)}****`;
}

/**
 * RFC 3986 percent-encoding as the signature scheme defines it: only A-Z a-z 0-9 - _ . ~ stay as they are.
 * encodeURIComponent already writes spaces as %20 and leaves ~ alone; it only spares !'()* too many.
 */
export function percentEncode(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The parameters sorted by name (code-unit order, as Alibaba's SDKs sort) and joined as name=value pairs. */
export function canonicalQuery(params: Readonly<Record<string, string>>): string {
  return Object.keys(params)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    .map((key) => `${percentEncode(key)}=${percentEncode(params[key] ?? '')}`)
    .join('&');
}

/** Signature version 1.0: base64(HMAC-SHA1(secret + '&', METHOD & enc('/') & enc(canonical query))). */
export function rpcSignature(
  method: 'GET' | 'POST',
  params: Readonly<Record<string, string>>,
  accessKeySecret: string,
): string {
  const stringToSign = `${method}&${percentEncode('/')}&${percentEncode(canonicalQuery(params))}`;
  return createHmac('sha1', `${accessKeySecret}&`).update(stringToSign, 'utf8').digest('base64');
}

/** ISO 8601 in UTC without milliseconds, the only Timestamp form the APIs accept. */
export function rpcTimestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Codes given to failures that never produced an answer from the API. */
export const LocalErrorCodes = {
  timeout: 'Timeout',
  network: 'NetworkError',
  invalidResponse: 'InvalidResponse',
  malformedAnswer: 'MalformedAnswer',
} as const;

export interface AliyunApiErrorInit {
  /** host[:port] of the API endpoint. */
  host: string;
  action: string;
  /** Alibaba's error code (e.g. InvalidAccessKeyId.NotFound) or one of LocalErrorCodes. */
  code: string;
  /** What went wrong, already free of secrets. */
  detail: string;
  /** HTTP status of the answer; absent when no answer arrived. */
  status?: number;
  requestId?: string;
  /** Defaults to what the status and code imply. */
  retryable?: boolean;
  cause?: unknown;
}

/**
 * An Alibaba Cloud API call that failed, with the API's own code. It is not a ShoalError: its code is
 * Alibaba's, and callers decide which Shoal error it becomes (usually SHOAL_ERR_UPSTREAM).
 */
export class AliyunApiError extends Error {
  readonly host: string;
  readonly action: string;
  readonly code: string;
  readonly status: number | undefined;
  readonly requestId: string | undefined;
  /** True when the same call may succeed later: server errors, throttling, timeouts, lost connections. */
  readonly retryable: boolean;

  constructor(init: AliyunApiErrorInit) {
    const request = init.requestId === undefined ? '' : ` (request ${init.requestId})`;
    super(
      `${init.host} ${init.action}: ${init.code}: ${init.detail}${request}`,
      init.cause === undefined ? undefined : { cause: init.cause },
    );
    this.name = 'AliyunApiError';
    this.host = init.host;
    this.action = init.action;
    this.code = init.code;
    this.status = init.status;
    this.requestId = init.requestId;
    this.retryable = init.retryable ?? isRetryable(init.status, init.code);
  }
}

export function isAliyunApiError(err: unknown): err is AliyunApiError {
  return err instanceof AliyunApiError;
}

function isRetryable(status: number | undefined, code: string): boolean {
  if (status === undefined) return code === LocalErrorCodes.timeout || code === LocalErrorCodes.network;
  return (
    status >= 500 ||
    status === 429 ||
    code.startsWith('Throttling') ||
    code === 'ServiceUnavailable' ||
    code === 'InternalError'
  );
}

/**
 * Removes every form a secret may take in an API's message. SignatureDoesNotMatch answers quote the
 * server's string to sign, which holds the security token percent-encoded twice.
 */
function redact(text: string, secrets: readonly string[]): string {
  let result = text;
  for (const secret of secrets) {
    if (secret === '') continue;
    const once = percentEncode(secret);
    for (const form of [percentEncode(once), once, secret]) result = result.split(form).join('***');
  }
  return result;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function causeDetail(err: unknown): string {
  const cause = err instanceof Error ? err.cause : undefined;
  if (isRecord(cause) && typeof cause.code === 'string') return cause.code;
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

async function send(
  endpoint: string | URL,
  action: string,
  params: Readonly<Record<string, string>>,
  secrets: readonly string[],
  options: RpcOptions,
): Promise<Record<string, unknown>> {
  const url = new URL('/', endpoint);
  const host = url.host;
  const doFetch = options.fetch ?? fetch;
  const body = Object.entries(params)
    .map(([key, value]) => `${percentEncode(key)}=${percentEncode(value)}`)
    .join('&');

  const failed = (err: unknown): AliyunApiError => {
    const timedOut = err instanceof Error && err.name === 'TimeoutError';
    return new AliyunApiError({
      host,
      action,
      code: timedOut ? LocalErrorCodes.timeout : LocalErrorCodes.network,
      detail: timedOut
        ? `no answer within ${options.timeoutMs} ms`
        : `request failed: ${redact(causeDetail(err), secrets)}`,
      cause: err,
    });
  };

  let status: number;
  let text: string;
  try {
    const response = await doFetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded; charset=utf-8',
        accept: 'application/json',
      },
      body,
      redirect: 'error',
      signal: AbortSignal.timeout(options.timeoutMs),
    });
    status = response.status;
    text = await response.text();
  } catch (err) {
    throw failed(err);
  }

  let answer: unknown;
  try {
    answer = JSON.parse(text);
  } catch {
    answer = undefined;
  }
  if (!isRecord(answer)) {
    throw new AliyunApiError({
      host,
      action,
      code: LocalErrorCodes.invalidResponse,
      detail: `HTTP ${status} answer is not a JSON object`,
      status,
      // A proxy's HTML error page in front of a struggling API is worth another try; a 200 is not.
      retryable: status >= 500 || status === 429,
    });
  }
  const requestId = typeof answer.RequestId === 'string' ? answer.RequestId : undefined;
  if (status >= 400 || answer.IsSuccess === false) {
    const code = typeof answer.Code === 'string' && answer.Code !== '' ? answer.Code : `HTTP${status}`;
    const message = typeof answer.Message === 'string' ? answer.Message : 'no message';
    throw new AliyunApiError({
      host,
      action,
      code,
      detail: redact(message, secrets),
      status,
      ...(requestId === undefined ? {} : { requestId }),
    });
  }
  return answer;
}

/**
 * Calls a signed RPC action and returns its JSON answer. Failures, including the API's own error
 * answers, are thrown as AliyunApiError; no secret of the credentials appears in their messages.
 */
export async function rpcCall(
  endpoint: string | URL,
  action: string,
  version: string,
  params: Readonly<Record<string, string>>,
  credentials: Credentials,
  options: RpcOptions,
): Promise<Record<string, unknown>> {
  const now = options.now ?? Date.now;
  const signed: Record<string, string> = {
    ...params,
    Format: 'JSON',
    Version: version,
    AccessKeyId: credentials.accessKeyId,
    SignatureMethod: 'HMAC-SHA1',
    Timestamp: rpcTimestamp(now()),
    SignatureVersion: '1.0',
    SignatureNonce: randomUUID(),
    Action: action,
  };
  if (credentials.securityToken !== undefined) signed.SecurityToken = credentials.securityToken;
  signed.Signature = rpcSignature('POST', signed, credentials.accessKeySecret);
  const secrets = [credentials.accessKeySecret, credentials.securityToken ?? '', ...(options.redact ?? [])];
  return send(endpoint, action, signed, secrets, options);
}

/** Calls an RPC action that takes no signature, such as STS AssumeRoleWithOIDC. */
export async function anonymousRpcCall(
  endpoint: string | URL,
  action: string,
  version: string,
  params: Readonly<Record<string, string>>,
  options: RpcOptions,
): Promise<Record<string, unknown>> {
  const now = options.now ?? Date.now;
  const all: Record<string, string> = {
    ...params,
    Format: 'JSON',
    Version: version,
    Timestamp: rpcTimestamp(now()),
    Action: action,
  };
  return send(endpoint, action, all, options.redact ?? [], options);
}
