import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CONNECTION_WORDS, formatDuration, overallState } from '../js/lib/format.js';
import { sdpIceUfrag, sdpSessionId } from '../js/lib/sdp.js';

test('durations', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(59_999), '0:59');
  assert.equal(formatDuration(61_000), '1:01');
  assert.equal(formatDuration(3_600_000 + 62_000), '1:01:02');
  assert.equal(formatDuration(-5), '0:00');
  assert.equal(formatDuration('x'), '0:00');
});

test('overall connection state', () => {
  assert.equal(overallState('connecting', 'none', false), 'connecting');
  assert.equal(overallState('open', 'none', false), 'waiting');
  assert.equal(overallState('open', 'new', true), 'connecting');
  assert.equal(overallState('open', 'connected', true), 'connected');
  // Signaling reconnecting while media flows: people see "reconnecting".
  assert.equal(overallState('reconnecting', 'connected', true), 'reconnecting');
  assert.equal(overallState('open', 'disconnected', true), 'reconnecting');
  assert.equal(overallState('open', 'failed', true), 'failed');
  assert.equal(overallState('closed', 'none', true), 'ended');
  for (const s of ['connecting', 'waiting', 'connected', 'reconnecting', 'failed', 'ended']) {
    assert.ok(CONNECTION_WORDS[s], s);
  }
});

test('SDP session id and ICE ufrag', () => {
  const sdp = 'v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 x 0\r\na=ice-ufrag:Ab+1\r\na=ice-pwd:x\r\n';
  assert.equal(sdpSessionId(sdp), '4611731400430051336');
  assert.equal(sdpIceUfrag(sdp), 'Ab+1');
  assert.equal(sdpSessionId('v=0\r\n'), null);
  assert.equal(sdpIceUfrag(null), null);
});
