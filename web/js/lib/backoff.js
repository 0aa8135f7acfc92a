// Reconnect delays: exponential with full jitter and a cap. Pure (the random source is a
// parameter), so the schedule is testable.

export const DEFAULT_BACKOFF = Object.freeze({ baseMs: 250, maxMs: 8000, factor: 2 });

/**
 * Delay before reconnect attempt `attempt` (0 = first retry). The upper bound grows
 * base * factor^attempt up to maxMs; the delay is uniform in [bound/2, bound] so that many
 * clients dropped by one restart do not come back in lockstep, and never waits less than half.
 */
export function backoffDelay(attempt, random = Math.random, opts = DEFAULT_BACKOFF) {
  const n = Math.max(0, Math.floor(Number(attempt) || 0));
  const bound = Math.min(opts.maxMs, opts.baseMs * opts.factor ** Math.min(n, 30));
  const r = Math.min(1, Math.max(0, Number(random()) || 0));
  return Math.round(bound / 2 + (bound / 2) * r);
}
