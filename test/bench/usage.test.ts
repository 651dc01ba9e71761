/** The swarm benchmark's CPU accounting, read from /proc. */
import { describe, expect, it } from 'vitest';
import { runCommand } from '../kit/index.js';
import { endedChildrenCpuSeconds, machineSeconds, machineTicks } from './usage.js';

describe('swarm benchmark CPU accounting', () => {
  it('splits the machine busy time by kind, in CPU seconds', async () => {
    const before = await machineTicks();
    const after = {
      ...before,
      busy: before.busy + 250,
      user: before.user + 150,
      interrupts: before.interrupts + 40,
    };
    expect(machineSeconds(before, after)).toEqual({
      busy: 2.5,
      user: 1.5,
      system: 0,
      interrupts: 0.4,
      steal: 0,
    });
    const reading = await machineTicks();
    expect(reading.busy).toBe(reading.user + reading.system + reading.interrupts + reading.steal);
    expect(reading.total).toBeGreaterThan(reading.busy);
  });

  it('counts what a child that has ended spent', async () => {
    const before = await endedChildrenCpuSeconds();
    const burn = await runCommand(process.execPath, [
      '-e',
      // 400 ms of CPU, however long a busy machine takes to give it.
      'let x = 0; while (process.cpuUsage().user + process.cpuUsage().system < 400_000) x++;',
    ]);
    expect(burn.ok).toBe(true);
    const spent = (await endedChildrenCpuSeconds()) - before;
    expect(spent).toBeGreaterThanOrEqual(0.3);
    expect(spent).toBeLessThan(5);
  });
});
