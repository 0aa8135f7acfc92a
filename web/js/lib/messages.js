// Signaling wire messages (hermes_proto::signal) and REST error handling (hermes_proto::api):
// builders for what the client sends, a checked parser for what the server sends, the close
// codes that end a session for good, and the URL of the signal service. Pure: no DOM.

// Close codes from hermes_proto::signal.
export const CLOSE = Object.freeze({
  SERVICE_RESTART: 1012,
  POLICY_VIOLATION: 1008,
  CALL_FULL: 4001,
  REPLACED: 4002,
  CALL_ENDED: 4003,
  UNAUTHORIZED: 4401,
});

/** Close codes after which reconnecting cannot help. */
export function isTerminalClose(code) {
  return (
    code === CLOSE.CALL_FULL ||
    code === CLOSE.REPLACED ||
    code === CLOSE.CALL_ENDED ||
    code === CLOSE.UNAUTHORIZED ||
    code === CLOSE.POLICY_VIOLATION
  );
}

/** Human words for a terminal close. */
export function closeMessage(code) {
  switch (code) {
    case CLOSE.CALL_FULL:
      return 'This call already has two people in it.';
    case CLOSE.REPLACED:
      return 'You joined this call from another tab or device.';
    case CLOSE.CALL_ENDED:
      return 'The call has ended.';
    case CLOSE.UNAUTHORIZED:
      return 'Your access to this call is no longer valid.';
    case CLOSE.POLICY_VIOLATION:
      return 'The server closed the connection.';
    default:
      return 'The connection to the server was lost.';
  }
}

/** `join`: the first message on every connection. `lastSeq` only when resuming. */
/**
 * `join`. `lastSeq` is the highest relayed `seq` processed; `lastSeqs` the same per sender
 * (`from` → seq): numbers are per sender, and a client that received from several (an
 * observer, or a peer replaced by another participant) resumes exactly with it.
 */
export function joinMessage(token, { lastSeq, lastSeqs, callId } = {}) {
  const m = { type: 'join', token };
  if (callId) m.callId = callId;
  if (Number.isInteger(lastSeq) && lastSeq >= 0) m.lastSeq = lastSeq;
  const perSender = Object.entries(lastSeqs ?? {}).filter(
    ([from, n]) => typeof from === 'string' && Number.isInteger(n) && n >= 0,
  );
  if (perSender.length > 0) m.lastSeqs = Object.fromEntries(perSender);
  return m;
}

export function offerMessage(sdp) {
  return { type: 'offer', sdp };
}

export function answerMessage(sdp) {
  return { type: 'answer', sdp };
}

/** `ice-candidate` from an RTCIceCandidate or its JSON (only the fields the server knows). */
export function candidateMessage(candidate) {
  const c = typeof candidate?.toJSON === 'function' ? candidate.toJSON() : candidate;
  const out = { candidate: String(c?.candidate ?? '') };
  if (c?.sdpMid != null) out.sdpMid = String(c.sdpMid);
  if (c?.sdpMLineIndex != null) out.sdpMLineIndex = Number(c.sdpMLineIndex);
  if (c?.usernameFragment != null) out.usernameFragment = String(c.usernameFragment);
  return { type: 'ice-candidate', candidate: out };
}

export function hangupMessage() {
  return { type: 'hangup' };
}

/** Leave without ending the call: the server frees the seat at once and closes with 1000. */
export function leaveMessage() {
  return { type: 'leave' };
}

export function ackMessage(seq) {
  return { type: 'ack', seq };
}

export function pingMessage(ts) {
  return { type: 'ping', ts };
}

