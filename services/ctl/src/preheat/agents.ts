/**
 * The client side of an agent's preheat API: start a job, read its progress, cancel it. Requests are
 * signed with the mesh's peer secret as agents sign theirs; the registry credential goes in
 * Authorization, as the agent passes it on to the registry.
 */
import { type PreheatJobView, type PreheatRequest, PreheatStates, preheatPaths } from '@shoal/mesh';
import { AgentError, agentCaller, agentName, type AgentTarget, errorMessage } from '../agent-api.js';

export { AgentError, type AgentTarget };
export type { PreheatJobView, PreheatRequest };

export interface PreheatAgent {
  readonly node: AgentTarget;
  start(request: PreheatRequest, authorization: string | undefined): Promise<string>;
  status(id: string): Promise<PreheatJobView>;
  cancel(id: string): Promise<void>;
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
  const name = agentName(node);
  const call = agentCaller(node, peerSecret, timeoutMs);

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
