// Everything on screen: home (new call, join by code or link, rejoin), the lobby a call link
// opens (preview, devices, mic level, join muted or camera off, name), and the call screen
// (videos, icon controls, status from lib/call-view.js, invitation with expiry and QR code,
// the other person's camera/mic/speaking state, security code, chat, dialogs). Only DOM work
// lives here; decisions come from client.js and the pure modules in lib/.

import { formatCode } from './lib/code.js';
import { formatDuration } from './lib/format.js';
import { encodeQr, qrPath } from './lib/qr.js';

const $ = (id) => document.getElementById(id);

/** Swap the icon of a button (`<svg><use href="#i-…">`). */
function setIcon(btn, name) {
  btn.querySelector('use')?.setAttribute('href', `#i-${name}`);
}

function setLabel(btn, text) {
  const l = btn.querySelector('.label');
  if (l) l.textContent = text;
}

/** Elements that can take focus inside `root`, in order. */
function focusables(root) {
  return [...root.querySelectorAll('button, a[href], input, select, [tabindex]:not([tabindex="-1"])')].filter(
    (e) => !e.disabled && !e.closest('[hidden]') && e.getClientRects().length > 0,
  );
}

export class Ui {
  constructor() {
    this.el = {};
    for (const id of [
      'home', 'lobby', 'call', 'new-call', 'create-error', 'join-form', 'code-input', 'join-button', 'join-error',
      'rejoin-card', 'rejoin-text', 'rejoin-home',
      'lobby-code', 'lobby-video', 'lobby-preview-off', 'lobby-permission', 'lobby-allow', 'lobby-meter', 'lobby-mic',
      'lobby-cam', 'lobby-error', 'lobby-retry', 'lobby-mic-select', 'lobby-cam-select', 'display-name', 'lobby-join',
      'stage', 'remote-video', 'local-video', 'remote-placeholder', 'peer-status', 'peer-avatar', 'invite', 'invite-code',
      'code-expiry', 'new-code', 'invite-qr', 'invite-qr-path', 'share-link', 'copy-link', 'share-button', 'copy-status',
      'remote-name', 'remote-muted', 'my-name', 'self', 'self-swap', 'self-hide', 'unmute', 'muted-hint',
      'conn-state', 'call-timer', 'quality', 'conn-details', 'notice', 'notice-text', 'retry-media',
      'blocked', 'blocked-text', 'blocked-retry',
      'security', 'security-code', 'security-changed',
      'toggle-mic', 'toggle-cam', 'toggle-share', 'toggle-settings', 'toggle-chat', 'toggle-full', 'toggle-pip',
      'toggle-help', 'hang-up', 'settings', 'mic-select', 'cam-select', 'speaker-select', 'speaker-label',
      'chat', 'chat-badge', 'chat-log', 'chat-form', 'chat-input', 'chat-send',
      'help', 'help-close', 'ended', 'ended-title', 'ended-reason', 'ended-duration', 'rejoin', 'new-call-ended', 'back-home',
      'left-bar', 'left-text', 'undo-leave', 'end-for-both', 'end-ended',
    ]) {
      this.el[id] = $(id);
    }
    this.timerHandle = null;
    this.unread = 0;
    this.dialogReturn = null;
    const e = this.el;
    e['toggle-settings'].addEventListener('click', () => this.togglePanel('settings'));
    e['toggle-chat'].addEventListener('click', () => this.togglePanel('chat'));
    e['toggle-help'].addEventListener('click', () => this.openHelp());
    e['help-close'].addEventListener('click', () => this.closeDialog('help'));
    e.quality.addEventListener('click', () => {
      const open = e['conn-details'].hidden;
      e['conn-details'].hidden = !open;
      e.quality.setAttribute('aria-expanded', String(open));
    });
    // Tap the picture to switch between fitting it whole and filling the screen.
    e['remote-video'].addEventListener('dblclick', () => this.toggleFit());
    e['self-hide'].addEventListener('click', () => {
      const hidden = e.self.dataset.hidden !== 'true';
      e.self.dataset.hidden = String(hidden);
      e['self-hide'].setAttribute('aria-pressed', String(hidden));
      e['self-hide'].setAttribute('aria-label', hidden ? 'Show your own picture' : 'Hide your own picture');
      e['self-hide'].title = e['self-hide'].getAttribute('aria-label');
    });
    e['self-swap'].addEventListener('click', () => this.swapViews());
    for (const id of ['help', 'ended']) {
      e[id].addEventListener('keydown', (ev) => this.trapFocus(ev, e[id]));
    }
    this.makeDraggable(e.self);
  }

