/**
 * The ranking of candidate parents for one chunk, as pure functions of what a decision records: the
 * planner orders and chooses with these, and `shoalctl explain` re-runs them on a recorded decision, so
 * the two cannot diverge.
 */
import type { RankingRule } from './events.js';

/** What a candidate is ranked by; the planner's candidates and the recorded ones both have it. */
export interface RankInput {
  /** 0: same vSwitch, 1: same zone, 2: elsewhere. */
  tier: number;
  load: number;
  /** Place in the walk over the holders, unique within one chunk's candidates. */
  tie: number;
}

/** Best first: the nearer topology tier, then the lesser load, then the earlier place in the walk. */
export function compareCandidates(a: RankInput, b: RankInput): number {
  return a.tier - b.tier || a.load - b.load || a.tie - b.tie;
}

/**
 * Load as a decision ranks and records it: to two decimals, so that re-ranking a recorded decision
 * compares exactly the numbers the planner compared.
 */
export function rankedLoad(load: number): number {
  return Math.round(load * 100) / 100;
}

/**
 * The parent the ranking chooses among candidates (in any order), and the rule that set it apart from
 * the runner-up; undefined when there is none.
 */
export function chooseParent<T extends RankInput>(
  candidates: readonly T[],
): { parent: T; rule: RankingRule } | undefined {
  let best: T | undefined;
  let second: T | undefined;
  for (const candidate of candidates) {
    if (best === undefined || compareCandidates(candidate, best) < 0) {
      second = best;
      best = candidate;
    } else if (second === undefined || compareCandidates(candidate, second) < 0) {
      second = candidate;
    }
  }
  if (best === undefined) return undefined;
  return { parent: best, rule: decidingRule(best, second) };
}

function decidingRule(best: RankInput, runnerUp: RankInput | undefined): RankingRule {
  if (runnerUp === undefined) return 'only';
  if (best.tier !== runnerUp.tier) return 'tier';
  if (best.load !== runnerUp.load) return 'load';
  return 'tie';
}
