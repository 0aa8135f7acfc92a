// Everything on screen: the home screen (new call, join by code) and the call screen (videos,
// toggles, devices, timer, connection and peer status, quality, security code, chat, hang-up).
// Only DOM work lives here; decisions come from client.js and the pure modules in lib/.

import { formatCode } from './lib/code.js';
import { CONNECTION_WORDS, PEER_WORDS, formatDuration } from './lib/format.js';
import { QUALITY_WORDS } from './lib/stats.js';

const $ = (id) => document.getElementById(id);

export class Ui {
  constructor() {
    this.el = {
      home: $('home'),
      call: $('call'),
      newCall: $('new-call'),
      createError: $('create-error'),
      joinForm: $('join-form'),
      codeInput: $('code-input'),
      joinButton: $('join-button'),
      joinError: $('join-error'),
      remoteVideo: $('remote-video'),
      localVideo: $('local-video'),
      placeholder: $('remote-placeholder'),
      peerStatus: $('peer-status'),
      invite: $('invite'),
      inviteCode: $('invite-code'),
      shareLink: $('share-link'),
      copyLink: $('copy-link'),
      shareButton: $('share-button'),
      copyStatus: $('copy-status'),
      connState: $('conn-state'),
      timer: $('call-timer'),
      quality: $('quality'),
      notice: $('notice'),
      blocked: $('blocked'),
      blockedText: $('blocked-text'),
      blockedRetry: $('blocked-retry'),
      security: $('security'),
      securityCode: $('security-code'),
      mic: $('toggle-mic'),
      cam: $('toggle-cam'),
      settingsBtn: $('toggle-settings'),
      settings: $('settings'),
      micSelect: $('mic-select'),
      camSelect: $('cam-select'),
      chatBtn: $('toggle-chat'),
      chatBadge: $('chat-badge'),
      chat: $('chat'),
      chatLog: $('chat-log'),
      chatForm: $('chat-form'),
      chatInput: $('chat-input'),
      chatSend: $('chat-send'),
      hangUp: $('hang-up'),
      unmute: $('unmute'),
      ended: $('ended'),
      endedReason: $('ended-reason'),
    };
    this.timerHandle = null;
    this.unread = 0;
    this.el.settingsBtn.addEventListener('click', () => this.togglePanel('settings'));
    this.el.chatBtn.addEventListener('click', () => this.togglePanel('chat'));
    this.el.remoteVideo.addEventListener('loadeddata', () => this.el.placeholder.classList.add('has-video'));
    this.el.remoteVideo.addEventListener('emptied', () => this.el.placeholder.classList.remove('has-video'));
  }

  // ---- home ----

  showHome({ code = '' } = {}) {
    this.el.call.hidden = true;
    this.el.home.hidden = false;
    document.title = 'Hermes — private video calls';
    if (code) this.el.codeInput.value = code;
  }

  onNewCall(fn) {
    this.el.newCall.addEventListener('click', fn);
  }

