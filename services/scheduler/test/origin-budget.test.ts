import { describe, expect, it } from 'vitest';
import type { OriginLeases } from '../src/grants.js';
import { OriginBudget, OriginShares } from '../src/origin-budget.js';

describe('OriginBudget', () => {
  it('grows by one per origin chunk that arrives in time, up to its maximum', () => {
    const budget = new OriginBudget({ min: 2, max: 10, targetMs: 5_000, start: 8 });
    for (let i = 0; i < 5; i++) budget.arrived(800, i);
    expect(budget.limit).toBe(10);
  });

  it('shrinks by a third for a late chunk, once per target time, down to its minimum', () => {
    const budget = new OriginBudget({ min: 4, max: 64, targetMs: 5_000, start: 30 });
    budget.arrived(9_000, 0);
    expect(budget.limit).toBe(20);
    // Chunks granted under the larger budget report late too; they do not cut it again at once.
    budget.arrived(9_000, 1_000);
    budget.arrived(12_000, 4_999);
    expect(budget.limit).toBe(20);
    budget.arrived(9_000, 5_000);
    expect(budget.limit).toBe(13);
    for (let t = 10_000; t < 60_000; t += 5_000) budget.arrived(9_000, t);
    expect(budget.limit).toBe(4);
    budget.arrived(100, 60_001);
    expect(budget.limit).toBe(5);
  });

  it('starts within its bounds', () => {
    expect(new OriginBudget({ min: 4, max: 16, targetMs: 1 }).limit).toBe(16);
    expect(new OriginBudget({ min: 40, max: 64, targetMs: 1, start: 8 }).limit).toBe(40);
  });
});

describe('OriginShares', () => {
  const shares = (budget = 32) =>
    new OriginShares({ start: 4, budget: () => budget, targetMs: 5_000, waitingMs: 5_000 });
  /** Origin leases held: by `holders` (one each unless `total` says more), `held` of them by the asker. */
  const live = (holders: string[] = [], held = 0, total = holders.length): OriginLeases => ({
    total,
    held,
    holders: new Set(holders),
  });
  const none = live();

  it('lets a node hold `start` leases at first, however large the budget', () => {
    expect(shares().share('n1', none, 0)).toBe(4);
    expect(shares(2).share('n1', none, 0)).toBe(2);
  });

  it("raises a node's own limit with each of its chunks that arrives in time, up to the budget", () => {
    const s = shares(10);
    for (let i = 0; i < 3; i++) s.arrived('n1', 300, i);
    expect(s.share('n1', none, 10)).toBe(7);
    expect(s.share('n2', none, 10)).toBe(4);
    for (let i = 0; i < 10; i++) s.arrived('n1', 300, 20 + i);
    expect(s.share('n1', none, 40)).toBe(10);
  });

  it('cuts the limit by a third for a late chunk, once per target time, not below start', () => {
    const s = shares();
    for (let i = 0; i < 20; i++) s.arrived('n1', 300, i);
    expect(s.share('n1', none, 100)).toBe(24);
    s.arrived('n1', 9_000, 100);
    s.arrived('n1', 9_000, 200);
    expect(s.share('n1', none, 300)).toBe(16);
    for (let t = 5_100; t < 40_000; t += 5_000) s.arrived('n1', 9_000, t);
    expect(s.share('n1', none, 40_000)).toBe(4);
    expect(s.size.limits).toBe(0);
  });

  it('shares the budget among the nodes holding origin leases and those told to wait for one', () => {
    const s = shares(12);
    for (let i = 0; i < 20; i++) s.arrived('n1', 300, i);
    expect(s.share('n1', live(['n1']), 100)).toBe(12);
    // Two other holders and the asking node: 12 / 3.
    expect(s.share('n1', live(['n1', 'n2', 'n3']), 100)).toBe(4);
    // Waiting nodes count once, holders or not.
    s.waited('n3', 100);
    s.waited('n4', 100);
    s.waited('n5', 100);
    expect(s.share('n1', live(['n1', 'n2', 'n3']), 200)).toBe(3);
    expect(s.contenders).toBe(5);
    // The asking node counts even before it holds or waits for anything.
    expect(s.share('n6', live(['n1', 'n2', 'n3']), 200)).toBe(2);
    expect(s.contenders).toBe(6);
    // A waiting node asking is counted once.
    expect(s.share('n4', live(['n1', 'n2', 'n3']), 200)).toBe(3);
    expect(s.contenders).toBe(5);
    // Never below one lease, however many wait.
    for (let i = 0; i < 40; i++) s.waited(`w${i}`, 300);
    expect(s.share('n1', live(['n1']), 400)).toBe(1);
  });

  it('gives a node holding leases no more while nodes holding none wait and the budget has no room for them', () => {
    const s = shares(12);
    for (let i = 0; i < 20; i++) s.arrived('n1', 300, i);
    s.waited('n2', 100);
    s.waited('n3', 100);
    // 3 contenders, a share of 4; n1 holds 2 of the 9 leases held: room for both waiters, n1 may widen.
    expect(s.share('n1', live(['n1', 'h1', 'h2'], 2, 9), 200)).toBe(3);
    // 11 held: room for one of the two, so n1 stays at what it holds.
    expect(s.share('n1', live(['n1', 'h1', 'h2'], 2, 11), 200)).toBe(2);
    // A node holding none is not held back by the rule.
    expect(s.share('n2', live(['n1', 'h1', 'h2'], 0, 11), 200)).toBe(3);
  });

  it('stops counting a node as waiting once it has not been told to for waitingMs', () => {
    const s = shares(12);
    for (let i = 0; i < 20; i++) s.arrived('n1', 300, i);
    s.waited('n2', 1_000);
    s.waited('n3', 3_000);
    expect(s.share('n1', none, 3_000)).toBe(4);
    expect(s.share('n1', none, 6_001)).toBe(6);
    // Told again: counted again, from then.
    s.waited('n2', 6_500);
    expect(s.share('n1', none, 8_001)).toBe(6);
    expect(s.share('n1', none, 11_501)).toBe(12);
    expect(s.size.waiting).toBe(0);
  });

  it('forgets the limit of a node whose chunks stopped arriving, whether or not others arrive', () => {
    const s = shares();
    for (let i = 0; i < 10; i++) s.arrived('n1', 300, i);
    expect(s.share('n1', none, 10)).toBe(14);
    // A rollout later, n1 is the first to ask: it starts over rather than take the budget.
    expect(s.share('n1', none, 120_000)).toBe(4);
    expect(s.size.limits).toBe(0);
    for (let i = 0; i < 10; i++) s.arrived('n1', 300, 130_000 + i);
    s.arrived('n2', 300, 250_000);
    expect(s.size.limits).toBe(1);
  });
});
