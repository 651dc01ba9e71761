/**
 * The emulated network of the swarm benchmark: hosts in their zones and vSwitches reach each other, the
 * shaping is in place where the design says, bytes are counted on the zone uplinks, and nothing is left
 * behind. Rates themselves are the benchmark's business, not a test's.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCommand, startProcess } from '../../kit/index.js';
import { buildNetwork, netCounter, type Host, type Network } from './network.js';

const namespaces = async () => (await runCommand('ip', ['netns', 'list'])).stdout;

/** A TCP server in `host` that counts what it receives and answers "ok"; stopped by PID. */
async function listen(network: Network, host: Host) {
  const script =
    "require('net').createServer((s) => { s.on('data', () => {}); s.on('end', () => s.end('ok')); })" +
    ".listen(7000, '0.0.0.0', () => console.log('listening'))";
  const [cmd, args] = network.exec(host, process.execPath, ['-e', script]);
  const server = await startProcess({ name: `listener-${host.ns}`, cmd, args });
  await server.waitForLine(/listening/, 10_000);
  return server;
}

/** Sends `bytes` from `from` to the listener on `to`, and returns what came back. */
async function send(network: Network, from: Host, to: Host, bytes: number) {
  const script =
    `const s = require('net').connect(7000, '${to.ip}', () => s.end(Buffer.alloc(${bytes})));` +
    "let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => { process.stdout.write(got); });" +
    "s.on('error', (e) => { console.error(e.message); process.exit(1); });";
  const [cmd, args] = network.exec(from, process.execPath, ['-e', script]);
  return runCommand(cmd, args, { timeoutMs: 20_000 });
}

describe('emulated cluster network', () => {
  let network: Network;

  beforeAll(async () => {
    network = await buildNetwork({
      zones: 2,
      vswitchesPerZone: 1,
      nodesPerVswitch: 2,
      nodeMbit: 40,
      registryMbit: 80,
      crossZoneMbit: 20,
    });
  });

  afterAll(async () => {
    await network?.destroy();
  });

  it('places hosts in zones and vSwitches, each reachable from every other', async () => {
    expect(network.nodes.map((n) => `${n.zone}/${n.vswitch}`)).toEqual([
      'zone-0/zone-0-vsw-0',
      'zone-0/zone-0-vsw-0',
      'zone-1/zone-1-vsw-0',
      'zone-1/zone-1-vsw-0',
    ]);
    const [first, second, third] = network.nodes;
    for (const [from, to] of [
      [first!, network.registry],
      [second!, first!],
      [first!, third!],
      [network.registry, third!],
    ] as const) {
      const server = await listen(network, to);
      try {
        const result = await send(network, from, to, 1000);
        expect(result.stdout, `${from.ns} → ${to.ip}: ${result.stderr}`).toBe('ok');
      } finally {
        await server.stop();
      }
    }
  });

  it('shapes uploads, downloads, the registry and the zone uplinks with tbf', async () => {
    const node = network.nodes[0]!;
    const up = await runCommand('tc', ['-n', node.ns, 'qdisc', 'show', 'dev', 'eth0']);
    expect(up.stdout).toMatch(/tbf .*rate 40Mbit/);
    const registry = await runCommand('tc', ['-n', network.registry.ns, 'qdisc', 'show', 'dev', 'eth0']);
    expect(registry.stdout).toMatch(/tbf .*rate 80Mbit/);
    const fabric = network.registry.ns.replace(/-reg$/, '-fab');
    const shaped = await runCommand('tc', ['-n', fabric, 'qdisc', 'show']);
    // Two zone uplinks at the cross-zone cap, and the download side of every host.
    expect(shaped.stdout.match(/rate 20Mbit/g)).toHaveLength(2);
    expect(shaped.stdout.match(/rate 40Mbit/g)).toHaveLength(4);
  });

  it('counts the bytes that leave a zone', async () => {
    const [first, , third] = network.nodes;
    const server = await listen(network, first!);
    try {
      const before = await network.zoneEgressBytes(1);
      expect((await send(network, third!, first!, 200_000)).stdout).toBe('ok');
      expect((await network.zoneEgressBytes(1)) - before).toBeGreaterThanOrEqual(200_000);
    } finally {
      await server.stop();
    }
  });

  it('counts what the shaping queues drop and what TCP sends again', async () => {
    const [first, , third] = network.nodes;
    const server = await listen(network, first!);
    try {
      const before = await network.loss();
      // 4 MB over TCP from zone 1 into zone 0 while 2.8 MB of UDP floods the same 20 Mbit/s uplink at
      // the sender's 40 Mbit/s: the uplink's queue overflows, so some of TCP's segments are lost too.
      const script =
        `const s = require('net').connect(7000, '${first!.ip}', () => {` +
        "  const u = require('dgram').createSocket('udp4'); const b = Buffer.alloc(1400); let n = 0;" +
        `  const next = () => (n++ < 2000 ? u.send(b, 7001, '${first!.ip}', next) : u.close()); next();` +
        '  s.end(Buffer.alloc(4e6)); });' +
        "let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => process.stdout.write(got));" +
        "s.on('error', (e) => { console.error(e.message); process.exit(1); });";
      const [cmd, args] = network.exec(third!, process.execPath, ['-e', script]);
      const sent = await runCommand(cmd, args, { timeoutMs: 30_000 });
      expect(sent.stdout, sent.stderr).toBe('ok');
      const after = await network.loss();
      expect(after.queueDrops - before.queueDrops).toBeGreaterThan(0);
      expect(after.retransmittedSegments - before.retransmittedSegments).toBeGreaterThan(0);
    } finally {
      await server.stop();
    }
  });

  it('removes every namespace it made', async () => {
    const tag = network.registry.ns.replace(/-reg$/, '');
    expect(await namespaces()).toContain(tag);
    await network.destroy();
    expect(await namespaces()).not.toContain(tag);
  });
});

