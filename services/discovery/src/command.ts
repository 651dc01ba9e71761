/** `shoal discovery`: wires discovery into the shared control-service start-up. */
import { type CommandDefinition, createLogger, runControlService } from '@shoal/mesh';
import { createDiscovery } from './app.js';
import { discoverySpec } from './config.js';
import { staticTargets } from './endpoints.js';
import { credentialsFromConfig, instanceProviders } from './instance-provider.js';
import { kubeConfigFrom } from './kube-config.js';
import { createKubeTopology } from './kubernetes.js';

export const discoveryCommand: CommandDefinition<typeof discoverySpec> = {
  command: 'shoal discovery',
  summary:
    'Keeps the node registry from agents’ heartbeats and publishes registry endpoints (configured, or from a registry instance’s API) with their health.',
  spec: discoverySpec,
  start: async (config) => {
    // Configuration mistakes are reported before anything connects.
    staticTargets(config.registries, config.mirrors);
    if (config.instances.length) credentialsFromConfig(config, createLogger('discovery', 'silent'));
    const kubeConfig = config.topologySource === 'kubernetes' ? kubeConfigFrom(config.kubeconfig) : undefined;
    return await runControlService({
      service: 'discovery',
      config,
      build: (context) =>
        createDiscovery({
          ...context,
          config,
          providers: config.instances.length
            ? instanceProviders({
                config,
                credentials: credentialsFromConfig(config, context.log),
                log: context.log,
              })
            : [],
          ...(kubeConfig
            ? {
                topology: (onChange) =>
                  createKubeTopology({
                    kubeConfig,
                    zoneLabel: config.zoneLabel,
                    regionLabel: config.regionLabel,
                    vswitchLabel: config.vswitchLabel,
                    poolLabel: config.poolLabel,
                    pool: config.pool,
                    agentNamespace: config.agentNamespace,
                    agentSelector: config.agentSelector,
                    log: context.log,
                    onChange,
                  }),
              }
            : {}),
        }),
    });
  },
};
