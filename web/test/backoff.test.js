import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, DEFAULT_BACKOFF } from '../js/lib/backoff.js';

test('grows exponentially within jitter bounds and caps', () => {
  const opts = DEFAULT_BACKOFF;
  for (let attempt = 0; attempt < 12; attempt++) {
    const bound = Math.min(opts.maxMs, opts.baseMs * 2 ** attempt);
    assert.equal(backoffDelay(attempt, () => 0), Math.round(bound / 2));
    assert.equal(backoffDelay(attempt, () => 1), bound);
    const mid = backoffDelay(attempt, () => 0.5);
    assert.ok(mid >= bound / 2 && mid <= bound);
  }
  assert.equal(backoffDelay(100, () => 1), opts.maxMs);
});

test('first retry is quick', () => {
  assert.ok(backoffDelay(0, () => 1) <= 250);
});

test('odd inputs are safe', () => {
  assert.equal(backoffDelay(-3, () => 1), 250);
  assert.equal(backoffDelay(Number.NaN, () => 1), 250);
  assert.equal(backoffDelay(0, () => 7), 250);
  assert.equal(backoffDelay(0, () => Number.NaN), 125);
});
