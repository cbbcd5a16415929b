// Protocol v1 over WebRTC: the same interface as protocol.js's Connection
// (on, connect, reconnect, isReady, send, info, state, rttMs), so the page can
// switch transports without caring which one it holds.
//
// One RTCPeerConnection per session, offered to POST /v1/rtc/offer:
//  - a data channel "control" carries the protocol messages as JSON text;
//  - speech arrives on the remote audio track (`remoteStream`), not as
//    `audio` messages: play it with attachAudio(element) on 'track';
//  - the microphone goes out on the same audio transceiver once
//    setMicrophone(track) is called; `voice_begin` {source: "rtc"} records it.
// No STUN or TURN by default: the server is on the LAN, host candidates meet.

import { Transport } from './transport.js';

const GATHER_TIMEOUT_MS = 3000;

export class RtcConnection extends Transport {
  /**
   * @param {object} opts
   * @param {() => string|null} opts.token current token (read at each connect)
   * @param {RTCIceServer[]} [opts.iceServers]
   */
  constructor({ token, iceServers = [] }) {
    super(token);
    this.iceServers = iceServers;
    this.transport = 'webrtc';
    this.pc = null;
    this.channel = null;
    this.transceiver = null;
    this.remoteStream = new MediaStream();
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
    channel.onopen = () => channel.send(JSON.stringify(this.hello()));
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
    this.scheduleRetry();
  }

  /** Drop the current peer (if any) and connect again now, e.g. with a new token. */
  reconnect() {
    clearTimeout(this.timer);
    this.stopPing();
    this.info = null;
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
    this.info = null;
    if (old) old.close();
    this.setState('idle');
  }

  get isReady() {
    return this.state === 'ready' && this.channel?.readyState === 'open';
  }

  sendRaw(text) {
    this.channel.send(text);
  }

  /** Send this microphone track to the server (null stops sending); no renegotiation. */
  async setMicrophone(track) {
    if (this.transceiver) await this.transceiver.sender.replaceTrack(track);
  }

  /**
   * Play the speech track in this <audio> element. Call it once the track is
   * there (the 'track' event): Chromium leaves an element that was given the
   * stream while it was still empty at HAVE_NOTHING.
   */
  attachAudio(element) {
    element.srcObject = this.remoteStream;
    element.autoplay = true;
    return element.play().catch(() => {}); // resumes on the next gesture
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
