/**
 * Builds a small emulated network, prints its registry host's namespace and waits to be interrupted:
 * the process the interrupt test signals, to show that an interrupted benchmark leaves nothing behind.
 */
import { buildNetwork } from './network.js';

const network = await buildNetwork({
  zones: 1,
  vswitchesPerZone: 1,
  nodesPerVswitch: 1,
  nodeMbit: 10,
  registryMbit: 10,
  crossZoneMbit: 0,
});
process.stdout.write(`ready ${network.registry.ns}\n`);
setInterval(() => undefined, 60_000);
