/** Free ports, and starting servers on them when another socket takes one first. */
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  isPortClash,
  makeTempDir,
  onFreePorts,
  removeTempDir,
  startProcess,
  unlessExited,
  waitForHttp,
} from './index.js';

const servers: Server[] = [];
const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  await Promise.all(dirs.splice(0).map(removeTempDir));
});

/**
 * Listens on 127.0.0.1:`port`, hanging up on whoever connects; rejects with the socket's own error when
 * it cannot.
 */
async function listen(port: number): Promise<Server> {
  const server = createServer((socket) => socket.destroy());
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => resolve());
  });
  return server;
}

/** Starts `cmd` and waits for it to serve, as the kit's starters do; the error says why it did not. */
async function startOnTakenPort(cmd: string, args: string[], ready: Promise<unknown>): Promise<unknown> {
  const dir = await makeTempDir('ports');
  dirs.push(dir);
  const proc = await startProcess({ name: cmd, cmd, args, logFile: join(dir, `${cmd}.log`) });
  try {
    await unlessExited(proc, ready, 'starting');
    return undefined;
  } catch (err) {
    return err;
  } finally {
    await proc.stop('SIGKILL');
  }
}

describe('free ports', () => {
  it('chooses fresh ports when one is taken between choosing and binding it', async () => {
    const tried: number[][] = [];
    const server = await onFreePorts(2, async (ports) => {
      tried.push(ports);
      // The first time, another socket takes the second port before it is bound.
      if (tried.length === 1) await listen(ports[1]!);
      await listen(ports[0]!);
      return await listen(ports[1]!);
    });
    expect(tried).toHaveLength(2);
    expect(tried[1]).not.toEqual(tried[0]);
    expect(server.address()).toMatchObject({ port: tried[1]![1] });
  });

  it('throws any other failure at once, and a clash after the last attempt', async () => {
    let calls = 0;
    await expect(
      onFreePorts(1, () => {
        calls++;
        return Promise.reject(new Error('the config is wrong'));
      }),
    ).rejects.toThrow('the config is wrong');
    expect(calls).toBe(1);

    calls = 0;
    const clash = onFreePorts(
      1,
      async ([port]) => {
        calls++;
        await listen(port!);
        return await listen(port!);
      },
      3,
    );
    await expect(clash).rejects.toSatisfy(isPortClash);
    expect(calls).toBe(3);
  });

  it("tells docker-registry's and nats-server's failure on a taken port from other failures", async () => {
    const taken = await onFreePorts(1, async ([port]) => (await listen(port!), port!));
    const dir = await makeTempDir('ports-config');
    dirs.push(dir);
    const config = join(dir, 'registry.yml');
    await writeFile(config, `version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: 127.0.0.1:${taken}\n`);
    const registry = await startOnTakenPort(
      'docker-registry',
      ['serve', config],
      waitForHttp(`http://127.0.0.1:${taken}/v2/`, 10_000, { accept: (s) => s === 200 }),
    );
    expect(registry).toSatisfy(isPortClash);

    const nats = await startOnTakenPort(
      'nats-server',
      ['-a', '127.0.0.1', '-p', String(taken)],
      // Never met: only the server's exit ends the wait.
      new Promise<void>(() => undefined),
    );
    expect(nats).toSatisfy(isPortClash);

    const badConfig = await startOnTakenPort(
      'docker-registry',
      ['serve', join(dir, 'missing.yml')],
      new Promise<void>(() => undefined),
    );
    expect(badConfig).toBeInstanceOf(Error);
    expect(badConfig).not.toSatisfy(isPortClash);
  });
});
