/** The swarm benchmark's CPU accounting, read from /proc. */
import { closeSync, openSync, writeSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runCommand } from '../kit/index.js';
import { endedChildrenCpuSeconds, machineSeconds, machineTicks, processUsage } from './usage.js';

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

  it("tells a process's kernel time from its user time", async () => {
    // Small writes to /dev/null: little user time, a system call each.
    const fd = openSync('/dev/null', 'w');
    const chunk = Buffer.alloc(16);
    try {
      while (process.cpuUsage().system < 300_000) for (let i = 0; i < 1000; i++) writeSync(fd, chunk);
    } finally {
      closeSync(fd);
    }
    const before = process.cpuUsage();
    const usage = await processUsage(process.pid);
    const after = process.cpuUsage();
    // /proc counts whole 10 ms ticks; other threads of this process may run between the readings.
    const tick = 0.01;
    expect(usage).toBeDefined();
    expect(usage!.kernelSeconds).toBeGreaterThanOrEqual(before.system / 1e6 - tick);
    expect(usage!.kernelSeconds).toBeLessThanOrEqual(after.system / 1e6 + tick);
    expect(usage!.cpuSeconds - usage!.kernelSeconds).toBeGreaterThanOrEqual(before.user / 1e6 - tick);
    expect(usage!.cpuSeconds - usage!.kernelSeconds).toBeLessThanOrEqual(after.user / 1e6 + tick);
    expect(await processUsage(2 ** 22 + 1)).toBeUndefined();
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
