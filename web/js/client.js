// Start-up and routing: `/` is the home screen, `/c/CODE` opens the lobby for that code, `/call`
// is the creator's call (restored from sessionStorage after a reload of the same tab). Wires the
// API, the signaling session, the media session and the UI together; every status word comes
// from the one state machine in lib/call-view.js.

import { ApiError, callStatus, createCall, endCallForAll, joinCall, newCode, resolveCode } from './api.js';
import { callView } from './lib/call-view.js';
import { codeFromPath, formatCode, normaliseCode, shareLink } from './lib/code.js';
import { codeFromInput } from './lib/code-input.js';
import { BLOCKED_WORDS, PEER_WORDS, formatDuration } from './lib/format.js';
import { resolveSignalUrl } from './lib/messages.js';
import { shortcutFor } from './lib/shortcuts.js';
import { connectionDetails, qualityLevel } from './lib/stats.js';
import * as store from './lib/store.js';
import { MediaSession } from './media-session.js';
import { SignalingSession } from './signaling-session.js';
import { Ui } from './ui-controls.js';

const ui = new Ui();
const session = globalThis.sessionStorage;
const local = globalThis.localStorage;
/** Peak level (0..1) of our microphone above which we count as speaking. */
const SPEAKING_PEAK = 0.1;
/** Average level (0..1, RMS) of the other person's audio above which they count as speaking. */
const SPEAKING_LEVEL = 0.02;
/** The speaking ring stays this long after the last loud moment (no flicker between words). */
const SPEAKING_HOLD_MS = 1200;
/** How long a muted mic must pick up speech (within a few seconds) before the hint shows. */
const MUTED_SPEECH_MS = 300;
/** After Leave, "You left the call · Rejoin" stays this long before the end card (undo). */
const UNDO_MS = 5000;
/** Controls hide after this long without pointer, touch or key activity during a call. */
const IDLE_MS = 4000;

/** Debug and test hooks (no secrets: tokens are not exposed here). */
const debug = {
  timing: { joinClick: null, joined: null, firstFrame: null },
  signaling: null,
  media: null,
  state: { signaling: 'idle', media: 'none', peer: 'waiting', overall: 'idle', blocked: false },
  /** Every overall state shown, in order, with performance.now() timestamps. */
  stateLog: [],
  joins: [],
  /** Presence events from the server (`peer-*`), with their reason and performance.now(). */
  peerEvents: [],
  securityCode: null,
  securityCodeChanged: false,
  chat: [],
  remote: {},
  notifications: [],
};
globalThis.__hermes = debug;

let call = null; // the one live call of this page
let lobby = null; // the lobby's preview, before joining

// ---------------------------------------------------------------- media

/**
 * Camera and microphone, degrading to audio-only, video-only, then receive-only. The notice
 * says why in words that hold whatever the other side has: a page that is not a secure context
 * (plain HTTP from another address) gets no devices at all; a refusal and missing devices are
 * told apart. It never claims we see or hear the other person: we cannot know that here.
 */
async function acquireMedia(devices = {}) {
  const md = navigator.mediaDevices;
  if (!globalThis.isSecureContext) {
    const https = location.href.replace(/^http:/, 'https:');
    return {
      stream: new MediaStream(),
      notice: `This page is not secure (plain HTTP from another computer), so the browser gives it no camera or microphone: the other person cannot see or hear you. Open it over HTTPS instead: ${https}`,
    };
  }
  if (!md?.getUserMedia) {
    return { stream: new MediaStream(), notice: 'This browser cannot use a camera or microphone here: the other person cannot see or hear you.', denied: true };
  }
  const audio = devices.audio ? { deviceId: { exact: devices.audio } } : true;
  const video = devices.video ? { deviceId: { exact: devices.video } } : true;
  const attempts = [
    [{ audio, video }, ''],
    [{ audio }, 'Camera not available: you are in the call with audio only.'],
    [{ video }, 'Microphone not available: the other person cannot hear you.'],
  ];
  let denied = false;
  for (const [constraints, notice] of attempts) {
    try {
      return { stream: await md.getUserMedia(constraints), notice, denied: notice !== '' };
    } catch (e) {
      // try the next, smaller set
      if (e?.name === 'NotAllowedError' || e?.name === 'SecurityError') denied = true;
    }
  }
  return {
    stream: new MediaStream(),
    notice: denied
      ? 'Camera and microphone access was refused: the other person cannot see or hear you. Allow access in the browser (the icon in the address bar), then press Try again.'
      : 'No camera or microphone could be used (none found, or in use by another app): the other person cannot see or hear you. Connect one, then press Try again.',
    denied: true,
  };
}

/** A live audio level meter on a clone of `track` (so it still hears a muted mic). */
function levelMeter(track) {
  const Ctx = globalThis.AudioContext;
  if (!Ctx || !track) return null;
  const clone = track.clone();
  clone.enabled = true;
  const ctx = new Ctx();
  const source = ctx.createMediaStreamSource(new MediaStream([clone]));
  const analyser = ctx.createAnalyser();
  // 4096 samples (85 ms at 48 kHz): read every 100 ms, almost nothing is missed.
  analyser.fftSize = 4096;
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  return {
    level() {
      if (ctx.state === 'suspended') ctx.resume().catch(() => {});
      analyser.getFloatTimeDomainData(buf);
      let peak = 0;
      for (const x of buf) peak = Math.max(peak, Math.abs(x));
      return Math.min(1, peak);
    },
    stop() {
      clone.stop();
      ctx.close().catch(() => {});
    },
  };
}

// ---------------------------------------------------------------- state

function peerWords(status) {
  const name = call?.remote?.name;
  if (status === 'left') return `${name || 'The other person'} left the call`;
  if (status === 'reconnecting') return `${name || 'The other person'} is reconnecting…`;
  if (status === 'present' && call?.remote?.cam === false) return `${name ? `${name}'s` : 'Their'} camera is off`;
  return PEER_WORDS[status] ?? '';
}

