// AudioWorklet processor: the jitter buffer that plays one utterance at a time.
//
// The main thread posts PCM already resampled to the context rate. This side
// runs on the audio clock: it waits until `startMs` of audio is queued (or the
// utterance is complete) before starting, so network jitter does not starve it
// at once; when the queue runs dry anyway it fades out over a few milliseconds
// instead of stopping dead (a step to zero clicks), counts an underrun, waits
// for a slightly larger refill and fades back in.
//
// Messages in:  {type:'begin', id} {type:'push', samples} {type:'end'} {type:'stop'}
// Messages out: {type:'audible', id, time} first sample above the threshold,
//               with the context time at which it is rendered;
//               {type:'underrun', id} {type:'drained', id} {type:'stopped', id};
//               {type:'stats', ...} about every 50 ms while busy.

const FADE_MS = 4;
const AUDIBLE = 0.003; // about -50 dBFS: the first sample a listener could notice
const STATS_EVERY = 16; // render quanta between stats posts (~45 ms at 44.1 kHz)

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.startFrames = Math.round((sampleRate * (opts.startMs ?? 80)) / 1000);
    this.fadeFrames = Math.max(1, Math.round((sampleRate * FADE_MS) / 1000));
    this.queue = []; // Float32Arrays
    this.head = 0; // read offset in queue[0]
    this.buffered = 0; // frames queued
    this.state = 'idle'; // idle | buffering | playing | stopping
    this.id = null;
    this.ended = false; // no more samples will come for this utterance
    this.fadeIn = 0; // frames of fade-in still to apply
    this.tail = null; // faded-out end of an utterance cut by the next one
    this.quanta = 0;
    this.resetCounters();
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  resetCounters() {
    this.played = 0; // frames output for the current utterance
    this.underruns = 0;
    this.audible = false;
    this.peak = 0; // since the last stats post
    this.maxPeak = 0; // over the utterance
    this.refillFrames = this.startFrames;
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'begin':
        // A new utterance while one plays (Speak pressed again): fade the old
        // one's next few milliseconds out instead of cutting it dead.
        if (this.state === 'playing' || this.state === 'stopping') {
          const tail = new Float32Array(this.fadeFrames);
          const got = this.read(tail, 0, this.fadeFrames);
          this.fade(tail, 0, got, 1, 0);
          this.tail = tail.subarray(0, got);
        }
        this.clear();
        this.resetCounters();
        this.id = msg.id;
        this.ended = false;
        this.state = 'buffering';
        this.fadeIn = this.fadeFrames;
        break;
      case 'push':
        if (this.state === 'idle' || this.state === 'stopping') return; // stale
        if (msg.samples.length) {
          this.queue.push(msg.samples);
          this.buffered += msg.samples.length;
        }
        break;
      case 'end':
        this.ended = true;
        break;
      case 'stop':
        // Barge-in: fade out within this or the next quantum, then drop the rest.
        if (this.state === 'playing') this.state = 'stopping';
        else this.finish('stopped');
        break;
    }
  }

  clear() {
    this.queue = [];
    this.head = 0;
    this.buffered = 0;
  }

  finish(type) {
    this.clear();
    const id = this.id;
    this.state = 'idle';
    this.postStats();
    this.port.postMessage({ type, id });
  }

  // Copy up to `n` queued frames into out[offset...]; returns frames copied.
  read(out, offset, n) {
    let done = 0;
    while (done < n && this.queue.length) {
      const chunk = this.queue[0];
      const take = Math.min(n - done, chunk.length - this.head);
      out.set(chunk.subarray(this.head, this.head + take), offset + done);
      done += take;
      this.head += take;
      if (this.head >= chunk.length) {
        this.queue.shift();
        this.head = 0;
      }
    }
    this.buffered -= done;
    return done;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    out.fill(0);

    if (this.state === 'buffering') {
      const target = this.underruns ? this.refillFrames : this.startFrames;
      if (this.buffered >= target || (this.ended && this.buffered > 0)) this.state = 'playing';
      else if (this.ended && this.buffered === 0) this.finish('drained');
    }

    if (this.state === 'playing') this.render(out, n);
    else if (this.state === 'stopping') {
      const got = this.read(out, 0, Math.min(n, this.fadeFrames));
      this.fade(out, 0, got, 1, 0);
      out.fill(0, got);
      this.finish('stopped');
    }

    this.meter(out);
    if (this.tail) {
      // Mixed in after metering: the old utterance's tail is not the new one's first sound.
      for (let i = 0; i < Math.min(n, this.tail.length); i++) out[i] += this.tail[i];
      this.tail = null;
    }
    if (++this.quanta % STATS_EVERY === 0 && this.state !== 'idle') this.postStats();
    return true; // stay alive for the next utterance
  }

  render(out, n) {
    const starving = !this.ended && this.buffered < n + this.fadeFrames;
    const got = this.read(out, 0, n);
    if (this.fadeIn > 0) {
      const len = Math.min(this.fadeIn, got);
      const from = 1 - this.fadeIn / this.fadeFrames;
      this.fade(out, 0, len, from, from + len / this.fadeFrames);
      this.fadeIn -= len;
    }
    this.played += got;
    if (starving) {
      // Fade the tail of what we have, then wait for a refill. Each underrun
      // asks for 40 ms more cushion (up to 300 ms): the network told us so.
      const len = Math.min(this.fadeFrames, got);
      this.fade(out, got - len, len, 1, 0);
      this.underruns++;
      this.refillFrames = Math.min(
        this.startFrames + this.underruns * Math.round(sampleRate * 0.04),
        Math.round(sampleRate * 0.3),
      );
      this.fadeIn = this.fadeFrames;
      this.state = 'buffering';
      this.port.postMessage({ type: 'underrun', id: this.id, count: this.underruns });
    } else if (this.ended && this.buffered === 0) {
      this.finish('drained');
    }
  }

  // Linear gain ramp over out[start, start+len) from g0 to g1.
  fade(out, start, len, g0, g1) {
    for (let i = 0; i < len; i++) out[start + i] *= g0 + ((g1 - g0) * (i + 1)) / len;
  }

  meter(out) {
    let peak = 0;
    let first = -1;
    for (let i = 0; i < out.length; i++) {
      const a = Math.abs(out[i]);
      if (a > peak) peak = a;
      if (first < 0 && a > AUDIBLE) first = i;
    }
    if (peak > this.peak) this.peak = peak;
    if (peak > this.maxPeak) this.maxPeak = peak;
    if (!this.audible && first >= 0 && this.id !== null) {
      this.audible = true;
      this.port.postMessage({ type: 'audible', id: this.id, time: currentTime + first / sampleRate });
    }
  }

  postStats() {
    this.port.postMessage({
      type: 'stats',
      id: this.id,
      state: this.state,
      buffered: this.buffered,
      bufferedMs: (this.buffered * 1000) / sampleRate,
      played: this.played,
      playedMs: (this.played * 1000) / sampleRate,
      underruns: this.underruns,
      peak: this.peak,
      maxPeak: this.maxPeak,
    });
    this.peak = 0;
  }
}

registerProcessor('minestream-player', PlayerProcessor);
