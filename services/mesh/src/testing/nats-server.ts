/**
 * Starts a real nats-server with JetStream for one test suite: its own free loopback port and its own
 * temporary store directory, stopped by PID. Tests never share a server, so they can run in parallel.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServer {
  url: string;
  port: number;
  pid: number;
  /** Stops the server and removes its store. */
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startNatsServer(): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-nats-'));
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  const logFile = join(dir, 'nats.log');
  writeFileSync(
    conf,
    [
      `listen: 127.0.0.1:${port}`,
      `log_file: "${logFile}"`,
      `jetstream { store_dir: "${join(dir, 'js')}" }`,
      '',
    ].join('\n'),
  );
  const child = spawn('nats-server', ['-c', conf], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const pid = child.pid;
  if (pid === undefined) throw new Error('nats-server did not start (is it installed?)');
  try {
    await waitForInfo(port, child);
  } catch (err) {
    await kill(child, exited);
    const log = safeRead(logFile);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`nats-server on port ${port} did not become ready: ${(err as Error).message}\n${log}`);
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid,
    async stop() {
      await kill(child, exited);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function kill(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  process.kill(child.pid, 'SIGTERM');
  const timer = setTimeout(() => {
    if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
  }, 5_000);
  await exited;
  clearTimeout(timer);
}

function safeRead(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The server is ready once a TCP client receives its INFO line. */
async function waitForInfo(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`exited with code ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = tcpConnect({ host: '127.0.0.1', port });
      const done = (value: boolean) => {
        socket.destroy();
        resolve(value);
      };
      socket.once('data', (data) => done(data.toString().startsWith('INFO')));
      socket.once('error', () => done(false));
      socket.setTimeout(1_000, () => done(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('timed out');
}