function refreshState() {
  if (!call || call.ended) return;
  const s = debug.state;
  if (s.media === 'connected' && s.peer === 'present' && !call.connectedOnce) {
    call.connectedOnce = true;
    call.startedAt ??= Date.now();
    store.saveSession(session, { startedAt: call.startedAt });
  }
  const view = callView({
    signaling: s.signaling,
    media: s.media,
    peer: s.peer,
    connectedOnce: call.connectedOnce,
    mine: call.quality?.mine,
    theirs: call.remote?.quality,
    blocked: s.blocked,
  });
  if (view.state !== s.overall) debug.stateLog.push({ state: view.state, t: performance.now() });
  // The call came up: the controls' idle countdown starts now, not at the last click before.
  if (view.state === 'connected' && s.overall !== 'connected') wake();
  s.overall = view.state;
  call.view = view;
  // The other person's camera is off: their initial instead of a black picture.
  let stage = view.stage;
  if (stage === 'media' && s.peer === 'present' && (call.remote?.cam === false || call.remoteHasVideo === false)) stage = 'cam-off';
  ui.renderView({ ...view, stage }, { peerStatus: s.peer, peerWords: peerWords(s.peer) });
  if (view.timer === 'running') ui.startTimer(call.startedAt ?? Date.now());
  else if (view.timer === 'stopped') ui.stopTimer();
  else ui.hideTimer();
  const inviting = view.stage === 'invite' || view.stage === 'alone';
  if (!inviting) ui.hideInvite();
  else if (call.inviteCode) ui.showInvite(call.inviteCode, shareLink(location.origin, call.inviteCode));
  else ui.showInviteAgain();
  updateExpiry();
  document.title = titleFor(view);
}

function titleFor(view) {
  if (call?.attention) return `● ${call.remote?.name || 'Someone'} joined — Hermes`;
  if (view.state === 'waiting') return 'Waiting — Hermes';
  if (view.state === 'connected') return 'In call — Hermes';
  if (view.state === 'alone') return 'Left alone — Hermes';
  return 'Hermes — call';
}

function setPeer(status) {
  const before = debug.state.peer;
  debug.state.peer = status;
  if (status === 'present' && call.inviteCode) {
    // Whoever came in used the code: the next invitation needs a fresh one.
    call.inviteCode = null;
    store.saveSession(session, { inviteCode: null });
  }
  if (status === 'present' && before !== 'present' && before !== 'reconnecting') announceJoin();
  if (status === 'left') {
    ui.setSpeaking(false);
    call.announced = false; // whoever comes next is announced again
  }
  refreshState();
}

/** The other person joined: tab title, a short chime and a notification if we are elsewhere. */
function announceJoin() {
  if (!call || call.announced) return;
  call.announced = true;
  if (!document.hidden) return;
  call.attention = true;
  debug.notifications.push({ t: performance.now() });
  try {
    const Ctx = globalThis.AudioContext;
    if (Ctx) {
      const ctx = new Ctx();
      for (const [i, f] of [660, 880].entries()) {
        const o = ctx.createOscillator();
        const g = ctx.createGain();
        o.frequency.value = f;
        g.gain.setValueAtTime(0.0001, ctx.currentTime + i * 0.18);
        g.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + i * 0.18 + 0.02);
        g.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + i * 0.18 + 0.16);
        o.connect(g).connect(ctx.destination);
        o.start(ctx.currentTime + i * 0.18);
        o.stop(ctx.currentTime + i * 0.18 + 0.18);
      }
      setTimeout(() => ctx.close().catch(() => {}), 800);
    }
  } catch {
    // no sound then
  }
  if (globalThis.Notification?.permission === 'granted') {
    try {
      const n = new Notification('Hermes', { body: 'The other person joined your call.', tag: 'hermes-join' });
      n.onclick = () => {
        window.focus();
        n.close();
      };
    } catch {
      // notifications unavailable here
    }
  }
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && call?.attention) {
    call.attention = false;
    if (call.view) document.title = titleFor(call.view);
  }
});

// ---------------------------------------------------------------- code expiry

function updateExpiry() {
  if (!call || !call.inviteCode || !call.codeExpiresAt || call.ended) return;
  const left = call.codeExpiresAt * 1000 - Date.now();
  if (left > 0) ui.setCodeExpiry(`Valid for ${formatDuration(left)} · single use`, false);
  else ui.setCodeExpiry('This code has expired.', true);
}

async function mintCode() {
  if (!call?.token) return;
  try {
    const r = await newCode(call.token);
    call.inviteCode = r.code;
    call.codeExpiresAt = r.codeExpiresAt;
    store.saveSession(session, { inviteCode: r.code, codeExpiresAt: r.codeExpiresAt });
    ui.setInviteTitle(debug.state.peer === 'left' ? 'Invite them again' : 'Invite someone');
    ui.showInvite(r.code, shareLink(location.origin, r.code));
    updateExpiry();
  } catch (e) {
    ui.setCodeExpiry(e instanceof ApiError ? e.message : 'Could not make a new code. Try again.', true);
  }
}

// ---------------------------------------------------------------- call life

function remember(entry) {
  store.saveRecent(local, entry, Date.now());
}

/**
 * Stop everything of this page's call: media, devices, the socket (after `lingerMs`, so a last
 * message leaves first). `callOver` forgets the call in this browser (no rejoin card).
 * Returns what a later Rejoin needs and the call's length so far.
 */
