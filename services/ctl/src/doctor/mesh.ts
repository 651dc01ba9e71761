/**
 * Checks of NATS and the control services: each judgement is a pure function of what a probe found, so
 * it can be tested without a mesh; the probes beside them are the only parts that talk to NATS.
 */
import type { JetStreamAccountStats, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  buckets,
  consumers,
  decode,
  encode,
  type EndpointRecord,
  formatBytes,
  type NodeRecord,
  type ScheduleReply,
  scheduleReply,
  streams,
  subjects,
} from '@shoal/mesh';
import { formatAge } from '../nodes.js';
import { checkOf, type CheckResult, formatSeconds } from './checklist.js';

export const sections = {
  nats: 'NATS',
  services: 'Control services',
  agents: 'Agents',
  runtime: 'containerd on this machine',
  registries: 'Registry endpoints',
} as const;

const RESTART_SERVICES =
  'start discovery, announcer and scheduler (they create them at start), or read their logs for JetStream errors';

export function judgeConnection(
  servers: readonly string[],
  outcome: { version: string } | { error: string },
) {
  const check = checkOf('nats', sections.nats, 'NATS reachable');
  if ('error' in outcome) {
    return check.fail(
      outcome.error,
      `check --nats-servers (now ${servers.join(',')}) and the credentials and TLS options, and that nats-server runs and is reachable from here`,
    );
  }
  return check.ok(`${servers.join(',')} (nats-server ${outcome.version})`);
}

export function judgeJetStream(outcome: JetStreamAccountStats | { error: string }): CheckResult {
  const check = checkOf('jetstream', sections.nats, 'JetStream enabled');
  if ('error' in outcome) {
    return check.fail(
      `the JetStream API does not answer: ${outcome.error}`,
      'run nats-server with JetStream on (-js, or a jetstream {} block in its configuration) and enabled for the account Shoal uses',
    );
  }
  return check.ok(
    `${outcome.streams} streams, ${outcome.consumers} consumers, ${formatBytes(outcome.storage)} stored`,
  );
}

/** The KV stream behind a bucket. */
export const bucketStream = (bucket: string) => `KV_${bucket}`;

/** Whether the streams and buckets Shoal uses exist, given the names of the account's streams. */
export function judgeStreams(existing: ReadonlySet<string>): CheckResult[] {
  const wantedStreams = Object.values(streams);
  const wantedBuckets = Object.values(buckets);
  const missingStreams = wantedStreams.filter((s) => !existing.has(s));
  const missingBuckets = wantedBuckets.filter((b) => !existing.has(bucketStream(b)));
  const streamCheck = checkOf('streams', sections.nats, 'streams');
  const bucketCheck = checkOf('buckets', sections.nats, 'KV buckets');
  return [
    missingStreams.length
      ? streamCheck.fail(`missing: ${missingStreams.join(', ')}`, RESTART_SERVICES)
      : streamCheck.ok(wantedStreams.join(', ')),
    missingBuckets.length
      ? bucketCheck.fail(`missing: ${missingBuckets.join(', ')}`, RESTART_SERVICES)
      : bucketCheck.ok(wantedBuckets.join(', ')),
  ];
}

/** Discovery is judged by its work: it stamps heartbeats, removes silent nodes, rechecks endpoints. */
export function judgeDiscovery(
  nodes: readonly NodeRecord[],
  registries: readonly EndpointRecord[],
  now: number,
  freshMs = 60_000,
): CheckResult {
  const check = checkOf('discovery', sections.services, 'discovery');
  const latestEndpointCheck = Math.max(0, ...registries.map((r) => r.checkedAt));
  const endpointsNote =
    latestEndpointCheck > 0
      ? `; registry endpoints last checked ${formatAge(now - latestEndpointCheck)} ago`
      : '';
  if (nodes.length === 0) {
    return check.warn(
      `no agents registered, so heartbeats cannot tell whether discovery runs${endpointsNote}`,
      "start the agents (the chart's DaemonSet); if they run, check that discovery runs and that both reach NATS",
    );
  }
  const latest = Math.max(...nodes.map((n) => n.seenAt));
  if (now - latest > freshMs) {
    return check.fail(
      `no heartbeat recorded for ${formatAge(now - latest)}, yet ${nodes.length} node records remain (discovery removes silent nodes): discovery is not running${endpointsNote}`,
      "start discovery (`shoal discovery`, the chart's discovery Deployment) or read its log: it must reach NATS",
    );
  }
  return check.ok(
    `${nodes.length} node${nodes.length === 1 ? '' : 's'} registered, latest heartbeat recorded ${formatAge(now - latest)} ago`,
  );
}

export type SchedulerAnswer =
  | { kind: 'reply'; ms: number; reply: ScheduleReply }
  | { kind: 'no-responders' }
  | { kind: 'timeout'; ms: number }
  | { kind: 'error'; message: string };