  onJoin(fn) {
    this.el.joinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      fn(this.el.codeInput.value);
    });
    this.el.codeInput.addEventListener('input', () => this.setJoinError(''));
  }

  setBusy(busy) {
    this.el.newCall.disabled = busy;
    this.el.joinButton.disabled = busy;
  }

  setCreateError(text) {
    this.el.createError.textContent = text;
    this.el.createError.hidden = !text;
  }

  setJoinError(text) {
    this.el.joinError.textContent = text;
    this.el.joinError.hidden = !text;
    this.el.codeInput.setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  // ---- call ----

  showCall() {
    this.el.home.hidden = true;
    this.el.call.hidden = false;
    this.el.ended.hidden = true;
    document.title = 'Hermes — call';
  }

  showInvite(code, link) {
    this.el.invite.hidden = false;
    this.el.inviteCode.textContent = formatCode(code);
    this.el.shareLink.value = link;
    this.el.copyLink.onclick = async () => {
      try {
        await navigator.clipboard.writeText(link);
        this.el.copyStatus.textContent = 'Link copied.';
      } catch {
        this.el.shareLink.select();
        this.el.copyStatus.textContent = 'Select the link and copy it.';
      }
    };
    if (typeof navigator.share === 'function') {
      this.el.shareButton.hidden = false;
      this.el.shareButton.onclick = () =>
        navigator.share({ title: 'Join my Hermes call', url: link }).catch(() => {});
    }
  }

  hideInvite() {
    this.el.invite.hidden = true;
  }

  setLocalStream(stream) {
    this.el.localVideo.srcObject = stream;
    this.el.localVideo.classList.toggle('off', !stream || stream.getVideoTracks().length === 0);
  }

  setRemoteStream(stream) {
    const v = this.el.remoteVideo;
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

  setConnectionState(state) {
    this.el.connState.dataset.state = state;
    this.el.connState.textContent = CONNECTION_WORDS[state] ?? state;
  }

  setPeerStatus(status) {
    this.el.peerStatus.dataset.status = status;
    // Shown over a frozen remote picture too when the other person is away or gone.
    this.el.placeholder.dataset.peer = status;
    this.el.peerStatus.textContent = PEER_WORDS[status] ?? status;
    if (status !== 'waiting') this.hideInvite();
  }

  setQuality(level) {
    this.el.quality.hidden = false;
    this.el.quality.dataset.level = level;
    this.el.quality.textContent = QUALITY_WORDS[level] ?? level;
  }

  /** The network blocks the call (text) or not (''); the retry button comes with it. */
  setBlocked(text) {
    this.el.blockedText.textContent = text;
    this.el.blocked.hidden = !text;
  }

  onRetry(fn) {
    this.el.blockedRetry.addEventListener('click', fn);
  }

  setNotice(text) {
    this.el.notice.textContent = text;
    this.el.notice.hidden = !text;
  }

  setSecurityCode(code) {
    this.el.security.hidden = !code;
    this.el.securityCode.textContent = code ? code.text : '';
  }

  startTimer(since = Date.now()) {
    if (this.timerHandle) return;
    this.el.timer.hidden = false;
    const tick = () => (this.el.timer.textContent = formatDuration(Date.now() - since));
    tick();
    this.timerHandle = setInterval(tick, 1000);
  }

  stopTimer() {
    if (this.timerHandle) clearInterval(this.timerHandle);
    this.timerHandle = null;
  }

  setToggle(kind, on, available = true) {
    const btn = kind === 'audio' ? this.el.mic : this.el.cam;
    const name = kind === 'audio' ? 'Mic' : 'Camera';
    btn.disabled = !available;
    btn.setAttribute('aria-pressed', on && available ? 'true' : 'false');
    btn.textContent = available ? `${name} ${on ? 'on' : 'off'}` : `No ${name.toLowerCase()}`;
  }

  onToggle(kind, fn) {
    (kind === 'audio' ? this.el.mic : this.el.cam).addEventListener('click', fn);
  }

  setDevices(kind, devices, selectedId) {
    const sel = kind === 'audio' ? this.el.micSelect : this.el.camSelect;
    sel.replaceChildren(
      ...devices.map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${kind === 'audio' ? 'Microphone' : 'Camera'} ${i + 1}`;
        o.selected = d.deviceId === selectedId;
        return o;
      }),
    );
    sel.disabled = devices.length === 0;
  }

  onDeviceChange(kind, fn) {
    const sel = kind === 'audio' ? this.el.micSelect : this.el.camSelect;
    sel.addEventListener('change', () => fn(sel.value));
  }

  togglePanel(which) {
    const panel = which === 'chat' ? this.el.chat : this.el.settings;
    const other = which === 'chat' ? this.el.settings : this.el.chat;
    const btn = which === 'chat' ? this.el.chatBtn : this.el.settingsBtn;
    const otherBtn = which === 'chat' ? this.el.settingsBtn : this.el.chatBtn;
    panel.hidden = !panel.hidden;
    btn.setAttribute('aria-expanded', String(!panel.hidden));
    other.hidden = true;
    otherBtn.setAttribute('aria-expanded', 'false');
    if (which === 'chat' && !panel.hidden) {
      this.unread = 0;
      this.el.chatBadge.hidden = true;
      this.el.chatInput.focus();
    }
  }

  setChatOpen(open) {
    this.el.chatInput.disabled = !open;
    this.el.chatSend.disabled = !open;
    this.el.chatInput.placeholder = open ? 'Message' : 'Chat opens when you are connected';
  }

  onChatSend(fn) {
    this.el.chatForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = this.el.chatInput.value.trim();
      if (text && fn(text)) this.el.chatInput.value = '';
    });
  }

  addChat(text, who) {
    const li = document.createElement('li');
    li.className = who;
    li.textContent = text;
    this.el.chatLog.append(li);
    li.scrollIntoView({ block: 'end' });
    if (who === 'theirs' && this.el.chat.hidden) {
      this.unread += 1;
      this.el.chatBadge.textContent = String(this.unread);
      this.el.chatBadge.hidden = false;
    }
  }

  onHangUp(fn) {
    this.el.hangUp.addEventListener('click', fn);
  }

  showEnded(reason) {
    this.stopTimer();
    this.setConnectionState('ended');
    this.el.quality.hidden = true;
    this.setBlocked('');
    this.el.endedReason.textContent = reason;
    this.el.ended.hidden = false;
    this.el.hangUp.disabled = true;
    this.setChatOpen(false);
  }
}