function stopCall({ lingerMs = 0, callOver = true, leave = false } = {}) {
  call.ended = true;
  const { media, signaling: sig } = call;
  setTimeout(() => {
    media?.close();
    if (leave) sig?.leave();
    else sig?.close();
  }, lingerMs);
  for (const t of call.localStream?.getTracks() ?? []) t.stop();
  call.screenTrack?.stop();
  call.meter?.stop();
  clearInterval(call.ticker);
  store.forgetSession(session);
  if (callOver) store.forgetRecent(local);
  const entry = { token: call.token, callId: call.callId, code: call.code, inviteCode: call.inviteCode, path: call.path, codeExpiresAt: call.codeExpiresAt };
  const durationMs = call.connectedOnce && call.startedAt ? Date.now() - call.startedAt : null;
  return { entry, durationMs };
}

/** The call is over for this page (the other person hung up, the call ended, access lost). */
function endCall(reason, { callOver = true } = {}) {
  if (!call || call.ended) return;
  const { entry, durationMs } = stopCall({ callOver });
  debug.state.overall = 'ended';
  debug.stateLog.push({ state: 'ended', t: performance.now() });
  ui.showEnded(reason, {
    durationMs,
    canRejoin: !callOver,
    onRejoin: () => rejoin(entry),
  });
}

/**
 * Leave: we go, the call stays on for the other person and for our Rejoin (same tab, same
 * token, while the call lives). Signaling `leave` frees our seat at once (the other side hears
 * `peer-left {left}`, and a new invite is not refused as full); the data channel's `bye` tells
 * the other page a moment sooner. "End call for both" is a separate, explicit action
 * (`POST /api/call/end`).
 */
function leaveCall() {
  if (!call || call.ended) return;
  const left = call;
  left.media?.sendMeta({ type: 'bye' });
  const { entry, durationMs } = stopCall({ lingerMs: 300, callOver: false, leave: true });
  const view = callView({ ...debug.state, connectedOnce: left.connectedOnce, left: true });
  debug.state.overall = view.state;
  debug.stateLog.push({ state: view.state, t: performance.now() });
  ui.hideInvite();
  ui.renderView(view, { peerStatus: debug.state.peer, peerWords: '' });
  const endForBoth = async () => {
    clearTimeout(left.undoTimer);
    left.finished = true;
    try {
      await endCallForAll(entry.token);
      store.forgetRecent(local);
      debug.state.overall = 'ended';
      ui.showEnded('You ended the call for both of you.', { durationMs });
    } catch (e) {
      ui.showEnded(e instanceof ApiError ? e.message : 'Could not end the call.', { left: true, durationMs, canRejoin: true, onRejoin: () => rejoin(entry), onEndForBoth: endForBoth });
    }
  };
  ui.showLeft({
    text: 'You left the call. It goes on without you.',
    onUndo: () => {
      clearTimeout(left.undoTimer);
      left.finished = true;
      rejoin(entry);
    },
    onEndForBoth: endForBoth,
  });
  // The undo window: then the end card, with Rejoin while the call is still on. It waits
  // while the pointer rests on the bar (someone reading or reaching for Rejoin).
  let remaining = UNDO_MS;
  let armedAt = 0;
  let paused = false;
  const arm = () => {
    clearTimeout(left.undoTimer);
    armedAt = Date.now();
    left.undoTimer = setTimeout(undoOver, remaining);
  };
  const bar = document.getElementById('left-bar');
  bar.onpointerenter = () => {
    if (paused || left.finished) return;
    paused = true;
    clearTimeout(left.undoTimer);
    remaining = Math.max(0, remaining - (Date.now() - armedAt));
  };
  bar.onpointerleave = () => {
    if (!paused || left.finished) return;
    paused = false;
    arm();
  };
  const undoOver = async () => {
    if (call !== left || left.finished) return;
    let on = true;
    try {
      on = (await callStatus(entry.token, entry.callId)).status !== 'ended';
    } catch {
      // unknown: offer Rejoin, which says so if the call is over
    }
    if (call !== left || left.finished) return;
    left.finished = true;
    if (!on) store.forgetRecent(local);
    debug.state.overall = on ? 'left' : 'ended';
    ui.showEnded(on ? 'The call goes on without you until it ends.' : 'The call has ended.', {
      left: on,
      durationMs,
      canRejoin: on,
      onRejoin: () => rejoin(entry),
      onEndForBoth: on ? endForBoth : null,
    });
  };
  arm();
}

function rejoin(entry) {
  debug.timing.joinClick = performance.now();
  if (location.pathname !== entry.path) history.replaceState(null, '', entry.path);
  startCall({ ...entry, inviteCode: entry.inviteCode ?? null });
}

