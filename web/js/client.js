// Start-up and routing: `/` is the home screen, `/c/CODE` joins that code directly, `/call`
// is the creator's call (restored from sessionStorage after a reload of the same tab). Wires the
// API, the signaling session, the media session and the UI together.

import { ApiError, createCall, joinCall, resolveCode } from './api.js';
import { codeFromPath, normaliseCode, shareLink } from './lib/code.js';
import { BLOCKED_WORDS, overallState } from './lib/format.js';
import { hangupMessage, resolveSignalUrl } from './lib/messages.js';
import { qualityLevel } from './lib/stats.js';
import { MediaSession } from './media-session.js';
import { SignalingSession } from './signaling-session.js';
import { Ui } from './ui-controls.js';

const STORE_KEY = 'hermes.call';
const ui = new Ui();

/** Debug and test hooks (no secrets: tokens are not exposed here). */
const debug = {
  timing: { joinClick: null, joined: null, firstFrame: null },
  signaling: null,
  media: null,
  state: { signaling: 'idle', media: 'none', peer: 'waiting', overall: 'idle', blocked: false },
  /** Every overall state shown, in order, with performance.now() timestamps. */
  stateLog: [],
  joins: [],
  securityCode: null,
  chat: [],
};
globalThis.__hermes = debug;

let call = null; // the one live call of this page

function saveCall(entry) {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify(entry));
  } catch {
    // private mode: a reload then starts over
  }
}

function loadCall() {
  try {
    const v = JSON.parse(sessionStorage.getItem(STORE_KEY) ?? 'null');
    return v && typeof v.token === 'string' && typeof v.path === 'string' ? v : null;
  } catch {
    return null;
  }
}

function forgetCall() {
  try {
    sessionStorage.removeItem(STORE_KEY);
  } catch {
    // nothing stored
  }
}

/**
 * Camera and microphone, degrading to audio-only, video-only, then receive-only. The notice
 * says why in words that hold whatever the other side has: a page that is not a secure context
 * (plain HTTP from another address) gets no devices at all; a refusal and missing devices are
 * told apart. It never claims we see or hear the other person: we cannot know that here.
 */
async function acquireMedia() {
  const md = navigator.mediaDevices;
  if (!globalThis.isSecureContext) {
    const https = location.href.replace(/^http:/, 'https:');
    return {
      stream: new MediaStream(),
      notice: `This page is not secure (plain HTTP from another computer), so the browser gives it no camera or microphone: the other person cannot see or hear you. Open it over HTTPS instead: ${https}`,
    };
  }
  if (!md?.getUserMedia) {
    return { stream: new MediaStream(), notice: 'This browser cannot use a camera or microphone here: the other person cannot see or hear you.' };
  }
  const attempts = [
    [{ audio: true, video: true }, ''],
    [{ audio: true }, 'Camera not available: you are in the call with audio only.'],
    [{ video: true }, 'Microphone not available: the other person cannot hear you.'],
  ];
  let denied = false;
  for (const [constraints, notice] of attempts) {
    try {
      return { stream: await md.getUserMedia(constraints), notice };
    } catch (e) {
      // try the next, smaller set
      if (e?.name === 'NotAllowedError' || e?.name === 'SecurityError') denied = true;
    }
  }
  return {
    stream: new MediaStream(),
    notice: denied
      ? 'Camera and microphone access was refused: the other person cannot see or hear you. Allow access in the browser\'s site settings and rejoin to change that.'
      : 'No camera or microphone could be used (none found, or in use by another app): the other person cannot see or hear you.',
  };
}

function refreshState() {
  if (!call || call.ended) return;
  const s = debug.state;
  let overall = overallState(s.signaling, s.media, s.peer === 'present' || s.peer === 'reconnecting');
  if (s.blocked && overall !== 'connected' && overall !== 'ended') overall = 'blocked';
  if (overall !== s.overall) debug.stateLog.push({ state: overall, t: performance.now() });
  s.overall = overall;
  ui.setConnectionState(s.overall);
  if (s.overall === 'connected') ui.startTimer();
}

function setPeer(status) {
  debug.state.peer = status;
  ui.setPeerStatus(status);
  refreshState();
}

function endCall(reason, { notify = false } = {}) {
  if (!call || call.ended) return;
  call.ended = true;
  if (notify) call.signaling?.send(hangupMessage());
  call.media?.close();
  // Give the hang-up a moment to leave before closing the socket.
  setTimeout(() => call.signaling?.close(), notify ? 300 : 0);
  for (const t of call.localStream?.getTracks() ?? []) t.stop();
  forgetCall();
  debug.state.overall = 'ended';
  ui.showEnded(reason);
}

