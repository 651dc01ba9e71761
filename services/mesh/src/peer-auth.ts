/**
 * Authentication of the peer chunk API. Agents of one mesh share a secret; each request carries a
 * short-lived token (node, expiry, HMAC-SHA256 over both), so a client outside the mesh cannot read
 * cached layers — private ones included — from a node's peer port, and a captured token soon expires.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const PEER_AUTH_SCHEME = 'Shoal-Peer';
const TOKEN_LIFETIME_S = 300;
/** Tokens dated further ahead than this are refused, so a clock far ahead cannot mint long-lived ones. */
const MAX_FUTURE_S = 600;

function sign(secret: string, payload: string): string {
  return createHmac('sha256', secret).update(payload).digest('base64url');
}

export function createPeerToken(secret: string, node: string, nowMs = Date.now()): string {
  const payload = `v1.${node}.${Math.floor(nowMs / 1000) + TOKEN_LIFETIME_S}`;
  return `${payload}.${sign(secret, payload)}`;
}

/** Returns the caller's node ID when the header carries a valid token, else undefined. */
export function verifyPeerAuthorization(
  secret: string,
  header: string | undefined,
  nowMs = Date.now(),
): string | undefined {
  if (!header?.startsWith(`${PEER_AUTH_SCHEME} `)) return undefined;
  const token = header.slice(PEER_AUTH_SCHEME.length + 1).trim();
  const match = /^(v1\.([A-Za-z0-9_-]{1,64})\.(\d{1,12}))\.([A-Za-z0-9_-]{43})$/.exec(token);
  if (!match?.[1] || !match[2] || !match[3] || !match[4]) return undefined;
  const expected = Buffer.from(sign(secret, match[1]));
  const given = Buffer.from(match[4]);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return undefined;
  const expires = Number(match[3]);
  const now = Math.floor(nowMs / 1000);
  if (expires < now || expires > now + MAX_FUTURE_S) return undefined;
  return match[2];
}

/** Hands out this node's token, minting a new one when the current one is past half its life. */
export function peerTokenSource(secret: string, node: string): () => string {
  let token = '';
  let renewAt = 0;
  return () => {
    const now = Date.now();
    if (now >= renewAt) {
      token = createPeerToken(secret, node, now);
      renewAt = now + (TOKEN_LIFETIME_S * 1000) / 2;
    }
    return `${PEER_AUTH_SCHEME} ${token}`;
  };
}
