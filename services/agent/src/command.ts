/** `shoal agent`: loads config, builds the agent, listens, and stops cleanly on signals. */
import { networkInterfaces } from 'node:os';
import { type CommandDefinition, createLogger, nodeIdOf } from '@shoal/mesh';
import { createAgent } from './agent.js';
import { agentSpec, defaultNodeId } from './config.js';

export const agentCommand: CommandDefinition<typeof agentSpec> = {
  command: 'shoal agent',
  summary:
    'Runs the node agent: a registry mirror for the container runtime that fetches blobs in verified chunks from peers and the registry, and serves its chunks to peers.',
  spec: agentSpec,
  async start(loaded) {
    const config = Object.freeze({
      ...loaded,
      nodeId: loaded.nodeId ? nodeIdOf(loaded.nodeId) : defaultNodeId(),
    });
    const log = createLogger('agent', config.logLevel);
    let listening = '';
    const advertise = () => config.advertiseUrl || listening;
    const agent = await createAgent(config, log, advertise);
    const address = await agent.app.listen({ host: config.host, port: config.port });
    const port = new URL(address).port;
    listening = `http://${advertiseHost(config.host)}:${port}`;
    await agent.start();
    log.info({ address, node: config.nodeId, advertise: advertise() }, 'agent listening');
    return { stop: () => agent.stop() };
  },
};

/**
 * The address peers should use when none is configured: the listen address if it is a specific one,
 * else this machine's first non-internal IPv4 address (a node's own loopback is useless to its peers).
 */
function advertiseHost(host: string): string {
  if (host !== '0.0.0.0' && host !== '::') return host.includes(':') ? `[${host}]` : host;
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? [])
      if (address.family === 'IPv4' && !address.internal) return address.address;
  }
  return '127.0.0.1';
}
