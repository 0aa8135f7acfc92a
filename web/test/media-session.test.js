// MediaSession's decisions (who offers, perfect negotiation, fresh connections, stats) against
// a minimal stand-in for RTCPeerConnection. The real browser behaviour is covered by the
// end-to-end test in tests/e2e; this pins the logic that sits on top of it.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { MediaSession } from '../js/media-session.js';

let sessionCounter = 1000;

class FakeTrack {
  constructor(kind) {
    this.kind = kind;
    this.enabled = true;
  }
  stop() {}
}

class FakeStream {
  constructor(tracks = []) {
    this.tracks = [...tracks];
  }
  getTracks() {
    return [...this.tracks];
  }
  getVideoTracks() {
    return this.tracks.filter((t) => t.kind === 'video');
  }
  addTrack(t) {
    this.tracks.push(t);
  }
  removeTrack(t) {
    this.tracks = this.tracks.filter((x) => x !== t);
  }
}

class FakePC {
  static all = [];
  constructor(config) {
    this.config = config;
    this.session = String(sessionCounter++);
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.iceConnectionState = 'new';
    this.localDescription = null;
    this.remoteDescription = null;
    this.transceivers = [];
    this.channels = [];
    this.closed = false;
    this.restarts = 0;
    FakePC.all.push(this);
  }
  sdp(type) {
    const kinds = this.transceivers.map((t) => `m=${t.kind} 9 UDP/TLS/RTP/SAVPF 96`).join('\r\n');
    return `v=0\r\no=- ${this.session} 2 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:sha-256 ${this.session === '0' ? '00' : 'AB'}:${type === 'offer' ? 'CD' : 'EF'}\r\n${kinds}\r\n`;
  }
  needNegotiation() {
    queueMicrotask(() => this.onnegotiationneeded?.());
  }
  addTrack(track) {
    const t = { kind: track.kind, sender: { track, replaceTrack: (x) => Promise.resolve((t.sender.track = x)) }, receiver: { track: new FakeTrack(track.kind) }, direction: 'sendrecv', stopped: false };
    this.transceivers.push(t);
    this.needNegotiation();
    return t.sender;
  }
  addTransceiver(kind, { direction }) {
    const t = { kind, sender: { track: null, replaceTrack: (x) => Promise.resolve((t.sender.track = x)) }, receiver: { track: new FakeTrack(kind) }, direction, stopped: false };
    this.transceivers.push(t);
    this.needNegotiation();
    return t;
  }
  getTransceivers() {
    return this.transceivers;
  }
  getSenders() {
    return this.transceivers.map((t) => t.sender);
  }
  createDataChannel(label) {
    const dc = { label, readyState: 'connecting', sent: [], send(x) { this.sent.push(x); }, close() { this.readyState = 'closed'; } };
    this.channels.push(dc);
    this.needNegotiation();
    return dc;
  }
  async setLocalDescription() {
    if (this.signalingState === 'have-remote-offer') {
      this.localDescription = { type: 'answer', sdp: this.sdp('answer') };
      this.signalingState = 'stable';
    } else {
      this.localDescription = { type: 'offer', sdp: this.sdp('offer') };
      this.signalingState = 'have-local-offer';
    }
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
    if (d.type === 'offer') {
      // Implicit rollback of a local offer, like browsers do for the polite side.
      this.signalingState = 'have-remote-offer';
      for (const m of d.sdp.matchAll(/^m=(\w+)/gm)) {
        if (m[1] !== 'application' && !this.transceivers.some((t) => t.kind === m[1])) {
          const t = { kind: m[1], sender: { track: null }, receiver: { track: new FakeTrack(m[1]) }, direction: 'recvonly', stopped: false };
          t.sender.replaceTrack = (x) => Promise.resolve((t.sender.track = x));
          this.transceivers.push(t);
        }
      }
    } else {
      this.signalingState = 'stable';
    }
  }
  async addIceCandidate() {}
  restartIce() {
    this.restarts += 1;
    this.needNegotiation();
  }
  async getStats() {
    return new Map([
      ['T', { id: 'T', type: 'transport', selectedCandidatePairId: 'P' }],
      ['P', { id: 'P', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R', currentRoundTripTime: 0.02 }],
      ['L', { id: 'L', type: 'local-candidate', candidateType: 'relay' }],
      ['R', { id: 'R', type: 'remote-candidate', candidateType: 'host' }],
      ['V', { id: 'V', type: 'inbound-rtp', kind: 'video', framesDecoded: 42, bytesReceived: 1000, packetsReceived: 10, packetsLost: 0 }],
    ]);
  }
  close() {
    this.closed = true;
    this.signalingState = 'closed';
  }
}

globalThis.RTCPeerConnection = FakePC;
globalThis.MediaStream = FakeStream;

const tick = () => new Promise((r) => setTimeout(r, 5));
const live = [];
afterEach(() => {
  for (const m of live.splice(0)) m.close();
});

function session(role, extra = {}) {
  FakePC.all = [];
  const sent = [];
  const stream = new FakeStream([new FakeTrack('audio'), new FakeTrack('video')]);
  const m = new MediaSession({
    role,
    iceServers: [{ urls: ['turn:127.0.0.1:3478'] }],
    iceTransportPolicy: 'relay',
    localStream: stream,
    send: (x) => sent.push(x),
    statsIntervalMs: 1e9,
    ...extra,
  });
  live.push(m);
  return { m, sent };
}

test('the offerer starts when the peer is present, with our ICE config only', async () => {
  const { m, sent } = session('offerer');
  await tick();
  assert.equal(FakePC.all.length, 0, 'nothing before the peer is there');
  m.peerPresent();
  await tick();
  assert.equal(FakePC.all.length, 1);
  const pc = FakePC.all[0];
  assert.deepEqual(pc.config, { iceServers: [{ urls: ['turn:127.0.0.1:3478'] }], iceTransportPolicy: 'relay' });
  assert.deepEqual(pc.transceivers.map((t) => t.kind).sort(), ['audio', 'video']);
  assert.equal(pc.channels[0].label, 'chat');
  const offers = sent.filter((x) => x.type === 'offer');
  assert.ok(offers.length >= 1, 'an offer was sent');
  m.close();
});

test('the answerer never offers first; it answers with its tracks', async () => {
  const { m, sent } = session('answerer');
  m.peerPresent();
  await tick();
  assert.equal(FakePC.all.length, 0, 'polite side waits for the offer');
  await m.handleSignal({ type: 'offer', from: 'a', seq: 1, sdp: 'v=0\r\no=- 77 2 IN IP4 127.0.0.1\r\na=fingerprint:sha-256 11:22\r\nm=audio 9 x 0\r\nm=video 9 x 0\r\n' });
  await tick();
  assert.equal(FakePC.all.length, 1);
  const pc = FakePC.all[0];
  assert.ok(pc.transceivers.every((t) => t.sender.track), 'local tracks attached to the offered transceivers');
  assert.equal(sent.filter((x) => x.type === 'answer').length, 1);
  assert.equal(sent.filter((x) => x.type === 'offer').length, 0);
  assert.ok(m.securityCode?.words.length === 5, 'security code derived');
  m.close();
});

test('a new remote session id makes the answerer start a fresh connection', async () => {
  const { m } = session('answerer');
  const offer = (id) => ({ type: 'offer', from: 'a', seq: 1, sdp: `v=0\r\no=- ${id} 2 IN IP4 127.0.0.1\r\nm=video 9 x 0\r\n` });
  await m.handleSignal(offer(1));
  await m.handleSignal({ ...offer(1), seq: 2 }); // renegotiation of the same session
  assert.equal(FakePC.all.length, 1, 'same session: same connection');
  await m.handleSignal({ ...offer(2), seq: 3 });
  assert.equal(FakePC.all.length, 2, 'new session: new connection');
  assert.ok(FakePC.all[0].closed, 'old one closed');
  m.close();
});

test('the impolite offerer ignores a colliding offer; the polite side accepts it', async () => {
  const { m, sent } = session('offerer');
  m.peerPresent();
  await tick();
  const pc = FakePC.all[0];
  assert.equal(pc.signalingState, 'have-local-offer');
  const before = sent.length;
  await m.handleSignal({ type: 'offer', from: 'b', seq: 5, sdp: `v=0\r\no=- 9 2 IN IP4 127.0.0.1\r\n` });
  assert.equal(pc.signalingState, 'have-local-offer', 'offerer kept its own offer');
  assert.equal(sent.length, before, 'no answer to the colliding offer');
  m.close();

  const polite = session('answerer');
  await polite.m.handleSignal({ type: 'offer', from: 'a', seq: 1, sdp: `v=0\r\no=- 5 2 IN IP4 127.0.0.1\r\nm=audio 9 x 0\r\n` });
  const ppc = FakePC.all[0];
  ppc.restartIce(); // our own renegotiation starts...
  await tick();
  assert.equal(ppc.signalingState, 'have-local-offer');
  await polite.m.handleSignal({ type: 'offer', from: 'a', seq: 2, sdp: `v=0\r\no=- 5 3 IN IP4 127.0.0.1\r\nm=audio 9 x 0\r\n` });
  assert.equal(ppc.signalingState, 'stable', '...and yields to the remote offer');
  assert.equal(polite.sent.at(-1).type, 'answer');
  polite.m.close();
});

test('stale answers are ignored; stats are summarised and sent', async () => {
  const { m, sent } = session('offerer');
  m.peerPresent();
  await tick();
  const pc = FakePC.all[0];
  await m.handleSignal({ type: 'answer', from: 'b', seq: 2, sdp: pc.sdp('answer') });
  assert.equal(pc.signalingState, 'stable');
  await m.handleSignal({ type: 'answer', from: 'b', seq: 3, sdp: pc.sdp('answer') });
  assert.equal(pc.signalingState, 'stable', 'a second answer does not throw or change state');
  pc.connectionState = 'connected';
  const summary = await m.collectStats();
  assert.equal(summary.candidateType, 'relay');
  assert.equal(summary.framesDecoded, 42);
  assert.equal(summary.rttMs, 20);
  assert.deepEqual(sent.at(-1), { type: 'stats', rttMs: 20, candidateType: 'relay', framesDecoded: 42 });
  m.close();
});

test('ICE failure restarts ICE; a restart that does not recover builds a fresh connection', async () => {
  const { m } = session('offerer', { restartTimeoutMs: 20 });
  m.peerPresent();
  await tick();
  const pc = FakePC.all[0];
  pc.iceConnectionState = 'failed';
  pc.oniceconnectionstatechange();
  assert.equal(pc.restarts, 1);
  assert.equal(m.iceRestarts, 1);
  await new Promise((r) => setTimeout(r, 40));
  await tick();
  assert.equal(FakePC.all.length, 2, 'fresh connection after the restart timed out');
  assert.ok(pc.closed);
  m.close();
});

test('a connection that never comes up is reported blocked; connecting clears it; retry restarts ICE', async () => {
  const blocked = [];
  const { m } = session('answerer', { connectTimeoutMs: 20, on: { blocked: (b) => blocked.push(b) } });
  await m.handleSignal({ type: 'offer', from: 'a', seq: 1, sdp: 'v=0\r\no=- 5 2 IN IP4 127.0.0.1\r\nm=video 9 x 0\r\n' });
  const pc = FakePC.all[0];
  await new Promise((r) => setTimeout(r, 40));
  assert.deepEqual(blocked, [true], 'not connected in time: blocked');
  m.retry();
  assert.equal(pc.restarts, 1, 'try again restarts ICE');
  pc.iceConnectionState = 'connected';
  pc.oniceconnectionstatechange();
  assert.deepEqual(blocked, [true, false]);

  // Once a connection was up, losing it is "reconnecting", not "blocked".
  pc.iceConnectionState = 'failed';
  pc.oniceconnectionstatechange();
  assert.deepEqual(blocked, [true, false]);
  m.close();
});

test('ICE failing before the connection ever came up is reported blocked at once', async () => {
  const blocked = [];
  const { m } = session('offerer', { on: { blocked: (b) => blocked.push(b) } });
  m.peerPresent();
  await tick();
  const pc = FakePC.all[0];
  pc.iceConnectionState = 'failed';
  pc.oniceconnectionstatechange();
  assert.deepEqual(blocked, [true]);
  assert.equal(pc.restarts, 1, 'and ICE is restarted as before');
  m.close();
});

test('chat only over an open data channel, bounded', async () => {
  const { m } = session('offerer');
  const got = [];
  m.on.chat = (t) => got.push(t);
  m.peerPresent();
  await tick();
  const dc = FakePC.all[0].channels[0];
  assert.equal(m.sendChat('hi'), false, 'not open yet');
  dc.readyState = 'open';
  assert.equal(m.sendChat('hi'), true);
  assert.equal(m.sendChat('x'.repeat(5000)), true);
  assert.equal(dc.sent[1].length, 2000);
  dc.onmessage({ data: 'y'.repeat(3000) });
  dc.onmessage({ data: new ArrayBuffer(4) });
  assert.deepEqual(got.map((t) => t.length), [2000]);
  m.close();
});

test('a repeated offer or candidate (at-least-once relaying) is applied once', async () => {
  const { m, sent } = session('answerer');
  const offer = { type: 'offer', from: 'a', seq: 1, sdp: 'v=0\r\no=- 41 2 IN IP4 127.0.0.1\r\nm=audio 9 x 0\r\n' };
  await m.handleSignal(offer);
  await m.handleSignal({ ...offer, seq: 2 }); // the same offer resent, renumbered
  assert.equal(sent.filter((x) => x.type === 'answer').length, 1, 'answered once');
  const pc = FakePC.all[0];
  let added = 0;
  pc.addIceCandidate = async () => {
    added += 1;
  };
  const cand = { candidate: 'candidate:1 1 udp 1 127.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  await m.handleSignal({ type: 'ice-candidate', from: 'a', seq: 3, candidate: cand });
  await m.handleSignal({ type: 'ice-candidate', from: 'a', seq: 4, candidate: { ...cand } });
  await m.handleSignal({ type: 'ice-candidate', from: 'a', seq: 5, candidate: { ...cand, candidate: 'candidate:2 1 udp 1 127.0.0.1 10 typ host' } });
  assert.equal(added, 2, 'the repeat is skipped, a new candidate is not');
  // A renegotiation (new version) is a new offer.
  await m.handleSignal({ ...offer, seq: 6, sdp: offer.sdp.replace(' 41 2 ', ' 41 3 ') });
  assert.equal(sent.filter((x) => x.type === 'answer').length, 2);
  m.close();
});

test('state travels on its own channel as small JSON objects; junk is dropped', async () => {
  const { m } = session('offerer');
  const got = [];
  let opened = 0;
  m.on.meta = (x) => got.push(x);
  m.on.metaOpen = () => (opened += 1);
  m.peerPresent();
  await tick();
  const meta = FakePC.all[0].channels.find((c) => c.label === 'meta');
  assert.ok(meta, 'the offerer creates the meta channel next to chat');
  assert.equal(m.sendMeta({ type: 'state', mic: false }), false, 'not open yet');
  meta.readyState = 'open';
  meta.onopen();
  assert.equal(opened, 1);
  assert.equal(m.sendMeta({ type: 'state', mic: false, cam: true }), true);
  assert.deepEqual(JSON.parse(meta.sent[0]), { type: 'state', mic: false, cam: true });
  assert.equal(m.sendMeta({ type: 'state', name: 'x'.repeat(2000) }), false, 'too long to be ours');
  for (const data of ['{bad', '[1,2]', 'null', '"text"', 'z'.repeat(1001), new ArrayBuffer(2)]) meta.onmessage({ data });
  meta.onmessage({ data: '{"type":"state","cam":false}' });
  assert.deepEqual(got, [{ type: 'state', cam: false }]);
  m.close();
});
