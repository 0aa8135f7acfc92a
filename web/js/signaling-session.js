// The WebSocket to the signal service: authentication by the first message (`join`, the token
// never goes in the URL), reconnect with jittered backoff and resume (`lastSeqs` = the highest
// relayed `seq` processed per sender, numbers being per sender, and `lastSeq` their maximum,
// so the server replays exactly what was missed), `ack` of every relayed message, duplicate
// suppression per sender, keep-alive pings and a liveness timeout.
//
// No DOM: the WebSocket constructor and timers are injectable, so the unit tests drive it with
// a fake socket.

import { backoffDelay } from './lib/backoff.js';
import {
  ackMessage,
  closeMessage,
  isRelayed,
  isTerminalClose,
  joinMessage,
  leaveMessage,
  parseServerMessage,
  pingMessage,
} from './lib/messages.js';

/** Messages worth queueing while the socket is down (the rest are stale by the time it is back). */
const QUEUEABLE = new Set(['offer', 'answer', 'ice-candidate', 'hangup']);
const MAX_QUEUE = 200;

export class SignalingSession {
  /**
   * @param {object} o
   * @param {string} o.url            ws:// or wss:// URL of the signal service
   * @param {string} o.token          join token from the API
   * @param {string} [o.callId]       the call this client means to join
   * @param {(m: object) => void} o.onMessage  every server message except pong, in order
   * @param {(state: string, info?: object) => void} [o.onStateChange]
   *        `connecting` | `open` | `reconnecting` | `closed` (info: {code, reason, message})
   */
  constructor(o) {
    this.url = o.url;
    this.token = o.token;
    this.callId = o.callId;
    this.onMessage = o.onMessage;
    this.onStateChange = o.onStateChange ?? (() => {});
    this.WebSocketImpl = o.WebSocketImpl ?? globalThis.WebSocket;
    this.timers = o.timers ?? {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (id) => clearTimeout(id),
      setInterval: (fn, ms) => setInterval(fn, ms),
      clearInterval: (id) => clearInterval(id),
    };
    this.random = o.random ?? Math.random;
    this.pingIntervalMs = o.pingIntervalMs ?? 10_000;
    this.livenessMs = o.livenessMs ?? 25_000;
    this.joinTimeoutMs = o.joinTimeoutMs ?? 8_000;
    this.now = o.now ?? (() => Date.now());

    this.state = 'idle';
    this.ws = null;
    this.attempt = 0;
    this.joinedOnce = false;
    this.lastSeq = 0;
    // Highest `seq` processed per sender: numbers are per sender (`from`).
    this.lastSeqs = {};
    this.queue = [];
    this.stopped = false;
    this.lastHeard = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.joinTimer = null;
    this.aliveTimer = null;
    this.connects = 0;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  setState(state, info) {
    if (this.state === state && !info) return;
    this.state = state;
    this.onStateChange(state, info);
  }

  connect() {
    this.clearTimers();
    this.setState(this.joinedOnce ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.connects += 1;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      const opts = { callId: this.callId };
      // Resume only after a first successful join: the server then replays after lastSeq.
      if (this.joinedOnce) {
        opts.lastSeq = this.lastSeq;
        opts.lastSeqs = this.lastSeqs;
      }
      this.rawSend(joinMessage(this.token, opts));
      this.joinTimer = this.timers.setTimeout(() => {
        if (ws === this.ws && this.state !== 'open') ws.close(4000, 'join timeout');
      }, this.joinTimeoutMs);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = this.now();
      this.handleFrame(typeof ev.data === 'string' ? ev.data : '');
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.clearTimers();
      if (this.stopped) {
        this.setState('closed', { code: ev.code, reason: ev.reason, message: 'Left the call.' });
      } else if (isTerminalClose(ev.code)) {
        this.stopped = true;
        this.setState('closed', { code: ev.code, reason: ev.reason, message: closeMessage(ev.code) });
      } else {
        this.scheduleReconnect();
      }
    };
    ws.onerror = () => {
      // onclose follows; nothing to do here.
    };
  }

  handleFrame(text) {
    const m = parseServerMessage(text);
    if (!m) return;
    if (m.type === 'pong') return;
    if (m.type === 'joined') {
      const first = !this.joinedOnce;
      this.joinedOnce = true;
      this.attempt = 0;
      if (this.joinTimer) this.timers.clearTimeout(this.joinTimer);
      this.joinTimer = null;
      this.setState('open', { resumed: !!m.resumed, first });
      this.startPings();
      this.onMessage(m);
      this.flush();
      return;
    }
    if (isRelayed(m)) {
      if (m.seq <= (this.lastSeqs[m.from] ?? 0)) {
        // Already processed (resume overlap): ack again so the server can trim, skip.
        this.rawSend(ackMessage(m.seq));
        return;
      }
      this.lastSeqs[m.from] = m.seq;
      this.lastSeq = Math.max(this.lastSeq, m.seq);
      this.onMessage(m);
      this.rawSend(ackMessage(m.seq));
      return;
    }
    if (m.type === 'call-ended') this.stopped = true;
    this.onMessage(m);
  }

  /** Send a message; relayed kinds are queued while the socket is down and sent after `joined`. */
  send(m) {
    if (this.state === 'open' && this.ws && this.ws.readyState === 1) {
      this.rawSend(m);
      return true;
    }
    if (QUEUEABLE.has(m.type) && !this.stopped) {
      if (this.queue.length >= MAX_QUEUE) this.queue.shift();
      this.queue.push(m);
    }
    return false;
  }

  flush() {
    const q = this.queue;
    this.queue = [];
    for (const m of q) this.rawSend(m);
  }

  rawSend(m) {
    try {
      if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(m));
    } catch {
      // The close handler will reconnect.
    }
  }

