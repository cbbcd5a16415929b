// Streaming band-limited resampler (windowed-sinc, rational polyphase).
//
// The server speaks 24 kHz; an AudioContext runs at whatever the device wants
// (44.1 or 48 kHz on most laptops, 48 kHz on iPhones) and AudioWorklet does not
// resample, so the player converts here. The resampler keeps its filter history
// between calls, so feeding a stream in chunks of any size gives the same
// samples as feeding it in one piece: there is nothing at chunk seams to click.
//
// Positions are tracked with integers (input index + phase numerator over L),
// so there is no floating-point drift however long the stream runs.

const HALF_TAPS = 16; // taps each side of the centre at unity cutoff
const MAX_PHASES = 1024; // table size cap for odd rate pairs

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

// Blackman window over |t| <= half; about 74 dB of stopband, plenty for speech.
function blackman(t, half) {
  const u = (t / half + 1) / 2; // 0..1 across the window
  if (u <= 0 || u >= 1) return 0;
  return 0.42 - 0.5 * Math.cos(2 * Math.PI * u) + 0.08 * Math.cos(4 * Math.PI * u);
}

export class Resampler {
  /**
   * @param {number} inRate  source rate (Hz, integer)
   * @param {number} outRate target rate (Hz, integer)
   */
  constructor(inRate, outRate) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    const g = gcd(inRate, outRate);
    this.L = outRate / g; // output steps per input step numerator
    this.M = inRate / g; // input advance per output sample, in 1/L units
    // Cut a little below the lower Nyquist so the transition band stays under it.
    this.fc = Math.min(1, outRate / inRate) * 0.93;
    this.half = Math.ceil(HALF_TAPS / Math.min(1, outRate / inRate));
    this.phases = Math.min(this.L, MAX_PHASES);
    this.taps = 2 * this.half;
    this.table = this.#buildTable();
    this.reset();
  }

  // table[p * taps + j] weights input sample (pos - half + 1 + j) for an output
  // at fractional position pos + p / phases. Each phase is normalised to unit
  // DC gain so the phase pattern does not modulate the level.
  #buildTable() {
    const { phases, taps, half, fc } = this;
    const table = new Float32Array(phases * taps);
    for (let p = 0; p < phases; p++) {
      const frac = p / phases;
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        const t = j - half + 1 - frac; // distance from the output position, in input samples
        const w = fc * sinc(fc * t) * blackman(t, half);
        table[p * taps + j] = w;
        sum += w;
      }
      for (let j = 0; j < taps; j++) table[p * taps + j] /= sum;
    }
    return table;
  }

  /** Forget the history: call between unrelated streams (utterances). */
  reset() {
    // Zeros on the left, so output 0 lines up with input 0.
    this.buf = new Float32Array(this.half - 1);
    this.pos = this.half - 1; // index in buf of the next output's integer position
    this.frac = 0; // numerator over L
  }

  /**
   * Resample one chunk. Returns the output samples that can be computed so far
   * (the last `half` input samples wait for look-ahead).
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  process(input) {
    if (this.passthrough) return input;
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);

    const { L, M, half, taps, table, phases } = this;
    const maxOut = Math.ceil(((buf.length - this.pos) * L) / M) + 1;
    const out = new Float32Array(Math.max(0, maxOut));
    let n = 0;
    let pos = this.pos;
    let frac = this.frac;
    while (pos + half < buf.length) {
      const p = phases === L ? frac : Math.floor((frac * phases) / L);
      const base = pos - half + 1;
      const row = p * taps;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += buf[base + j] * table[row + j];
      out[n++] = acc;
      frac += M;
      while (frac >= L) {
        frac -= L;
        pos++;
      }
    }
    // Keep what the next outputs still need on their left.
    const keepFrom = pos - half + 1;
    this.buf = buf.slice(keepFrom);
    this.pos = pos - keepFrom;
    this.frac = frac;
    return out.subarray(0, n);
  }

  /** Push out the look-ahead tail at the end of a stream, then reset. */
  flush() {
    if (this.passthrough) return new Float32Array(0);
    const tail = this.process(new Float32Array(this.half + 1));
    this.reset();
    return tail;
  }
}
