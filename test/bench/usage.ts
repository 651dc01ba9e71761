/** What processes and the machine spent, read from /proc: CPU seconds, peak RSS, busy time by kind. */
import { readFile } from 'node:fs/promises';

/** Clock ticks per second of /proc's CPU times (USER_HZ), 100 on every Linux this runs on. */
const TICKS = 100;

/**
 * Field `n` (1-based, as proc(5) numbers them) of a /proc/PID/stat line. The command name, field 2, is
 * in parentheses and may hold spaces, so fields are counted from after it.
 */
function statField(stat: string, n: number): number {
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[n - 3]);
}

export interface ProcessUsage {
  /** User and kernel time together. */
  cpuSeconds: number;
  /** The part of cpuSeconds spent in the kernel on the process's behalf (system calls, page faults). */
  kernelSeconds: number;
  peakRssBytes: number;
}

/**
 * CPU seconds (user + system, all threads), the kernel's part of them and peak RSS of a live process;
 * undefined once it is gone.
 */
export async function processUsage(pid: number): Promise<ProcessUsage | undefined> {
  try {
    const [stat, status] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile(`/proc/${pid}/status`, 'utf8'),
    ]);
    const [user, kernel] = [statField(stat, 14), statField(stat, 15)];
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(status);
    return {
      cpuSeconds: (user + kernel) / TICKS,
      kernelSeconds: kernel / TICKS,
      peakRssBytes: Number(hwm?.[1] ?? 0) * 1024,
    };
  } catch {
    return undefined;
  }
}

/**
 * The machine's CPU time counters in ticks over all cores since boot: busy and total, and the busy time
 * by kind — user space, kernel on behalf of processes, interrupts (on the emulated network, mostly the
 * softirqs that move packets through veths, bridges and qdiscs) and steal (time a virtual machine's
 * host gave to someone else).
 */
export interface MachineTicks {
  busy: number;
  total: number;
  user: number;
  system: number;
  interrupts: number;
  steal: number;
}

export async function machineTicks(): Promise<MachineTicks> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line
    .split(/\s+/)
    .slice(1)
    .map(Number);
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait, user: user + nice, system, interrupts: irq + softirq, steal };
}

/** Where the machine's CPU went between two readings, in CPU seconds. */
export function machineSeconds(
  before: MachineTicks,
  after: MachineTicks,
): { busy: number; user: number; system: number; interrupts: number; steal: number } {
  const seconds = (key: keyof MachineTicks) => (after[key] - before[key]) / TICKS;
  return {
    busy: seconds('busy'),
    user: seconds('user'),
    system: seconds('system'),
    interrupts: seconds('interrupts'),
    steal: seconds('steal'),
  };
}

/**
 * CPU seconds of this process's children that have ended and been waited for (with their own waited
 * descendants): read before and after a batch of short-lived commands, the difference is what they spent.
 */
export async function endedChildrenCpuSeconds(): Promise<number> {
  const stat = await readFile('/proc/self/stat', 'utf8');
  // cutime and cstime.
  return (statField(stat, 16) + statField(stat, 17)) / TICKS;
}
