/**
 * A peer on a thread of its own, which answers every GET at once with `size` bytes: it goes on answering
 * while a test holds up the thread it runs on, as a busy node's scheduler holds up an agent.
 */
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';

const PEER = `
const { parentPort, workerData } = require('node:worker_threads');
const { createServer } = require('node:net');
const body = Buffer.alloc(workerData.size, 7);
const head = Buffer.from('HTTP/1.1 200 OK\\r\\ncontent-length: ' + body.length + '\\r\\n\\r\\n');
const server = createServer((socket) => {
  let pending = '';
  socket.on('error', () => undefined);
  socket.on('data', (data) => {
    pending += data.toString('latin1');
    for (let end = pending.indexOf('\\r\\n\\r\\n'); end !== -1; end = pending.indexOf('\\r\\n\\r\\n')) {
      pending = pending.slice(end + 4);
      socket.write(Buffer.concat([head, body]));
    }
  });
});
server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));
`;

export async function startThreadedPeer(size: number): Promise<{ url: string; close: () => Promise<void> }> {
  const worker = new Worker(PEER, { eval: true, workerData: { size } });
  const [port] = (await once(worker, 'message')) as [number];
  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      await worker.terminate();
    },
  };
}

/** Keeps this thread busy for `ms`: no timer, read or callback of its event loop runs meanwhile. */
export function holdUp(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}
