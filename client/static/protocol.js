// Protocol v1 over a WebSocket, JSON text frames (no client library).
//
// Connection opens wss://<this host>/v1/stream, sends `hello` first and waits
// for `ready`; every later server message is handed to listeners by its
// "type". It reconnects by itself with back-off, except when the server
// refused the token: then it reports 'unauthorized' and waits for a new one.

import { probeAuth } from './api.js';
import { PROTOCOL, Transport } from './transport.js';

export { PROTOCOL };

export class Connection extends Transport {
  /**
   * @param {object} opts
   * @param {() => string|null} opts.token current token (read at each connect)
   * @param {string} [opts.format]
   * @param {number} [opts.sampleRate]
   */
  constructor({ token, format = 'pcm_s16le', sampleRate = 24000 }) {
    super(token);
    this.transport = 'websocket';
    this.format = format;
    this.sampleRate = sampleRate;
    this.ws = null;
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

    ws.onopen = () => ws.send(JSON.stringify(this.hello({ format: this.format, sample_rate: this.sampleRate })));

    ws.onmessage = (e) => {
      const msg = this.receive(e.data);
      if (msg?.type === 'error' && msg.code === 'unauthorized') refused = true;
    };

    ws.onclose = async (e) => {
      if (this.ws !== ws) return; // superseded by a newer socket, or closed on purpose
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
      this.scheduleRetry();
    };
  }

  /** Drop the current socket (if any) and connect again now, e.g. with a new token. */
  reconnect() {
    this.#drop();
    this.retry = 0;
    this.connect();
  }

  /** Close for good (the page switched to another transport). */
  close() {
    this.#drop();
    this.setState('idle');
  }

  #drop() {
    clearTimeout(this.timer);
    this.stopPing();
    const old = this.ws;
    this.ws = null; // its onclose sees it was superseded and stays quiet
    this.info = null;
    if (old) old.close(1000);
  }

  get isReady() {
    return this.state === 'ready' && this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  sendRaw(text) {
    this.ws.send(text);
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
