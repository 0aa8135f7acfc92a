// Summarise RTCPeerConnection.getStats() into the small `stats` message and the quality
// indicator. Pure: takes the report entries as an array of plain objects (what
// `[...report.values()]` gives) and the previous sample, returns the summary and the next sample.

/** The selected candidate pair: via the transport's selectedCandidatePairId, else nominated+succeeded. */
export function selectedPair(reports) {
  const byId = new Map(reports.map((r) => [r.id, r]));
  for (const r of reports) {
    if (r.type === 'transport' && r.selectedCandidatePairId) {
      const pair = byId.get(r.selectedCandidatePairId);
      if (pair) return pair;
    }
  }
  return (
    reports.find((r) => r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') ??
    reports.find((r) => r.type === 'candidate-pair' && r.selected) ??
    null
  );
}

/**
 * Build a summary. `prev` is the sample returned last time (or null), `now` milliseconds.
 * Returns `{ summary, sample }`; summary fields are absent when unknown.
 */
export function summariseStats(reports, prev, now) {
  const byId = new Map(reports.map((r) => [r.id, r]));
  const pair = selectedPair(reports);
  const local = pair ? byId.get(pair.localCandidateId) : null;
  const remote = pair ? byId.get(pair.remoteCandidateId) : null;
  let bytesIn = 0;
  let bytesOut = 0;
  let packetsReceived = 0;
  let packetsLost = 0;
  let framesDecoded = null;
  for (const r of reports) {
    if (r.type === 'inbound-rtp') {
      bytesIn += r.bytesReceived ?? 0;
      packetsReceived += r.packetsReceived ?? 0;
      packetsLost += Math.max(0, r.packetsLost ?? 0);
      if ((r.kind ?? r.mediaType) === 'video' && typeof r.framesDecoded === 'number') {
        framesDecoded = (framesDecoded ?? 0) + r.framesDecoded;
      }
    } else if (r.type === 'outbound-rtp') {
      bytesOut += r.bytesSent ?? 0;
    }
  }
  const summary = {};
  if (pair && typeof pair.currentRoundTripTime === 'number') {
    summary.rttMs = Math.round(pair.currentRoundTripTime * 10000) / 10;
  }
  const candType = local?.candidateType ?? null;
  const remoteType = remote?.candidateType ?? null;
  // The pair is "relay" when either end goes through a TURN server.
  if (candType === 'relay' || remoteType === 'relay') summary.candidateType = 'relay';
  else if (candType) summary.candidateType = candType;
  if (framesDecoded !== null) summary.framesDecoded = framesDecoded;
  const sample = { t: now, bytesIn, bytesOut, packetsReceived, packetsLost };
  if (prev && now > prev.t) {
    const secs = (now - prev.t) / 1000;
    const dIn = bytesIn - prev.bytesIn;
    const dOut = bytesOut - prev.bytesOut;
    if (dIn >= 0) summary.bitrateInKbps = Math.round((dIn * 8) / secs / 100) / 10;
    if (dOut >= 0) summary.bitrateOutKbps = Math.round((dOut * 8) / secs / 100) / 10;
    const dRecv = packetsReceived - prev.packetsReceived;
    const dLost = packetsLost - prev.packetsLost;
    if (dRecv >= 0 && dLost >= 0 && dRecv + dLost > 0) {
      summary.packetLoss = Math.round((dLost / (dRecv + dLost)) * 10000) / 10000;
    } else if (dRecv === 0 && dLost === 0) {
      summary.packetLoss = 0;
    }
  }
  return { summary, sample };
}

/**
 * Quality from a summary: `good`, `fair`, `poor`, or `unknown` when there is nothing to judge.
 * Thresholds: RTT 150/400 ms, loss 2%/8%, and no inbound media at all counts as poor.
 */
export function qualityLevel(summary) {
  if (!summary || (summary.rttMs === undefined && summary.packetLoss === undefined)) {
    return 'unknown';
  }
  const rtt = summary.rttMs ?? 0;
  const loss = summary.packetLoss ?? 0;
  if (summary.bitrateInKbps === 0 || rtt > 400 || loss > 0.08) return 'poor';
  if (rtt > 150 || loss > 0.02) return 'fair';
  return 'good';
}

export const QUALITY_WORDS = Object.freeze({
  good: 'Good connection',
  fair: 'Fair connection',
  poor: 'Poor connection',
  unknown: 'Measuring connection…',
});

/**
 * The connection details behind the quality pill, from a getStats() report (array of plain
 * objects): the path (direct or through the relay, and over which transport), RTT, inbound
 * loss and bitrates from `summary`, the received resolution and codec. Rows of [label, value].
 */
export function connectionDetails(reports, summary = {}) {
  const byId = new Map(reports.map((r) => [r.id, r]));
  const pair = selectedPair(reports);
  const local = pair ? byId.get(pair.localCandidateId) : null;
  const remote = pair ? byId.get(pair.remoteCandidateId) : null;
  const rows = [];
  if (local) {
    const relayed = local.candidateType === 'relay' || remote?.candidateType === 'relay';
    const proto = String(local.candidateType === 'relay' ? local.relayProtocol ?? local.protocol ?? 'udp' : local.protocol ?? 'udp').toLowerCase();
    const over = proto === 'tls' ? 'TLS' : proto === 'tcp' ? 'TCP' : 'UDP';
    rows.push(['Path', relayed ? `Relay over ${over}` : `Direct (${over})`]);
  }
  if (summary.rttMs !== undefined) rows.push(['Round trip', `${Math.round(summary.rttMs)} ms`]);
  if (summary.packetLoss !== undefined) rows.push(['Loss', `${(summary.packetLoss * 100).toFixed(1)} %`]);
  if (summary.bitrateInKbps !== undefined) rows.push(['Receiving', `${Math.round(summary.bitrateInKbps)} kbit/s`]);
  if (summary.bitrateOutKbps !== undefined) rows.push(['Sending', `${Math.round(summary.bitrateOutKbps)} kbit/s`]);
  const video = reports.find((r) => r.type === 'inbound-rtp' && (r.kind ?? r.mediaType) === 'video' && r.frameWidth);
  if (video) {
    rows.push(['Picture', `${video.frameWidth}×${video.frameHeight}${video.framesPerSecond ? ` at ${Math.round(video.framesPerSecond)} fps` : ''}`]);
    const codec = byId.get(video.codecId);
    if (codec?.mimeType) rows.push(['Codec', codec.mimeType.replace(/^video\//, '')]);
  }
  return rows;
}
