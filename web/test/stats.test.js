import { test } from 'node:test';
import assert from 'node:assert/strict';
import { qualityLevel, selectedPair, summariseStats } from '../js/lib/stats.js';
import { statsMessage } from '../js/lib/messages.js';
import { fixture } from './fixtures.js';

function reports({ bytesIn, bytesOut, recv, lost, frames, localType = 'host', rtt = 0.012 }) {
  return [
    { id: 'T1', type: 'transport', selectedCandidatePairId: 'CP1' },
    { id: 'CP1', type: 'candidate-pair', localCandidateId: 'L1', remoteCandidateId: 'R1', currentRoundTripTime: rtt, nominated: true, state: 'succeeded' },
    { id: 'CP2', type: 'candidate-pair', localCandidateId: 'L2', remoteCandidateId: 'R1', nominated: false, state: 'failed' },
    { id: 'L1', type: 'local-candidate', candidateType: localType },
    { id: 'L2', type: 'local-candidate', candidateType: 'srflx' },
    { id: 'R1', type: 'remote-candidate', candidateType: 'host' },
    { id: 'IV', type: 'inbound-rtp', kind: 'video', bytesReceived: bytesIn * 0.9, packetsReceived: recv * 0.9, packetsLost: lost, framesDecoded: frames },
    { id: 'IA', type: 'inbound-rtp', kind: 'audio', bytesReceived: bytesIn * 0.1, packetsReceived: recv * 0.1, packetsLost: 0 },
    { id: 'OV', type: 'outbound-rtp', kind: 'video', bytesSent: bytesOut },
  ];
}

test('selected pair via transport, fallback to nominated+succeeded', () => {
  assert.equal(selectedPair(reports({ bytesIn: 0, bytesOut: 0, recv: 0, lost: 0, frames: 0 })).id, 'CP1');
  const noTransport = reports({ bytesIn: 0, bytesOut: 0, recv: 0, lost: 0, frames: 0 }).filter((r) => r.type !== 'transport');
  assert.equal(selectedPair(noTransport).id, 'CP1');
  assert.equal(selectedPair([]), null);
});

test('first sample has no rates; second has bitrates and loss', () => {
  const first = summariseStats(reports({ bytesIn: 1000, bytesOut: 2000, recv: 100, lost: 0, frames: 10 }), null, 10_000);
  assert.deepEqual(first.summary, { rttMs: 12, candidateType: 'host', framesDecoded: 10 });
  const second = summariseStats(
    reports({ bytesIn: 1000 + 125_000, bytesOut: 2000 + 250_000, recv: 200, lost: 5, frames: 160 }),
    first.sample,
    12_000,
  );
  // 125 kB in 2 s = 500 kbit/s; 250 kB = 1000 kbit/s; 5 lost of 105 packets.
  assert.equal(second.summary.bitrateInKbps, 500);
  assert.equal(second.summary.bitrateOutKbps, 1000);
  assert.equal(second.summary.packetLoss, Math.round((5 / 105) * 10000) / 10000);
  assert.equal(second.summary.framesDecoded, 160);
  // The summary fits the wire message unchanged.
  const m = statsMessage(second.summary);
  assert.deepEqual(Object.keys(m).sort(), Object.keys(fixture('client.stats')).sort());
});

test('a relay on either end makes the pair relay', () => {
  const r = summariseStats(reports({ bytesIn: 0, bytesOut: 0, recv: 0, lost: 0, frames: 0, localType: 'relay' }), null, 1);
  assert.equal(r.summary.candidateType, 'relay');
  const remoteRelay = reports({ bytesIn: 0, bytesOut: 0, recv: 0, lost: 0, frames: 0 }).map((x) =>
    x.id === 'R1' ? { ...x, candidateType: 'relay' } : x,
  );
  assert.equal(summariseStats(remoteRelay, null, 1).summary.candidateType, 'relay');
});

test('counter resets (new peer connection) give no negative rates', () => {
  const a = summariseStats(reports({ bytesIn: 10_000, bytesOut: 10_000, recv: 100, lost: 3, frames: 10 }), null, 1000);
  const b = summariseStats(reports({ bytesIn: 10, bytesOut: 10, recv: 1, lost: 0, frames: 1 }), a.sample, 2000);
  assert.equal(b.summary.bitrateInKbps, undefined);
  assert.equal(b.summary.bitrateOutKbps, undefined);
  assert.equal(b.summary.packetLoss, undefined);
});

test('quality levels', () => {
  assert.equal(qualityLevel(null), 'unknown');
  assert.equal(qualityLevel({ framesDecoded: 3 }), 'unknown');
  assert.equal(qualityLevel({ rttMs: 20, packetLoss: 0, bitrateInKbps: 900 }), 'good');
  assert.equal(qualityLevel({ rttMs: 200, packetLoss: 0 }), 'fair');
  assert.equal(qualityLevel({ rttMs: 20, packetLoss: 0.05 }), 'fair');
  assert.equal(qualityLevel({ rttMs: 500, packetLoss: 0 }), 'poor');
  assert.equal(qualityLevel({ rttMs: 20, packetLoss: 0.1 }), 'poor');
  assert.equal(qualityLevel({ rttMs: 20, packetLoss: 0, bitrateInKbps: 0 }), 'poor');
});

test('connection details: path, transport, RTT, loss, bitrates, picture and codec', async () => {
  const { connectionDetails } = await import('../js/lib/stats.js');
  const reports = [
    { id: 'T', type: 'transport', selectedCandidatePairId: 'P' },
    { id: 'P', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R' },
    { id: 'L', type: 'local-candidate', candidateType: 'relay', relayProtocol: 'tls', protocol: 'udp' },
    { id: 'R', type: 'remote-candidate', candidateType: 'host' },
    { id: 'V', type: 'inbound-rtp', kind: 'video', frameWidth: 640, frameHeight: 480, framesPerSecond: 29.7, codecId: 'C' },
    { id: 'C', type: 'codec', mimeType: 'video/VP8' },
  ];
  const rows = Object.fromEntries(connectionDetails(reports, { rttMs: 42.4, packetLoss: 0.012, bitrateInKbps: 812.3, bitrateOutKbps: 640 }));
  assert.deepEqual(rows, {
    Path: 'Relay over TLS',
    'Round trip': '42 ms',
    Loss: '1.2 %',
    Receiving: '812 kbit/s',
    Sending: '640 kbit/s',
    Picture: '640×480 at 30 fps',
    Codec: 'VP8',
  });
  const direct = [
    { id: 'P', type: 'candidate-pair', nominated: true, state: 'succeeded', localCandidateId: 'L', remoteCandidateId: 'R' },
    { id: 'L', type: 'local-candidate', candidateType: 'host', protocol: 'udp' },
    { id: 'R', type: 'remote-candidate', candidateType: 'srflx' },
  ];
  assert.deepEqual(connectionDetails(direct), [['Path', 'Direct (UDP)']]);
  assert.deepEqual(connectionDetails([]), []);
});
