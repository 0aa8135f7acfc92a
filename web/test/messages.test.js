import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CLOSE,
  ackMessage,
  answerMessage,
  apiErrorMessage,
  candidateMessage,
  closeMessage,
  hangupMessage,
  leaveMessage,
  isRelayed,
  isTerminalClose,
  joinMessage,
  offerMessage,
  parseServerMessage,
  pingMessage,
  resolveSignalUrl,
  statsMessage,
} from '../js/lib/messages.js';
import { fixture, fixtureText } from './fixtures.js';

test('client builders produce exactly the golden fixtures', () => {
  const j = fixture('client.join');
  assert.deepEqual(joinMessage(j.token), j);
  const r = fixture('client.join-resume');
  assert.deepEqual(joinMessage(r.token, { lastSeq: r.lastSeq }), r);
  const c = fixture('client.join-call');
  assert.deepEqual(joinMessage(c.token, { callId: c.callId }), c);
  assert.deepEqual(offerMessage(fixture('client.offer').sdp), fixture('client.offer'));
  assert.deepEqual(answerMessage(fixture('client.answer').sdp), fixture('client.answer'));
  assert.deepEqual(candidateMessage(fixture('client.ice-candidate').candidate), fixture('client.ice-candidate'));
  assert.deepEqual(hangupMessage(), fixture('client.hangup'));
  assert.deepEqual(leaveMessage(), fixture('client.leave'));
  assert.deepEqual(ackMessage(42), fixture('client.ack'));
  assert.deepEqual(pingMessage(1800000000123), fixture('client.ping'));
  const s = fixture('client.stats');
  assert.deepEqual(statsMessage(s), s);
});

test('join carries lastSeqs per sender, without garbage entries, only when there are some', () => {
  assert.deepEqual(joinMessage('t', { lastSeq: 4, lastSeqs: { a: 4, b: 2 } }), {
    type: 'join',
    token: 't',
    lastSeq: 4,
    lastSeqs: { a: 4, b: 2 },
  });
  assert.deepEqual(joinMessage('t', { lastSeqs: { a: -1, b: 1.5, c: '3', d: 0 } }).lastSeqs, { d: 0 });
  assert.equal('lastSeqs' in joinMessage('t', { lastSeqs: {} }), false);
  assert.equal('lastSeqs' in joinMessage('t', { lastSeqs: { a: null } }), false);
});

test('join resumes with lastSeq 0 but never with garbage', () => {
  assert.equal(joinMessage('t', { lastSeq: 0 }).lastSeq, 0);
  assert.equal('lastSeq' in joinMessage('t', { lastSeq: -1 }), false);
  assert.equal('lastSeq' in joinMessage('t', { lastSeq: 1.5 }), false);
  assert.equal('lastSeq' in joinMessage('t', { lastSeq: null }), false);
});

test('candidate builder takes an RTCIceCandidate-like object and drops unknown fields', () => {
  const fake = {
    toJSON: () => ({ candidate: 'candidate:x', sdpMid: '0', sdpMLineIndex: 0, usernameFragment: null, extra: 1 }),
  };
  assert.deepEqual(candidateMessage(fake), {
    type: 'ice-candidate',
    candidate: { candidate: 'candidate:x', sdpMid: '0', sdpMLineIndex: 0 },
  });
});

test('stats builder keeps only finite, non-negative numbers and known candidate types', () => {
  assert.deepEqual(
    statsMessage({ rttMs: Number.NaN, packetLoss: -1, bitrateInKbps: Infinity, candidateType: 'bogus', framesDecoded: 2.5 }),
    { type: 'stats' },
  );
  assert.deepEqual(statsMessage({ rttMs: 0, candidateType: 'host' }), { type: 'stats', rttMs: 0, candidateType: 'host' });
});

test('every server fixture parses; relayed ones are marked', () => {
  const names = [
    'server.joined', 'server.peer-joined', 'server.peer-left', 'server.peer-reconnecting',
    'server.peer-resumed', 'server.offer', 'server.answer', 'server.ice-candidate',
    'server.hangup', 'server.call-ended', 'server.error', 'server.pong',
  ];
  for (const n of names) {
    const m = parseServerMessage(fixtureText(n));
    assert.deepEqual(m, fixture(n), n);
    assert.equal(isRelayed(m), ['server.offer', 'server.answer', 'server.ice-candidate', 'server.hangup'].includes(n), n);
  }
});

test('malformed or unknown server frames are refused', () => {
  for (const bad of [
    '', 'null', '[]', '42', '{', '{"type":"nope"}', '{"type":"offer","seq":1,"sdp":"x"}',
    '{"type":"offer","from":"a","seq":-1,"sdp":"x"}', '{"type":"offer","from":"a","seq":"1","sdp":"x"}',
    '{"type":"answer","from":"a","seq":1}', '{"type":"ice-candidate","from":"a","seq":1,"candidate":null}',
    '{"type":"hangup","from":"a","seq":1.5}',
  ]) {
    assert.equal(parseServerMessage(bad), null, bad);
  }
});

test('signal URL resolves against the page with a matching scheme', () => {
  assert.equal(resolveSignalUrl('/ws', 'https://call.example.com/c/ABC'), 'wss://call.example.com/ws');
  assert.equal(resolveSignalUrl('/ws', 'http://127.0.0.1:8000/'), 'ws://127.0.0.1:8000/ws');
  assert.equal(resolveSignalUrl(fixture('api.join-response').signalUrl, 'https://x.example/'), 'wss://x.example/ws');
  assert.equal(resolveSignalUrl('', 'https://x.example/'), 'wss://x.example/ws');
  assert.equal(resolveSignalUrl('wss://sig.example/ws', 'https://x.example/'), 'wss://sig.example/ws');
  assert.equal(resolveSignalUrl('https://sig.example/ws#frag', 'http://x/'), 'wss://sig.example/ws');
  assert.throws(() => resolveSignalUrl('ftp://x/ws', 'https://x/'), /scheme/);
});

test('terminal close codes and their words', () => {
  for (const code of [CLOSE.CALL_FULL, CLOSE.REPLACED, CLOSE.CALL_ENDED, CLOSE.UNAUTHORIZED, CLOSE.POLICY_VIOLATION]) {
    assert.ok(isTerminalClose(code), String(code));
    assert.notEqual(closeMessage(code), closeMessage(1006));
  }
  for (const code of [1000, 1001, 1006, 1011, 1012, 1013, 4000]) assert.ok(!isTerminalClose(code), String(code));
});

test('API errors become clear words', () => {
  const notFound = fixture('api.error-body');
  assert.match(apiErrorMessage('resolve', 404, notFound), /unknown, expired or already used/);
  assert.match(apiErrorMessage('resolve', 429, null, '30'), /wait 30 seconds/);
  assert.match(apiErrorMessage('resolve', 429, null, '300'), /about 5 minutes/);
  assert.match(apiErrorMessage('create', 429, null, null), /wait a minute/);
  assert.match(apiErrorMessage('resolve', 400, { error: { code: 'bad-code', message: 'x' } }), /valid code/);
  assert.match(apiErrorMessage('join', 401, null), /no longer valid/);
  assert.match(apiErrorMessage('join', 0, null), /Cannot reach/);
  assert.match(apiErrorMessage('create', 503, null), /busy/);
  assert.match(apiErrorMessage('create', 500, null), /went wrong/);
  assert.equal(apiErrorMessage('create', 418, { error: { code: 'teapot', message: 'Short and stout.' } }), 'Short and stout.');
});