/** Enter the call screen and run the call with a join token. */
async function startCall({ token, callId, code, inviteCode, path, codeExpiresAt, startedAt, chat, securityCode, media: given, prefs = {} }) {
  ui.showCall();
  ui.resetCall();
  const mediaPromise = given ? Promise.resolve(given) : acquireMedia();
  call = {
    ended: false,
    token,
    callId,
    code,
    // The code still to hand out (the creator's until someone uses it, or a fresh one).
    inviteCode: inviteCode === undefined ? code ?? null : inviteCode,
    path,
    codeExpiresAt,
    startedAt: startedAt ?? null,
    connectedOnce: false,
    remote: {},
    quality: {},
    lastSecurityCode: securityCode ?? null,
    name: store.loadName(local),
  };
  document.getElementById('my-name').value = call.name;
  debug.state = { signaling: 'connecting', media: 'none', peer: 'waiting', overall: 'connecting', blocked: false };
  ui.setInviteTitle('Invite someone');
  refreshState();
  for (const line of Array.isArray(chat) ? chat : []) {
    if (typeof line?.text === 'string') {
      ui.addChat(line.text, line.who === 'mine' ? 'mine' : 'theirs', { restored: true });
      debug.chat.push({ who: line.who, text: line.text, restored: true });
    }
  }
  let join;
  try {
    join = await joinCall(token);
  } catch (e) {
    (await mediaPromise).stream.getTracks().forEach((t) => t.stop());
    store.forgetSession(session);
    store.forgetRecent(local);
    call.ended = true;
    ui.showEnded(e instanceof ApiError ? e.message : 'Could not join the call.');
    return;
  }
  call.callId = join.callId;
  call.role = join.role;
  if (join.role !== 'offerer' && call.inviteCode === code) call.inviteCode = null; // ours is spent
  store.saveSession(session, { token, callId: join.callId, code, inviteCode: call.inviteCode, path, codeExpiresAt, startedAt: call.startedAt });
  remember({ token, callId: join.callId, code, path, role: join.role });
  const { stream, notice, denied } = await mediaPromise;
  call.localStream = stream;
  for (const t of stream.getAudioTracks()) t.enabled = prefs.mic !== false;
  for (const t of stream.getVideoTracks()) t.enabled = prefs.cam !== false;
  ui.setLocalStream(stream);
  ui.setNotice(notice, { retry: !!denied });
  ui.setToggle('audio', prefs.mic !== false, stream.getAudioTracks().length > 0);
  ui.setToggle('video', prefs.cam !== false, stream.getVideoTracks().length > 0);
  ui.setShareState(false, !!navigator.mediaDevices?.getDisplayMedia);
  ui.setFullscreenState(false, !!document.fullscreenEnabled);
  ui.setPipState(false, !!document.pictureInPictureEnabled);
  call.meter = levelMeter(stream.getAudioTracks()[0]);
  fillDevices();

  // Events of this call's sessions only: after Leave and a quick Rejoin the old socket and
  // peer connection still close in the background and must not touch the new call.
  const me = call;
  const media = new MediaSession({
    role: join.role,
    iceServers: join.iceServers,
    iceTransportPolicy: join.iceTransportPolicy,
    localStream: stream,
    send: (m) => signaling.send(m),
    on: {
      remoteStream: (s) => {
        ui.setRemoteStream(s);
        s.onaddtrack = () => refreshState();
      },
      state: (st) => {
        if (call !== me) return;
        // Media lost its path: the network may have changed, and the signaling socket with it.
        if (st === 'disconnected' || st === 'failed') call.signaling?.checkAlive();
        debug.state.media = st;
        refreshState();
      },
      blocked: (blocked) => {
        if (call !== me) return;
        debug.state.blocked = blocked;
        ui.setBlocked(blocked ? BLOCKED_WORDS : '');
        refreshState();
      },
      securityCode: (c) => onSecurityCode(c),
      chat: (text) => {
        debug.chat.push({ who: 'theirs', text });
        store.appendChat(session, 'theirs', text);
        ui.addChat(text, 'theirs');
      },
      chatOpen: (open) => ui.setChatOpen(open),
      metaOpen: () => sendState(),
      meta: (m) => onMeta(m),
      stats: (summary) => onStats(summary),
      log: (text) => console.info(`[hermes] ${text}`),
    },
  });
  const signaling = new SignalingSession({
    url: resolveSignalUrl(join.signalUrl, location.href),
    token,
    callId: join.callId,
    onStateChange: (st, info) => {
      if (call !== me) return;
      debug.state.signaling = st;
      if (st === 'closed' && !call.ended) {
        // 4002 (joined elsewhere) and plain loss leave the call alive: offer Rejoin.
        const over = info?.code === 4003 || info?.code === 4401 || info?.code === 4001;
        endCall(info?.message ?? 'The connection to the server was closed.', { callOver: over });
        return;
      }
      refreshState();
    },
    onMessage: (m) => call === me && onSignal(m, media),
  });
  call.media = media;
  call.signaling = signaling;
  debug.media = media;
  debug.signaling = signaling;
  call.ticker = setInterval(tick, 100);
  signaling.start();
}

function onSecurityCode(c) {
  debug.securityCode = c?.text ?? null;
  const changed = !!(c && call.lastSecurityCode && call.lastSecurityCode !== c.text);
  if (changed) debug.securityCodeChanged = true;
  ui.setSecurityCode(c, { changed });
  if (c) {
    call.lastSecurityCode = c.text;
    store.saveSession(session, { securityCode: c.text });
  }
}

/** Every 100 ms: our mic while muted (the hint), and every 500 ms the other person's level. */
function tick() {
  if (!call || call.ended) return;
  call.ticks = (call.ticks ?? 0) + 1;
  const mic = call.localStream?.getAudioTracks()[0];
  if (mic && !mic.enabled && call.meter) {
    const peak = call.meter.level();
    debug.localLevel = peak;
    const now = Date.now();
    if (peak > SPEAKING_PEAK) {
      // Loud moments within the last 3 s add up; silence between words does not reset them.
      if (!call.mutedSince || now - call.mutedLast > 3000) call.mutedSpeech = 0;
      call.mutedSpeech = (call.mutedSpeech ?? 0) + 100;
      call.mutedSince ??= now;
      call.mutedLast = now;
      if (call.mutedSpeech >= MUTED_SPEECH_MS) {
        ui.setMutedHint(true);
        call.mutedHintUntil = now + 4000;
      }
    } else if (call.mutedHintUntil && now > call.mutedHintUntil) {
      ui.setMutedHint(false);
      call.mutedHintUntil = null;
    }
  } else if (call.mutedHintUntil || call.mutedSpeech) {
    call.mutedSpeech = 0;
    call.mutedHintUntil = null;
    ui.setMutedHint(false);
  }
  if (call.ticks % 5 === 0) remoteLevel();
  if (call.ticks % 5 === 0 && call.view?.stage === 'invite') updateExpiry();
}