/** `stats`: only finite numbers and a known candidate type go on the wire. */
export function statsMessage(summary) {
  const m = { type: 'stats' };
  const num = (k, v) => {
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0) m[k] = v;
  };
  num('rttMs', summary?.rttMs);
  num('packetLoss', summary?.packetLoss);
  num('bitrateInKbps', summary?.bitrateInKbps);
  num('bitrateOutKbps', summary?.bitrateOutKbps);
  if (['host', 'srflx', 'prflx', 'relay'].includes(summary?.candidateType)) {
    m.candidateType = summary.candidateType;
  }
  if (Number.isInteger(summary?.framesDecoded) && summary.framesDecoded >= 0) {
    m.framesDecoded = summary.framesDecoded;
  }
  return m;
}

const RELAYED = new Set(['offer', 'answer', 'ice-candidate', 'hangup']);
const KNOWN = new Set([
  'joined',
  'peer-joined',
  'peer-reconnecting',
  'peer-resumed',
  'peer-left',
  'call-ended',
  'pong',
  'error',
  ...RELAYED,
]);

/**
 * Parse a server frame. Returns the message object, or null for anything that is not a
 * well-formed known message (bad JSON, unknown type, relayed message without from/seq).
 */
export function parseServerMessage(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    return null;
  }
  if (!m || typeof m !== 'object' || Array.isArray(m) || !KNOWN.has(m.type)) return null;
  if (RELAYED.has(m.type)) {
    if (typeof m.from !== 'string' || !Number.isSafeInteger(m.seq) || m.seq < 0) return null;
    if ((m.type === 'offer' || m.type === 'answer') && typeof m.sdp !== 'string') return null;
    if (m.type === 'ice-candidate' && (typeof m.candidate !== 'object' || m.candidate === null)) {
      return null;
    }
  }
  return m;
}

/** True for messages that carry a per-call sequence number and must be acknowledged. */
export function isRelayed(m) {
  return RELAYED.has(m?.type);
}

/**
 * The WebSocket URL for `signalUrl` from /api/join: absolute ws(s) URLs are kept, http(s)
 * mapped to ws(s), and paths (default `/ws`) resolved against the page origin with the
 * scheme matching the page (https -> wss).
 */
export function resolveSignalUrl(signalUrl, pageHref) {
  const url = new URL(signalUrl || '/ws', pageHref);
  if (url.protocol === 'https:') url.protocol = 'wss:';
  else if (url.protocol === 'http:') url.protocol = 'ws:';
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new Error(`unsupported signal URL scheme ${url.protocol}`);
  }
  url.hash = '';
  return url.toString();
}

/**
 * Turn an API failure into words for people. `status` is the HTTP status (0 for a network
 * failure), `body` the parsed error body (`{"error":{"code","message"}}`) or null,
 * `retryAfter` the Retry-After header in seconds if any, `op` one of create|resolve|join.
 */
export function apiErrorMessage(op, status, body, retryAfter) {
  const code = body?.error?.code;
  if (status === 0) return 'Cannot reach the server. Check your connection and try again.';
  if (status === 429 || code === 'rate-limited') {
    const secs = Number.parseInt(retryAfter, 10);
    const wait =
      Number.isFinite(secs) && secs > 0
        ? secs >= 90
          ? `about ${Math.ceil(secs / 60)} minutes`
          : `${secs} seconds`
        : 'a minute';
    return `Too many attempts. Please wait ${wait} and try again.`;
  }
  if (op === 'resolve') {
    if (status === 404 || status === 410 || code === 'code-not-found' || code === 'code-expired') {
      return 'This code is unknown, expired or already used. Ask for a new one.';
    }
    if (status === 400 || code === 'bad-code') {
      return 'That does not look like a valid code. Check it and try again.';
    }
  }
  if (status === 401 || status === 403) {
    return 'Your access to this call is no longer valid. Start or join a new call.';
  }
  if (status === 409 || code === 'call-ended') return 'This call has already ended.';
  if (status === 503) return 'The service is busy right now. Try again in a few seconds.';
  if (status >= 500) return 'Something went wrong on the server. Try again.';
  return body?.error?.message || `Request failed (${status}).`;
}
