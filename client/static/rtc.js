// Protocol v1 over WebRTC: the same interface as protocol.js's Connection
// (on, connect, reconnect, isReady, send, info, state, rttMs), so the page can
// switch transports without caring which one it holds.
//
// One RTCPeerConnection per session, offered to POST /v1/rtc/offer:
//  - a data channel "control" carries the protocol messages as JSON text;
//  - speech arrives on the remote audio track (`remoteStream`), not as
//    `audio` messages: play it with attachAudio(element);
//  - the microphone goes out on the same audio transceiver once
//    setMicrophone(track) is called; `voice_begin` {source: "rtc"} records it.
// No STUN or TURN by default: the server is on the LAN, host candidates meet.

import { PROTOCOL } from './protocol.js';

const GATHER_TIMEOUT_MS = 3000;

export class RtcConnection {
  /**
   * @param {object} opts
   * @param {() => string|null} opts.token current token (read at each connect)
   * @param {RTCIceServer[]} [opts.iceServers]
   */
  constructor({ token, iceServers = [] }) {
    this.getToken = token;
    this.iceServers = iceServers;
    this.transport = 'webrtc';
    this.pc = null;
    this.channel = null;
    this.transceiver = null;
    this.remoteStream = new MediaStream();
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

  async connect() {
    clearTimeout(this.timer);
    this.setState(this.retry ? 'reconnecting' : 'connecting');
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.transceiver = pc.addTransceiver('audio', { direction: 'sendrecv' });
    const channel = pc.createDataChannel('control');
    this.channel = channel;
    pc.ontrack = (e) => {
      for (const t of this.remoteStream.getTracks()) this.remoteStream.removeTrack(t);
      this.remoteStream.addTrack(e.track);
      this.emit('track', { stream: this.remoteStream });
    };
    pc.onconnectionstatechange = () => {
      if (this.pc === pc && ['failed', 'closed'].includes(pc.connectionState)) this.dropped(pc, 0);
    };
    channel.onopen = () => {
      const hello = { type: 'hello', protocol: PROTOCOL };
      const token = this.getToken();
      if (token) hello.token = token;
      channel.send(JSON.stringify(hello));
    };
    channel.onmessage = (e) => this.receive(e.data);
    channel.onclose = () => this.dropped(pc, 1000);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const answer = await this.offer(pc.localDescription);
      if (this.pc !== pc) return;
      await pc.setRemoteDescription(answer);
    } catch (err) {
      if (this.pc === pc) this.dropped(pc, err.status === 401 ? 1008 : 0, err.message);
    }
  }

  async offer(description) {
    const token = this.getToken();
    const body = { sdp: description.sdp, type: description.type };
    if (token) body.token = token;
    const res = await fetch('/v1/rtc/offer', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    if (!res.ok) {
      const detail = await res.json().catch(() => ({}));
      const err = new Error(detail.error?.message || `The server refused the connection (${res.status}).`);
      err.status = res.status;
      throw err;
    }
    return res.json();
  }

  receive(data) {
    if (typeof data !== 'string') return; // this page speaks JSON
    let msg;
    try {
      msg = JSON.parse(data);
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
    }
    this.emit(msg.type, msg);
  }

  dropped(pc, code, reason = '') {
    if (this.pc !== pc) return; // superseded
    this.pc = null;
    this.stopPing();
    pc.close();
    this.info = null;
    this.emit('closed', { code, reason });
    if (code === 1008) {
      this.setState('unauthorized', reason);
      return;
    }
    this.retry++;
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.retry, 5));
    this.setState('reconnecting', `retrying in ${Math.round(delay / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Drop the current peer (if any) and connect again now, e.g. with a new token. */
  reconnect() {
    const old = this.pc;
    this.pc = null;
    if (old) old.close();
    this.retry = 0;
    this.connect();
  }

  close() {
    clearTimeout(this.timer);
    this.stopPing();
    const old = this.pc;
    this.pc = null;
    if (old) old.close();
    this.setState('idle');
  }

  get isReady() {
    return this.state === 'ready' && this.channel?.readyState === 'open';
  }

  send(msg) {
    if (!this.isReady) throw new Error('Not connected to the server.');
    this.channel.send(JSON.stringify(msg));
  }

  /** Send this microphone track to the server (null stops sending); no renegotiation. */
  async setMicrophone(track) {
    if (this.transceiver) await this.transceiver.sender.replaceTrack(track);
  }

  /** Play the speech track in this <audio> element. */
  attachAudio(element) {
    element.srcObject = this.remoteStream;
    element.autoplay = true;
    return element.play().catch(() => {}); // resumes on the next gesture
  }

  startPing() {
    this.stopPing();
    const ping = () => {
      if (this.isReady) this.channel.send(JSON.stringify({ type: 'ping', t: performance.now() }));
    };
    ping();
    this.pingTimer = setInterval(ping, 15000);
  }

  stopPing() {
    clearInterval(this.pingTimer);
  }
}

/** Resolves when ICE gathering is complete (the server takes no trickled candidates). */
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, GATHER_TIMEOUT_MS); // a slow interface must not hold the call
  });
}

/** WebRTC on phones: the default transport there (mobile networks drop long WebSockets). */
export function preferRtc() {
  return typeof RTCPeerConnection === 'function' && /Android|iPhone|iPad|iPod|Mobile/i.test(navigator.userAgent);
}