/** The other person's average audio level since the last look (inbound-rtp audio energy). */
async function remoteLevel() {
  const pc = call?.media?.pc;
  if (!pc || debug.state.peer !== 'present') return;
  const stats = [...(await pc.getStats()).values()].find((r) => r.type === 'inbound-rtp' && r.kind === 'audio');
  if (!stats || typeof stats.totalAudioEnergy !== 'number') return;
  const prev = call.audioSample;
  call.audioSample = { e: stats.totalAudioEnergy, d: stats.totalSamplesDuration ?? 0 };
  if (!prev || call.audioSample.d <= prev.d) return;
  const level = Math.sqrt(Math.max(0, call.audioSample.e - prev.e) / (call.audioSample.d - prev.d));
  debug.remote.level = level;
  const now = Date.now();
  if (level > SPEAKING_LEVEL && call.remote?.mic !== false) call.speakingUntil = now + SPEAKING_HOLD_MS;
  const speaking = (call.speakingUntil ?? 0) > now && call.remote?.mic !== false;
  if (speaking !== call.speaking) {
    call.speaking = speaking;
    ui.setSpeaking(speaking);
  }
}

function localState() {
  const s = call?.localStream;
  const audio = s?.getAudioTracks()[0];
  const video = s?.getVideoTracks()[0];
  return {
    type: 'state',
    mic: !!audio && audio.enabled,
    cam: (!!video && video.enabled) || !!call?.screenTrack,
    screen: !!call?.screenTrack,
    name: call?.name || '',
    quality: call?.quality?.mine ?? 'unknown',
  };
}

function sendState() {
  call?.media?.sendMeta(localState());
}

function onMeta(m) {
  if (m.type === 'bye') {
    // They pressed Leave: gone now, though their seat waits out the server's grace window
    // (its peer-reconnecting is not news); they may still rejoin (peer-joined again).
    call.peerSaidBye = true;
    setPeer('left');
    return;
  }
  if (m.type !== 'state') return;
  call.remote = {
    mic: m.mic !== false,
    cam: m.cam !== false,
    screen: m.screen === true,
    name: typeof m.name === 'string' ? m.name.slice(0, 40) : '',
    quality: ['good', 'fair', 'poor', 'unknown'].includes(m.quality) ? m.quality : 'unknown',
  };
  debug.remote = { ...debug.remote, ...call.remote };
  ui.setRemoteState(call.remote);
  if (!call.remote.mic && call.speaking) {
    call.speaking = false;
    call.speakingUntil = 0;
    ui.setSpeaking(false);
  }
  refreshState();
}

async function onStats(summary) {
  const level = qualityLevel(summary);
  const changed = level !== call.quality.mine;
  call.quality.mine = level;
  if (changed) sendState();
  refreshState();
  const pc = call.media?.pc;
  if (pc) {
    const reports = [...(await pc.getStats()).values()];
    ui.setConnectionDetails(connectionDetails(reports, summary));
  }
}

