// The RTCPeerConnection of one call: ICE servers and transport policy from /api/join only,
// perfect negotiation (the offerer is impolite, the answerer polite), ICE restart when the
// connection fails or stays disconnected, a fresh peer connection when the restart does not
// help, a periodic stats summary, the security code from both DTLS fingerprints, chat over an
// RTCDataChannel, and a second channel `meta` that carries each side's state (mic, camera,
// screen share, display name, link quality) as small JSON objects: all peer to peer, never
// through the server.

import { answerMessage, candidateMessage, offerMessage, statsMessage } from './lib/messages.js';
import { securityCode } from './lib/security-code.js';
import { sdpSessionId } from './lib/sdp.js';
import { summariseStats } from './lib/stats.js';

const MAX_CHAT_CHARS = 2000;
/** A meta message is a small JSON object; anything longer is not ours. */
const MAX_META_CHARS = 1000;

export class MediaSession {
  /**
   * @param {object} o
   * @param {'offerer'|'answerer'} o.role
   * @param {RTCIceServer[]} o.iceServers
   * @param {'all'|'relay'} o.iceTransportPolicy
   * @param {(m: object) => void} o.send           signaling send
   * @param {MediaStream} o.localStream            may have no tracks (receive-only)
   * @param {object} o.on  callbacks: remoteStream(stream), state(connectionState),
   *        securityCode({words,text}|null), chat(text), chatOpen(bool), stats(summary), log(text)
   */
  constructor(o) {
    this.role = o.role;
    this.polite = o.role !== 'offerer';
    this.config = {
      iceServers: o.iceServers ?? [],
      iceTransportPolicy: o.iceTransportPolicy === 'relay' ? 'relay' : 'all',
    };
    this.send = o.send;
    this.localStream = o.localStream;
    this.on = o.on ?? {};
    this.statsIntervalMs = o.statsIntervalMs ?? 5000;
    this.disconnectedGraceMs = o.disconnectedGraceMs ?? 3000;
    this.restartTimeoutMs = o.restartTimeoutMs ?? 10_000;
    // A new connection that is not up this long after the offer/answer exchange (or whose
    // ICE failed first) is reported as blocked by the network.
    this.connectTimeoutMs = o.connectTimeoutMs ?? 12_000;
    this.connectTimer = null;
    this.pcConnected = false;

    this.pc = null;
    this.dc = null;
    this.meta = null;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.remoteSession = null;
    this.chain = Promise.resolve();
    this.statsTimer = null;
    this.statsSample = null;
    this.lastSummary = null;
    this.disconnectTimer = null;
    this.restartTimer = null;
    this.closed = false;
    this.iceRestarts = 0;
    this.pcGeneration = 0;
    this.remoteStream = null;
  }

  log(text) {
    this.on.log?.(text);
  }

  /** Run `fn` after everything queued before it (signal messages are applied in order). */
  enqueue(fn) {
    this.chain = this.chain.then(fn).catch((e) => this.log(`media: ${e?.message ?? e}`));
    return this.chain;
  }

  /** The other participant is there: the offerer starts (or restarts from scratch with `fresh`). */
  peerPresent({ fresh = false } = {}) {
    if (this.closed || this.polite) return;
    this.enqueue(() => {
      if (!this.pc || fresh) this.createPc();
    });
  }

  createPc() {
    this.teardownPc();
    this.pcGeneration += 1;
    this.pcConnected = false;
    const pc = new RTCPeerConnection(this.config);
    this.pc = pc;
    this.makingOffer = false;
    this.ignoreOffer = false;
    // Offers and candidates applied to this connection: relaying is at-least-once (a message
    // resent after `unavailable` may arrive twice, under two seq numbers), so drop repeats.
    this.applied = new Set();
    this.remoteStream = new MediaStream();
    this.on.remoteStream?.(this.remoteStream);

    pc.ontrack = ({ track, streams }) => {
      if (pc !== this.pc) return;
      const stream = streams[0];
      if (stream && stream !== this.remoteStream) {
        this.remoteStream = stream;
        this.on.remoteStream?.(stream);
      } else if (!stream && !this.remoteStream.getTracks().includes(track)) {
        this.remoteStream.addTrack(track);
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.pc || !candidate || !candidate.candidate) return;
      this.send(candidateMessage(candidate));
    };
    pc.onnegotiationneeded = () => {
      if (pc !== this.pc) return;
      this.enqueue(async () => {
        if (pc !== this.pc) return;
        try {
          this.makingOffer = true;
          await pc.setLocalDescription();
          if (pc.localDescription?.type === 'offer') {
            this.send(offerMessage(pc.localDescription.sdp));
          }
        } finally {
          this.makingOffer = false;
        }
      });
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.onConnectionState(pc.connectionState);
    };
    pc.oniceconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.onIceState(pc.iceConnectionState);
    };
    pc.ondatachannel = ({ channel }) => {
      if (pc !== this.pc) return;
      if (channel.label === 'meta') this.attachMeta(channel);
      else this.attachChannel(channel);
    };

