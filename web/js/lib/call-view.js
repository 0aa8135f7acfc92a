// The one state machine behind every status word and pill of the call screen. Pure: the
// client feeds it facts (signaling state, RTCPeerConnection state, where the other person is,
// whether the call ended, both sides' link quality) and draws what it returns, so the screen
// can never say "Reconnecting…", "Poor connection" and "The other person left" at once.

/** Pill words by view state. `data-state` on #conn-state is the key (tests wait on it). */
export const VIEW_WORDS = Object.freeze({
  idle: 'Not connected',
  connecting: 'Connecting…',
  waiting: 'Waiting for the other person',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  'peer-away': 'The other person is reconnecting…',
  alone: 'The other person left',
  failed: 'Connection failed',
  blocked: 'Blocked by the network',
  left: 'You left',
  ended: 'Call ended',
});

const QUALITY_RANK = { unknown: 0, good: 1, fair: 2, poor: 3 };

/**
 * Quality words from both sides' levels (`good|fair|poor|unknown`). The worse side is named:
 * when only the other person's link is bad, the pill says so instead of blaming ours.
 */
export function qualityView(mine = 'unknown', theirs = 'unknown') {
  const m = QUALITY_RANK[mine] ?? 0;
  const t = QUALITY_RANK[theirs] ?? 0;
  if (m === 0 && t === 0) return { level: 'unknown', text: 'Measuring…', whose: 'both' };
  const level = m >= t ? mine : theirs;
  if (level === 'good') return { level, text: 'Good connection', whose: 'both' };
  const adjective = level === 'poor' ? 'poor' : 'unstable';
  if (m === t) return { level, text: level === 'poor' ? 'Poor connection' : 'Fair connection', whose: 'both' };
  if (m > t) return { level, text: `Your connection is ${adjective}`, whose: 'mine' };
  return { level, text: `Their connection is ${adjective}`, whose: 'theirs' };
}

/**
 * What the call screen shows.
 * @param {object} f
 * @param {'idle'|'connecting'|'open'|'reconnecting'|'closed'} f.signaling
 * @param {string} f.media        RTCPeerConnection.connectionState, or 'none'
 * @param {'waiting'|'present'|'reconnecting'|'left'} f.peer
 * @param {boolean} [f.ended]
 * @param {string} [f.mine]       our quality level
 * @param {string} [f.theirs]     the other person's quality level (sent over the data channel)
 * @param {boolean} [f.blocked]   no media path came up in time (MediaSession's `blocked`)
 * @param {boolean} [f.left]      we pressed Leave: the call goes on without us (Rejoin possible)
 * @returns {{state: string, text: string, timer: 'hidden'|'running'|'stopped',
 *           quality: null|{level,text,whose}, stage: 'invite'|'peer-away'|'alone'|'media'|'none',
 *           mediaExpected: boolean}}
 */
export function callView(f) {
  const view = viewOf(f);
  // No media path ever came up (a firewall drops UDP and TURN alike): say so, not "connecting".
  if (f.blocked && !['connected', 'ended', 'alone', 'left'].includes(view.state)) {
    return { ...view, state: 'blocked', text: VIEW_WORDS.blocked, quality: null };
  }
  return view;
}

function viewOf(f) {
  const ever = f.connectedOnce === true;
  const timerAfter = ever ? 'stopped' : 'hidden';
  if (f.left) {
    return { state: 'left', text: VIEW_WORDS.left, timer: timerAfter, quality: null, stage: 'none', mediaExpected: false };
  }
  if (f.ended || f.signaling === 'closed') {
    return { state: 'ended', text: VIEW_WORDS.ended, timer: timerAfter, quality: null, stage: 'none', mediaExpected: false };
  }
  if (f.peer === 'left') {
    return { state: 'alone', text: VIEW_WORDS.alone, timer: timerAfter, quality: null, stage: 'alone', mediaExpected: false };
  }
  if (f.signaling === 'reconnecting') {
    // Our own link to the server: media may still flow, so the timer keeps going.
    return { state: 'reconnecting', text: VIEW_WORDS.reconnecting, timer: ever ? 'running' : 'hidden', quality: null, stage: f.peer === 'waiting' ? 'invite' : 'media', mediaExpected: f.peer !== 'waiting' };
  }
  if (f.peer === 'waiting') {
    const state = f.signaling === 'open' ? 'waiting' : 'connecting';
    return { state, text: VIEW_WORDS[state], timer: 'hidden', quality: null, stage: 'invite', mediaExpected: false };
  }
  if (f.peer === 'reconnecting') {
    return { state: 'peer-away', text: VIEW_WORDS['peer-away'], timer: ever ? 'running' : 'hidden', quality: null, stage: 'peer-away', mediaExpected: false };
  }
  // The other person is here: media is expected.
  if (f.media === 'connected') {
    return { state: 'connected', text: VIEW_WORDS.connected, timer: 'running', quality: qualityView(f.mine, f.theirs), stage: 'media', mediaExpected: true };
  }
  if (f.media === 'failed') {
    return { state: 'failed', text: VIEW_WORDS.failed, timer: timerAfter, quality: null, stage: 'media', mediaExpected: true };
  }
  if (f.media === 'disconnected' || (ever && f.media !== 'connected')) {
    return { state: 'reconnecting', text: VIEW_WORDS.reconnecting, timer: ever ? 'running' : 'hidden', quality: null, stage: 'media', mediaExpected: true };
  }
  return { state: 'connecting', text: VIEW_WORDS.connecting, timer: 'hidden', quality: null, stage: 'media', mediaExpected: true };
}
