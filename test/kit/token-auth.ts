import { createPrivateKey, randomUUID, sign, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { findCommand, runChecked } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** One account of the token server. */
export interface TokenUser {
  password: string;
  /** Repositories this user may act on, by exact name; '*' matches every repository. ['*'] unless given. */
  repositories?: readonly string[];
  /** Actions this user may be granted on those repositories; ['pull'] unless given. */
  actions?: readonly string[];
}

export interface StartTokenServerOptions {
  /** User name to account; a plain string is a password with the defaults of TokenUser. */
  users: Record<string, TokenUser | string>;
  /** The `service` the registry names in its challenge and expects as audience; "shoal-test-registry" unless given. */
  service?: string;
  /** The `iss` claim the registry is configured to trust; "shoal-test-token-issuer" unless given. */
  issuer?: string;
  /** Lifetime of issued tokens; 300 s unless given. */
  ttlSeconds?: number;
  /** Signing algorithm; ES256 (P-256) unless given, RS256 uses a 2048-bit RSA key. */
  algorithm?: 'ES256' | 'RS256';
  /** Label for errors; "token-server" unless given. */
  name?: string;
}

/** One scope a token grants, as in the registry token specification. */
export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

/** One request that reached the token server; passwords and tokens are never recorded here. */
export interface TokenRequestRecord {
  method: string;
  /** The scopes asked for, as sent (for example "repository:team/app:pull"). */
  scopes: string[];
  service: string | undefined;
  /** The authenticated user; undefined for anonymous requests and for failed logins. */
  user: string | undefined;
  /** "issued" (possibly with empty access), "denied" (bad credentials), or "rejected" (bad request). */
  outcome: 'issued' | 'denied' | 'rejected';
  status: number;
  /** What the issued token grants; empty when nothing was issued or nothing was allowed. */
  access: TokenAccess[];
}

export interface TokenServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** The token endpoint to configure as the registry's realm. */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM file with the self-signed certificate that signs tokens, for the registry's rootcertbundle. */
  readonly rootCertBundlePath: string;
  readonly dir: string;
  /** Every token string handed out so far, so tests can make sure none of them leaks into logs. */
  issuedTokens(): string[];
  /** Every request seen so far, oldest first. */
  requests(): TokenRequestRecord[];
  /** Signs a token directly, bypassing the HTTP endpoint, for tests that need a specific grant. */
  issue(subject: string, access: readonly TokenAccess[]): string;
  /** Stops the HTTP server and removes the key material. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts a minimal Docker registry token server (the "bearer token dance" of the distribution spec)
 * on a free loopback port. A fresh key and self-signed X.509 certificate are made with the openssl
 * CLI at start, so no key material is shared between runs. `GET /token?service=…&scope=…` checks
 * Basic credentials against the user table and answers with a JWT whose `x5c` header carries the
 * certificate, which docker-registry verifies against its rootcertbundle. Anonymous requests get a
 * token without access, as Docker Hub does; wrong credentials get 401. POST (the OAuth2 form flow)
 * answers 405 so clients such as containerd fall back to the GET flow this server implements.
 */
export async function startTokenServer(options: StartTokenServerOptions): Promise<TokenServer> {
  const name = options.name ?? 'token-server';
  const service = options.service ?? 'shoal-test-registry';
  const issuer = options.issuer ?? 'shoal-test-token-issuer';
  const ttlSeconds = options.ttlSeconds ?? 300;
  const algorithm = options.algorithm ?? 'ES256';
  const users = new Map<string, Required<TokenUser>>();
  for (const [user, entry] of Object.entries(options.users)) {
    const account = typeof entry === 'string' ? { password: entry } : entry;
    users.set(user, {
      password: account.password,
      repositories: account.repositories ?? ['*'],
      actions: account.actions ?? ['pull'],
    });
  }
  if (findCommand('openssl') === undefined) {
    throw new Error(`${name}: the openssl CLI is needed to make the signing certificate and is not on PATH`);
  }

  const dir = await makeTempDir('token');
  let server: Server | undefined;
  try {
    const keyFile = join(dir, 'signing-key.pem');
    const certFile = join(dir, 'signing-cert.pem');
    const keyArgs =
      algorithm === 'ES256'
        ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
        : ['-newkey', 'rsa:2048'];
    await runChecked('openssl', [
      'req',
      '-x509',
      ...keyArgs,
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      `/CN=${issuer}`,
    ]);
    const key = createPrivateKey(await readFile(keyFile));
    const certPem = await readFile(certFile, 'utf8');
    // x5c holds standard (not URL-safe) base64 of the DER certificate, which is the PEM body unwrapped.
    const certDerBase64 = certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');

    const issued: string[] = [];
    const log: TokenRequestRecord[] = [];
    const issue = (subject: string, access: readonly TokenAccess[]): string => {
      const token = signJwt(key, algorithm, certDerBase64, {
        iss: issuer,
        sub: subject,
        aud: service,
        ttlSeconds,
        access,
      });
      issued.push(token);
      return token;
    };

    const activeServer = createServer((req, res) => {
      handleTokenRequest(req, res, { service, ttlSeconds, users, issue, log });
    });
    server = activeServer;
    await new Promise<void>((resolve, reject) => {
      activeServer.once('error', reject);
      activeServer.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
    });
    const url = `http://127.0.0.1:${(activeServer.address() as AddressInfo).port}`;
    let stopped = false;
    return {
      url,
      realm: `${url}/token`,
      service,
      issuer,
      rootCertBundlePath: certFile,
      dir,
      issuedTokens: () => [...issued],
      requests: () =>
        log.map((r) => ({ ...r, scopes: [...r.scopes], access: r.access.map((a) => ({ ...a })) })),
      issue,
      async stop() {
        if (stopped) return;
        stopped = true;
        const closed = new Promise<void>((resolve) => activeServer.close(() => resolve()));
        activeServer.closeAllConnections();
        await closed;
        await removeTempDir(dir);
      },
    };
  } catch (err) {
    server?.close();
    await removeTempDir(dir);
    throw err;
  }
}

interface HandlerContext {
  service: string;
  ttlSeconds: number;
  users: Map<string, Required<TokenUser>>;
  issue: (subject: string, access: readonly TokenAccess[]) => string;
  log: TokenRequestRecord[];
}

function handleTokenRequest(req: IncomingMessage, res: ServerResponse, ctx: HandlerContext): void {
  const url = new URL(req.url ?? '/', 'http://token.invalid');
  const record: TokenRequestRecord = {
    method: req.method ?? 'GET',
    scopes: url.searchParams.getAll('scope'),
    service: url.searchParams.get('service') ?? undefined,
    user: undefined,
    outcome: 'rejected',
    status: 0,
    access: [],
  };
  // Request bodies (the OAuth2 form with a password) are drained unread so they never reach memory.
  req.resume();
  const answer = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
    record.status = status;
    ctx.log.push(record);
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(text)),
      ...headers,
    });
    res.end(text);
  };

  if (url.pathname !== '/token') {
    answer(404, { errors: [{ code: 'NOT_FOUND', message: 'only /token is served here' }] });
    return;
  }
  if (req.method !== 'GET') {
    answer(
      405,
      { errors: [{ code: 'UNSUPPORTED', message: 'use GET with Basic credentials' }] },
      { allow: 'GET' },
    );
    return;
  }
  if (record.service !== ctx.service) {
    answer(400, {
      errors: [{ code: 'INVALID_REQUEST', message: `unknown service ${String(record.service)}` }],
    });
    return;
  }

  let user: string | undefined;
  const header = req.headers.authorization;
  if (header !== undefined) {
    const credentials = parseBasic(header);
    const account = credentials === undefined ? undefined : ctx.users.get(credentials.user);
    if (credentials === undefined || account === undefined || account.password !== credentials.password) {
      record.outcome = 'denied';
      answer(
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'invalid username or password' }] },
        { 'www-authenticate': 'Basic realm="shoal-test-token"' },
      );
      return;
    }
    user = credentials.user;
  }
  record.user = user;

  const account = user === undefined ? undefined : ctx.users.get(user);
  const access: TokenAccess[] = [];
  for (const scope of record.scopes.flatMap((s) => s.split(' ')).filter((s) => s !== '')) {
    const parsed = parseScope(scope);
    if (parsed === undefined) {
      answer(400, { errors: [{ code: 'INVALID_REQUEST', message: 'malformed scope' }] });
      return;
    }
    // Anonymous callers, other resource types and repositories outside the user's list get nothing.
    if (account === undefined || parsed.type !== 'repository') continue;
    if (!account.repositories.includes('*') && !account.repositories.includes(parsed.name)) continue;
    const actions = parsed.actions.filter((a) => account.actions.includes(a));
    if (actions.length > 0) access.push({ type: parsed.type, name: parsed.name, actions });
  }
  const token = ctx.issue(user ?? '', access);
  record.outcome = 'issued';
  record.access = access;
  answer(200, {
    token,
    access_token: token,
    expires_in: ctx.ttlSeconds,
    issued_at: new Date().toISOString(),
  });
}

