// What the two transports (protocol.js's Connection over a WebSocket, rtc.js's
// RtcConnection over a data channel) have in common: listeners, the state
// line, parsing protocol v1 messages, the back-off between retries and the
// keep-alive ping. Each subclass only opens its own pipe and calls these.

export const PROTOCOL = 1;

export class Transport {
  /** @param {() => string|null} token current token (read at each connect) */
  constructor(token) {
    this.getToken = token;
    this.info = null; // the `ready` message
    this.state = 'idle'; // connecting | ready | reconnecting | unauthorized | failed | idle
    this.listeners = {};
    this.retry = 0;
    this.timer = null;
    this.pingTimer = null;
    this.rttMs = null;
  }

  /** Listen to one message type, or '*' for every event as (type, msg). */
  on(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  emit(type, msg) {
    for (const fn of this.listeners[type] || []) fn(msg);
    for (const fn of this.listeners['*'] || []) fn(type, msg);
  }

  setState(state, detail = '') {
    this.state = state;
    this.emit('state', { state, detail });
  }

  /** The `hello` that opens a session (a subclass adds its audio format). */
  hello(extra = {}) {
    const msg = { type: 'hello', protocol: PROTOCOL, ...extra };
    const token = this.getToken();
    if (token) msg.token = token;
    return msg;
  }

  /** A JSON text frame from the server; returns the message (null if unusable). */
  receive(data) {
    if (typeof data !== 'string') return null; // this page asked for JSON frames
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return null;
    }
    if (msg.type === 'ready') {
      this.info = msg;
      this.retry = 0;
      this.setState('ready');
      this.startPing();
    } else if (msg.type === 'pong' && typeof msg.t === 'number') {
      this.rttMs = performance.now() - msg.t;
    }
    this.emit(msg.type, msg);
    return msg;
  }

  /** Try again later, waiting longer after each failure (0.5 s doubling to 10 s). */
  scheduleRetry() {
    this.retry++;
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.retry, 5));
    this.setState('reconnecting', `retrying in ${Math.round(delay / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // A ping every 15 s keeps idle NATs and proxies from dropping the session,
  // and gives a round-trip figure for the status line.
  startPing() {
    this.stopPing();
    const ping = () => {
      if (this.isReady) this.sendRaw(JSON.stringify({ type: 'ping', t: performance.now() }));
    };
    ping();
    this.pingTimer = setInterval(ping, 15000);
  }

  stopPing() {
    clearInterval(this.pingTimer);
  }

  send(msg) {
    if (!this.isReady) throw new Error('Not connected to the server.');
    this.sendRaw(JSON.stringify(msg));
  }
}

/**
 * The page's handle on whichever transport is in use. Listeners are added
 * once, here; use(conn) swaps the transport underneath (the switch in the
 * header) and only the current one's events get through.
 */
export class Link {
  constructor() {
    this.conn = null;
    this.listeners = {};
  }

  use(conn) {
    const old = this.conn;
    this.conn = conn;
    if (old) old.close();
    conn.on('*', (type, msg) => {
      if (this.conn === conn) for (const fn of this.listeners[type] || []) fn(msg);
    });
    return conn;
  }

  on(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  /** 'websocket' or 'webrtc' */
  get transport() {
    return this.conn?.transport;
  }
  get state() {
    return this.conn?.state ?? 'idle';
  }
  get info() {
    return this.conn?.info ?? null;
  }
  get rttMs() {
    return this.conn?.rttMs ?? null;
  }
  get isReady() {
    return !!this.conn?.isReady;
  }
  send(msg) {
    if (!this.conn) throw new Error('Not connected to the server.');
    this.conn.send(msg);
  }
  reconnect() {
    this.conn?.reconnect();
  }
}
