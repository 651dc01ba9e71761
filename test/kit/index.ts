// The test kit starts real servers (NATS, a registry behind a counting proxy, containerd) on
// loopback ports and temp dirs, and builds images for them; integration tests import it from here.
export * from './containerd.js';
export * from './image.js';
export * from './nats.js';
export * from './ports.js';
export * from './process.js';
export * from './registry.js';
export * from './tmp.js';
export * from './token-auth.js';
export * from './wait.js';
