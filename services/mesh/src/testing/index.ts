// Test support shared by every service's unit tests; published as @shoal/mesh/testing, never imported
// by service code.
export { freePort, startNatsServer } from './nats-server.js';
export type { NatsServer } from './nats-server.js';
