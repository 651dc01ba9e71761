/**
 * An emulated cluster network built from Linux network namespaces, for the swarm benchmark: one
 * namespace per host (the registry host and every node host) and one "fabric" namespace holding the
 * switches. Each vSwitch is a bridge; the vSwitch bridges of a zone hang off the zone's bridge, and the
 * zone bridges and the registry host off a core bridge, all in one IPv4 /16, so hosts reach each other
 * without routes.
 *
 * Bandwidth is shaped with tbf on the egress of veth ends, which needs no ifb: a host's upload is the
 * egress of its own end, its download the egress of the fabric's end towards it; traffic leaving a zone
 * is the egress of the zone bridge's link to the core; the registry's egress is its own end's egress.
 * There is no delay emulation (netem is not available here).
 *
 * Every namespace created is recorded and removed by `destroy()` (which deleting a namespace does for
 * its veth ends and qdiscs too); names carry a per-run tag so runs never collide with each other or
 * with anything else on the machine.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { runCommand } from '../../kit/index.js';

export interface NetworkShape {
  zones: number;
  vswitchesPerZone: number;
  nodesPerVswitch: number;
  /** Per node host, each direction. */
  nodeMbit: number;
  /** The registry host's egress. */
  registryMbit: number;
  /** Traffic leaving each zone for the core (other zones and the registry host); 0: unshaped. */
  crossZoneMbit: number;
}

export interface Host {
  /** The namespace's name, for `ip netns exec`. */
  ns: string;
  ip: string;
  zone: string;
  vswitch: string;
}

/** What the emulated network lost, summed over every namespace; counters since the network was built. */
export interface NetworkLoss {
  /** Packets the shaping queues dropped because they were full. */
  queueDrops: number;
  /** TCP segments the hosts sent again. */
  retransmittedSegments: number;
  /** Times a host's TCP waited out its retransmission timeout (no acknowledgement, no fast recovery). */
  retransmissionTimeouts: number;
}

export interface Network {
  readonly registry: Host;
  readonly nodes: Host[];
  /** Argv prefix that runs a command inside a host's namespace. */
  exec(host: Host, cmd: string, args: readonly string[]): [string, string[]];
  /** Bytes sent so far on the zone's link towards the core (its cross-zone and registry-bound traffic). */
  zoneEgressBytes(zone: number): Promise<number>;
  /** Bytes the registry host has sent so far. */
  registryEgressBytes(): Promise<number>;
  /** Drops and TCP retransmissions so far, to tell a lossy network from a slow or silent peer. */
  loss(): Promise<NetworkLoss>;
  destroy(): Promise<void>;
  /** Removes every namespace at once and synchronously, for exit and signal handlers. */
  destroyNow(): void;
}

const live = new Set<Network>();
let hooked = false;

/**
 * Removes every network still up when the process exits or is interrupted. Synchronously: an exit
 * handler cannot wait, and a signal may be followed by a harder one before anything asynchronous ran.
 */
function hookCleanup(): void {
  if (hooked) return;
  hooked = true;
  const cleanup = () => {
    for (const network of [...live]) network.destroyNow();
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      cleanup();
      process.exit(130);
    });
  }
  process.once('exit', cleanup);
}

async function ip(args: string[]): Promise<string> {
  const result = await runCommand('ip', args, { timeoutMs: 30_000 });
  if (!result.ok) throw new Error(`ip ${args.join(' ')}: ${result.stderr.trim() || `exit ${result.code}`}`);
  return result.stdout;
}

async function tc(args: string[]): Promise<void> {
  const result = await runCommand('tc', args, { timeoutMs: 30_000 });
  if (!result.ok) throw new Error(`tc ${args.join(' ')}: ${result.stderr.trim() || `exit ${result.code}`}`);
}

/**
 * Token-bucket shaping of an interface's egress at `mbit`: a burst of 1 ms at that rate (at least 32 KiB,
 * so one TSO segment always fits) and 50 ms of queue, which keeps TCP near the rate without a standing
 * queue that would smear completion times.
 */
async function shape(ns: string, dev: string, mbit: number): Promise<void> {
  const bytesPerSecond = (mbit * 1e6) / 8;
  const burst = Math.max(32 * 1024, Math.round(bytesPerSecond / 1000));
  await tc([
    '-n',
    ns,
    'qdisc',
    'replace',
    'dev',
    dev,
    'root',
    'tbf',
    'rate',
    `${mbit}mbit`,
    'burst',
    String(burst),
    'latency',
    '50ms',
  ]);
}

async function txBytes(ns: string, dev: string): Promise<number> {
  const out = await ip(['-n', ns, '-s', '-j', 'link', 'show', 'dev', dev]);
  const parsed = JSON.parse(out) as { stats64?: { tx?: { bytes?: number } } }[];
  return parsed[0]?.stats64?.tx?.bytes ?? 0;
}

/** Packets dropped by every qdisc of a namespace. */
async function queueDrops(ns: string): Promise<number> {
  const result = await runCommand('tc', ['-n', ns, '-s', '-j', 'qdisc', 'show'], { timeoutMs: 30_000 });
  if (!result.ok)
    throw new Error(`tc -n ${ns} -s qdisc show: ${result.stderr.trim() || `exit ${result.code}`}`);
  const qdiscs = JSON.parse(result.stdout) as { drops?: number }[];
  return qdiscs.reduce((sum, q) => sum + (q.drops ?? 0), 0);
}

/**
 * One counter of a namespace's /proc/net/snmp or /proc/net/netstat, whose lines come in pairs: a
 * header (`Tcp: RtoAlgorithm … RetransSegs …`) and the values in the same order.
 */