/** A node ID no agent uses, so the probe's request cannot disturb a real node's plan. */
export const probeNode = 'shoalctl-doctor';
/** A digest no layer has (the sha256 of "shoalctl doctor"): the request plans nothing. */
export const probeBlob = 'sha256:21690d2fc2f9ce1f9935d0f49388393174b7312947b842f86437b9213a72348d';

/**
 * Sends a request that asks for nothing: an empty `need` for a blob of size 0, from a node no agent
 * uses. Any reply proves a scheduler is subscribed and answering.
 */
export async function probeScheduler(nc: NatsConnection, timeoutMs: number): Promise<SchedulerAnswer> {
  const request = { v: 1, node: probeNode, blob: probeBlob, size: 0, chunkSize: 1024 * 1024, need: [] };
  const started = performance.now();
  let data: Uint8Array;
  try {
    data = (await nc.request(subjects.schedule, encode(request), { timeout: timeoutMs })).data;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (/no responders/i.test(message)) return { kind: 'no-responders' };
    if (/timeout/i.test(message)) return { kind: 'timeout', ms: timeoutMs };
    return { kind: 'error', message };
  }
  const ms = Math.round(performance.now() - started);
  try {
    return { kind: 'reply', ms, reply: decode(scheduleReply, data, 'schedule reply') };
  } catch (err) {
    return { kind: 'error', message: err instanceof Error ? err.message : String(err) };
  }
}

export function judgeScheduler(answer: SchedulerAnswer): CheckResult {
  const check = checkOf('scheduler', sections.services, 'scheduler');
  switch (answer.kind) {
    case 'reply':
      return answer.reply.ok
        ? check.ok(`answered a schedule request in ${answer.ms} ms (${answer.reply.scheduler})`)
        : check.warn(
            `answered in ${answer.ms} ms but refused the request: ${answer.reply.error.message}`,
            "read the scheduler's log, which says why it refused; a scheduler just started may not be ready yet",
          );
    case 'no-responders':
      return check.fail(
        `no scheduler is running: nobody answers ${subjects.schedule}, so every agent pulls from the registry`,
        'start the scheduler (`shoal scheduler`, the chart\'s scheduler Deployment); a replica answers only once its index is loaded, so read its log for "index loaded"',
      );
    case 'timeout':
      return check.fail(
        `a scheduler is subscribed but did not answer within ${formatSeconds(answer.ms)}`,
        "read the scheduler's log and shoal_scheduler_decision_duration_seconds: it may be overloaded or stuck; agents fall back to the registry meanwhile",
      );
    case 'error':
      return check.fail(
        `the schedule request failed: ${answer.message}`,
        "check that this shoalctl and the scheduler are of the same release, and read the scheduler's log",
      );
  }
}

export type AnnouncerFacts =
  | { kind: 'missing' }
  | {
      kind: 'consumer';
      /** Announcements not yet delivered to any announcer. */
      pending: number;
      /** Delivered and being applied, not yet acknowledged. */
      ackPending: number;
      /** Pull requests announcers have waiting: a running announcer keeps some. */
      waiting: number;
    };

export async function probeAnnouncer(jsm: JetStreamManager): Promise<AnnouncerFacts> {
  try {
    const info = await jsm.consumers.info(streams.announce, consumers.announcer);
    return {
      kind: 'consumer',
      pending: info.num_pending,
      ackPending: info.num_ack_pending,
      waiting: info.num_waiting,
    };
  } catch (err) {
    if (/not found/i.test(err instanceof Error ? err.message : String(err))) return { kind: 'missing' };
    throw err;
  }
}

export function judgeAnnouncer(facts: AnnouncerFacts, backlog = 1000): CheckResult {
  const check = checkOf('announcer', sections.services, 'announcer');
  const start =
    "start the announcer (`shoal announcer`, the chart's announcer Deployment) or read its log: it must reach NATS";
  if (facts.kind === 'missing') {
    return check.fail(
      `its durable consumer ${consumers.announcer} on ${streams.announce} does not exist: no announcer has run against this NATS`,
      start,
    );
  }
  const queued = `${facts.pending} announcement${facts.pending === 1 ? '' : 's'} waiting, ${facts.ackPending} being applied`;
  if (facts.waiting === 0 && facts.pending > 0) {
    return check.fail(
      `${queued}, and no announcer is pulling them: agents' chunks stay unknown to the mesh`,
      start,
    );
  }
  if (facts.pending > backlog) {
    return check.warn(
      `${queued}: the announcer is falling behind, so new chunks reach the mesh late`,
      'add announcer replicas or raise consumer.concurrency, and read its log for slow or failing writes',
    );
  }
  if (facts.waiting === 0) {
    return check.warn(`${queued}; no announcer is pulling from ${consumers.announcer} right now`, start);
  }
  return check.ok(`${queued} (consumer ${consumers.announcer})`);
}
