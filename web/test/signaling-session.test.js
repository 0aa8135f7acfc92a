import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SignalingSession } from '../js/signaling-session.js';
import { fixtureText } from './fixtures.js';

/** A WebSocket stand-in that records what the client sends. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.all.push(this);
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  receive(text) {
    this.onmessage?.({ data: text });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1005, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** Timers run only when the test says so. */
function fakeTimers() {
  const pending = new Map();
  let next = 1;
  return {
    pending,
    setTimeout: (fn, ms) => (pending.set(next, { fn, ms }), next++),
    clearTimeout: (id) => pending.delete(id),
    setInterval: (fn, ms) => (pending.set(next, { fn, ms, every: true }), next++),
    clearInterval: (id) => pending.delete(id),
    runOnce(filter = () => true) {
      for (const [id, t] of [...pending]) {
        if (!filter(t)) continue;
        if (!t.every) pending.delete(id);
        t.fn();
      }
    },
  };
}

const joined = (resumed = false) =>
  JSON.stringify({ ...JSON.parse(fixtureText('server.joined')), resumed });

function session(extra = {}) {
  FakeSocket.all = [];
  const got = [];
  const states = [];
  const timers = fakeTimers();
  const s = new SignalingSession({
    url: 'ws://127.0.0.1:1/ws',
    token: 'tok',
    callId: 'c0ffee0c0ffee0c0ffee0c0ffe',
    WebSocketImpl: FakeSocket,
    timers,
    random: () => 0,
    onMessage: (m) => got.push(m),
    onStateChange: (st, info) => states.push([st, info]),
    ...extra,
  });
  return { s, got, states, timers };
}

test('authenticates with the first message, never in the URL', () => {
  const { s, states } = session();
  s.start();
  const ws = FakeSocket.all[0];
  assert.equal(ws.url, 'ws://127.0.0.1:1/ws');
  assert.ok(!ws.url.includes('tok'));
  ws.open();
  assert.deepEqual(ws.sent, [{ type: 'join', token: 'tok', callId: 'c0ffee0c0ffee0c0ffee0c0ffe' }]);
  ws.receive(joined());
  assert.equal(s.state, 'open');
  assert.deepEqual(states.map((x) => x[0]), ['connecting', 'open']);
});

test('acks relayed messages, skips duplicates, passes others through', () => {
  const { s, got } = session();
  s.start();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.receive(joined());
  ws.receive(fixtureText('server.offer')); // seq 1
  ws.receive(fixtureText('server.ice-candidate')); // seq 3
  ws.receive(fixtureText('server.offer')); // seq 1 again: duplicate
  // Numbers are per sender: another sender's 1 is news.
  const other = 'c3c3c3c3c3c3c3c3c3c3c3c3c3';
  ws.receive(JSON.stringify({ type: 'offer', from: other, seq: 1, sdp: 'v=0\r\n' }));
  ws.receive(fixtureText('server.peer-reconnecting'));
  ws.receive(fixtureText('server.pong'));
  ws.receive('not json');
  assert.deepEqual(got.map((m) => m.type), ['joined', 'offer', 'ice-candidate', 'offer', 'peer-reconnecting']);
  assert.deepEqual(ws.sent.slice(1), [
    { type: 'ack', seq: 1 },
    { type: 'ack', seq: 3 },
    { type: 'ack', seq: 1 },
    { type: 'ack', seq: 1 },
  ]);
  assert.equal(s.lastSeq, 3);
  assert.deepEqual(s.lastSeqs, { a1a1a1a1a1a1a1a1a1a1a1a1a1: 3, [other]: 1 });
});

test('reconnects with backoff and resumes from lastSeq; queued messages are flushed after joined', () => {
  const { s, states, timers } = session();
  s.start();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.receive(joined());
  ws.receive(fixtureText('server.answer')); // seq 2
  ws.close(1006, '');
  assert.equal(s.state, 'reconnecting');
  // While down, relayed kinds queue; pings and stats are dropped.
  assert.equal(s.send({ type: 'ice-candidate', candidate: { candidate: 'c' } }), false);
  s.send({ type: 'stats' });
  timers.runOnce((t) => !t.every);
  const ws2 = FakeSocket.all[1];
  assert.ok(ws2, 'a new socket');
  ws2.open();
  assert.deepEqual(ws2.sent, [
    {
      type: 'join',
      token: 'tok',
      callId: 'c0ffee0c0ffee0c0ffee0c0ffe',
      lastSeq: 2,
      lastSeqs: { b2b2b2b2b2b2b2b2b2b2b2b2b2: 2 },
    },
  ]);
  ws2.receive(joined(true));
  assert.deepEqual(ws2.sent.slice(1), [{ type: 'ice-candidate', candidate: { candidate: 'c' } }]);
  assert.deepEqual(
    states.map((x) => x[0]),
    ['connecting', 'open', 'reconnecting', 'open'],
  );
  assert.equal(states.at(-1)[1].resumed, true);
});