export function netCounter(text: string, group: string, name: string): number {
  const lines = text.split('\n').filter((l) => l.startsWith(`${group}: `));
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const column = lines[i]!.split(/\s+/).indexOf(name);
    if (column > 0) return Number(lines[i + 1]!.split(/\s+/)[column]);
  }
  throw new Error(`no ${group} ${name} counter`);
}

async function tcpLoss(
  ns: string,
): Promise<{ retransmittedSegments: number; retransmissionTimeouts: number }> {
  const result = await runCommand('ip', ['netns', 'exec', ns, 'cat', '/proc/net/snmp', '/proc/net/netstat'], {
    timeoutMs: 30_000,
  });
  if (!result.ok)
    throw new Error(`reading ${ns}'s TCP counters: ${result.stderr.trim() || `exit ${result.code}`}`);
  return {
    retransmittedSegments: netCounter(result.stdout, 'Tcp', 'RetransSegs'),
    retransmissionTimeouts: netCounter(result.stdout, 'TcpExt', 'TCPTimeouts'),
  };
}

export async function buildNetwork(shape_: NetworkShape): Promise<Network> {
  hookCleanup();
  const tag = randomBytes(2).toString('hex');
  const namespaces: string[] = [];
  const fabric = `shoal-${tag}-fab`;
  let destroyed = false;

  const addNs = async (name: string) => {
    await ip(['netns', 'add', name]);
    namespaces.push(name);
    await ip(['-n', name, 'link', 'set', 'lo', 'up']);
  };
  const addBridge = async (name: string) => {
    await ip(['-n', fabric, 'link', 'add', name, 'type', 'bridge']);
    await ip(['-n', fabric, 'link', 'set', name, 'up']);
  };
  /** A veth between two bridges of the fabric; returns the end on `from`'s side. */
  const linkBridges = async (from: string, to: string, index: number) => {
    const a = `l${index}a`;
    const b = `l${index}b`;
    await ip(['-n', fabric, 'link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
    await ip(['-n', fabric, 'link', 'set', a, 'master', from, 'up']);
    await ip(['-n', fabric, 'link', 'set', b, 'master', to, 'up']);
    return a;
  };
  /** A host namespace with one veth into `bridge`, its download shaped on the fabric's end. */
  const addHost = async (name: string, index: number, bridge: string, ipAddress: string) => {
    await addNs(name);
    const inside = 'eth0';
    const outside = `h${index}`;
    await ip(['-n', fabric, 'link', 'add', outside, 'type', 'veth', 'peer', 'name', inside, 'netns', name]);
    await ip(['-n', fabric, 'link', 'set', outside, 'master', bridge, 'up']);
    await ip(['-n', name, 'addr', 'add', `${ipAddress}/16`, 'dev', inside]);
    await ip(['-n', name, 'link', 'set', inside, 'up']);
    return { inside, outside };
  };

  const network: Network = {
    registry: { ns: `shoal-${tag}-reg`, ip: '10.77.0.2', zone: '', vswitch: '' },
    nodes: [],
    exec(host, cmd, args) {
      return ['ip', ['netns', 'exec', host.ns, cmd, ...args]];
    },
    async zoneEgressBytes(zone) {
      return txBytes(fabric, `l${zone}a`);
    },
    async registryEgressBytes() {
      return txBytes(network.registry.ns, 'eth0');
    },
    async loss() {
      const hosts = [network.registry, ...network.nodes].map((h) => h.ns);
      const [drops, tcp] = await Promise.all([
        Promise.all([fabric, ...hosts].map(queueDrops)),
        Promise.all(hosts.map(tcpLoss)),
      ]);
      return {
        queueDrops: drops.reduce((a, b) => a + b, 0),
        retransmittedSegments: tcp.reduce((a, t) => a + t.retransmittedSegments, 0),
        retransmissionTimeouts: tcp.reduce((a, t) => a + t.retransmissionTimeouts, 0),
      };
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      live.delete(network);
      // Deleting a namespace removes its veth ends (and so their peers) and qdiscs with it.
      for (const name of [...namespaces].reverse()) await runCommand('ip', ['netns', 'del', name]);
    },
    destroyNow() {
      if (destroyed) return;
      destroyed = true;
      live.delete(network);
      for (const name of [...namespaces].reverse())
        spawnSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    },
  };
  live.add(network);

  try {
    await addNs(fabric);
    await addBridge('core');
    let hostIndex = 0;
    const registry = await addHost(network.registry.ns, hostIndex++, 'core', network.registry.ip);
    await shape(network.registry.ns, registry.inside, shape_.registryMbit);
    for (let z = 0; z < shape_.zones; z++) {
      const zoneBridge = `z${z}`;
      await addBridge(zoneBridge);
      const uplink = await linkBridges(zoneBridge, 'core', z);
      if (shape_.crossZoneMbit > 0) await shape(fabric, uplink, shape_.crossZoneMbit);
      for (let v = 0; v < shape_.vswitchesPerZone; v++) {
        const vswitch = `z${z}v${v}`;
        await addBridge(vswitch);
        await linkBridges(vswitch, zoneBridge, 1000 + z * 100 + v);
        for (let n = 0; n < shape_.nodesPerVswitch; n++) {
          const ordinal = network.nodes.length;
          const host: Host = {
            ns: `shoal-${tag}-n${ordinal}`,
            ip: `10.77.${1 + z * 16 + v}.${10 + n}`,
            zone: `zone-${z}`,
            vswitch: `zone-${z}-vsw-${v}`,
          };
          const ends = await addHost(host.ns, hostIndex++, vswitch, host.ip);
          await shape(host.ns, ends.inside, shape_.nodeMbit);
          await shape(fabric, ends.outside, shape_.nodeMbit);
          network.nodes.push(host);
        }
      }
    }
  } catch (err) {
    await network.destroy();
    throw err;
  }
  return network;
}