    if (!this.polite) {
      // The offerer owns the data channel and sends first: tracks (or receive-only
      // transceivers for kinds we cannot send) then negotiationneeded fires.
      this.addLocalMedia(pc);
      this.attachChannel(pc.createDataChannel('chat', { ordered: true }));
      this.attachMeta(pc.createDataChannel('meta', { ordered: true }));
    }
    this.startStats();
    return pc;
  }

  /** Add local tracks; for each kind without a local track, receive only. */
  addLocalMedia(pc) {
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    for (const kind of ['audio', 'video']) {
      const track = tracks.find((t) => t.kind === kind);
      if (track && pc.getSenders().some((s) => s.track === track)) continue;
      if (!track && pc.getTransceivers().some((t) => t.receiver.track?.kind === kind && !t.stopped)) continue;
      const existing = pc
        .getTransceivers()
        .find((t) => t.receiver.track?.kind === kind && !t.sender.track && !t.stopped);
      if (track) {
        if (existing) {
          existing.sender.replaceTrack(track);
          existing.direction = 'sendrecv';
          existing.sender.setStreams?.(this.localStream);
        } else {
          pc.addTrack(track, this.localStream);
        }
      } else if (!existing) {
        pc.addTransceiver(kind, { direction: 'recvonly' });
      }
    }
  }

  attachChannel(dc) {
    this.dc = dc;
    dc.onopen = () => dc === this.dc && this.on.chatOpen?.(true);
    dc.onclose = () => dc === this.dc && this.on.chatOpen?.(false);
    dc.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      this.on.chat?.(ev.data.slice(0, MAX_CHAT_CHARS));
    };
  }

  attachMeta(dc) {
    this.meta = dc;
    dc.onopen = () => dc === this.meta && this.on.metaOpen?.();
    dc.onmessage = (ev) => {
      if (typeof ev.data !== 'string' || ev.data.length > MAX_META_CHARS) return;
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (m && typeof m === 'object' && !Array.isArray(m)) this.on.meta?.(m);
    };
  }

  /** Send a state object to the other side. False when the channel is not open. */
  sendMeta(obj) {
    const text = JSON.stringify(obj);
    if (!this.meta || this.meta.readyState !== 'open' || text.length > MAX_META_CHARS) return false;
    this.meta.send(text);
    return true;
  }

  /** Send a chat line over the data channel. False when the channel is not open. */
  sendChat(text) {
    const t = String(text).slice(0, MAX_CHAT_CHARS);
    if (!t || !this.dc || this.dc.readyState !== 'open') return false;
    this.dc.send(t);
    return true;
  }

  /** An offer, answer or candidate from the other side (already in seq order). */
  handleSignal(m) {
    if (this.closed) return Promise.resolve();
    return this.enqueue(async () => {
      if (m.type === 'offer' || m.type === 'answer') {
        if (m.type === 'offer' && this.applied?.has(`o ${m.sdp}`)) return;
        await this.handleDescription({ type: m.type, sdp: m.sdp });
        if (m.type === 'offer' && !this.ignoreOffer) this.applied?.add(`o ${m.sdp}`);
      } else if (m.type === 'ice-candidate') {
        if (!this.pc) return;
        const c = m.candidate ?? {};
        const key = `c ${c.sdpMid ?? ''} ${c.sdpMLineIndex ?? ''} ${c.candidate ?? ''}`;
        if (this.applied.has(key)) return;
        this.applied.add(key);
        try {
          await this.pc.addIceCandidate(m.candidate);
        } catch (e) {
          if (!this.ignoreOffer) this.log(`candidate refused: ${e?.message ?? e}`);
        }
      }
    });
  }

  async handleDescription(description) {
    if (description.type === 'offer') {
      const session = sdpSessionId(description.sdp);
      // A new remote session id means the other side made a new RTCPeerConnection: so do we.
      if (!this.pc || (this.polite && session && this.remoteSession && session !== this.remoteSession)) {
        if (!this.polite && this.pc) {
          // The impolite side never throws its connection away for a remote offer.
        } else {
          this.createPc();
        }
      }
      this.remoteSession = session ?? this.remoteSession;
    }
    const pc = this.pc;
    if (!pc) return;
    const offerCollision =
      description.type === 'offer' && (this.makingOffer || pc.signalingState !== 'stable');
    this.ignoreOffer = !this.polite && offerCollision;
    if (this.ignoreOffer) return;
    if (description.type === 'answer' && pc.signalingState !== 'have-local-offer') return;
    await pc.setRemoteDescription(description);
    this.watchConnect(pc);
    if (description.type === 'offer') {
      if (this.polite) this.addLocalMedia(pc);
      await pc.setLocalDescription();
      this.send(answerMessage(pc.localDescription.sdp));
    }
    this.updateSecurityCode();
  }

  async updateSecurityCode() {
    const pc = this.pc;
    if (!pc?.localDescription || !pc?.remoteDescription) return;
    const code = await securityCode(pc.localDescription.sdp, pc.remoteDescription.sdp);
    if (pc === this.pc) {
      this.securityCode = code;
      this.on.securityCode?.(code);
    }
  }

  onConnectionState(state) {
    this.on.state?.(state);
    if (state === 'connected') {
      this.clearRecoveryTimers();
    }
  }

  /** Start the blocked-network timer of a connection that never came up (once per pc). */
  watchConnect(pc) {
    if (this.pcConnected || this.connectTimer) return;
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      if (pc === this.pc && !this.pcConnected && !this.closed) this.on.blocked?.(true);
    }, this.connectTimeoutMs);
  }

  /** The person asked to try again: restart ICE, or start over when there is nothing to restart. */
  retry() {
    if (this.closed) return;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    if (this.pc) this.restartIce('retry asked by the user');
    else this.peerPresent({ fresh: true });
  }

  onIceState(state) {
    if (state === 'connected' || state === 'completed') {
      this.clearRecoveryTimers();
      this.pcConnected = true;
      if (this.connectTimer) clearTimeout(this.connectTimer);
      this.connectTimer = null;
      this.on.blocked?.(false);
    } else if (state === 'failed') {
      if (!this.pcConnected) this.on.blocked?.(true);
      this.restartIce('ICE failed');
    } else if (state === 'disconnected' && !this.disconnectTimer) {
      this.disconnectTimer = setTimeout(() => {
        this.disconnectTimer = null;
        if (this.pc?.iceConnectionState === 'disconnected') this.restartIce('disconnected too long');
      }, this.disconnectedGraceMs);
    }
  }

  /** ICE restart (perfect negotiation sends the offer); a fresh connection if it does not help. */
  restartIce(why = 'requested') {
    if (this.closed || !this.pc) return;
    this.log(`ICE restart: ${why}`);
    this.iceRestarts += 1;
    this.pc.restartIce();
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const pc = this.pc;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (pc !== this.pc || this.closed) return;
      const s = pc.iceConnectionState;
      if (s !== 'connected' && s !== 'completed') this.recreate('ICE restart did not recover');
    }, this.restartTimeoutMs);
  }

  /**
   * Start over with a new RTCPeerConnection. The offerer makes it and offers (the new `o=`
   * session id tells the answerer to do the same); the answerer drops its connection and waits.
   */
  recreate(why = 'requested') {
    if (this.closed) return;
    this.log(`new peer connection: ${why}`);
    if (this.polite) {
      this.teardownPc();
      this.on.state?.('connecting');
      return;
    }
    this.enqueue(() => this.createPc());
  }

  clearRecoveryTimers() {
    if (this.disconnectTimer) clearTimeout(this.disconnectTimer);
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.disconnectTimer = this.restartTimer = null;
  }

  startStats() {
    if (this.statsTimer) return;
    this.statsTimer = setInterval(() => this.collectStats(), this.statsIntervalMs);
  }

  async collectStats() {
    const pc = this.pc;
    if (!pc || pc.connectionState !== 'connected') return null;
    const report = await pc.getStats();
    const { summary, sample } = summariseStats([...report.values()], this.statsSample, Date.now());
    this.statsSample = sample;
    this.lastSummary = summary;
    this.on.stats?.(summary);
    this.send(statsMessage(summary));
    return summary;
  }

  /** Replace (or add) the local track of one kind, e.g. after a device change. */
  async replaceTrack(kind, track) {
    if (this.localStream) {
      for (const t of this.localStream.getTracks().filter((x) => x.kind === kind)) {
        this.localStream.removeTrack(t);
        if (t !== track) t.stop();
      }
      if (track) this.localStream.addTrack(track);
    }
    const pc = this.pc;
    if (!pc) return;
    const tr = pc
      .getTransceivers()
      .find((t) => (t.sender.track?.kind ?? t.receiver.track?.kind) === kind && !t.stopped);
    if (tr) {
      await tr.sender.replaceTrack(track);
      if (track && tr.direction === 'recvonly') tr.direction = 'sendrecv';
    } else if (track) {
      pc.addTrack(track, this.localStream);
    }
  }

  /**
   * Send `track` as our video without touching the local stream (screen sharing: the camera
   * track stays ready to come back). Same DTLS session, so the security code stays valid.
   */
  async sendVideoTrack(track) {
    const pc = this.pc;
    if (!pc) return;
    const tr = pc
      .getTransceivers()
      .find((t) => (t.sender.track?.kind ?? t.receiver.track?.kind) === 'video' && !t.stopped);
    if (tr) {
      await tr.sender.replaceTrack(track);
      if (track && tr.direction === 'recvonly') tr.direction = 'sendrecv';
    } else if (track) {
      pc.addTrack(track, this.localStream ?? new MediaStream([track]));
    }
  }

  teardownPc() {
    this.clearRecoveryTimers();
    if (this.dc) {
      try {
        this.dc.close();
      } catch {
        // closed already
      }
    }
    this.dc = null;
    if (this.meta) {
      try {
        this.meta.close();
      } catch {
        // closed already
      }
    }
    this.meta = null;
    if (this.pc) {
      try {
        this.pc.close();
      } catch {
        // closed already
      }
    }
    this.pc = null;
    this.statsSample = null;
    this.remoteSession = null;
  }

  close() {
    this.closed = true;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.teardownPc();
  }
}
