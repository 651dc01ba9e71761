import { describe, expect, it } from 'vitest';
import { OriginBudget } from '../src/origin-budget.js';

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
