import { describe, expect, it } from 'vitest';
import {
  createPeerToken,
  PEER_AUTH_SCHEME,
  peerTokenSource,
  verifyPeerAuthorization,
} from '../src/peer-auth.js';

const secret = 'mesh-secret-for-tests';

describe('peer tokens', () => {
  it('accepts a token signed with the mesh secret and names the caller', () => {
    const header = peerTokenSource(secret, 'node-a')();
    expect(header.startsWith(`${PEER_AUTH_SCHEME} v1.node-a.`)).toBe(true);
    expect(verifyPeerAuthorization(secret, header)).toBe('node-a');
  });

  it('refuses missing, foreign, tampered and expired tokens', () => {
    const now = Date.now();
    const token = createPeerToken(secret, 'node-a', now);
    expect(verifyPeerAuthorization(secret, undefined)).toBeUndefined();
    expect(verifyPeerAuthorization(secret, `Bearer ${token}`)).toBeUndefined();
    expect(verifyPeerAuthorization('another-secret', `${PEER_AUTH_SCHEME} ${token}`)).toBeUndefined();
    expect(
      verifyPeerAuthorization(secret, `${PEER_AUTH_SCHEME} ${token.replace('node-a', 'node-b')}`),
    ).toBeUndefined();
    expect(verifyPeerAuthorization(secret, `${PEER_AUTH_SCHEME} ${token}`, now + 301_000)).toBeUndefined();
    const farFuture = createPeerToken(secret, 'node-a', now + 3_600_000);
    expect(verifyPeerAuthorization(secret, `${PEER_AUTH_SCHEME} ${farFuture}`, now)).toBeUndefined();
  });
});
