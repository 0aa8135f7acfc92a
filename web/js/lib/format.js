// Words and numbers the call screen shows. Pure.

/** `m:ss`, or `h:mm:ss` from an hour on. */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Human words for the connection state the call screen shows. */
export const CONNECTION_WORDS = Object.freeze({
  idle: 'Not connected',
  connecting: 'Connecting…',
  waiting: 'Waiting for the other person…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  failed: 'Connection failed',
  blocked: 'Blocked by the network',
  ended: 'Call ended',
});

/** What a person is told when no media path comes up (a firewall drops UDP and TURN alike). */
export const BLOCKED_WORDS =
  'No audio or video can get through: a firewall on your network or the other person\'s blocks the call. ' +
  'Try again, or try another network (for example a phone hotspot).';

/** Human words for the other person's status. */
export const PEER_WORDS = Object.freeze({
  waiting: 'Waiting for the other person to join',
  present: 'The other person is here',
  reconnecting: 'The other person is reconnecting…',
  left: 'The other person left the call',
});

/**
 * The one connection state shown, from the signaling state (`connecting`, `open`,
 * `reconnecting`, `closed`), the media state (RTCPeerConnection.connectionState or `none`)
 * and whether the peer is present. Signaling trouble while media flows still shows
 * `reconnecting`, so people know why chat or a renegotiation may lag.
 */
export function overallState(signaling, media, peerPresent) {
  if (signaling === 'closed' && media !== 'connected') return 'ended';
  if (media === 'failed') return 'failed';
  if (signaling === 'reconnecting') return 'reconnecting';
  if (media === 'connected') return 'connected';
  if (media === 'disconnected') return 'reconnecting';
  if (signaling === 'open' && !peerPresent) return 'waiting';
  return 'connecting';
}