/** Enter the call screen and run the call with a join token. */
async function startCall({ token, callId, code, path }) {
  ui.showCall();
  ui.setConnectionState('connecting');
  if (code) ui.showInvite(code, shareLink(location.origin, code));
  call = { ended: false, token };
  const mediaPromise = acquireMedia();
  let join;
  try {
    join = await joinCall(token);
  } catch (e) {
    forgetCall();
    (await mediaPromise).stream.getTracks().forEach((t) => t.stop());
    call.ended = true;
    ui.showEnded(e instanceof ApiError ? e.message : 'Could not join the call.');
    return;
  }
  saveCall({ token, callId: join.callId, code, path });
  const { stream, notice } = await mediaPromise;
  call.localStream = stream;
  ui.setLocalStream(stream);
  ui.setNotice(notice);
  ui.setToggle('audio', true, stream.getAudioTracks().length > 0);
  ui.setToggle('video', true, stream.getVideoTracks().length > 0);
  fillDevices();

  const media = new MediaSession({
    role: join.role,
    iceServers: join.iceServers,
    iceTransportPolicy: join.iceTransportPolicy,
    localStream: stream,
    send: (m) => signaling.send(m),
    on: {
      remoteStream: (s) => ui.setRemoteStream(s),
      state: (st) => {
        // Media lost its path: the network may have changed, and the signaling socket with it.
        if (st === 'disconnected' || st === 'failed') call.signaling?.checkAlive();
        debug.state.media = st;
        refreshState();
      },
      securityCode: (c) => {
        debug.securityCode = c?.text ?? null;
        ui.setSecurityCode(c);
      },
      chat: (text) => {
        debug.chat.push({ who: 'theirs', text });
        ui.addChat(text, 'theirs');
      },
      chatOpen: (open) => ui.setChatOpen(open),
      blocked: (blocked) => {
        debug.state.blocked = blocked;
        ui.setBlocked(blocked ? BLOCKED_WORDS : '');
        refreshState();
      },
      stats: (summary) => ui.setQuality(qualityLevel(summary)),
      log: (text) => console.info(`[hermes] ${text}`),
    },
  });
  const signaling = new SignalingSession({
    url: resolveSignalUrl(join.signalUrl, location.href),
    token,
    callId: join.callId,
    onStateChange: (st, info) => {
      debug.state.signaling = st;
      if (st === 'closed' && !call.ended) {
        endCall(info?.message ?? 'The connection to the server was closed.');
        return;
      }
      refreshState();
    },
    onMessage: (m) => onSignal(m, media),
  });
  call.media = media;
  call.signaling = signaling;
  debug.media = media;
  debug.signaling = signaling;
  signaling.start();
}

function onSignal(m, media) {
  switch (m.type) {
    case 'joined': {
      debug.timing.joined ??= performance.now();
      debug.joins.push({ resumed: m.resumed, t: performance.now() });
      const peer = m.peers.find((p) => p.role !== 'observer' && p.participantId !== m.participantId);
      const reconnect = call.joinedBefore;
      call.joinedBefore = true;
      if (peer) {
        setPeer(peer.connected ? 'present' : 'reconnecting');
        // A fresh (not resumed) seat after a reconnect: the other side sees us as new.
        media.peerPresent({ fresh: reconnect && !m.resumed });
      } else {
        setPeer(debug.state.peer === 'waiting' ? 'waiting' : 'left');
      }
      break;
    }
    case 'peer-joined':
      if (m.role === 'observer') break;
      setPeer('present');
      media.peerPresent({ fresh: call.peerSeen === true });
      call.peerSeen = true;
      break;
    case 'peer-reconnecting':
      setPeer('reconnecting');
      break;
    case 'peer-resumed':
      setPeer('present');
      break;
    case 'peer-left':
      if (m.reason === 'hangup') endCall('The other person hung up.');
      else setPeer('left');
      break;
    case 'offer':
    case 'answer':
    case 'ice-candidate':
      call.peerSeen = true;
      if (debug.state.peer === 'waiting') setPeer('present');
      media.handleSignal(m);
      break;
    case 'hangup':
      endCall('The other person hung up.');
      break;
    case 'call-ended':
      endCall(m.reason === 'hangup' ? 'The other person hung up.' : 'The call has ended.');
      break;
    case 'error':
      if (m.code === 'call-full') endCall('This call already has two people in it.');
      else if (m.code === 'call-ended') endCall('This call has ended.');
      else if (m.code === 'unauthorized') endCall('Your access to this call is no longer valid.');
      else console.warn(`[hermes] signal error ${m.code}: ${m.message}`);
      break;
    default:
      break;
  }
}

