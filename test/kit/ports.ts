import { createServer, type Server } from 'node:net';

/**
 * Returns a TCP port on 127.0.0.1 that was free a moment ago. The kernel picks it, so parallel
 * callers do not collide the way counters or random numbers would; a small window remains between
 * closing the probe socket and the caller binding the port (another test's outgoing connection may take
 * it as its local port meanwhile); `onFreePorts` starts a server again on other ports when it lost one
 * so. (A port taken by another listening server is not caught if the readiness check reaches that one.)
 */
export async function freePort(): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('freePort: the probe socket has no TCP address'));
        return;
      }
      const { port } = address;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

/**
 * Returns `count` distinct free ports. All probe sockets stay open until every port is chosen, so
 * the kernel cannot hand out the same port twice.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      server.unref();
      servers.push(server);
      ports.push(
        await new Promise<number>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
            const address = server.address();
            if (address === null || typeof address === 'string')
              reject(new Error('freePorts: no TCP address'));
            else resolve(address.port);
          });
        }),
      );
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** Whether a server failed to start because its port was taken between choosing it and binding it. */
export function isPortClash(err: unknown): boolean {
  return err instanceof Error && /address already in use|EADDRINUSE/.test(err.message);
}

/**
 * Starts something on `count` fresh free ports, choosing them again (up to `attempts` times in all)
 * when it fails because one was taken meanwhile; any other failure is thrown at once. `start` must
 * clean up after a failed attempt itself.
 */
export async function onFreePorts<T>(
  count: number,
  start: (ports: number[]) => Promise<T>,
  attempts = 5,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(await freePorts(count));
    } catch (err) {
      if (attempt >= attempts || !isPortClash(err)) throw err;
    }
  }
}
