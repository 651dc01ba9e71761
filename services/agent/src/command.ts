/** `shoal agent`: loads config, builds the agent, listens, and stops cleanly on signals. */
import { readFileSync } from 'node:fs';
import {
  createServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { networkInterfaces } from 'node:os';
import { type CommandDefinition, createLogger, nodeIdOf, ShoalError } from '@shoal/mesh';
import { type Agent, createAgent } from './agent.js';
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
    listening = `http://${urlHost(config.advertiseHost || advertiseHost(config.host))}:${port}`;
    let distributed: HttpServer | undefined;
    try {
      distributed = config.distributedPort ? await serveDistributed(agent, config) : undefined;
    } catch (err) {
      // The main port is already open: close it, so that a failed start leaves nothing behind.
      await agent.stop();
      throw err;
    }
    await agent.start();
    log.info(
      {
        address,
        node: config.nodeId,
        advertise: advertise(),
        distributedPort: config.distributedPort || undefined,
      },
      'agent listening',
    );
    return {
      async stop() {
        distributed?.closeAllConnections();
        await new Promise<void>((resolve) => (distributed ? distributed.close(() => resolve()) : resolve()));
        await agent.stop();
      },
    };
  },
};

/**
 * A second port for Docker nodes: the same mirror API, reached by registries' "distributed" host names
 * (which the node resolves to itself), over TLS when a certificate is configured.
 */
async function serveDistributed(
  agent: Agent,
  config: { host: string; distributedPort: number; distributedTlsCert: string; distributedTlsKey: string },
): Promise<HttpServer> {
  const handler = (req: IncomingMessage, res: ServerResponse) => agent.app.routing(req, res);
  let server: HttpServer;
  if (Boolean(config.distributedTlsCert) !== Boolean(config.distributedTlsKey)) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      'distributed.tls.cert and distributed.tls.key go together: set both, or neither for plain HTTP',
    );
  }
  if (config.distributedTlsCert) {
    server = createHttpsServer(
      { cert: readFileSync(config.distributedTlsCert), key: readFileSync(config.distributedTlsKey) },
      handler,
    );
  } else {
    server = createServer(handler);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.distributedPort, config.host, () => resolve());
  });
  return server;
}

/** A host as it goes in a URL: an IPv6 address in brackets. */
export function urlHost(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/**
 * The address peers should use when none is configured: the listen address if it is a specific one,
 * else this machine's first non-internal IPv4 address (a node's own loopback is useless to its peers).
 */
function advertiseHost(host: string): string {
  if (host !== '0.0.0.0' && host !== '::') return host;
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? [])
      if (address.family === 'IPv4' && !address.internal) return address.address;
  }
  return '127.0.0.1';
}
