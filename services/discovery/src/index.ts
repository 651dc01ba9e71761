export { createDiscovery } from './app.js';
export type { Discovery, DiscoveryDeps } from './app.js';
export { discoveryCommand } from './command.js';
export { discoverySpec } from './config.js';
export type { DiscoveryConfig, DiscoverySettings } from './config.js';
export { checkEndpoint, endpointTarget } from './endpoints.js';
export type { EndpointTarget } from './endpoints.js';
export { createDiscoveryMetrics } from './metrics.js';
export type { DiscoveryMetrics } from './metrics.js';