function parseBasic(header: string): { user: string; password: string } | undefined {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (match?.[1] === undefined) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon === -1) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** Splits "type:name:actions"; the name is what lies between the first and the last colon. */
function parseScope(scope: string): TokenAccess | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first + 1) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope
      .slice(last + 1)
      .split(',')
      .filter((a) => a !== ''),
  };
}

function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function signJwt(
  key: KeyObject,
  algorithm: 'ES256' | 'RS256',
  certDerBase64: string,
  claims: { iss: string; sub: string; aud: string; ttlSeconds: number; access: readonly TokenAccess[] },
): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { typ: 'JWT', alg: algorithm, x5c: [certDerBase64] };
  const payload = {
    iss: claims.iss,
    sub: claims.sub,
    // docker-registry 2.8 reads `aud` as a single string, so a one-element array would not parse.
    aud: claims.aud,
    exp: now + claims.ttlSeconds,
    // A little slack on nbf keeps a token valid if the registry's clock reads a moment earlier.
    nbf: now - 5,
    iat: now,
    jti: randomUUID(),
    access: claims.access,
  };
  const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`;
  // JWS ES256 signatures are the raw r||s pair (IEEE P1363), not the DER form Node produces by default.
  const signature =
    algorithm === 'ES256'
      ? sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' })
      : sign('sha256', Buffer.from(signingInput), key);
  return `${signingInput}.${base64url(signature)}`;
}

/**
 * Asks a token server for a token the way a registry client does (GET with Basic credentials when
 * given) and returns it; throws with the status when the server refuses.
 */
export async function fetchRegistryToken(options: {
  realm: string;
  service: string;
  scopes: readonly string[];
  username?: string;
  password?: string;
}): Promise<string> {
  const url = new URL(options.realm);
  url.searchParams.set('service', options.service);
  for (const scope of options.scopes) url.searchParams.append('scope', scope);
  const headers: Record<string, string> = {};
  if (options.username !== undefined) {
    headers['authorization'] =
      `Basic ${Buffer.from(`${options.username}:${options.password ?? ''}`).toString('base64')}`;
  }
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(10_000) });
  const text = await response.text();
  if (!response.ok) throw new Error(`token request to ${url.origin}${url.pathname}: HTTP ${response.status}`);
  const body = JSON.parse(text) as { token?: string; access_token?: string };
  const token = body.token ?? body.access_token;
  if (token === undefined || token === '') throw new Error('token server answered without a token');
  return token;
}
