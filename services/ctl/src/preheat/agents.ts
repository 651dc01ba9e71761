/**
 * The client side of an agent's preheat API: start a job, read its progress, cancel it. Requests are
 * signed with the mesh's peer secret as agents sign theirs; the registry credential goes in
 * Authorization, as the agent passes it on to the registry.
 */
import {
  MESH_TOKEN_HEADER,
  peerTokenSource,
  type PreheatJobView,
  type PreheatRequest,
  PreheatStates,
  preheatPaths,
  ShoalError,
} from '@shoal/mesh';

export type { PreheatJobView, PreheatRequest };

export interface AgentTarget {
  id: string;
  url: string;
}

export interface PreheatAgent {
  readonly node: AgentTarget;
  start(request: PreheatRequest, authorization: string | undefined): Promise<string>;
  status(id: string): Promise<PreheatJobView>;
  cancel(id: string): Promise<void>;
}

/** The node ID shoalctl signs its mesh tokens as. */
const CTL_NODE_ID = 'shoalctl';

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

function errorMessage(body: unknown): string | undefined {
  const first = (body as { errors?: { message?: unknown }[] } | null)?.errors?.[0]?.message;
  return typeof first === 'string' ? first.slice(0, 300) : undefined;
}

function validView(body: unknown): body is PreheatJobView {
  const view = body as Partial<PreheatJobView> | null;
  const states: readonly string[] = Object.values(PreheatStates);
  return (
    typeof view === 'object' &&
    view !== null &&
    typeof view.id === 'string' &&
    Array.isArray(view.blobs) &&
    view.blobs.every(
      (b) =>
        typeof b.digest === 'string' &&
        typeof b.size === 'number' &&
        typeof b.bytes === 'number' &&
        states.includes(b.state),
    )
  );
}

export function preheatAgent(node: AgentTarget, peerSecret: string, timeoutMs: number): PreheatAgent {
  const token = peerSecret ? peerTokenSource(peerSecret, CTL_NODE_ID) : undefined;
  const name = `agent ${node.id} at ${node.url}`;

  const call = async (
    method: 'GET' | 'POST' | 'DELETE',
    path: string,
    body?: unknown,
    authorization?: string,
  ): Promise<{ status: number; body: unknown }> => {
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

  return {
    node,
    async start(request, authorization) {
      const { status, body } = await call('POST', preheatPaths.start, request, authorization);
      const id = (body as { id?: unknown } | undefined)?.id;
      if (status === 202 && typeof id === 'string') return id;
      if (status === 404) {
        throw new AgentError('refused', `${name} has no preheat API: upgrade it`);
      }
      throw new AgentError(
        'refused',
        `${name} refused the preheat (${status}): ${errorMessage(body) ?? 'no reason given'}`,
      );
    },
    async status(id) {
      const { status, body } = await call('GET', preheatPaths.job(id));
      if (status === 404) {
        throw new AgentError('gone', `${name} no longer knows the preheat job: was it restarted?`);
      }
      if (status !== 200 || !validView(body)) {
        throw new AgentError(
          'bad-answer',
          `${name} answered ${status} for the job's progress: ${errorMessage(body) ?? 'not a preheat job'}`,
        );
      }
      return body;
    },
    async cancel(id) {
      const { status, body } = await call('DELETE', preheatPaths.job(id));
      if (status !== 200 && status !== 404) {
        throw new AgentError(
          'bad-answer',
          `${name} answered ${status} to the cancel: ${errorMessage(body) ?? 'no reason given'}`,
        );
      }
    },
  };
}
