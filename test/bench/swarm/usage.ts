/** What processes and the machine spent, read from /proc: CPU seconds, peak RSS, busy fraction. */
import { readFile } from 'node:fs/promises';

/** Clock ticks per second of /proc's CPU times (USER_HZ), 100 on every Linux this runs on. */
const TICKS = 100;

export interface ProcessUsage {
  cpuSeconds: number;
  peakRssBytes: number;
}

/** CPU seconds (user + system, all threads) and peak RSS of a live process; undefined once it is gone. */
export async function processUsage(pid: number): Promise<ProcessUsage | undefined> {
  try {
    const [stat, status] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile(`/proc/${pid}/status`, 'utf8'),
    ]);
    // Fields after the command name, which is in parentheses and may hold spaces: state is field 3,
    // utime 14 and stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(status);
    return { cpuSeconds: ticks / TICKS, peakRssBytes: Number(hwm?.[1] ?? 0) * 1024 };
  } catch {
    return undefined;
  }
}

/** The machine's CPU time counters: busy and total ticks over all cores since boot. */
export async function machineTicks(): Promise<{ busy: number; total: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.split(/\s+/).slice(1).map(Number);
  const busy = (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0);
  return { busy, total: busy + (idle ?? 0) + (iowait ?? 0) };
}
