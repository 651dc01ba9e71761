/** `shoal agent`: loads config, builds the agent, listens, and stops cleanly on signals. */
import { type CommandDefinition, createLogger } from '@shoal/mesh';
import { createAgent } from './agent.js';
import { agentSpec, defaultNodeId } from './config.js';

export const agentCommand: CommandDefinition<typeof agentSpec> = {
  command: 'shoal agent',
  summary:
    'Runs the node agent: a registry mirror for the container runtime that fetches blobs in verified chunks from peers and the registry, and serves its chunks to peers.',
  spec: agentSpec,
  async start(loaded) {
    const config = loaded.nodeId ? loaded : Object.freeze({ ...loaded, nodeId: defaultNodeId() });
    const log = createLogger('agent', config.logLevel);
    let listening = '';
    const advertise = () => config.advertiseUrl || listening;
    const agent = await createAgent(config, log, advertise);
    const address = await agent.app.listen({ host: config.host, port: config.port });
    const port = new URL(address).port;
    listening = `http://${config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host}:${port}`;
    await agent.start();
    log.info({ address, node: config.nodeId, advertise: advertise() }, 'agent listening');
    return { stop: () => agent.stop() };
  },
};
