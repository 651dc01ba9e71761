import { once } from 'node:events';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestWithin } from '../src/mesh-client.js';
import { holdUp } from './threaded-peer.js';

/** Answers every request on `echo` at once, from a thread of its own and a connection of its own. */
const RESPONDER = `
const { parentPort, workerData } = require('node:worker_threads');
const { connect } = require(workerData.nats);
(async () => {
  const nc = await connect({ servers: workerData.url });
  nc.subscribe('echo', { callback: (_err, msg) => msg.respond(msg.data) });
  await nc.flush();
  parentPort.postMessage('ready');
})();
`;

let server: NatsServer;
let responder: Worker;
let nc: NatsConnection;

beforeAll(async () => {
  server = await startNatsServer();
  responder = new Worker(RESPONDER, {
    eval: true,
    workerData: { url: server.url, nats: createRequire(import.meta.url).resolve('@nats-io/transport-node') },
  });
  await once(responder, 'message');
  nc = await connect({ servers: server.url });
});

afterAll(async () => {
  await nc?.close();
  await responder?.terminate();
  await server?.stop();
});

describe('requestWithin', () => {
  it('takes a reply that came while this thread was held up past the timeout', async () => {
    const data = new TextEncoder().encode('hello');
    expect(new TextDecoder().decode((await requestWithin(nc, 'echo', data, 100)).data)).toBe('hello');
    const reply = requestWithin(nc, 'echo', data, 100);
    // NATS writes the request from a microtask, which runs first.
    await Promise.resolve();
    // The reply arrives while this thread is held up for fifteen times the timeout; when it runs again,
    // the timer is due before the reply is read.
    holdUp(1_500);
    expect(new TextDecoder().decode((await reply).data)).toBe('hello');
  });

  it('times out when no one answers in time, with TIMEOUT in its message', async () => {
    nc.subscribe('silent', { callback: () => undefined });
    const err = await requestWithin(nc, 'silent', new Uint8Array(), 100).catch((e: unknown) => e);
    // Its own timeout, not NATS's backstop.
    expect(String(err)).toMatch(/TIMEOUT: no reply on silent within 100 ms/);
  });
});
