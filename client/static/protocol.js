// Protocol v1 over a WebSocket, JSON text frames (no client library).
//
// Connection opens wss://<this host>/v1/stream, sends `hello` first and waits
// for `ready`; every later server message is handed to listeners by its
// "type". It reconnects by itself with back-off, except when the server
// refused the token: then it reports 'unauthorized' and waits for a new one.

import { probeAuth } from './api.js';

export const PROTOCOL = 1;

export class Connection {
  /**
   * @param {object} opts
   * @param {() => string|null} opts.token current token (read at each connect)
   * @param {string} [opts.format]
   * @param {number} [opts.sampleRate]
   */
  constructor({ token, format = 'pcm_s16le', sampleRate = 24000 }) {
    this.getToken = token;
    this.format = format;
    this.sampleRate = sampleRate;
    this.ws = null;
    this.info = null; // the `ready` message
    this.state = 'idle'; // connecting | ready | reconnecting | unauthorized | failed
    this.listeners = {};
    this.retry = 0;
    this.timer = null;
    this.pingTimer = null;
    this.rttMs = null;
  }

  on(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  emit(type, msg) {
    for (const fn of this.listeners[type] || []) fn(msg);
  }

  setState(state, detail = '') {
    this.state = state;
    this.emit('state', { state, detail });
  }

  connect() {
    clearTimeout(this.timer);
    const token = this.getToken();
    const url = new URL('/v1/stream', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (token) url.searchParams.set('token', token);

    this.setState(this.retry ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(url);
    this.ws = ws;
    let refused = false;

    ws.onopen = () => {
      const hello = { type: 'hello', protocol: PROTOCOL, format: this.format, sample_rate: this.sampleRate };
      if (token) hello.token = token;
      ws.send(JSON.stringify(hello));
    };

    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return; // this page asked for JSON frames
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.type === 'ready') {
        this.info = msg;
        this.retry = 0;
        this.setState('ready');
        this.startPing();
      } else if (msg.type === 'pong' && typeof msg.t === 'number') {
        this.rttMs = performance.now() - msg.t;
      } else if (msg.type === 'error' && msg.code === 'unauthorized') {
        refused = true;
      }
      this.emit(msg.type, msg);
    };

    ws.onclose = async (e) => {
      if (this.ws !== ws) return; // superseded by a newer socket
      this.stopPing();
      const wasReady = this.info !== null;
      this.info = null;
      this.emit('closed', { code: e.code, reason: e.reason });
      // A server that refuses the token during the HTTP upgrade shows up here
      // as a bare 1006; ask the HTTP API whether the token is the reason.
      if (!refused && e.code !== 1008 && !wasReady) refused = (await probeAuth()) === 401;
      if (refused || e.code === 1008) {
        this.setState('unauthorized');
        return;
      }
      this.retry++;
      const delay = Math.min(10000, 500 * 2 ** Math.min(this.retry, 5));
      this.setState('reconnecting', `retrying in ${Math.round(delay / 1000)} s`);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  /** Drop the current socket (if any) and connect again now, e.g. with a new token. */
  reconnect() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close(1000);
    this.retry = 0;
    this.connect();
  }

  get isReady() {
    return this.state === 'ready' && this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (!this.isReady) throw new Error('Not connected to the server.');
    this.ws.send(JSON.stringify(msg));
  }

  // A ping every 15 s keeps idle NATs and proxies from dropping the socket,
  // and gives a round-trip figure for the status line.
  startPing() {
    this.stopPing();
    const ping = () => {
      if (this.isReady) this.ws.send(JSON.stringify({ type: 'ping', t: performance.now() }));
    };
    ping();
    this.pingTimer = setInterval(ping, 15000);
  }

  stopPing() {
    clearInterval(this.pingTimer);
  }
}

// --- base64 <-> bytes, for the JSON encoding's byte fields -------------------

export function base64ToBytes(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes) {
  let bin = '';
  const step = 0x8000; // String.fromCharCode takes a bounded argument list
  for (let i = 0; i < bytes.length; i += step) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  }
  return btoa(bin);
}

/** 16-bit little-endian PCM bytes to samples (copies if unaligned). */
export function bytesToInt16(bytes) {
  if (bytes.byteOffset % 2 === 0) return new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1);
  return new Int16Array(bytes.slice().buffer, 0, bytes.length >> 1);
}

/** A short random id for utterances and uploads. */
export function newId(prefix) {
  const r = crypto.getRandomValues(new Uint32Array(2));
  return `${prefix}-${r[0].toString(36)}${r[1].toString(36)}`;
}
