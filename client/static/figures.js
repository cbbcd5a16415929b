// Per-utterance figures, the scrolling waveform, and WAV export.

/** Fill the <dd data-figure="..."> cells of a figures <dl>. */
export function showFigures(root, fig) {
  const fmt = {
    ttfaHeard: (v) => `${Math.round(v)} ms`,
    firstChunk: (v) => `${Math.round(v)} ms`,
    serverTtfa: (v) => `${Math.round(v)} ms`,
    rtf: (v) => v.toFixed(2),
    chunks: (v) => String(v),
    underruns: (v) => String(v),
    audioMs: (v) => `${(v / 1000).toFixed(2)} s`,
    bytesIn: (v) => (v < 10240 ? `${v} B` : `${(v / 1024).toFixed(0)} KiB`),
  };
  for (const dd of root.querySelectorAll('[data-figure]')) {
    const key = dd.dataset.figure;
    const v = fig[key];
    // undefined: not known (yet); null: does not apply to this transport.
    if (v === null) dd.textContent = 'n/a';
    else dd.textContent = v === undefined || Number.isNaN(v) ? '–' : fmt[key](v);
  }
}

/**
 * A waveform of what is playing: the peak of each animation frame, as a
 * mirrored bar, scrolling right to left. Reads the player's AnalyserNode, so
 * it shows what actually leaves the worklet (underruns show as gaps), or in
 * WebRTC mode the analyser on the speech track.
 */
export class Waveform {
  constructor(canvas) {
    this.canvas = canvas;
    this.g = canvas.getContext('2d');
    this.peaks = [];
    this.analyser = null;
    this.running = false;
    this.buf = null;
    this.quietFrames = 0;
    new ResizeObserver(() => this.#resize()).observe(canvas);
    this.#resize();
  }

  #resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.draw();
  }

  clear() {
    this.peaks = [];
    this.draw();
  }

  /** Start drawing from `analyser`; stops by itself after a second of silence. */
  run(analyser) {
    this.analyser = analyser;
    this.quietFrames = 0;
    if (this.running || !analyser) return;
    this.running = true;
    this.buf = new Float32Array(analyser.fftSize);
    const step = () => {
      this.analyser.getFloatTimeDomainData(this.buf);
      let peak = 0;
      for (const v of this.buf) peak = Math.max(peak, Math.abs(v));
      this.peaks.push(peak);
      const keep = Math.ceil(this.canvas.width / this.barWidth());
      if (this.peaks.length > keep) this.peaks.splice(0, this.peaks.length - keep);
      this.draw();
      this.quietFrames = peak < 1e-4 ? this.quietFrames + 1 : 0;
      if (this.quietFrames > 60 && this.idle?.()) {
        this.running = false;
        return;
      }
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }

  barWidth() {
    return 3 * (window.devicePixelRatio || 1);
  }

  draw() {
    const { g, canvas } = this;
    const w = canvas.width;
    const h = canvas.height;
    const styles = getComputedStyle(canvas);
    g.clearRect(0, 0, w, h);
    g.fillStyle = styles.getPropertyValue('--wave-mid').trim() || '#8884';
    g.fillRect(0, Math.floor(h / 2), w, 1);
    g.fillStyle = styles.getPropertyValue('--wave').trim() || '#36c';
    const bw = this.barWidth();
    const n = this.peaks.length;
    for (let i = 0; i < n; i++) {
      // sqrt lifts quiet passages so speech reads as speech, not as a thin line
      const a = Math.min(1, Math.sqrt(this.peaks[i]));
      const bh = Math.max(1, a * (h - 4));
      g.fillRect(w - (n - i) * bw, (h - bh) / 2, bw - 1, bh);
    }
  }
}

/** A mono 16-bit WAV file from Int16Array chunks. */
export function wavBlob(chunks, sampleRate) {
  const frames = chunks.reduce((n, c) => n + c.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (off, s) => [...s].forEach((ch, i) => header.setUint8(off + i, ch.charCodeAt(0)));
  text(0, 'RIFF');
  header.setUint32(4, 36 + frames * 2, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  header.setUint32(16, 16, true); // fmt chunk size
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * 2, true); // byte rate
  header.setUint16(32, 2, true); // block align
  header.setUint16(34, 16, true); // bits per sample
  text(36, 'data');
  header.setUint32(40, frames * 2, true);
  return new Blob([header, ...chunks], { type: 'audio/wav' });
}