test('terminal close codes stop reconnecting', () => {
  for (const code of [4001, 4002, 4003, 4401, 1008]) {
    const { s, timers } = session();
    s.start();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.receive(joined());
    ws.close(code, 'x');
    assert.equal(s.state, 'closed', String(code));
    timers.runOnce();
    assert.equal(FakeSocket.all.length, 1, `no reconnect after ${code}`);
  }
});

test('service restart (1012) and abnormal closes reconnect', () => {
  for (const code of [1012, 1006, 1011, 1013]) {
    const { s, timers } = session();
    s.start();
    FakeSocket.all[0].open();
    FakeSocket.all[0].receive(joined());
    FakeSocket.all[0].close(code, '');
    timers.runOnce((t) => !t.every);
    assert.equal(FakeSocket.all.length, 2, String(code));
    assert.equal(s.state, 'reconnecting');
  }
});

test('a silent socket is dropped by the liveness check; pings otherwise', () => {
  let now = 0;
  const { s, timers } = session({ now: () => now, pingIntervalMs: 10, livenessMs: 25 });
  s.start();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.receive(joined());
  now = 10;
  timers.runOnce((t) => t.every);
  assert.deepEqual(ws.sent.at(-1), { type: 'ping', ts: 10 });
  now = 40;
  timers.runOnce((t) => t.every);
  assert.equal(ws.readyState, 3, 'closed for silence');
  assert.equal(s.state, 'reconnecting');
});

test('checkAlive after a network change: an answered ping keeps the socket, silence reconnects at once', () => {
  let now = 100;
  const { s, timers } = session({ now: () => now });
  s.start();
  const ws = FakeSocket.all[0];
  ws.open();
  ws.receive(joined());
  s.checkAlive(2000);
  assert.deepEqual(ws.sent.at(-1), { type: 'ping', ts: 100 });
  now = 150;
  ws.receive(JSON.stringify({ type: 'pong', ts: 100 }));
  timers.runOnce((t) => t.ms === 2000);
  assert.equal(FakeSocket.all.length, 1, 'alive: kept');
  assert.equal(s.state, 'open');

  // A dead TCP connection never completes the closing handshake: no close event comes.
  ws.close = () => {};
  now = 200;
  s.checkAlive(2000);
  now = 2300;
  timers.runOnce((t) => t.ms === 2000);
  assert.equal(FakeSocket.all.length, 2, 'a new socket at once, without waiting for close');
  assert.equal(s.state, 'reconnecting');
  const fresh = FakeSocket.all[1];
  fresh.open();
  assert.equal(fresh.sent[0].type, 'join');
  assert.ok('lastSeq' in fresh.sent[0], 'resumes');
  ws.onmessage?.({ data: joined() });
  assert.equal(s.state, 'reconnecting', 'the abandoned socket is not heard any more');
});

test('no join answer in time: retry', () => {
  const { s, timers } = session();
  s.start();
  FakeSocket.all[0].open();
  timers.runOnce((t) => !t.every && t.ms === 8000);
  assert.equal(FakeSocket.all[0].readyState, 3);
  assert.equal(s.state, 'connecting', 'never joined: still connecting, not reconnecting');
  timers.runOnce((t) => !t.every);
  assert.equal(FakeSocket.all.length, 2, 'a second attempt');
});

test('close() ends for good', () => {
  const { s, timers, states } = session();
  s.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive(joined());
  s.close();
  assert.equal(states.at(-1)[0], 'closed');
  timers.runOnce();
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(s.send({ type: 'offer', sdp: 'x' }), false);
  assert.equal(s.queue.length, 0);
});

test('call-ended stops reconnects even if the close code is generic', () => {
  const { s, got, timers } = session();
  s.start();
  FakeSocket.all[0].open();
  FakeSocket.all[0].receive(joined());
  FakeSocket.all[0].receive(fixtureText('server.call-ended'));
  FakeSocket.all[0].close(1000, '');
  timers.runOnce();
  assert.equal(got.at(-1).type, 'call-ended');
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(s.state, 'closed');
});
