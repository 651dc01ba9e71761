/**
 * Property-based fuzzing of every NATS message handler, on real service processes: heartbeats and leave
 * messages (discovery), announcements (announcer, through JetStream) and schedule requests (scheduler).
 * Malformed, oversized, wrong-version and hostile payloads are dropped and counted (or answered with an
 * error); no service crashes, and a well-formed message still works afterwards.
 */
import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { subjects } from '@shoal/mesh';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, type NatsServer, removeTempDir, startNats, waitFor } from './kit/index.js';
import { type ControlPlane, metric, metricSum, startControlPlane, waitForNodes } from './support/shoal.js';

const RUNS = 150;
const encoder = new TextEncoder();

/** Payloads of every kind: not JSON, JSON of the wrong shape, the right shape with hostile values. */
function payloads(valid: Record<string, unknown>): fc.Arbitrary<Uint8Array> {
  const hostileValue = fc.oneof(
    fc.string({ maxLength: 50 }),
    fc.constantFrom(
      '../../etc/passwd',
      '\u0000',
      'a'.repeat(70_000),
      '__proto__',
      'constructor',
      'sha256:zz',
    ),
    fc.integer(),
    fc.double(),
    fc.constantFrom(-1, 2 ** 60, Number.MAX_SAFE_INTEGER + 2, NaN),
    fc.boolean(),
    fc.constant(null),
    fc.array(fc.integer({ min: -5, max: 2_000_000 }), { maxLength: 30 }),
    fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
  );
  const mutated = fc
    .tuple(fc.constantFrom(...Object.keys(valid)), hostileValue, fc.boolean())
    .map(([key, value, drop]) => {
      const copy: Record<string, unknown> = { ...valid };
      if (drop) delete copy[key];
      else copy[key] = value;
      return encoder.encode(JSON.stringify(copy));
    });
  return fc.oneof(
    mutated,
    fc.uint8Array({ maxLength: 200 }),
    fc.string({ maxLength: 200 }).map((s) => encoder.encode(s)),
    fc.jsonValue({ maxDepth: 3 }).map((v) => encoder.encode(JSON.stringify(v))),
    fc.constantFrom(
      encoder.encode('{"__proto__": {"polluted": true}}'),
      encoder.encode(`{"v":2,${'"x":1,'.repeat(10)}"node":"n"}`),
      encoder.encode('['.repeat(5000)),
      new Uint8Array(900_000).fill(0x7b),
    ),
  );
}

describe('fuzzing the NATS message handlers', () => {
  let dir: string;
  let nats: NatsServer;
  let control: ControlPlane;
  let nc: NatsConnection;
  let sent = 0;

  beforeAll(async () => {
    dir = await makeTempDir('fuzz-nats');
    nats = await startNats();
    control = await startControlPlane(nats.url, dir);
    nc = await connect({ servers: nats.url });
  });

  afterAll(async () => {
    await nc?.close();
    await control?.stop();
    await nats?.stop();
    await removeTempDir(dir);
    console.log(`NATS messages fuzzed without a crash: ${sent}`);
  });

  const alive = async () => {
    for (const service of [control.discovery, control.announcer, control.scheduler]) {
      const res = await fetch(`${service.url}/healthz`);
      expect(res.status, `${service.name} /healthz`).toBe(200);
      expect(service.process.running(), `${service.name} exited: ${service.process.tail(5)}`).toBe(true);
    }
  };

  it('drops and counts bad heartbeats and leave messages; a good heartbeat still registers', async () => {
    const valid = {
      id: 'fz',
      url: 'http://127.0.0.1:1',
      zone: 'z',
      vswitch: 'v',
      pool: '',
      startedAt: 1,
      seenAt: 0,
    };
    await fc.assert(
      fc.asyncProperty(payloads(valid), fc.boolean(), async (data, leave) => {
        nc.publish(leave ? subjects.leave('fz') : subjects.heartbeat('fz'), data);
        sent++;
      }),
      { numRuns: RUNS },
    );
    await nc.flush();
    await alive();
    const rejected = metric(await control.discovery.metrics(), 'shoal_discovery_heartbeats_total', {
      outcome: 'rejected',
    });
    expect(rejected).toBeGreaterThan(0);
    nc.publish(subjects.heartbeat('fz-good'), encoder.encode(JSON.stringify({ ...valid, id: 'fz-good' })));
    await waitForNodes(nats.url, ['fz-good']);
  });

  it('rejects bad announcements without stopping the announcer', async () => {
    const js = jetstream(nc);
    const valid = {
      type: 'chunks',
      node: 'fz',
      blob: `sha256:${'a'.repeat(64)}`,
      size: 10,
      chunkSize: 1048576,
      seq: 1,
      have: '1',
      complete: true,
    };
    let published = 0;
    await fc.assert(
      fc.asyncProperty(payloads(valid), async (data) => {
        try {
          await js.publish(subjects.announce('fz'), data);
          published++;
        } catch {
          // The stream refuses what is larger than NATS allows; that is NATS doing its job.
        }
        sent++;
      }),
      { numRuns: RUNS },
    );
    await waitFor(
      async () => {
        const m = await control.announcer.metrics();
        const handled =
          metricSum(m, 'shoal_announcer_announcements_applied_total') +
          metricSum(m, 'shoal_announcer_announcements_rejected_total') +
          metricSum(m, 'shoal_announcer_announcements_stale_total');
        return handled >= published;
      },
      { timeoutMs: 30_000, what: 'the announcer to work through every fuzzed announcement' },
    );
    expect(
      metricSum(await control.announcer.metrics(), 'shoal_announcer_announcements_rejected_total'),
    ).toBeGreaterThan(0);
    await alive();
  });

  it('answers bad schedule requests with an error, and a good one with a plan', async () => {
    const valid = {
      v: 1,
      node: 'fz',
      blob: `sha256:${'b'.repeat(64)}`,
      size: 3 * 1048576,
      chunkSize: 1048576,
      need: [0, 1, 2],
      avoid: [],
    };
    let errors = 0;
    await fc.assert(
      fc.asyncProperty(payloads(valid), async (data) => {
        sent++;
        try {
          const reply = await nc.request(subjects.schedule, data, { timeout: 5_000 });
          const answer = reply.json<{ ok: boolean }>();
          if (!answer.ok) errors++;
        } catch (err) {
          // Only NATS itself may refuse (a payload above its limit); the scheduler must always answer.
          expect(String(err)).toMatch(/MAX_PAYLOAD|payload/i);
        }
      }),
      { numRuns: RUNS },
    );
    expect(errors).toBeGreaterThan(0);
    const good = await nc.request(subjects.schedule, encoder.encode(JSON.stringify(valid)), {
      timeout: 5_000,
    });
    expect(good.json<{ ok: boolean }>().ok).toBe(true);
    await alive();
  });
});
