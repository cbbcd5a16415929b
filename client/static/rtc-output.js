// Speech output in WebRTC mode. The server's track plays in an <audio>
// element (Chromium drains a remote track only while something plays it, and
// would otherwise play the whole backlog later). A second, muted branch
// through WebAudio feeds an AnalyserNode on the same track: it tells when
// speech is first heard (TTFA), draws the waveform, and tells when an
// utterance has played out after `done`. There are no `audio` messages here,
// so the Player (jitter-buffer worklet) is not used.
//
// Same events as the Player, for the talk panel: audible {id, heardAt},
// underrun {id, count} (from WebRTC stats: concealment events, where the
// browser's jitter buffer ran dry and invented audio), drained {id}.

import { contextToPerformance } from './player.js';

// The track carries digital silence between utterances, which decodes to
// almost nothing; speech crosses this (about -46 dBFS) within milliseconds.
const THRESHOLD = 0.005;
const POLL_MS = 10;
const QUIET_AFTER_DONE_MS = 80; // `done` comes after the last frame was sent: this much quiet means it played out
const MAX_TAIL_MS = 1500; // finish even if the track never goes quiet (noise)
const UNMUTE_MS = 250; // the browser's jitter buffer holds 40-60 ms of the cut speech, plus network

export class RtcOutput {
  constructor() {
    this.el = new Audio();
    this.el.autoplay = true;
    this.conn = null;
    this.ctx = null;
    this.analyser = null;
    this.source = null;
    this.sourceTrack = null;
    this.id = null;
    this.timer = null;
    this.unmuteTimer = null;
    this.listeners = {};
  }

  on(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  emit(type, msg) {
    for (const fn of this.listeners[type] || []) fn(msg);
  }

  /**
   * Play this connection's speech track; call it right after conn.connect().
   * The element is given the stream when the track arrives (before any audio
   * flows): an element handed an empty stream stays at HAVE_NOTHING in
   * Chromium after a track is added, plays nothing, and delays the page's load.
   */
  attach(conn) {
    this.stop();
    this.conn = conn;
    this.el.srcObject = null;
    conn.on('track', () => {
      conn.attachAudio(this.el);
      this.#wire();
    });
  }

  /** Hand over the page's AudioContext (made in a user gesture) for the analyser. */
  useContext(ctx) {
    if (this.ctx !== ctx) {
      this.ctx = ctx;
      this.analyser = ctx.createAnalyser();
      this.analyser.fftSize = 2048;
      this.buf = new Float32Array(this.analyser.fftSize);
      const mute = ctx.createGain();
      mute.gain.value = 0; // heard through the <audio> element, not twice
      this.analyser.connect(mute).connect(ctx.destination); // nodes render only when pulled
      this.sourceTrack = null;
    }
    this.el.play().catch(() => {}); // a gesture lets a blocked element start
    this.#wire();
  }

  // A MediaStreamAudioSourceNode keeps the track it was made with; a
  // reconnect brings a new track, so make a new source for it.
  #wire() {
    const track = this.conn?.remoteStream.getAudioTracks()[0];
    if (!this.ctx || !track || track === this.sourceTrack) return;
    this.source?.disconnect();
    this.source = this.ctx.createMediaStreamSource(new MediaStream([track]));
    this.source.connect(this.analyser);
    this.sourceTrack = track;
  }

  begin(id) {
    this.#wire();
    clearInterval(this.timer);
    clearTimeout(this.unmuteTimer);
    this.el.muted = false;
    Object.assign(this, { id, onsetSeen: false, endedAt: null, quietMs: 0, ticks: 0, concealed: null });
    this.#concealment().then((n) => {
      if (this.id === id) this.concealed = n;
    });
    this.timer = setInterval(() => this.#poll(), POLL_MS);
  }

  #poll() {
    if (!this.analyser) return;
    const { id, buf, ctx } = this;
    this.analyser.getFloatTimeDomainData(buf);
    let peak = 0;
    let first = -1;
    for (let i = 0; i < buf.length; i++) {
      const v = Math.abs(buf[i]);
      if (v > peak) peak = v;
      if (first < 0 && v > THRESHOLD) first = i;
    }
    if (!this.onsetSeen && first >= 0) {
      // The analyser holds the last buf.length frames rendered: date the first
      // loud one, then add the output latency (what the element also pays).
      this.onsetSeen = true;
      const rendered = ctx.currentTime - (buf.length - first) / ctx.sampleRate;
      this.emit('audible', { id, heardAt: contextToPerformance(ctx, rendered) });
    }
    if (++this.ticks % 25 === 0) this.#reportConcealment(id);
    if (this.endedAt === null) return;
    this.quietMs = peak < THRESHOLD ? this.quietMs + POLL_MS : 0;
    if (this.quietMs >= QUIET_AFTER_DONE_MS || performance.now() - this.endedAt > MAX_TAIL_MS) {
      clearInterval(this.timer);
      this.#reportConcealment(id);
      this.emit('drained', { id });
    }
  }

  /** `done` arrived: finish once the track has gone quiet. */
  end() {
    if (this.id !== null) this.endedAt = performance.now();
  }

  /** Barge-in: `cancel` stops the server at once; mute what is still in flight. */
  stop() {
    clearInterval(this.timer);
    this.id = null;
    this.el.muted = true;
    clearTimeout(this.unmuteTimer);
    this.unmuteTimer = setTimeout(() => {
      this.el.muted = false;
    }, UNMUTE_MS);
  }

  async #concealment() {
    const pc = this.conn?.pc;
    if (!pc) return null;
    try {
      for (const s of (await pc.getStats()).values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') return s.concealmentEvents ?? null;
      }
    } catch {
      /* closed meanwhile */
    }
    return null;
  }

  async #reportConcealment(id) {
    const n = await this.#concealment();
    if (n === null || this.concealed === null || this.id !== id) return;
    this.emit('underrun', { id, count: n - this.concealed });
  }

  /**
   * The analyser as the waveform should see it: silent while muted after a
   * Stop, so it draws what is heard, not the cut tail still on the track.
   */
  get heard() {
    const { analyser, el } = this;
    if (!analyser) return null;
    return {
      fftSize: analyser.fftSize,
      getFloatTimeDomainData: (buf) => (el.muted ? buf.fill(0) : analyser.getFloatTimeDomainData(buf)),
    };
  }

  /** Peak of what is audible now: the analyser, or nothing while muted. */
  outputPeak() {
    return this.el.muted ? 0 : this.trackPeak();
  }

  /** Peak on the track itself, muted or not (for tests). */
  trackPeak() {
    if (!this.analyser) return 0;
    this.analyser.getFloatTimeDomainData(this.buf);
    let peak = 0;
    for (const v of this.buf) peak = Math.max(peak, Math.abs(v));
    return peak;
  }
}