async function fillDevices() {
  const md = navigator.mediaDevices;
  if (!md?.enumerateDevices) return;
  const devices = await md.enumerateDevices().catch(() => []);
  const current = (kind) => call?.localStream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  ui.setDevices('audio', devices.filter((d) => d.kind === 'audioinput'), current('audio'));
  ui.setDevices('video', devices.filter((d) => d.kind === 'videoinput'), current('video'));
}

async function switchDevice(kind, deviceId) {
  if (!call?.media) return;
  try {
    const s = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
    const track = kind === 'audio' ? s.getAudioTracks()[0] : s.getVideoTracks()[0];
    const wasOn = call.localStream.getTracks().find((t) => t.kind === kind)?.enabled ?? true;
    track.enabled = wasOn;
    await call.media.replaceTrack(kind, track);
    ui.setLocalStream(call.localStream);
    ui.setToggle(kind, wasOn, true);
  } catch {
    ui.setNotice(`Could not switch to that ${kind === 'audio' ? 'microphone' : 'camera'}.`);
  }
}

function toggle(kind) {
  const tracks = call?.localStream?.getTracks().filter((t) => t.kind === kind) ?? [];
  if (tracks.length === 0) return;
  const on = !tracks[0].enabled;
  for (const t of tracks) t.enabled = on;
  ui.setToggle(kind, on, true);
}

function watchFirstFrame() {
  const v = document.getElementById('remote-video');
  const mark = () => {
    debug.timing.firstFrame ??= performance.now();
  };
  // The first remote frame actually presented (decoded and composited), else first data.
  if (typeof v.requestVideoFrameCallback === 'function') v.requestVideoFrameCallback(mark);
  v.addEventListener('loadeddata', mark, { once: true });
}

async function joinWithCode(typed) {
  const n = normaliseCode(typed);
  if (!n.ok) {
    ui.setJoinError(n.message);
    return;
  }
  debug.timing.joinClick = performance.now();
  ui.setBusy(true);
  try {
    const r = await resolveCode(n.code);
    const path = `/c/${n.code}`;
    if (location.pathname !== path) history.replaceState(null, '', path);
    await startCall({ token: r.token, callId: r.callId, path });
  } catch (e) {
    ui.showHome({ code: typed });
    ui.setJoinError(e instanceof ApiError ? e.message : 'Could not join. Try again.');
    if (location.pathname !== '/') history.replaceState(null, '', '/');
  } finally {
    ui.setBusy(false);
  }
}

async function newCall() {
  ui.setBusy(true);
  ui.setCreateError('');
  try {
    const c = await createCall();
    history.pushState(null, '', '/call');
    await startCall({ token: c.token, callId: c.callId, code: c.code, path: '/call' });
  } catch (e) {
    ui.setCreateError(e instanceof ApiError ? e.message : 'Could not start a call. Try again.');
  } finally {
    ui.setBusy(false);
  }
}

function route() {
  const stored = loadCall();
  if (stored && stored.path === location.pathname) {
    // Same tab reloaded mid-call: rejoin with the token we already have.
    startCall(stored);
    return;
  }
  const typed = codeFromPath(location.pathname);
  if (typed !== null) {
    ui.showHome({ code: typed });
    debug.timing.joinClick = performance.now();
    joinWithCode(typed);
    return;
  }
  if (location.pathname !== '/') history.replaceState(null, '', '/');
  ui.showHome();
}

ui.onNewCall(newCall);
ui.onJoin(joinWithCode);
ui.onToggle('audio', () => toggle('audio'));
ui.onToggle('video', () => toggle('video'));
ui.onDeviceChange('audio', (id) => switchDevice('audio', id));
ui.onDeviceChange('video', (id) => switchDevice('video', id));
ui.onRetry(() => {
  debug.state.blocked = false;
  ui.setBlocked('');
  refreshState();
  call?.media?.retry();
});
ui.onHangUp(() => endCall('You hung up.', { notify: true }));
ui.onChatSend((text) => {
  if (!call?.media?.sendChat(text)) return false;
  debug.chat.push({ who: 'mine', text });
  ui.addChat(text, 'mine');
  return true;
});
window.addEventListener('online', () => call?.signaling?.reconnectNow());
window.addEventListener('popstate', () => {
  if (!call) route();
});
navigator.mediaDevices?.addEventListener?.('devicechange', fillDevices);
watchFirstFrame();
route();
