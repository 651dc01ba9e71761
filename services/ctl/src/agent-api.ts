/**
 * Requests from shoalctl to an agent's APIs (preheat, limits): signed with the mesh's peer secret as
 * agents sign theirs, with one message per way they fail that names the agent and what to do.
 */
import { MESH_TOKEN_HEADER, peerTokenSource, ShoalError } from '@shoal/mesh';

/** The node ID shoalctl signs its mesh tokens as. */
const CTL_NODE_ID = 'shoalctl';

export interface AgentTarget {
  id: string;
  url: string;
}

/** Why a request to an agent failed; `gone` means the agent no longer knows the job. */
export class AgentError extends ShoalError {
  constructor(
    readonly kind: 'unreachable' | 'refused' | 'gone' | 'bad-answer',
    message: string,
    cause?: unknown,
  ) {
    super(kind === 'unreachable' ? 'SHOAL_ERR_MESH_UNAVAILABLE' : 'SHOAL_ERR_UPSTREAM', message, {
      cause,
    });
  }
}

/** The first error message of an OCI-style error body, shortened. */
export function errorMessage(body: unknown): string | undefined {
  const first = (body as { errors?: { message?: unknown }[] } | null)?.errors?.[0]?.message;
  return typeof first === 'string' ? first.slice(0, 300) : undefined;
}

export type AgentCall = (
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  path: string,
  body?: unknown,
  authorization?: string,
) => Promise<{ status: number; body: unknown }>;

/**
 * A caller of one agent's APIs: the answer's status and parsed JSON body, or an AgentError when the
 * agent cannot be reached (`unreachable`) or refuses the mesh token (`refused`, 401 and 403).
 */
export function agentCaller(node: AgentTarget, peerSecret: string, timeoutMs: number): AgentCall {
  const token = peerSecret ? peerTokenSource(peerSecret, CTL_NODE_ID) : undefined;
  const name = agentName(node);
  return async (method, path, body, authorization) => {
    const headers: Record<string, string> = {};
    if (token) headers[MESH_TOKEN_HEADER] = token();
    if (authorization) headers.authorization = authorization;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(new URL(path, node.url), {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
      throw new AgentError(
        'unreachable',
        `${name} is unreachable (${why}): is it running? shoalctl nodes shows its state`,
        err,
      );
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (res.status === 401) {
      throw new AgentError(
        'refused',
        `${name} wants a mesh token: pass --peer-secret (or SHOAL_PEER_SECRET) with the mesh's peer.secret`,
      );
    }
    if (res.status === 403) {
      throw new AgentError(
        'refused',
        `${name} refused the mesh token: --peer-secret is not the mesh's peer.secret (or this machine's clock is off)`,
      );
    }
    return { status: res.status, body: parsed };
  };
}

/** How messages name an agent. */
export function agentName(node: AgentTarget): string {
  return `agent ${node.id} at ${node.url}`;
}