  startPings() {
    if (this.pingTimer) this.timers.clearInterval(this.pingTimer);
    this.lastHeard = this.now();
    this.pingTimer = this.timers.setInterval(() => {
      if (!this.ws) return;
      if (this.now() - this.lastHeard > this.livenessMs) {
        // Silent socket (half-open TCP, sleeping laptop): drop it and reconnect.
        this.abandon('liveness timeout');
        return;
      }
      this.rawSend(pingMessage(this.now()));
    }, this.pingIntervalMs);
  }

  scheduleReconnect() {
    if (this.stopped) return;
    this.setState(this.joinedOnce ? 'reconnecting' : 'connecting');
    const delay = backoffDelay(this.attempt, this.random);
    this.attempt += 1;
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.connect();
    }, delay);
  }

  /** Reconnect now (e.g. the browser came back online) instead of waiting out the backoff. */
  reconnectNow() {
    if (this.stopped || this.state === 'open') return;
    if (this.reconnectTimer) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempt = 0;
    this.connect();
  }

  /**
   * The network may have changed under us (media just lost its path): ping now, and if nothing
   * comes back within `timeoutMs`, give the socket up and reconnect at once. After a move to
   * another network the old TCP connection is silently dead; without this the session would
   * only notice after the liveness timeout, and what it sends meanwhile would be lost.
   */
  checkAlive(timeoutMs = 2000) {
    if (this.stopped || this.state !== 'open' || !this.ws || this.aliveTimer) return;
    const ws = this.ws;
    const asked = this.now();
    this.rawSend(pingMessage(asked));
    this.aliveTimer = this.timers.setTimeout(() => {
      this.aliveTimer = null;
      if (ws === this.ws && this.lastHeard < asked) this.abandon('no answer after a network change');
    }, timeoutMs);
  }

  /**
   * Give a socket up without waiting for its closing handshake (which a dead connection never
   * completes) and reconnect now; the server resumes the seat.
   */
  abandon(reason) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.clearTimers();
    this.attempt = 0;
    this.connect();
  }

  /** Close the socket as if the network dropped it; the session reconnects and resumes. */
  dropConnection() {
    if (this.ws) this.ws.close(4000, 'dropped by client');
  }

  clearTimers() {
    if (this.pingTimer) this.timers.clearInterval(this.pingTimer);
    if (this.joinTimer) this.timers.clearTimeout(this.joinTimer);
    if (this.reconnectTimer) this.timers.clearTimeout(this.reconnectTimer);
    if (this.aliveTimer) this.timers.clearTimeout(this.aliveTimer);
    this.pingTimer = this.joinTimer = this.reconnectTimer = this.aliveTimer = null;
  }

  /**
   * Leave without ending the call: tell the server first (it frees our seat at once and the
   * other side hears `peer-left {reason: "left"}` instead of "reconnecting"), then close.
   */
  leave() {
    if (this.state === 'open') this.rawSend(leaveMessage());
    this.close();
  }

  /** Leave for good (after hang-up or when the page goes away). */
  close() {
    this.stopped = true;
    this.clearTimers();
    this.queue = [];
    const ws = this.ws;
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch {
        // already closing
      }
    } else {
      this.setState('closed', { code: 1000, reason: 'bye', message: 'Left the call.' });
    }
  }
}
