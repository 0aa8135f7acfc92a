// The one UI state machine (defect 3): every combination of facts gives one consistent view.
import assert from 'node:assert/strict';
import test from 'node:test';
import { VIEW_WORDS, callView, qualityView } from '../js/lib/call-view.js';

const base = { signaling: 'open', media: 'connected', peer: 'present', connectedOnce: true, mine: 'good', theirs: 'good' };

test('the other person left: no reconnecting, no quality, timer stopped', () => {
  for (const media of ['connected', 'disconnected', 'failed', 'connecting', 'none']) {
    for (const mine of ['good', 'poor']) {
      const v = callView({ ...base, peer: 'left', media, mine });
      assert.equal(v.state, 'alone', media);
      assert.equal(v.text, 'The other person left');
      assert.equal(v.quality, null);
      assert.equal(v.timer, 'stopped');
      assert.equal(v.stage, 'alone');
      assert.equal(v.mediaExpected, false);
    }
  }
  assert.equal(callView({ ...base, peer: 'left', connectedOnce: false }).timer, 'hidden');
});

test('connected with the other person: timer runs, quality names the bad side', () => {
  const v = callView(base);
  assert.deepEqual([v.state, v.timer, v.stage, v.mediaExpected], ['connected', 'running', 'media', true]);
  assert.equal(v.quality.text, 'Good connection');
  assert.equal(callView({ ...base, theirs: 'poor' }).quality.text, 'Their connection is poor');
  assert.equal(callView({ ...base, mine: 'poor', theirs: 'fair' }).quality.text, 'Your connection is poor');
  assert.equal(callView({ ...base, mine: 'poor', theirs: 'poor' }).quality.text, 'Poor connection');
  assert.equal(callView({ ...base, mine: 'unknown', theirs: 'unknown' }).quality.level, 'unknown');
});

test('quality only while media is expected', () => {
  for (const f of [
    { peer: 'waiting', media: 'none', connectedOnce: false },
    { peer: 'reconnecting' },
    { signaling: 'reconnecting' },
    { media: 'disconnected' },
    { ended: true },
  ]) {
    assert.equal(callView({ ...base, ...f }).quality, null, JSON.stringify(f));
  }
});

test('waiting: one status (the pill), the stage shows the invitation', () => {
  const v = callView({ signaling: 'open', media: 'none', peer: 'waiting' });
  assert.deepEqual([v.state, v.stage, v.timer], ['waiting', 'invite', 'hidden']);
  assert.equal(callView({ signaling: 'connecting', media: 'none', peer: 'waiting' }).state, 'connecting');
});

test('our own signaling drop says reconnecting and keeps the timer', () => {
  const v = callView({ ...base, signaling: 'reconnecting' });
  assert.deepEqual([v.state, v.timer], ['reconnecting', 'running']);
  // It wins over the other person's state: it is what we can tell people about.
  assert.equal(callView({ ...base, signaling: 'reconnecting', peer: 'reconnecting' }).state, 'reconnecting');
});

test('the other person reconnecting is named as such', () => {
  const v = callView({ ...base, peer: 'reconnecting' });
  assert.deepEqual([v.state, v.stage], ['peer-away', 'peer-away']);
  assert.equal(v.text, VIEW_WORDS['peer-away']);
});

test('media trouble after a first connection is reconnecting; before it connecting', () => {
  assert.equal(callView({ ...base, media: 'disconnected' }).state, 'reconnecting');
  assert.equal(callView({ ...base, media: 'connecting' }).state, 'reconnecting');
  assert.equal(callView({ ...base, media: 'connecting', connectedOnce: false }).state, 'connecting');
  assert.equal(callView({ ...base, media: 'failed' }).state, 'failed');
});

test('ended wins over everything; every state has words', () => {
  for (const peer of ['waiting', 'present', 'reconnecting', 'left']) {
    const v = callView({ ...base, peer, ended: true });
    assert.deepEqual([v.state, v.quality, v.stage], ['ended', null, 'none']);
  }
  assert.equal(callView({ ...base, signaling: 'closed' }).state, 'ended');
  for (const [k, w] of Object.entries(VIEW_WORDS)) assert.ok(w.length > 0, k);
  assert.equal(qualityView('fair', 'good').text, 'Your connection is unstable');
});

test('blocked by the network replaces connecting, never a live or ended call', () => {
  const v = callView({ signaling: 'open', media: 'connecting', peer: 'present', blocked: true });
  assert.deepEqual([v.state, v.text, v.quality], ['blocked', 'Blocked by the network', null]);
  assert.equal(callView({ ...base, blocked: true }).state, 'connected');
  assert.equal(callView({ ...base, ended: true, blocked: true }).state, 'ended');
  assert.equal(callView({ ...base, peer: 'left', blocked: true }).state, 'alone');
});

test('we left (Leave): one "You left" state whatever else is true, never reconnecting or blocked', () => {
  for (const f of [
    {},
    { signaling: 'closed' },
    { signaling: 'reconnecting' },
    { media: 'failed' },
    { peer: 'left' },
    { peer: 'reconnecting' },
    { blocked: true, media: 'connecting' },
  ]) {
    const v = callView({ ...base, ...f, left: true });
    assert.deepEqual([v.state, v.text, v.quality, v.stage, v.mediaExpected], ['left', VIEW_WORDS.left, null, 'none', false], JSON.stringify(f));
    assert.equal(v.timer, 'stopped');
  }
  assert.equal(callView({ ...base, left: true, connectedOnce: false, peer: 'waiting' }).timer, 'hidden');
});