describe('TCP counters of a namespace', () => {
  // The two files as `cat /proc/net/snmp /proc/net/netstat` prints them, cut down: each group is a header
  // line and a line of values in the same order, and TcpExt follows Tcp.
  const proc = [
    'Ip: Forwarding DefaultTTL InReceives',
    'Ip: 1 64 1234',
    'Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets ' +
      'CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors',
    'Tcp: 1 200 120000 -1 52 40 0 3 2 98765 87654 321 0 7 0',
    'Udp: InDatagrams NoPorts InErrors OutDatagrams',
    'Udp: 10 2 0 12',
    'TcpExt: SyncookiesSent SyncookiesRecv TCPTimeouts TCPLossProbes',
    'TcpExt: 0 0 17 9',
    'MPTcpExt: MPCapableSYNRX TCPTimeouts',
    'MPTcpExt: 0 99',
  ].join('\n');

  it('reads a counter by its column in its own group', () => {
    expect(netCounter(proc, 'Tcp', 'RetransSegs')).toBe(321);
    expect(netCounter(proc, 'Tcp', 'OutSegs')).toBe(87654);
    expect(netCounter(proc, 'TcpExt', 'TCPTimeouts')).toBe(17);
  });

  it('says which counter is missing', () => {
    expect(() => netCounter(proc, 'Tcp', 'TCPTimeouts')).toThrow('no Tcp TCPTimeouts counter');
  });
});

describe('an interrupted run', () => {
  it('removes its namespaces when it is interrupted', async () => {
    const script = fileURLToPath(new URL('./hold-network.ts', import.meta.url));
    const holder = await startProcess({
      name: 'hold-network',
      cmd: process.execPath,
      args: ['--import', 'tsx', script],
    });
    const ready = await holder.waitForLine(/^ready /, 30_000);
    const ns = ready.slice('ready '.length).trim();
    expect(await namespaces()).toContain(ns);
    const exit = await holder.stop('SIGINT', 10_000);
    expect(exit.code).toBe(130);
    expect(await namespaces()).not.toContain(ns.replace(/-reg$/, ''));
  });
});
