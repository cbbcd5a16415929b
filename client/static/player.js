// Player: the AudioContext, the jitter-buffer worklet and the resampler.
//
// One utterance plays at a time: begin(id), push(pcm)..., end(), or stop() to
// cut it (barge-in). PCM arrives as 16-bit little-endian at the server's rate
// (or as float samples from the Opus decoder, at 48 kHz); it is converted and
// resampled here, on the main thread, and handed to the worklet, which plays
// it on the audio clock.

import { Resampler } from './resampler.js';

export const SOURCE_RATE = 24000;
const START_MS = 80; // jitter buffer: start once this much audio is queued

export class Player {
  constructor() {
    this.ctx = null;
    this.node = null;
    this.analyser = null;
    this.ready = null; // resolves once the worklet node exists
    this.resampler = null;
    this.resamplers = new Map(); // source rate -> Resampler, for audio not at SOURCE_RATE (Opus)
    this.id = null;
    this.stats = { state: 'idle', underruns: 0, maxPeak: 0, playedMs: 0, bufferedMs: 0 };
    this.listeners = {};
  }

  on(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }

  emit(type, msg) {
    for (const fn of this.listeners[type] || []) fn(msg);
  }

  /**
   * Create and resume the AudioContext. Call it from a user gesture (click,
   * key press): browsers keep audio suspended until one. The context is made
   * and resumed synchronously, before any await, so Safari counts the gesture.
   */
  unlock() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Ctx({ latencyHint: 'interactive' });
      this.resampler = new Resampler(SOURCE_RATE, this.ctx.sampleRate);
      this.ready = this.#build();
    }
    if (this.ctx.state !== 'running') this.ctx.resume().catch(() => {});
    return this.ready;
  }

  async #build() {
    if (!this.ctx.audioWorklet) {
      throw new Error('This browser has no AudioWorklet (it needs a secure context: open the page over https).');
    }
    await this.ctx.audioWorklet.addModule(new URL('./player-worklet.js', import.meta.url));
    this.node = new AudioWorkletNode(this.ctx, 'minestream-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { startMs: START_MS },
    });
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 2048;
    this.node.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
    this.node.port.onmessage = (e) => this.#onWorklet(e.data);
  }

  #onWorklet(msg) {
    if (msg.type === 'stats') {
      this.stats = msg;
    } else if (msg.type === 'audible') {
      msg.heardAt = this.contextToPerformance(msg.time);
    }
    this.emit(msg.type, msg);
  }

  // Post in order, whether or not the worklet has finished loading.
  #post(msg, transfer) {
    this.ready.then(() => this.node.port.postMessage(msg, transfer || []));
  }

  begin(id) {
    this.unlock();
    this.id = id;
    this.resampler.reset();
    for (const r of this.resamplers.values()) r.reset();
    this.#post({ type: 'begin', id });
  }

  /** @param {Int16Array} pcm 16-bit samples at SOURCE_RATE */
  push(pcm) {
    const f = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
    this.pushFloat(f);
  }

  /** @param {Float32Array} samples @param {number} [rate] their rate */
  pushFloat(samples, rate = SOURCE_RATE) {
    const out = this.#resamplerFor(rate).process(samples);
    if (out.length) {
      // Copy when the resampler passed its input through: we transfer the buffer.
      const own = out.buffer === samples.buffer ? out.slice() : out;
      this.#post({ type: 'push', samples: own }, [own.buffer]);
    }
  }

  #resamplerFor(rate) {
    if (rate === SOURCE_RATE) return this.resampler;
    let r = this.resamplers.get(rate);
    if (!r) this.resamplers.set(rate, (r = new Resampler(rate, this.ctx.sampleRate)));
    return r;
  }

  /** No more audio for this utterance: play out what is queued. */
  end() {
    for (const r of [this.resampler, ...this.resamplers.values()]) {
      const tail = r.flush();
      if (tail.length) this.#post({ type: 'push', samples: tail }, [tail.buffer]);
    }
    this.#post({ type: 'end' });
  }

  /** Barge-in: silence now (a 4 ms fade), drop everything queued. */
  stop() {
    if (!this.ready) return;
    this.#post({ type: 'stop' });
  }

  contextToPerformance(t) {
    return contextToPerformance(this.ctx, t);
  }

  /** Peak of what the analyser sees right now (for meters and tests). */
  outputPeak() {
    if (!this.analyser) return 0;
    const buf = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const v of buf) peak = Math.max(peak, Math.abs(v));
    return peak;
  }
}

/**
 * Map a context time (when a sample is rendered) to performance.now() time
 * (when it leaves the speaker). getOutputTimestamp pairs the two clocks at
 * the output, so it includes the output latency; fall back to the reported
 * latency where a browser gives no timestamp.
 */
export function contextToPerformance(ctx, t) {
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (ts && ts.performanceTime > 0 && ts.contextTime > 0) {
    return ts.performanceTime + (t - ts.contextTime) * 1000;
  }
  const latency = ctx.outputLatency || ctx.baseLatency || 0;
  return performance.now() + (t - ctx.currentTime + latency) * 1000;
}