function onSignal(m, media) {
  if (m.type.startsWith('peer-')) debug.peerEvents.push({ type: m.type, reason: m.reason, t: performance.now() });
  switch (m.type) {
    case 'joined': {
      debug.timing.joined ??= performance.now();
      debug.joins.push({ resumed: m.resumed, t: performance.now() });
      const peer = m.peers.find((p) => p.role !== 'observer' && p.participantId !== m.participantId);
      const reconnect = call.joinedBefore;
      call.joinedBefore = true;
      if (peer) {
        call.announced = true; // they were there first: nothing to announce
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
      call.peerSaidBye = false;
      setPeer('present');
      media.peerPresent({ fresh: call.peerSeen === true });
      call.peerSeen = true;
      break;
    case 'peer-reconnecting':
      if (!call.peerSaidBye) setPeer('reconnecting');
      break;
    case 'peer-resumed':
      setPeer('present');
      break;
    case 'peer-left':
      if (m.reason === 'hangup') endCall(`${call.remote?.name || 'The other person'} hung up.`);
      // Their new connection replaced the old seat: peer-joined follows at once (renegotiate).
      else if (m.reason === 'rejoined') {
        call.peerSaidBye = false;
        setPeer('reconnecting');
      }
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
      endCall(`${call.remote?.name || 'The other person'} hung up.`);
      break;
    case 'call-ended':
      if (m.reason === 'hangup') endCall('The other person hung up.');
      else if (call.peerSaidBye) endCall(`${call.remote?.name || 'The other person'} ended the call.`);
      else endCall('The call has ended.');
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

// ---------------------------------------------------------------- devices

async function fillDevices() {
  const md = navigator.mediaDevices;
  if (!md?.enumerateDevices) return;
  const devices = await md.enumerateDevices().catch(() => []);
  const current = (kind) => call?.localStream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  ui.setDevices('audio', devices.filter((d) => d.kind === 'audioinput'), current('audio'));
  ui.setDevices('video', devices.filter((d) => d.kind === 'videoinput'), current('video'));
  const sinkable = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
  const outputs = devices.filter((d) => d.kind === 'audiooutput');
  ui.setSpeakerAvailable(sinkable && outputs.length > 0);
  if (sinkable) ui.setDevices('output', outputs, document.getElementById('remote-video').sinkId || 'default');
  // Hot-plug: the device behind a track went away; fall back to what is there now.
  for (const kind of ['audio', 'video']) {
    const t = call?.localStream?.getTracks().find((x) => x.kind === kind);
    const list = devices.filter((d) => d.kind === `${kind}input`);
    if (t && t.readyState === 'ended' && list.length > 0) switchDevice(kind, list[0].deviceId);
  }
  if (lobby) fillLobbyDevices(devices);
}

async function switchDevice(kind, deviceId) {
  if (!call?.media) return;
  try {
    const s = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
    const track = kind === 'audio' ? s.getAudioTracks()[0] : s.getVideoTracks()[0];
    const wasOn = call.localStream.getTracks().find((t) => t.kind === kind)?.enabled ?? true;
    track.enabled = wasOn;
    if (kind === 'video' && call.screenTrack) {
      // Sharing the screen: the new camera waits until sharing stops.
      for (const t of call.localStream.getVideoTracks()) {
        call.localStream.removeTrack(t);
        t.stop();
      }
      call.localStream.addTrack(track);
    } else {
      await call.media.replaceTrack(kind, track);
      ui.setLocalStream(call.localStream);
    }
    if (kind === 'audio') {
      call.meter?.stop();
      call.meter = levelMeter(track);
    }
    ui.setToggle(kind, wasOn, true);
  } catch {
    ui.setNotice(`Could not switch to that ${kind === 'audio' ? 'microphone' : 'camera'}.`);
  }
}

async function switchOutput(deviceId) {
  const v = document.getElementById('remote-video');
  try {
    await v.setSinkId(deviceId);
  } catch {
    ui.setNotice('Could not play the sound on that device.');
  }
}

/** Ask for camera and microphone again in the same call (after a refusal). */
async function retryMedia() {
  if (!call || call.ended) return;
  const { stream, notice, denied } = await acquireMedia();
  for (const track of stream.getTracks()) {
    const had = call.localStream.getTracks().some((t) => t.kind === track.kind && t.readyState === 'live');
    if (had) {
      track.stop();
      continue;
    }
    await call.media.replaceTrack(track.kind, track);
    if (track.kind === 'audio') {
      call.meter?.stop();
      call.meter = levelMeter(track);
    }
  }
  ui.setLocalStream(call.localStream);
  ui.setToggle('audio', true, call.localStream.getAudioTracks().length > 0);
  ui.setToggle('video', true, call.localStream.getVideoTracks().length > 0);
  ui.setNotice(notice, { retry: !!denied });
  sendState();
  fillDevices();
}

function toggle(kind) {
  const tracks = call?.localStream?.getTracks().filter((t) => t.kind === kind) ?? [];
  if (tracks.length === 0 || call.ended) return;
  const on = !tracks[0].enabled;
  for (const t of tracks) t.enabled = on;
  ui.setToggle(kind, on, true);
  if (kind === 'video' && !call.screenTrack) ui.setLocalStream(call.localStream);
  if (kind === 'audio' && on) ui.setMutedHint(false);
  sendState();
}

async function toggleShare() {
  if (!call?.media || call.ended) return;
  if (call.screenTrack) {
    stopShare();
    return;
  }
  let display;
  try {
    display = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch {
    return; // the person cancelled the picker
  }
  const track = display.getVideoTracks()[0];
  if (!track) return;
  call.screenTrack = track;
  track.onended = () => stopShare();
  await call.media.sendVideoTrack(track);
  ui.setLocalStream(display, { screen: true });
  ui.setShareState(true, true);
  sendState();
}

async function stopShare() {
  const t = call?.screenTrack;
  if (!t) return;
  call.screenTrack = null;
  t.onended = null;
  t.stop();
  if (!call.ended) {
    await call.media.sendVideoTrack(call.localStream.getVideoTracks()[0] ?? null);
    ui.setLocalStream(call.localStream);
    ui.setShareState(false, true);
    sendState();
  }
}

async function toggleFullscreen() {
  try {
    if (document.fullscreenElement) await document.exitFullscreen();
    else await document.getElementById('call').requestFullscreen();
  } catch {
    // refused (no user gesture)
  }
}

async function togglePip() {
  const v = document.getElementById('remote-video');
  try {
    if (document.pictureInPictureElement) await document.exitPictureInPicture();
    else await v.requestPictureInPicture();
  } catch {
    ui.setNotice('Picture in picture is not available for this video yet.');
  }
}

document.addEventListener('fullscreenchange', () => ui.setFullscreenState(!!document.fullscreenElement, true));
document.getElementById('remote-video').addEventListener('enterpictureinpicture', () => ui.setPipState(true, true));
document.getElementById('remote-video').addEventListener('leavepictureinpicture', () => ui.setPipState(false, true));

function watchFirstFrame() {
  const v = document.getElementById('remote-video');
  const mark = () => {
    debug.timing.firstFrame ??= performance.now();
  };
  // The first remote frame actually presented (decoded and composited), else first data.
  if (typeof v.requestVideoFrameCallback === 'function') v.requestVideoFrameCallback(mark);
  v.addEventListener('loadeddata', mark, { once: true });
}

// ---------------------------------------------------------------- lobby

async function fillLobbyDevices(devices) {
  const list = devices ?? (await navigator.mediaDevices?.enumerateDevices?.().catch(() => [])) ?? [];
  const current = (kind) => lobby?.stream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
  ui.setDevices('audio', list.filter((d) => d.kind === 'audioinput'), current('audio'), document.getElementById('lobby-mic-select'));
  ui.setDevices('video', list.filter((d) => d.kind === 'videoinput'), current('video'), document.getElementById('lobby-cam-select'));
}

async function lobbyPreview(devices = {}) {
  if (!lobby) return;
  lobby.stream?.getTracks().forEach((t) => t.stop());
  lobby.meter?.stop();
  ui.setLobbyMessage({ text: 'Asking your browser for the camera and microphone…' });
  const mine = lobby;
  const pending = acquireMedia(devices);
  mine.pending = pending;
  const got = await pending;
  if (mine.pending === pending) mine.pending = null;
  // Join was pressed meanwhile (it took this media into the call), or the lobby was left.
  if (lobby !== mine || mine.taken === pending) {
    if (mine.taken !== pending) got.stream.getTracks().forEach((t) => t.stop());
    return;
  }
  lobby.media = got;
  lobby.stream = got.stream;
  for (const t of got.stream.getAudioTracks()) t.enabled = lobby.prefs.mic;
  for (const t of got.stream.getVideoTracks()) t.enabled = lobby.prefs.cam;
  lobby.meter = levelMeter(got.stream.getAudioTracks()[0]);
  ui.setLobbyPreview(got.stream);
  ui.setLobbyToggle('audio', lobby.prefs.mic, got.stream.getAudioTracks().length > 0);
  ui.setLobbyToggle('video', lobby.prefs.cam, got.stream.getVideoTracks().length > 0);
  ui.setLobbyMessage({
    text: got.stream.getVideoTracks().length ? '' : 'No camera picture. You can still join and talk.',
    error: got.notice,
    retry: got.denied,
  });
  fillLobbyDevices();
}

async function permissionGranted() {
  try {
    const [cam, mic] = await Promise.all(['camera', 'microphone'].map((name) => navigator.permissions.query({ name })));
    return cam.state === 'granted' || mic.state === 'granted';
  } catch {
    return false;
  }
}

async function openLobby({ code, recent }) {
  lobby = { code, recent, prefs: { mic: true, cam: true } };
  ui.showLobby(code);
  document.getElementById('display-name').value = store.loadName(local);
  ui.setLobbyPreview(null);
  ui.setLobbyToggle('audio', true, true);
  ui.setLobbyToggle('video', true, true);
  ui.setLobbyMessage({
    text: 'To be seen and heard, allow the camera and microphone when your browser asks. Nothing is sent until you join.',
    allow: true,
  });
  lobby.meterTimer = setInterval(() => ui.setMeter(lobby?.meter && lobby.prefs.mic ? lobby.meter.level() : 0), 100);
  if (await permissionGranted()) lobbyPreview();
}

function closeLobby() {
  if (!lobby) return null;
  clearInterval(lobby.meterTimer);
  lobby.meter?.stop();
  const l = lobby;
  lobby = null;
  return l;
}

async function lobbyJoin() {
  if (!lobby) return;
  debug.timing.joinClick = performance.now();
  store.saveName(local, document.getElementById('display-name').value);
  document.getElementById('lobby-join').disabled = true;
  const l = lobby;
  // The preview's media, or the preview still being asked for, or (no preview yet) ask now.
  if (!l.media && l.pending) l.taken = l.pending;
  const mediaPromise = l.media ? Promise.resolve(l.media) : (l.pending ?? acquireMedia());
  if (l.recent) {
    closeLobby();
    startCall({ ...l.recent, inviteCode: null, media: await mediaPromise, prefs: l.prefs });
    return;
  }
  try {
    const r = await resolveCode(l.code);
    const media = await mediaPromise;
    closeLobby();
    await startCall({ token: r.token, callId: r.callId, code: null, path: `/c/${l.code}`, media, prefs: l.prefs });
    remember({ token: r.token, callId: r.callId, code: l.code, path: `/c/${l.code}` });
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    (await mediaPromise).stream.getTracks().forEach((t) => t.stop());
    closeLobby();
    history.replaceState(null, '', '/');
    ui.showHome({ code: formatCode(l.code) });
    ui.setJoinError(e.message);
  }
}

function lobbyToggle(kind) {
  if (!lobby) return;
  const key = kind === 'audio' ? 'mic' : 'cam';
  lobby.prefs[key] = !lobby.prefs[key];
  const tracks = lobby.stream?.getTracks().filter((t) => t.kind === kind) ?? [];
  for (const t of tracks) t.enabled = lobby.prefs[key];
  ui.setLobbyToggle(kind, lobby.prefs[key], tracks.length > 0 || !lobby.stream);
  if (kind === 'video') ui.setLobbyPreview(lobby.prefs.cam ? lobby.stream : null);
  if (kind === 'video' && !lobby.prefs.cam) ui.setLobbyMessage({ text: 'Your camera is off: you will join without video.' });
}

// ---------------------------------------------------------------- home

/**
 * A typed (or pasted) code: resolved here, so a typo or a spent code is told on the home screen
 * at once, then the same lobby as a link (preview, devices, meter, join muted) with the token in
 * hand. The code is spent from here on, so the call is remembered at once: the link, or the home
 * screen's rejoin card, brings the person back even if they leave the lobby.
 */
async function joinWithCode(typed) {
  const n = codeFromInput(typed);
  if (!n.ok) {
    ui.setJoinError(n.message);
    return;
  }
  ui.setBusy(true);
  try {
    const r = await resolveCode(n.code);
    const path = `/c/${n.code}`;
    const entry = { token: r.token, callId: r.callId, code: n.code, path };
    remember(entry);
    ui.setJoinError('');
    if (location.pathname !== path) history.pushState(null, '', path);
    openLobby({ code: n.code, recent: entry });
  } catch (e) {
    ui.setJoinError(e instanceof ApiError ? e.message : 'Could not join. Try again.');
  } finally {
    ui.setBusy(false);
  }
}

async function newCallClicked() {
  ui.setBusy(true);
  ui.setCreateError('');
  if (globalThis.Notification?.permission === 'default') {
    // Asked on this click so we can tell the creator, busy elsewhere, that someone joined.
    Notification.requestPermission().catch(() => {});
  }
  const mediaPromise = acquireMedia();
  try {
    const c = await createCall();
    history.pushState(null, '', '/call');
    await startCall({ token: c.token, callId: c.callId, code: c.code, codeExpiresAt: c.codeExpiresAt, path: '/call', media: await mediaPromise });
  } catch (e) {
    (await mediaPromise).stream.getTracks().forEach((t) => t.stop());
    ui.setCreateError(e instanceof ApiError ? e.message : 'Could not start a call. Try again.');
  } finally {
    ui.setBusy(false);
  }
}

/** On the home screen: offer the last call this browser was in, if it is still on. */
async function offerRejoin() {
  const recent = store.loadRecent(local, Date.now());
  if (!recent) return;
  try {
    const s = await callStatus(recent.token, recent.callId);
    if (s.status === 'ended') {
      store.forgetRecent(local);
      return;
    }
    const ago = Math.max(1, Math.round((Date.now() - recent.savedAt) / 60000));
    ui.showRejoin(`You were in a call ${ago === 1 ? 'a minute' : `${ago} minutes`} ago. It is still on.`, () => {
      ui.showRejoin('');
      rejoin(recent);
    });
  } catch {
    store.forgetRecent(local);
  }
}

function route() {
  const stored = store.loadSession(session);
  if (stored && stored.path === location.pathname) {
    // Same tab reloaded mid-call: rejoin with the token we already have.
    startCall(stored);
    return;
  }
  const typed = codeFromPath(location.pathname);
  if (typed !== null) {
    const n = normaliseCode(typed);
    if (!n.ok) {
      ui.showHome({ code: typed });
      ui.setJoinError(n.message);
      return;
    }
    const recent = store.recentForCode(local, n.code, Date.now());
    openLobby({ code: n.code, recent });
    return;
  }
  if (location.pathname !== '/') history.replaceState(null, '', '/');
  ui.showHome();
  offerRejoin();
}

// ---------------------------------------------------------------- wiring

ui.onNewCall(() => {
  if (call?.ended) {
    call = null;
    history.pushState(null, '', '/');
  }
  newCallClicked();
});
ui.onJoin(joinWithCode);
document.getElementById('code-input').addEventListener('paste', (ev) => {
  // A pasted link becomes its code, so people see what they are joining.
  const text = ev.clipboardData?.getData('text') ?? '';
  const n = codeFromInput(text);
  if (n.ok && text.trim() !== n.code) {
    ev.preventDefault();
    ev.target.value = formatCode(n.code);
    ui.setJoinError('');
  }
});
ui.onToggle('audio', () => toggle('audio'));
ui.onToggle('video', () => toggle('video'));
ui.on('toggle-share', toggleShare);
ui.on('toggle-full', toggleFullscreen);
ui.on('toggle-pip', togglePip);
ui.onDeviceChange('audio', (id) => switchDevice('audio', id));
ui.onDeviceChange('video', (id) => switchDevice('video', id));
ui.onDeviceChange('output', switchOutput);
ui.onRetryMedia(retryMedia);
ui.onRetry(() => {
  debug.state.blocked = false;
  ui.setBlocked('');
  refreshState();
  call?.media?.retry();
});
ui.onNewCode(mintCode);
ui.onHangUp(leaveCall);
ui.onChatSend((text) => {
  if (!call?.media?.sendChat(text)) return false;
  debug.chat.push({ who: 'mine', text });
  store.appendChat(session, 'mine', text);
  ui.addChat(text, 'mine');
  return true;
});
ui.on('lobby-allow', () => lobbyPreview());
ui.on('lobby-retry', () => lobbyPreview());
ui.on('lobby-join', lobbyJoin);
ui.on('lobby-mic', () => lobbyToggle('audio'));
ui.on('lobby-cam', () => lobbyToggle('video'));
for (const [id, kind] of [['lobby-mic-select', 'audio'], ['lobby-cam-select', 'video']]) {
  const sel = document.getElementById(id);
  sel.addEventListener('change', () => {
    const other = kind === 'audio' ? 'video' : 'audio';
    const otherId = lobby?.stream?.getTracks().find((t) => t.kind === other)?.getSettings().deviceId;
    lobbyPreview({ [kind]: sel.value, [other]: otherId });
  });
}
document.getElementById('lobby-cancel').addEventListener('click', () => {
  const l = closeLobby();
  l?.stream?.getTracks().forEach((t) => t.stop());
});

document.addEventListener('keydown', (ev) => {
  if (!call || call.ended || document.getElementById('call').hidden) return;
  const action = shortcutFor({
    key: ev.key,
    ctrlKey: ev.ctrlKey,
    metaKey: ev.metaKey,
    altKey: ev.altKey,
    targetTag: ev.target?.tagName,
    targetEditable: ev.target?.isContentEditable,
  });
  if (!action) return;
  const actions = {
    mic: () => toggle('audio'),
    cam: () => toggle('video'),
    share: toggleShare,
    chat: () => ui.togglePanel('chat'),
    devices: () => ui.togglePanel('settings'),
    fullscreen: toggleFullscreen,
    pip: togglePip,
    hangup: leaveCall,
    help: () => ui.openHelp(),
    close: () => ui.closeTopmost(),
  };
  if (action === 'close' && !ui.closeTopmost()) return;
  ev.preventDefault();
  if (action !== 'close') actions[action]();
});

// Controls fade after a few seconds without activity once the call runs (phones get the
// picture back); any pointer, touch or key brings them back.
let idleTimer = null;
function wake() {
  ui.setIdle(false);
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => {
    const busy = !call || call.ended || call.view?.state !== 'connected' || document.activeElement?.closest?.('.controls, .panel');
    const panels = !document.getElementById('chat').hidden || !document.getElementById('settings').hidden;
    if (!busy && !panels) ui.setIdle(true);
  }, IDLE_MS);
}
for (const ev of ['pointermove', 'pointerdown', 'keydown', 'touchstart']) document.addEventListener(ev, wake, { passive: true });

// The display name lives in this browser only and travels to the other person over the data channel.
document.getElementById('display-name').addEventListener('change', (ev) => store.saveName(local, ev.target.value));
document.getElementById('my-name').addEventListener('change', (ev) => {
  const name = store.saveName(local, ev.target.value);
  if (call) {
    call.name = name;
    sendState();
  }
});

window.addEventListener('online', () => call?.signaling?.reconnectNow());
window.addEventListener('popstate', () => {
  // Back from the lobby: its preview stops before the home screen shows.
  closeLobby()?.stream?.getTracks().forEach((t) => t.stop());
  if (!call) route();
});
navigator.mediaDevices?.addEventListener?.('devicechange', () => fillDevices());
watchFirstFrame();
route();