  // ---- screens ----

  show(screen) {
    for (const s of ['home', 'lobby', 'call']) this.el[s].hidden = s !== screen;
  }

  showHome({ code = '' } = {}) {
    this.show('home');
    document.title = 'Hermes — private video calls';
    if (code) this.el['code-input'].value = code;
  }

  onNewCall(fn) {
    this.el['new-call'].addEventListener('click', fn);
    this.el['new-call-ended'].addEventListener('click', fn);
  }

  onJoin(fn) {
    this.el['join-form'].addEventListener('submit', (ev) => {
      ev.preventDefault();
      fn(this.el['code-input'].value);
    });
    this.el['code-input'].addEventListener('input', () => this.setJoinError(''));
  }

  /** Offer the call this browser left (closed tab, hang-up by accident). */
  showRejoin(text, fn) {
    this.el['rejoin-card'].hidden = !text;
    if (!text) return;
    this.el['rejoin-text'].textContent = text;
    this.el['rejoin-home'].onclick = fn;
  }

  setBusy(busy) {
    this.el['new-call'].disabled = busy;
    this.el['join-button'].disabled = busy;
  }

  setCreateError(text) {
    this.el['create-error'].textContent = text;
    this.el['create-error'].hidden = !text;
  }

  setJoinError(text) {
    this.el['join-error'].textContent = text;
    this.el['join-error'].hidden = !text;
    this.el['code-input'].setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  // ---- lobby ----

  showLobby(code) {
    this.show('lobby');
    document.title = 'Join call — Hermes';
    this.el['lobby-code'].textContent = formatCode(code);
    this.el['lobby-join'].disabled = false;
  }

  setLobbyPreview(stream) {
    const live = !!stream && stream.getVideoTracks().length > 0;
    this.el['lobby-video'].srcObject = live ? stream : null;
    this.el['lobby-video'].parentElement.dataset.live = String(live);
    this.el['lobby-preview-off'].hidden = live;
  }

  setLobbyMessage({ text = '', error = '', retry = false, allow = false } = {}) {
    if (text) this.el['lobby-permission'].textContent = text;
    this.el['lobby-allow'].hidden = !allow;
    this.el['lobby-error'].textContent = error;
    this.el['lobby-error'].hidden = !error;
    this.el['lobby-retry'].hidden = !retry;
  }

  setMeter(level) {
    const v = Math.max(0, Math.min(1, level));
    this.el['lobby-meter'].style.transform = `scaleX(${v.toFixed(3)})`;
  }

  // ---- call ----

  showCall() {
    this.show('call');
    this.hideLeft();
    this.el.ended.hidden = true;
    for (const child of this.el.call.children) child.inert = false;
    this.el['hang-up'].disabled = false;
    document.title = 'Hermes — call';
  }

  /** A clean call screen (a new call after an ended one, in the same page). */
  resetCall() {
    const e = this.el;
    e['chat-log'].replaceChildren();
    this.unread = 0;
    e['chat-badge'].hidden = true;
    e['share-link'].value = '';
    e.invite.hidden = true;
    e['security-changed'].hidden = true;
    this.setSecurityCode(null);
    this.setNotice('');
    this.setBlocked('');
    this.setRemoteState({});
    this.setSpeaking(false);
    this.hideTimer();
    e['call-timer'].textContent = '0:00';
  }

  /** The invitation: code, link, QR code. */
  showInvite(code, link) {
    this.el.invite.hidden = false;
    this.el.invite.dataset.mode = 'code';
    if (this.el['share-link'].value === link) return;
    this.el['invite-code'].textContent = formatCode(code);
    this.el['share-link'].value = link;
    this.el['copy-status'].textContent = '';
    const qr = encodeQr(link);
    if (qr) {
      const { d, side } = qrPath(qr, 4);
      this.el['invite-qr'].setAttribute('viewBox', `0 0 ${side} ${side}`);
      this.el['invite-qr-path'].setAttribute('d', d);
      this.el['invite-qr'].dataset.text = link;
    }
    this.el['invite-qr'].hidden = !qr;
    this.el['copy-link'].onclick = async () => {
      try {
        await navigator.clipboard.writeText(link);
        this.el['copy-status'].textContent = 'Link copied.';
      } catch {
        this.el['share-link'].select();
        this.el['copy-status'].textContent = 'Select the link and copy it.';
      }
    };
    if (typeof navigator.share === 'function') {
      this.el['share-button'].hidden = false;
      this.el['share-button'].onclick = () =>
        navigator.share({ title: 'Join my Hermes call', url: link }).catch(() => {});
    }
  }

  setInviteTitle(text) {
    $('invite-title').textContent = text;
  }

  /** After the other person left: one button that makes a fresh code for this call. */
  showInviteAgain() {
    this.el.invite.hidden = false;
    this.el.invite.dataset.mode = 'again';
    this.setInviteTitle('Invite them again');
    this.el['new-code'].hidden = false;
    setLabel(this.el['new-code'], 'New invitation');
  }

  /** Remaining code time, or the expired state with "New code". */
  setCodeExpiry(text, expired) {
    if (this.el.invite.dataset.mode === 'again') return;
    this.el['code-expiry'].textContent = text;
    this.el['new-code'].hidden = !expired;
    setLabel(this.el['new-code'], 'New code');
    this.el.invite.dataset.expired = String(expired);
    this.el['invite-code'].classList.toggle('expired', expired);
  }

  onNewCode(fn) {
    this.el['new-code'].addEventListener('click', fn);
  }

  hideInvite() {
    this.el.invite.hidden = true;
  }

  setLocalStream(stream, { screen = false } = {}) {
    const v = this.el['local-video'];
    v.srcObject = stream;
    v.classList.toggle('screen', screen);
    const live = !!stream && stream.getVideoTracks().some((t) => t.enabled && t.readyState === 'live');
    v.classList.toggle('off', !live);
  }

  setRemoteStream(stream) {
    const v = this.el['remote-video'];
    if (v.srcObject === stream) return;
    v.srcObject = stream;
    // Opened from a link without a click and without capturing, autoplay with sound may be
    // refused: play muted and offer one tap to unmute, rather than a black picture.
    v.play().catch((e) => {
      if (e?.name !== 'NotAllowedError') return; // e.g. AbortError: a newer stream took over
      v.muted = true;
      v.play().catch(() => {});
      this.el.unmute.hidden = false;
      this.el.unmute.onclick = () => {
        v.muted = false;
        v.play().catch(() => {});
        this.el.unmute.hidden = true;
      };
    });
  }

  /** Draw a view from lib/call-view.js. */
  renderView(view, { peerStatus, peerWords }) {
    const e = this.el;
    e['conn-state'].dataset.state = view.state;
    e['conn-state'].textContent = view.text;
    e['peer-status'].dataset.status = peerStatus;
    e['remote-placeholder'].dataset.peer = peerStatus;
    // The waiting words are in the pill; the stage shows the invitation instead of repeating them.
    e['peer-status'].textContent = view.stage === 'invite' ? '' : peerWords;
    e.stage.dataset.stage = view.stage;
    if (!view.quality) {
      e.quality.hidden = true;
      e['conn-details'].hidden = true;
      e.quality.setAttribute('aria-expanded', 'false');
    } else {
      e.quality.hidden = false;
      e.quality.dataset.level = view.quality.level;
      e.quality.dataset.whose = view.quality.whose;
      e.quality.textContent = view.quality.text;
    }
  }

  /** The other person's camera/mic/name as they told us over the data channel. */
  setRemoteState({ cam, mic, name, screen }) {
    const e = this.el;
    e['remote-muted'].hidden = mic !== false;
    e['remote-name'].hidden = !name;
    e['remote-name'].textContent = name || '';
    // Their initial when they gave a name, else a person outline.
    const initial = (name || '').trim().charAt(0).toUpperCase();
    $('peer-initial').textContent = initial;
    e['peer-avatar'].dataset.initial = String(!!initial);
    e.stage.dataset.remoteCam = cam === false ? 'off' : 'on';
    e.stage.dataset.remoteScreen = String(!!screen);
  }

  setSpeaking(speaking) {
    this.el.stage.dataset.speaking = String(speaking);
  }

  setMutedHint(show) {
    this.el['muted-hint'].hidden = !show;
  }

  setConnectionDetails(rows) {
    const dl = this.el['conn-details'];
    dl.replaceChildren(
      ...rows.flatMap(([k, v]) => {
        const dt = document.createElement('dt');
        dt.textContent = k;
        const dd = document.createElement('dd');
        dd.textContent = v;
        return [dt, dd];
      }),
    );
  }

  setNotice(text, { retry = false } = {}) {
    this.el['notice-text'].textContent = text;
    this.el.notice.hidden = !text;
    this.el['retry-media'].hidden = !retry;
  }

  /** The network blocks the call (text) or not (''); the retry button comes with it. */
  setBlocked(text) {
    this.el['blocked-text'].textContent = text;
    this.el.blocked.hidden = !text;
  }

  onRetry(fn) {
    this.el['blocked-retry'].addEventListener('click', fn);
  }

  onRetryMedia(fn) {
    this.el['retry-media'].addEventListener('click', fn);
  }

  setSecurityCode(code, { changed = false } = {}) {
    this.el.security.hidden = !code;
    this.el['security-code'].textContent = code ? code.text : '';
    if (changed) this.el['security-changed'].hidden = false;
  }

  /** Start (or keep) the timer counting from `since` (ms since the epoch). */
  startTimer(since) {
    this.timerSince = since;
    this.el['call-timer'].hidden = false;
    if (this.timerHandle) return;
    const tick = () => (this.el['call-timer'].textContent = formatDuration(Date.now() - this.timerSince));
    tick();
    this.timerHandle = setInterval(tick, 1000);
  }

  stopTimer() {
    if (this.timerHandle) clearInterval(this.timerHandle);
    this.timerHandle = null;
  }

  hideTimer() {
    this.stopTimer();
    this.el['call-timer'].hidden = true;
  }

  setToggle(kind, on, available = true) {
    const btn = kind === 'audio' ? this.el['toggle-mic'] : this.el['toggle-cam'];
    this.setToggleButton(btn, kind, on, available);
  }

  setLobbyToggle(kind, on, available = true) {
    this.setToggleButton(kind === 'audio' ? this.el['lobby-mic'] : this.el['lobby-cam'], kind, on, available);
  }

  setToggleButton(btn, kind, on, available) {
    const name = kind === 'audio' ? 'Microphone' : 'Camera';
    const key = kind === 'audio' ? 'M' : 'V';
    const icon = kind === 'audio' ? 'mic' : 'cam';
    btn.disabled = !available;
    btn.setAttribute('aria-pressed', on && available ? 'true' : 'false');
    setIcon(btn, on && available ? icon : `${icon}-off`);
    setLabel(btn, available ? name : `No ${name.toLowerCase()}`);
    btn.title = available ? `${on ? 'Turn off' : 'Turn on'} ${name.toLowerCase()} (${key})` : `No ${name.toLowerCase()} available`;
  }

  setShareState(sharing, available) {
    const btn = this.el['toggle-share'];
    btn.hidden = !available;
    btn.setAttribute('aria-pressed', String(sharing));
    setLabel(btn, sharing ? 'Stop sharing' : 'Share screen');
    btn.title = sharing ? 'Stop sharing your screen (S)' : 'Share your screen (S)';
  }

  setFullscreenState(on, available) {
    this.el['toggle-full'].hidden = !available;
    this.el['toggle-full'].setAttribute('aria-pressed', String(on));
  }

  setPipState(on, available) {
    this.el['toggle-pip'].hidden = !available;
    this.el['toggle-pip'].setAttribute('aria-pressed', String(on));
  }

  on(id, fn) {
    this.el[id].addEventListener('click', fn);
  }

  onToggle(kind, fn) {
    (kind === 'audio' ? this.el['toggle-mic'] : this.el['toggle-cam']).addEventListener('click', fn);
  }

  setDevices(kind, devices, selectedId, select) {
    const sel = select ?? (kind === 'audio' ? this.el['mic-select'] : kind === 'video' ? this.el['cam-select'] : this.el['speaker-select']);
    const noun = kind === 'audio' ? 'Microphone' : kind === 'video' ? 'Camera' : 'Speaker';
    sel.replaceChildren(
      ...devices.map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${noun} ${i + 1}`;
        o.selected = d.deviceId === selectedId;
        return o;
      }),
    );
    sel.disabled = devices.length === 0;
  }

  setSpeakerAvailable(available) {
    this.el['speaker-select'].hidden = !available;
    this.el['speaker-label'].hidden = !available;
  }

  onDeviceChange(kind, fn) {
    const sel = kind === 'audio' ? this.el['mic-select'] : kind === 'video' ? this.el['cam-select'] : this.el['speaker-select'];
    sel.addEventListener('change', () => fn(sel.value));
  }

  togglePanel(which, force) {
    const panel = which === 'chat' ? this.el.chat : this.el.settings;
    const other = which === 'chat' ? this.el.settings : this.el.chat;
    const btn = which === 'chat' ? this.el['toggle-chat'] : this.el['toggle-settings'];
    const otherBtn = which === 'chat' ? this.el['toggle-settings'] : this.el['toggle-chat'];
    panel.hidden = force === undefined ? !panel.hidden : !force;
    btn.setAttribute('aria-expanded', String(!panel.hidden));
    other.hidden = true;
    otherBtn.setAttribute('aria-expanded', 'false');
    this.el.call.dataset.panel = panel.hidden ? 'closed' : 'open';
    if (which === 'chat' && !panel.hidden) {
      this.unread = 0;
      this.el['chat-badge'].hidden = true;
      this.el['chat-input'].focus();
    } else if (!panel.hidden) {
      panel.querySelector('select')?.focus();
    }
  }

  /** Close whatever is open (Escape). True when something was closed. */
  closeTopmost() {
    if (!this.el.help.hidden) {
      this.closeDialog('help');
      return true;
    }
    for (const [panel, btn] of [['chat', 'toggle-chat'], ['settings', 'toggle-settings']]) {
      if (!this.el[panel].hidden) {
        this.el[panel].hidden = true;
        this.el.call.dataset.panel = 'closed';
        this.el[btn].setAttribute('aria-expanded', 'false');
        this.el[btn].focus();
        return true;
      }
    }
    if (!this.el['conn-details'].hidden) {
      this.el['conn-details'].hidden = true;
      this.el.quality.setAttribute('aria-expanded', 'false');
      return true;
    }
    return false;
  }

  setChatOpen(open) {
    this.el['chat-input'].disabled = !open;
    this.el['chat-send'].disabled = !open;
    this.el['chat-input'].placeholder = open ? 'Message' : 'Chat opens when you are connected';
  }

  onChatSend(fn) {
    this.el['chat-form'].addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = this.el['chat-input'].value.trim();
      if (text && fn(text)) this.el['chat-input'].value = '';
    });
  }

  addChat(text, who, { restored = false } = {}) {
    const li = document.createElement('li');
    li.className = who;
    li.textContent = text;
    this.el['chat-log'].append(li);
    if (!restored) li.scrollIntoView({ block: 'end' });
    if (who === 'theirs' && this.el.chat.hidden && !restored) {
      this.unread += 1;
      this.el['chat-badge'].textContent = String(this.unread);
      this.el['chat-badge'].hidden = false;
    }
  }

  onHangUp(fn) {
    this.el['hang-up'].addEventListener('click', fn);
  }

  // ---- dialogs ----

  openDialog(id) {
    const root = this.el[id];
    this.dialogReturn = document.activeElement;
    root.hidden = false;
    // Everything behind the dialog is out of reach for keyboard and screen readers.
    for (const child of this.el.call.children) if (child !== root) child.inert = true;
    const first = focusables(root)[0] ?? root.querySelector('[role="dialog"]');
    first?.focus();
  }

  closeDialog(id) {
    this.el[id].hidden = true;
    for (const child of this.el.call.children) child.inert = false;
    if (id === 'help') this.el['toggle-help'].setAttribute('aria-expanded', 'false');
    this.dialogReturn?.focus?.();
    this.dialogReturn = null;
  }

  openHelp() {
    if (!this.el.help.hidden) {
      this.closeDialog('help');
      return;
    }
    this.el['toggle-help'].setAttribute('aria-expanded', 'true');
    this.openDialog('help');
  }

  trapFocus(ev, root) {
    if (ev.key === 'Escape' && root === this.el.help) {
      ev.preventDefault();
      this.closeDialog('help');
      return;
    }
    if (ev.key !== 'Tab') return;
    const f = focusables(root);
    if (f.length === 0) return;
    const first = f[0];
    const last = f[f.length - 1];
    if (ev.shiftKey && document.activeElement === first) {
      ev.preventDefault();
      last.focus();
    } else if (!ev.shiftKey && document.activeElement === last) {
      ev.preventDefault();
      first.focus();
    }
  }

  /** The end card: a modal with the reason, the duration, Rejoin where possible, New call. */
  /**
   * We left (the call goes on): the controls give way to "You left the call" with Rejoin and
   * End call for both, for the undo window; Rejoin takes the focus (Enter undoes at once).
   */
  showLeft({ text, onUndo, onEndForBoth }) {
    this.stopTimer();
    this.el['conn-state'].dataset.state = 'left';
    this.el['conn-state'].textContent = 'You left';
    this.el.quality.hidden = true;
    this.el['conn-details'].hidden = true;
    this.el['muted-hint'].hidden = true;
    this.setBlocked('');
    this.setChatOpen(false);
    this.closeTopmost();
    document.querySelector('nav.controls').hidden = true;
    this.el['left-text'].textContent = text;
    this.el['undo-leave'].onclick = onUndo;
    this.el['end-for-both'].onclick = onEndForBoth;
    this.el['end-for-both'].disabled = false;
    this.el['left-bar'].hidden = false;
    this.el['undo-leave'].focus();
    document.title = 'You left — Hermes';
  }

  setLeftText(text) {
    this.el['left-text'].textContent = text;
  }

  hideLeft() {
    this.el['left-bar'].hidden = true;
    document.querySelector('nav.controls').hidden = false;
  }

  /** The end card; `left`: we left a call that goes on (the pill keeps saying so). */
  showEnded(reason, { left = false, durationMs = null, canRejoin = false, onRejoin = null, onEndForBoth = null } = {}) {
    this.hideLeft();
    this.el['ended-title'].textContent = left ? 'You left the call' : 'Call ended';
    this.stopTimer();
    this.el['conn-state'].dataset.state = left ? 'left' : 'ended';
    this.el['conn-state'].textContent = left ? 'You left' : 'Call ended';
    this.el.quality.hidden = true;
    this.el['conn-details'].hidden = true;
    this.el['muted-hint'].hidden = true;
    this.setBlocked('');
    this.el['ended-reason'].textContent = reason;
    this.el['ended-duration'].hidden = durationMs === null;
    this.el['ended-duration'].textContent = durationMs === null ? '' : `Call length ${formatDuration(durationMs)}`;
    this.el.rejoin.hidden = !canRejoin;
    this.el.rejoin.onclick = onRejoin;
    this.el['end-ended'].hidden = !onEndForBoth;
    this.el['end-ended'].disabled = false;
    this.el['end-ended'].onclick = onEndForBoth;
    this.el['hang-up'].disabled = true;
    this.setChatOpen(false);
    this.closeTopmost();
    this.openDialog('ended');
    document.title = 'Call ended — Hermes';
  }

  // ---- layout helpers ----

  toggleFit() {
    const s = this.el.stage;
    s.dataset.fit = s.dataset.fit === 'cover' ? 'contain' : 'cover';
  }

  swapViews() {
    const s = this.el.stage;
    const swapped = s.dataset.swapped !== 'true';
    s.dataset.swapped = String(swapped);
    const remote = this.el['remote-video'];
    const local = this.el['local-video'];
    const a = remote.srcObject;
    remote.srcObject = local.srcObject;
    local.srcObject = a;
    remote.muted = swapped;
    local.muted = !swapped;
    remote.classList.toggle('mirrored', swapped);
    remote.play?.().catch(() => {});
    local.play?.().catch(() => {});
  }

  /** Drag the self-view anywhere over the stage (pointer events: mouse, touch, pen). */
  makeDraggable(box) {
    let start = null;
    box.addEventListener('pointerdown', (ev) => {
      if (ev.target.closest('button')) return;
      const r = box.getBoundingClientRect();
      start = { x: ev.clientX, y: ev.clientY, left: r.left, top: r.top };
      box.setPointerCapture(ev.pointerId);
    });
    box.addEventListener('pointermove', (ev) => {
      if (!start) return;
      const stage = this.el.stage.getBoundingClientRect();
      const r = box.getBoundingClientRect();
      const left = Math.min(Math.max(start.left + ev.clientX - start.x, stage.left), stage.right - r.width);
      const top = Math.min(Math.max(start.top + ev.clientY - start.y, stage.top), stage.bottom - r.height);
      box.style.left = `${left - stage.left}px`;
      box.style.top = `${top - stage.top}px`;
      box.style.right = 'auto';
      box.style.bottom = 'auto';
    });
    const end = () => {
      start = null;
    };
    box.addEventListener('pointerup', end);
    box.addEventListener('pointercancel', end);
  }

  setIdle(idle) {
    this.el.call.dataset.idle = String(idle);
  }
}
